//! The registry server over real sockets: every route, watch streams, blocking queries, the
//! seed-003 routes with their exact JSON, two servers sharing one Redis, graceful shutdown.

mod compat;
mod sse;
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
}

impl TestServer {
    pub(crate) async fn start(registry: Arc<dyn Registry>, config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let state = AppState::new(registry, config);
        let task = tokio::spawn(muster_server::run(listener, state, async move {
            let _ = stopped.await;
        }));
        Self { base, stop: Some(stop), task: Some(task) }
    }

    pub(crate) async fn memory() -> Self {
        Self::start(Arc::new(muster_memory::MemoryRegistry::new()), ServerConfig::default()).await
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

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::new()
}
