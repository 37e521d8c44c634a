//! The Redis registry: the store people use when they outgrow one process. Every agent and every
//! registry server pointed at the same Redis (and prefix) sees the same nodes.
//!
//! # Wire compatibility
//!
//! Nodes are stored exactly as the TypeScript Titan/Netron discovery modules store them — the hash
//! `P:nodes:<id>` (`address`, `services` JSON, `timestamp`) with `EXPIRE ceil(ttl/1000)`, the
//! heartbeat key `P:heartbeat:<id>` with `PX ttl`, the index set `P:index:nodes` — and events are
//! published on the Titan channel in Titan's JSON when pub/sub is on. So Titan nodes and Muster nodes
//! sharing a Redis and prefix see each other.
//!
//! What Muster adds is additive and ignored by Titan readers: extra hash fields (`registeredAt`,
//! `status`, `metadata`, `ttl`), the per-service index `P:index:services:<name>`, a sorted set of
//! deadlines `P:index:deadlines` for the sweeper, a set `P:index:foreign` of adopted Titan-written
//! nodes, a copy of each node as last changed (`P:last:<id>`, so expiry events carry the node even
//! after its hash expired), the revision counter `P:revision` and the event log `P:log`, a stream
//! whose entry ids are `<revision>-0`.
//!
//! # Layout
//!
//! - `config.rs` — [`RedisConfig`], [`Topology`], URL parsing.
//! - `keys.rs` — the key layout, written once for Rust and Lua.
//! - `scripts.rs` + `lua/*.lua` — the Lua scripts: every write is one atomic script call (EVALSHA,
//!   reloaded on NOSCRIPT), deciding inside Redis whether anything changed; `replies.rs` — one
//!   typed decoder per script's reply.
//! - `lib.rs` — [`RedisRegistry`] and its shared state (`Inner`: script calls, reads, snapshots);
//!   `registry.rs` — the `Registry` contract on it, one script per write.
//! - `conn.rs` — connections: standalone, Sentinel (follows the master after failover), Cluster;
//!   `WAIT` where the write went. `failover.rs` — the hook that carries the revision counter over
//!   to a new primary, and Sentinel's `+switch-master` followed at once.
//! - `codec.rs` — parsing script output, log entries and Titan channel messages.
//! - `watch.rs` — watch streams: blocking `XREAD` on the log from a revision, resync on gaps,
//!   readers that follow a master switch, Titan peers' changes for an unswept inspection.
//! - `sweeper.rs` — observable expiry under a lease; `reconcile.rs` — finding what Titan peers
//!   wrote; `hints.rs` — channel messages and keyspace notifications as hints of which nodes to
//!   look at first.
//! - `tokens.rs` — ACL tokens shared by every server on one Redis.

mod codec;
mod config;
mod conn;
mod failover;
mod hints;
mod keys;
mod reconcile;
mod registry;

use failover::{carry_over_revisions, follow_master_switches};
use registry::readable;
mod replies;
mod scripts;
mod sweeper;
mod tokens;
mod watch;

pub use reconcile::Reconciled;
pub use tokens::RedisTokenStore;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use muster_core::{
    DeregisterReason, Error, ErrorKind, HeartbeatOutcome, NodeId, NodeInfo, NodeUpdate, Registration,
    Registry, Result, Revision, ServiceQuery, Snapshot, WatchStart, WatchStream, time::now_ms,
};
use redis::{FromRedisValue, Script};
use tokio_util::sync::CancellationToken;

pub use config::{Preset, RedisConfig, Topology};

/// The validity rule of a node hash, shared by Titan's reader, the Lua scripts and Muster's reader:
/// a non-empty `address`, `services` that parse as a JSON list and a non-empty `timestamp` (the
/// heartbeat key's existence is the other half of liveness). A node breaking it is skipped by every
/// read and removed by the sweeper, as Titan's reader removes it; everything else about a node is
/// shown as written. Returns why a hash breaks the rule.
pub fn check_node_hash(address: &str, services: &str, timestamp: &str) -> std::result::Result<(), String> {
    codec::check_hash(address, services, timestamp)
}

