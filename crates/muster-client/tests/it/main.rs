//! The SDK against a real in-process server over loopback.

mod remote;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_client::{
    BreakerConfig, CircuitState, Client, ClientConfig, ClientError, FailoverError, RegistrationSpec, select,
};
use muster_core::{Address, NodeId, NodeStatus, Registration, Registry, ServiceInfo, VersionQuery};
use muster_memory::MemoryRegistry;
use muster_server::{AppState, ServerConfig};
use tokio_util::sync::CancellationToken;

/// A registry server on `port` (0: any) that stops when the token is cancelled.
struct Server {
    base: String,
    port: u16,
    registry: MemoryRegistry,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(port: u16) -> Self {
        let registry = MemoryRegistry::new();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let done = tokio::spawn(async move {
            muster_server::run(listener, state, shutdown).await.unwrap();
        });
        Self { base: format!("http://127.0.0.1:{port}"), port, registry, stop, done }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.done.await.unwrap();
    }

    async fn add(&self, id: &str, address: &str, service: &str, version: &str) {
        let registration = Registration::new(
            NodeId::new(id).unwrap(),
            Address::parse(address).unwrap(),
            vec![ServiceInfo::new(service, Some(version)).unwrap()],
            Duration::from_secs(60),
        )
        .unwrap();
        self.registry.heartbeat(registration).await.unwrap();
    }
}

fn spec() -> RegistrationSpec {
    RegistrationSpec {
        ttl: Some(Duration::from_millis(400)),
        heartbeat_interval: Duration::from_millis(50),
        retry_delay: Duration::from_millis(20),
        max_retries: 3,
        ..RegistrationSpec::new("10.0.0.7:8080").service("users", Some("1.2.0"))
    }
}

