//! `/v1` routes.

use std::sync::Arc;
use std::time::Duration;

use muster_core::Registry;
use muster_server::ServerConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{TestServer, client, send};

async fn put(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    send(server, Method::PUT, path, body).await
}

async fn get(server: &TestServer, path: &str) -> (StatusCode, Value) {
    send(server, Method::GET, path, Value::Null).await
}

fn node(address: &str, services: Value) -> Value {
    json!({"address": address, "services": services})
}

crate::on_both_stores! {
    async fn register_read_update_deregister(server: TestServer) {
        let (status, body) =
            put(&server, "/v1/nodes/n1", node("10.0.0.1:8080", json!([{"name": "users", "version": "1.2.0"}])))
                .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["id"], "n1");
        assert_eq!(body["created"], true);
        assert_eq!(body["node"]["address"], "10.0.0.1:8080");
        // Idempotent: the same PUT again refreshes.
        let (status, body) =
            put(&server, "/v1/nodes/n1", node("10.0.0.1:8080", json!([{"name": "users", "version": "1.2.0"}])))
                .await;
        assert_eq!((status, body["created"].clone()), (StatusCode::OK, json!(false)));

        // Generated id.
        let response = client()
            .post(server.url("/v1/nodes"))
            .json(&json!({"address": "10.0.0.2:8080", "services": [{"name": "users", "version": "2.0.0"}], "status": "STARTING", "metadata": {"zone": "eu"}, "ttlMs": 60000}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let generated: Value = response.json().await.unwrap();
        let id = generated["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("node-"));
        assert_eq!(generated["node"]["ttlMs"], 60000);

        let (status, body) = get(&server, &format!("/v1/nodes/{id}")).await;
        assert_eq!(
            (status, body["status"].clone(), body["metadata"]["zone"].clone()),
            (StatusCode::OK, json!("STARTING"), json!("eu"))
        );
        let (_, list) = get(&server, "/v1/nodes").await;
        assert_eq!(list["nodes"].as_array().unwrap().len(), 2);
        assert!(list["revision"].as_u64().unwrap() >= 2);
        let (_, all) = get(&server, "/v1/nodes?all=true").await;
        assert_eq!(all["nodes"].as_array().unwrap().len(), 2);

        let (_, services) = get(&server, "/v1/services").await;
        assert_eq!(
            services["services"],
            json!([{"name": "users", "versions": ["1.2.0", "2.0.0"], "instances": 2}])
        );

        // Update.
        let (status, body) = send(&server, Method::PATCH, "/v1/nodes/n1", json!({"address": "10.0.0.9:9000"})).await;
        assert_eq!((status, &body["address"]), (StatusCode::OK, &json!("10.0.0.9:9000")));
        let (status, _) = send(&server, Method::PATCH, "/v1/nodes/n1", json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = send(&server, Method::PATCH, "/v1/nodes/ghost", json!({"status": "DOWN"})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Deregister.
        let response = client().delete(server.url("/v1/nodes/n1")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let response = client().delete(server.url("/v1/nodes/n1")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let (status, body) = get(&server, "/v1/nodes/n1").await;
        assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
}
}

crate::on_both_stores! {
    async fn heartbeat_with_status_and_404_for_unknown(server: TestServer) {
        put(&server, "/v1/nodes/n1", node("h:1", json!([{"name": "a"}]))).await;
        let (status, body) = put(&server, "/v1/nodes/n1/heartbeat", json!({"status": "DOWN"})).await;
        assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("DOWN")));
        // An empty body keeps the status.
        let response = client().put(server.url("/v1/nodes/n1/heartbeat")).send().await.unwrap();
        assert_eq!(response.json::<Value>().await.unwrap()["status"], "DOWN");
        let response = client().put(server.url("/v1/nodes/ghost/heartbeat")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "unknown ids answer 404 so clients re-register");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("register it again"));
        let response = client()
            .put(server.url("/v1/nodes/n1/heartbeat"))
            .body("{\"status\":\"SLEEPY\"}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}
}

crate::on_both_stores! {
    async fn instances_filters(server: TestServer) {
        put(&server, "/v1/nodes/a", json!({"address": "10.0.0.1:1", "services": [{"name": "api", "version": "1.2.0", "weight": 5}], "metadata": {"zone": "eu"}})).await;
        put(&server, "/v1/nodes/b", json!({"address": "[::1]:2", "services": [{"name": "api", "version": "2.0.0", "metadata": {"health": "/healthz"}}], "status": "DOWN"})).await;
        put(&server, "/v1/nodes/c", json!({"address": "h:3", "services": [{"name": "api"}]})).await;
        let ids = |body: &Value| {
            body["instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let (_, body) = get(&server, "/v1/services/api/instances").await;
        assert_eq!(ids(&body), ["a", "b", "c"]);
        let first = &body["instances"][0];
        assert_eq!(first["url"], "http://10.0.0.1:1");
        assert_eq!(first["health"], "http://10.0.0.1:1/health");
        assert_eq!(
            (first["host"].clone(), first["port"].clone(), first["weight"].clone()),
            (json!("10.0.0.1"), json!(1), json!(5))
        );
        assert_eq!(body["instances"][1]["host"], "::1");
        assert_eq!(body["instances"][1]["health"], "http://[::1]:2/healthz");
        assert_eq!(ids(&get(&server, "/v1/services/api/instances?version=1.2.0").await.1), ["a"]);
        assert_eq!(ids(&get(&server, "/v1/services/api/instances?versionReq=%3E%3D1.0").await.1), ["a", "b"]);
        assert_eq!(ids(&get(&server, "/v1/services/api/instances?status=UP").await.1), ["a", "c"]);
        assert_eq!(ids(&get(&server, "/v1/services/api/instances?meta.zone=eu").await.1), ["a"]);
        let (status, body) = get(&server, "/v1/services/api/instances?colour=red").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]["message"].as_str().unwrap().contains("unknown parameter"));
        assert_eq!(get(&server, "/v1/services/api/instances?versionReq=banana").await.0, StatusCode::BAD_REQUEST);
}
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let server = TestServer::start(
        std::sync::Arc::new(muster_memory::MemoryRegistry::new()),
        ServerConfig { max_instances_per_service: 2, body_limit: 4096, ..ServerConfig::default() },
    )
    .await;
    let cases = [
        ("/v1/nodes/bad%20id", node("h:1", json!([])), "invalid_input", "node id"),
        ("/v1/nodes/n1", node("nohost", json!([])), "invalid_input", "no port"),
        ("/v1/nodes/n1", node("h:1", json!([{"name": ""}])), "invalid_input", "service name"),
        (
            "/v1/nodes/n1",
            json!({"address": "h:1", "services": [], "ttlMs": 5}),
            "invalid_input",
            "heartbeat ttl",
        ),
        (
            "/v1/nodes/n1",
            json!({"address": "h:1", "services": [], "extra": true}),
            "invalid_input",
            "unknown field",
        ),
        (
            "/v1/nodes/n1",
            json!({"address": "h:1", "services": [], "metadata": {"bad key": "v"}}),
            "invalid_input",
            "metadata",
        ),
    ];
    for (path, body, code, message) in cases {
        let (status, answer) = put(&server, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], code);
        assert!(answer["error"]["message"].as_str().unwrap().contains(message), "{answer}");
    }
    let response = client()
        .put(server.url("/v1/nodes/n1"))
        .header("content-type", "application/json")
        .body("{\"address\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "malformed_json");
    let response = client().put(server.url("/v1/nodes/n1")).body("{}").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = json!({"address": "h:1", "services": [], "metadata": {"k": "v".repeat(10_000)}});
    let response = client().put(server.url("/v1/nodes/n1")).json(&huge).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "payload_too_large");
    let (_, list) = get(&server, "/v1/nodes?all=true").await;
    assert_eq!(list["nodes"], json!([]), "rejected requests changed state");
    assert_eq!(list["revision"], 0);

    // The per-service instance limit.
    for i in 0..2 {
        assert_eq!(
            put(&server, &format!("/v1/nodes/n{i}"), node("h:1", json!([{"name": "a"}]))).await.0,
            StatusCode::CREATED
        );
    }
    let (status, body) = put(&server, "/v1/nodes/n9", node("h:1", json!([{"name": "a"}]))).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("limit_exceeded")));
    assert_eq!(
        put(&server, "/v1/nodes/n0", node("h:2", json!([{"name": "a"}]))).await.0,
        StatusCode::OK,
        "re-registering an instance is not a new one"
    );
    assert_eq!(get(&server, "/nowhere").await.0, StatusCode::NOT_FOUND);
}

crate::on_both_stores! {
    /// A blocking query answers at once when the index is old, and otherwise waits for a change.
    async fn blocking_query(server: TestServer) {
        put(&server, "/v1/nodes/a", node("h:1", json!([{"name": "api"}]))).await;
        let response = client().get(server.url("/v1/services/api/instances")).send().await.unwrap();
        let index: u64 = response.headers()["x-muster-index"].to_str().unwrap().parse().unwrap();
        // Old index: immediate.
        let response = client()
            .get(server.url(&format!("/v1/services/api/instances?index={}&wait=10s", index - 1)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.json::<Value>().await.unwrap()["instances"].as_array().unwrap().len(), 1);
        // Current index: waits until the next change.
        let url = server.url(&format!("/v1/services/api/instances?index={index}&wait=10s"));
        let waiting = tokio::spawn(async move { client().get(url).send().await.unwrap() });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "answered before anything changed");
        put(&server, "/v1/nodes/b", node("h:2", json!([{"name": "api"}]))).await;
        let response = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        let new_index: u64 = response.headers()["x-muster-index"].to_str().unwrap().parse().unwrap();
        assert!(new_index > index);
        assert_eq!(response.json::<Value>().await.unwrap()["instances"].as_array().unwrap().len(), 2);
        // Nothing changes: answers after `wait`.
        let response = client()
            .get(server.url(&format!("/v1/services/api/instances?index={new_index}&wait=300ms")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-muster-index"].to_str().unwrap(), new_index.to_string());
        assert_eq!(
            get(&server, "/v1/services/api/instances?index=1&wait=forever").await.0,
            StatusCode::BAD_REQUEST
        );
}
}

/// The embedded store's self-preservation (a capability the store exposes, not part of the
/// registry contract) shows through the server: `/ready` says it is on, `/metrics` counts the
/// nodes it held back.
#[tokio::test(start_paused = true)]
async fn self_preservation_shows_on_ready_and_metrics() {
    use muster_memory::{MemoryOptions, MemoryRegistry, SelfPreservation};
    use muster_testkit::conformance::{Timing, registration};
    let preserve = SelfPreservation {
        threshold: 0.5,
        min_nodes: 10,
        window: Duration::from_secs(15),
        max_pause: Duration::from_secs(120),
    };
    let registry = MemoryRegistry::with_options(MemoryOptions {
        self_preservation: Some(preserve),
        ..MemoryOptions::default()
    });
    // 20 nodes, of which 15 stop heartbeating at once: a partition, not 15 crashes.
    let timing = Timing::default();
    for i in 0..20 {
        registry.heartbeat(registration(&format!("n{i}"), "h:1", &["a"], timing)).await.unwrap();
    }
    for _ in 0..6 {
        tokio::time::sleep(timing.interval).await;
        for i in 0..5 {
            registry.heartbeat(registration(&format!("n{i}"), "h:1", &["a"], timing)).await.unwrap();
        }
    }
    assert!(registry.is_preserving());
    tokio::time::resume();
    let server = TestServer::start(Arc::new(registry.clone()), ServerConfig::default()).await;
    let (status, body) = get(&server, "/ready").await;
    assert_eq!((status, body["selfPreservation"].clone()), (StatusCode::OK, json!(true)));
    let metrics = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("muster_self_preservation 1\n"), "{metrics}");
    assert!(metrics.contains("muster_self_preservation_held_back 15\n"), "{metrics}");
}

/// Events a Redis store wrote but could not announce on its pub/sub channel (a Redis user
/// without `PUBLISH`: the writes stand, as Titan's do) are counted on `/metrics`, where an
/// operator sees that agents reading the channel hear nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_channel_publishes_show_on_metrics() {
    let redis = muster_testkit::redis_server::RedisServer::start().await;
    let url = redis.user_without_publish();
    let config = muster_redis::RedisConfig {
        pubsub_enabled: true,
        ..muster_redis::RedisConfig::from_url(&url).unwrap()
    };
    let registry = muster_redis::RedisRegistry::connect(config).await.unwrap();
    let server = TestServer::start(Arc::new(registry), ServerConfig::default()).await;
    let metrics =
        || async { client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap() };
    assert!(metrics().await.contains("muster_store_channel_publish_failures_total 0\n"));
    let node = json!({"address": "10.0.0.1:80", "services": [{"name": "billing"}], "ttlMs": 30000});
    assert_eq!(put(&server, "/v1/nodes/p1", node.clone()).await.0, StatusCode::CREATED);
    assert_eq!(send(&server, Method::DELETE, "/v1/nodes/p1", Value::Null).await.0, StatusCode::NO_CONTENT);
    let text = metrics().await;
    assert!(text.contains("muster_store_channel_publish_failures_total 2\n"), "{text}");
}

#[tokio::test]
async fn ready_and_health() {
    let server = TestServer::memory().await;
    let (status, body) = get(&server, "/ready").await;
    assert_eq!((status, body["status"].clone()), (StatusCode::OK, json!("ready")));
    assert_eq!(body["selfPreservation"], false);
    let (status, body) = get(&server, "/health").await;
    assert_eq!(
        (status, body["status"].clone(), body["service"].clone()),
        (StatusCode::OK, json!("healthy"), json!("service-registry"))
    );
}

/// `/ready` says 503, with the error body, when the store is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reports_an_unreachable_store() {
    let mut redis = muster_testkit::redis_server::RedisServer::start().await;
    let registry = muster_redis::RedisRegistry::connect_url(&redis.url()).await.unwrap();
    let server = TestServer::start(std::sync::Arc::new(registry), ServerConfig::default()).await;
    assert_eq!(get(&server, "/ready").await.0, StatusCode::OK);
    redis.kill();
    let (status, body) = get(&server, "/ready").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("unavailable"))
    );
}