use codec::{ROW, Row};
use conn::Pool;
use keys::Keys;
use replies::{HeartbeatReply, StoredReply};
use scripts::Scripts;

/// The Redis registry. Cheap to clone; clones share connections. Background work (the sweeper)
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedisRegistry {
    /// Shared state; background tasks hold it too.
    inner: Arc<Inner>,
    /// Cancels background tasks when the last handle goes away.
    _guard: Arc<tokio_util::sync::DropGuard>,
}

pub(crate) struct Inner {
    /// Connections.
    pool: Pool,
    /// Key names.
    keys: Keys,
    /// Compiled scripts.
    scripts: Scripts,
    /// Settings.
    config: RedisConfig,
    /// The channel argument of every script (`''` when pub/sub is off).
    channel_arg: String,
    /// Stops background tasks and watch streams.
    cancel: CancellationToken,
    /// Every task the registry spawns (sweeper, hints, sentinel follower, watch readers).
    tasks: tokio_util::task::TaskTracker,
    /// The last listing view decoded: its header and its nodes (decoding is paid once per view).
    decoded_view: std::sync::Mutex<Option<(String, Arc<Vec<NodeInfo>>)>>,
    /// This process held the sweeper lease at its last pass.
    leading: std::sync::atomic::AtomicBool,
    /// Channel messages Redis refused to publish (the writes they went with stand).
    publish_failures: std::sync::atomic::AtomicU64,
    /// Messages on the channel that were not discovery events (counted, logged at debug).
    unreadable_messages: std::sync::atomic::AtomicU64,
}

