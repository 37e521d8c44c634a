//! Hostile and careless clients: slow or idle connections, huge announced bodies, floods of
//! connections, and every error answered as the documented JSON body.

use std::time::Duration;

use muster_server::ServerConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{TestServer, client, send};

fn strict() -> ServerConfig {
    ServerConfig {
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        body_limit: 4096,
        ..ServerConfig::default()
    }
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection (or `wait` passes); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    });
    read.await.ok().map(|()| String::from_utf8_lossy(&answer).into_owned())
}

/// The JSON body of a raw HTTP answer.
fn body_of(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let server = TestServer::memory_with(strict()).await;
    // Headers that never finish.
    let mut slow = connect(&server).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(read_until_closed(&mut slow, Duration::from_secs(10)).await.is_some(), "a slow head is cut off");
    // A connection that never sends anything.
    let mut silent = connect(&server).await;
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(10)).await.is_some(),
        "a silent connection is closed"
    );
    // Idle after a response on a keep-alive connection.
    let mut idle = connect(&server).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer =
        read_until_closed(&mut idle, Duration::from_secs(10)).await.expect("the idle connection closes");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A body that trickles in answers 408.
    let mut trickle = connect(&server).await;
    trickle
        .write_all(b"PUT /v1/nodes/n1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"addr")
        .await
        .unwrap();
    let answer = read_until_closed(&mut trickle, Duration::from_secs(10)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(body_of(&answer)["error"]["code"], "request_timeout");
    // A huge announced body answers 413 before any of it is sent.
    let mut huge = connect(&server).await;
    huge.write_all(b"PUT /v1/nodes/n1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), huge.read(&mut buffer))
        .await
        .expect("413 at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(body_of(&answer)["error"]["code"], "payload_too_large");
    let (_, nodes) = send(&server, Method::GET, "/v1/nodes", Value::Null).await;
    assert_eq!(nodes["nodes"], json!([]), "nothing was registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_connections_do_not_block_others() {
    let server = TestServer::memory_with(ServerConfig {
        header_read_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let mut stream = connect(&server).await;
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        slow.push(stream);
    }
    // Answered while every slow connection is still waiting on its headers (an ordering, not a
    // time: the 60 s limit only turns a hang into a failure).
    let health = tokio::time::timeout(Duration::from_secs(60), client().get(server.url("/health")).send())
        .await
        .expect("/health answers while the slow connections hang")
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let body = json!({"address": "10.0.0.1:80", "services": [{"name": "a"}]});
    let registered = tokio::time::timeout(
        Duration::from_secs(60),
        client().put(server.url("/v1/nodes/n1")).json(&body).send(),
    )
    .await
    .expect("a registration answers while the slow connections hang")
    .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    // The slow ones were neither answered nor closed meanwhile.
    let mut byte = [0u8; 1];
    for stream in &mut slow {
        let read = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await;
        assert!(read.is_err(), "a slow connection was answered or closed before its headers ended");
    }
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed() {
    let server =
        TestServer::memory_with(ServerConfig { max_connections: 4, ..ServerConfig::default() }).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(&server).await;
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buffer = [0u8; 1024];
        assert!(stream.read(&mut buffer).await.unwrap() > 0, "served below the cap");
        held.push(stream);
    }
    let mut extra = connect(&server).await;
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answer = read_until_closed(&mut extra, Duration::from_secs(5)).await.expect("closed at once");
    assert!(answer.is_empty(), "no answer beyond the cap: {answer}");
    let (_, metrics) = send_raw_metrics(&mut held[0]).await;
    assert!(metrics.contains("muster_refused_connections_total 1"), "{metrics}");
    drop(held);
    // Capacity comes back when connections close.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(response) = client().get(server.url("/health")).send().await {
            again = Some(response.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again, Some(StatusCode::OK));
}

/// Every error is the documented JSON body with a code from the one list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json() {
    let server = TestServer::memory_with(strict()).await;
    let expect = |status: StatusCode, code: &str, response: (StatusCode, Value)| {
        assert_eq!(response.0, status, "{}", response.1);
        assert_eq!(response.1["error"]["code"], code, "{}", response.1);
        let message = response.1["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(!message.is_empty(), "a message for a person");
        for rust in ["struct ", "enum ", "u16", "u64", "Failed to deserialize"] {
            assert!(!message.contains(rust), "{message}");
        }
    };
    expect(StatusCode::NOT_FOUND, "not_found", send(&server, Method::GET, "/nowhere", Value::Null).await);
    expect(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        send(&server, Method::DELETE, "/health", Value::Null).await,
    );
    expect(
        StatusCode::BAD_REQUEST,
        "invalid_input",
        send(&server, Method::POST, "/register", json!([1, 2])).await,
    );
    expect(
        StatusCode::BAD_REQUEST,
        "invalid_input",
        send(&server, Method::POST, "/register", json!({"name": "a", "ip": "h", "port": []})).await,
    );
    expect(
        StatusCode::BAD_REQUEST,
        "invalid_input",
        send(&server, Method::PUT, "/v1/nodes/n1", json!("text")).await,
    );
    let big = json!({"address": "h:1", "services": [], "metadata": {"k": "v".repeat(10_000)}});
    expect(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        send(&server, Method::PUT, "/v1/nodes/n1", big).await,
    );
    let long = format!("/v1/services/{}/instances", "a".repeat(muster_server::MAX_URI_LEN));
    expect(StatusCode::URI_TOO_LONG, "uri_too_long", send(&server, Method::GET, &long, Value::Null).await);
    let response = client().put(server.url("/v1/nodes/n1")).body("{}").send().await.unwrap();
    expect(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        (response.status(), response.json().await.unwrap()),
    );
    let response = client()
        .get(server.url("/health"))
        .header("x-big", "v".repeat(muster_server::MAX_HEADER_BYTES))
        .send()
        .await
        .unwrap();
    expect(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        (response.status(), response.json().await.unwrap()),
    );
    let (_, nodes) = send(&server, Method::GET, "/v1/nodes", Value::Null).await;
    assert_eq!(nodes["nodes"], json!([]), "no error changed anything");
}

/// `GET /metrics` over an open keep-alive connection.
async fn send_raw_metrics(stream: &mut TcpStream) -> (StatusCode, String) {
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let answer = read_until_closed(stream, Duration::from_secs(5)).await.unwrap_or_default();
    (StatusCode::OK, answer)
}
