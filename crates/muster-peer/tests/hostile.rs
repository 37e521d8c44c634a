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

/// A token middleware guards every kind of request, not only calls: without the token a peer can
/// neither expose a (proxy) service here, nor subscribe to its events, nor run its tasks, nor
/// call a service another peer proxied here; the middleware sees each request's kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_guards_tasks_subscriptions_exposures_and_proxies() {
    use muster_peer::wire::PacketType;
    let server = Peer::new(PeerConfig::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    server.use_middleware(Arc::new(move |call: &muster_peer::CallInfo<'_>| {
        record.lock().unwrap().push((call.kind, call.member.to_owned()));
        // The handshake (which lists the services) is public; everything else needs the token.
        let handshake = call.kind == PacketType::Task && call.member == "abilities";
        if handshake || call.params.get("token").map(String::as_str) == Some("secret") {
            Ok(())
        } else {
            Err(JsError::new("Unauthorized"))
        }
    }));
    server
        .add_task(
            "wipe",
            muster_peer::TaskOverwrite::Error,
            muster_peer::listener(|_| async { Ok(Value::Bool(true)) }),
        )
        .unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let (with_token, without) = (Peer::new(PeerConfig::default()), Peer::new(PeerConfig::default()));
    let trusted = with_token.connect(&format!("ws://{address}?token=secret")).await.unwrap();
    let stranger = without.connect(&format!("ws://{address}")).await.unwrap();
    let unauthorized = |result: Result<Value, muster_peer::PeerError>, what: &str| match result {
        Err(muster_peer::PeerError::Remote(error)) => assert_eq!(error.message, "Unauthorized", "{what}"),
        other => panic!("{what}: {other:?}"),
    };

    unauthorized(stranger.run_task("wipe", vec![]).await, "a user task");
    let listener = muster_peer::listener(|_| async { Ok(Value::Undefined) });
    assert!(stranger.subscribe("service:expose", listener.clone()).await.is_err(), "a subscription");
    assert!(stranger.expose_service(calculator()).await.is_err(), "an exposure");
    // A service another peer exposes here is known by its name, as Netron keys it.
    assert!(!server.has_service("calculator"), "nothing was exposed");

    // The trusted peer may do all of it; a stranger still cannot call what it proxied here.
    assert_eq!(trusted.run_task("wipe", vec![]).await.unwrap(), Value::Bool(true));
    trusted.subscribe("service:expose", listener).await.unwrap();
    trusted.expose_service(calculator()).await.unwrap();
    assert!(server.has_service("calculator"));
    let stranger = without.connect(&format!("ws://{address}")).await.unwrap();
    let proxied = stranger.query_interface("calculator").unwrap();
    unauthorized(
        proxied.call("add", vec![Value::Int(1), Value::Int(2)]).await,
        "a call to a proxied service",
    );
    let trusted_again = with_token.connect(&format!("ws://{address}?token=secret")).await.unwrap();
    let proxied = trusted_again.query_interface("calculator").unwrap();
    assert_eq!(proxied.call("add", vec![Value::Int(1), Value::Int(2)]).await.unwrap(), Value::Int(3));

    let seen = seen.lock().unwrap();
    for (kind, member) in [
        (PacketType::Task, "abilities"),
        (PacketType::Task, "wipe"),
        (PacketType::Task, "subscribe"),
        (PacketType::Task, "expose_service"),
        (PacketType::Call, "add"),
    ] {
        assert!(seen.iter().any(|(k, m)| *k == kind && m == member), "{kind:?} {member} was seen: {seen:?}");
    }
}
