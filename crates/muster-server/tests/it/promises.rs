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
