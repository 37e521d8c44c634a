//! One upstream watch per server process, fanned out to every SSE client and blocking query.
//!
//! The [`Hub`] follows the registry with a single [`Registry::watch`] (on Redis: one dedicated
//! connection, whatever the number of watchers) and keeps the watch component's [`EventLog`] (the
//! recent events, for watchers to read at their own pace and to resume from with `Last-Event-ID`)
//! and [`Mirror`] (the active nodes, for `snapshot=true` and for watchers that fell behind). Each
//! SSE client is a cursor into that log: no task, no connection of its own; a slow client falls
//! behind the history and is told to resync, and never slows the others.
//!
//! The hub starts by reading the store's history from the beginning (`after=0`): the store
//! answers with every event it still holds or with a snapshot, so clients of a previous server
//! process resume from their `Last-Event-ID` as long as the store kept the events. It is ready once
//! it has caught up with the revision the store had when it connected. When the upstream watch
//! breaks, the hub resumes it from its last revision with backoff; watchers keep their streams and
//! see the events (or a resync) once the store is back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use muster_core::log::{EventLog, LogSource, Mirror};
use muster_core::{
    Backoff, DeregisterReason, Error, EventKind, Registry, Result, Revision, Snapshot, WatchEvent,
    WatchStart, WatchStream,
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Events kept for watchers to resume from.
const HISTORY: usize = 10_000;

/// After applying what the store had, the follower waits this long before reading again, so that
/// under a stream of writes it wakes (and wakes the watchers) once per batch rather than once per
/// event: waking per event on another core, and contending the store's lock with its writers,
/// cost a fifth of the registration throughput. The first event after a quiet spell is applied
/// at once; later ones wait at most this long.
const COALESCE: Duration = Duration::from_millis(1);

/// The longest a new watcher waits for the hub's first catch-up before it is refused.
const READY_WAIT: Duration = Duration::from_secs(10);

/// The process's one view of the registry's changes. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Hub {
    shared: Arc<Shared>,
    /// The store, asked for its revision when a watcher starts (read-your-writes).
    registry: Arc<dyn Registry>,
}

/// What the follower task and every reader share.
struct Shared {
    /// The log and the mirror, under one lock so that a reader sees them at one revision (a
    /// snapshot and the events after it must join up). A std `RwLock`, never held across an
    /// `.await`: the follower writes once per batch, readers (SSE cursors, blocking queries, DNS)
    /// take it briefly and in parallel.
    state: RwLock<HubState>,
    /// Told every new revision, readiness and shutdown: how waiting readers wake without polling
    /// or holding the lock (a `watch` channel keeps only the latest value, so a slow reader skips
    /// to it and reads the log from its own cursor).
    revisions: watch::Sender<Revision>,
    /// Batches of upstream events applied (each one wake of the follower and of the watchers),
    /// outside the lock: read by the tests that count wakes.
    batches: AtomicU64,
}

/// The hub's view of the store, written by the follower alone.
struct HubState {
    /// The recent events, for cursors to read at their own pace and to resume from.
    log: EventLog,
    /// The active nodes, for snapshots, resyncs, DNS and health checks.
    mirror: Mirror,
    /// Caught up with the store once: until then readers wait (a client that wrote and then
    /// watches must see its write).
    ready: bool,
    /// The server is shutting down: streams end.
    shutdown: bool,
}

