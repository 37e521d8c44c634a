//! Access control: who the caller is ([`authenticate`]), what their token lets them do
//! ([`Caller`]), and the token routes under `/v1/acl`.
//!
//! - A token is a secret sent as `Authorization: Bearer <secret>` or `X-Muster-Token: <secret>`.
//!   The server keeps the SHA-256 of each secret and looks callers up by the hash of what they
//!   send, so no secret is ever compared (no timing side channel on the secret) or stored.
//! - Tokens come from the configuration (declared) and from the store ([`TokenStore`]: Redis,
//!   shared by every server on it, or the embedded store's data directory). The server keeps a copy,
//!   reloaded when the store's generation changes (checked every second and whenever a request
//!   brings an unknown token), and after its own changes. A token revoked
//!   on another server stops working here within about a second.
//! - With access control off every caller may do everything; `/health` and `/ready` are always
//!   open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Json;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use muster_api::ErrorCode;
use muster_api::acl::{CreateTokenRequest, CreatedToken, TOKEN_HEADER, TokenList, TokenView, WhoAmI};
use muster_core::acl::{Access, DefaultPolicy, Policy, Rule, TokenRecord, TokenStore};
use muster_core::{Address, Metadata, NodeId, NodeInfo, Registry, StoredServices};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiJson, Refused};
use crate::limits::{ClientKey, client_address, too_many};
use crate::{ApiError, AppState};

/// A token declared in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredToken {
    /// Its name.
    pub name: String,
    /// Lower-case hex SHA-256 of its secret (see [`hash_secret`]).
    pub secret_hash: String,
    /// What it grants.
    pub rules: Vec<Rule>,
}

/// Access-control settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclConfig {
    /// Whether tokens are checked at all.
    pub enabled: bool,
    /// What callers without a token may do.
    pub default_policy: DefaultPolicy,
    /// Whether `/metrics` answers without a token (otherwise it needs one that may read).
    pub public_metrics: bool,
    /// Whether `/openapi.json` answers without a token.
    pub public_openapi: bool,
    /// Tokens from the configuration.
    pub tokens: Vec<DeclaredToken>,
}

/// Lower-case hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex(&digest(secret))
}

/// The SHA-256 of a secret.
fn digest(secret: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref());
    out
}

