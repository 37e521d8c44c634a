//! The tokens this server knows — declared in its configuration and read from the store — by the
//! hash of their secret ([`Acl`]): reloaded when the store's generation changes (polled every
//! second, and asked at once when a request brings an unknown token, a burst of them costing one
//! read), installed atomically (`ArcSwap`), and changed through the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::HeaderMap;
use muster_api::ErrorCode;
use muster_core::acl::{Policy, TokenRecord, TokenStore};
use tokio_util::sync::CancellationToken;

use super::{AclConfig, Caller, OPEN, digest, digest_of_hex, invalid_token, presented_token};
use crate::ApiError;

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
    pub(super) config: AclConfig,
    anonymous: Arc<Caller>,
    pub(super) store: Option<Arc<dyn TokenStore>>,
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
pub(super) enum Presented {
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
    pub(super) async fn reload(&self) -> muster_core::Result<()> {
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
    pub(super) fn presented(&self, headers: &HeaderMap) -> Result<Presented, ApiError> {
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
    pub(super) async fn look_up(&self, hash: [u8; 32]) -> Result<Arc<Caller>, ApiError> {
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

    pub(super) fn store(&self) -> Result<&Arc<dyn TokenStore>, ApiError> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "this server keeps no tokens; declare them in its configuration",
            )
        })
    }
}
