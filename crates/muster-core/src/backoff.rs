//! Exponential backoff with jitter and a ceiling: the one used by every retry and reconnect loop
//! (the agent, the SDK's registrations and resolver, the Redis connection, hints and sweeper, the
//! server's change feed, the Netron peer's reconnections).
//!
//! Bounds are checked when a backoff is made ([`Backoff::try_new`] refuses a zero first delay, a
//! ceiling below it and a jitter outside 0–1) rather than clamped silently, so a bad setting is an
//! error where it is given, not a loop that spins or never waits.

use std::time::Duration;

/// The first delay of [`Backoff::default`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The ceiling of [`Backoff::default`]: 100 ms doubled six times.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(6400);
/// The jitter of [`Backoff::default`]: each delay is spread by half either way.
pub const DEFAULT_BACKOFF_JITTER: f64 = 0.5;

/// Why a backoff's bounds were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidBackoff {
    /// A zero first delay would retry in a tight loop.
    #[error("the first delay must be at least 1 ms")]
    ZeroBase,
    /// The ceiling is below the first delay.
    #[error("the longest delay ({max:?}) is shorter than the first ({base:?})")]
    MaxBelowBase {
        /// The first delay.
        base: Duration,
        /// The ceiling.
        max: Duration,
    },
    /// The jitter is not a fraction.
    #[error("jitter {0} is outside 0.0–1.0")]
    Jitter(f64),
}

/// Exponential backoff with jitter and a ceiling.
///
/// After `n` failures in a row the nominal delay is `base * 2^(n-1)`, at most `max`; the delay
/// waited is drawn uniformly from `nominal * (1 ± jitter)` cut at `max`, so that many clients
/// failing together do not retry in lockstep — also at the ceiling, where the spread is
/// `[max * (1 - jitter), max]` rather than every client waiting exactly `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
    failures: u32,
}

impl Default for Backoff {
    /// 100 ms doubling to 6.4 s, ±50 %.
    fn default() -> Self {
        Self {
            base: DEFAULT_BACKOFF_BASE,
            max: DEFAULT_BACKOFF_MAX,
            jitter: DEFAULT_BACKOFF_JITTER,
            failures: 0,
        }
    }
}

