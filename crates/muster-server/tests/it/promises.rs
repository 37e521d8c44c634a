//! Promises that must hold under concurrency and on every route: the instance limit, filtered
//! watches, health on the seed-003 routes, blocking queries, instance removal.

use muster_server::ServerConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::sse::SseClient;
use crate::{TestServer, send};

fn limited(max: usize) -> ServerConfig {
    ServerConfig { max_instances_per_service: max, ..ServerConfig::default() }
}

/// 200 registrations race for 10 slots over both APIs; PATCH cannot add an 11th.
async fn instance_limit_is_atomic(server: TestServer) {
    let writers: Vec<_> = (0..200)
        .map(|n| {
            let url = server.base.clone();
            tokio::spawn(async move {
                let client = crate::client();
                let request = if n % 2 == 0 {
                    let body = json!({"name": "capped", "ip": "10.0.0.1", "port": 2000 + n});
                    client.post(format!("{url}/register")).json(&body)
                } else {
                    let body = json!({"address": format!("10.0.0.2:{}", 2000 + n), "services": [{"name": "capped"}]});
                    client.put(format!("{url}/v1/nodes/v1-{n}")).json(&body)
                };
                request.send().await.unwrap().status()
            })
        })
        .collect();
    let mut admitted = 0;
    for writer in writers {
        match writer.await.unwrap() {
            StatusCode::CREATED => admitted += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(admitted, 10, "exactly the limit is admitted");
    let (_, body) = send(&server, Method::GET, "/v1/services/capped/instances", Value::Null).await;
    assert_eq!(body["instances"].as_array().unwrap().len(), 10, "{body}");

    let other = json!({"address": "10.0.0.3:1", "services": [{"name": "free"}]});
    assert_eq!(send(&server, Method::PUT, "/v1/nodes/outsider", other).await.0, StatusCode::CREATED);
    let patch = json!({"services": [{"name": "free"}, {"name": "capped"}]});
    let (status, body) = send(&server, Method::PATCH, "/v1/nodes/outsider", patch).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("limit_exceeded")),
        "{body}"
    );
    let (_, node) = send(&server, Method::GET, "/v1/nodes/outsider", Value::Null).await;
    assert_eq!(node["services"], json!([{"name": "free"}]), "a refused PATCH changes nothing");
    let (_, body) = send(&server, Method::GET, "/v1/services/capped/instances", Value::Null).await;
    assert_eq!(body["instances"].as_array().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_limit_is_atomic_on_memory() {
    instance_limit_is_atomic(TestServer::memory_with(limited(10)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_limit_is_atomic_on_redis() {
    instance_limit_is_atomic(TestServer::redis_with(limited(10)).await).await;
}

crate::on_both_stores! {
    /// A filtered watch reports a node that left its service, also when it never saw it join
    /// (started after, or resumed with `after=`).
    async fn filtered_watch_sees_departures(server: TestServer) {
        let alpha = json!({"address": "10.0.0.1:80", "services": [{"name": "alpha"}]});
        assert_eq!(send(&server, Method::PUT, "/v1/nodes/n1", alpha).await.0, StatusCode::CREATED);
        let (_, list) = send(&server, Method::GET, "/v1/nodes", Value::Null).await;
        let mark = list["revision"].as_u64().unwrap();
        let mut live = SseClient::open(&server.url("/v1/watch?service=alpha")).await;
        let patch = json!({"services": [{"name": "beta"}]});
        assert_eq!(send(&server, Method::PATCH, "/v1/nodes/n1", patch).await.0, StatusCode::OK);
        let event = live.next().await;
        assert_eq!((event.name.as_str(), event.data["node"]["nodeId"].as_str()), ("updated", Some("n1")));
        assert_eq!(event.data["previousServices"], json!([{"name": "alpha"}]), "{}", event.data);
        let mut resumed = SseClient::open(&server.url(&format!("/v1/watch?service=alpha&after={mark}"))).await;
        let event = resumed.next().await;
        assert_eq!((event.name.as_str(), event.data["node"]["nodeId"].as_str()), ("updated", Some("n1")));
        // A node in neither stays out of the stream.
        let gamma = json!({"address": "10.0.0.2:80", "services": [{"name": "gamma"}]});
        assert_eq!(send(&server, Method::PUT, "/v1/nodes/n2", gamma).await.0, StatusCode::CREATED);
        assert!(live.try_next(std::time::Duration::from_millis(300)).await.is_none());
    }
}

crate::on_both_stores! {
    /// On the seed-003 routes only UP instances are healthy: `/resolve` leaves the others out and
    /// `/services` counts them apart; `/v1` keeps its status filter.
    async fn only_up_is_healthy(server: TestServer) {
        for (id, status) in [("up", "UP"), ("down", "DOWN"), ("starting", "STARTING"), ("stopping", "STOPPING")] {
            let body = json!({"address": format!("10.0.0.1:{}", id.len()), "services": [{"name": "web"}], "status": status});
            assert_eq!(send(&server, Method::PUT, &format!("/v1/nodes/{id}"), body).await.0, StatusCode::CREATED);
        }
        let (status, resolved) = send(&server, Method::GET, "/resolve/web", Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(resolved["instanceCount"], 1, "{resolved}");
        assert_eq!(resolved["instances"][0]["id"], "up");
        let (_, services) = send(&server, Method::GET, "/services", Value::Null).await;
        assert_eq!((services["services"]["web"]["instanceCount"].as_u64(), services["services"]["web"]["healthyCount"].as_u64()), (Some(4), Some(1)), "{services}");
        assert_eq!(services["totalHealthyInstances"], 1);
        let statuses: Vec<&str> = services["services"]["web"]["instances"].as_array().unwrap().iter().map(|i| i["status"].as_str().unwrap()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == "unhealthy").count(), 3, "{statuses:?}");
        let down = json!({"status": "DOWN"});
        assert_eq!(send(&server, Method::PATCH, "/v1/nodes/up", down).await.0, StatusCode::OK);
        assert_eq!(send(&server, Method::GET, "/resolve/web", Value::Null).await.0, StatusCode::NOT_FOUND);
        let (_, v1) = send(&server, Method::GET, "/v1/services/web/instances?status=DOWN", Value::Null).await;
        assert_eq!(v1["instances"].as_array().unwrap().len(), 2);
    }

    /// A blocking query with index 0 answers at once, also on an empty registry.
    async fn blocking_query_index_zero_answers_at_once(server: TestServer) {
        let request = send(&server, Method::GET, "/v1/services/none/instances?index=0&wait=30s", Value::Null);
        let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(10), request)
            .await
            .expect("index=0 must not wait for the whole `wait`");
        assert_eq!((status, body["revision"].as_u64()), (StatusCode::OK, Some(0)), "{body}");
    }

    /// Removing an instance of one service keeps the node's other services; the last one removes
    /// the node. Addresses compare as parsed.
    async fn removing_an_instance_removes_only_that_service(server: TestServer) {
        let body = json!({"address": "host-a:80", "services": [{"name": "alpha"}, {"name": "beta"}]});
        assert_eq!(send(&server, Method::PUT, "/v1/nodes/both", body).await.0, StatusCode::CREATED);
        // A `/v1` node is found by the seed-003 routes too (by scanning its service).
        let beat = json!({"name": "alpha", "ip": "host-a", "port": 80});
        let (status, answer) = send(&server, Method::POST, "/heartbeat", beat).await;
        assert_eq!((status, answer["instance"]["id"].as_str()), (StatusCode::OK, Some("both")), "{answer}");
        let (status, removed) = send(&server, Method::DELETE, "/services/alpha/instances?ip=HOST-A&port=080", Value::Null).await;
        assert_eq!((status, removed["id"].as_str()), (StatusCode::OK, Some("both")), "{removed}");
        let (status, node) = send(&server, Method::GET, "/v1/nodes/both", Value::Null).await;
        assert_eq!((status, node["services"].clone()), (StatusCode::OK, json!([{"name": "beta"}])));
        assert_eq!(send(&server, Method::DELETE, "/services/alpha/instances?ip=host-a&port=80", Value::Null).await.0, StatusCode::NOT_FOUND);
        assert_eq!(send(&server, Method::DELETE, "/services/beta/instances?ip=host-a&port=80", Value::Null).await.0, StatusCode::OK);
        assert_eq!(send(&server, Method::GET, "/v1/nodes/both", Value::Null).await.0, StatusCode::NOT_FOUND);
    }

    /// Seed-003 metadata comes back as sent; a port may be a string of digits.
    async fn seed_metadata_as_sent_and_port_as_text(server: TestServer) {
        let metadata = json!({"n": 5, "b": true, "arr": [1, 2], "obj": {"k": null}, "s": "5", "version": "1.2.0"});
        let body = json!({"name": "typed", "ip": "10.1.1.1", "port": "3001", "metadata": metadata});
        let (status, registered) = send(&server, Method::POST, "/register", body).await;
        assert_eq!(status, StatusCode::CREATED, "{registered}");
        assert_eq!(registered["instance"]["port"], 3001);
        let (_, services) = send(&server, Method::GET, "/services", Value::Null).await;
        assert_eq!(services["services"]["typed"]["instances"][0]["metadata"], metadata, "{services}");
        let (status, beat) = send(&server, Method::POST, "/heartbeat", json!({"name": "typed", "ip": "10.1.1.1", "port": 3001})).await;
        assert_eq!(status, StatusCode::OK, "{beat}");
        for port in [json!("30x1"), json!("0"), json!(70000), json!(-1), json!(" 3001")] {
            let (status, answer) = send(&server, Method::POST, "/register", json!({"name": "typed", "ip": "10.1.1.1", "port": port})).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "port {port}: {answer}");
            assert!(answer["error"].to_string().contains("port"), "{answer}");
        }
        let reserved = json!({"name": "typed", "ip": "10.1.1.2", "port": 1, "metadata": {"muster.json": "[]"}});
        assert_eq!(send(&server, Method::POST, "/register", reserved).await.0, StatusCode::BAD_REQUEST);
        let (_, list) = send(&server, Method::GET, "/v1/services/typed/instances", Value::Null).await;
        assert_eq!(list["instances"].as_array().unwrap().len(), 1, "refused requests changed nothing");
    }
}

/// A watcher that starts after a write sees it, however far the server's change feed lags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_started_after_a_write_sees_it() {
    let store = muster_testkit::faults::FaultyRegistry::new(muster_memory::MemoryRegistry::new());
    store.lag_watches(std::time::Duration::from_millis(300));
    let server = TestServer::start(store, ServerConfig::default()).await;
    let body = json!({"address": "10.0.0.1:80", "services": [{"name": "alpha"}]});
    assert_eq!(send(&server, Method::PUT, "/v1/nodes/written", body).await.0, StatusCode::CREATED);
    let mut watch = SseClient::open(&server.url("/v1/watch?snapshot=true")).await;
    let resync = watch.next().await;
    assert_eq!(resync.name, "resync");
    assert_eq!(resync.data["nodes"][0]["nodeId"], "written", "{}", resync.data);
}
