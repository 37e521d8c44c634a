//! Netron's core tasks (`abilities`, `subscribe`, `emit`, `expose_service`, ...) and the tasks
//! added with `Peer::add_task`.

use super::*;
use crate::sync::{Locked as _, ReadWrite as _};

/// Netron's core tasks, answered by every peer.
pub(super) const CORE_TASKS: [&str; 7] =
    ["abilities", "subscribe", "unsubscribe", "emit", "expose_service", "unexpose_service", "unref_service"];

impl Connection {
    /// The core tasks, then the added ones.
    pub(super) async fn run_task(self: &Arc<Self>, name: &str, args: Vec<Value>) -> Result<Value, JsError> {
        match name {
            "abilities" => {
                let mut services: Vec<(Value, Value)> = self
                    .peer
                    .exposed
                    .reading()
                    .iter()
                    .map(|(key, e)| (Value::str(key), Value::Definition(Box::new(e.definition.clone()))))
                    .collect();
                services.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
                Ok(Value::object([
                    ("services", Value::Map(services)),
                    ("allowServiceEvents", Value::Bool(self.peer.config.allow_service_events)),
                ]))
            }
            "subscribe" => {
                let event = args
                    .first()
                    .and_then(Value::as_str)
                    .ok_or_else(|| JsError::new("subscribe: no event name"))?;
                let mut forwarded = self.forwarded.locked();
                if !forwarded.contains_key(event) {
                    let weak = Arc::downgrade(self);
                    let name = event.to_owned();
                    let id = self.peer.bus.subscribe(
                        event,
                        crate::events::listener(move |args| {
                            let weak = weak.clone();
                            let name = name.clone();
                            async move {
                                let Some(connection) = weak.upgrade() else { return Ok(Value::Undefined) };
                                let sent = crate::metrics::Direction { direction: "sent" };
                                connection.peer.metrics.events.get_or_create(&sent).inc();
                                let mut data = vec![Value::str("emit"), Value::str(&name)];
                                data.extend(args);
                                connection
                                    .request(PacketType::Task, Value::Array(data))
                                    .await
                                    .map_err(|e| JsError::new(e.to_string()))
                            }
                        }),
                    );
                    forwarded.insert(event.to_owned(), id);
                }
                Ok(Value::Undefined)
            }
            "unsubscribe" => {
                let event = args.first().and_then(Value::as_str).unwrap_or_default();
                let removed = self.forwarded.locked().remove(event);
                if let Some(id) = removed {
                    self.peer.bus.unsubscribe(id);
                }
                Ok(Value::Undefined)
            }
            "emit" => {
                let mut args = args.into_iter();
                let event = match args.next() {
                    Some(Value::Str(event)) => event,
                    _ => return Err(JsError::new("emit: no event name")),
                };
                let received = crate::metrics::Direction { direction: "received" };
                self.peer.metrics.events.get_or_create(&received).inc();
                for result in self.remote_listeners.emit_parallel(&event, args.collect()).await {
                    result?;
                }
                Ok(Value::Undefined)
            }
            "unref_service" => {
                if let Some(id) = args.first().and_then(Value::as_str) {
                    self.unref(id);
                }
                Ok(Value::Undefined)
            }
            "expose_service" => {
                // Another peer publishes its service here; calls to it are forwarded to that peer.
                let meta = args.into_iter().next().unwrap_or(Value::Undefined);
                let name = meta.get("name").and_then(Value::as_str).map(str::to_owned);
                let Some(name) = name.filter(|n| !n.is_empty()) else {
                    return Err(JsError::new("expose_service: the definition has no name"));
                };
                let mut exposed = self.peer.exposed.writing();
                if exposed.contains_key(&name) {
                    return Err(JsError::new(format!("Service already exposed: {name}")));
                }
                let definition = Definition {
                    id: uuid(),
                    parent_id: String::new(),
                    peer_id: self.remote_id.clone(),
                    meta,
                };
                self.peer.definitions_mut(|d| {
                    d.insert(
                        definition.id.clone(),
                        Served::Proxy { exposer: Arc::downgrade(self), name: name.clone() },
                    )
                });
                exposed.insert(name.clone(), Exposed { definition: definition.clone() });
                drop(exposed);
                let payload = service_event(&definition, &name, &self.peer.id, Some(&self.remote_id), true);
                let event =
                    PeerEvent::ServiceExposed { qualified_name: name, definition_id: definition.id.clone() };
                self.peer.announce("service:expose", payload, event);
                Ok(Value::Definition(Box::new(definition)))
            }
            "unexpose_service" => {
                let name = args.first().and_then(Value::as_str).unwrap_or_default().to_owned();
                let proxied = self.peer.exposed.reading().get(&name).map(|x| x.definition.clone());
                let Some(definition) = proxied.filter(|d| d.peer_id == self.remote_id) else {
                    return Err(JsError::new(format!("Unknown service: {name}")));
                };
                {
                    let mut exposed = self.peer.exposed.writing();
                    exposed.remove(&name);
                }
                self.peer.definitions_mut(|d| d.remove(&definition.id));
                let payload = service_event(&definition, &name, &self.peer.id, Some(&self.remote_id), false);
                let event = PeerEvent::ServiceConcealed {
                    qualified_name: name,
                    definition_id: definition.id.clone(),
                };
                self.peer.announce("service:unexpose", payload, event);
                Ok(Value::str(definition.id))
            }
            other => {
                let task = self.peer.tasks.reading().get(other).cloned();
                match task {
                    Some(task) => task(args).await,
                    None => Err(JsError::new(format!("Task not found: {other}"))),
                }
            }
        }
    }
}
