//! Client settings: the defaults of the registry SDK's documentation, its `SERVICE_REGISTRY_*`
//! environment variables (read when the application asks, with `ClientConfig::from_env`), and the
//! bearer token kept out of logs.

use super::*;

/// Client settings. [`ClientConfig::default`] has the defaults of the registry SDK's documentation;
/// [`ClientConfig::from_env`] reads its environment variables.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `SERVICE_REGISTRY_URL` (default `http://127.0.0.1:3100`, where `muster serve` listens).
    pub registry_url: String,
    /// `SERVICE_REGISTRY_HEARTBEAT_INTERVAL` in milliseconds (default 30,000).
    pub heartbeat_interval: Duration,
    /// `SERVICE_REGISTRY_RETRY_DELAY` in milliseconds: the first retry delay (default 10,000).
    pub retry_delay: Duration,
    /// `SERVICE_REGISTRY_MAX_RETRIES` (default 5): how many times the delay doubles, and how many
    /// times a first registration is retried before [`Client::register`] gives up.
    pub max_retries: u32,
    /// `HOST`: this service's host name (default `localhost`).
    pub host: String,
    /// `PORT`: this service's port (default 3000).
    pub port: u16,
    /// Timeout of one HTTP request to the registry (default 10 s).
    pub request_timeout: Duration,
    /// How long a service's last non-empty instance list outlives a resync that would empty it
    /// (default 90 s, the default TTL). See [`resolve`].
    pub empty_protection: Duration,
    /// Circuit breakers of [`Client::call_with_failover`].
    pub breaker: BreakerConfig,
    /// `MUSTER_TOKEN`: the ACL token sent with every request (`Authorization: Bearer`).
    pub token: Option<Token>,
    /// `MUSTER_CA_CERT`: a PEM file of certificate authorities trusted for `https://` besides the
    /// system's roots.
    pub ca_cert: Option<std::path::PathBuf>,
    /// `MUSTER_CLIENT_CERT`: a PEM file with this client's certificate chain and private key, for
    /// registries that require mutual TLS.
    pub client_identity: Option<std::path::PathBuf>,
}

/// An ACL token: sent with requests, never printed (its `Debug` shows `Token(..)`).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from its secret (surrounding white space removed).
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into().trim().to_owned())
    }

    /// The secret.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            registry_url: muster_api::DEFAULT_REGISTRY_URL.to_owned(),
            heartbeat_interval: Duration::from_secs(30),
            retry_delay: Duration::from_secs(10),
            max_retries: 5,
            host: "localhost".to_owned(),
            port: 3000,
            request_timeout: Duration::from_secs(10),
            empty_protection: Duration::from_secs(90),
            breaker: BreakerConfig::default(),
            token: None,
            ca_cert: None,
            client_identity: None,
        }
    }
}

impl ClientConfig {
    /// The defaults overridden by the process environment.
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The defaults overridden by `lookup` (a variable name to its value); every value is checked.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ClientError> {
        fn parse<T: std::str::FromStr>(name: &str, value: &str, what: &str) -> Result<T, ClientError> {
            value
                .trim()
                .parse()
                .map_err(|_| ClientError::InvalidInput(format!("{name}={value:?} is not {what}")))
        }
        let millis = |name: &str, value: &str| -> Result<Duration, ClientError> {
            let ms: u64 = parse(name, value, "a number of milliseconds")?;
            if ms == 0 {
                return Err(ClientError::InvalidInput(format!("{name} must be above 0")));
            }
            Ok(Duration::from_millis(ms))
        };
        let mut config = Self::default();
        if let Some(url) = lookup("SERVICE_REGISTRY_URL") {
            check_url(&url).map_err(|m| ClientError::InvalidInput(format!("SERVICE_REGISTRY_URL: {m}")))?;
            config.registry_url = url;
        }
        if let Some(v) = lookup("SERVICE_REGISTRY_HEARTBEAT_INTERVAL") {
            config.heartbeat_interval = millis("SERVICE_REGISTRY_HEARTBEAT_INTERVAL", &v)?;
        }
        if let Some(v) = lookup("SERVICE_REGISTRY_RETRY_DELAY") {
            config.retry_delay = millis("SERVICE_REGISTRY_RETRY_DELAY", &v)?;
        }
        if let Some(v) = lookup("SERVICE_REGISTRY_MAX_RETRIES") {
            config.max_retries = parse("SERVICE_REGISTRY_MAX_RETRIES", &v, "a whole number")?;
        }
        if let Some(v) = lookup("HOST") {
            if v.trim().is_empty() {
                return Err(ClientError::InvalidInput("HOST is empty".to_owned()));
            }
            config.host = v.trim().to_owned();
        }
        if let Some(v) = lookup("PORT") {
            config.port = parse("PORT", &v, "a port (1-65535)")?;
            if config.port == 0 {
                return Err(ClientError::InvalidInput("PORT must be 1-65535".to_owned()));
            }
        }
        config.token = lookup("MUSTER_TOKEN").filter(|t| !t.trim().is_empty()).map(Token::new);
        config.ca_cert = lookup("MUSTER_CA_CERT").filter(|p| !p.is_empty()).map(Into::into);
        config.client_identity = lookup("MUSTER_CLIENT_CERT").filter(|p| !p.is_empty()).map(Into::into);
        Ok(config)
    }
}

pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{url:?} is not an http:// or https:// URL"))
    }
}