fn client(base: &str) -> Client {
    let config = ClientConfig {
        registry_url: base.to_owned(),
        breaker: BreakerConfig { failures: 2, cool_down: Duration::from_secs(600) },
        ..ClientConfig::default()
    };
    Client::with_config(config).unwrap()
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_heartbeat_status_reregister_deregister() {
    let server = Server::start(0).await;
    let registry = server.registry.clone();
    let client = client(&server.base);
    let registration = client.register(spec()).await.unwrap();
    let id = NodeId::new(registration.id()).unwrap();
    assert!(registration.id().starts_with("node-"), "the server generated the id");
    let users = client.fetch_instances("users", &[]).await.unwrap();
    assert_eq!((users.len(), users[0].version.as_deref()), (1, Some("1.2.0")));

    // Heartbeats keep it alive past its TTL: the server sees its heartbeat time move on, three
    // times, and the node is never gone in between (an ordering, not a duration).
    let mut last = registry.get(&id).await.unwrap().expect("registered").timestamp_ms;
    for _ in 0..3 {
        until("a heartbeat arrives", async || {
            registry.get(&id).await.unwrap().expect("kept alive by its heartbeats").timestamp_ms > last
        })
        .await;
        last = registry.get(&id).await.unwrap().expect("kept alive by its heartbeats").timestamp_ms;
    }
    assert!(registry.is_active(&id).await.unwrap());

    // The status goes out with the next heartbeat.
    registration.set_status(NodeStatus::Down);
    assert_eq!(registration.status(), NodeStatus::Down);
    until("the status reaches the server", async || {
        registry.get(&id).await.unwrap().map(|n| n.status) == Some(NodeStatus::Down)
    })
    .await;

    // The server forgets the node: the next heartbeat gets 404 and the handle registers again.
    registry.deregister(&id, muster_core::DeregisterReason::Evicted).await.unwrap();
    until("the node is registered again", async || registration.registrations() == 2).await;
    assert!(registry.is_active(&id).await.unwrap(), "same id after re-registration");
    assert_eq!(registry.get(&id).await.unwrap().unwrap().status, NodeStatus::Down, "with the current status");

    registration.deregister().await.unwrap();
    assert!(!registry.exists(&id).await.unwrap());
    assert!(client.fetch_instances("users", &[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregisters_after_a_server_restart_without_data_and_deregisters_on_shutdown() {
    let server = Server::start(0).await;
    let port = server.port;
    let client = client(&server.base);
    let registration = client.register(spec().id("survivor")).await.unwrap();
    server.stop().await;

    // A new, empty registry on the same port: the handle notices (404) and registers again.
    let server = Server::start(port).await;
    let id = NodeId::new("survivor").unwrap();
    until("the restarted registry knows the node", async || server.registry.is_active(&id).await.unwrap())
        .await;
    // The handle counts the registration once the answer arrived, a moment after the store holds it.
    until("the handle counts the registration again", async || registration.registrations() >= 2).await;

    // The shutdown hook deregisters.
    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel::<()>();
    let hook = tokio::spawn(registration.deregister_on(async move {
        signal_rx.await.ok();
    }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.registry.is_active(&id).await.unwrap(), "alive until the signal");
    signal_tx.send(()).unwrap();
    hook.await.unwrap().unwrap();
    assert!(!server.registry.exists(&id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_stops_heartbeats() {
    let server = Server::start(0).await;
    let client = client(&server.base);
    let registration = client.register(spec().id("dropped")).await.unwrap();
    assert_eq!(registration.id(), "dropped");
    drop(registration);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !server.registry.exists(&NodeId::new("dropped").unwrap()).await.unwrap(),
        "expired after its TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified() {
    assert!(Client::new("localhost:3100").is_err());
    let client = Client::new(&format!("http://127.0.0.1:{}", free_port())).unwrap();
    let error = client.instances("users", &VersionQuery::Any).await.unwrap_err();
    assert!(error.is_retryable() && error.to_string().contains("no registry at"), "{error}");
    let error = client.fetch_instances("users", &[]).await.unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }) && error.is_unreachable(), "{error:?}");
    assert!(std::error::Error::source(&error).is_some(), "the cause is kept");

    // A listener that accepts and never answers: a timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_base = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let config = ClientConfig {
        registry_url: silent_base,
        request_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let error = Client::with_config(config).unwrap().nodes(false).await.unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }) && error.is_retryable(), "{error:?}");
    held.abort();

    // Something that is not a registry: unreadable, and not worth retrying.
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_base = format!("http://{}", other.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async { "<html>hello</html>" });
    tokio::spawn(async move { axum::serve(other, app).await.unwrap() });
    let error = Client::new(&other_base).unwrap().nodes(false).await.unwrap_err();
    assert!(matches!(error, ClientError::Unreadable { .. }) && !error.is_retryable(), "{error:?}");

    let server = Server::start(0).await;
    let client = Client::new(&server.base).unwrap();
    let error = client.register(RegistrationSpec::new("no-port")).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Api { status: 400, code, .. } if code == "invalid_input")
            && !error.is_retryable(),
        "{error:?}"
    );
    let error = client.heartbeat("ghost", NodeStatus::Up).await.unwrap_err();
    assert!(error.is_not_found() && error.status() == Some(404), "{error:?}");
    assert_eq!(client.node("ghost").await.unwrap(), None);
}

/// Names with characters that mean something in a URL path stay inside their path segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_percent_encoded() {
    let server = Server::start(0).await;
    let client = Client::new(&format!("{}/", server.base)).unwrap();
    let spec = RegistrationSpec {
        ttl: Some(Duration::from_secs(60)),
        ..RegistrationSpec::new("10.0.0.9:80").service("team/users", Some("1.0.0"))
    }
    .id("host:9000");
    let registration = client.register(spec).await.unwrap();
    assert_eq!(registration.id(), "host:9000");
    let instances = client.fetch_instances("team/users", &[]).await.unwrap();
    assert_eq!(instances.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["host:9000"]);
    assert_eq!(client.node("host:9000").await.unwrap().unwrap().address.to_string(), "10.0.0.9:80");
    client.heartbeat("host:9000", NodeStatus::Up).await.unwrap();
    registration.deregister().await.unwrap();
    assert_eq!(client.node("host:9000").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_cache_follows_the_watch() {
    let server = Server::start(0).await;
    server.add("a", "10.0.0.1:80", "users", "1.2.0").await;
    let client = client(&server.base);
    let first = client.instances("users", &VersionQuery::Any).await.unwrap();
    assert_eq!((first.instances.len(), first.stale), (1, false));

    // A registration, a version filter, an update, a deregistration: each reaches the cache, and
    // `cache_changes` says when.
    let mut changes = client.cache_changes().await.unwrap();
    let before = *changes.borrow_and_update();
    server.add("b", "10.0.0.2:80", "users", "2.0.0").await;
    tokio::time::timeout(Duration::from_secs(10), changes.changed()).await.unwrap().unwrap();
    assert!(*changes.borrow() > before);
    assert_eq!(client.instances("users", &VersionQuery::Any).await.unwrap().instances.len(), 2);
    let v1 = client.instances("users", &VersionQuery::semver("^1").unwrap()).await.unwrap();
    assert_eq!(v1.instances.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a"]);
    let exact = client.instances("users", &VersionQuery::exact("2.0.0").unwrap()).await.unwrap();
    assert_eq!(exact.instances[0].id, "b");
    assert!(client.instances("nobody", &VersionQuery::Any).await.unwrap().instances.is_empty());

    let a = NodeId::new("a").unwrap();
    server.registry.update(&a, muster_core::NodeUpdate::new().status(NodeStatus::Down)).await.unwrap();
    until("a is DOWN in the cache", async || {
        let users = client.instances("users", &VersionQuery::Any).await.unwrap();
        users.instances.iter().any(|i| i.id == "a" && i.status == NodeStatus::Down)
    })
    .await;
    server.registry.deregister(&a, muster_core::DeregisterReason::Graceful).await.unwrap();
    until("a left the cache", async || {
        client.instances("users", &VersionQuery::Any).await.unwrap().instances.len() == 1
    })
    .await;
    // An explicit deregistration does empty a list: that is news, not a failure.
    server
        .registry
        .deregister(&NodeId::new("b").unwrap(), muster_core::DeregisterReason::Graceful)
        .await
        .unwrap();
    until("the list is empty", async || {
        let users = client.instances("users", &VersionQuery::Any).await.unwrap();
        users.instances.is_empty() && !users.stale
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_and_push_empty_protection() {
    let server = Server::start(0).await;
    let port = server.port;
    server.add("a", "10.0.0.1:80", "users", "1.0.0").await;
    server.add("b", "10.0.0.2:80", "orders", "1.0.0").await;
    let config = ClientConfig {
        registry_url: server.base.clone(),
        empty_protection: Duration::from_secs(3),
        ..ClientConfig::default()
    };
    let client = Client::with_config(config).unwrap();
    assert_eq!(client.instances("users", &VersionQuery::Any).await.unwrap().instances.len(), 1);

    // The registry goes away: the last known instances are served, marked stale.
    server.stop().await;
    until("the cache says it is stale", async || {
        client.instances("users", &VersionQuery::Any).await.unwrap().stale
    })
    .await;
    let users = client.instances("users", &VersionQuery::Any).await.unwrap();
    assert_eq!(users.instances[0].id, "a", "stale-if-error keeps the instances");

    // It comes back empty (restarted without a data directory): its resync would empty both
    // services, but the cache keeps them, still stale, until news about them arrives...
    let server = Server::start(port).await;
    until("the watch reconnected", async || {
        client.instances("users", &VersionQuery::Any).await.unwrap().revision == muster_core::Revision(0)
    })
    .await;
    let users = client.instances("users", &VersionQuery::Any).await.unwrap();
    assert_eq!((users.instances.len(), users.stale), (1, true), "push-empty protection");
    server.add("c", "10.0.0.3:80", "users", "1.0.0").await;
    until("news about users replaces the protected list", async || {
        let users = client.instances("users", &VersionQuery::Any).await.unwrap();
        !users.stale && users.instances.iter().map(|i| i.id.as_str()).eq(["c"])
    })
    .await;
    // ...or the protection time passes.
    assert!(client.instances("orders", &VersionQuery::Any).await.unwrap().stale);
    until("the protection of orders ends", async || {
        let orders = client.instances("orders", &VersionQuery::Any).await.unwrap();
        orders.instances.is_empty() && !orders.stale
    })
    .await;
}

/// Accepts connections and answers each with one line; counts them.
async fn live_instance() -> (u16, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(Mutex::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                socket.write_all(b"ok\n").await.ok();
            });
        }
    });
    (port, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_skips_refusing_instances_and_their_circuits_open() {
    let server = Server::start(0).await;
    let (dead1, dead2) = (free_port(), free_port());
    let (live, served) = live_instance().await;
    server.add("dead-1", &format!("127.0.0.1:{dead1}"), "api", "1.0.0").await;
    server.add("dead-2", &format!("127.0.0.1:{dead2}"), "api", "1.0.0").await;
    server.add("live", &format!("127.0.0.1:{live}"), "api", "1.0.0").await;
    let client = client(&server.base);
    let attempts = Arc::new(Mutex::new(Vec::<String>::new()));
    let call = |attempts: Arc<Mutex<Vec<String>>>| {
        move |instance: muster_api::v1::Instance| {
            let attempts = Arc::clone(&attempts);
            async move {
                attempts.lock().unwrap().push(instance.id.clone());
                // A whole exchange: the instance has accepted (and counted) the call when it ends.
                let mut stream =
                    tokio::net::TcpStream::connect((instance.host.as_str(), instance.port)).await?;
                let mut answer = String::new();
                tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await?;
                assert_eq!(answer, "ok\n");
                Ok::<_, std::io::Error>(instance.id)
            }
        }
    };
    // Round-robin starts at each instance in turn ([d1 d2 live], [d2 live d1], [live d1 d2],
    // [d1 d2 live]); every call ends on the live one.
    for _ in 0..4 {
        let answer = client.call_with_failover("api", call(Arc::clone(&attempts))).await.unwrap();
        assert_eq!(answer, "live");
    }
    assert_eq!(*served.lock().unwrap(), 4);
    // Two refusals each (the breaker's threshold): both dead circuits are open.
    assert_eq!(client.circuit_state("api", "dead-1"), CircuitState::Open);
    assert_eq!(client.circuit_state("api", "dead-2"), CircuitState::Open);
    assert_eq!(client.circuit_state("api", "live"), CircuitState::Closed);
    attempts.lock().unwrap().clear();
    for _ in 0..3 {
        client.call_with_failover("api", call(Arc::clone(&attempts))).await.unwrap();
    }
    assert_eq!(*attempts.lock().unwrap(), ["live", "live", "live"], "open circuits are skipped");

    // A non-retryable error is the answer at once.
    let error = client
        .call_with_failover("api", |_| async { Err::<(), _>(std::io::Error::other("bad request")) })
        .await
        .unwrap_err();
    assert!(matches!(error, FailoverError::Failed(_)), "{error}");
    let error = client.call_with_failover("nothing", call(Arc::clone(&attempts))).await.unwrap_err();
    assert!(matches!(error, FailoverError::NoInstances(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_half_opens_after_the_cool_down_and_closes_on_success() {
    let server = Server::start(0).await;
    let port = free_port();
    server.add("flaky", &format!("127.0.0.1:{port}"), "api", "1.0.0").await;
    let config = ClientConfig {
        registry_url: server.base.clone(),
        breaker: BreakerConfig { failures: 1, cool_down: Duration::from_secs(1) },
        ..ClientConfig::default()
    };
    let client = Client::with_config(config).unwrap();
    let connect = |instance: muster_api::v1::Instance| async move {
        tokio::net::TcpStream::connect((instance.host.as_str(), instance.port)).await.map(drop)
    };
    let error = client.call_with_failover("api", connect).await.unwrap_err();
    assert!(matches!(error, FailoverError::Exhausted { attempts: 1, .. }), "{error}");
    assert_eq!(client.circuit_state("api", "flaky"), CircuitState::Open);
    let error = client.call_with_failover("api", connect).await.unwrap_err();
    assert!(matches!(error, FailoverError::AllCircuitsOpen(_)), "{error}");

    // The instance comes up; after the cool-down one trial call goes through and closes it.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(client.circuit_state("api", "flaky"), CircuitState::HalfOpen);
    client.call_with_failover("api", connect).await.unwrap();
    assert_eq!(client.circuit_state("api", "flaky"), CircuitState::Closed);
}

/// A caller that gives up on a call (a timeout drops the future) gives the half-open trial back,
/// so the instance is not stuck `Open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_trial_call_releases_the_circuit() {
    let server = Server::start(0).await;
    let port = free_port();
    server.add("flaky", &format!("127.0.0.1:{port}"), "api", "1.0.0").await;
    let config = ClientConfig {
        registry_url: server.base.clone(),
        breaker: BreakerConfig { failures: 1, cool_down: Duration::from_millis(300) },
        ..ClientConfig::default()
    };
    let client = Client::with_config(config).unwrap();
    let refused = |_| async { Err::<(), _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) };
    client.call_with_failover("api", refused).await.unwrap_err();
    assert_eq!(client.circuit_state("api", "flaky"), CircuitState::Open);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.circuit_state("api", "flaky"), CircuitState::HalfOpen);
    let hangs = |_| std::future::pending::<Result<(), std::io::Error>>();
    let abandoned =
        tokio::time::timeout(Duration::from_millis(50), client.call_with_failover("api", hangs)).await;
    assert!(abandoned.is_err(), "the caller gave up");
    assert_eq!(client.circuit_state("api", "flaky"), CircuitState::HalfOpen, "the trial was given back");
    client.call_with_failover("api", |_| async { Ok::<_, std::io::Error>(()) }).await.unwrap();
    assert_eq!(client.circuit_state("api", "flaky"), CircuitState::Closed);
}

/// An abandoned call no longer counts as outstanding: the least-outstanding selector goes back to
/// the instance it was on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_is_not_outstanding() {
    let server = Server::start(0).await;
    server.add("a", "127.0.0.1:1", "api", "1.0.0").await;
    server.add("b", "127.0.0.1:2", "api", "1.0.0").await;
    let config = ClientConfig { registry_url: server.base.clone(), ..ClientConfig::default() };
    let client = Client::with_selector(config, Box::new(select::LeastOutstanding::default())).unwrap();
    let first = |i: muster_api::v1::Instance| async move { Ok::<_, std::io::Error>(i.id) };
    let chosen = client.call_with_failover("api", first).await.unwrap();
    let hangs = |_| std::future::pending::<Result<String, std::io::Error>>();
    for _ in 0..3 {
        let abandoned =
            tokio::time::timeout(Duration::from_millis(20), client.call_with_failover("api", hangs)).await;
        assert!(abandoned.is_err());
    }
    assert_eq!(client.call_with_failover("api", first).await.unwrap(), chosen, "no call is left counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_sees_the_calls_of_call_with_failover() {
    let server = Server::start(0).await;
    let (a, _) = live_instance().await;
    let (b, _) = live_instance().await;
    server.add("a", &format!("127.0.0.1:{a}"), "api", "1.0.0").await;
    server.add("b", &format!("127.0.0.1:{b}"), "api", "1.0.0").await;
    let config = ClientConfig { registry_url: server.base.clone(), ..ClientConfig::default() };
    let client = Client::with_selector(config, Box::new(select::LeastOutstanding::default())).unwrap();
    // A slow call holds the first instance; the next call goes to the other one.
    let release = Arc::new(tokio::sync::Notify::new());
    let (slow_client, held) = (client.clone(), Arc::clone(&release));
    let slow = tokio::spawn(async move {
        slow_client
            .call_with_failover("api", |i| {
                let held = Arc::clone(&held);
                async move {
                    held.notified().await;
                    Ok::<_, std::io::Error>(i.id)
                }
            })
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quick =
        client.call_with_failover("api", |i| async move { Ok::<_, std::io::Error>(i.id) }).await.unwrap();
    release.notify_one();
    let slow = slow.await.unwrap();
    assert_ne!(quick, slow, "the busy instance was not chosen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_retry_with_jitter_not_in_lockstep() {
    const CLIENTS: usize = 16;
    // A real server behind a switch that makes heartbeats fail with 503, recording when each
    // node's heartbeats arrive.
    let registry = MemoryRegistry::new();
    let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
    let failing = Arc::new(AtomicBool::new(false));
    let arrivals: Arc<Mutex<Vec<(String, tokio::time::Instant)>>> = Arc::default();
    let (fail, seen) = (Arc::clone(&failing), Arc::clone(&arrivals));
    let app = muster_server::router(state).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let (fail, seen) = (Arc::clone(&fail), Arc::clone(&seen));
            async move {
                let path = request.uri().path().to_owned();
                if let Some(id) = path.strip_prefix("/v1/nodes/").and_then(|p| p.strip_suffix("/heartbeat"))
                    && fail.load(Ordering::SeqCst)
                {
                    seen.lock().unwrap().push((id.to_owned(), tokio::time::Instant::now()));
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                next.run(request).await
            }
        },
    ));
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = client(&base);
    let spec = RegistrationSpec {
        ttl: Some(Duration::from_secs(60)),
        heartbeat_interval: Duration::from_millis(100),
        retry_delay: Duration::from_millis(200),
        max_retries: 1,
        ..RegistrationSpec::new("10.0.0.7:8080").service("users", None)
    };
    let mut handles = Vec::new();
    for n in 0..CLIENTS {
        handles.push(client.register(spec.clone().id(format!("n{n}"))).await.unwrap());
    }
    failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(handles);

    // The pause between a node's first and second failed heartbeat is at the ceiling (200 ms: the
    // heartbeat interval is shorter than the retry delay), spread over 100–200 ms by the jitter:
    // the clients' pauses spread out instead of all being 200 ms. Sixteen of them: a spread under
    // 30 ms by chance alone is then about one in six million (eight: one in eight hundred).
    let arrivals = arrivals.lock().unwrap().clone();
    let mut pauses = Vec::new();
    for n in 0..CLIENTS {
        let times: Vec<_> =
            arrivals.iter().filter(|(id, _)| *id == format!("n{n}")).map(|(_, t)| *t).collect();
        assert!(times.len() >= 3, "n{n} kept retrying: {} attempts", times.len());
        let pause = (times[1] - times[0]).as_secs_f64() * 1000.0;
        // A sleep never ends early; how late it ends is the machine's load, not asserted.
        assert!(pause >= 95.0, "pause {pause} ms is at least 200 ms - 50%");
        pauses.push(pause);
    }
    let spread =
        pauses.iter().copied().fold(f64::MIN, f64::max) - pauses.iter().copied().fold(f64::MAX, f64::min);
    assert!(spread > 30.0, "retry pauses are jittered, not in lockstep: {pauses:?}");
}

/// Deregistration wins against a heartbeat already in flight: the server holds a heartbeat's
/// answer until the `DELETE` has been processed (or 1 s passed); a client that re-registered on
/// that heartbeat's 404 would bring the node back for a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistration_wins_against_a_heartbeat_in_flight() {
    use axum::response::IntoResponse;
    let registry = MemoryRegistry::new();
    let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
    let held = Arc::new(tokio::sync::Notify::new());
    let deleted = Arc::new(tokio::sync::Notify::new());
    let hold = Arc::new(AtomicBool::new(false));
    let (held_tx, deleted_rx, hold_flag) = (Arc::clone(&held), Arc::clone(&deleted), Arc::clone(&hold));
    let app = muster_server::router(state).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let (held, deleted, hold) =
                (Arc::clone(&held_tx), Arc::clone(&deleted_rx), Arc::clone(&hold_flag));
            async move {
                let heartbeat = request.uri().path().ends_with("/heartbeat");
                let delete = request.method() == axum::http::Method::DELETE;
                if heartbeat && hold.swap(false, Ordering::SeqCst) {
                    held.notify_one();
                    let _ = tokio::time::timeout(Duration::from_secs(1), deleted.notified()).await;
                }
                let response = next.run(request).await;
                if delete {
                    deleted.notify_one();
                }
                response.into_response()
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = client(&base);
    let spec = RegistrationSpec { ttl: Some(Duration::from_secs(60)), ..spec() }.id("racer");
    let registration = client.register(spec).await.unwrap();
    hold.store(true, Ordering::SeqCst);
    held.notified().await;
    // A heartbeat is on its way; deregister now.
    registration.deregister().await.unwrap();
    let id = NodeId::new("racer").unwrap();
    assert!(registry.get(&id).await.unwrap().is_none(), "deregistered");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(registry.get(&id).await.unwrap().is_none(), "and not brought back by the heartbeat in flight");
}