/// The bytes of a hex SHA-256 as stored (validated by the store: 64 hex digits).
fn digest_of_hex(hash: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hash.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new secret: `mst_` and 256 random bits in hex.
pub(crate) fn new_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the system random source failed"))?;
    Ok(format!("mst_{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Who is asking, and what they may do.
#[derive(Debug)]
pub(crate) struct Caller {
    /// The token's name (`None`: anonymous, or access control off).
    name: Option<Arc<str>>,
    /// The token's rules.
    policy: Policy,
    /// Access control is off: everything is allowed.
    open: bool,
    /// SHA-256 of the token's secret (`None`: anonymous), to look it up again when tokens change.
    hash: Option<[u8; 32]>,
}

/// The caller of every request when access control is off.
static OPEN: std::sync::LazyLock<Arc<Caller>> = std::sync::LazyLock::new(|| {
    Arc::new(Caller { name: None, policy: Policy::default(), open: true, hash: None })
});

impl Caller {
    fn refused(&self, permission: &str) -> ApiError {
        match &self.name {
            None => ApiError::new(
                ErrorCode::Unauthorized,
                format!("this needs {permission}; send a token as `Authorization: Bearer <token>`"),
            ),
            Some(name) => {
                ApiError::new(ErrorCode::Forbidden, format!("token `{name}` does not grant {permission}"))
            }
        }
    }

    /// Whether every check passes (access control off, or an admin token).
    pub(crate) fn is_unrestricted(&self) -> bool {
        self.open || self.policy.is_admin()
    }

    /// Fails unless the caller may read something (lists are then filtered).
    pub(crate) fn require_some_read(&self) -> Result<(), ApiError> {
        if self.open || self.policy.may_read_some() { Ok(()) } else { Err(self.refused("read access")) }
    }

    /// Whether the caller may read `service`.
    pub(crate) fn may_read_service(&self, service: &str) -> bool {
        self.open || self.policy.may_read_service(service)
    }

    /// Fails unless the caller may read `service`.
    pub(crate) fn require_read_service(&self, service: &str) -> Result<(), ApiError> {
        if self.may_read_service(service) {
            Ok(())
        } else {
            Err(self.refused(&format!("read on service `{service}`")))
        }
    }

    /// Whether the caller may see `node`.
    pub(crate) fn may_read_node(&self, node: &NodeInfo) -> bool {
        self.open
            || self.policy.may_read_node(node.node_id.as_str(), node.services.iter().map(|s| s.name.as_str()))
    }

    /// Whether the caller may see an event about `node` that provided `previous` before.
    pub(crate) fn may_see_event(&self, event: &muster_core::DiscoveryEvent) -> bool {
        self.may_read_node(&event.node)
            || event.previous_services.as_ref().is_some_and(|before| {
                self.policy.may_read_node(event.node.node_id.as_str(), before.iter().map(|s| s.name.as_str()))
            })
    }

    /// Fails unless the caller may read `node`.
    pub(crate) fn require_read_node(&self, node: &NodeInfo) -> Result<(), ApiError> {
        if self.may_read_node(node) {
            Ok(())
        } else {
            Err(self.refused(&format!("read on node `{}`", node.node_id)))
        }
    }

    /// Fails unless the caller may write `service` on some node: checked before a write route looks
    /// anything up, so a refused caller learns nothing about what is stored.
    pub(crate) fn require_write_service(&self, service: &str) -> Result<(), ApiError> {
        if self.open || self.policy.may_write_service(service) {
            Ok(())
        } else {
            Err(self.refused(&format!("write on service `{service}`")))
        }
    }

    /// Fails unless the caller may write the node `id` providing `services`.
    pub(crate) fn require_write<'a>(
        &self,
        id: &str,
        services: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        if self.open {
            return Ok(());
        }
        self.policy.check_write(id, services).map_err(|missing| self.refused(&missing))
    }

    /// Fails unless the caller may write the node `id` with `services`, and — when it is stored —
    /// with the services it provides now (no taking over another service's node). Returns the
    /// stored node the decision read (also when `read_anyway`, for a check that needs it), for the
    /// write to carry as its condition; `None` when nothing was read.
    pub(crate) async fn require_write_stored<'a>(
        &self,
        registry: &dyn Registry,
        id: &NodeId,
        services: impl IntoIterator<Item = &'a str>,
        read_anyway: bool,
    ) -> Result<Option<Decision>, ApiError> {
        self.require_write(id.as_str(), services)?;
        let decides_alone = self.is_unrestricted() || self.policy.writes_any_service_of(id.as_str());
        if decides_alone && !read_anyway {
            return Ok(None);
        }
        let stored = registry.get(id).await?;
        if let Some(stored) = stored.as_ref().filter(|_| !decides_alone) {
            self.require_write(id.as_str(), stored.services.iter().map(|s| s.name.as_str()))?;
        }
        Ok(Some(Decision { stored }))
    }

    /// Writes `request` with the access decision on the stored node as its condition (see
    /// [`Caller::require_write_stored`]), deciding again — at most [`DECIDE_AGAIN`] times — when
    /// the store refuses it because the node changed in between. `write` may refuse on what the
    /// decision read before it writes. The request is copied only for an attempt that may be
    /// followed by another (never without a condition).
    pub(crate) async fn write_decided<R: Clone, T, F, Fut>(
        &self,
        registry: &dyn Registry,
        id: &NodeId,
        services: &[&str],
        read_anyway: bool,
        request: R,
        write: F,
    ) -> Result<T, ApiError>
    where
        F: Fn(R, Option<&Decision>) -> Result<Fut, ApiError>,
        Fut: std::future::Future<Output = muster_core::Result<T>>,
    {
        let mut request = Some(request);
        let mut attempt = 1;
        loop {
            let decision =
                self.require_write_stored(registry, id, services.iter().copied(), read_anyway).await?;
            let may_retry = decision.is_some() && attempt < DECIDE_AGAIN;
            let this = if may_retry { request.clone() } else { request.take() };
            let Some(this) = this else {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "a write was attempted after its last attempt",
                ));
            };
            match write(this, decision.as_ref())?.await {
                Err(error) if may_retry && error.kind() == muster_core::ErrorKind::Conflict => attempt += 1,
                other => return other.map_err(ApiError::from),
            }
        }
    }

    /// Fails unless the caller may have the registry probe where the health check in `metadata`
    /// points: the node's own host (at `address`) for any writer, another host only for an admin —
    /// so a writer cannot use the registry to scan the network.
    pub(crate) fn require_check_target(
        &self,
        address: &Address,
        metadata: &Metadata,
    ) -> Result<(), ApiError> {
        let Some(target) = metadata.get("check.target") else { return Ok(()) };
        if self.is_unrestricted() || Address::parse(target.as_str()).is_ok_and(|t| t.same_host(address)) {
            return Ok(());
        }
        Err(self.refused(&format!("admin access: a health check of {target}, not of the node's own host")))
    }

    /// Fails unless the caller holds an admin token.
    pub(crate) fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_unrestricted() { Ok(()) } else { Err(self.refused("admin access")) }
    }

    /// Logs a write made with a token: who (the token's name, never its secret), what, which node.
    /// Registrations, updates and removals at `info`; heartbeats, which only keep a node alive and
    /// arrive every few seconds from every node, at `debug`.
    pub(crate) fn audit(&self, action: &str, node_id: &str) {
        let Some(token) = &self.name else { return };
        if action == "heartbeat" {
            tracing::debug!(target: "muster::audit", token = %token, action, node_id, "write with a token");
        } else {
            tracing::info!(target: "muster::audit", token = %token, action, node_id, "write with a token");
        }
    }
}

