//! Netron peers in a fleet on a real Redis with Netron's keys: registration follows exposure,
//! discovery by exact and semver version, fleet events, calls by name spread over instances, a
//! concealed service and a stopped peer disappear, and a crashed peer's calls fail over.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use muster_core::{Address, DiscoveryOptions, Preset, Registry};
use muster_peer::wire::Value;
use muster_peer::{Peer, PeerConfig, ServiceBuilder};
use muster_testkit::redis_server::RedisServer;

fn options() -> DiscoveryOptions {
    DiscoveryOptions {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_ttl: Duration::from_millis(800),
        retry_delay: Duration::from_millis(100),
        ..DiscoveryOptions::default()
    }
}

async fn registry(url: &str) -> Arc<dyn Registry> {
    let config = muster_redis::RedisConfig::from_url(url).unwrap().with_preset(Preset::Netron);
    Arc::new(muster_redis::RedisRegistry::connect(config).await.unwrap())
}

fn calculator(calls: Arc<AtomicU64>) -> Arc<muster_peer::Service> {
    ServiceBuilder::new("calculator", "1.2.0")
        .unwrap()
        .stream_method("count", &["Number"], "AsyncGenerator", |n: u32| {
            futures::stream::iter((1..=n).map(Ok::<u32, muster_peer::wire::JsError>))
        })
        .method("add", &["Number", "Number"], "Number", move |(a, b): (i64, i64)| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move { Ok(a + b) }
        })
        .build()
}

/// A serving peer registered in the fleet.
async fn server(url: &str) -> (Peer, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let peer = Peer::new(PeerConfig::default());
    peer.expose_service(calculator(Arc::clone(&calls))).unwrap();
    let address = peer.listen("127.0.0.1:0").await.unwrap();
    let address = Address::parse(address.to_string()).unwrap();
    peer.enable_discovery(registry(url).await, options(), Some(address)).await.unwrap();
    (peer, calls)
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_register_their_services_and_are_called_by_name() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let client = Peer::new(PeerConfig::default());
    client.enable_discovery(registry(&url).await, options(), None).await.unwrap();
    let (tx, mut fleet) = tokio::sync::mpsc::unbounded_channel();
    for event in ["node:joined", "node:left", "service:available", "service:unavailable"] {
        let tx = tx.clone();
        client.bus().subscribe(
            event,
            muster_peer::listener(move |args| {
                let _ = tx.send((event, args));
                async { Ok(Value::Undefined) }
            }),
        );
    }
    let (a, a_calls) = server(&url).await;
    let (b, b_calls) = server(&url).await;
    until("both found by semver", || async {
        client.find_service("calculator@^1").await.unwrap().len() == 2
    })
    .await;
    assert_eq!(client.find_service("calculator@1.2.0").await.unwrap().len(), 2, "exact version");
    assert!(client.find_service("calculator@^2").await.unwrap().is_empty());
    assert!(client.get_active_nodes().await.unwrap().len() >= 2);

    // Calls by name spread over the instances (round robin) on one connection per peer.
    let calculator = client.service("calculator@^1").unwrap();
    for i in 0..20 {
        assert_eq!(
            calculator.call("add", vec![Value::Int(i), Value::Int(1)]).await.unwrap(),
            Value::Int(i + 1)
        );
    }
    assert_eq!(a_calls.load(Ordering::Relaxed) + b_calls.load(Ordering::Relaxed), 20);
    assert!(a_calls.load(Ordering::Relaxed) >= 5 && b_calls.load(Ordering::Relaxed) >= 5, "spread");
    let sum: i64 = calculator.call_as("add", (40, 2)).await.unwrap();
    assert_eq!(sum, 42);
    let counted: Vec<_> =
        futures::StreamExt::collect(calculator.call_stream("count", vec![Value::Int(3)]).await.unwrap())
            .await;
    assert_eq!(counted, vec![Ok(Value::Int(1)), Ok(Value::Int(2)), Ok(Value::Int(3))], "streams by name");
    // Another of muster-client's selectors, with breakers of its own.
    let least = client
        .service_with(
            "calculator@1.2.0",
            Box::new(muster_client::select::LeastOutstanding::default()),
            muster_client::BreakerConfig::default(),
        )
        .unwrap();
    let before = a_calls.load(Ordering::Relaxed) + b_calls.load(Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(least.call("add", vec![Value::Int(1), Value::Int(1)]).await.unwrap(), Value::Int(2));
    }
    assert_eq!(a_calls.load(Ordering::Relaxed) + b_calls.load(Ordering::Relaxed) - before, 10);
    assert_eq!(least.circuit_state(a.id()), muster_client::CircuitState::Closed);

    // Concealing withdraws the registration's service; stopping deregisters.
    assert!(a.conceal_service("calculator@1.2.0"));
    until("the concealed service is gone", || async {
        client.find_service("calculator").await.unwrap().len() == 1
    })
    .await;
    for _ in 0..5 {
        assert!(calculator.call("add", vec![Value::Int(1), Value::Int(1)]).await.is_ok(), "served by b");
    }
    b.stop().await;
    until("the stopped peer is gone", || async {
        client.find_service("calculator").await.unwrap().is_empty()
    })
    .await;

    let mut seen = Vec::new();
    while let Ok(Some((event, args))) = tokio::time::timeout(Duration::from_millis(500), fleet.recv()).await {
        seen.push((event, args));
    }
    let count = |name: &str| seen.iter().filter(|(e, _)| *e == name).count();
    assert!(count("node:joined") >= 2, "{seen:?}");
    assert!(count("service:available") >= 2 && count("service:unavailable") >= 2, "{seen:?}");
    assert!(count("node:left") >= 1, "{seen:?}");
    let joined = seen.iter().find(|(e, _)| *e == "node:joined").map(|(_, args)| args[0].clone()).unwrap();
    assert!(joined.get("address").and_then(Value::as_str).is_some_and(|a| a.starts_with("127.0.0.1:")));
    a.stop().await;
    client.stop().await;
}

