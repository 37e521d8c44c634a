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
//!
//! Here: the settings, secrets' hashes, [`Caller`] and its decisions, and [`authenticate`];
//! `tokens.rs`: the tokens this server knows ([`Acl`]) and their reloads; `routes.rs`: the
//! `/v1/acl` routes.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use muster_api::ErrorCode;
use muster_api::acl::TOKEN_HEADER;
use muster_core::acl::{DefaultPolicy, Policy, Rule};
use muster_core::{Address, Metadata, NodeId, NodeInfo, Registry, StoredServices};

use crate::error::Refused;
use crate::limits::{ClientKey, client_address, too_many};
use crate::{ApiError, AppState};

pub(crate) mod routes;
mod tokens;

pub(crate) use tokens::Acl;
use tokens::Presented;

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
