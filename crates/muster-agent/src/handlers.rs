//! The agent's event handlers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use muster_core::DiscoveryEvent;

/// A boxed event handler.
pub(crate) type Handler = Arc<dyn Fn(&DiscoveryEvent) + Send + Sync>;

/// Registered handlers, each with an id its subscription removes it by.
#[derive(Default)]
pub(crate) struct Handlers {
    /// Source of subscription ids.
    next_id: AtomicU64,
    /// Handlers in registration order.
    list: RwLock<Vec<(u64, Handler)>>,
}

impl Handlers {
    pub(crate) fn add(self: &Arc<Self>, handler: Handler) -> EventSubscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.list.write().unwrap_or_else(|p| p.into_inner()).push((id, handler));
        EventSubscription { id, handlers: Arc::downgrade(self) }
    }

    pub(crate) fn remove(&self, id: u64) {
        self.list.write().unwrap_or_else(|p| p.into_inner()).retain(|(i, _)| *i != id);
    }

    pub(crate) fn clear(&self) {
        self.list.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Calls every handler. The list is copied first so a handler may subscribe or unsubscribe.
    pub(crate) fn call(&self, event: &DiscoveryEvent) {
        let handlers: Vec<Handler> =
            self.list.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, h)| Arc::clone(h)).collect();
        for handler in handlers {
            handler(event);
        }
    }
}

/// A registered handler. Dropping it leaves the handler in place (as Titan's `onEvent` does);
/// call [`EventSubscription::unsubscribe`] to remove it.
#[derive(Debug)]
pub struct EventSubscription {
    /// The handler's id.
    id: u64,
    /// The agent's handler list, if the agent still exists.
    handlers: Weak<Handlers>,
}

impl EventSubscription {
    /// Removes the handler; it is not called for any later event.
    pub fn unsubscribe(self) {
        if let Some(handlers) = self.handlers.upgrade() {
            handlers.remove(self.id);
        }
    }
}