/// What an access decision read of the stored node (see [`Caller::require_write_stored`]).
pub(crate) struct Decision {
    /// The node as stored then (`None`: there was none).
    stored: Option<NodeInfo>,
}

impl Decision {
    /// The node as the decision read it.
    pub(crate) fn stored(&self) -> Option<&NodeInfo> {
        self.stored.as_ref()
    }

    /// The write's condition: the node still provides what the decision saw.
    pub(crate) fn condition(&self) -> StoredServices {
        StoredServices::of(self.stored.as_ref())
    }
}

/// How many times a write decided on a stored node is decided again when the node changed in
/// between (the store refused it with `Conflict`).
pub(crate) const DECIDE_AGAIN: usize = 3;

/// The request's [`Caller`], as identified by [`authenticate`] (everything allowed when access
/// control is off).
pub(crate) struct Auth(pub(crate) Arc<Caller>);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<Arc<Caller>>().cloned().unwrap_or_else(|| Arc::clone(&OPEN))))
    }
}

/// The tokens a server knows, by the hash of their secret.
#[derive(Default)]
struct Known {
    /// The store's generation they were read at.
    generation: u64,
    /// SHA-256 of the secret → caller.
    by_hash: HashMap<[u8; 32], Arc<Caller>>,
}

/// The server's access control.
pub(crate) struct Acl {
    config: AclConfig,
    anonymous: Arc<Caller>,
    store: Option<Arc<dyn TokenStore>>,
    /// Declared and stored tokens.
    known: ArcSwap<Known>,
    /// Held while tokens are read again (one reload at a time).
    reloading: tokio::sync::Mutex<()>,
    /// The last read of the store failed: an unknown token may be a new one not read yet, so it
    /// answers 503 rather than 401 until the store answers again.
    stale: std::sync::atomic::AtomicBool,
    /// Bumped by every install of the tokens: open streams look at their caller again.
    installed: tokio::sync::watch::Sender<u64>,
    /// Hashes of tokens the store did not know at the current generation: asked about again, they
    /// cost no read until the generation changes (emptied by every install; bounded).
    misses: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    /// When the last check of the store's generation for an unknown token began: misses that
    /// arrived before it take its answer instead of reading again (one read for a burst).
    checked_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Most made-up tokens remembered as misses at one generation.
const MAX_MISSES: usize = 4096;

/// What the headers' token is, before any store read.
enum Presented {
    /// A caller known here (or the anonymous caller).
    Known(Arc<Caller>),
    /// A token not known here: the store must be asked (a read that the rate limit guards).
    Unknown([u8; 32]),
}

/// How often the store's generation is checked.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

impl Acl {
    pub(crate) fn new(config: AclConfig, store: Option<Arc<dyn TokenStore>>) -> Self {
        let anonymous = Arc::new(Caller {
            name: None,
            policy: Policy::new(config.default_policy.rules()),
            open: false,
            hash: None,
        });
        let acl = Self {
            anonymous,
            store,
            known: ArcSwap::from_pointee(Known::default()),
            reloading: tokio::sync::Mutex::new(()),
            stale: std::sync::atomic::AtomicBool::new(false),
            misses: std::sync::Mutex::default(),
            installed: tokio::sync::watch::Sender::new(0),
            checked_at: std::sync::Mutex::default(),
            config,
        };
        acl.install(0, Vec::new());
        acl
    }

