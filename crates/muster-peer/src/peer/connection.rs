//! One connection: its reader and writer tasks, the frames queued for its socket, the requests it
//! sends and the responses it waits for.

use super::*;
use crate::sync::{Locked as _, ReadWrite as _};

/// How long a closing connection's writer may take to send the close frame.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Frames written to the socket before one flush, at most.
const WRITE_BATCH: usize = 64;

/// Frames the reader handles before it lets the tasks they woke run (and the writer send what
/// they queued). Requests answered on the reader and callers woken by responses queue frames
/// for the writer; handing over every few frames sends them in waves, so both ends of a busy
/// connection work at once — without it a whole window of calls crossed as one batch and each
/// side waited for the other's (a third fewer calls per second on one connection).
const READ_WAVE: usize = 16;

/// Writes `first` and the frames queued behind it (up to [`WRITE_BATCH`]) with one flush — one
/// socket write for what was ready together; returns how many frames and bytes, `None` when the
/// socket failed.
async fn write_batch<S>(
    sink: &mut S,
    outgoing: &mut mpsc::UnboundedReceiver<Message>,
    first: Message,
) -> Option<(usize, usize)>
where
    S: futures::Sink<Message> + Unpin,
{
    let (mut frames, mut bytes) = (1, first.len());
    sink.feed(first).await.ok()?;
    while frames < WRITE_BATCH {
        let Ok(next) = outgoing.try_recv() else { break };
        frames += 1;
        bytes += next.len();
        sink.feed(next).await.ok()?;
    }
    sink.flush().await.ok()?;
    Some((frames, bytes))
}

pub(super) type Pending = Mutex<HashMap<u32, oneshot::Sender<Result<Value, Value>>>>;