impl Backoff {
    /// A backoff from `base` (at least 1 ms) doubling up to `max` (at least `base`), each delay
    /// spread by `jitter` (0.0–1.0) either way.
    pub fn try_new(base: Duration, max: Duration, jitter: f64) -> Result<Self, InvalidBackoff> {
        if base < Duration::from_millis(1) {
            return Err(InvalidBackoff::ZeroBase);
        }
        if max < base {
            return Err(InvalidBackoff::MaxBelowBase { base, max });
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidBackoff::Jitter(jitter));
        }
        Ok(Self { base, max, jitter, failures: 0 })
    }

    /// The first delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay after `failures` failures in a row (1-based), without jitter.
    pub fn nominal(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay after `failures` failures in a row (1-based), with jitter: uniform in
    /// `[nominal * (1 - jitter), min(nominal * (1 + jitter), max)]`.
    pub fn delay(&self, failures: u32) -> Duration {
        use rand::Rng;
        let nominal = self.nominal(failures);
        if self.jitter == 0.0 {
            return nominal;
        }
        let scaled = |factor: f64| {
            Duration::try_from_secs_f64(nominal.as_secs_f64() * factor).unwrap_or(Duration::MAX)
        };
        let (low, high) = (scaled(1.0 - self.jitter), scaled(1.0 + self.jitter).min(self.max));
        rand::rng().random_range(low..=high)
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay(self.failures)
    }

    /// Counts a success: the next failure waits `base` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_with_jitter_and_resets() {
        let mut backoff = Backoff::try_new(ms(100), ms(450), 0.5).unwrap();
        for (n, nominal) in [(1, 100), (2, 200), (3, 400), (4, 450), (40, 450)] {
            assert_eq!(backoff.nominal(n), ms(nominal));
        }
        let delays: Vec<Duration> = (0..100).map(|_| backoff.delay(2)).collect();
        assert!(delays.iter().all(|d| *d >= ms(100) && *d <= ms(300)));
        assert!(delays.iter().any(|d| *d != delays[0]), "jittered");
        assert!(backoff.failed() <= ms(150));
        backoff.failed();
        assert_eq!(backoff.failures(), 2);
        backoff.succeeded();
        assert_eq!(backoff.failures(), 0);
        assert_eq!(Backoff::try_new(ms(100), ms(100), 0.0).unwrap().delay(9), ms(100), "no jitter");
    }

    #[test]
    fn bad_bounds_are_refused_not_clamped() {
        assert_eq!(Backoff::try_new(Duration::ZERO, ms(10), 0.2), Err(InvalidBackoff::ZeroBase));
        assert_eq!(Backoff::try_new(Duration::from_micros(999), ms(10), 0.2), Err(InvalidBackoff::ZeroBase));
        assert_eq!(
            Backoff::try_new(ms(200), ms(100), 0.2),
            Err(InvalidBackoff::MaxBelowBase { base: ms(200), max: ms(100) })
        );
        for jitter in [-0.1, 1.5, f64::INFINITY] {
            assert_eq!(Backoff::try_new(ms(1), ms(10), jitter), Err(InvalidBackoff::Jitter(jitter)));
        }
        assert!(matches!(Backoff::try_new(ms(1), ms(10), f64::NAN), Err(InvalidBackoff::Jitter(_))));
        assert!(
            Backoff::try_new(Duration::ZERO, ms(1), 0.0).unwrap_err().to_string().contains("at least 1 ms")
        );
        let default = Backoff::default();
        assert_eq!((default.base(), default.max()), (DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX));
        assert_eq!(
            Backoff::try_new(DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_JITTER),
            Ok(default)
        );
    }

    /// At the ceiling the jitter still spreads the delays (the cut at `max` is not a point where
    /// half of all clients land together).
    #[test]
    fn jitter_at_the_ceiling_spreads_below_it() {
        let backoff = Backoff::try_new(ms(200), ms(200), 0.5).unwrap();
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.delay(1)).collect();
        let at_max = delays.iter().filter(|d| **d == ms(200)).count();
        assert!(at_max < 20, "{at_max} of 1000 delays were exactly the ceiling");
        assert!(delays.iter().all(|d| *d >= ms(100) && *d <= ms(200)));
        let below_150 = delays.iter().filter(|d| **d < ms(150)).count();
        assert!(
            (350..=650).contains(&below_150),
            "uniform over 100–200 ms: {below_150} of 1000 under 150 ms"
        );
    }

    proptest! {
        /// Every delay lies within the nominal delay's jitter band, never over the ceiling and
        /// never under 1 ms times (1 - jitter); the nominal delay never shrinks as failures grow.
        #[test]
        fn delays_stay_within_their_bounds(
            base in 1u64..10_000,
            extra in 0u64..1_000_000,
            jitter in 0.0f64..=1.0,
            failures in 0u32..100,
        ) {
            let (base, max) = (ms(base), ms(base + extra));
            let backoff = Backoff::try_new(base, max, jitter).unwrap();
            let nominal = backoff.nominal(failures);
            prop_assert!(nominal >= base && nominal <= max);
            prop_assert!(backoff.nominal(failures + 1) >= nominal);
            let delay = backoff.delay(failures);
            prop_assert!(delay <= max, "{delay:?} over the ceiling {max:?}");
            let floor = nominal.as_secs_f64() * (1.0 - jitter) - 1e-6;
            prop_assert!(delay.as_secs_f64() >= floor, "{delay:?} under the band of {nominal:?} ±{jitter}");
            prop_assert!(delay.as_secs_f64() <= nominal.as_secs_f64() * (1.0 + jitter) + 1e-6);
        }

        /// Bounds are refused exactly when they are bad.
        #[test]
        fn refused_exactly_when_bad(base in 0u64..100, max in 0u64..100, jitter in -1.0f64..2.0) {
            let made = Backoff::try_new(ms(base), ms(max), jitter);
            let good = base >= 1 && max >= base && (0.0..=1.0).contains(&jitter);
            prop_assert_eq!(made.is_ok(), good);
        }
    }
}
