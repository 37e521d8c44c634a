//! Discovery options with the Titan defaults, their validation, and the agent's retry policy.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::node::{MAX_TTL, MIN_TTL};

/// Default time between heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(5000);
/// Default heartbeat TTL.
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_millis(15000);
/// Default pub/sub channel (Titan's).
pub const DEFAULT_PUBSUB_CHANNEL: &str = "titan:discovery:events";
/// Default store key prefix (Titan's).
pub const DEFAULT_PREFIX: &str = "titan:discovery";
/// Default number of heartbeat attempts.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default first retry delay; it doubles with each attempt.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(1000);

/// The discovery options of the Titan module, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// How long a node stays active after a heartbeat. Must exceed `heartbeat_interval`.
    pub heartbeat_ttl: Duration,
    /// Publish and receive events on the Titan pub/sub channel (Redis backend). Muster's own
    /// watch stream works either way.
    pub pubsub_enabled: bool,
    /// The Titan pub/sub channel.
    pub pubsub_channel: String,
    /// Key prefix in the store.
    pub prefix: String,
    /// Discover and watch only; never register or heartbeat.
    pub client_mode: bool,
    /// Attempts per heartbeat before giving up until the next interval (at least 1).
    pub max_retries: u32,
    /// Delay before the second attempt; doubles for each further attempt.
    pub retry_delay: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
            pubsub_enabled: false,
            pubsub_channel: DEFAULT_PUBSUB_CHANNEL.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            client_mode: false,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
        }
    }
}

/// Netron's key prefix (seeds 000 and 004).
pub const NETRON_PREFIX: &str = "netron:discovery";
/// Netron's pub/sub channel.
pub const NETRON_PUBSUB_CHANNEL: &str = "netron:discovery:events";

/// The store settings of a kind of fleet, in one word: prefix, channel and pub/sub switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// Titan's discovery module: `titan:discovery`, its channel, pub/sub off.
    #[default]
    Titan,
    /// Netron's: `netron:discovery`, `netron:discovery:events`, pub/sub on.
    Netron,
}

impl Preset {
    /// The default options with this preset's prefix, channel and pub/sub switch.
    pub fn options(self) -> DiscoveryOptions {
        match self {
            Self::Titan => DiscoveryOptions::default(),
            Self::Netron => DiscoveryOptions {
                prefix: NETRON_PREFIX.to_owned(),
                pubsub_channel: NETRON_PUBSUB_CHANNEL.to_owned(),
                pubsub_enabled: true,
                ..DiscoveryOptions::default()
            },
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "titan" => Ok(Self::Titan),
            "netron" => Ok(Self::Netron),
            other => Err(Error::invalid("preset", format!("{other:?} is not one of titan, netron"))),
        }
    }
}

/// Something legal but risky in a set of options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsWarning(pub String);

impl DiscoveryOptions {
    /// Checks the options. Returns warnings for legal but risky settings (a TTL under twice the
    /// interval risks false expiries on one slow heartbeat).
    pub fn validate(&self) -> Result<Vec<OptionsWarning>> {
        let ms = |d: Duration| d.as_millis();
        if self.heartbeat_interval.is_zero() {
            return Err(Error::invalid("heartbeat interval", "must be greater than zero"));
        }
        if self.heartbeat_ttl < MIN_TTL || self.heartbeat_ttl > MAX_TTL {
            return Err(Error::invalid(
                "heartbeat ttl",
                format!("{} ms is outside {}..={} ms", ms(self.heartbeat_ttl), ms(MIN_TTL), ms(MAX_TTL)),
            ));
        }
        if self.heartbeat_ttl <= self.heartbeat_interval {
            return Err(Error::invalid(
                "heartbeat ttl",
                format!(
                    "{} ms must exceed the heartbeat interval of {} ms, or nodes expire between heartbeats",
                    ms(self.heartbeat_ttl),
                    ms(self.heartbeat_interval)
                ),
            ));
        }
        if self.max_retries == 0 {
            return Err(Error::invalid("max retries", "must be at least 1 (it counts attempts)"));
        }
        self.retry_policy()?;
        if self.retry_delay > self.heartbeat_ttl {
            return Err(Error::invalid("retry delay", "must not exceed the heartbeat ttl"));
        }
        for (field, value) in [("prefix", &self.prefix), ("pubsub channel", &self.pubsub_channel)] {
            if value.is_empty()
                || value.len() > 128
                || value.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(Error::invalid(field, "must be 1-128 characters without spaces"));
            }
        }
        let mut warnings = Vec::new();
        if self.heartbeat_ttl < self.heartbeat_interval * 2 {
            warnings.push(OptionsWarning(format!(
                "heartbeat ttl {} ms is less than twice the interval {} ms; one slow heartbeat can expire the node",
                ms(self.heartbeat_ttl),
                ms(self.heartbeat_interval)
            )));
        }
        Ok(warnings)
    }

    /// The retry policy these options describe: from `retry_delay` doubling, ±20 %; refused when
    /// `retry_delay` is under 1 ms.
    pub fn retry_policy(&self) -> Result<RetryPolicy> {
        let backoff = Backoff::try_new(self.retry_delay, Duration::MAX, 0.2)
            .map_err(|e| Error::invalid("retry delay", e))?;
        Ok(RetryPolicy { max_attempts: self.max_retries, backoff })
    }
}

