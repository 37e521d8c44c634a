//! Discovery on the embedded store: a peer's own exposures on its fleet bus, and services returned
//! by methods reached through a service called by name.

use std::sync::Arc;
use std::time::Duration;

use muster_core::{Address, Registry};
use muster_peer::wire::Value;
use muster_peer::{Peer, PeerConfig, ServiceBuilder};

mod support;
use support::options;

/// A peer in client mode on `registry`, and the named service `query` once discovery finds an
/// instance of it.
async fn client_finding(registry: &Arc<dyn Registry>, query: &str) -> (Peer, muster_peer::NamedService) {
    let client = Peer::new(PeerConfig::default());
    client.enable_discovery(Arc::clone(registry), options(), None).await.unwrap();
    let named = client.service(query).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while named.instances().await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{query} is found");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (client, named)
}

async fn listening(registry: &Arc<dyn Registry>) -> Peer {
    let peer = Peer::new(PeerConfig::default());
    let address = peer.listen("127.0.0.1:0").await.unwrap();
    let address = Address::parse(address.to_string()).unwrap();
    peer.enable_discovery(Arc::clone(registry), options(), Some(address)).await.unwrap();
    peer
}

/// A peer's own exposures reach its fleet bus like any other peer's: `service:available` when
/// it exposes a service, `service:unavailable` when it conceals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_own_exposures_are_announced_on_its_fleet_bus() {
    let registry: Arc<dyn Registry> = Arc::new(muster_memory::MemoryRegistry::new());
    let peer = listening(&registry).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for event in ["service:available", "service:unavailable"] {
        let tx = tx.clone();
        peer.bus().subscribe(
            event,
            muster_peer::listener(move |args| {
                let service =
                    args.first().and_then(|p| p.get("service")).and_then(Value::as_str).map(str::to_owned);
                let _ = tx.send((event, service, args.first().and_then(|p| p.get("nodeId")).cloned()));
                async { Ok(Value::Undefined) }
            }),
        );
    }
    let greeter = ServiceBuilder::new("greeter", "1.0.0").unwrap().build();
    peer.expose_service(greeter).unwrap();
    let next = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<_>| {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap()
    };
    assert_eq!(
        next(&mut rx).await,
        ("service:available", Some("greeter@1.0.0".to_owned()), Some(Value::str(peer.id())))
    );
    assert!(peer.conceal_service("greeter@1.0.0"));
    assert_eq!(next(&mut rx).await.0, "service:unavailable");
}

/// A method that returns a service, called by name: the sub-interface lives on the instance that
/// answered and is called like any interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_interfaces_are_reached_through_a_service_called_by_name() {
    let registry: Arc<dyn Registry> = Arc::new(muster_memory::MemoryRegistry::new());
    let server = listening(&registry).await;
    server.expose_service(support::bank()).unwrap();
    let (_client, named) = client_finding(&registry, "bank@^1").await;
    let account = named.call_interface("open", vec![Value::str("alice")]).await.unwrap();
    assert_eq!(account.definition().peer_id, server.id());
    assert_eq!(account.call("owner", vec![]).await.unwrap(), Value::str("alice"));
    account.release().await.unwrap();
}

/// A connection opened for calls by name ends when its peer leaves the fleet: kept, it would be
/// reopened again and again after the peer's process is gone (reconnection is on by default), and
/// a caller meeting thousands of instances over a fleet's life would hold one for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_name_connections_end_when_their_peer_leaves_the_fleet() {
    let registry: Arc<dyn Registry> = Arc::new(muster_memory::MemoryRegistry::new());
    // The instance heartbeats rarely: deregistered below, it stays out of the fleet meanwhile.
    let instance = Peer::new(PeerConfig::default());
    let address = instance.listen("127.0.0.1:0").await.unwrap();
    let address = Address::parse(address.to_string()).unwrap();
    let rare = muster_core::DiscoveryOptions {
        heartbeat_interval: Duration::from_secs(60),
        heartbeat_ttl: Duration::from_secs(180),
        ..options()
    };
    instance.enable_discovery(Arc::clone(&registry), rare, Some(address)).await.unwrap();
    instance.expose_service(support::calculator()).unwrap();
    let mut instance_events = instance.events();

    let (client, named) = client_finding(&registry, "calculator@^1").await;
    assert_eq!(named.call("add", vec![Value::Int(2), Value::Int(3)]).await.unwrap(), Value::Int(5));

    let id = muster_core::NodeId::new(instance.id()).unwrap();
    assert!(registry.deregister(&id, muster_core::DeregisterReason::Evicted).await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match instance_events.recv().await {
                Ok(muster_peer::PeerEvent::Disconnected { peer_id }) if peer_id == client.id() => return,
                Ok(_) => {}
                Err(error) => panic!("the instance's events ended: {error}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the client kept its connection to a peer that left the fleet");
}