/// A peer that dies without deregistering (its runtime is torn down: no goodbye, sockets reset)
/// disappears after its TTL; calls by name started after it died all succeed on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_over_when_a_peer_crashes() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (survivor, survivor_calls) = server(&url).await;
    // The victim runs on a runtime of its own, so it can die abruptly.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (crash_tx, crash_rx) = std::sync::mpsc::channel::<()>();
    let victim_url = url.clone();
    let victim = std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let id = runtime.block_on(async {
            let (peer, _) = server(&victim_url).await;
            peer.id().to_owned()
        });
        ready_tx.send(id).unwrap();
        let _ = crash_rx.recv();
        runtime.shutdown_background();
    });
    let victim_id = ready_rx.recv().unwrap();
    let client = Peer::new(PeerConfig { request_timeout: Duration::from_secs(2), ..PeerConfig::default() });
    client.enable_discovery(registry(&url).await, options(), None).await.unwrap();
    until("both found", || async { client.find_service("calculator").await.unwrap().len() == 2 }).await;
    let calculator = client.service("calculator").unwrap();
    for _ in 0..4 {
        calculator.call("add", vec![Value::Int(1), Value::Int(1)]).await.unwrap();
    }
    crash_tx.send(()).unwrap();
    victim.join().unwrap();
    let before = survivor_calls.load(Ordering::Relaxed);
    let mut failed = 0;
    for i in 0..50 {
        if calculator.call("add", vec![Value::Int(i), Value::Int(1)]).await != Ok(Value::Int(i + 1)) {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "every call after the crash was answered by the survivor");
    assert_eq!(survivor_calls.load(Ordering::Relaxed) - before, 50);
    until("the crashed peer expired", || async {
        client.find_service("calculator").await.unwrap().iter().all(|n| n.node_id.as_str() != victim_id)
    })
    .await;
    survivor.stop().await;
    client.stop().await;
}

