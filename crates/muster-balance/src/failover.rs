//! Failover with per-instance circuit breakers.
//!
//! [`Failover::call`] takes the `UP` instances of a service, orders them with its [`Selector`],
//! and calls them one after the other until one succeeds. A
//! retryable error ([`Retryable`]: refused connection, timeout, 5xx) moves on to the next candidate;
//! any other error is the answer. Each instance has a circuit breaker: after
//! [`BreakerConfig::failures`] retryable failures in a row it opens and the instance is skipped;
//! after [`BreakerConfig::cool_down`] it half-opens and lets one trial call through, which closes it
//! on success or opens it again on failure. A breaker no call asked for in five minutes (and whose
//! circuit is not open) is forgotten, so the table follows a fleet whose ids change instead of
//! keeping every id it ever met.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::Endpoint;
use crate::select::Selector;

/// Circuit breaker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Retryable failures in a row that open the circuit (default 5).
    pub failures: u32,
    /// How long an open circuit stays open before one trial call (default 30 s).
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failures: 5, cool_down: Duration::from_secs(30) }
    }
}

/// The state of one instance's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until the cool-down ends.
    Open,
    /// The cool-down ended: the next call is a trial.
    HalfOpen,
}

/// Errors that say whether another instance may succeed where this one failed.
pub trait Retryable {
    /// True when the failure is the instance's (unreachable, timed out, overloaded), so another
    /// instance may succeed.
    fn is_retryable(&self) -> bool;
}

impl Retryable for std::io::Error {
    fn is_retryable(&self) -> bool {
        use std::io::ErrorKind::{
            BrokenPipe, ConnectionAborted, ConnectionRefused, ConnectionReset, NotConnected, TimedOut,
            UnexpectedEof,
        };
        matches!(
            self.kind(),
            ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | BrokenPipe
                | TimedOut
                | UnexpectedEof
        )
    }
}

#[cfg(feature = "reqwest")]
impl Retryable for reqwest::Error {
    fn is_retryable(&self) -> bool {
        self.is_connect()
            || self.is_timeout()
            || self.status().is_some_and(|s| matches!(s.as_u16(), 502..=504))
    }
}

/// Why a call with failover did not succeed. `R` is what the caller's registry lookup fails
/// with, for callers that look the instances up first (never, for [`Failover::call`]).
#[derive(Debug)]
pub enum FailoverError<E, R = std::convert::Infallible> {
    /// The instances could not be looked up (the registry was never reachable).
    Registry(R),
    /// The service has no `UP` instance.
    NoInstances(String),
    /// Every `UP` instance's circuit is open.
    AllCircuitsOpen(String),
    /// A call failed with an error that is not retryable.
    Failed(E),
    /// Every candidate failed with a retryable error; the last one.
    Exhausted {
        /// Instances tried.
        attempts: usize,
        /// The last error.
        last: E,
    },
}

impl<E, R> FailoverError<E, R> {
    /// The same outcome where the lookup may fail with `R2` (it did not fail here).
    pub fn lookup_as<R2>(self) -> FailoverError<E, R2>
    where
        R: Into<R2>,
    {
        match self {
            Self::Registry(e) => FailoverError::Registry(e.into()),
            Self::NoInstances(s) => FailoverError::NoInstances(s),
            Self::AllCircuitsOpen(s) => FailoverError::AllCircuitsOpen(s),
            Self::Failed(e) => FailoverError::Failed(e),
            Self::Exhausted { attempts, last } => FailoverError::Exhausted { attempts, last },
        }
    }
}

impl<E: std::fmt::Display, R: std::fmt::Display> std::fmt::Display for FailoverError<E, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registry(e) => write!(f, "{e}"),
            Self::NoInstances(s) => write!(f, "no UP instance of {s}"),
            Self::AllCircuitsOpen(s) => write!(f, "every instance of {s} has an open circuit"),
            Self::Failed(e) => write!(f, "{e}"),
            Self::Exhausted { attempts, last } => write!(f, "all {attempts} instances failed; last: {last}"),
        }
    }
}

