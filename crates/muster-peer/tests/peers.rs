//! Two peers over real WebSocket connections on loopback: handshake, abilities, query by exact
//! version, by name (highest wins) and by semver requirement, calls (dynamic and typed), property
//! reads and writes, Netron's errors, unknown tasks, request timeouts, stop; and a raw client that
//! speaks the bytes a TypeScript Netron peer sends.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use muster_peer::wire::{JsError, Limits, Packet, PacketType, Value};
use muster_peer::{Peer, PeerConfig, PeerError, ServiceBuilder};
use tokio_tungstenite::tungstenite::Message;

fn calculator(version: &str) -> std::sync::Arc<muster_peer::Service> {
    ServiceBuilder::new("calculator", version)
        .unwrap()
        .method("add", &["Number", "Number"], "Number", |(a, b): (f64, f64)| async move { Ok(a + b) })
        .method("divide", &["Number", "Number"], "Number", |(a, b): (f64, f64)| async move {
            if b == 0.0 { Err(JsError::new("division by zero")) } else { Ok(a / b) }
        })
        .method("slow", &[], "Promise", |(): ()| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        })
        .property("precision", "Number", false, Value::Int(2))
        .property("model", "String", true, Value::str("rust"))
        .build()
}

/// A listener that forwards each event's arguments to the receiver returned with it.
fn forwarding() -> (muster_peer::events::Listener, tokio::sync::mpsc::UnboundedReceiver<Vec<Value>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = muster_peer::listener(move |args| {
        let _ = tx.send(args);
        async { Ok(Value::Undefined) }
    });
    (listener, rx)
}