/// A TypeScript Netron peer on the same Redis (its wire operations, emulated) and a Rust peer see
/// each other: the Rust peer finds the TypeScript one's service, the TypeScript side lists the
/// Rust peer's node with its services as Netron writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_sees_both_ways() {
    use muster_testkit::titan::{Titan, TitanOptions};
    let redis = RedisServer::start().await;
    let url = redis.url();
    let netron = TitanOptions {
        prefix: "netron:discovery".into(),
        pubsub_enabled: true,
        pubsub_channel: "netron:discovery:events".into(),
        heartbeat_ttl_ms: 15_000,
    };
    let ts = Titan::connect(std::slice::from_ref(&url), netron).await;
    let mut ts_node =
        ts.node("ts-peer", "127.0.0.1:9911", serde_json::json!([{"name": "billing", "version": "3.1.0"}]));
    ts_node.heartbeat().await;
    let (rust, _) = server(&url).await;
    let client = Peer::new(PeerConfig::default());
    client.enable_discovery(registry(&url).await, options(), None).await.unwrap();
    until("the TypeScript peer's service is found", || async {
        client.find_service("billing@^3").await.unwrap().iter().any(|n| n.node_id.as_str() == "ts-peer")
    })
    .await;
    let listed = ts.get_active_nodes().await;
    let mine = listed
        .iter()
        .find(|n| n.node_id == rust.id())
        .expect("the Rust peer is listed by the TypeScript side");
    assert!(format!("{:?}", mine.services).contains("calculator"), "{mine:?}");
    let by_service = ts.find_nodes_by_service("calculator", Some("1.2.0")).await;
    assert_eq!(by_service.len(), 1);
    ts_node.stop().await;
    rust.stop().await;
    client.stop().await;
}

/// A serving peer that also calls a service by name sees its own exposures: its named service's
/// instance list grows when the peer itself starts providing the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_calling_by_name_sees_its_own_exposures() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (other, other_calls) = server(&url).await;
    let me = Peer::new(PeerConfig::default());
    let address = me.listen("127.0.0.1:0").await.unwrap();
    let address = Address::parse(address.to_string()).unwrap();
    me.enable_discovery(registry(&url).await, options(), Some(address)).await.unwrap();
    let named = me.service("calculator").unwrap();
    until("the other peer is found", || async { named.instances().await.unwrap().len() == 1 }).await;
    let my_calls = Arc::new(AtomicU64::new(0));
    me.expose_service(calculator(Arc::clone(&my_calls))).unwrap();
    until("its own instance joins the list", || async { named.instances().await.unwrap().len() == 2 }).await;
    for i in 0..10 {
        assert_eq!(named.call("add", vec![Value::Int(i), Value::Int(1)]).await, Ok(Value::Int(i + 1)));
    }
    assert!(my_calls.load(Ordering::Relaxed) >= 3 && other_calls.load(Ordering::Relaxed) >= 3, "spread");
    other.stop().await;
    me.stop().await;
}

/// The same fleet through a `muster serve` instead of Redis: peers register through the SDK
/// (`RemoteRegistry`), follow their exposures, are found and called by name, and leave on stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_register_through_a_registry_server() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let store = muster_memory::MemoryRegistry::new();
    let state = muster_server::AppState::new(Arc::new(store.clone()), muster_server::ServerConfig::default());
    tokio::spawn(async move { muster_server::run(listener, state, std::future::pending()).await.unwrap() });
    let remote = || -> Arc<dyn Registry> {
        Arc::new(muster_client::RemoteRegistry::new(muster_client::Client::new(&base).unwrap()))
    };
    let mut servers = Vec::new();
    for _ in 0..2 {
        let calls = Arc::new(AtomicU64::new(0));
        let peer = Peer::new(PeerConfig::default());
        peer.expose_service(calculator(Arc::clone(&calls))).unwrap();
        let address = Address::parse(peer.listen("127.0.0.1:0").await.unwrap().to_string()).unwrap();
        peer.enable_discovery(remote(), options(), Some(address)).await.unwrap();
        servers.push((peer, calls));
    }
    let client = Peer::new(PeerConfig::default());
    client.enable_discovery(remote(), options(), None).await.unwrap();
    until("both found through the server", || async {
        client.find_service("calculator@^1").await.unwrap().len() == 2
    })
    .await;
    // The registry server holds them as nodes providing the service.
    let stored = store.list_active().await.unwrap();
    assert!(stored.iter().any(|n| n.node_id.as_str() == servers[0].0.id()), "{stored:?}");
    let calculator = client.service("calculator@1.2.0").unwrap();
    for i in 0..10 {
        assert_eq!(calculator.call("add", vec![Value::Int(i), Value::Int(2)]).await, Ok(Value::Int(i + 2)));
    }
    assert!(servers.iter().all(|(_, calls)| calls.load(Ordering::Relaxed) >= 3), "spread over both");
    assert!(servers[0].0.conceal_service("calculator@1.2.0"));
    until("the concealed service is withdrawn", || async {
        client.find_service("calculator").await.unwrap().len() == 1
    })
    .await;
    let (second, _) = servers.pop().unwrap();
    let second_id = second.id().to_owned();
    second.stop().await;
    until("the stopped peer is deregistered", || async {
        client.find_service("calculator").await.unwrap().is_empty()
    })
    .await;
    assert!(
        store.list_active().await.unwrap().iter().all(|n| n.node_id.as_str() != second_id),
        "gone from the server's store too"
    );
    servers[0].0.stop().await;
    client.stop().await;
}

