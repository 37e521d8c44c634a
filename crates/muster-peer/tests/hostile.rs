//! A peer on a network serves strangers: misbehaving remote peers over real sockets — a blackholed
//! instance among healthy ones, a client that never reads, thousands of connections, sub-services
//! left behind by peers that disconnect, tasks sent past the middleware.

use std::sync::Arc;
use std::time::Duration;

use muster_core::{Address, NodeId, Registration, Registry, ServiceInfo};
use muster_peer::wire::{JsError, Value};
use muster_peer::{Peer, PeerConfig, ServiceBuilder};

mod support;
use support::{calculator, options};

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

/// A metric's value in the peer's exposition.
fn metric(peer: &Peer, name: &str) -> f64 {
    let text = peer.metrics_text();
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that sends requests and never reads the answers is disconnected once what waits for
/// its socket passes `max_queued_bytes`, counted; the peer keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected() {
    use futures::{SinkExt, StreamExt};
    use muster_peer::wire::{Packet, PacketType};
    use tokio_tungstenite::tungstenite::Message;
    let blob = ServiceBuilder::new("blob", "1.0.0")
        .unwrap()
        .method("get", &[], "String", |(): ()| async move { Ok::<_, JsError>("x".repeat(256 * 1024)) })
        .build();
    let server = Peer::new(PeerConfig { max_queued_bytes: 4 * 1024 * 1024, ..PeerConfig::default() });
    let definition = server.expose_service(blob).unwrap();
    server.expose_service(calculator()).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/?id=deaf")).await.unwrap();
    let Some(Ok(Message::Text(_))) = socket.next().await else { panic!("no id frame") };
    // 400 answers of 256 KiB: 100 MiB if the peer queued them all.
    for id in 1..=400u32 {
        let call = Packet::request(
            id,
            PacketType::Call,
            Value::Array(vec![Value::str(&definition.id), Value::str("get")]),
        );
        if socket.send(Message::binary(call.encode().unwrap())).await.is_err() {
            break; // Already disconnected.
        }
    }
    // Counted once, however many answers found its queue full at the same time.
    eventually("the deaf client was disconnected", || {
        metric(&server, "netron_slow_peers_disconnected_total") > 0.0
    })
    .await;
    eventually("its connection is gone", || metric(&server, "netron_connections") == 0.0).await;
    assert_eq!(metric(&server, "netron_slow_peers_disconnected_total"), 1.0);
    // The client finds its connection ended once it reads what was sent before.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
        }
    });
    ended.await.expect("the connection ended");
    let other = Peer::new(PeerConfig::default()).connect(&format!("ws://{address}")).await.unwrap();
    let calculator = other.query_interface("calculator@1.0.0").unwrap();
    let sum = calculator.call("add", vec![Value::Int(1), Value::Int(1)]).await;
    assert_eq!(sum.unwrap(), Value::Int(2), "the peer serves others");
}

/// Connections beyond `max_connections` are closed on arrival and counted; a place freed by a
/// closed connection is taken by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused() {
    let server = Peer::new(PeerConfig { max_connections: 20, ..PeerConfig::default() });
    server.expose_service(calculator()).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{address}");
    let client = Peer::new(PeerConfig { connect_timeout: Duration::from_secs(10), ..PeerConfig::default() });
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        match client.connect(&url).await {
            Ok(remote) => open.push(remote),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(open.len(), 20, "as many as the cap");
    assert_eq!(refused, 180);
    assert_eq!(metric(&server, "netron_connections_refused_total"), 180.0);
    assert_eq!(metric(&server, "netron_connections"), 20.0);
    open.pop().unwrap().disconnect();
    eventually("the closed connection's place is free", || metric(&server, "netron_connections") == 19.0)
        .await;
    let again = client.connect(&url).await.expect("a freed place is taken");
    let calculator = again.query_interface("calculator@1.0.0").unwrap();
    assert_eq!(calculator.call("add", vec![Value::Int(2), Value::Int(2)]).await.unwrap(), Value::Int(4));
}

