//! Where the Redis backend connects and how it lays out its keys.

use std::time::Duration;

pub use muster_core::options::Preset;
use muster_core::options::{DEFAULT_PREFIX, DEFAULT_PUBSUB_CHANNEL};
use muster_core::{DiscoveryOptions, Error, Result};

/// How Redis is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a proxy): a `redis://` or `rediss://` URL.
    Standalone {
        /// `redis://[user:password@]host:port[/db]`.
        url: String,
    },
    /// A master found through Sentinel; the backend follows failovers.
    Sentinel {
        /// Sentinel addresses as `redis://host:port` URLs.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master_name: String,
        /// Database number on the master.
        db: i64,
        /// Username for the master, if ACLs are on.
        username: Option<String>,
        /// Password for the master.
        password: Option<String>,
    },
    /// A Redis Cluster; all keys of one prefix share one hash slot.
    Cluster {
        /// Seed nodes as `redis://host:port` URLs.
        nodes: Vec<String>,
    },
}

/// Settings of the Redis backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where to connect.
    pub topology: Topology,
    /// Key prefix (Titan's `redisPrefix`).
    pub prefix: String,
    /// Wrap the prefix in a hash tag (`{prefix}`) so every key lands in one cluster slot. `None`
    /// means: on for Cluster, off otherwise (keeping Titan's exact key names).
    pub hash_tag: Option<bool>,
    /// Publish events on the Titan pub/sub channel (as Titan nodes do when their pub/sub is on).
    /// Titan peers' changes reach watchers either way, through reconciliation.
    pub pubsub_enabled: bool,
    /// With pub/sub on, publish Titan's `NODE_UPDATED` for every heartbeat of a Muster node, as a
    /// Titan node does (some Titan consumers take it as a sign of life). Off: only changes.
    pub heartbeat_events: bool,
    /// The Titan pub/sub channel.
    pub pubsub_channel: String,
    /// Events kept in the log for watchers to resume from (Redis `MAXLEN`, exact).
    pub event_history: usize,
    /// Run the expiry sweeper and the reconciliation with Titan peers in this process (one process
    /// at a time does the work, by lease).
    pub sweeper: bool,
    /// Inspection only: never write (no sweeper, no listing cache, no cleanup), so reads work
    /// against a read-only replica and leave the key space unchanged. Writes fail.
    pub read_only: bool,
    /// How often the sweeper compares what Titan peers wrote with what it saw last (adoptions,
    /// changes, removals). Detection takes at most this long without change hints.
    pub reconcile_interval: Duration,
    /// Use Redis keyspace notifications as change hints when the server has them enabled for hash
    /// and generic commands (`notify-keyspace-events` containing `K` and `gh`, or `KA`); not in a
    /// Cluster. While they are subscribed, detection is immediate and the full pass only runs every
    /// `safety_interval`.
    pub keyspace_notifications: bool,
    /// The full pass's interval while keyspace notifications are the change hints (a safety net:
    /// a full pass also runs whenever the subscription comes up).
    pub safety_interval: Duration,
    /// Longest pause between sweeps; the sweeper also wakes at the earliest deadline.
    pub sweep_interval: Duration,
    /// How long a sweeper's lease lasts without renewal.
    pub sweeper_lease: Duration,
    /// How long one Redis command may take before it counts as failed.
    pub response_timeout: Duration,
    /// Replicas every write must reach before it is acknowledged (`WAIT`; 0: off, the default).
    /// Redis replicates asynchronously: without it, a write acknowledged just before the primary
    /// fails can be missing on the replica promoted in its place. With it, a write that reached
    /// fewer replicas within [`RedisConfig::replica_ack_timeout`] fails as unavailable (it may
    /// still stand; every write is safe to repeat). Any topology: in a Cluster, the replicas of the
    /// master of the prefix's slot.
    pub replica_acks: u32,
    /// How long a write waits for [`RedisConfig::replica_acks`] replicas.
    pub replica_ack_timeout: Duration,
}

