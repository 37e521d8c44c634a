//! The DNS interface (`muster serve --dns 127.0.0.1:8600`): any program finds a service with a
//! DNS lookup, answered from the server's live view of the registry (the fan-out hub's mirror, so
//! a registration or an expiry shows in the next answer).
//!
//! Names, under the domain (`muster.` by default):
//! - `<service>.service.<domain>`: A/AAAA of the service's `UP` instances (a CNAME to the host
//!   when no instance has an IP address);
//! - `v<version with dashes>.<service>.service.<domain>` (`v1-2-0` for `1.2.0`): one exact version;
//! - `_<service>._<protocol>.service.<domain>` or `_<service>._<protocol>.<domain>` (RFC 2782), and
//!   `_<service>._<protocol>.v<version>.service.<domain>` for one version: SRV of the instances
//!   that speak the protocol (a `protocol` metadata list, the service's or else the node's, `tcp`
//!   when neither says) with the port and the weight, the target `<node-id>.node.<domain>` (its
//!   address in the additional section) or the host name;
//! - `<reversed address>.in-addr.arpa.` / `.ip6.arpa.`: PTR `<node-id>.node.<domain>` of every
//!   node registered at that address (NXDOMAIN when none is);
//! - `<node-id>.node.<domain>`: the node's address (whatever its status), and TXT with its status
//!   and metadata (`status=DOWN`, `zone=eu-1`, ...);
//! - `<domain>`: SOA and NS (`ns.<domain>`); `ns.<domain>`: the DNS server's own address (its listen
//!   address; the loopback address when it listens on every interface).
//!
//! Answers are shuffled; the TTL is a setting. A service no node provides is NXDOMAIN with the
//! zone's SOA; a known name without records of the asked type is an empty answer with the SOA.
//! Queries follow the ACL default policy (DNS carries no token): names the anonymous caller may
//! not read are REFUSED. Over UDP, an answer larger than the client's buffer (512 bytes, or its
//! EDNS size up to 4096) is truncated (TC, so the client asks again over TCP) to as many of its
//! records as fit. `/metrics` counts queries by question type, answer code and transport
//! (`muster_dns_queries_total`), truncations, and the time to answer.
//!
//! Here: the settings and the UDP and TCP loops; `names.rs`: what a name asks for; `zone.rs`: the
//! answers and the ones kept.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::AppState;

mod names;
mod zone;

use zone::Zone;

/// DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where to answer (UDP and TCP on the same port).
    pub listen: SocketAddr,
    /// The zone answered, e.g. `muster.` (a trailing dot is added when missing).
    pub domain: String,
    /// The TTL of every answer, in seconds.
    pub ttl: u32,
    /// Most TCP connections open at once; one more is closed at once (a client then retries or
    /// asks over UDP).
    pub max_tcp_connections: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8600)),
            domain: "muster.".into(),
            ttl: 5,
            max_tcp_connections: 256,
        }
    }
}

/// Largest UDP answer, whatever a client's EDNS buffer says.
const MAX_UDP: usize = 4096;
/// Longest a TCP client may take to send a query.
const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The DNS server, bound.
#[derive(Debug)]
pub struct DnsServer {
    /// The address answered on (UDP and TCP).
    pub local_addr: SocketAddr,
}

/// Binds UDP and TCP on `config.listen` (port 0: a free port, the same for both) and answers
/// until the server shuts down.
pub async fn start(state: &AppState, config: DnsConfig) -> std::io::Result<DnsServer> {
    let shutdown = state.inner.shutdown.clone();
    let zone = Arc::new(Zone::new(state.clone(), &config)?);
    let (udp, tcp) = bind(config.listen).await?;
    let local_addr = udp.local_addr()?;
    // One reader per core on the one socket: answering is mostly the kernel's send, which then
    // runs on every core.
    let udp = Arc::new(udp);
    let tasks = &state.inner.tasks;
    for _ in 0..std::thread::available_parallelism().map_or(1, usize::from) {
        tasks.spawn(serve_udp(Arc::clone(&udp), Arc::clone(&zone), shutdown.clone()));
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_tcp_connections.max(1)));
    tasks.spawn(serve_tcp(tcp, zone, permits, shutdown, tasks.clone()));
    Ok(DnsServer { local_addr })
}

/// A UDP socket and a TCP listener on one port.
async fn bind(listen: SocketAddr) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind(listen).await?;
        match tokio::net::TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // Port 0 gave a UDP port whose TCP twin is taken: try another.
            Err(error) if listen.port() == 0 => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port for DNS")))
}

async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, zone: Arc<Zone>, shutdown: CancellationToken) {
    let mut buffer = vec![0u8; MAX_UDP];
    loop {
        let (len, peer) = tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "DNS receive failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        if let Some(answer) = zone.answer_bytes(&buffer[..len], Transport::Udp)
            && let Err(error) = socket.send_to(&answer, peer).await
        {
            tracing::debug!(%error, %peer, "DNS send failed");
        }
    }
}

async fn serve_tcp(
    listener: tokio::net::TcpListener,
    zone: Arc<Zone>,
    permits: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "DNS accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // At the cap, the connection is closed at once rather than left waiting.
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!("DNS connection closed: at the TCP connection limit");
            continue;
        };
        let zone = Arc::clone(&zone);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = tcp_connection(stream, &zone) => {}
                () = shutdown.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// Length-prefixed queries on one connection, answered in order, until the client stops.
async fn tcp_connection(mut stream: tokio::net::TcpStream, zone: &Zone) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else { return };
        let mut query = vec![0u8; usize::from(len)];
        if !matches!(tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await, Ok(Ok(_))) {
            return;
        }
        let Some(answer) = zone.answer_bytes(&query, Transport::Tcp) else { return };
        let Ok(len) = u16::try_from(answer.len()) else { return };
        if stream.write_u16(len).await.is_err() || stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp = 0,
    Tcp = 1,
}
