//! A peer on a network serves strangers: misbehaving remote peers over real sockets — a blackholed
//! instance among healthy ones, a client that never reads, thousands of connections, sub-services
//! left behind by peers that disconnect, tasks sent past the middleware.

use std::sync::Arc;
use std::time::Duration;

use muster_core::{Address, DiscoveryOptions, NodeId, Registration, Registry, ServiceInfo};
use muster_peer::wire::{JsError, Value};
use muster_peer::{Peer, PeerConfig, ServiceBuilder};

fn options() -> DiscoveryOptions {
    DiscoveryOptions {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_ttl: Duration::from_secs(5),
        retry_delay: Duration::from_millis(100),
        ..DiscoveryOptions::default()
    }
}

fn calculator() -> Arc<muster_peer::Service> {
    ServiceBuilder::new("calculator", "1.0.0")
        .unwrap()
        .method("add", &["Number", "Number"], "Number", |(a, b): (i64, i64)| async move {
            Ok::<_, JsError>(a + b)
        })
        .build()
}

/// A TCP listener that accepts connections and never answers: a WebSocket handshake to it hangs.
async fn blackhole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (address, task)
}

/// Calls by name to a healthy instance go on while another instance's connection hangs: the
/// connection to an instance is opened outside any lock shared with other instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_instance_does_not_stall_calls_to_others() {
    let registry: Arc<dyn Registry> = Arc::new(muster_memory::MemoryRegistry::new());
    let healthy = Peer::new(PeerConfig::default());
    healthy.expose_service(calculator()).unwrap();
    let address = healthy.listen("127.0.0.1:0").await.unwrap();
    healthy
        .enable_discovery(
            Arc::clone(&registry),
            options(),
            Some(Address::parse(address.to_string()).unwrap()),
        )
        .await
        .unwrap();
    let (hole, _hole) = blackhole().await;
    let stuck = Registration::new(
        NodeId::new("blackholed").unwrap(),
        Address::parse(hole.to_string()).unwrap(),
        vec![ServiceInfo::parse("slow@1.0.0").unwrap()],
        Duration::from_secs(60),
    )
    .unwrap();
    registry.heartbeat(stuck).await.unwrap();

    // The caller waits long for a connection: the blackholed one is still hanging when the
    // healthy call is made.
    let caller = Peer::new(PeerConfig { connect_timeout: Duration::from_secs(60), ..PeerConfig::default() });
    caller.enable_discovery(Arc::clone(&registry), options(), None).await.unwrap();
    let slow = caller.service("slow@1.0.0").unwrap();
    let stalled = tokio::spawn(async move { slow.call("anything", vec![]).await });
    // Let the slow call reach its connection attempt.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calculator = caller.service("calculator@1.0.0").unwrap();
    let sum = calculator.call("add", vec![Value::Int(2), Value::Int(3)]);
    let sum = tokio::time::timeout(Duration::from_secs(30), sum).await.expect("the healthy call was stalled");
    assert_eq!(sum.unwrap(), Value::Int(5));
    assert!(!stalled.is_finished(), "the blackholed connection is still hanging");
    stalled.abort();
}
