//! The event bus of a peer, with Netron's emit semantics, and the typed events of the peer itself.
//!
//! - [`EventBus::emit_parallel`] starts every listener at once and waits for all;
//!   [`EventBus::emit_serial`] runs them one after another; [`EventBus::emit_reduce`] feeds each
//!   listener's result to the next as its argument and returns the last (`emit_reduce_right` in
//!   reverse order). Listeners run in subscription order.
//! - A subscription's pattern may hold `*` (`order:*` receives `order:created` and
//!   `order:paid`); Netron's own bus matches exact names only, which a pattern without `*` is.
//! - Remote peers subscribe over the wire (the `subscribe` task); each local emission of a
//!   subscribed event is then sent to them as an `emit` task.

use crate::sync::ReadWrite as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use crate::wire::{JsError, Value};

/// A listener: the event's arguments in, a result out.
pub type Listener =
    Arc<dyn Fn(Vec<Value>) -> Pin<Box<dyn Future<Output = Result<Value, JsError>> + Send>> + Send + Sync>;

/// Makes a [`Listener`] from an async closure.
pub fn listener<F, Fut>(f: F) -> Listener
where
    F: Fn(Vec<Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, JsError>> + Send + 'static,
{
    Arc::new(move |args| Box::pin(f(args)))
}

/// A subscription, to end it with [`EventBus::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// Listeners by event pattern.
#[derive(Default)]
pub struct EventBus {
    listeners: RwLock<Vec<(SubscriptionId, String, Listener)>>,
    next: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

impl EventBus {
    /// Adds `listener` for events matching `pattern`.
    pub fn subscribe(&self, pattern: &str, listener: Listener) -> SubscriptionId {
        let id = SubscriptionId(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        {
            let mut listeners = self.listeners.writing();
            listeners.push((id, pattern.to_owned(), listener));
        }
        id
    }

    /// Removes a subscription; `false` when it was not there.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let mut listeners = self.listeners.writing();
        let before = listeners.len();
        listeners.retain(|(other, _, _)| *other != id);
        listeners.len() != before
    }

    /// The patterns with listeners, each once, in subscription order.
    pub fn patterns(&self) -> Vec<String> {
        let mut patterns: Vec<String> = Vec::new();
        {
            let listeners = self.listeners.reading();
            for (_, pattern, _) in listeners.iter() {
                if !patterns.contains(pattern) {
                    patterns.push(pattern.clone());
                }
            }
        }
        patterns
    }

    /// How many listeners were subscribed with exactly `pattern`.
    pub fn pattern_count(&self, pattern: &str) -> usize {
        self.listeners.reading().iter().filter(|(_, p, _)| p == pattern).count()
    }

    /// How many listeners `event` has.
    pub fn listener_count(&self, event: &str) -> usize {
        self.matching(event).len()
    }

    fn matching(&self, event: &str) -> Vec<Listener> {
        self.listeners
            .reading()
            .iter()
            .filter(|(_, pattern, _)| muster_core::name::glob_matches(pattern, event))
            .map(|(_, _, listener)| Arc::clone(listener))
            .collect()
    }

    /// Runs every listener of `event` at once; their results in subscription order.
    pub async fn emit_parallel(&self, event: &str, args: Vec<Value>) -> Vec<Result<Value, JsError>> {
        let calls = self.matching(event).into_iter().map(|listener| listener(args.clone()));
        futures::future::join_all(calls).await
    }

    /// Runs the listeners of `event` one after another; their results.
    pub async fn emit_serial(&self, event: &str, args: Vec<Value>) -> Vec<Result<Value, JsError>> {
        let mut results = Vec::new();
        for listener in self.matching(event) {
            results.push(listener(args.clone()).await);
        }
        results
    }

    /// Feeds `args` to the first listener and each result, as the only argument, to the next;
    /// returns the last result (`args`' first value, or `undefined`, when there is no listener).
    pub async fn emit_reduce(&self, event: &str, args: Vec<Value>) -> Result<Value, JsError> {
        reduce(self.matching(event), args).await
    }

    /// [`EventBus::emit_reduce`] from the last listener to the first.
    pub async fn emit_reduce_right(&self, event: &str, args: Vec<Value>) -> Result<Value, JsError> {
        let mut listeners = self.matching(event);
        listeners.reverse();
        reduce(listeners, args).await
    }
}

async fn reduce(listeners: Vec<Listener>, args: Vec<Value>) -> Result<Value, JsError> {
    let mut current = args;
    let mut last = current.first().cloned().unwrap_or(Value::Undefined);
    for listener in listeners {
        last = listener(current).await?;
        current = vec![last.clone()];
    }
    Ok(last)
}

/// What happens to a peer, as typed events (also emitted on its bus as Netron's `peer:connect`,
/// `peer:disconnect`, `service:expose`, `service:unexpose` with their payloads).
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A connection to another peer is open (either direction).
    Connected {
        /// The other peer.
        peer_id: String,
    },
    /// A connection ended.
    Disconnected {
        /// The other peer.
        peer_id: String,
    },
    /// This peer exposed a service.
    ServiceExposed {
        /// `name@version`.
        qualified_name: String,
        /// Its definition id.
        definition_id: String,
    },
    /// Opening a connection (again) failed.
    ConnectFailed {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
    /// This peer stopped exposing a service.
    ServiceConcealed {
        /// `name@version`.
        qualified_name: String,
        /// Its definition id.
        definition_id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adder(n: i64) -> Listener {
        listener(move |args: Vec<Value>| async move {
            match args.first() {
                Some(Value::Int(x)) => Ok(Value::Int(x * 10 + n)),
                _ => Ok(Value::Int(n)),
            }
        })
    }

    #[tokio::test]
    async fn emits_follow_netron_semantics() {
        let bus = EventBus::default();
        bus.subscribe("sum", adder(1));
        let second = bus.subscribe("sum", adder(2));
        bus.subscribe("other", adder(9));
        let parallel = bus.emit_parallel("sum", vec![Value::Int(1)]).await;
        assert_eq!(parallel, vec![Ok(Value::Int(11)), Ok(Value::Int(12))]);
        let serial = bus.emit_serial("sum", vec![Value::Int(2)]).await;
        assert_eq!(serial, vec![Ok(Value::Int(21)), Ok(Value::Int(22))]);
        // reduce: 3 → 31 → 312; from the right: 3 → 32 → 321.
        assert_eq!(bus.emit_reduce("sum", vec![Value::Int(3)]).await, Ok(Value::Int(312)));
        assert_eq!(bus.emit_reduce_right("sum", vec![Value::Int(3)]).await, Ok(Value::Int(321)));
        assert_eq!(bus.emit_reduce("nobody", vec![Value::Int(3)]).await, Ok(Value::Int(3)));
        assert!(bus.unsubscribe(second) && !bus.unsubscribe(second));
        assert_eq!(bus.listener_count("sum"), 1);
    }

    #[tokio::test]
    async fn wildcards_match_families_of_events() {
        let bus = EventBus::default();
        bus.subscribe("order:*", adder(1));
        bus.subscribe("order:created", adder(2));
        assert_eq!(bus.listener_count("order:created"), 2);
        assert_eq!(bus.listener_count("order:paid"), 1);
        assert_eq!(bus.listener_count("orders"), 0);
        let failing = listener(|_| async { Err(JsError::new("no")) });
        bus.subscribe("order:paid", failing);
        assert!(bus.emit_reduce("order:paid", vec![]).await.is_err(), "a failure ends a reduce");
    }
}