/// The calculator example as a separate process (built by `cargo test` with the other examples),
/// registered on `redis` with 200 ms heartbeats; returns it with its peer id once it serves.
async fn calculator_process(redis: &str) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().and_then(std::path::Path::parent).unwrap();
    let example = profile_dir.join("examples").join("calculator");
    assert!(
        example.exists(),
        "{} is missing: `cargo test` builds it (or `cargo build -p muster --example calculator`)",
        example.display()
    );
    let mut child = tokio::process::Command::new(example)
        .args(["--listen", "127.0.0.1:0", "--redis", redis, "--heartbeat-ms", "200"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("peer ") {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("the calculator process ended before serving");
    })
    .await
    .expect("the calculator process serves");
    // Keep reading its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, serving)
}

/// A number as JavaScript sees it (whole floats travel as integers).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Int(n) => Some(*n as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// SIGKILL of a peer process in the middle of a stream of calls by name: no call fails (those on
/// the dying connection are retried on the other instance), and the killed peer leaves the fleet
/// by TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_process_is_failed_over_and_expires() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (mut first, first_id) = calculator_process(&url).await;
    let (mut second, _) = calculator_process(&url).await;
    let client = Peer::new(PeerConfig { request_timeout: Duration::from_secs(2), ..PeerConfig::default() });
    client.enable_discovery(registry(&url).await, options(), None).await.unwrap();
    until("both processes found", || async {
        client.find_service("calculator@1.0.0").await.unwrap().len() == 2
    })
    .await;
    let calculator = client.service("calculator@^1").unwrap();
    let caller = {
        let calculator = calculator.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            for i in 0..2_000_i64 {
                match calculator.call("add", vec![Value::Int(i), Value::Int(1)]).await {
                    Ok(value) if number(&value) == Some((i + 1) as f64) => ok += 1,
                    other => failed.push((i, other)),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!caller.is_finished(), "the kill lands in the middle of the calls");
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let (ok, failed) = caller.await.unwrap();
    assert!(failed.is_empty(), "calls lost to the SIGKILL: {failed:?}");
    assert_eq!(ok, 2_000);
    until("the killed peer expired", || async {
        client.find_service("calculator").await.unwrap().iter().all(|n| n.node_id.as_str() != first_id)
    })
    .await;
    assert_eq!(client.find_service("calculator").await.unwrap().len(), 1, "the other one stays");
    assert_eq!(number(&calculator.call("add", vec![Value::Int(2), Value::Int(2)]).await.unwrap()), Some(4.0));
    second.start_kill().unwrap();
    client.stop().await;
}

/// A `muster serve` on `listener` over a store persisted in `dir`; the returned sender stops it
/// gracefully and the handle finishes once the store has written its final snapshot.
async fn persisted_server(
    listener: tokio::net::TcpListener,
    dir: &std::path::Path,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let store = muster_memory::MemoryRegistry::open(
        muster_memory::MemoryOptions::default(),
        muster_memory::PersistOptions::new(dir),
    )
    .await
    .unwrap();
    let state = muster_server::AppState::new(Arc::new(store.clone()), muster_server::ServerConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        muster_server::run(listener, state, async move { stopped.await.unwrap_or(()) }).await.unwrap();
        store.shutdown().await.unwrap();
    });
    (stop, task)
}

