//! Fault injection around a real registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use muster_core::{
    DeregisterReason, Error, HeartbeatOutcome, NodeId, NodeInfo, NodeUpdate, Registration, Registry, Result,
    Revision, ServiceQuery, WatchStart, WatchStream,
};
use tokio::sync::watch;

/// Wraps a real registry and fails chosen calls with retryable (`Unavailable`) errors.
///
/// Everything not told to fail goes straight to the wrapped backend.
pub struct FaultyRegistry<R> {
    /// The real backend.
    inner: R,
    /// How many upcoming heartbeats fail.
    heartbeat_failures: AtomicU32,
    /// How many upcoming `watch` calls fail.
    watch_failures: AtomicU32,
    /// Changed to break every open watch stream: with an error (`Break::Error`) or a clean end.
    sever: watch::Sender<Break>,
    /// Milliseconds every item of a watch opened from now on is held back (a lagging feed).
    watch_lag_ms: AtomicU64,
    /// A seeded bug: the next registration of this node is acknowledged and not stored.
    lose: std::sync::Mutex<Option<String>>,
}

impl<R: Registry> FaultyRegistry<R> {
    /// Wraps `inner`; nothing fails until told to.
    pub fn new(inner: R) -> Arc<Self> {
        Arc::new(Self {
            inner,
            heartbeat_failures: AtomicU32::new(0),
            watch_failures: AtomicU32::new(0),
            sever: watch::Sender::new(Break::Error),
            watch_lag_ms: AtomicU64::new(0),
            lose: std::sync::Mutex::new(None),
        })
    }

    /// Holds back every item of the watches opened from now on by `lag`: a change feed that runs
    /// behind the store.
    pub fn lag_watches(&self, lag: Duration) {
        self.watch_lag_ms.store(u64::try_from(lag.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Makes the next `n` heartbeats fail.
    pub fn fail_heartbeats(&self, n: u32) {
        self.heartbeat_failures.store(n, Ordering::SeqCst);
    }

    /// Heartbeats still set to fail.
    pub fn pending_heartbeat_failures(&self) -> u32 {
        self.heartbeat_failures.load(Ordering::SeqCst)
    }

    /// Makes the next `n` `watch` calls fail.
    pub fn fail_watches(&self, n: u32) {
        self.watch_failures.store(n, Ordering::SeqCst);
    }

    /// Breaks every open watch stream: each yields one error, then ends.
    pub fn sever_watches(&self) {
        self.sever.send_replace(Break::Error);
    }

    /// Ends every open watch stream cleanly, with no error — what a registry server's graceful
    /// restart does to its watch streams. The watcher did not ask for the end.
    pub fn end_watches(&self) {
        self.sever.send_replace(Break::Clean);
    }

    /// A seeded bug, for checking the checkers: the next registration of `node_id` answers as
    /// stored and is not.
    pub fn lose_next_registration_of(&self, node_id: &str) {
        *self.lose.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(node_id.to_owned());
    }

    /// The wrapped registry.
    pub fn inner(&self) -> &R {
        &self.inner
    }
}

/// How the open watch streams are broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    /// One error item, then the end.
    Error,
    /// The end, without an error.
    Clean,
}

/// Decrements `counter` if positive; true when this call should fail.
fn take_failure(counter: &AtomicU32) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

#[async_trait::async_trait]
impl<R: Registry> Registry for FaultyRegistry<R> {
    async fn heartbeat(&self, registration: Registration) -> Result<HeartbeatOutcome> {
        if take_failure(&self.heartbeat_failures) {
            return Err(Error::unavailable("injected heartbeat failure"));
        }
        {
            let mut lose = self.lose.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if lose.as_deref() == Some(registration.node_id().as_str()) {
                *lose = None;
                let now = muster_core::time::now_ms();
                let node = registration.to_node(now, now);
                return Ok(HeartbeatOutcome {
                    change: muster_core::Change::Registered,
                    node,
                    revision: None,
                });
            }
        }
        self.inner.heartbeat(registration).await
    }
    async fn refresh(
        &self,
        node_id: &NodeId,
        status: Option<muster_core::NodeStatus>,
    ) -> Result<HeartbeatOutcome> {
        if take_failure(&self.heartbeat_failures) {
            return Err(Error::unavailable("injected heartbeat failure"));
        }
        self.inner.refresh(node_id, status).await
    }
    async fn update(&self, node_id: &NodeId, update: NodeUpdate) -> Result<NodeInfo> {
        self.inner.update(node_id, update).await
    }
    async fn deregister(&self, node_id: &NodeId, reason: DeregisterReason) -> Result<bool> {
        self.inner.deregister(node_id, reason).await
    }
    async fn deregister_if(
        &self,
        node_id: &NodeId,
        reason: DeregisterReason,
        condition: &muster_core::StoredServices,
    ) -> Result<bool> {
        self.inner.deregister_if(node_id, reason, condition).await
    }
    async fn get(&self, node_id: &NodeId) -> Result<Option<NodeInfo>> {
        self.inner.get(node_id).await
    }
    async fn exists(&self, node_id: &NodeId) -> Result<bool> {
        self.inner.exists(node_id).await
    }
    async fn is_active(&self, node_id: &NodeId) -> Result<bool> {
        self.inner.is_active(node_id).await
    }
    async fn list_active(&self) -> Result<Vec<NodeInfo>> {
        self.inner.list_active().await
    }
    async fn list_all(&self) -> Result<Vec<NodeInfo>> {
        self.inner.list_all().await
    }
    async fn find(&self, query: &ServiceQuery) -> Result<Vec<NodeInfo>> {
        self.inner.find(query).await
    }
    fn self_preservation(&self) -> Option<&dyn muster_core::SelfPreservation> {
        self.inner.self_preservation()
    }
    fn fleet(&self) -> Option<&dyn muster_core::FleetLeadership> {
        self.inner.fleet()
    }
    fn channel(&self) -> Option<&dyn muster_core::ChangeChannel> {
        self.inner.channel()
    }
    async fn count_service(&self, name: &str) -> Result<usize> {
        self.inner.count_service(name).await
    }
    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }
    async fn watch(&self, start: WatchStart) -> Result<WatchStream> {
        if take_failure(&self.watch_failures) {
            return Err(Error::unavailable("injected watch failure"));
        }
        let mut severed = self.sever.subscribe();
        severed.borrow_and_update();
        let lag = Duration::from_millis(self.watch_lag_ms.load(Ordering::SeqCst));
        let inner = self.inner.watch(start).await?;
        let stream = futures::stream::unfold(Some((inner, severed)), move |state| async move {
            let (mut inner, mut severed) = state?;
            tokio::select! {
                item = inner.next() => {
                    if item.is_some() && !lag.is_zero() {
                        tokio::time::sleep(lag).await;
                    }
                    item.map(|item| (item, Some((inner, severed))))
                }
                _ = severed.changed() => match *severed.borrow() {
                    Break::Error => Some((Err(Error::unavailable("injected watch break")), None)),
                    Break::Clean => None,
                },
            }
        });
        Ok(Box::pin(stream))
    }
}