    pub(crate) fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The caller of a request without a token (DNS queries): the default policy, or everything
    /// when access control is off.
    pub(crate) fn anonymous_caller(&self) -> Arc<Caller> {
        if self.enabled() { Arc::clone(&self.anonymous) } else { Arc::clone(&OPEN) }
    }

    fn install(&self, generation: u64, stored: Vec<TokenRecord>) {
        let mut by_hash = HashMap::new();
        for record in stored {
            let Some(hash) = digest_of_hex(&record.secret_hash) else { continue };
            let caller = Caller {
                name: Some(record.name.into()),
                policy: Policy::new(record.rules),
                open: false,
                hash: Some(hash),
            };
            by_hash.insert(hash, Arc::new(caller));
        }
        for declared in &self.config.tokens {
            if let Some(hash) = digest_of_hex(&declared.secret_hash) {
                let caller = Caller {
                    name: Some(declared.name.as_str().into()),
                    policy: Policy::new(declared.rules.clone()),
                    open: false,
                    hash: Some(hash),
                };
                by_hash.insert(hash, Arc::new(caller));
            }
        }
        self.known.store(Arc::new(Known { generation, by_hash }));
        self.misses.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        self.installed.send_modify(|n| *n += 1);
    }

    /// Why `caller` may no longer do what it was let in for: its token was revoked, or its rules
    /// changed (`None` while it stands, and always for the anonymous caller).
    fn withdrawn(&self, caller: &Caller) -> Option<ApiError> {
        let hash = caller.hash.as_ref()?;
        let name = caller.name.as_deref().unwrap_or_default();
        match self.known.load().by_hash.get(hash) {
            None => Some(ApiError::new(
                ErrorCode::Unauthorized,
                format!("token `{name}` was revoked; the stream ends"),
            )),
            Some(now) if now.policy != caller.policy => Some(ApiError::new(
                ErrorCode::Forbidden,
                format!("the rules of token `{name}` changed; the stream ends (reconnect to go on)"),
            )),
            Some(_) => None,
        }
    }