impl RedisRegistry {
    /// Connects (checking the server answers) and starts the sweeper when configured.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        // TLS (`rediss://`) uses rustls with the ring provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pool = Pool::new(&config)?;
        pool.run(|mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await }).await?;
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            pool,
            keys: Keys::new(config.key_prefix()),
            scripts: Scripts::new(matches!(config.topology, Topology::Cluster { .. }) && !config.read_only),
            channel_arg: if config.pubsub_enabled { config.pubsub_channel.clone() } else { String::new() },
            config,
            cancel: cancel.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
            decoded_view: std::sync::Mutex::new(None),
            leading: std::sync::atomic::AtomicBool::new(false),
            publish_failures: std::sync::atomic::AtomicU64::new(0),
            unreadable_messages: std::sync::atomic::AtomicU64::new(0),
        });
        if let Some(hook) = carry_over_revisions(&inner) {
            inner.pool.on_connect(hook).await;
        }
        if inner.config.sweeper && !inner.config.read_only {
            inner.tasks.spawn(sweeper::run(Arc::clone(&inner)));
        }
        if matches!(inner.config.topology, Topology::Sentinel { .. }) {
            inner.tasks.spawn(follow_master_switches(Arc::clone(&inner)));
        }
        Ok(Self { inner, _guard: Arc::new(cancel.drop_guard()) })
    }

    /// Connects to a URL with default settings (see [`RedisConfig::from_url`]).
    pub async fn connect_url(url: &str) -> Result<Self> {
        Self::connect(RedisConfig::from_url(url)?).await
    }

    /// How many channel messages Redis refused to publish (a Redis user without `PUBLISH`); the
    /// writes they went with were made all the same.
    pub fn publish_failures(&self) -> u64 {
        self.inner.publish_failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Round trips to Redis so far (every command, pipeline or transaction sent as one, on the
    /// shared and the dedicated connections; pub/sub not counted). A steady-state heartbeat costs
    /// one, a `find` one, an unchanged listing one (its view's header).
    pub fn round_trips(&self) -> u64 {
        self.inner.pool.round_trips()
    }

    /// How many messages on the events channel were not discovery events (not JSON, no node id).
    pub fn unreadable_channel_messages(&self) -> u64 {
        self.inner.unreadable_messages.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The ACL tokens kept in this Redis (`muster:acl:<prefix>`, shared by every server on it).
    pub fn token_store(&self) -> RedisTokenStore {
        RedisTokenStore::new(Arc::clone(&self.inner))
    }

    /// The settings in force.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Runs one sweep now (expires every node whose deadline passed) and one reconciliation with
    /// what Titan peers wrote, regardless of the lease. Returns how many nodes the sweep expired.
    pub async fn sweep_now(&self) -> Result<u64> {
        let (removed, _, _) = self.inner.sweep_due().await?;
        self.inner.reconcile(None).await?;
        Ok(removed)
    }

    /// Runs one full reconciliation pass now (see [`RedisConfig::reconcile_interval`]).
    pub async fn reconcile_now(&self) -> Result<Reconciled> {
        self.inner.reconcile(None).await
    }
}

impl Inner {
    /// Invokes `script` with the common arguments followed by `args`. A publish the script's
    /// Redis user may not make is logged and counted; the write it accompanied stands.
    async fn invoke<T: FromRedisValue + Send>(&self, script: &Script, args: &[String]) -> Result<T> {
        self.invoke_as(script, args, false).await
    }

    /// [`Inner::invoke`] for a script that writes what watchers and readers see: with
    /// [`RedisConfig::replica_acks`], acknowledged only once that many replicas have it.
    async fn invoke_write<T: FromRedisValue + Send>(&self, script: &Script, args: &[String]) -> Result<T> {
        self.invoke_as(script, args, self.config.replica_acks > 0).await
    }

    async fn invoke_as<T: FromRedisValue + Send>(
        &self,
        script: &Script,
        args: &[String],
        replicated: bool,
    ) -> Result<T> {
        let maxlen = self.config.event_history.to_string();
        let (wanted, wait_ms) = (
            self.config.replica_acks,
            u64::try_from(self.config.replica_ack_timeout.as_millis()).unwrap_or(u64::MAX).max(1),
        );
        let op = |mut conn: conn::Conn| {
            let mut invocation = script.prepare_invoke();
            invocation.key(&self.keys.index).arg(&self.keys.prefix).arg(&self.channel_arg).arg(&maxlen);
            for arg in args {
                invocation.arg(arg);
            }
            async move {
                let reply = invocation.invoke_async(&mut conn).await?;
                if !replicated {
                    return Ok((reply, 0));
                }
                // On the same connection, so it counts the replicas that have this write.
                let acked = conn.wait_for_replicas(wanted, wait_ms, &self.keys.index).await?;
                Ok((reply, acked))
            }
        };
        let (reply, acked): (redis::Value, i64) =
            if replicated { self.pool.run_acknowledged(op).await? } else { self.pool.run(op).await? };
        if replicated && acked < i64::from(wanted) {
            return Err(Error::unavailable(format!(
                "the change reached {acked} of {wanted} replicas within {wait_ms} ms: not acknowledged \
                 (it may stand or be lost if the primary fails now; repeat it)"
            )));
        }
        let reply = self.unwrap_publish_failure(reply);
        T::from_redis_value(reply)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("malformed script reply: {e}")))
    }

    /// The script's own reply; a refused publish reported beside it is logged (at `warn` for the
    /// 1st, 2nd, 4th, 8th... failure) and counted.
    fn unwrap_publish_failure(&self, reply: redis::Value) -> redis::Value {
        let redis::Value::Array(mut items) = reply else { return reply };
        let marked = items.len() == 3
            && matches!(&items[0], redis::Value::BulkString(b) if b.as_slice() == b"~publish-failed");
        if !marked {
            return redis::Value::Array(items);
        }
        let inner = items.pop().unwrap_or(redis::Value::Nil);
        let reason = match &items[1] {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        };
        let failures = self.publish_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if failures.is_power_of_two() {
            tracing::warn!(channel = %self.config.pubsub_channel, %reason, failures, "publishing an event on the channel was refused; the write stands");
        } else {
            tracing::debug!(%reason, failures, "publishing an event on the channel was refused");
        }
        inner
    }

    /// Reads nodes through the read script (`mode` and its arguments, see `scripts.rs`). Returns
    /// the revision and the rows.
    async fn read(&self, mode: &str, args: &[String]) -> Result<(Revision, Vec<Row>)> {
        let mut all = vec![mode.to_owned(), if self.config.read_only { "ro" } else { "rw" }.to_owned()];
        all.extend_from_slice(args);
        let out = replies::read(self.invoke(&self.scripts.read, &all).await?, ROW)?;
        let mut rows = codec::parse_bulk(&out.view_json, &out.view_deadlines).map_err(|reason| {
            Error::new(ErrorKind::Internal, format!("unreadable node listing: {reason}"))
        })?;
        rows.extend(out.rows.chunks_exact(ROW).map(codec::parse_row));
        Ok((out.revision, rows))
    }

    /// Reads nodes and returns the readable ones with their liveness, sorted by id. A read changes
    /// nothing: what Titan's reader would delete is skipped here and removed by the sweeper.
    async fn read_nodes(&self, mode: &str, args: &[String]) -> Result<(Revision, Vec<(NodeInfo, bool)>)> {
        let (revision, rows) = self.read(mode, args).await?;
        let mut nodes = readable(rows);
        nodes.sort_by(|a, b| a.0.node_id.cmp(&b.0.node_id));
        Ok((revision, nodes))
    }

    /// Every live node and the revision they reflect, in at most two round trips. The first is an
    /// atomic `MULTI` of native commands reading the materialized view kept by the read script (see
    /// `scripts.rs`); only when the view is stale, or nodes written by Titan peers must be read from
    /// their hashes, does a second trip run the read script.
    pub(crate) async fn snapshot(&self) -> Result<Snapshot> {
        type Reply = (Option<String>, (u64, u64), String, Vec<String>, u64, u64);
        let keys = &self.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(&keys.revision)
            .cmd("TIME")
            .cmd("GETRANGE")
            .arg(&keys.view)
            .arg(0)
            .arg(codec::VIEW_HEADER_MAX - 1)
            .cmd("SMEMBERS")
            .arg(&keys.foreign)
            .cmd("SCARD")
            .arg(&keys.index)
            .cmd("SCARD")
            .arg(&keys.tracked);
        let (revision, (seconds, micros), header, foreign, indexed, tracked): Reply =
            self.pool.query_pipe(&pipe).await?;
        let now_ms = seconds * 1000 + micros / 1000;
        let revision_text = revision.unwrap_or_else(|| "0".to_owned());
        let header = codec::view_header(&header, &revision_text, now_ms).filter(|_| indexed == tracked);
        let view = match header {
            Some(header) => self.decoded_view(header, &revision_text, now_ms).await?,
            None => None,
        };
        let alive =
            |nodes: Vec<(NodeInfo, bool)>| nodes.into_iter().filter(|(_, alive)| *alive).map(|(n, _)| n);
        let (revision, nodes) = match view {
            // The view's nodes are sorted and alive; only Titan peers' nodes are merged in.
            Some(view) if foreign.is_empty() => (Revision(revision_text.parse().unwrap_or(0)), view.to_vec()),
            Some(view) => {
                let (_, rows) = self.read("ids", &foreign).await?;
                let mut nodes = view.to_vec();
                nodes.extend(alive(readable(rows)));
                nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
                (Revision(revision_text.parse().unwrap_or(0)), nodes)
            }
            // `read_nodes` sorts.
            None => {
                let (revision, nodes) = self.read_nodes("active", &[]).await?;
                (revision, alive(nodes).collect())
            }
        };
        Ok(Snapshot { revision, nodes })
    }

    /// The nodes of the view whose header is `header`: decoded before, or read and decoded now
    /// (`None` when the view changed in between: the caller reads the hashes).
    async fn decoded_view(
        &self,
        header: &str,
        revision: &str,
        now_ms: u64,
    ) -> Result<Option<Arc<Vec<NodeInfo>>>> {
        {
            let cached = self.decoded_view.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((key, nodes)) = cached.as_ref()
                && key == header
            {
                return Ok(Some(Arc::clone(nodes)));
            }
        }
        let view: Option<String> = self.pool.query(redis::cmd("GET").arg(&self.keys.view)).await?;
        let Some(view) = view.filter(|v| v.starts_with(header)) else { return Ok(None) };
        let Some((body, deadlines)) = codec::parse_view(&view, revision, now_ms) else { return Ok(None) };
        let rows = codec::parse_bulk(body, deadlines)
            .map_err(|reason| Error::new(ErrorKind::Internal, format!("unreadable node view: {reason}")))?;
        let mut nodes: Vec<NodeInfo> = readable(rows).into_iter().map(|(node, _)| node).collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let nodes = Arc::new(nodes);
        *self.decoded_view.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((header.to_owned(), Arc::clone(&nodes)));
        Ok(Some(nodes))
    }

    /// Expires due nodes. Returns `(removed, next deadline ms or None, server now ms)`.
    pub(crate) async fn sweep_due(&self) -> Result<(u64, Option<u64>, u64)> {
        const BATCH: u64 = 500;
        let mut total = 0;
        loop {
            let reply: Vec<String> = self.invoke_write(&self.scripts.sweep, &[BATCH.to_string()]).await?;
            let swept = replies::sweep(&reply)?;
            total += swept.removed;
            if swept.removed < BATCH {
                return Ok((total, swept.next_deadline_ms, swept.now_ms));
            }
        }
    }

    /// Removes a node through the deregister script, on `condition` when given.
    async fn deregister(
        &self,
        node_id: &NodeId,
        reason: DeregisterReason,
        condition: Option<&muster_core::StoredServices>,
    ) -> Result<bool> {
        self.writable()?;
        let condition = condition.map(muster_core::StoredServices::to_wire).unwrap_or_default();
        let args = vec![node_id.to_string(), reason.as_str().to_owned(), condition];
        let reply: Vec<String> = self.invoke_write(&self.scripts.deregister, &args).await?;
        match replies::deregister(&reply)? {
            Some(removed) => Ok(removed),
            None => Err(muster_core::StoredServices::conflict(node_id)),
        }
    }

    /// Refuses a write on a read-only registry.
    fn writable(&self) -> Result<()> {
        if self.config.read_only {
            return Err(Error::new(ErrorKind::InvalidInput, "this Redis registry is read-only (inspection)"));
        }
        Ok(())
    }

    /// The flag the heartbeat scripts take: publish Titan's `NODE_UPDATED` on every heartbeat.
    fn heartbeat_events_arg(&self) -> String {
        if self.config.pubsub_enabled && self.config.heartbeat_events { "1" } else { "0" }.to_owned()
    }

    /// True when some process holds the sweeper lease of this prefix (and so reconciles).
    pub(crate) async fn sweeper_present(&self) -> Result<bool> {
        self.pool.query(redis::cmd("EXISTS").arg(&self.keys.sweeper)).await
    }

    /// The current revision.
    pub(crate) async fn revision(&self) -> Result<Option<Revision>> {
        let value: Option<String> = self.pool.query(redis::cmd("GET").arg(&self.keys.revision)).await?;
        Ok(value.and_then(|v| v.parse().ok()).map(Revision))
    }
}

/// How long one blocking read of the log waits before checking for resets.
pub(crate) fn block_time(config: &RedisConfig) -> Duration {
    (config.response_timeout / 2).min(Duration::from_secs(1))
}