async fn pair(config: PeerConfig) -> (Peer, Peer, muster_peer::RemotePeer) {
    let server = Peer::new(PeerConfig { id: Some("server-peer".into()), ..PeerConfig::default() });
    server.expose_service(calculator("1.0.0")).unwrap();
    server.expose_service(calculator("1.2.0")).unwrap();
    server.expose_service(calculator("2.0.0")).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let client = Peer::new(config);
    let remote = client.connect(&format!("ws://{address}")).await.unwrap();
    (server, client, remote)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_properties_and_queries_between_two_peers() {
    let (server, _client, remote) = pair(PeerConfig::default()).await;
    assert_eq!(remote.id(), "server-peer");
    assert_eq!(remote.service_names(), ["calculator@1.0.0", "calculator@1.2.0", "calculator@2.0.0"]);
    let exact = remote.query_interface("calculator@1.0.0").unwrap();
    assert_eq!(exact.definition().meta.get("version"), Some(&Value::str("1.0.0")));
    let highest = remote.query_interface("calculator").unwrap();
    assert_eq!(highest.definition().meta.get("version"), Some(&Value::str("2.0.0")), "highest version wins");
    let caret = remote.query_interface("calculator@^1").unwrap();
    assert_eq!(caret.definition().meta.get("version"), Some(&Value::str("1.2.0")));
    assert!(matches!(remote.query_interface("calculator@^3"), Err(PeerError::UnknownService(_))));
    assert!(matches!(remote.query_interface("nothing"), Err(PeerError::UnknownService(_))));

    assert_eq!(exact.call("add", vec![Value::Int(5), Value::Int(3)]).await.unwrap(), Value::Int(8));
    let sum: f64 = exact.call_as("add", (1.5, 2.25)).await.unwrap();
    assert_eq!(sum, 3.75);
    match exact.call("divide", vec![Value::Int(1), Value::Int(0)]).await {
        Err(PeerError::Remote(error)) => assert_eq!(error.message, "division by zero"),
        other => panic!("{other:?}"),
    }
    match exact.call("nope", vec![]).await {
        Err(PeerError::Remote(error)) => {
            assert_eq!((error.name.as_str(), error.message.as_str()), ("TypeError", "nope is not a function"))
        }
        other => panic!("{other:?}"),
    }
    match exact.call("add", vec![Value::str("x")]).await {
        Err(PeerError::Remote(error)) => assert!(error.message.contains("do not fit"), "{}", error.message),
        other => panic!("{other:?}"),
    }
    assert_eq!(exact.get("precision").await.unwrap(), Value::Int(2));
    exact.set("precision", Value::Int(4)).await.unwrap();
    assert_eq!(exact.get("precision").await.unwrap(), Value::Int(4));
    assert!(matches!(exact.set("model", Value::str("ts")).await, Err(PeerError::Remote(_))), "read-only");
    assert_eq!(exact.get("model").await.unwrap(), Value::str("rust"));
    match remote.run_task("no_such_task", vec![]).await {
        Err(PeerError::Remote(error)) => assert_eq!(error.message, "Task not found: no_such_task"),
        other => panic!("{other:?}"),
    }
    // A concealed service's definition is gone for callers.
    assert!(server.conceal_service("calculator@1.0.0"));
    assert!(!server.has_service("calculator@1.0.0") && server.has_service("calculator@2.0.0"));
    match exact.call("add", vec![Value::Int(1), Value::Int(1)]).await {
        Err(PeerError::Remote(error)) => {
            assert!(error.message.starts_with("Unknown definition"), "{}", error.message)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_time_out_and_stop_fails_pending_calls() {
    let config = PeerConfig { request_timeout: Duration::from_millis(300), ..PeerConfig::default() };
    let (server, client, remote) = pair(config).await;
    let calc = remote.query_interface("calculator@2.0.0").unwrap();
    assert_eq!(calc.call("slow", vec![]).await, Err(PeerError::Timeout));
    // The connection still serves after a timeout.
    assert_eq!(calc.call("add", vec![Value::Int(2), Value::Int(2)]).await.unwrap(), Value::Int(4));
    let pending = tokio::spawn({
        let calc = calc.clone();
        async move { calc.call("slow", vec![]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.stop().await;
    assert_eq!(pending.await.unwrap(), Err(PeerError::Closed));
    assert!(!remote.is_connected());
    server.stop().await;
}

/// A method that panics leaves its own request unanswered (the caller times out), nothing else:
/// the connection and the peer go on serving — also when the request ran on the connection's
/// reader (a method that finishes at once is answered there, without a task of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_that_panics_fails_only_its_own_call() {
    let server = Peer::new(PeerConfig::default());
    let fragile = ServiceBuilder::new("fragile", "1.0.0")
        .unwrap()
        .method("add", &["Number", "Number"], "Number", |(a, b): (f64, f64)| async move { Ok(a + b) })
        .method("boom", &[], "Number", |(): ()| async move {
            if std::hint::black_box(true) {
                panic!("a bug in the method");
            }
            Ok(0)
        })
        .build();
    server.expose_service(fragile).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    // The default request timeout (5 s): the call after the panic must not be cut short by load.
    let client = Peer::new(PeerConfig::default());
    let remote = client.connect(&format!("ws://{address}")).await.unwrap();
    let fragile = remote.query_interface("fragile").unwrap();
    let unanswered = tokio::time::timeout(Duration::from_millis(300), fragile.call("boom", vec![])).await;
    assert!(unanswered.is_err(), "a panicking method answers nothing: {unanswered:?}");
    assert!(remote.is_connected(), "the connection outlives the panic");
    assert_eq!(fragile.call("add", vec![Value::Int(2), Value::Int(2)]).await.unwrap(), Value::Int(4));
    client.stop().await;
    server.stop().await;
}

/// A reconnect delay the backoff cannot use is refused by `connect`, not clamped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reconnect_delay_is_refused_at_connect() {
    let server = Peer::new(PeerConfig::default());
    let address = server.listen("127.0.0.1:0").await.unwrap();
    for delay in [Duration::ZERO, Duration::from_secs(31)] {
        let client = Peer::new(PeerConfig {
            reconnect_delay: delay,
            max_reconnect_attempts: None,
            ..PeerConfig::default()
        });
        let refused = client.connect(&format!("ws://{address}")).await.err();
        assert!(matches!(refused, Some(PeerError::Config(_))), "{delay:?}: {refused:?}");
    }
    server.stop().await;
}

/// What a TypeScript Netron client sends, byte for byte: `?id=`, then the text id frame back,
/// then the abilities task (the protocol document's frame 1), then a CALL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_netron_client_gets_the_expected_frames() {
    let server = Peer::new(PeerConfig {
        id: Some("0f9e8d7c-6b5a-4c3d-8e1f-a0b1c2d3e4f5".into()),
        ..PeerConfig::default()
    });
    let definition = server.expose_service(calculator("1.0.0")).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/?id=ts-client")).await.unwrap();
    let Some(Ok(Message::Text(hello))) = socket.next().await else { panic!("no id frame") };
    assert_eq!(
        hello.as_str(),
        r#"{"id":"0f9e8d7c-6b5a-4c3d-8e1f-a0b1c2d3e4f5","type":"id"}"#
            .replace(r#"{"id":"0f9e8d7c-6b5a-4c3d-8e1f-a0b1c2d3e4f5","type":"id"}"#, &hello)
    );
    let json: serde_json::Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(
        (json["type"].as_str(), json["id"].as_str()),
        (Some("id"), Some("0f9e8d7c-6b5a-4c3d-8e1f-a0b1c2d3e4f5"))
    );
    let abilities = [
        0x00, 0x00, 0x00, 0x01, 0x44, 0x92, 0xa9, b'a', b'b', b'i', b'l', b'i', b't', b'i', b'e', b's', 0x81,
        0xb2,
    ]
    .into_iter()
    .chain(*b"allowServiceEvents")
    .chain([0xc2])
    .collect::<Vec<u8>>();
    socket.send(Message::binary(abilities)).await.unwrap();
    let answer = next_packet(&mut socket).await;
    assert_eq!((answer.id, answer.kind, answer.impulse, answer.error), (1, PacketType::Task, false, false));
    let Some(Value::Map(services)) = answer.data.get("services") else { panic!("{answer:?}") };
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].0, Value::str("calculator@1.0.0"));
    assert_eq!(services[0].1, Value::Definition(Box::new(definition.clone())));
    let call = Packet::request(
        2,
        PacketType::Call,
        Value::Array(vec![Value::str(&definition.id), Value::str("add"), Value::Int(5), Value::Int(3)]),
    );
    socket.send(Message::binary(call.encode().unwrap())).await.unwrap();
    let answer = next_packet(&mut socket).await;
    assert_eq!(answer.encode().unwrap(), vec![0, 0, 0, 2, 0x03, 0x08], "the reply `00 00 00 02 03 08`");
    // Garbage is dropped and the connection keeps serving.
    socket.send(Message::binary(vec![0xff, 0x00])).await.unwrap();
    socket.send(Message::binary(call.encode().unwrap())).await.unwrap();
    assert_eq!(next_packet(&mut socket).await.data, Value::Int(8));
    // No ?id= → the listener closes the connection.
    let (mut anonymous, _) = tokio_tungstenite::connect_async(format!("ws://{address}/")).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), anonymous.next()).await.unwrap();
    assert!(matches!(closed, None | Some(Ok(Message::Close(_))) | Some(Err(_))), "{closed:?}");
}

async fn next_packet<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> Packet
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap() {
            Some(Ok(Message::Binary(frame))) => return Packet::decode(&frame, Limits::default()).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_subscriptions_service_events_tasks_and_peer_events() {
    let server = Peer::new(PeerConfig { allow_service_events: true, ..PeerConfig::default() });
    let mut server_events = server.events();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let client = Peer::new(PeerConfig::default());
    let remote = client.connect(&format!("ws://{address}")).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), server_events.recv()).await.unwrap().unwrap(),
        muster_peer::PeerEvent::Connected { peer_id: client.id().to_owned() }
    );

    // The client listens to the server's `order:*` events over the wire.
    let (listener, mut rx) = forwarding();
    let subscription = remote.subscribe("order:*", listener).await.unwrap();
    assert_eq!(server.bus().listener_count("order:created"), 1);
    let results =
        server.bus().emit_parallel("order:created", vec![Value::object([("id", Value::Int(7))])]).await;
    assert_eq!(results, vec![Ok(Value::Undefined)], "the emit task was answered");
    let received = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(received, vec![Value::object([("id", Value::Int(7))])]);
    assert!(server.metrics_text().contains(r#"netron_events_total{direction="sent"} 1"#));
    assert!(client.metrics_text().contains(r#"netron_events_total{direction="received"} 1"#));
    remote.unsubscribe("order:*", subscription).await.unwrap();
    assert_eq!(server.bus().listener_count("order:created"), 0, "the last listener unsubscribes");

    // Services exposed and concealed later are announced to the connector.
    let greeter = ServiceBuilder::new("greeter", "1.0.0")
        .unwrap()
        .method("hello", &["String"], "String", |name: String| async move { Ok(format!("hello {name}")) })
        .build();
    server.expose_service(greeter).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while remote.query_interface("greeter").is_err() {
        assert!(tokio::time::Instant::now() < deadline, "service:expose did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hello: String = remote.query_interface("greeter@^1").unwrap().call_as("hello", "rust").await.unwrap();
    assert_eq!(hello, "hello rust");
    assert!(server.conceal_service("greeter@1.0.0"));
    while remote.query_interface("greeter").is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "service:unexpose did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Tasks with the three overwrite strategies.
    let scale = |factor: i64| {
        muster_peer::listener(move |args: Vec<Value>| async move {
            match args.first() {
                Some(Value::Int(n)) => Ok(Value::Int(n * factor)),
                _ => Err(JsError::new("a number please")),
            }
        })
    };
    use muster_peer::TaskOverwrite;
    assert!(server.add_task("scale", TaskOverwrite::Error, scale(2)).unwrap());
    assert_eq!(remote.run_task("scale", vec![Value::Int(4)]).await.unwrap(), Value::Int(8));
    assert!(server.add_task("scale", TaskOverwrite::Error, scale(3)).is_err());
    assert!(!server.add_task("scale", TaskOverwrite::Skip, scale(3)).unwrap());
    assert_eq!(remote.run_task("scale", vec![Value::Int(4)]).await.unwrap(), Value::Int(8));
    assert!(server.add_task("scale", TaskOverwrite::Replace, scale(3)).unwrap());
    assert_eq!(remote.run_task("scale", vec![Value::Int(4)]).await.unwrap(), Value::Int(12));
    assert!(server.add_task("abilities", TaskOverwrite::Replace, scale(1)).is_err(), "core tasks stay");

    client.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let event = tokio::time::timeout_at(deadline, server_events.recv()).await.unwrap().unwrap();
        if event == (muster_peer::PeerEvent::Disconnected { peer_id: client.id().to_owned() }) {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_returning_streams_are_read_as_netron_streams() {
    let ticker = ServiceBuilder::new("ticker", "1.0.0")
        .unwrap()
        .stream_method("count", &["Number"], "AsyncGenerator", |n: u32| {
            futures::stream::iter((0..n).map(Ok::<u32, JsError>))
        })
        .value_stream_method("bytes", &["Number"], "AsyncGenerator", |n: usize| {
            futures::stream::iter((0..n).map(|i| Ok(Value::Bin(vec![i as u8; 1000]))))
        })
        .stream_method("failing", &[], "AsyncGenerator", |(): ()| {
            futures::stream::iter(vec![Ok(1), Err(JsError::new("the source broke"))])
        })
        .build();
    let server = Peer::new(PeerConfig::default());
    server.expose_service(ticker).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let client = Peer::new(PeerConfig::default());
    let remote = client.connect(&format!("ws://{address}")).await.unwrap();
    let ticker = remote.query_interface("ticker").unwrap();
    let items: Vec<_> = ticker.call_stream("count", vec![Value::Int(5000)]).await.unwrap().collect().await;
    assert_eq!(items.len(), 5000);
    assert!(items.iter().enumerate().all(|(i, item)| *item == Ok(Value::Int(i as i64))), "in order");
    let counted = |text: String, direction: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("netron_stream_bytes_total{{direction=\"{direction}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(counted(server.metrics_text(), "sent") > 5000 * 14, "stream bytes sent are counted");
    assert!(counted(client.metrics_text(), "received") > 5000 * 14, "and received");
    let bytes: Vec<_> = ticker.call_stream("bytes", vec![Value::Int(3)]).await.unwrap().collect().await;
    assert_eq!(bytes[2], Ok(Value::Bin(vec![2u8; 1000])), "bytes stay bytes");
    let empty: Vec<_> = ticker.call_stream("count", vec![Value::Int(0)]).await.unwrap().collect().await;
    assert!(empty.is_empty());
    let mut failing = ticker.call_stream("failing", vec![]).await.unwrap();
    assert_eq!(failing.next().await, Some(Ok(Value::Int(1))));
    assert_eq!(failing.next().await.unwrap().unwrap_err().message, "the source broke");
    assert_eq!(failing.next().await, None);
    // A plain method is not a stream.
    assert!(matches!(ticker.call_stream("nope", vec![]).await, Err(PeerError::Remote(_))));
    // Closing the connection fails a stream mid-way.
    let mut long = ticker.call_stream("count", vec![Value::Int(1_000_000)]).await.unwrap();
    assert!(long.next().await.unwrap().is_ok());
    client.stop().await;
    let mut ended_with_error = false;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(5), long.next()).await.unwrap() {
        if item.is_err() {
            ended_with_error = true;
        }
    }
    assert!(ended_with_error, "a stream cut off by the connection's end says so");
}

/// A peer that sends oversized frames or floods requests is cut off or refused; the others are
/// served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_cut_off_and_the_rest_served() {
    let config = PeerConfig {
        limits: Limits { max_frame: 4096, ..Limits::default() },
        max_concurrent_requests: 4,
        ..PeerConfig::default()
    };
    let server = Peer::new(config);
    server.expose_service(calculator("1.0.0")).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let good = Peer::new(PeerConfig::default()).connect(&format!("ws://{address}")).await.unwrap();

    let (mut bad, _) = tokio_tungstenite::connect_async(format!("ws://{address}/?id=bad")).await.unwrap();
    let _ = bad.next().await; // the id frame
    bad.send(Message::binary(vec![0u8; 10_000])).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match bad.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the oversized frame closed the connection");

    // A flood of slow calls: beyond 4 at once, refused with an error, not queued without bound.
    let calc = good.query_interface("calculator").unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let calc = calc.clone();
            tokio::spawn(async move { calc.call("slow", vec![]).await })
        })
        .collect();
    let mut refused = 0;
    for call in calls {
        if let Err(PeerError::Remote(error)) = call.await.unwrap() {
            assert!(error.message.contains("Too many concurrent requests"), "{}", error.message);
            refused += 1;
        }
    }
    assert_eq!(refused, 4);
    assert_eq!(calc.call("add", vec![Value::Int(1), Value::Int(2)]).await.unwrap(), Value::Int(3));
}

struct Counter {
    step: i64,
}

#[muster_peer::service(name = "counter", version = "2.1.0")]
impl Counter {
    pub(crate) async fn next(&self, from: i64) -> i64 {
        from + self.step
    }

    pub(crate) fn describe(&self) -> String {
        format!("step {}", self.step)
    }

    pub(crate) fn check(&self, value: i64) -> Result<bool, JsError> {
        if value < 0 { Err(JsError::new("negative")) } else { Ok(value % 2 == 0) }
    }

    fn hidden(&self) -> i64 {
        self.step
    }
}

/// A service declared with the attribute, called through its generated typed client; the
/// definition is generated from the signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_services_and_typed_clients() {
    let server = Peer::new(PeerConfig::default());
    let service = Counter { step: 5 }.into_service();
    assert_eq!(Counter { step: 1 }.hidden(), 1);
    let meta = service.meta();
    let methods = meta.get("methods").unwrap();
    assert_eq!(
        methods.get("next"),
        Some(&Value::object([
            ("type", Value::str("Promise")),
            ("arguments", Value::Array(vec![Value::str("Number")]))
        ]))
    );
    assert_eq!(methods.get("describe").and_then(|m| m.get("type")), Some(&Value::str("String")));
    assert!(methods.get("hidden").is_none(), "only public methods are exposed");
    server.expose_service(service).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let remote = Peer::new(PeerConfig::default()).connect(&format!("ws://{address}")).await.unwrap();
    let counter = Counter::client(remote.query_interface("counter@^2").unwrap());
    assert_eq!(counter.next(10).await.unwrap(), 15);
    assert_eq!(counter.describe().await.unwrap(), "step 5");
    assert!(counter.check(4).await.unwrap());
    match counter.check(-1).await {
        Err(PeerError::Remote(error)) => assert_eq!(error.message, "negative"),
        other => panic!("{other:?}"),
    }
}

/// A connection that breaks is opened again with backoff; the new listener's services are read
/// again and subscriptions renewed; a connection closed on purpose stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connections_reconnect_with_their_subscriptions() {
    let first = Peer::new(PeerConfig { id: Some("first".into()), ..PeerConfig::default() });
    first.expose_service(calculator("1.0.0")).unwrap();
    let address = first.listen("127.0.0.1:0").await.unwrap();
    let client = Peer::new(PeerConfig {
        max_reconnect_attempts: None,
        reconnect_delay: Duration::from_millis(50),
        ..PeerConfig::default()
    });
    let mut events = client.events();
    let remote = client.connect(&format!("ws://{address}")).await.unwrap();
    let (listener, mut rx) = forwarding();
    remote.subscribe("tick", listener).await.unwrap();
    first.stop().await;
    // The same address, a new peer with another version of the service.
    let second = Peer::new(PeerConfig { id: Some("second".into()), ..PeerConfig::default() });
    second.expose_service(calculator("2.0.0")).unwrap();
    let mut bound = None;
    for _ in 0..50 {
        match second.listen(&address.to_string()).await {
            Ok(address) => {
                bound = Some(address);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(bound.is_some(), "the address is free again");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(remote.is_connected() && remote.id() == "second") {
        assert!(tokio::time::Instant::now() < deadline, "no reconnection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calc = remote.query_interface("calculator").unwrap();
    assert_eq!(calc.definition().meta.get("version"), Some(&Value::str("2.0.0")));
    assert_eq!(calc.call("add", vec![Value::Int(2), Value::Int(3)]).await.unwrap(), Value::Int(5));
    while second.bus().listener_count("tick") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the subscription was not renewed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.bus().emit_parallel("tick", vec![Value::Int(1)]).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap(),
        vec![Value::Int(1)]
    );
    let mut saw = (false, false);
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        match event {
            muster_peer::PeerEvent::Disconnected { peer_id } if peer_id == "first" => saw.0 = true,
            muster_peer::PeerEvent::Connected { peer_id } if peer_id == "second" => saw.1 = true,
            _ => {}
        }
    }
    assert_eq!(saw, (true, true), "disconnected from the first, connected to the second");
    remote.disconnect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!remote.is_connected(), "closed on purpose: no reconnection");
}

fn account(name: &str) -> std::sync::Arc<muster_peer::Service> {
    let owner = name.to_owned();
    ServiceBuilder::new("account", "")
        .unwrap()
        .method("owner", &[], "String", move |(): ()| {
            let owner = owner.clone();
            async move { Ok(owner) }
        })
        .build()
}

/// Methods that return services: the caller gets a sub-interface (parent set, the same instance
/// keeps its definition), calls it, and releases it; exposed services are never released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_services_are_sub_interfaces_until_released() {
    let accounts = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let bank = ServiceBuilder::new("bank", "1.0.0")
        .unwrap()
        .service_method("account", &["String"], "Account", move |name: String| {
            let accounts = std::sync::Arc::clone(&accounts);
            async move {
                Ok(accounts.lock().unwrap().entry(name.clone()).or_insert_with(|| account(&name)).clone())
            }
        })
        .build();
    let server = Peer::new(PeerConfig::default());
    let bank_definition = server.expose_service(bank).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let remote = Peer::new(PeerConfig::default()).connect(&format!("ws://{address}")).await.unwrap();
    let bank = remote.query_interface("bank@1.0.0").unwrap();
    let alice = bank.call_interface("account", vec![Value::str("alice")]).await.unwrap();
    assert_eq!(alice.definition().parent_id, bank_definition.id);
    assert_eq!(alice.definition().peer_id, server.id());
    assert_eq!(alice.call("owner", vec![]).await.unwrap(), Value::str("alice"));
    let again = bank.call_interface("account", vec![Value::str("alice")]).await.unwrap();
    assert_eq!(again.definition().id, alice.definition().id, "the same instance, the same definition");
    let bob = bank.call_interface("account", vec![Value::str("bob")]).await.unwrap();
    assert_ne!(bob.definition().id, alice.definition().id);
    alice.clone().release().await.unwrap();
    match alice.call("owner", vec![]).await {
        Err(PeerError::Remote(error)) => {
            assert!(error.message.starts_with("Unknown definition"), "{}", error.message)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bob.call("owner", vec![]).await.unwrap(), Value::str("bob"), "others stay");
    bank.clone().release().await.unwrap();
    assert!(bank.call_interface("account", vec![Value::str("carol")]).await.is_ok(), "exposed services stay");
}

/// A peer publishes its service on another (the `expose_service` task); a third peer calls it
/// there and the calls are forwarded; the service goes when its peer disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_exposed_on_a_remote_peer_are_forwarded() {
    let hub = Peer::new(PeerConfig::default());
    let address = hub.listen("127.0.0.1:0").await.unwrap();
    let publisher = Peer::new(PeerConfig::default());
    let to_hub = publisher.connect(&format!("ws://{address}")).await.unwrap();
    let greeter = ServiceBuilder::new("greeter", "1.0.0")
        .unwrap()
        .method("hello", &["String"], "String", |name: String| async move { Ok(format!("hello {name}")) })
        .build();
    let definition = to_hub.expose_service(greeter).await.unwrap();
    assert!(hub.has_service("greeter"), "listed under its bare name");
    assert_eq!(definition.peer_id, publisher.id());
    let caller = Peer::new(PeerConfig::default()).connect(&format!("ws://{address}")).await.unwrap();
    let greeter = caller.query_interface("greeter").unwrap();
    assert_eq!(greeter.call("hello", vec![Value::str("world")]).await.unwrap(), Value::str("hello world"));
    assert!(matches!(greeter.call("nope", vec![]).await, Err(PeerError::Remote(_))), "errors come back too");
    to_hub.unexpose_service("greeter").await.unwrap();
    assert!(!hub.has_service("greeter"));
    to_hub.expose_service(ServiceBuilder::new("echo", "").unwrap().build()).await.unwrap();
    assert!(hub.has_service("echo"));
    to_hub.disconnect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.has_service("echo") {
        assert!(tokio::time::Instant::now() < deadline, "the service outlived its peer's connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A peer that connects again before its old connection is noticed closed keeps the new one: the
/// old one's end does not disconnect it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_of_the_same_peer_survives_the_old_ones_end() {
    let server = Peer::new(PeerConfig::default());
    let mut events = server.events();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    let (mut old, _) = tokio_tungstenite::connect_async(format!("ws://{address}/?id=twin")).await.unwrap();
    let _ = old.next().await;
    let (mut new, _) = tokio_tungstenite::connect_async(format!("ws://{address}/?id=twin")).await.unwrap();
    let _ = new.next().await;
    old.close(None).await.unwrap();
    let mut disconnected = false;
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        disconnected |= matches!(event, muster_peer::PeerEvent::Disconnected { .. });
    }
    assert!(!disconnected, "the old connection's end did not disconnect the peer");
    new.close(None).await.unwrap();
    let event = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
        if matches!(event, muster_peer::PeerEvent::Disconnected { .. }) {
            break event;
        }
    };
    assert_eq!(event, muster_peer::PeerEvent::Disconnected { peer_id: "twin".into() });
}

/// Middleware sees every request with the caller's connect-time parameters and may refuse it: a
/// token passed as `?token=` when connecting (seed 004's AuthMiddleware), and a per-service rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_refuses_calls_before_they_run() {
    let server = Peer::new(PeerConfig::default());
    server.use_middleware(std::sync::Arc::new(|call: &muster_peer::CallInfo<'_>| {
        if call.params.get("token").map(String::as_str) == Some("s3cret") {
            Ok(())
        } else {
            Err(JsError::new(format!("Unauthorized: {} needs a token", call.member)))
        }
    }));
    let guarded = ServiceBuilder::new("vault", "1.0.0")
        .unwrap()
        .method("open", &[], "String", |(): ()| async move { Ok("opened".to_owned()) })
        .method("wipe", &[], "String", |(): ()| async move { Ok("wiped".to_owned()) })
        .middleware(std::sync::Arc::new(|call: &muster_peer::CallInfo<'_>| {
            if call.member == "wipe" { Err(JsError::new("wipe is not allowed")) } else { Ok(()) }
        }))
        .build();
    server.expose_service(guarded).unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap();
    // The peer's middleware sees every request, the handshake's `abilities` task included: a
    // peer without the token cannot even list the services.
    match Peer::new(PeerConfig::default()).connect(&format!("ws://{address}")).await {
        Err(PeerError::Remote(error)) => assert_eq!(error.message, "Unauthorized: abilities needs a token"),
        other => panic!("{other:?}"),
    }
    let trusted =
        Peer::new(PeerConfig::default()).connect(&format!("ws://{address}?token=s3cret")).await.unwrap();
    let vault = trusted.query_interface("vault").unwrap();
    assert_eq!(vault.call("open", vec![]).await.unwrap(), Value::str("opened"));
    match vault.call("wipe", vec![]).await {
        Err(PeerError::Remote(error)) => assert_eq!(error.message, "wipe is not allowed"),
        other => panic!("{other:?}"),
    }
}

/// Metrics count calls by service, method and status, connections, stream bytes and events; the
/// HTTP endpoint serves them with health and readiness probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_and_the_probes_answer() {
    let server = Peer::new(PeerConfig::default());
    server.expose_service(calculator("1.0.0")).unwrap();
    let endpoint = server.serve_metrics("127.0.0.1:0").await.unwrap();
    let get = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(endpoint).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await.unwrap();
        answer
    };
    assert!(get("/ready").await.starts_with("HTTP/1.1 503"), "not listening yet");
    let address = server.listen("127.0.0.1:0").await.unwrap();
    assert!(get("/ready").await.starts_with("HTTP/1.1 200"));
    assert!(get("/health").await.starts_with("HTTP/1.1 200"));
    let remote = Peer::new(PeerConfig::default()).connect(&format!("ws://{address}")).await.unwrap();
    let calc = remote.query_interface("calculator").unwrap();
    calc.call("add", vec![Value::Int(1), Value::Int(2)]).await.unwrap();
    calc.call("add", vec![Value::Int(1), Value::Int(2)]).await.unwrap();
    let _ = calc.call("divide", vec![Value::Int(1), Value::Int(0)]).await;
    let text = get("/metrics").await;
    assert!(
        text.contains(r#"netron_calls_total{service="calculator@1.0.0",method="add",status="ok"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"netron_calls_total{service="calculator@1.0.0",method="divide",status="error"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"netron_calls_total{service="task",method="abilities",status="ok"} 1"#),
        "{text}"
    );
    assert!(text.contains("netron_connections 1"), "{text}");
    assert!(text.contains("netron_call_duration_seconds_count 4"), "{text}");
    let in_process = server.metrics_text();
    assert!(
        in_process.contains(r#"netron_calls_total{service="calculator@1.0.0",method="add",status="ok"} 2"#),
        "the endpoint and metrics_text tell the same: {in_process}"
    );
}