    /// Resolves when `caller`'s token is revoked or its rules change (looked at whenever the tokens
    /// are read again: at once on this server, within a second on the others); never for the
    /// anonymous caller. Open streams and blocking queries end on it.
    pub(crate) async fn withdrawal(&self, caller: &Caller) -> ApiError {
        let mut installed = self.installed.subscribe();
        loop {
            if let Some(error) = self.withdrawn(caller) {
                return error;
            }
            if installed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Reads every token from the store again.
    async fn reload(&self) -> muster_core::Result<()> {
        let Some(store) = &self.store else { return Ok(()) };
        let _one_at_a_time = self.reloading.lock().await;
        let (generation, tokens) = store.load().await.inspect_err(|_| self.set_stale(true))?;
        self.install(generation, tokens);
        self.set_stale(false);
        Ok(())
    }

    fn set_stale(&self, stale: bool) {
        self.stale.store(stale, std::sync::atomic::Ordering::Relaxed);
    }

    /// Called when a request brings an unknown token: asks the store whether tokens changed since
    /// the copy was read (one small read) and reloads them if so. Misses queue on one lock, and a
    /// miss that finds the token after waiting (another miss reloaded) reads nothing.
    async fn reload_for_miss(&self, hash: &[u8; 32]) {
        let Some(store) = &self.store else { return };
        let arrived = tokio::time::Instant::now();
        let _one_at_a_time = self.reloading.lock().await;
        if self.known.load().by_hash.contains_key(hash) {
            return;
        }
        {
            let mut checked_at = self.checked_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if checked_at.is_some_and(|at| at >= arrived) {
                // A check that began after this miss arrived has answered it already.
                return;
            }
            *checked_at = Some(tokio::time::Instant::now());
        }
        let changed = match store.generation().await {
            Ok(generation) => generation != self.known.load().generation,
            Err(error) => {
                self.set_stale(true);
                tracing::warn!(%error, "reading the ACL generation failed");
                return;
            }
        };
        if !changed {
            self.set_stale(false);
            return;
        }
        match store.load().await {
            Ok((generation, tokens)) => {
                self.install(generation, tokens);
                self.set_stale(false);
            }
            Err(error) => {
                self.set_stale(true);
                tracing::warn!(%error, "reading ACL tokens failed");
            }
        }
    }

    /// Follows the store's generation until `shutdown`.
    pub(crate) async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(store) = self.store.clone() else { return };
        if let Err(error) = self.reload().await {
            tracing::warn!(%error, "reading ACL tokens failed; retrying every second");
        }
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match store.generation().await {
                Ok(generation) if generation == self.known.load().generation => self.set_stale(false),
                Ok(_) => {
                    if let Err(error) = self.reload().await {
                        tracing::warn!(%error, "reading ACL tokens failed");
                    }
                }
                Err(error) => {
                    self.set_stale(true);
                    tracing::debug!(%error, "reading the ACL generation failed");
                }
            }
        }
    }

    /// The caller presenting `headers`, as far as it is known without reading the store.
    fn presented(&self, headers: &HeaderMap) -> Result<Presented, ApiError> {
        let Some(secret) = presented_token(headers)? else {
            return Ok(Presented::Known(Arc::clone(&self.anonymous)));
        };
        let hash = digest(secret);
        if let Some(caller) = self.known.load().by_hash.get(&hash) {
            return Ok(Presented::Known(Arc::clone(caller)));
        }
        let stale = self.stale.load(std::sync::atomic::Ordering::Relaxed);
        if !stale && self.misses.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&hash) {
            return Err(invalid_token());
        }
        Ok(Presented::Unknown(hash))
    }

    /// Asks the store about a token not known here (see [`Acl::reload_for_miss`]).
    async fn look_up(&self, hash: [u8; 32]) -> Result<Arc<Caller>, ApiError> {
        self.reload_for_miss(&hash).await;
        if let Some(caller) = self.known.load().by_hash.get(&hash) {
            return Ok(Arc::clone(caller));
        }
        if self.stale.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the token store does not answer, so this token cannot be checked; retry",
            ));
        }
        let mut misses = self.misses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if misses.len() >= MAX_MISSES {
            misses.clear();
        }
        misses.insert(hash);
        Err(invalid_token())
    }

    fn store(&self) -> Result<&Arc<dyn TokenStore>, ApiError> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "this server keeps no tokens; declare them in its configuration",
            )
        })
    }
}

fn invalid_token() -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, "the token is not valid (unknown, or revoked)")
}