/// Two servers sharing one Redis behave as one registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_redis() {
    let redis = muster_testkit::redis_server::RedisServer::start().await;
    let one = TestServer::start(
        std::sync::Arc::new(muster_redis::RedisRegistry::connect_url(&redis.url()).await.unwrap()),
        ServerConfig::default(),
    )
    .await;
    let two = TestServer::start(
        std::sync::Arc::new(muster_redis::RedisRegistry::connect_url(&redis.url()).await.unwrap()),
        ServerConfig::default(),
    )
    .await;
    let mut events = crate::sse::SseClient::open(&two.url("/v1/watch")).await;
    put(&one, "/v1/nodes/n1", node("h:1", json!([{"name": "api", "version": "1.0.0"}]))).await;
    let (_, body) = get(&two, "/v1/services/api/instances").await;
    assert_eq!(body["instances"][0]["id"], "n1");
    let event = events.next().await;
    assert_eq!((event.name.as_str(), event.data["node"]["nodeId"].clone()), ("registered", json!("n1")));
    let response = client().put(two.url("/v1/nodes/n1/heartbeat")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "a heartbeat through the other server");
    assert!(
        muster_redis::RedisRegistry::connect_url(&redis.url())
            .await
            .unwrap()
            .is_active(&muster_core::NodeId::new("n1").unwrap())
            .await
            .unwrap()
    );
}

