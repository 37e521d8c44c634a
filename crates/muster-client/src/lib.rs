//! The HTTP client SDK of the registry server.
//!
//! - [`Client::register`] returns a [`Registration`] handle: an immediate heartbeat, then one every
//!   interval with the current status (changeable through the handle); registers again with the same
//!   id and spec when the server answers 404; retries failures with exponential backoff and jitter
//!   and never gives up while the handle lives; [`Registration::deregister`] (or
//!   [`Registration::deregister_on`] a shutdown signal) removes it; dropping the handle stops it.
//! - [`Client::instances`] answers from a local cache that one watch stream per client keeps
//!   current; when the registry is unreachable it serves the last known instances marked stale, and
//!   a failure never empties a non-empty list (see [`resolve`]).
//! - [`Client::call_with_failover`] tries the instances of a service in the order of a
//!   [`select::Selector`], skipping instances whose circuit breaker is open (see [`failover`]).
//! - [`ClientConfig::from_env`] reads the `SERVICE_REGISTRY_*`, `HOST` and `PORT` variables.
//!
//! ```no_run
//! use muster_client::{Client, ClientConfig, RegistrationSpec};
//! use muster_core::VersionQuery;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig::from_env()?;
//! let client = Client::with_config(config.clone())?;
//!
//! // Register this process; heartbeats run in the background until deregistration.
//! let spec = RegistrationSpec::from_config(&config).service("users", Some("1.2.0"));
//! let registration = client.register(spec).await?;
//!
//! // Discover another service from the watch-fed cache.
//! let auth = client.instances("auth", &VersionQuery::semver("^1")?).await?;
//! println!("{} auth instances (stale: {})", auth.instances.len(), auth.stale);
//!
//! // Call it with load balancing, failover and circuit breakers.
//! let body = client
//!     .call_with_failover("auth", |instance| async move {
//!         let response = reqwest::get(format!("{}/token", instance.url)).await?;
//!         response.error_for_status()?.text().await
//!     })
//!     .await?;
//! println!("{body}");
//!
//! // Deregister on Ctrl-C or SIGTERM.
//! registration.deregister_on(muster_client::shutdown_signal()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Layout: `lib.rs` — [`Client`] and its plain calls; `config.rs` — [`ClientConfig`];
//! `registration.rs` — registration handles; `resolve.rs` — the watched cache behind lookups;
//! `failover.rs` — calls with failover and circuit breakers; `remote.rs` — [`RemoteRegistry`], the
//! `Registry` contract over HTTP; `error.rs` — [`ClientError`].

mod config;
mod error;
pub mod failover;
mod registration;
mod remote;
pub mod resolve;
/// Load-balancing selectors (`muster-balance`'s).
pub use muster_balance::select;

use std::sync::Arc;
use std::time::Duration;

use muster_api::ErrorBody;
use muster_api::v1::{HeartbeatRequest, Instance, InstanceList, NodeList, RegisterResponse, ServiceList};
use muster_core::{NodeInfo, NodeStatus};
use reqwest::StatusCode;

use config::check_url;
pub use config::{ClientConfig, Token};
pub use error::{ClientError, Source};
pub use failover::{BreakerConfig, CircuitState, Failover, FailoverError, Retryable};
pub use registration::{Health, Registration, RegistrationSpec};
pub use remote::RemoteRegistry;
pub use resolve::{Resolved, WatchOptions};

/// Makes rustls's ring provider the process default, as every HTTP client of this crate does
/// before it is built; a program that builds its own `reqwest` clients beside Muster's calls it
/// first (a second call changes nothing).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A request builder with the client's settings: the token header, TLS roots and identity.
fn http_builder(config: &ClientConfig) -> Result<reqwest::ClientBuilder, ClientError> {
    install_tls_provider();
    let invalid = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        ClientError::InvalidInput(format!("{what} {}: {e}", path.display()))
    };
    let mut builder = reqwest::Client::builder();
    if let Some(token) = &config.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.secret()))
            .map_err(|_| ClientError::InvalidInput("the token holds characters a header cannot".into()))?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if let Some(path) = &config.ca_cert {
        let pem = std::fs::read(path).map_err(|e| invalid("CA certificate", path, &e))?;
        for cert in
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| invalid("CA certificate", path, &e))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(path) = &config.client_identity {
        let pem = std::fs::read(path).map_err(|e| invalid("client certificate", path, &e))?;
        builder = builder.identity(
            reqwest::Identity::from_pem(&pem).map_err(|e| invalid("client certificate", path, &e))?,
        );
    }
    Ok(builder)
}