/// The secret a request presents, if any: `Authorization: Bearer <secret>` or `X-Muster-Token`.
fn presented_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let malformed = || {
        ApiError::new(
            ErrorCode::Unauthorized,
            "send the token as `Authorization: Bearer <token>` or `X-Muster-Token`",
        )
    };
    let ambiguous = || {
        ApiError::new(
            ErrorCode::InvalidInput,
            "the request carries more than one token; send exactly one (`Authorization: Bearer <token>` or `X-Muster-Token`)",
        )
    };
    if headers.get_all(header::AUTHORIZATION).iter().nth(1).is_some()
        || headers.get_all(TOKEN_HEADER).iter().nth(1).is_some()
    {
        return Err(ambiguous());
    }
    let bearer = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let value = value.to_str().map_err(|_| malformed())?;
            let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(malformed());
            }
            Some(token.trim())
        }
        None => None,
    };
    let header_token = match headers.get(TOKEN_HEADER) {
        Some(value) => {
            Some(value.to_str().ok().map(str::trim).filter(|t| !t.is_empty()).ok_or_else(malformed)?)
        }
        None => None,
    };
    match (bearer, header_token) {
        (Some(a), Some(b)) if a != b => Err(ambiguous()),
        (a, b) => Ok(a.or(b)),
    }
}

/// Identifies the caller of every request (401 for an invalid token), applies the caller's rate
/// limit (by token name, else by address; an invalid token counts against the address), and guards
/// the routes whose access is a setting (`/metrics`, `/openapi.json`). Route handlers check the rest.
pub(crate) async fn authenticate<F, Fut>(state: &AppState, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    if matches!(request.uri().path(), "/health" | "/ready" | "/ui" | "/ui/" | "/") {
        return next(request).await;
    }
    let write = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !write || !state.inner.acl.enabled() {
        return authenticated(state, request, next).await.0;
    }
    // Shared, not copied: what the audit line of a refusal names.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let (response, token) = authenticated(state, request, next).await;
    // Refused writes are audited like the writes that go through: who, what, why — never a secret.
    if let Some(Refused(reason)) = response.extensions().get::<Refused>() {
        let token = token.as_deref().unwrap_or("anonymous");
        let path = uri.path();
        tracing::info!(target: "muster::audit", token, %method, path, status = response.status().as_u16(), %reason, "write refused");
    }
    response
}

/// [`authenticate`]'s work; also returns the caller's token name, when one was identified.
async fn authenticated<F, Fut>(
    state: &AppState,
    mut request: Request,
    next: F,
) -> (Response, Option<Arc<str>>)
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let acl = &state.inner.acl;
    let limiter = state.inner.limiter.as_ref();
    let by_address =
        |request: &Request| limiter.map_or(Ok(()), |l| l.check(&ClientKey::Address(client_address(request))));
    if !acl.enabled() {
        if let Err(wait) = by_address(&request) {
            return (too_many(wait), None);
        }
        return (next(request).await, None);
    }
    let presented = match acl.presented(request.headers()) {
        Ok(Presented::Known(caller)) => Ok(caller),
        // A token not known here costs a store read: the address's rate limit applies first, so a
        // flood of made-up tokens is limited before it reaches the store.
        Ok(Presented::Unknown(hash)) => match by_address(&request) {
            Err(wait) => return (too_many(wait), None),
            Ok(()) => acl.look_up(hash).await,
        },
        Err(error) => Err(error),
    };
    let caller = match presented {
        Ok(caller) => caller,
        Err(error) => {
            if let Err(wait) = by_address(&request) {
                return (too_many(wait), None);
            }
            return (error.into_response(), None);
        }
    };
    let token = caller.name.clone();
    let limited = match (&caller.name, limiter) {
        (_, None) => Ok(()),
        (Some(name), Some(limiter)) => limiter.check(&ClientKey::Token(Arc::clone(name))),
        (None, Some(_)) => by_address(&request),
    };
    if let Err(wait) = limited {
        return (too_many(wait), token);
    }
    let guarded = match request.uri().path() {
        "/metrics" if !acl.config.public_metrics => caller.require_some_read(),
        "/openapi.json" if !acl.config.public_openapi => caller.require_some_read(),
        _ => Ok(()),
    };
    if let Err(error) = guarded {
        return (error.into_response(), token);
    }
    request.extensions_mut().insert(caller);
    (next(request).await, token)
}

