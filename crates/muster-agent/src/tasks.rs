//! The agent's background work: heartbeats with retries, and the watch loop that keeps the cache
//! current and calls the handlers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use muster_core::{
    DeregisterReason, DiscoveryEvent, Error, HeartbeatOutcome, NodeId, Registration, Result, WatchEvent,
    WatchStart,
};

use crate::Inner;

impl Inner {
    /// One heartbeat with retries, taking the write lock.
    pub(crate) async fn heartbeat_now(&self) -> Result<HeartbeatOutcome> {
        let _write = self.write_lock.lock().await;
        self.heartbeat_locked().await
    }

    /// One heartbeat with retries; the caller holds the write lock.
    pub(crate) async fn heartbeat_locked(&self) -> Result<HeartbeatOutcome> {
        let own = self.own();
        let registration =
            Registration::new(own.node_id, own.address, own.services, self.options.heartbeat_ttl)?
                .with_status(own.status)
                .with_metadata(own.metadata)?;
        let outcome =
            self.with_retries("heartbeat", true, || self.registry.heartbeat(registration.clone())).await?;
        self.registered.store(true, Ordering::SeqCst);
        Ok(outcome)
    }

    pub(crate) async fn deregister_with_retries(&self, node_id: &NodeId) -> Result<bool> {
        // Not cancellable: it runs during `stop`, after the token has fired.
        self.with_retries("deregistration", false, || {
            self.registry.deregister(node_id, DeregisterReason::Graceful)
        })
        .await
    }

    /// Runs `op` up to `max_attempts` times while it fails with retryable errors, waiting the
    /// backoff between attempts (and giving up early on `stop` when `cancellable`).
    pub(crate) async fn with_retries<T, F, Fut>(&self, what: &str, cancellable: bool, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "{what} succeeded after retrying");
                    }
                    return Ok(value);
                }
                Err(error) if !error.is_retryable() || attempt >= self.retry.max_attempts => {
                    tracing::error!(%error, attempt, "{what} failed");
                    return Err(error);
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, "{what} attempt failed; retrying");
                    let pause = tokio::time::sleep(self.retry.delay(attempt));
                    if cancellable {
                        tokio::select! {
                            () = pause => {}
                            () = self.cancel.cancelled() => return Err(Error::unavailable("agent stopping")),
                        }
                    } else {
                        pause.await;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Heartbeats every interval until cancelled. Errors are logged by `heartbeat_locked`; the loop
    /// never stops on them.
    pub(crate) async fn heartbeat_loop(self: Arc<Self>) {
        let period = self.options.heartbeat_interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                _ = ticks.tick() => {
                    let _ = self.heartbeat_now().await;
                }
            }
        }
    }

    /// Follows the registry's watch stream until cancelled: keeps the cache current and calls
    /// handlers. Any end of the stream the agent did not ask for — an error or a clean end —
    /// reconnects with backoff from the last revision; a resync after a gap rebuilds the cache and
    /// hands the net changes to the handlers.
    pub(crate) async fn watch_loop(self: Arc<Self>, mut opened_by_start: Option<muster_core::WatchStream>) {
        let mut start = WatchStart::Snapshot;
        let mut first_snapshot = true;
        let mut reconnect = self.reconnect.clone();
        loop {
            let opened = match opened_by_start.take() {
                Some(stream) => Ok(stream),
                None => tokio::select! {
                    () = self.cancel.cancelled() => return,
                    opened = self.registry.watch(start) => opened,
                },
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(error) => {
                    self.cache.mark_unsynced();
                    tracing::warn!(%error, "watch failed; retrying");
                    let delay = reconnect.failed();
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            if !first_snapshot {
                self.cache.mark_synced();
            }
            loop {
                let item = tokio::select! {
                    () = self.cancel.cancelled() => return,
                    item = stream.next() => item,
                };
                match item {
                    Some(Ok(WatchEvent::Event(event))) => {
                        reconnect.succeeded();
                        start = WatchStart::After(event.revision);
                        self.cache.apply(&event);
                        self.dispatch(&event);
                    }
                    Some(Ok(WatchEvent::Peer(event))) => {
                        self.cache.apply_peer(&event);
                        self.dispatch(&event);
                    }
                    Some(Ok(WatchEvent::Resync(snapshot))) => {
                        reconnect.succeeded();
                        start = WatchStart::After(snapshot.revision);
                        let changes = self.cache.replace(snapshot);
                        if !std::mem::take(&mut first_snapshot) {
                            tracing::info!(changes = changes.len(), "watch resynchronised");
                            changes.iter().for_each(|event| self.dispatch(event));
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "watch stream broke; resuming");
                        break;
                    }
                    // Only `stop` ends the agent's watch: a stream that ends by itself (a registry
                    // server restarting ends its streams cleanly) is a break like any other.
                    None => {
                        tracing::warn!("watch stream ended; resuming");
                        break;
                    }
                }
            }
            self.cache.mark_unsynced();
            // A stream that ends at once again and again must not spin.
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(reconnect.failed()) => {}
            }
        }
    }

    pub(crate) fn dispatch(&self, event: &DiscoveryEvent) {
        if self.filter_own_events && event.node.node_id == self.own().node_id {
            return;
        }
        self.handlers.call(event);
    }
}
