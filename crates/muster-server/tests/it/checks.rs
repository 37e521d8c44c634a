//! Active health checks against real small HTTP and TCP servers that start failing and recover:
//! DOWN after the failures, UP after the successes, the reason in the `updated` event, heartbeats
//! cannot lift a check's verdict, checks stop with the node, and on Redis they run once per fleet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::{ServerConfig, TestServer, send};

/// An HTTP server answering `/health` with 200 while healthy and 503 otherwise; counts requests.
struct Target {
    address: String,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
}

async fn target() -> Target {
    let healthy = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicU64::new(0));
    let (state_healthy, state_hits) = (Arc::clone(&healthy), Arc::clone(&hits));
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let (healthy, hits) = (Arc::clone(&state_healthy), Arc::clone(&state_hits));
            async move {
                hits.fetch_add(1, Ordering::Relaxed);
                if healthy.load(Ordering::Relaxed) {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Target { address, healthy, hits }
}

async fn node(server: &TestServer, id: &str) -> Value {
    send(server, Method::GET, &format!("/v1/nodes/{id}"), Value::Null).await.1
}

async fn until_status(server: &TestServer, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let node = node(server, id).await;
        if node["status"] == status {
            return node;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} never became {status}: {node}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn check(extra: Value) -> Value {
    let mut check =
        json!({"type": "http", "intervalMs": 100, "timeoutMs": 50, "failures": 2, "successes": 2});
    check.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    check
}

crate::on_both_stores! {
    async fn an_http_check_sets_down_and_up_with_the_reason(server: TestServer) {
        let target = target().await;
        let mut events = crate::sse::SseClient::open(&server.url("/v1/watch")).await;
        // No target: the instance's health URL (its address + `/health`).
        let (status, body) = send(&server, Method::PUT, "/v1/nodes/web-1", json!({
            "address": target.address, "services": [{"name": "web"}], "ttlMs": 60_000,
            "check": check(json!({})),
        }))
        .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["node"]["metadata"]["check.type"], "http", "the check travels with the node");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while target.hits.load(Ordering::Relaxed) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the check runs");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(node(&server, "web-1").await["status"], "UP", "passing checks change nothing");

        target.healthy.store(false, Ordering::Relaxed);
        let down = until_status(&server, "web-1", "DOWN").await;
        let output = down["metadata"]["check.output"].as_str().unwrap_or_default().to_owned();
        assert!(output.contains("HTTP 503") && output.contains("/health"), "{down}");
        // When the verdict began, for the dashboard's checks panel.
        let since: u64 = down["metadata"]["check.since"].as_str().and_then(|s| s.parse().ok()).expect("check.since");
        assert!(since.abs_diff(muster_core::time::now_ms()) < 60_000, "{down}");
        // The node's own heartbeat asking for UP cannot lift the verdict; its registration neither.
        let (status, beat) = send(&server, Method::PUT, "/v1/nodes/web-1/heartbeat", json!({"status": "UP"})).await;
        assert_eq!((status.as_u16(), beat["status"].as_str()), (200, Some("DOWN")), "{beat}");
        let (_, again) = send(&server, Method::PUT, "/v1/nodes/web-1", json!({
            "address": target.address, "services": [{"name": "web"}], "ttlMs": 60_000,
            "check": check(json!({})),
        }))
        .await;
        assert_eq!(again["node"]["status"], "DOWN", "{again}");
        assert_eq!(again["node"]["metadata"]["check.output"].as_str(), Some(output.as_str()));
        assert_eq!(again["node"]["metadata"]["check.since"], down["metadata"]["check.since"], "{again}");
        // Nor an update: the verdict is a condition of the store's write, not read from a copy.
        let (status, patched) = send(&server, Method::PATCH, "/v1/nodes/web-1", json!({"status": "UP"})).await;
        assert_eq!((status.as_u16(), patched["status"].as_str()), (200, Some("DOWN")), "{patched}");
        assert_eq!(node(&server, "web-1").await["status"], "DOWN");

        target.healthy.store(true, Ordering::Relaxed);
        let up = until_status(&server, "web-1", "UP").await;
        assert!(up["metadata"].get("check.output").is_none(), "the reason goes with the failure: {up}");
        assert!(up["metadata"].get("check.since").is_none(), "{up}");

        // The watch saw both changes as `updated` events, the first with the reason.
        let mut statuses = Vec::new();
        while statuses.len() < 2 {
            let event = events.next().await;
            if event.name == "updated" {
                let node = &event.data["node"];
                statuses.push((node["status"].clone(), node["metadata"]["check.output"].is_string()));
            }
        }
        assert_eq!(statuses, [(json!("DOWN"), true), (json!("UP"), false)]);

        // A node that leaves is no longer checked.
        send(&server, Method::DELETE, "/v1/nodes/web-1", Value::Null).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = target.hits.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(target.hits.load(Ordering::Relaxed), after, "no checks after the node left");
    }

    async fn a_tcp_check_follows_the_listener(server: TestServer) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepting = tokio::spawn(async move { loop { let _ = listener.accept().await; } });
        send(&server, Method::PUT, "/v1/nodes/db-1", json!({
            "address": address, "services": [{"name": "db"}], "ttlMs": 60_000,
            "check": {"type": "tcp", "intervalMs": 100, "failures": 1, "successes": 1},
        }))
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(node(&server, "db-1").await["status"], "UP");
        accepting.abort();
        let down = until_status(&server, "db-1", "DOWN").await;
        assert!(down["metadata"]["check.output"].as_str().unwrap_or_default().starts_with("TCP "), "{down}");
        // Listening again on the same port brings it back.
        let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
        tokio::spawn(async move { loop { let _ = listener.accept().await; } });
        until_status(&server, "db-1", "UP").await;
    }
}

