//! A TCP fault proxy on loopback: put it between a process and the service it talks to (a
//! `muster serve` and its Redis) and inject network faults — latency, dropped connections, a
//! blackhole that neither closes nor answers, a partition that later heals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passes everything.
    None,
    /// Holds every chunk this long in each direction.
    Latency(Duration),
    /// Stops passing bytes in either direction; connections stay open and silent; new ones are
    /// accepted and then ignored (a blackholed route).
    Blackhole,
    /// Closes every connection at once and refuses new ones (a partition that resets).
    Partition,
}

/// A running proxy. Dropping it stops it and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    fault: watch::Sender<Fault>,
    _task: tokio_util::sync::DropGuard,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let (fault, faults) = watch::channel(Fault::None);
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(accept(listener, target, faults, cancel.clone()));
        Self { address, fault, _task: cancel.drop_guard() }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Applies `fault` from now on (to open connections too).
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Applies `fault` for `how_long`, then heals.
    pub async fn spell(&self, fault: Fault, how_long: Duration) {
        self.set(fault);
        tokio::time::sleep(how_long).await;
        self.set(Fault::None);
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    faults: watch::Receiver<Fault>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let (client, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = cancel.cancelled() => return,
        };
        if *faults.borrow() == Fault::Partition {
            drop(client);
            continue;
        }
        let faults = faults.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else { return };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let closed = Arc::new(tokio::sync::Notify::new());
            let up = pipe(client_read, server_write, faults.clone(), Arc::clone(&closed));
            let down = pipe(server_read, client_write, faults, Arc::clone(&closed));
            tokio::select! {
                () = async { tokio::join!(up, down); } => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}

/// Copies one direction, applying the fault to every chunk; ends both directions on a partition.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<Fault>,
    closed: Arc<tokio::sync::Notify>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // While blackholed, read nothing (the sender's buffers fill) and wait for a change.
        while *faults.borrow_and_update() == Fault::Blackhole {
            tokio::select! {
                changed = faults.changed() => if changed.is_err() { return },
                () = closed.notified() => return,
            }
        }
        if *faults.borrow() == Fault::Partition {
            closed.notify_waiters();
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = faults.changed() => {
                if changed.is_err() { return }
                continue;
            }
            () = closed.notified() => return,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                closed.notify_waiters();
                return;
            }
            Ok(n) => n,
        };
        let fault = *faults.borrow();
        match fault {
            Fault::Latency(delay) => tokio::time::sleep(delay).await,
            Fault::Blackhole => {
                // Bytes read just as the blackhole began are held until it ends.
                while *faults.borrow_and_update() == Fault::Blackhole {
                    if faults.changed().await.is_err() {
                        return;
                    }
                }
            }
            Fault::Partition => {
                closed.notify_waiters();
                return;
            }
            Fault::None => {}
        }
        if *faults.borrow() == Fault::Partition || to.write_all(&buffer[..n]).await.is_err() {
            closed.notify_waiters();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut buffer = [0u8; 4];
        match tokio::time::timeout(wait, stream.read_exact(&mut buffer)).await {
            Ok(Ok(_)) => Some(buffer.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn faults_apply_and_heal() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        assert_eq!(round_trip(&mut stream, Duration::from_secs(2)).await.as_deref(), Some(&b"ping"[..]));

        proxy.set(Fault::Blackhole);
        assert_eq!(round_trip(&mut stream, Duration::from_millis(300)).await, None, "silent, not closed");
        proxy.set(Fault::None);
        let mut buffer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buffer)).await.unwrap().unwrap();
        assert_eq!(&buffer, b"ping", "held bytes pass once it heals");

        proxy.set(Fault::Partition);
        let mut byte = [0u8; 1];
        let ended = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await.unwrap();
        assert!(matches!(ended, Ok(0) | Err(_)), "a partition closes open connections");
        let mut refused = TcpStream::connect(proxy.address()).await.unwrap();
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(2), refused.read(&mut byte)).await.unwrap(),
            Ok(0) | Err(_)
        ));

        proxy.set(Fault::Latency(Duration::from_millis(100)));
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(round_trip(&mut stream, Duration::from_secs(2)).await.is_some(), "healed, slowly");
        assert!(started.elapsed() >= Duration::from_millis(200), "latency both ways");
    }
}