fn view(
    name: String,
    rules: Vec<Rule>,
    created_ms: u64,
    description: Option<String>,
    declared: bool,
) -> TokenView {
    TokenView { name, rules, created_ms, description, declared }
}

/// `POST /v1/acl/bootstrap`: the first admin token, once, when no token is stored yet.
#[utoipa::path(post, path = "/v1/acl/bootstrap", tag = "acl",
    responses((status = 201, description = "The first admin token (its secret is shown only now)", body = muster_api::acl::CreatedToken),
        (status = 409, description = "Bootstrap already happened, or access control is off", body = muster_api::ErrorBody),
        (status = 503, description = "The store is unreachable", body = muster_api::ErrorBody)))]
pub(crate) async fn bootstrap(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let acl = &state.inner.acl;
    if !acl.enabled() {
        return Err(ApiError::new(ErrorCode::Conflict, "access control is off; start the server with --acl"));
    }
    let rules = vec![Rule::everything(Access::Admin)];
    let created =
        create(&state, "bootstrap".into(), rules, Some("the first admin token".into()), true).await?;
    tracing::info!(target: "muster::audit", token = "bootstrap", "ACL bootstrap: the first admin token was created");
    Ok((StatusCode::CREATED, Json(created)))
}

async fn create(
    state: &AppState,
    name: String,
    rules: Vec<Rule>,
    description: Option<String>,
    only_if_empty: bool,
) -> Result<CreatedToken, ApiError> {
    let acl = &state.inner.acl;
    if acl.config.tokens.iter().any(|t| t.name == name) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("a token named `{name}` is declared in the configuration"),
        ));
    }
    let secret = new_secret()?;
    let record = TokenRecord {
        name,
        secret_hash: hash_secret(&secret),
        rules,
        created_ms: muster_core::time::now_ms(),
        description,
    };
    acl.store()?.create(&record, only_if_empty).await?;
    acl.reload().await?;
    Ok(CreatedToken {
        token: view(record.name, record.rules, record.created_ms, record.description, false),
        secret,
    })
}