/// A client of one registry server. Cheap to clone: clones share the connection pool, the resolver
/// cache with its one watch stream, and the circuit breakers.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `http://host:port[/prefix]`, without a trailing slash (for messages).
    base: String,
    /// The same, parsed once; paths are built from it segment by segment.
    base_url: reqwest::Url,
    /// The HTTP connection pool.
    http: reqwest::Client,
    /// For watches: no overall timeout; a connection silent for three of the server's keep-alive
    /// periods (15 s) is taken for dead.
    watch_http: reqwest::Client,
    config: ClientConfig,
    /// Started on first use of [`Client::instances`].
    resolver: tokio::sync::OnceCell<resolve::Resolver>,
    failover: failover::Failover,
}

impl Client {
    /// A client of the registry at `base_url` (e.g. `http://127.0.0.1:3100`), otherwise with the
    /// default settings.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::with_config(ClientConfig { registry_url: base_url.to_owned(), ..ClientConfig::default() })
    }

    /// A client with these settings.
    pub fn with_config(config: ClientConfig) -> Result<Self, ClientError> {
        Self::with_selector(config, Box::new(select::RoundRobin::default()))
    }

    /// A client whose [`Client::call_with_failover`] orders instances with `selector`.
    pub fn with_selector(
        config: ClientConfig,
        selector: Box<dyn select::Selector>,
    ) -> Result<Self, ClientError> {
        check_url(&config.registry_url).map_err(ClientError::InvalidInput)?;
        let base = config.registry_url.trim_end_matches('/').to_owned();
        let base_url = reqwest::Url::parse(&base)
            .ok()
            .filter(|url| !url.cannot_be_a_base() && url.query().is_none())
            .ok_or_else(|| {
                ClientError::InvalidInput(format!("{:?} is not a base URL", config.registry_url))
            })?;
        let http = http_builder(&config)?
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        let watch_http = http_builder(&config)?
            .connect_timeout(config.request_timeout)
            .read_timeout(Duration::from_secs(45))
            .build()
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        let failover = failover::Failover::new(selector, config.breaker.clone());
        let resolver = tokio::sync::OnceCell::new();
        Ok(Self { inner: Arc::new(Inner { base, base_url, http, watch_http, config, resolver, failover }) })
    }

    /// The registry's base URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded (a `/` in a service
    /// name or a `:` in an id stays inside its segment).
    pub(crate) fn url(&self, segments: &[&str]) -> reqwest::Url {
        endpoint(&self.inner.base_url, segments)
    }

    fn unreachable(&self, error: reqwest::Error) -> ClientError {
        transport_error(&self.inner.base, error)
    }

    /// An answer that is not the registry's JSON (another server on that port, a cut connection).
    fn unreadable(&self, error: reqwest::Error) -> ClientError {
        if error.is_timeout() || error.is_connect() {
            return self.unreachable(error);
        }
        let detail = error.to_string();
        ClientError::Unreadable { url: self.inner.base.to_string(), detail, source: Some(Arc::new(error)) }
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(|e| self.unreadable(e));
        }
        Err(api_error(status, response).await)
    }

    /// Registers `spec` once (no heartbeats, no retries); returns the server's answer.
    pub async fn register_once(
        &self,
        spec: &RegistrationSpec,
        status: NodeStatus,
    ) -> Result<RegisterResponse, ClientError> {
        let request = match &spec.id {
            Some(id) => self.inner.http.put(self.url(&["v1", "nodes", id])),
            None => self.inner.http.post(self.url(&["v1", "nodes"])),
        };
        self.send(request.json(&spec.request(status))).await
    }

    /// Sends one heartbeat.
    pub async fn heartbeat(&self, id: &str, status: NodeStatus) -> Result<(), ClientError> {
        let request = self
            .inner
            .http
            .put(self.url(&["v1", "nodes", id, "heartbeat"]))
            .json(&HeartbeatRequest { status: Some(status) });
        let _: serde_json::Value = self.send(request).await?;
        Ok(())
    }

    /// Removes a node; `false` when the registry did not know it (gone either way).
    pub async fn deregister(&self, id: &str) -> Result<bool, ClientError> {
        self.delete(&["v1", "nodes", id]).await
    }

    /// `DELETE` of the resource at `segments`: `false` when it did not exist.
    async fn delete(&self, segments: &[&str]) -> Result<bool, ClientError> {
        let response =
            self.inner.http.delete(self.url(segments)).send().await.map_err(|e| self.unreachable(e))?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(api_error(s, response).await),
        }
    }

    /// `POST /v1/acl/bootstrap`: the first admin token (once per registry).
    pub async fn acl_bootstrap(&self) -> Result<muster_api::acl::CreatedToken, ClientError> {
        self.send(self.inner.http.post(self.url(&["v1", "acl", "bootstrap"]))).await
    }

    /// `POST /v1/acl/tokens` (admin): a new token; the answer is the only place its secret appears.
    pub async fn create_token(
        &self,
        request: &muster_api::acl::CreateTokenRequest,
    ) -> Result<muster_api::acl::CreatedToken, ClientError> {
        self.send(self.inner.http.post(self.url(&["v1", "acl", "tokens"])).json(request)).await
    }

    /// `GET /v1/acl/tokens` (admin).
    pub async fn tokens(&self) -> Result<muster_api::acl::TokenList, ClientError> {
        self.send(self.inner.http.get(self.url(&["v1", "acl", "tokens"]))).await
    }

    /// `DELETE /v1/acl/tokens/{name}` (admin): `false` when there was no such token.
    pub async fn revoke_token(&self, name: &str) -> Result<bool, ClientError> {
        self.delete(&["v1", "acl", "tokens", name]).await
    }

    /// `GET /v1/acl/whoami`: the token this client sends, as the registry sees it.
    pub async fn whoami(&self) -> Result<muster_api::acl::WhoAmI, ClientError> {
        self.send(self.inner.http.get(self.url(&["v1", "acl", "whoami"]))).await
    }

    /// One node, or `None` when the registry does not know it.
    pub async fn node(&self, id: &str) -> Result<Option<NodeInfo>, ClientError> {
        match self.send(self.inner.http.get(self.url(&["v1", "nodes", id]))).await {
            Ok(node) => Ok(Some(node)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The active nodes (`all`: expired-but-still-stored ones too).
    pub async fn nodes(&self, all: bool) -> Result<NodeList, ClientError> {
        self.send(self.inner.http.get(self.url(&["v1", "nodes"])).query(&[("all", all)])).await
    }

    /// The services with their versions and instance counts.
    pub async fn services(&self) -> Result<ServiceList, ClientError> {
        self.send(self.inner.http.get(self.url(&["v1", "services"]))).await
    }

    /// The registry's readiness answer (`/ready`): `Ok` with its JSON when ready; a 503 `Api`
    /// error whose message says why when its store is unreachable.
    pub async fn ready(&self) -> Result<serde_json::Value, ClientError> {
        let response =
            self.inner.http.get(self.url(&["ready"])).send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| self.unreadable(e))?;
        if status.is_success() {
            return Ok(body);
        }
        let message = body.get("error").and_then(|e| e.as_str()).unwrap_or("not ready").to_owned();
        Err(ClientError::Api { status: status.as_u16(), code: "unavailable".to_owned(), message })
    }

    /// Asks the registry for the instances of `service` (no cache); `params` are the query
    /// parameters of `GET /v1/services/{name}/instances` (`version`, `versionReq`, `status`,
    /// `meta.<key>`).
    pub async fn fetch_instances(
        &self,
        service: &str,
        params: &[(&str, &str)],
    ) -> Result<Vec<Instance>, ClientError> {
        let request = self.inner.http.get(self.url(&["v1", "services", service, "instances"])).query(params);
        let list: InstanceList = self.send(request).await?;
        Ok(list.instances)
    }
}

/// `base` with `segments` appended, each percent-encoded.
pub(crate) fn endpoint(base: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// The kind of a failed request: no connection, no answer in time, or a connection that broke.
pub(crate) fn transport_error(base: &str, error: reqwest::Error) -> ClientError {
    let mut cause: &dyn std::error::Error = &error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let detail = cause.to_string();
    let url = base.to_owned();
    if error.is_timeout() {
        ClientError::Timeout { url, source: Some(Arc::new(error)) }
    } else if error.is_connect() {
        ClientError::Connect { url, detail, source: Some(Arc::new(error)) }
    } else {
        ClientError::Disconnected { url, detail, source: Some(Arc::new(error)) }
    }
}

async fn api_error(status: StatusCode, response: reqwest::Response) -> ClientError {
    let body: Option<ErrorBody> = response.json().await.ok();
    let (code, message) =
        body.map_or_else(|| ("unknown".to_owned(), String::new()), |b| (b.error.code, b.error.message));
    ClientError::Api { status: status.as_u16(), code, message }
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM: the usual moment to deregister.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests;
