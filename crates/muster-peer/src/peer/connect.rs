//! Opening connections (`Peer::connect`), accepting them (`Peer::listen`), and opening them again
//! after they break.

use super::*;

/// Opens a connection to `url`: the WebSocket handshake with `?id=`, then the listener's id frame.
pub(super) async fn open(
    inner: &Arc<Inner>,
    url: &str,
    listeners: Arc<EventBus>,
) -> Result<Arc<Connection>, PeerError> {
    // `ws://host:port` gets its root path, as the `ws` package sends it (`GET /?id=...`).
    let rooted = match url.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => {
            format!("{}/{}", url.split('?').next().unwrap_or(url), url.find('?').map_or("", |at| &url[at..]))
        }
        _ => url.to_owned(),
    };
    let separator = if rooted.contains('?') { '&' } else { '?' };
    let target = format!("{rooted}{separator}id={}", inner.id);
    let handshake = async {
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(target, Some(ws_config(&inner.config)), true)
                .await
                .map_err(|e| PeerError::Connect(e.to_string()))?;
        // The listener's first frame is a text frame naming it.
        let remote_id = loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let json: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|_| PeerError::Protocol("Invalid handshake".into()))?;
                    match (json["type"].as_str(), json["id"].as_str()) {
                        (Some("id"), Some(id)) => break id.to_owned(),
                        _ => return Err(PeerError::Protocol("Invalid handshake".into())),
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(_)) => return Err(PeerError::Protocol("Invalid handshake".into())),
                Some(Err(e)) => return Err(PeerError::Connect(e.to_string())),
                None => return Err(PeerError::Closed),
            }
        };
        Ok((socket, remote_id))
    };
    let (socket, remote_id) = tokio::time::timeout(inner.config.connect_timeout, handshake)
        .await
        .map_err(|_| PeerError::Connect("the connection and handshake timed out".into()))??;
    Ok(Connection::start(Arc::clone(inner), socket, remote_id, listeners, HashMap::new(), None))
}

/// The longest wait between two reconnection attempts.
pub(super) const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Reconnection delays: from `reconnect_delay`, doubling up to 30 s, each within ±20 % so that the
/// peers a restarted server served do not all come back in the same instant.
/// A `reconnect_delay` under 1 ms or over 30 s is refused.
pub(super) fn reconnect_backoff(config: &PeerConfig) -> Result<muster_core::Backoff, PeerError> {
    muster_core::Backoff::try_new(config.reconnect_delay, MAX_RECONNECT_DELAY, 0.2)
        .map_err(|e| PeerError::Config(format!("reconnect delay: {e}")))
}

/// Opens `remote`'s connection again each time it breaks (unless closed on purpose or the peer
/// stopped), with exponential backoff, up to the attempt limit.
pub(super) async fn reconnect(
    inner: std::sync::Weak<Inner>,
    remote: std::sync::Weak<Remote>,
    url: String,
    first: muster_core::Backoff,
) {
    loop {
        let Some(closed) = remote.upgrade().map(|r| r.current.load().closed.clone()) else { return };
        closed.cancelled().await;
        let mut backoff = first.clone();
        loop {
            let (Some(peer), Some(shared)) = (inner.upgrade(), remote.upgrade()) else { return };
            if peer.stopped.is_cancelled() || shared.closed_by_us.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let attempts = backoff.failures();
            if peer.config.max_reconnect_attempts.is_some_and(|max| attempts >= max) {
                tracing::warn!(%url, attempts, "giving up reconnecting");
                return;
            }
            let delay = backoff.failed();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = peer.stopped.cancelled() => return,
            }
            match open(&peer, &url, Arc::clone(&shared.listeners)).await {
                Ok(connection) => {
                    let again = RemotePeer { shared };
                    match again.initialize_on(connection, false).await {
                        Ok(()) => {
                            tracing::info!(%url, "reconnected");
                            break;
                        }
                        Err(error) => tracing::debug!(%url, %error, "reconnected but the handshake failed"),
                    }
                }
                Err(error) => {
                    let _ = peer
                        .events
                        .send(PeerEvent::ConnectFailed { url: url.clone(), message: error.to_string() });
                    tracing::debug!(%url, %error, attempts, "reconnecting failed");
                }
            }
        }
    }
}