/// A graceful restart of the registry server ends every watch stream cleanly. An agent, an SDK
/// resolver and a peer calling by name, all started before the restart, follow a registration
/// made after it (a clean end the caller did not ask for is a break, resumed like any other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_the_fleet_across_a_server_restart() {
    let dir = muster_testkit::redis_server::TempDir::new("restart");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let base = format!("http://{bound}");
    let (stop, stopped) = persisted_server(listener, dir.path()).await;
    let remote = || -> Arc<dyn Registry> {
        Arc::new(muster_client::RemoteRegistry::new(muster_client::Client::new(&base).unwrap()))
    };
    // One serving peer before the restart.
    let first_calls = Arc::new(AtomicU64::new(0));
    let first = Peer::new(PeerConfig::default());
    first.expose_service(calculator(Arc::clone(&first_calls))).unwrap();
    let address = Address::parse(first.listen("127.0.0.1:0").await.unwrap().to_string()).unwrap();
    first.enable_discovery(remote(), options(), Some(address)).await.unwrap();
    // The three followers: an agent in client mode, the SDK's resolver, a peer calling by name.
    let agent = muster_agent::Agent::builder_shared(remote())
        .options(DiscoveryOptions { client_mode: true, ..options() })
        .address(Address::parse("127.0.0.1:1").unwrap())
        .build()
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    agent.on_event(move |event| recorded.lock().unwrap().push(event.node.node_id.as_str().to_owned()));
    agent.start().await.unwrap();
    let sdk = muster_client::Client::new(&base).unwrap();
    let any = muster_core::VersionQuery::Any;
    let caller = Peer::new(PeerConfig::default());
    caller.enable_discovery(remote(), options(), None).await.unwrap();
    let by_name = caller.service("calculator@^1").unwrap();
    until("the first instance is found by all three", || async {
        agent.cache().is_synced()
            && agent.resolve(&muster_core::ServiceQuery::parse("calculator").unwrap()).await.unwrap().len()
                == 1
            && sdk.instances("calculator", &any).await.is_ok_and(|r| r.instances.len() == 1)
    })
    .await;
    assert_eq!(by_name.call("add", vec![Value::Int(1), Value::Int(2)]).await, Ok(Value::Int(3)));

    // A graceful restart on the same port and data directory.
    stop.send(()).unwrap();
    stopped.await.unwrap();
    let listener = tokio::net::TcpListener::bind(bound).await.unwrap();
    let (stop, stopped) = persisted_server(listener, dir.path()).await;

    // A second serving peer registers after the restart.
    let second_calls = Arc::new(AtomicU64::new(0));
    let second = Peer::new(PeerConfig::default());
    second.expose_service(calculator(Arc::clone(&second_calls))).unwrap();
    let address = Address::parse(second.listen("127.0.0.1:0").await.unwrap().to_string()).unwrap();
    second.enable_discovery(remote(), options(), Some(address)).await.unwrap();
    let second_id = second.id().to_owned();
    until("the agent's cache and handlers see the new node", || async {
        agent.cache().is_synced()
            && agent.resolve(&muster_core::ServiceQuery::parse("calculator").unwrap()).await.unwrap().len()
                == 2
            && seen.lock().unwrap().contains(&second_id)
    })
    .await;
    until("the SDK's resolver sees the new node", || async {
        sdk.instances("calculator", &any).await.is_ok_and(|r| r.instances.len() == 2 && !r.stale)
    })
    .await;
    until("calls by name reach the new node", || async {
        by_name.call("add", vec![Value::Int(1), Value::Int(2)]).await.is_ok()
            && second_calls.load(Ordering::Relaxed) > 0
    })
    .await;

    for peer in [first, second, caller] {
        peer.stop().await;
    }
    agent.stop().await.unwrap();
    stop.send(()).unwrap();
    stopped.await.unwrap();
}
