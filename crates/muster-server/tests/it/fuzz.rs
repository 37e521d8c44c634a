//! Random and mutated requests over a real socket: bodies, query strings, paths and
//! `Last-Event-ID` headers. The server never answers 5xx to them, every refusal is a JSON error
//! body, a refused request changes nothing, and the server keeps serving.

use std::sync::Arc;

use muster_core::Registry;
use muster_memory::MemoryRegistry;
use muster_server::ServerConfig;
use muster_testkit::fuzz::mutated;
use proptest::prelude::*;

use crate::TestServer;

const REGISTER: &str = r#"{"address":"10.0.0.1:80","services":[{"name":"users","version":"1.2.0","weight":2}],"metadata":{"zone":"a"},"ttlMs":60000,"check":{"type":"tcp","intervalMs":1000}}"#;
const COMPAT: &str = r#"{"name":"users","version":"1.2.0","host":"10.0.0.1","port":80,"metadata":{"a":"b"}}"#;

#[derive(Debug, Clone)]
struct Request {
    method: reqwest::Method,
    path: String,
    body: Option<String>,
    last_event_id: Option<String>,
}

fn request() -> impl Strategy<Value = Request> {
    let methods = prop::sample::select(vec![
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::POST,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ]);
    let paths = prop_oneof![
        Just("/v1/nodes/n1".to_owned()),
        Just("/v1/nodes".to_owned()),
        Just("/v1/nodes/n1/heartbeat".to_owned()),
        Just("/register".to_owned()),
        Just("/heartbeat".to_owned()),
        mutated(
            "/v1/services/users/instances?version=1.2.0&versionReq=^1&status=UP&meta.zone=a&wait=10ms&index=1"
        ),
        mutated("/resolve/users?version=^1"),
        mutated("/v1/nodes?all=true"),
        "/[a-z0-9/?=&%._-]{0,40}",
    ];
    let bodies = prop_oneof![
        Just(None),
        mutated(REGISTER).prop_map(Some),
        mutated(COMPAT).prop_map(Some),
        mutated(r#"{"status":"DOWN","services":[{"name":"a"}],"address":"h:1"}"#).prop_map(Some),
        any::<String>().prop_map(Some),
    ];
    let ids =
        prop_oneof![Just(None), mutated("1796190846860000").prop_map(Some), "[ -~]{0,24}".prop_map(Some)];
    (methods, paths, bodies, ids).prop_map(|(method, path, body, last_event_id)| Request {
        method,
        // A mutation that drops the leading slash could make the rest read as the URL's authority
        // (`V@v` → host `v`): the request must still go to this server.
        path: if path.starts_with('/') { path } else { format!("/{path}") },
        body,
        last_event_id,
    })
}

#[test]
fn random_requests_get_clear_answers_and_change_nothing_when_refused() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let registry = runtime.block_on(async { MemoryRegistry::new() });
    let server = runtime.block_on(TestServer::start(Arc::new(registry.clone()), ServerConfig::default()));
    let http = crate::client();
    let config = ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(request in request())| {
        runtime.block_on(async {
            let before = registry.current_revision().await.unwrap();
            let mut builder = http.request(request.method.clone(), server.url(&request.path));
            if let Some(body) = &request.body {
                builder = builder.header("content-type", "application/json").body(body.clone());
            }
            if let Some(id) = &request.last_event_id
                && let Ok(value) = reqwest::header::HeaderValue::from_str(id)
            {
                builder = builder.header("last-event-id", value);
            }
            // A watch stays open: only its head is read.
            let response = match tokio::time::timeout(std::time::Duration::from_secs(5), builder.send()).await
                .expect("an answer in time")
            {
                Ok(response) => response,
                // Not a request HTTP can carry (a mutated URL): nothing was sent.
                Err(error) if error.is_builder() => return Ok(()),
                Err(error) => panic!("{request:?}: the server did not answer: {error}"),
            };
            let status = response.status();
            prop_assert!(status.as_u16() < 500, "{request:?} answered {status}");
            if status.is_client_error() && status != reqwest::StatusCode::METHOD_NOT_ALLOWED {
                let body: serde_json::Value = tokio::time::timeout(std::time::Duration::from_secs(5), response.json())
                    .await.unwrap().unwrap_or_else(|e| panic!("{request:?} {status}: not JSON: {e}"));
                prop_assert!(body.get("error").is_some(), "{request:?}: {body}");
                prop_assert_eq!(registry.current_revision().await.unwrap(), before, "a refused request changed nothing: {:?}", request);
            }
            Ok(())
        })?;
    });
    let health = runtime.block_on(async { http.get(server.url("/health")).send().await.unwrap().status() });
    assert!(health.is_success(), "still serving");
}