/// The listener's side of a new connection: the WebSocket handshake (the connector's id from
/// `?id=`), the id frame, then the connection.
pub(super) async fn accept(
    inner: Arc<Inner>,
    stream: tokio::net::TcpStream,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    // Answers go out when written, not held back for the previous one's acknowledgement
    // (the connector's side does the same).
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY could not be set");
    }
    let mut params = HashMap::new();
    // The signature is tungstenite's handshake callback; its error type is its own.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        params = crate::middleware::query_params(request.uri().query());
        Ok(response)
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config(&inner.config)));
    let mut socket = match tokio::time::timeout(inner.config.connect_timeout, handshake).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => return tracing::debug!(%error, "a WebSocket handshake failed"),
        Err(_) => return tracing::debug!("a WebSocket handshake timed out"),
    };
    let Some(remote_id) = params.remove("id").filter(|id| !id.is_empty()) else {
        tracing::debug!("a peer connected without ?id=; closing");
        let _ = socket.close(None).await;
        return;
    };
    let hello = serde_json::json!({"type": "id", "id": inner.id}).to_string();
    if socket.send(Message::text(hello)).await.is_err() {
        return;
    }
    Connection::start(inner, socket, remote_id, Arc::new(EventBus::default()), params, Some(slot));
}

/// WebSocket settings from the peer's: no message or frame beyond the packet limit.
/// The WebSocket layer reads messages up to twice `max_frame`, so that a request over the limit
/// can still be answered with an error (see [`Limits::max_frame`]).
pub(super) fn ws_config(config: &PeerConfig) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let read = config.limits.max_frame.saturating_mul(2);
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(read))
        .max_frame_size(Some(read))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
}

/// Bytes of frames the WebSocket layer gathers before it writes them to the socket (a flush
/// writes the rest). Its default, 128 KiB, wrote every second 64 KiB stream chunk on its own:
/// with 512 KiB a stream's server spends 24–25 µs per chunk instead of 34–46 and the stream runs at
/// 2.4–2.6 GB/s instead of 1.4–1.8 (one worker thread per process). Calls flush per batch of ready
/// frames, far below it.
const WRITE_BUFFER: usize = 512 * 1024;

/// Bytes read from the socket at once. The WebSocket layer zeroes this much before each read
/// (its default, 128 KiB, cost more zeroing than a busy connection reads at once: 9 % of a
/// server's CPU on small calls); a 64 KiB stream chunk still takes two reads.
const READ_BUFFER: usize = 32 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    /// Reconnections back off as the rest of the project does: doubling from the first delay,
    /// spread by jitter, never over the maximum.
    #[test]
    fn reconnect_delays_double_with_jitter_up_to_the_maximum() {
        let config = PeerConfig { reconnect_delay: Duration::from_millis(100), ..PeerConfig::default() };
        let backoff = reconnect_backoff(&config).unwrap();
        let firsts: std::collections::HashSet<Duration> = (0..64).map(|_| backoff.delay(1)).collect();
        assert!(firsts.len() > 1, "the first delay is jittered");
        for first in &firsts {
            assert!((80..=120).contains(&first.as_millis()), "{first:?} is within 20 % of 100 ms");
        }
        assert_eq!(backoff.nominal(4), Duration::from_millis(800));
        for _ in 0..64 {
            assert!(backoff.delay(30) <= MAX_RECONNECT_DELAY, "never over 30 s");
        }
        for refused in [Duration::ZERO, Duration::from_secs(31)] {
            let config = PeerConfig { reconnect_delay: refused, ..PeerConfig::default() };
            assert!(matches!(reconnect_backoff(&config), Err(PeerError::Config(_))), "{refused:?}");
        }
    }
}