/// `/metrics` speaks Prometheus text: counters, the watcher gauge, latency by route pattern.
#[tokio::test]
async fn metrics_and_request_ids() {
    let server = TestServer::memory().await;
    put(&server, "/v1/nodes/n1", node("h:1", json!([{"name": "api"}]))).await;
    client().put(server.url("/v1/nodes/n1/heartbeat")).send().await.unwrap();
    get(&server, "/v1/nodes/ghost").await;
    let watch = crate::sse::SseClient::open(&server.url("/v1/watch")).await;
    let response = client().get(server.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for line in [
        "muster_registrations_total 1",
        "muster_heartbeats_total 1",
        "muster_watchers 1",
        "muster_active_nodes 1",
        "muster_active_services 1",
        r#"muster_http_request_duration_seconds_count{route="/v1/nodes/{id}",method="PUT",status="201"} 1"#,
        r#"muster_http_request_duration_seconds_count{route="/v1/nodes/{id}",method="GET",status="404"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    drop(watch);
    // Every response carries a request id; a given one is echoed back.
    let response = client().get(server.url("/health")).send().await.unwrap();
    let first = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let response = client().get(server.url("/health")).send().await.unwrap();
    assert_ne!(response.headers()["x-request-id"].to_str().unwrap(), first, "ids are unique");
    let response =
        client().get(server.url("/health")).header("x-request-id", "trace-me").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me");
}

/// `/openapi.json` describes every route with its error responses.
#[tokio::test]
async fn openapi_describes_every_route() {
    let server = TestServer::memory().await;
    let (status, spec) = get(&server, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/v1/nodes", "post"),
        ("/v1/nodes", "get"),
        ("/v1/nodes/{id}", "put"),
        ("/v1/nodes/{id}", "get"),
        ("/v1/nodes/{id}", "patch"),
        ("/v1/nodes/{id}", "delete"),
        ("/v1/nodes/{id}/heartbeat", "put"),
        ("/v1/services", "get"),
        ("/v1/services/{name}/instances", "get"),
        ("/v1/watch", "get"),
        ("/register", "post"),
        ("/heartbeat", "post"),
        ("/resolve/{name}", "get"),
        ("/services", "get"),
        ("/services/{name}/instances", "delete"),
        ("/stats", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(spec["paths"][path][method].is_object(), "{method} {path} missing from the spec");
    }
    let register = &spec["paths"]["/v1/nodes/{id}"]["put"]["responses"];
    for code in ["200", "201", "400", "409", "413", "415", "503"] {
        assert!(register[code].is_object(), "PUT /v1/nodes/{{id}} lacks {code}");
    }
    for schema in ["NodeInfo", "ErrorBody", "RegisterRequest", "Instance", "DiscoveryEvent", "ResyncData"] {
        assert!(spec["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }
    assert_eq!(spec["components"]["schemas"]["NodeInfo"]["properties"]["address"]["type"], "string");
}

/// CORS allows the configured origins only.
#[tokio::test]
async fn cors_allows_configured_origins() {
    let server = TestServer::start(
        std::sync::Arc::new(muster_memory::MemoryRegistry::new()),
        ServerConfig { allowed_origins: vec!["http://dash.example".into()], ..ServerConfig::default() },
    )
    .await;
    let preflight = |origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, server.url("/v1/nodes/n1"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("http://dash.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://dash.example");
    assert!(allowed.headers()["access-control-allow-methods"].to_str().unwrap().contains("PUT"));
    let refused = preflight("http://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    let simple =
        client().get(server.url("/health")).header("origin", "http://dash.example").send().await.unwrap();
    assert_eq!(simple.headers()["access-control-allow-origin"], "http://dash.example");
    // Answers to requests without an Origin skip the CORS layer but say what they vary on, so a
    // cache never hands one to a cross-origin request; an OPTIONS without Origin is still the
    // CORS layer's.
    let plain = client().get(server.url("/health")).send().await.unwrap();
    assert!(plain.headers().get("access-control-allow-origin").is_none());
    let vary = plain.headers()["vary"].to_str().unwrap();
    assert!(vary.contains("origin") && vary.contains("access-control-request-method"), "vary: {vary}");
    let options =
        client().request(reqwest::Method::OPTIONS, server.url("/v1/nodes/n1")).send().await.unwrap();
    assert_eq!(options.status(), 200, "as the CORS layer has always answered it");
}

/// A cost budget in socket writes: every response of the hot routes (resolve on both routes,
/// heartbeat, registration) leaves in one write — head and body together — counted by the
/// server (`muster_http_socket_writes_total`), not timed.
#[tokio::test]
async fn each_response_is_one_socket_write() {
    let server = TestServer::memory().await;
    let writes = || async {
        let text = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("muster_http_socket_writes_total "))
            .expect("the socket write counter is exported")
            .parse::<u64>()
            .unwrap()
    };
    for i in 0..10 {
        let body =
            format!(r#"{{"address":"10.0.0.{}:80","services":[{{"name":"svc","version":"1.0.0"}}]}}"#, i + 1);
        let response = client()
            .put(server.url(&format!("/v1/nodes/n{i}")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    const REQUESTS: u64 = 40;
    let before = writes().await;
    for n in 0..REQUESTS / 4 {
        for (method, path) in [
            ("GET", "/v1/services/svc/instances".to_owned()),
            ("GET", "/resolve/svc".to_owned()),
            ("PUT", format!("/v1/nodes/n{n}/heartbeat")),
            ("PUT", format!("/v1/nodes/fresh-{n}")),
        ] {
            let request = client().request(method.parse().unwrap(), server.url(&path));
            let request = if path.contains("fresh") {
                request
                    .header("content-type", "application/json")
                    .body(r#"{"address":"10.1.0.1:80","services":[{"name":"other"}]}"#)
            } else {
                request
            };
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{method} {path}: {}", response.status());
            response.bytes().await.unwrap();
        }
    }
    // The counter read first left in one write too (its value was taken before it was sent).
    let spent = writes().await - before - 1;
    assert!(spent >= REQUESTS, "the counter counts: {spent} writes for {REQUESTS} responses");
    assert!(spent <= REQUESTS, "{spent} socket writes for {REQUESTS} responses; budget: one per response");
}

/// Resolve answers are kept as bytes only while the store's read is the same: a heartbeat (which
/// moves no revision) shows in the next answer on both routes, as does a new instance.
#[tokio::test]
async fn kept_resolve_answers_follow_heartbeats_and_changes() {
    let server = TestServer::memory().await;
    let register = |id: &'static str, address: &'static str| {
        let url = server.url(&format!("/v1/nodes/{id}"));
        async move {
            let body =
                format!(r#"{{"address":"{address}","services":[{{"name":"svc","version":"1.0.0"}}]}}"#);
            let response =
                client().put(url).header("content-type", "application/json").body(body).send().await.unwrap();
            assert_eq!(response.status(), 201);
        }
    };
    register("a", "10.0.0.1:80").await;
    let v1 = || async {
        let body: serde_json::Value = client()
            .get(server.url("/v1/services/svc/instances"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["id"].as_str().unwrap().to_owned(), i["lastHeartbeat"].as_u64().unwrap()))
            .collect::<Vec<_>>()
    };
    let seed = || async {
        let body: serde_json::Value =
            client().get(server.url("/resolve/svc")).send().await.unwrap().json().await.unwrap();
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["id"].as_str().unwrap().to_owned(), i["lastHeartbeat"].as_str().unwrap().to_owned()))
            .collect::<Vec<_>>()
    };
    let (first, first_seed) = (v1().await, seed().await);
    assert_eq!(
        (v1().await, seed().await),
        (first.clone(), first_seed.clone()),
        "an unchanged read, the same answer"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let response = client().put(server.url("/v1/nodes/a/heartbeat")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (after, after_seed) = (v1().await, seed().await);
    assert!(after[0].1 > first[0].1, "the heartbeat shows: {first:?} then {after:?}");
    assert_ne!(after_seed[0].1, first_seed[0].1, "the heartbeat shows on the seed route");
    register("b", "10.0.0.2:80").await;
    assert_eq!(v1().await.len(), 2);
    assert_eq!(seed().await.len(), 2);
}