impl<E: std::error::Error + 'static, R: std::error::Error + 'static> std::error::Error
    for FailoverError<E, R>
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Registry(e) => Some(e),
            Self::Failed(e) | Self::Exhausted { last: e, .. } => Some(e),
            Self::NoInstances(_) | Self::AllCircuitsOpen(_) => None,
        }
    }
}

/// One instance's breaker.
#[derive(Debug, Default, Clone)]
pub(crate) struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// A half-open trial is in flight.
    trial: bool,
    /// When a call last asked to go through (`None`: never).
    last_asked: Option<Instant>,
}

impl Breaker {
    pub(crate) fn state(&self, now: Instant) -> CircuitState {
        match self.open_until {
            None => CircuitState::Closed,
            Some(until) if now < until || self.trial => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// True when a call may go through now (taking the half-open trial if it is one).
    #[cfg(test)]
    pub(crate) fn try_acquire(&mut self, now: Instant) -> bool {
        self.acquire(now).is_some()
    }

    /// `Some(trial)` when a call may go through now; `trial` is true when it took the half-open
    /// trial (which it must give back, one way or another).
    fn acquire(&mut self, now: Instant) -> Option<bool> {
        self.last_asked = Some(now);
        match self.state(now) {
            CircuitState::Closed => Some(false),
            CircuitState::Open => None,
            CircuitState::HalfOpen => {
                self.trial = true;
                Some(true)
            }
        }
    }

    pub(crate) fn success(&mut self) {
        *self = Self { last_asked: self.last_asked, ..Self::default() };
    }

    /// Whether the table may forget it: no call asked for it over [`IDLE`], no trial is in flight
    /// and its circuit is not open — forgotten, it would come back closed, as it would be by
    /// now for any call.
    fn forgettable(&self, now: Instant) -> bool {
        let idle = self.last_asked.is_none_or(|asked| now.saturating_duration_since(asked) >= IDLE);
        idle && !self.trial && self.open_until.is_none_or(|until| now >= until)
    }

    pub(crate) fn failure(&mut self, now: Instant, config: &BreakerConfig) {
        self.failures = self.failures.saturating_add(1);
        if self.open_until.is_some() || self.failures >= config.failures.max(1) {
            self.open_until = Some(now + config.cool_down);
        }
        self.trial = false;
    }

    /// A call that neither succeeded nor failed retryably: a trial gives its slot back.
    pub(crate) fn neutral(&mut self) {
        self.trial = false;
    }
}

/// Failover over a list of instances: the selector's order, a circuit breaker per instance. Used
/// by the HTTP SDK's `call_with_failover` and by Netron peers' calls by name.
pub struct Failover {
    selector: Box<dyn Selector>,
    config: BreakerConfig,
    /// By service, then instance id (looked up without building a key). Read-mostly: an
    /// instance's breaker is added once, then a call looks it up once under the read lock and
    /// settles it through its own lock — calls to different instances never wait for each other.
    breakers: RwLock<HashMap<String, HashMap<String, Shared>>>,
    /// Breakers in the table after its last sweep of forgettable ones: the next sweep comes when
    /// it has doubled, so sweeping costs a constant per breaker added.
    swept: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Failover {
    /// Failover with `selector` and breakers configured by `config`.
    pub fn new(selector: Box<dyn Selector>, config: BreakerConfig) -> Self {
        Self { selector, config, breakers: RwLock::new(HashMap::new()), swept: 0.into() }
    }

    /// `instance`'s breaker (added closed the first time).
    fn breaker(&self, instance: &dyn Endpoint) -> Arc<Mutex<Breaker>> {
        {
            let breakers = self.breakers.read().unwrap_or_else(|p| p.into_inner());
            if let Some(breaker) = breakers.get(instance.service()).and_then(|s| s.get(instance.id())) {
                return Arc::clone(breaker);
            }
        }
        let mut breakers = self.breakers.write().unwrap_or_else(|p| p.into_inner());
        let kept: usize = breakers.values().map(HashMap::len).sum();
        let swept = self.swept.load(std::sync::atomic::Ordering::Relaxed);
        if kept >= (2 * swept).max(64) {
            let now = Instant::now();
            for of_service in breakers.values_mut() {
                // Held elsewhere: a call is using it.
                of_service.retain(|_, breaker| {
                    Arc::strong_count(breaker) > 1 || !with(breaker, |b| b.forgettable(now))
                });
            }
            breakers.retain(|_, of_service| !of_service.is_empty());
            let left = breakers.values().map(HashMap::len).sum();
            self.swept.store(left, std::sync::atomic::Ordering::Relaxed);
        }
        let of_service = breakers.entry(instance.service().to_owned()).or_default();
        Arc::clone(of_service.entry(instance.id().to_owned()).or_default())
    }
}

/// How long a breaker no call asked for is kept: instances come and go (a fleet's ids change at
/// every deployment), and a table that kept every id it ever met would grow without end.
const IDLE: Duration = Duration::from_secs(300);

/// A breaker as the table and the calls to its instance hold it.
type Shared = Arc<Mutex<Breaker>>;

/// Runs `f` on a breaker under its lock.
fn with<T>(breaker: &Mutex<Breaker>, f: impl FnOnce(&mut Breaker) -> T) -> T {
    f(&mut breaker.lock().unwrap_or_else(|p| p.into_inner()))
}

/// One call to one instance in flight: reported to the selector until it ends, and the breaker's
/// trial (if it took it) given back if the call is abandoned.
struct Attempt<'a> {
    failover: &'a Failover,
    instance: &'a dyn Endpoint,
    breaker: Arc<Mutex<Breaker>>,
    /// The call took the half-open trial and has not settled the breaker yet.
    holds_trial: bool,
}

impl<'a> Attempt<'a> {
    fn start(
        failover: &'a Failover,
        instance: &'a dyn Endpoint,
        breaker: Arc<Mutex<Breaker>>,
        trial: bool,
    ) -> Self {
        failover.selector.started(instance);
        Self { failover, instance, breaker, holds_trial: trial }
    }

    /// Records the call's outcome in the breaker.
    fn settle(mut self, outcome: impl FnOnce(&mut Breaker)) {
        self.holds_trial = false;
        with(&self.breaker, outcome);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.failover.selector.finished(self.instance);
        if self.holds_trial {
            with(&self.breaker, Breaker::neutral);
        }
    }
}

impl Failover {
    /// Calls `call` on the `UP` instances among `instances` in the selector's order until one
    /// succeeds, skipping instances whose circuit is open; see [the module](crate::failover).
    /// `call` borrows the instance it is given: a call copies none of them.
    pub async fn call<'a, I, T, E, F, Fut>(
        &self,
        service: &str,
        instances: &'a [I],
        mut call: F,
    ) -> Result<T, FailoverError<E>>
    where
        I: Endpoint,
        F: FnMut(&'a I) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable,
    {
        // The `UP` instances, borrowed: ordering copies none of them.
        let up: Vec<&I> = instances.iter().filter(|i| i.is_up()).collect();
        if up.is_empty() {
            return Err(FailoverError::NoInstances(service.to_owned()));
        }
        let endpoints: Vec<&dyn Endpoint> = up.iter().map(|i| *i as &dyn Endpoint).collect();
        let mut attempts = 0;
        let mut last = None;
        for index in self.selector.order(&endpoints) {
            let (instance, owned) = (endpoints[index], up[index]);
            let breaker = self.breaker(instance);
            let Some(trial) = with(&breaker, |b| b.acquire(Instant::now())) else {
                continue;
            };
            attempts += 1;
            // Settles the breaker and the selector's count even when this future is dropped
            // mid-call (a caller's timeout): the trial is given back, the call no longer counts.
            let attempt = Attempt::start(self, instance, breaker, trial);
            match call(owned).await {
                Ok(value) => {
                    attempt.settle(Breaker::success);
                    return Ok(value);
                }
                Err(error) if error.is_retryable() => {
                    tracing::debug!(service, instance = %attempt.instance.id(), "call failed; trying the next instance");
                    attempt.settle(|b| b.failure(Instant::now(), &self.config));
                    last = Some(error);
                }
                Err(error) => {
                    attempt.settle(Breaker::neutral);
                    return Err(FailoverError::Failed(error));
                }
            }
        }
        match last {
            Some(last) => Err(FailoverError::Exhausted { attempts, last }),
            None => Err(FailoverError::AllCircuitsOpen(service.to_owned())),
        }
    }

    /// The circuit state of one instance of `service` (closed when never called).
    pub fn circuit_state(&self, service: &str, instance_id: &str) -> CircuitState {
        let breakers = self.breakers.read().unwrap_or_else(|p| p.into_inner());
        breakers
            .get(service)
            .and_then(|s| s.get(instance_id))
            .map_or(CircuitState::Closed, |b| with(b, |b| b.state(Instant::now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_half_opens_and_closes() {
        let config = BreakerConfig { failures: 3, cool_down: Duration::from_secs(10) };
        let mut breaker = Breaker::default();
        for _ in 0..2 {
            assert!(breaker.try_acquire(Instant::now()));
            breaker.failure(Instant::now(), &config);
        }
        assert_eq!(breaker.state(Instant::now()), CircuitState::Closed, "two failures of three");
        breaker.failure(Instant::now(), &config);
        assert_eq!(breaker.state(Instant::now()), CircuitState::Open);
        assert!(!breaker.try_acquire(Instant::now()));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.state(Instant::now()), CircuitState::HalfOpen);
        assert!(breaker.try_acquire(Instant::now()), "one trial");
        assert!(!breaker.try_acquire(Instant::now()), "only one trial at a time");
        breaker.failure(Instant::now(), &config);
        assert_eq!(breaker.state(Instant::now()), CircuitState::Open, "a failed trial opens it again");

        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(breaker.try_acquire(Instant::now()));
        breaker.success();
        assert_eq!(breaker.state(Instant::now()), CircuitState::Closed);
        breaker.failure(Instant::now(), &config);
        assert_eq!(breaker.state(Instant::now()), CircuitState::Closed, "the count starts again");

        // A non-retryable answer to a trial gives the trial back.
        let mut breaker = Breaker::default();
        for _ in 0..3 {
            breaker.failure(Instant::now(), &config);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(breaker.try_acquire(Instant::now()));
        breaker.neutral();
        assert!(breaker.try_acquire(Instant::now()));
    }

    /// Instances come and go: the table forgets the breakers no call asked for over `IDLE`
    /// (closed, or open with its cool-down over), so it stays bounded while ids churn, and keeps an
    /// open circuit and every recently used breaker.
    #[tokio::test(start_paused = true)]
    async fn breakers_of_instances_long_gone_are_forgotten() {
        struct Node(String);
        impl Endpoint for Node {
            fn id(&self) -> &str {
                &self.0
            }
            fn service(&self) -> &str {
                "api"
            }
            fn is_up(&self) -> bool {
                true
            }
        }
        let config = BreakerConfig { failures: 1, cool_down: Duration::from_secs(3600) };
        let failover = Failover::new(Box::new(crate::select::RoundRobin::default()), config);
        let refused = || async { Err::<(), _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) };
        // One instance whose circuit opens for an hour, then 20,000 that each answer once, 10
        // new ones a second.
        let broken = [Node("broken".to_owned())];
        assert!(failover.call("api", &broken, |_| refused()).await.is_err());
        let mut largest = 0;
        for n in 0..20_000 {
            let node = [Node(format!("n{n}"))];
            assert!(failover.call("api", &node, |_| async { Ok::<_, std::io::Error>(()) }).await.is_ok());
            largest = largest.max(failover.breakers.read().unwrap().values().map(HashMap::len).sum());
            if n % 10 == 9 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
        // The ids of the last 300 s (3,000 at this pace) are kept, and the table sweeps when it
        // has doubled: about 6,000 at most, of the 20,001 met.
        assert!(largest <= 2 * 3_000 + 20, "the table grew to {largest}");
        assert_eq!(failover.circuit_state("api", "broken"), CircuitState::Open, "an open circuit is kept");
        assert!(failover.breakers.read().unwrap()["api"].contains_key("n19999"), "a recent one is kept");
    }

    #[test]
    fn io_errors_are_classified() {
        use std::io::{Error, ErrorKind};
        assert!(Error::from(ErrorKind::ConnectionRefused).is_retryable());
        assert!(Error::from(ErrorKind::TimedOut).is_retryable());
        assert!(!Error::from(ErrorKind::InvalidData).is_retryable());
        assert!(!Error::from(ErrorKind::PermissionDenied).is_retryable());
    }
}