impl RedisConfig {
    /// Defaults for a topology: Titan prefix and channel, pub/sub off (per-heartbeat messages on
    /// when it is switched on), 10,000 events of history, sweeper on (250 ms, 2 s lease),
    /// reconciliation every 500 ms (every 30 s while keyspace notifications are the hints), 2 s
    /// response timeout.
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            prefix: DEFAULT_PREFIX.to_owned(),
            hash_tag: None,
            pubsub_enabled: false,
            heartbeat_events: true,
            pubsub_channel: DEFAULT_PUBSUB_CHANNEL.to_owned(),
            event_history: 10_000,
            sweeper: true,
            read_only: false,
            reconcile_interval: Duration::from_millis(500),
            keyspace_notifications: true,
            safety_interval: Duration::from_secs(30),
            sweep_interval: Duration::from_millis(250),
            sweeper_lease: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            replica_acks: 0,
            replica_ack_timeout: Duration::from_secs(1),
        }
    }

    /// Parses a URL:
    ///
    /// - `redis://[user:password@]host:port[/db]` or `rediss://...` — standalone;
    /// - `redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db]` — Sentinel;
    /// - `redis+cluster://[user:password@]host:port[,host:port...]` — Cluster.
    pub fn from_url(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::invalid("redis url", format!("{url:?}: {reason}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("missing scheme"))?;
        let topology = match scheme {
            "redis" | "rediss" => {
                redis::Client::open(url).map_err(|e| invalid(&e.to_string()))?;
                Topology::Standalone { url: url.to_owned() }
            }
            "redis+sentinel" | "redis+cluster" => {
                let (auth, rest) = match rest.rsplit_once('@') {
                    Some((auth, rest)) => (Some(auth), rest),
                    None => (None, rest),
                };
                let (username, password) = match auth.map(|a| a.split_once(':').unwrap_or(("", a))) {
                    Some((user, pass)) => {
                        (Some(user.to_owned()).filter(|u| !u.is_empty()), Some(pass.to_owned()))
                    }
                    None => (None, None),
                };
                let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
                let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
                if hosts.is_empty() {
                    return Err(invalid("no hosts"));
                }
                for host in &hosts {
                    muster_core::Address::parse(*host).map_err(|e| invalid(e.message()))?;
                }
                if scheme == "redis+cluster" {
                    let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
                    Topology::Cluster { nodes: hosts.iter().map(|h| format!("redis://{auth}{h}")).collect() }
                } else {
                    let mut parts = path.split('/').filter(|p| !p.is_empty());
                    let master_name = parts.next().ok_or_else(|| invalid("missing master name"))?.to_owned();
                    let db = match parts.next() {
                        Some(db) => db.parse().map_err(|_| invalid("database must be a number"))?,
                        None => 0,
                    };
                    Topology::Sentinel {
                        sentinels: hosts.iter().map(|h| format!("redis://{h}")).collect(),
                        master_name,
                        db,
                        username,
                        password,
                    }
                }
            }
            other => return Err(invalid(&format!("unknown scheme {other:?}"))),
        };
        Ok(Self::new(topology))
    }

    /// Applies a preset: the prefix, channel and pub/sub switch a Titan or Netron fleet uses.
    #[must_use]
    pub fn with_preset(self, preset: Preset) -> Self {
        self.with_discovery_options(&preset.options())
    }

    /// Takes the Titan options that concern the store: prefix, pub/sub switch and channel.
    #[must_use]
    pub fn with_discovery_options(mut self, options: &DiscoveryOptions) -> Self {
        self.prefix = options.prefix.clone();
        self.pubsub_enabled = options.pubsub_enabled;
        self.pubsub_channel = options.pubsub_channel.clone();
        self
    }

    /// The database number (keyspace notifications name it).
    pub fn database(&self) -> i64 {
        match &self.topology {
            Topology::Standalone { url } => redis::Client::open(url.as_str())
                .map(|c| c.get_connection_info().redis_settings().db())
                .unwrap_or(0),
            Topology::Sentinel { db, .. } => *db,
            Topology::Cluster { .. } => 0,
        }
    }

    /// The prefix as used in keys (hash-tagged when configured or in Cluster).
    pub fn key_prefix(&self) -> String {
        let tagged = self.hash_tag.unwrap_or(matches!(self.topology, Topology::Cluster { .. }));
        if tagged { format!("{{{}}}", self.prefix) } else { self.prefix.clone() }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let options = DiscoveryOptions {
            prefix: self.prefix.clone(),
            pubsub_channel: self.pubsub_channel.clone(),
            ..DiscoveryOptions::default()
        };
        options.validate()?;
        if self.prefix.contains(['{', '}']) {
            return Err(Error::invalid("prefix", "must not contain braces; set hash_tag instead"));
        }
        if self.event_history == 0 {
            return Err(Error::invalid("event history", "must be at least 1"));
        }
        if self.sweep_interval < Duration::from_millis(1) || self.sweeper_lease <= self.sweep_interval {
            return Err(Error::invalid(
                "sweeper",
                "the lease must be longer than the sweep interval (at least 1 ms)",
            ));
        }
        if self.reconcile_interval < Duration::from_millis(10)
            || self.safety_interval < self.reconcile_interval
        {
            return Err(Error::invalid(
                "reconcile interval",
                "must be at least 10 ms, and the safety interval at least as long",
            ));
        }
        if self.response_timeout < Duration::from_millis(100) {
            return Err(Error::invalid("response timeout", "must be at least 100 ms"));
        }
        if self.replica_acks > 0
            && (self.replica_ack_timeout.is_zero() || self.replica_ack_timeout >= self.response_timeout)
        {
            return Err(Error::invalid(
                "replica ack timeout",
                "must be more than 0 and less than the response timeout",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = RedisConfig::from_url("redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(c.topology, Topology::Standalone { url: "redis://127.0.0.1:6379/2".into() });
        assert_eq!(c.key_prefix(), "titan:discovery");

        let c = RedisConfig::from_url("redis+sentinel://u:p@h1:26379,h2:26380/mymaster/3").unwrap();
        assert_eq!(
            c.topology,
            Topology::Sentinel {
                sentinels: vec!["redis://h1:26379".into(), "redis://h2:26380".into()],
                master_name: "mymaster".into(),
                db: 3,
                username: Some("u".into()),
                password: Some("p".into()),
            }
        );
        let c = RedisConfig::from_url("redis+cluster://h1:7000,h2:7001").unwrap();
        assert_eq!(
            c.topology,
            Topology::Cluster { nodes: vec!["redis://h1:7000".into(), "redis://h2:7001".into()] }
        );
        assert_eq!(c.key_prefix(), "{titan:discovery}");
    }

    #[test]
    fn rejects_bad_urls() {
        for (url, why) in [
            ("localhost:6379", "missing scheme"),
            ("http://h:1", "unknown scheme"),
            ("redis+sentinel://h1:1", "missing master name"),
            ("redis+sentinel:///m", "no hosts"),
            ("redis+cluster://h1", "no port"),
            ("redis+sentinel://h:1/m/x", "database must be a number"),
        ] {
            let err = RedisConfig::from_url(url).unwrap_err();
            assert!(err.is_invalid_input() && err.to_string().contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn validates_settings() {
        let ok = RedisConfig::from_url("redis://h:1").unwrap();
        assert!(ok.validate().is_ok());
        assert!(RedisConfig { prefix: "{x}".into(), ..ok.clone() }.validate().is_err());
        assert!(RedisConfig { event_history: 0, ..ok.clone() }.validate().is_err());
        assert!(RedisConfig { sweeper_lease: ok.sweep_interval, ..ok.clone() }.validate().is_err());
        // Under 1 ms the sweeper's backoff could not start: refused here, not clamped there.
        let sub_millisecond = Duration::from_micros(500);
        assert!(RedisConfig { sweep_interval: sub_millisecond, ..ok.clone() }.validate().is_err());
        assert!(RedisConfig { reconcile_interval: Duration::ZERO, ..ok.clone() }.validate().is_err());
        let tagged = RedisConfig { hash_tag: Some(true), ..ok.clone() };
        assert_eq!(tagged.key_prefix(), "{titan:discovery}");
        let netron = ok.with_preset(Preset::Netron);
        assert_eq!(
            (netron.prefix.as_str(), netron.pubsub_channel.as_str(), netron.pubsub_enabled),
            ("netron:discovery", "netron:discovery:events", true)
        );
    }
}
