//! `GET /v1/watch` as server-sent events.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::{TestServer, client};

/// One parsed server-sent event.
#[derive(Debug)]
pub(crate) struct SseEvent {
    pub(crate) name: String,
    pub(crate) id: Option<String>,
    pub(crate) data: Value,
}

/// A minimal SSE reader over a real HTTP response.
pub(crate) struct SseClient {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    /// The id of the last event read.
    last_id: Option<String>,
}

impl SseClient {
    pub(crate) async fn open(url: &str) -> Self {
        Self::open_with(url, None).await
    }

    pub(crate) async fn open_with(url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = client().get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        Self::from_response(request.send().await.unwrap())
    }

    /// Reads the events of a watch request already sent.
    pub(crate) fn from_response(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self { stream: response.bytes_stream().boxed(), buffer: String::new(), last_id: None }
    }

    /// The next event (keep-alive comments are skipped); fails the test after 5 s.
    pub(crate) async fn next(&mut self) -> SseEvent {
        self.try_next(Duration::from_secs(5)).await.expect("an event within 5 s")
    }

    /// The revision of the last event read (the SSE id), as a blocking-query index.
    pub(crate) fn next_revision_hint(&self) -> u64 {
        self.last_id.as_deref().and_then(|id| id.parse().ok()).expect("an event with an id was read")
    }

    /// True when the server ends the stream within `wait` (whatever it sends before); false when
    /// it is still open then.
    pub(crate) async fn ends_within(&mut self, wait: Duration) -> bool {
        let drain = async {
            while let Some(chunk) = self.stream.next().await {
                if chunk.is_err() {
                    break;
                }
            }
        };
        tokio::time::timeout(wait, drain).await.is_ok()
    }

    pub(crate) async fn try_next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::from("message"), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                if id.is_some() {
                    self.last_id.clone_from(&id);
                }
                return Some(SseEvent { name, id, data: serde_json::from_str(&data).unwrap() });
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    }
}

async fn register(server: &TestServer, id: &str, service: &str) {
    let response = client()
        .put(server.url(&format!("/v1/nodes/{id}")))
        .json(&json!({"address": "h:1", "services": [{"name": service}]}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

crate::on_both_stores! {
    async fn events_with_revisions_and_resume_from_last_event_id(server: TestServer) {
        let mut watch = SseClient::open(&server.url("/v1/watch")).await;
        register(&server, "n1", "api").await;
        let first = watch.next().await;
        assert_eq!(first.name, "registered");
        assert_eq!(first.data["type"], "NODE_REGISTERED");
        assert_eq!(first.data["node"]["nodeId"], "n1");
        let first_id = first.id.clone().unwrap();
        assert_eq!(first.data["revision"].to_string(), first_id);
        drop(watch);

        // Changes while disconnected, then resume with Last-Event-ID.
        register(&server, "n2", "api").await;
        client().delete(server.url("/v1/nodes/n1")).send().await.unwrap();
        let mut resumed = SseClient::open_with(&server.url("/v1/watch"), Some(&first_id)).await;
        let a = resumed.next().await;
        let b = resumed.next().await;
        assert_eq!((a.name.as_str(), a.data["node"]["nodeId"].clone()), ("registered", json!("n2")));
        assert_eq!((b.name.as_str(), b.data["reason"].clone()), ("deregistered", json!("graceful")));
        // A revision the registry never issued: resync.
        let mut future = SseClient::open(&server.url("/v1/watch?after=999999")).await;
        let resync = future.next().await;
        assert_eq!(resync.name, "resync");
        assert_eq!(resync.data["nodes"].as_array().unwrap().len(), 1);
}
}

crate::on_both_stores! {
    async fn snapshot_and_service_filter(server: TestServer) {
        register(&server, "a1", "alpha").await;
        register(&server, "b1", "beta").await;
        let mut watch = SseClient::open(&server.url("/v1/watch?snapshot=true&service=alpha")).await;
        let resync = watch.next().await;
        assert_eq!(resync.name, "resync");
        assert_eq!(
            resync.data["nodes"].as_array().unwrap().iter().map(|n| n["nodeId"].clone()).collect::<Vec<_>>(),
            [json!("a1")]
        );
        register(&server, "b2", "beta").await;
        register(&server, "a2", "alpha").await;
        assert_eq!(watch.next().await.data["node"]["nodeId"], "a2", "beta events are filtered out");
        // a1 stops providing alpha: its update still reaches alpha's watchers, then nothing more.
        client()
            .patch(server.url("/v1/nodes/a1"))
            .json(&json!({"services": [{"name": "beta"}]}))
            .send()
            .await
            .unwrap();
        let update = watch.next().await;
        assert_eq!((update.name.as_str(), update.data["node"]["nodeId"].clone()), ("updated", json!("a1")));
        client().patch(server.url("/v1/nodes/a1")).json(&json!({"address": "h:9"})).send().await.unwrap();
        assert!(watch.try_next(Duration::from_millis(300)).await.is_none());
        let response = client().get(server.url("/v1/watch?service=bad%20name")).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
        let response = client().get(server.url("/v1/watch")).header("last-event-id", "abc").send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
}
}

/// Every SSE client and blocking query of one server shares one upstream watch: on Redis, the
/// number of Redis connections does not grow with the number of watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_share_one_upstream_watch() {
    let server = TestServer::redis().await;
    let connections = || server.redis_server().cli(&["client", "list"]).lines().count() - 1;
    let mut first = SseClient::open(&server.url("/v1/watch")).await;
    register(&server, "warm-up", "api").await;
    assert_eq!(first.next().await.name, "registered");
    let before = connections();
    let mut watchers = Vec::new();
    for _ in 0..40 {
        watchers.push(SseClient::open(&server.url("/v1/watch?service=api")).await);
    }
    let index = first.next_revision_hint();
    let mut queries = Vec::new();
    for _ in 0..10 {
        let url = server.url(&format!("/v1/services/api/instances?index={index}&wait=20s"));
        queries.push(tokio::spawn(async move { client().get(url).send().await.unwrap().headers().clone() }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = connections();
    register(&server, "n1", "api").await;
    for watcher in &mut watchers {
        let event = watcher.next().await;
        assert_eq!((event.name.as_str(), event.data["node"]["nodeId"].clone()), ("registered", json!("n1")));
    }
    for query in queries {
        let headers = tokio::time::timeout(Duration::from_secs(5), query).await.expect("woken").unwrap();
        assert!(headers["x-muster-index"].to_str().unwrap().parse::<u64>().unwrap() > index);
    }
    assert!(during <= before, "{before} Redis connections with one watcher, {during} with 41 and 10 queries");
    assert!(before <= 4, "{before} Redis connections for one server");
}

/// Shutdown ends open watch streams and the server stops.
#[tokio::test]
async fn graceful_shutdown_closes_watchers() {
    let server = TestServer::memory().await;
    let mut watch = SseClient::open(&server.url("/v1/watch")).await;
    tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await.expect("stops promptly").unwrap();
    assert!(watch.try_next(Duration::from_secs(2)).await.is_none(), "the stream ended");
}