/// `POST /v1/acl/tokens` (admin).
#[utoipa::path(post, path = "/v1/acl/tokens", tag = "acl", request_body = muster_api::acl::CreateTokenRequest,
    responses((status = 201, description = "Created (its secret is shown only now)", body = muster_api::acl::CreatedToken),
        (status = 401, description = "No valid token", body = muster_api::ErrorBody),
        (status = 403, description = "Not an admin token", body = muster_api::ErrorBody),
        (status = 409, description = "The name is taken", body = muster_api::ErrorBody),
        (status = 400, description = "Invalid input (the message names the field)", body = muster_api::ErrorBody),
        (status = 503, description = "The store is unreachable", body = muster_api::ErrorBody)))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    Auth(caller): Auth,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    caller.require_admin()?;
    muster_core::acl::validate_token_name(&request.name)?;
    let created = create(&state, request.name, request.rules, request.description, false).await?;
    if let Some(by) = &caller.name {
        tracing::info!(target: "muster::audit", token = %by, created = %created.token.name, "token created");
    }
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /v1/acl/tokens` (admin).
#[utoipa::path(get, path = "/v1/acl/tokens", tag = "acl",
    responses((status = 200, description = "Every token, without secrets", body = muster_api::acl::TokenList),
        (status = 401, description = "No valid token", body = muster_api::ErrorBody),
        (status = 403, description = "Not an admin token", body = muster_api::ErrorBody),
        (status = 503, description = "The store is unreachable", body = muster_api::ErrorBody)))]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    Auth(caller): Auth,
) -> Result<Json<TokenList>, ApiError> {
    caller.require_admin()?;
    let acl = &state.inner.acl;
    let mut tokens: Vec<TokenView> =
        acl.config.tokens.iter().map(|t| view(t.name.clone(), t.rules.clone(), 0, None, true)).collect();
    if let Some(store) = &acl.store {
        let (_, stored) = store.load().await?;
        tokens.extend(stored.into_iter().map(|t| view(t.name, t.rules, t.created_ms, t.description, false)));
    }
    tokens.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(TokenList { tokens }))
}

/// `DELETE /v1/acl/tokens/{name}` (admin): revokes a token.
#[utoipa::path(delete, path = "/v1/acl/tokens/{name}", tag = "acl", params(("name" = String, Path, description = "Token name")),
    responses((status = 204, description = "Revoked"),
        (status = 401, description = "No valid token", body = muster_api::ErrorBody),
        (status = 403, description = "Not an admin token", body = muster_api::ErrorBody),
        (status = 404, description = "No such token", body = muster_api::ErrorBody),
        (status = 409, description = "Declared in the configuration", body = muster_api::ErrorBody),
        (status = 503, description = "The store is unreachable", body = muster_api::ErrorBody)))]
pub(crate) async fn delete_token(
    State(state): State<AppState>,
    Auth(caller): Auth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let acl = &state.inner.acl;
    if acl.config.tokens.iter().any(|t| t.name == name) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("token `{name}` is declared in the configuration; remove it there"),
        ));
    }
    muster_core::acl::validate_token_name(&name)?;
    if !acl.store()?.delete(&name).await? {
        return Err(ApiError::not_found(format!("no token is named `{name}`")));
    }
    acl.reload().await?;
    if let Some(by) = &caller.name {
        tracing::info!(target: "muster::audit", token = %by, revoked = %name, "token revoked");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/acl/whoami`: the caller's token name and rules.
#[utoipa::path(get, path = "/v1/acl/whoami", tag = "acl",
    responses((status = 200, description = "The caller", body = muster_api::acl::WhoAmI),
        (status = 401, description = "An invalid token", body = muster_api::ErrorBody)))]
pub(crate) async fn whoami(State(state): State<AppState>, Auth(caller): Auth) -> Json<WhoAmI> {
    let rules =
        if caller.open { vec![Rule::everything(Access::Admin)] } else { caller.policy.rules().to_vec() };
    Json(WhoAmI { acl: state.inner.acl.enabled(), name: caller.name.as_deref().map(str::to_owned), rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_looked_up_by_their_digest() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with("mst_") && secret.len() == 4 + 64);
        assert_ne!(secret, new_secret().unwrap());
        let stored = hash_secret(&secret);
        assert_eq!(digest_of_hex(&stored), Some(digest(&secret)));
        assert_eq!(digest_of_hex("zz"), None);
        assert_eq!(digest_of_hex(&"g".repeat(64)), None);
        // A known vector: SHA-256("abc").
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn tokens_come_from_either_header_and_malformed_ones_are_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers).unwrap(), None);
        headers.insert(TOKEN_HEADER, "  mst_x ".parse().unwrap());
        assert_eq!(presented_token(&headers).unwrap(), Some("mst_x"));
        headers.insert(header::AUTHORIZATION, "bearer mst_x".parse().unwrap());
        assert_eq!(presented_token(&headers).unwrap(), Some("mst_x"), "the same token in both");
        headers.insert(header::AUTHORIZATION, "bearer mst_y".parse().unwrap());
        let ambiguous = presented_token(&headers).unwrap_err();
        assert_eq!(ambiguous.status(), axum::http::StatusCode::BAD_REQUEST, "two tokens: never first-wins");
        headers.remove(TOKEN_HEADER);
        assert_eq!(presented_token(&headers).unwrap(), Some("mst_y"));
        for bad in ["Basic abc", "Bearer", "Bearer   ", "mst_y"] {
            headers.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert!(presented_token(&headers).is_err(), "{bad}");
        }
    }
}
