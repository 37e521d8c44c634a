//! The registry server over real sockets: every route, watch streams, blocking queries, the
//! seed-003 routes with their exact JSON, two servers sharing one Redis, graceful shutdown.

mod acl;
mod checks;
mod compat;
mod dns;
mod fuzz;
mod history;
mod hostile;
mod promises;
mod sse;
mod tls;
mod ui;
mod v1;

use std::sync::Arc;

use muster_core::Registry;
use muster_server::{AppState, ServerConfig};
use tokio::sync::oneshot;

/// A server on a free loopback port, stopped on drop.
pub(crate) struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub(crate) base: String,
    /// Stops the server.
    stop: Option<oneshot::Sender<()>>,
    /// The server task.
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The Redis server behind it, if any (killed on drop).
    _redis: Option<muster_testkit::redis_server::RedisServer>,
}

impl TestServer {
    pub(crate) async fn start(registry: Arc<dyn Registry>, config: ServerConfig) -> Self {
        Self::serve(AppState::new(registry, config)).await
    }

    /// A server of `state` (plain HTTP unless its settings name TLS files).
    pub(crate) async fn serve(state: AppState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if state.tls_enabled() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(muster_server::run(listener, state, async move {
            let _ = stopped.await;
        }));
        Self { base, stop: Some(stop), task: Some(task), _redis: None }
    }

    pub(crate) async fn memory() -> Self {
        Self::start(Arc::new(muster_memory::MemoryRegistry::new()), ServerConfig::default()).await
    }

    /// A server on a fresh redis-server of its own.
    pub(crate) async fn redis() -> Self {
        Self::redis_with(ServerConfig::default()).await
    }

    /// [`TestServer::redis`] with settings.
    pub(crate) async fn redis_with(config: ServerConfig) -> Self {
        let redis = muster_testkit::redis_server::RedisServer::start().await;
        let registry = muster_redis::RedisRegistry::connect_url(&redis.url()).await.unwrap();
        let mut server = Self::start(Arc::new(registry), config).await;
        server._redis = Some(redis);
        server
    }

    /// A server on the embedded store with settings.
    pub(crate) async fn memory_with(config: ServerConfig) -> Self {
        Self::start(Arc::new(muster_memory::MemoryRegistry::new()), config).await
    }

    /// The Redis server behind a [`TestServer::redis`].
    pub(crate) fn redis_server(&self) -> &muster_testkit::redis_server::RedisServer {
        self._redis.as_ref().expect("a server on Redis")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Begins a graceful shutdown and waits for the server to finish.
    pub(crate) async fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs an async test body once on the embedded store and once on Redis, as two tests; `with
/// memory = ..., redis = ...;` names other servers to start (paths relative to the test's module).
#[macro_export]
macro_rules! on_both_stores {
    (with memory = $memory:expr, redis = $redis:expr; $($(#[$meta:meta])* async fn $name:ident($server:ident: TestServer) $body:block)*) => {
        $(
            $(#[$meta])*
            async fn $name($server: $crate::TestServer) $body

            mod $name {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    super::$name($memory).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    super::$name($redis).await;
                }
            }
        )*
    };
    ($($(#[$meta:meta])* async fn $name:ident($server:ident: TestServer) $body:block)*) => {
        $crate::on_both_stores! {
            with memory = $crate::TestServer::memory().await, redis = $crate::TestServer::redis().await;
            $($(#[$meta])* async fn $name($server: TestServer) $body)*
        }
    };
}

pub(crate) fn client() -> reqwest::Client {
    muster_client::install_tls_provider();
    reqwest::Client::new()
}

/// Sends `method path` with `body` as JSON (none when `Null`); returns the status and the JSON
/// answer (`Null` when there is none).
pub(crate) async fn send(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut request = client().request(method, server.url(path));
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap_or(serde_json::Value::Null))
}