/// A check's timeout is the one configured, even longer than its interval: a target answering in
/// 400 ms passes a check with `timeoutMs` 2000 run every 200 ms (several checks run, none fails),
/// and one answering in 4 s fails it with the configured timeout in the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_timeout_is_honoured() {
    let server = TestServer::memory().await;
    let delay_ms = Arc::new(AtomicU64::new(400));
    let answered = Arc::new(AtomicU64::new(0));
    let (answer_after, count) = (Arc::clone(&delay_ms), Arc::clone(&answered));
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let delay = Duration::from_millis(answer_after.load(Ordering::Relaxed));
            let count = Arc::clone(&count);
            async move {
                tokio::time::sleep(delay).await;
                count.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let slow_check =
        json!({"type": "http", "intervalMs": 200, "timeoutMs": 2000, "failures": 1, "successes": 1});
    let (status, body) = send(
        &server,
        Method::PUT,
        "/v1/nodes/slow-1",
        json!({
            "address": address, "services": [{"name": "slow"}], "ttlMs": 60_000, "check": slow_check,
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Three checks answered, each longer than the interval (one failure would have set DOWN).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while answered.load(Ordering::Relaxed) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the checks run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node(&server, "slow-1").await["status"], "UP", "400 ms answers pass a 2 s timeout");
    delay_ms.store(4_000, Ordering::Relaxed);
    let down = until_status(&server, "slow-1", "DOWN").await;
    let output = down["metadata"]["check.output"].as_str().unwrap_or_default();
    assert!(output.contains("2s"), "the reason names the configured timeout: {down}");
}

/// A check follows no redirect: a health URL answering 302 to a healthy one elsewhere fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_follow_no_redirect() {
    let server = TestServer::memory().await;
    let healthy = target().await;
    let location = format!("http://{}/health", healthy.address);
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let location = location.clone();
            async move { (axum::http::StatusCode::FOUND, [(axum::http::header::LOCATION, location)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    send(
        &server,
        Method::PUT,
        "/v1/nodes/moved-1",
        json!({
            "address": address, "services": [{"name": "moved"}], "ttlMs": 60_000,
            "check": check(json!({"failures": 1})),
        }),
    )
    .await;
    let down = until_status(&server, "moved-1", "DOWN").await;
    assert!(down["metadata"]["check.output"].as_str().unwrap_or_default().contains("HTTP 302"), "{down}");
    assert_eq!(healthy.hits.load(Ordering::Relaxed), 0, "the redirect was not followed");
}

/// Invalid checks are refused with the field named, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checks_are_refused() {
    let server = TestServer::memory().await;
    for (bad, field) in [
        (json!({"type": "http", "intervalMs": 5}), "intervalMs"),
        (json!({"type": "http", "target": "http://x/"}), "target"),
        (json!({"type": "http", "path": "health"}), "path"),
        (json!({"type": "tcp", "successes": 0}), "successes"),
    ] {
        let (status, body) = send(
            &server,
            Method::PUT,
            "/v1/nodes/n1",
            json!({
                "address": "127.0.0.1:1", "services": [{"name": "a"}], "check": bad,
            }),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains(field), "{body}");
    }
    let (status, body) = send(
        &server,
        Method::PUT,
        "/v1/nodes/n1",
        json!({
            "address": "127.0.0.1:1", "services": [{"name": "a"}], "check": {"type": "icmp"},
        }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(send(&server, Method::GET, "/v1/nodes/n1", Value::Null).await.0, 404, "nothing stored");
}

/// Two servers on one Redis: the checks run in one of them (the sweeper lease holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_checks_run_once_per_fleet() {
    let redis = muster_testkit::redis_server::RedisServer::start().await;
    let mut servers = Vec::new();
    for _ in 0..2 {
        let registry = muster_redis::RedisRegistry::connect_url(&redis.url()).await.unwrap();
        servers.push(TestServer::start(Arc::new(registry), ServerConfig::default()).await);
    }
    let target = target().await;
    send(
        &servers[0],
        Method::PUT,
        "/v1/nodes/web-1",
        json!({
            "address": target.address, "services": [{"name": "web"}], "ttlMs": 60_000,
            "check": check(json!({})),
        }),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while target.hits.load(Ordering::Relaxed) < 10 {
        assert!(tokio::time::Instant::now() < deadline, "the check runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut counts = Vec::new();
    for server in &servers {
        let text = crate::client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix("muster_health_checks_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("the health check counter is exported: {text}"));
        counts.push(count);
    }
    counts.sort_by(f64::total_cmp);
    assert_eq!(counts[0], 0.0, "one server runs no checks: {counts:?}");
    assert!(counts[1] >= 10.0, "the other runs them all: {counts:?}");
    // Failing and recovering through the server that does not run the checks.
    target.healthy.store(false, Ordering::Relaxed);
    until_status(&servers[1], "web-1", "DOWN").await;
    target.healthy.store(true, Ordering::Relaxed);
    until_status(&servers[1], "web-1", "UP").await;
}
