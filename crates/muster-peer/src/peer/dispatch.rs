//! Answering one request: the middleware, then this peer's service, a proxied peer or a task;
//! services returned by methods become definitions of the connection they were handed to.

use super::*;
use crate::sync::ReadWrite as _;

impl Connection {
    /// Runs one request with its concurrency permit: answers it (a stream's chunks follow the
    /// reply), counts it in the metrics, and frees the permit when done.
    pub(super) fn answer(self: &Arc<Self>, packet: Packet, permit: tokio::sync::OwnedSemaphorePermit) {
        let connection = Arc::clone(self);
        let (service, method) = self.labels(&packet);
        let span = tracing::debug_span!("netron.call", %service, %method, peer = %self.remote_id);
        let task = async move {
            let started = tokio::time::Instant::now();
            let outcome = connection.serve(&packet).await;
            let metrics = &connection.peer.metrics;
            metrics.duration.observe(started.elapsed().as_secs_f64());
            let status = if outcome.is_ok() { "ok" } else { "error" };
            metrics.calls.get_or_create(&crate::metrics::CallLabels { service, method, status }).inc();
            match outcome {
                Ok(Output::Value(value)) => connection.send(&packet.response(Ok(value))),
                Ok(Output::Service(_)) => {
                    // `serve` turns returned services into definitions; nothing else arrives here.
                    let error = JsError::new("a service cannot be sent here");
                    connection.send(&packet.response(Err(Value::Error(Box::new(error)))));
                }
                Ok(Output::Stream(items)) => {
                    // The reply names the stream first; the chunks follow it.
                    let stream_id = connection.peer.stream_ids.next();
                    let reference = crate::wire::StreamReference {
                        stream_id,
                        writable: true,
                        live: true,
                        peer_id: connection.remote_id.clone(),
                    };
                    connection.send(&packet.response(Ok(Value::StreamReference(Box::new(reference)))));
                    drop(permit);
                    // A stream is written from a task of its own, never from the reader
                    // (the request may have been polled there first, see below).
                    tokio::task::yield_now().await;
                    connection.pipe(stream_id, items).await;
                }
                Err(error) => connection.send(&packet.response(Err(Value::Error(Box::new(error))))),
            }
        };
        // Most requests (a method that answers at once) are done on their first poll: they
        // are answered here, on the reader, and only one that waits gets a task of its own
        // — a spawn and a task switch per call were a large share of a call's server CPU.
        // Polling once with a waker that ignores wakes is sound: the spawned task polls
        // again first thing, seeing whatever happened meanwhile.
        let mut task = Box::pin(tracing::Instrument::instrument(task, span));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::future::Future::poll(task.as_mut(), &mut context)
        }));
        match polled {
            Ok(std::task::Poll::Ready(())) => {}
            Ok(std::task::Poll::Pending) => {
                tokio::spawn(task);
            }
            // As a spawned task's panic would: this request is not answered; the
            // connection and the peer go on.
            Err(_) => tracing::warn!(remote = %self.remote_id, "a request's handler panicked"),
        }
    }

    /// Answers one request: the middleware first (every kind: calls, reads and writes of
    /// properties — of this peer's services or of ones proxied here — and tasks, core ones
    /// included), then the service, the proxied peer or the task.
    pub(super) async fn serve(self: &Arc<Self>, packet: &Packet) -> Result<Output, JsError> {
        let Value::Array(items) = &packet.data else { return Err(JsError::new("Invalid packet")) };
        let text =
            |i: usize| items.get(i).and_then(Value::as_str).ok_or_else(|| JsError::new("Invalid packet"));
        if packet.kind == PacketType::Task {
            let name = text(0)?;
            self.check(None, "", name, packet.kind, &items[1..])?;
            return self.run_task(name, items[1..].to_vec()).await.map(Output::Value);
        }
        let (def_id, member) = (text(0)?, text(1)?);
        let served = self
            .peer
            .definitions
            .reading()
            .get(def_id)
            .cloned()
            .ok_or_else(|| JsError::new(format!("Unknown definition: {def_id}.")))?;
        let args = match packet.kind {
            PacketType::Get => &[][..],
            _ => items.get(2..).unwrap_or_default(),
        };
        let service = match served {
            Served::Local { service, .. } => service,
            Served::Proxy { exposer, name } => {
                self.check(None, &name, member, packet.kind, args)?;
                // A service another peer exposed here: the request goes to it as it came.
                let exposer = exposer
                    .upgrade()
                    .ok_or_else(|| JsError::new(format!("Unknown definition: {def_id}.")))?;
                return match exposer.request(packet.kind, packet.data.clone()).await {
                    Ok(value) => Ok(Output::Value(value)),
                    Err(PeerError::Remote(error)) => Err(*error),
                    Err(other) => Err(JsError::new(other.to_string())),
                };
            }
        };
        self.check(Some(&service), service.qualified_name(), member, packet.kind, args)?;
        let output = match packet.kind {
            PacketType::Get => service.get(member).map(Output::Value)?,
            PacketType::Set => {
                service.set(member, items.get(2).cloned().unwrap_or(Value::Undefined))?;
                Output::Value(Value::Undefined)
            }
            _ => service.call(member, args.to_vec()).await?,
        };
        match output {
            Output::Service(returned) => {
                Ok(Output::Value(Value::Definition(Box::new(self.stub(returned, def_id)))))
            }
            other => Ok(other),
        }
    }

    /// Runs the peer's middleware, then `service`'s own, on one request. Checks are synchronous:
    /// they read the settings in place, nothing is copied per request.
    pub(super) fn check(
        &self,
        service: Option<&Service>,
        name: &str,
        member: &str,
        kind: PacketType,
        args: &[Value],
    ) -> Result<(), JsError> {
        let info = crate::middleware::CallInfo {
            peer_id: &self.remote_id,
            params: &self.params,
            service: name,
            member,
            kind,
            args,
        };
        let guards = self.peer.middleware.reading();
        let own = service.into_iter().flat_map(Service::middleware);
        for guard in guards.iter().chain(own) {
            guard.check(&info)?;
        }
        Ok(())
    }

    /// The definition of a service returned by a method of `parent` (the same for the same
    /// instance).
    pub(super) fn stub(&self, service: Arc<Service>, parent: &str) -> Definition {
        let key = Arc::as_ptr(&service) as *const () as usize;
        let mut stubs = self.stubs.locked();
        let meta = service.meta();
        if let Some(id) = stubs.get(&key)
            && self.peer.definitions.reading().contains_key(id)
        {
            return Definition {
                id: id.clone(),
                parent_id: parent.to_owned(),
                peer_id: self.peer.id.clone(),
                meta,
            };
        }
        let definition =
            Definition { id: uuid(), parent_id: parent.to_owned(), peer_id: self.peer.id.clone(), meta };
        stubs.insert(key, definition.id.clone());
        self.peer.definitions_mut(|d| {
            d.insert(definition.id.clone(), Served::Local { service, parent: Some(parent.to_owned()) })
        });
        definition
    }

    /// Drops a returned service's definition and those returned from it (never an exposed one).
    pub(super) fn unref(&self, id: &str) {
        self.peer.definitions_mut(|definitions| self.unref_in(definitions, id));
    }

    pub(super) fn unref_in(&self, definitions: &mut HashMap<String, Served>, id: &str) {
        let mut gone = vec![id.to_owned()];
        let mut i = 0;
        while i < gone.len() {
            let current = gone[i].clone();
            if matches!(definitions.get(&current), Some(Served::Local { parent: Some(_), .. })) {
                definitions.remove(&current);
                let children: Vec<String> = definitions
                    .iter()
                    .filter(|(_, served)| matches!(served, Served::Local { parent: Some(p), .. } if *p == current))
                    .map(|(child, _)| child.clone())
                    .collect();
                gone.extend(children);
            }
            i += 1;
        }
        self.stubs.locked().retain(|_, stub| definitions.contains_key(stub));
    }
}