pub(super) struct Connection {
    pub(super) peer: Arc<Inner>,
    pub(super) remote_id: String,
    pub(super) out: mpsc::UnboundedSender<Message>,
    pub(super) pending: Pending,
    pub(super) closed: CancellationToken,
    /// Events the remote peer subscribed to here: the bus listener forwarding each.
    pub(super) forwarded: Mutex<HashMap<String, SubscriptionId>>,
    /// Listeners of the remote peer's events (its `emit` tasks); kept across reconnections.
    pub(super) remote_listeners: Arc<EventBus>,
    /// The query parameters the remote peer connected with (listener side).
    pub(super) params: HashMap<String, String>,
    /// Counted in the open-connections gauge (until closed).
    pub(super) counted: std::sync::atomic::AtomicBool,
    /// Streams the remote peer writes to this one.
    pub(super) streams: Arc<Streams>,
    /// Frames queued for the writer and not sent yet (stream writers wait while it is high).
    pub(super) queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Their bytes: over `max_queued_bytes` the remote peer is not reading and is disconnected.
    pub(super) queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Definitions of services returned by methods to this remote peer, by instance (one per
    /// instance); they are served until it unrefs them or the connection closes.
    pub(super) stubs: Mutex<HashMap<usize, String>>,
    /// Definitions of this peer's services exposed on the remote peer through this connection
    /// ([`RemotePeer::expose_service`]); served until the connection closes.
    pub(super) lent: Mutex<Vec<String>>,
    /// The connection's place among those [`Peer::listen`] serves; released when it closes.
    pub(super) slot: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    /// Signalled by the writer after each frame.
    pub(super) drained: Arc<tokio::sync::Notify>,
    /// Requests running now.
    pub(super) running: Arc<tokio::sync::Semaphore>,
}

impl Connection {
    pub(super) fn start<S>(
        peer: Arc<Inner>,
        socket: tokio_tungstenite::WebSocketStream<S>,
        remote_id: String,
        remote_listeners: Arc<EventBus>,
        params: HashMap<String, String>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Arc<Self>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = socket.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let closed = peer.stopped.child_token();
        let connection = Arc::new(Self {
            peer: Arc::clone(&peer),
            remote_id: remote_id.clone(),
            out,
            pending: Mutex::new(HashMap::new()),
            closed: closed.clone(),
            forwarded: Mutex::new(HashMap::new()),
            remote_listeners,
            params,
            counted: std::sync::atomic::AtomicBool::new(true),
            streams: Arc::new(Streams::new(peer.config.stream_buffer, peer.config.max_streams)),
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            queued_bytes: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            stubs: Mutex::new(HashMap::new()),
            lent: Mutex::new(Vec::new()),
            slot: Mutex::new(slot),
            drained: Arc::new(tokio::sync::Notify::new()),
            running: Arc::new(tokio::sync::Semaphore::new(peer.config.max_concurrent_requests.max(1))),
        });
        {
            let mut connections = peer.connections.locked();
            connections.insert(remote_id.clone(), Arc::clone(&connection));
        }
        peer.metrics.connections.inc();
        let payload = Value::object([("peerId", Value::str(&remote_id))]);
        peer.announce("peer:connect", payload, PeerEvent::Connected { peer_id: remote_id });
        let writer_closed = closed.clone();
        let (queued, queued_bytes, drained, metrics) = (
            Arc::clone(&connection.queued),
            Arc::clone(&connection.queued_bytes),
            Arc::clone(&connection.drained),
            Arc::clone(&peer.metrics),
        );
        tokio::spawn(async move {
            // One wait for the close, polled again and again (not registered anew per frame).
            let cancelled = writer_closed.cancelled();
            tokio::pin!(cancelled);
            loop {
                let message = tokio::select! {
                    message = outgoing.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    () = &mut cancelled => {
                        // A remote peer that does not read gets no more than a moment for it.
                        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(None))).await;
                        break;
                    }
                };
                // Let the tasks that are ready run first: each that queues a frame joins this
                // batch. The task that woke the writer would otherwise run it at once (tokio
                // runs a woken task next) and every frame would cost a socket write of its own
                // (a caller's CPU per call 4.0 → 2.8 µs).
                tokio::task::yield_now().await;
                // A write blocked on a peer that does not read ends when the connection closes.
                let written = tokio::select! {
                    written = write_batch(&mut sink, &mut outgoing, message) => written,
                    () = &mut cancelled => None,
                };
                let Some((frames, bytes)) = written else { break };
                metrics.frames_written.inc_by(frames as u64);
                metrics.socket_writes.inc();
                queued.fetch_sub(frames, std::sync::atomic::Ordering::Relaxed);
                queued_bytes.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                drained.notify_waiters();
            }
            // Dropping the queue frees what was still waiting in it.
            writer_closed.cancel();
        });
        let reader = Arc::clone(&connection);
        tokio::spawn(async move {
            let closed = reader.closed.clone();
            let cancelled = closed.cancelled();
            tokio::pin!(cancelled);
            let mut frames = 0usize;
            loop {
                frames += 1;
                if frames.is_multiple_of(READ_WAVE) {
                    tokio::task::yield_now().await;
                }
                let message = tokio::select! {
                    message = stream.next() => message,
                    () = &mut cancelled => break,
                };
                match message {
                    Some(Ok(Message::Binary(frame))) => reader.receive(&frame),
                    Some(Ok(Message::Text(text))) => tracing::debug!(text = %text, "text frame ignored"),
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(error)) => {
                        // An oversized frame, broken framing, a reset: this connection ends, the
                        // peer keeps serving the others.
                        tracing::info!(remote = %reader.remote_id, %error, "closing a peer connection");
                        break;
                    }
                    Some(Ok(_)) => {}
                }
            }
            reader.close();
        });
        connection
    }

    /// Ends the connection: pending requests fail, its subscriptions end, the definitions it was
    /// handed or lent are no longer served, the peer forgets it.
    /// Returns false when it was closed already.
    pub(super) fn close(&self) -> bool {
        if !self.counted.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        self.peer.metrics.connections.dec();
        self.closed.cancel();
        drop(self.slot.locked().take());
        let handed: Vec<String> = self.stubs.locked().drain().map(|(_, id)| id).collect();
        let lent = std::mem::take(&mut *self.lent.locked());
        self.peer.definitions_mut(|definitions| {
            for id in handed.iter().chain(&lent) {
                definitions.remove(id);
            }
        });
        {
            let mut pending = self.pending.locked();
            pending.clear();
        }
        self.streams.close_all("the connection closed");
        self.drop_proxies();
        self.drained.notify_waiters();
        {
            let mut forwarded = self.forwarded.locked();
            for (_, id) in forwarded.drain() {
                self.peer.bus.unsubscribe(id);
            }
        }
        // Only this connection's entry: a newer connection of the same peer stays.
        let known = {
            let mut connections = self.peer.connections.locked();
            let mine = connections.get(&self.remote_id).is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), self));
            mine && connections.remove(&self.remote_id).is_some()
        };
        if known {
            let payload = Value::object([("peerId", Value::str(&self.remote_id))]);
            self.peer.announce(
                "peer:disconnect",
                payload,
                PeerEvent::Disconnected { peer_id: self.remote_id.clone() },
            );
        }
        true
    }

    /// Services the remote peer exposed here go with its connection.
    pub(super) fn drop_proxies(&self) {
        let gone: Vec<String> = self
            .peer
            .exposed
            .reading()
            .iter()
            .filter(|(_, x)| x.definition.peer_id == self.remote_id)
            .map(|(k, _)| k.clone())
            .collect();
        for name in gone {
            let removed = self.peer.exposed.writing().remove(&name);
            if let Some(exposed) = removed {
                self.peer.definitions_mut(|d| d.remove(&exposed.definition.id));
            }
        }
    }

    /// Queues `packet` for the writer.
    pub(super) fn send(&self, packet: &Packet) {
        self.send_sized(packet);
    }

    /// Queues `packet` for the writer; returns its size in bytes. A remote peer with more than
    /// `max_queued_bytes` waiting for its socket is not reading: it is disconnected.
    pub(super) fn send_sized(&self, packet: &Packet) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        if self.closed.is_cancelled() {
            return 0;
        }
        match packet.encode() {
            Ok(bytes) => {
                let size = bytes.len();
                let waiting = self.queued_bytes.fetch_add(size, Relaxed) + size;
                if waiting > self.peer.config.max_queued_bytes {
                    self.queued_bytes.fetch_sub(size, Relaxed);
                    // Requests answered at once may all find the queue full: counted once.
                    if self.close() {
                        self.peer.metrics.slow_peers_disconnected.inc();
                        tracing::warn!(remote = %self.remote_id, waiting, "a peer does not read what it is sent; disconnected");
                    }
                    return 0;
                }
                self.queued.fetch_add(1, Relaxed);
                if self.out.send(Message::binary(bytes)).is_err() {
                    self.queued.fetch_sub(1, Relaxed);
                    self.queued_bytes.fetch_sub(size, Relaxed);
                }
                size
            }
            Err(error) => {
                tracing::warn!(%error, "a packet cannot be written");
                0
            }
        }
    }

    /// One frame from the remote peer.
    pub(super) fn receive(self: &Arc<Self>, frame: &[u8]) {
        let max = self.peer.config.limits.max_frame;
        if frame.len() > max {
            return self.refuse_oversized(frame, max);
        }
        let packet = match Packet::decode(frame, self.peer.config.limits) {
            Ok(packet) => packet,
            Err(error) => {
                return tracing::debug!(remote = %self.remote_id, %error, "an undecodable frame was dropped");
            }
        };
        if !packet.impulse {
            let waiter = self.pending.locked().remove(&packet.id);
            if let Some(waiter) = waiter {
                let _ = waiter.send(if packet.error { Err(packet.data) } else { Ok(packet.data) });
            }
            return;
        }
        match packet.kind {
            PacketType::Get | PacketType::Set | PacketType::Call | PacketType::Task => {
                let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() else {
                    tracing::debug!(remote = %self.remote_id, "too many requests at once; refused");
                    let busy = JsError::new("Too many concurrent requests; retry later");
                    return self.send(&packet.response(Err(Value::Error(Box::new(busy)))));
                };
                self.answer(packet, permit);
            }
            PacketType::Stream => {
                self.peer
                    .metrics
                    .stream_bytes
                    .get_or_create(&crate::metrics::Direction { direction: "received" })
                    .inc_by(frame.len() as u64);
                let (id, index) = packet.stream.unwrap_or_default();
                self.streams.chunk(id, index, packet.data, packet.eos);
            }
            PacketType::StreamError | PacketType::StreamClose => {
                let id = match packet.data.get("streamId") {
                    Some(Value::Int(id)) => u32::try_from(*id).unwrap_or(0),
                    Some(Value::Float(id)) => *id as u32,
                    _ => 0,
                };
                let why =
                    packet.data.get("message").or_else(|| packet.data.get("reason")).and_then(Value::as_str);
                self.streams.fail(id, why.unwrap_or("the stream was closed by its writer").to_owned());
            }
            PacketType::Ping => tracing::debug!(remote = %self.remote_id, "ping ignored, as Netron does"),
        }
    }

    /// A frame over `max_frame` (and within what the WebSocket layer reads): a request is answered
    /// with a Netron error naming the limit, anything else is dropped; the connection stays.
    pub(super) fn refuse_oversized(&self, frame: &[u8], max: usize) {
        let request = Packet::header(frame).filter(|(_, kind, impulse)| {
            *impulse
                && matches!(kind, PacketType::Get | PacketType::Set | PacketType::Call | PacketType::Task)
        });
        tracing::info!(remote = %self.remote_id, size = frame.len(), max, "a frame over the limit was refused");
        if let Some((id, kind, _)) = request {
            let error = JsError::new(format!(
                "Payload too large: the request is {} bytes, this peer accepts at most {max}",
                frame.len()
            ));
            self.send(
                &Packet::request(id, kind, Value::Undefined).response(Err(Value::Error(Box::new(error)))),
            );
        }
    }

    /// The metric labels of a request: the service's qualified name (`task` for tasks) and the
    /// member or task name.
    pub(super) fn labels(&self, packet: &Packet) -> (String, String) {
        let Value::Array(items) = &packet.data else { return ("unknown".into(), "unknown".into()) };
        let text = |i: usize| items.get(i).and_then(Value::as_str).unwrap_or("unknown").to_owned();
        if packet.kind == PacketType::Task {
            return ("task".into(), text(0));
        }
        let service = match self.peer.definitions.reading().get(&text(0)) {
            Some(Served::Local { service, .. }) => Some(service.qualified_name().to_owned()),
            Some(Served::Proxy { .. }) => Some("proxied".to_owned()),
            None => None,
        };
        (service.unwrap_or_else(|| "unknown".into()), text(1))
    }

    /// Writes `items` as stream `stream_id`: a chunk per item, then the end; an item that fails
    /// sends STREAM_ERROR. Waits while many frames are queued for the socket (backpressure inside
    /// the process; Netron has none on the wire).
    pub(super) async fn pipe(
        &self,
        stream_id: u32,
        mut items: futures::stream::BoxStream<'static, Result<Value, JsError>>,
    ) {
        const HIGH_WATER: usize = 256;
        let mut index = 0u32;
        loop {
            while self.backlogged(HIGH_WATER) && !self.closed.is_cancelled() {
                let drained = self.drained.notified();
                if !self.backlogged(HIGH_WATER) {
                    break;
                }
                drained.await;
            }
            let next = tokio::select! {
                next = items.next() => next,
                () = self.closed.cancelled() => return,
            };
            let id = self.peer.ids.next();
            match next {
                Some(Ok(value)) => {
                    let sent = self.send_sized(&Packet::chunk(id, stream_id, index, value, true, false));
                    let direction = crate::metrics::Direction { direction: "sent" };
                    self.peer.metrics.stream_bytes.get_or_create(&direction).inc_by(sent as u64);
                }
                Some(Err(error)) => {
                    let data = Value::object([
                        ("streamId", Value::Int(i64::from(stream_id))),
                        ("message", Value::str(error.message)),
                    ]);
                    return self.send(&Packet::request(id, PacketType::StreamError, data));
                }
                None => return self.send(&Packet::chunk(id, stream_id, index, Value::Null, true, true)),
            }
            index = index.wrapping_add(1);
        }
    }

    /// More than `frames` frames, or more than a quarter of `max_queued_bytes`, wait for the
    /// socket: a stream writer waits before queueing more.
    pub(super) fn backlogged(&self, frames: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.queued.load(Relaxed) > frames
            || self.queued_bytes.load(Relaxed) > self.peer.config.max_queued_bytes / 4
    }

    /// Sends a request and waits for its response.
    pub(super) async fn request(&self, kind: PacketType, data: Value) -> Result<Value, PeerError> {
        let id = self.peer.ids.next();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.locked();
            pending.insert(id, tx);
        }
        // `close` cancels, then clears `pending` (dropping every waiting sender, which ends the
        // wait below with `Closed`). Checked after the insert: a close that cancelled before it
        // is seen here; one that cancels after it clears the map after it too. So a request
        // never waits on a closed connection, without a wait for the close per call.
        if self.closed.is_cancelled() {
            self.pending.locked().remove(&id);
            return Err(PeerError::Closed);
        }
        self.send(&Packet::request(id, kind, data));
        enum Outcome {
            Answer(Result<Value, Value>),
            Closed,
            Timeout,
        }
        let outcome = match tokio::time::timeout(self.peer.config.request_timeout, rx).await {
            Ok(Ok(answer)) => Outcome::Answer(answer),
            Ok(Err(_)) => Outcome::Closed,
            Err(_) => Outcome::Timeout,
        };
        if !matches!(outcome, Outcome::Answer(_)) {
            self.pending.locked().remove(&id);
        }
        match outcome {
            Outcome::Answer(Ok(value)) => Ok(value),
            Outcome::Answer(Err(Value::Error(error))) => Err(PeerError::Remote(error)),
            Outcome::Answer(Err(other)) => Err(PeerError::RemoteValue(Box::new(other))),
            Outcome::Closed => Err(PeerError::Closed),
            Outcome::Timeout => Err(PeerError::Timeout),
        }
    }
}