/// How the agent retries a failed heartbeat: attempt `n` (1-based) waits `base * 2^(n-1)` before
/// the next, spread by the backoff's jitter so many nodes do not retry in lockstep.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// The delays between attempts.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based), without jitter.
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        self.backoff.nominal(attempt)
    }

    /// The delay after failed attempt `attempt` (1-based), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.backoff.delay(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_titans() {
        let o = DiscoveryOptions::default();
        assert_eq!(o.heartbeat_interval, Duration::from_millis(5000));
        assert_eq!(o.heartbeat_ttl, Duration::from_millis(15000));
        assert!(!o.pubsub_enabled && !o.client_mode);
        assert_eq!(o.pubsub_channel, "titan:discovery:events");
        assert_eq!(o.prefix, "titan:discovery");
        assert_eq!((o.max_retries, o.retry_delay), (3, Duration::from_millis(1000)));
        assert_eq!(o.validate().unwrap(), vec![]);
    }

    #[test]
    fn ttl_must_exceed_interval() {
        let mut o = DiscoveryOptions { heartbeat_ttl: Duration::from_millis(5000), ..Default::default() };
        let err = o.validate().unwrap_err();
        assert!(err.is_invalid_input() && err.to_string().contains("must exceed the heartbeat interval"));
        o.heartbeat_ttl = Duration::from_millis(5500);
        let warnings = o.validate().unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].0.contains("less than twice"));
    }

    #[test]
    fn other_rules() {
        let bad = [
            DiscoveryOptions { heartbeat_interval: Duration::ZERO, ..Default::default() },
            DiscoveryOptions { max_retries: 0, ..Default::default() },
            DiscoveryOptions { prefix: String::new(), ..Default::default() },
            DiscoveryOptions { pubsub_channel: "a b".into(), ..Default::default() },
            DiscoveryOptions { heartbeat_ttl: Duration::from_secs(100_000), ..Default::default() },
            DiscoveryOptions { retry_delay: Duration::from_secs(60), ..Default::default() },
            DiscoveryOptions { retry_delay: Duration::ZERO, ..Default::default() },
        ];
        for o in bad {
            assert!(o.validate().unwrap_err().is_invalid_input(), "{o:?}");
        }
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let p = DiscoveryOptions::default().retry_policy().unwrap();
        assert_eq!(p.nominal_delay(1), Duration::from_millis(1000));
        assert_eq!(p.nominal_delay(2), Duration::from_millis(2000));
        assert_eq!(p.nominal_delay(3), Duration::from_millis(4000));
        for attempt in 1..=3 {
            let d = p.delay(attempt);
            let n = p.nominal_delay(attempt);
            assert!(d >= n.mul_f64(0.8) && d <= n.mul_f64(1.2), "{attempt}: {d:?}");
        }
        assert!(p.nominal_delay(100) > Duration::ZERO, "no overflow on large attempts");
    }
}