/// Services returned by methods are served for the connection they were handed to: a peer that
/// creates sub-services and disconnects without releasing them leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_services_of_a_closed_connection_are_freed() {
    let server = Peer::new(PeerConfig::default());
    server.expose_service(support::bank()).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    assert_eq!(metric(&server, "netron_definitions"), 1.0, "the exposed service");
    for round in 0..5 {
        let client = Peer::new(PeerConfig::default());
        let remote = client.connect(&format!("ws://{address}")).await.unwrap();
        let bank = remote.query_interface("bank@1.0.0").unwrap();
        for i in 0..100 {
            let account =
                bank.call_interface("open", vec![Value::str(format!("{round}-{i}"))]).await.unwrap();
            assert_eq!(account.call("owner", vec![]).await.unwrap(), Value::str(format!("{round}-{i}")));
        }
        assert_eq!(metric(&server, "netron_definitions"), 101.0, "served while the connection is open");
        remote.disconnect();
        eventually("the sub-services are freed", || metric(&server, "netron_definitions") == 1.0).await;
    }
}

/// A local bus listener that never finishes holds up the peer's announcements: at most 10,000
/// wait for it, the rest are dropped and counted rather than queued without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_wait_in_a_bounded_queue() {
    let peer = Peer::new(PeerConfig::default());
    peer.bus().subscribe("service:expose", muster_peer::listener(|_| std::future::pending()));
    let service = calculator();
    for _ in 0..10_100 {
        peer.expose_service(Arc::clone(&service)).unwrap();
        assert!(peer.conceal_service("calculator@1.0.0"));
    }
    // 20,200 announcements: one taken by the stuck listener, 10,000 waiting, the rest dropped.
    let dropped = metric(&peer, "netron_announcements_dropped_total");
    assert!((10_199.0..=10_200.0).contains(&dropped), "{dropped} dropped");
}

/// Frames: by default a peer takes what Netron's `ws` takes (a 20 MiB argument is fine); a
/// request over a lower limit is answered with a Netron error naming it and the connection stays;
/// a frame over twice the limit closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_answered_with_an_error() {
    let echo =
        || {
            ServiceBuilder::new("echo", "1.0.0")
                .unwrap()
                .method("length", &["String"], "Number", |text: String| async move {
                    Ok::<_, JsError>(text.len())
                })
                .build()
        };
    let roomy = Peer::new(PeerConfig::default());
    roomy.expose_service(echo()).unwrap();
    let address = roomy.listen("127.0.0.1:0").await.unwrap();
    let client = Peer::new(PeerConfig::default());
    let remote = client.connect(&format!("ws://{address}")).await.unwrap();
    let length = remote.query_interface("echo@1.0.0").unwrap();
    let big = "x".repeat(20 * 1024 * 1024);
    assert_eq!(length.call("length", vec![Value::str(&big)]).await.unwrap(), Value::Int(20 * 1024 * 1024));

    let limits = muster_peer::wire::Limits { max_frame: 1024 * 1024, ..Default::default() };
    let strict = Peer::new(PeerConfig { limits, ..PeerConfig::default() });
    strict.expose_service(echo()).unwrap();
    let address = strict.listen("127.0.0.1:0").await.unwrap();
    let remote = client.connect(&format!("ws://{address}")).await.unwrap();
    let length = remote.query_interface("echo@1.0.0").unwrap();
    match length.call("length", vec![Value::str("x".repeat(1536 * 1024))]).await {
        Err(muster_peer::PeerError::Remote(error)) => {
            assert!(error.message.starts_with("Payload too large"), "{}", error.message);
            assert!(error.message.contains("1048576"), "names the limit: {}", error.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        length.call("length", vec![Value::str("abc")]).await.unwrap(),
        Value::Int(3),
        "the connection stays"
    );
    let closed = length.call("length", vec![Value::str("x".repeat(3 * 1024 * 1024))]).await;
    assert!(matches!(closed, Err(muster_peer::PeerError::Closed)), "{closed:?}");
    eventually("the connection is closed", || !remote.is_connected()).await;
}
