//! The SDK against a real in-process server over loopback.

use std::sync::Arc;
use std::time::Duration;

use muster_client::{Client, RegistrationSpec};
use muster_core::{NodeId, NodeStatus, Registry};
use muster_memory::MemoryRegistry;
use muster_server::{AppState, ServerConfig};

async fn server() -> (String, MemoryRegistry) {
    let registry = MemoryRegistry::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
    tokio::spawn(muster_server::run(listener, state, std::future::pending()));
    (base, registry)
}

fn spec() -> RegistrationSpec {
    RegistrationSpec {
        ttl: Some(Duration::from_millis(400)),
        heartbeat_interval: Duration::from_millis(50),
        retry_delay: Duration::from_millis(20),
        max_retry_delay: Duration::from_millis(100),
        ..RegistrationSpec::new("10.0.0.7:8080").service("users", Some("1.2.0"))
    }
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_heartbeat_status_reregister_deregister() {
    let (base, registry) = server().await;
    let client = Client::new(&base).unwrap();
    let registration = client.register(spec()).await.unwrap();
    let id = NodeId::new(registration.id()).unwrap();
    assert!(registration.id().starts_with("node-"), "the server generated the id");
    let instances = client.instances("users").await.unwrap();
    assert_eq!((instances.len(), instances[0].version.as_deref()), (1, Some("1.2.0")));

    // Heartbeats keep it alive well past its TTL.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(registry.is_active(&id).await.unwrap());

    // The status goes out with the next heartbeat.
    registration.set_status(NodeStatus::Down);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while registry.get(&id).await.unwrap().map(|n| n.status) != Some(NodeStatus::Down) {
        assert!(tokio::time::Instant::now() < deadline, "status never reached the server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The server forgets the node: the next heartbeat gets 404 and the handle registers again.
    registry.deregister(&id, muster_core::DeregisterReason::Evicted).await.unwrap();
    until("the node is registered again", || registration.registrations() == 2).await;
    assert!(registry.is_active(&id).await.unwrap(), "same id after re-registration");

    registration.deregister().await.unwrap();
    assert!(!registry.exists(&id).await.unwrap());
    assert!(client.instances("users").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_heartbeats() {
    let (base, registry) = server().await;
    let client = Client::new(&base).unwrap();
    let registration = client.register(spec().id("dropped")).await.unwrap();
    assert_eq!(registration.id(), "dropped");
    drop(registration);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!registry.exists(&NodeId::new("dropped").unwrap()).await.unwrap(), "expired after its TTL");
}

#[tokio::test]
async fn errors_are_classified() {
    assert!(Client::new("localhost:3100").is_err());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let error = client.instances("users").await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let (base, _registry) = server().await;
    let client = Client::new(&base).unwrap();
    let error = client.register(RegistrationSpec::new("no-port")).await.unwrap_err();
    assert!(!error.is_retryable() && error.to_string().contains("400"), "{error}");
    assert!(client.heartbeat("ghost", NodeStatus::Up).await.unwrap_err().is_not_found());
}