impl Hub {
    /// Starts following `registry` until `shutdown`; counts expiry events in `expiries`.
    pub(crate) fn start(
        registry: Arc<dyn Registry>,
        shutdown: CancellationToken,
        expiries: Counter,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: RwLock::new(HubState {
                log: EventLog::new(HISTORY, Revision::ZERO),
                mirror: Mirror::default(),
                ready: false,
                shutdown: false,
            }),
            revisions: watch::Sender::new(Revision::ZERO),
            batches: AtomicU64::new(0),
        });
        tasks.spawn(follow(Arc::clone(&registry), Arc::clone(&shared), shutdown, expiries));
        Self { shared, registry }
    }

    /// A watch stream over the hub's log. A watcher that starts now or with a snapshot sees at
    /// least every change the store had when it asked (a client that wrote and then watches sees
    /// its write), however far the hub's follower lags.
    pub(crate) async fn watch(&self, start: WatchStart) -> Result<WatchStream> {
        self.ready().await?;
        if matches!(start, WatchStart::Now | WatchStart::Snapshot) {
            let target = self.registry.current_revision().await?;
            self.caught_up(target).await;
        }
        muster_core::log::stream(Arc::clone(&self.shared), &self.shared.revisions, start)
            .ok_or_else(|| Error::unavailable("the server is shutting down"))
    }

    /// Waits until a change after `index` that may concern `service` is known (a node providing it
    /// changed, or any node left or changed — it may have stopped providing it), or the history no
    /// longer covers `index`, or shutdown. A store behind `index` (another server wrote it first) is
    /// waited for.
    pub(crate) async fn changed_after(&self, index: Revision, service: &str) -> Result<()> {
        self.ready().await?;
        let mut receiver = self.shared.revisions.subscribe();
        loop {
            receiver.borrow_and_update();
            if self.shared.concerns(index, service) {
                return Ok(());
            }
            if receiver.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Reads the active nodes as the hub knows them now.
    pub(crate) fn with_mirror<T>(&self, read: impl FnOnce(&Mirror) -> T) -> T {
        read(&self.shared.read().mirror)
    }

    /// Waits (at most [`READY_WAIT`]) until the hub has applied the store's changes up to `target`.
    async fn caught_up(&self, target: Revision) {
        let caught_up = self.wait_until(|state| state.shutdown || state.log.revision() >= target).await;
        if !caught_up {
            tracing::debug!(%target, "the change feed is behind the store; the watcher starts from it anyway");
        }
    }

    /// Waits (bounded) for the first catch-up with the store.
    async fn ready(&self) -> Result<()> {
        if self.wait_until(|state| state.ready).await {
            Ok(())
        } else {
            Err(Error::unavailable("the registry's change feed is not available yet"))
        }
    }

    /// Waits at most [`READY_WAIT`] for `condition` to hold, looking again at every change the hub
    /// announces; false when it did not.
    async fn wait_until(&self, condition: impl Fn(&HubState) -> bool) -> bool {
        let mut receiver = self.shared.revisions.subscribe();
        let wait = async {
            loop {
                receiver.borrow_and_update();
                if condition(&self.shared.read()) {
                    return true;
                }
                if receiver.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(READY_WAIT, wait).await.unwrap_or(false)
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, HubState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HubState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn concerns(&self, index: Revision, service: &str) -> bool {
        let state = self.read();
        if state.shutdown {
            return true;
        }
        if state.log.revision() <= index {
            return false;
        }
        match state.log.since(index) {
            Some(mut events) => events.any(|e| {
                e.kind != EventKind::Registered || e.node.services.iter().any(|s| s.name == service)
            }),
            None => true,
        }
    }

    /// Applies one upstream item; returns the revision to tell watchers.
    fn apply(&self, item: WatchEvent, target: Revision, expiries: &Counter) -> Revision {
        let mut state = self.write();
        match item {
            WatchEvent::Event(event) => {
                if event.kind == EventKind::Deregistered && event.reason == Some(DeregisterReason::Expired) {
                    expiries.inc();
                }
                log_event(&event);
                state.mirror.apply(&event);
                state.log.push(event);
            }
            WatchEvent::Resync(snapshot) => {
                tracing::debug!(revision = %snapshot.revision, "change feed resynchronised");
                state.log.reset(snapshot.revision);
                state.mirror.replace(snapshot);
            }
            // A Titan peer's channel message: only a read-only registry without a sweeper yields
            // these, and the server never runs one.
            WatchEvent::Peer(_) => {}
        }
        if state.log.revision() >= target {
            state.ready = true;
        }
        state.log.revision()
    }
}

impl LogSource for Shared {
    fn read_after(&self, cursor: Revision, max: usize) -> Option<Vec<WatchEvent>> {
        let state = self.read();
        if state.shutdown {
            return muster_core::log::read_remaining(&state.log, cursor, max);
        }
        Some(muster_core::log::read_log(&state.log, cursor, max, || snapshot(&state)))
    }

    fn position(&self, with_snapshot: bool) -> Option<(Revision, Option<Snapshot>)> {
        let state = self.read();
        if state.shutdown {
            return None;
        }
        Some((state.log.revision(), with_snapshot.then(|| snapshot(&state))))
    }
}

/// The registry's lifecycle in the server's log: arrivals and departures at `info`, updates at
/// `debug`.
fn log_event(event: &muster_core::DiscoveryEvent) {
    let node = &event.node;
    let services = muster_core::ServiceList(&node.services);
    match (event.kind, event.reason) {
        (EventKind::Registered, _) => {
            tracing::info!(node_id = %node.node_id, address = %node.address, %services, revision = %event.revision, "registered");
        }
        (EventKind::Deregistered, Some(DeregisterReason::Expired)) => {
            tracing::info!(node_id = %node.node_id, address = %node.address, %services, revision = %event.revision, "expired: no heartbeat within its TTL");
        }
        (EventKind::Deregistered, reason) => {
            let reason = reason.map_or("unknown", DeregisterReason::as_str);
            tracing::info!(node_id = %node.node_id, address = %node.address, %services, reason, revision = %event.revision, "deregistered");
        }
        (EventKind::Updated, _) => {
            tracing::debug!(node_id = %node.node_id, address = %node.address, %services, status = %node.status, revision = %event.revision, "updated");
        }
    }
}

/// The mirror at the log's revision (they move together).
fn snapshot(state: &HubState) -> Snapshot {
    Snapshot { revision: state.log.revision(), ..state.mirror.snapshot() }
}

/// The hub's task: one upstream watch, resumed after failures, until shutdown.
async fn follow(
    registry: Arc<dyn Registry>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    expiries: Counter,
) {
    let mut backoff = Backoff::default();
    loop {
        let after = shared.read().log.revision();
        let outcome = tokio::select! {
            () = shutdown.cancelled() => break,
            outcome = follow_once(&*registry, &shared, after, &expiries, &mut backoff) => outcome,
        };
        if let Err(error) = outcome {
            tracing::warn!(%error, "the registry's change feed broke; resuming");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(backoff.failed()) => {}
        }
    }
    shared.write().shutdown = true;
    shared.revisions.send_modify(|_| {});
}

/// One upstream watch from `after` until it breaks.
async fn follow_once(
    registry: &dyn Registry,
    shared: &Shared,
    after: Revision,
    expiries: &Counter,
    backoff: &mut Backoff,
) -> Result<()> {
    let mut stream = registry.watch(WatchStart::After(after)).await?;
    let target = registry.current_revision().await?;
    {
        let mut state = shared.write();
        if state.log.revision() >= target && !state.ready {
            state.ready = true;
            drop(state);
            shared.revisions.send_modify(|_| {});
        }
    }
    while let Some(item) = stream.next().await {
        let mut revision = shared.apply(item?, target, expiries);
        // What else is ready, without waiting; a stream that ends here is not polled again.
        let mut ended = false;
        loop {
            match stream.next().now_or_never() {
                Some(Some(item)) => revision = shared.apply(item?, target, expiries),
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        backoff.succeeded();
        shared.batches.fetch_add(1, Ordering::Relaxed);
        shared.revisions.send_replace(revision);
        if ended {
            break;
        }
        tokio::time::sleep(COALESCE).await;
    }
    Err(Error::unavailable("the registry's watch ended"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::DiscoveryEvent;

    fn event(revision: u64, kind: EventKind, services: &[&str]) -> DiscoveryEvent {
        DiscoveryEvent {
            revision: Revision(revision),
            kind,
            reason: None,
            node: muster_core::NodeInfo {
                node_id: muster_core::NodeId::new("n").unwrap(),
                address: muster_core::Address::parse("h:1").unwrap(),
                services: services.iter().map(|s| muster_core::ServiceInfo::parse(s).unwrap()).collect(),
                timestamp_ms: 0,
                registered_at_ms: 0,
                status: muster_core::NodeStatus::Up,
                metadata: Default::default(),
                ttl_ms: 1000,
            },
            timestamp_ms: 0,
            previous_services: None,
        }
    }

    /// A cost budget: under a stream of writes the follower wakes once per batch, not once per
    /// event (each wake is a cross-core wake-up and a turn at the store's lock). The writer yields
    /// after every registration, so a follower without coalescing would apply each on its own.
    #[tokio::test(start_paused = true)]
    async fn the_follower_wakes_per_batch_not_per_event() {
        let registry: Arc<dyn Registry> = Arc::new(muster_memory::MemoryRegistry::new());
        let hub = Hub::start(
            Arc::clone(&registry),
            CancellationToken::new(),
            Counter::default(),
            &tokio_util::task::TaskTracker::new(),
        );
        hub.ready().await.unwrap();
        let before = hub.shared.batches.load(Ordering::Relaxed);
        for i in 0..200 {
            let registration = muster_core::Registration::new(
                muster_core::NodeId::new(format!("n{i}")).unwrap(),
                muster_core::Address::parse("h:1").unwrap(),
                vec![muster_core::ServiceInfo::parse("svc@1.0.0").unwrap()],
                Duration::from_secs(60),
            )
            .unwrap();
            registry.heartbeat(registration).await.unwrap();
            tokio::task::yield_now().await;
        }
        hub.caught_up(registry.current_revision().await.unwrap()).await;
        assert_eq!(hub.with_mirror(Mirror::len), 200, "every registration applied");
        let batches = hub.shared.batches.load(Ordering::Relaxed) - before;
        assert!(batches <= 2, "200 registrations applied in {batches} batches");
    }

    /// A store whose change feed ends while the follower is taking what is ready (a shutdown):
    /// the follower reports the end and is not left polling a finished stream (which panics).
    #[tokio::test(start_paused = true)]
    async fn a_feed_that_ends_mid_batch_ends_the_follow() {
        let store = muster_memory::MemoryRegistry::new();
        let registry: Arc<dyn Registry> = Arc::new(store.clone());
        let shared = Shared {
            state: RwLock::new(HubState {
                log: EventLog::new(16, Revision::ZERO),
                mirror: Mirror::default(),
                ready: false,
                shutdown: false,
            }),
            revisions: watch::Sender::new(Revision::ZERO),
            batches: AtomicU64::new(0),
        };
        for i in 0..3 {
            let registration = muster_core::Registration::new(
                muster_core::NodeId::new(format!("n{i}")).unwrap(),
                muster_core::Address::parse("h:1").unwrap(),
                vec![],
                Duration::from_secs(60),
            )
            .unwrap();
            registry.heartbeat(registration).await.unwrap();
        }
        // The events are delivered, then the feed ends: all of it ready at once.
        store.shutdown().await.unwrap();
        let mut backoff =
            Backoff::try_new(Duration::from_millis(100), Duration::from_millis(6400), 0.0).unwrap();
        let counter = Counter::default();
        let outcome = follow_once(&*registry, &shared, Revision::ZERO, &counter, &mut backoff).await;
        assert!(outcome.is_err(), "the end of the feed is reported");
        assert_eq!(shared.read().mirror.len(), 3, "what came before the end was applied");
    }

    #[test]
    fn blocking_queries_wake_only_for_their_service_or_departures() {
        let shared = Shared {
            state: RwLock::new(HubState {
                log: EventLog::new(4, Revision(0)),
                mirror: Mirror::default(),
                ready: true,
                shutdown: false,
            }),
            revisions: watch::Sender::new(Revision(0)),
            batches: AtomicU64::new(0),
        };
        let counter = Counter::default();
        shared.apply(WatchEvent::Event(event(1, EventKind::Registered, &["beta"])), Revision(0), &counter);
        assert!(!shared.concerns(Revision(0), "alpha"), "a beta registration");
        assert!(shared.concerns(Revision(0), "beta"));
        assert!(!shared.concerns(Revision(1), "beta"), "nothing after the index");
        assert!(!shared.concerns(Revision(7), "beta"), "the store is ahead of this hub: wait");
        shared.apply(WatchEvent::Event(event(2, EventKind::Updated, &["beta"])), Revision(0), &counter);
        assert!(shared.concerns(Revision(1), "alpha"), "an update may have removed alpha");
        for r in 3..=6 {
            shared.apply(WatchEvent::Event(event(r, EventKind::Registered, &["x"])), Revision(0), &counter);
        }
        assert!(shared.concerns(Revision(0), "alpha"), "older than the history: answer now");
        let mut gone = event(7, EventKind::Deregistered, &["x"]);
        gone.reason = Some(DeregisterReason::Expired);
        shared.apply(WatchEvent::Event(gone), Revision(0), &counter);
        assert_eq!(counter.get(), 1, "expiries are counted");
    }
}
