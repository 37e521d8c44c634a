//! `muster serve`: its flags ([`ServeArgs`]), their validation, the mapping onto the server's and
//! the store's settings, and the run itself (the store, the listener, DNS, the shutdown).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use muster_core::Registry;
use muster_server::{AppState, ServerConfig};

use crate::settings::preset;
use crate::{init_logging, shutdown_signal};

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// A TOML file of settings, named as the flags without dashes (`listen = "0.0.0.0:3100"`,
    /// `default-ttl = "20s"`). Flags and environment variables take precedence.
    #[arg(long, env = "MUSTER_CONFIG")]
    pub(crate) config: Option<std::path::PathBuf>,
    /// Address to listen on: `host:port`, the host an IP address or a name (`localhost:3216`).
    /// The default accepts connections from this machine only; `0.0.0.0:3100` (or `[::]:3100`)
    /// listens on every interface, as a container needs. Alias: `PORT` (keeps the host).
    #[arg(long, env = "MUSTER_LISTEN", default_value = muster_api::DEFAULT_LISTEN, value_parser = listen_address)]
    pub(crate) listen: String,
    /// Store the registry in Redis instead of in memory: `redis://host:6379/0`, `rediss://...`,
    /// `redis+sentinel://h1:26379,h2:26379/mymaster`, `redis+cluster://h1:7000,h2:7001`.
    #[arg(long, env = "MUSTER_REDIS")]
    pub(crate) redis: Option<String>,
    /// Keep the embedded store's registrations across restarts in this directory (a snapshot
    /// written at most once a second after changes, and at shutdown).
    #[arg(long, env = "MUSTER_DATA_DIR")]
    pub(crate) data_dir: Option<std::path::PathBuf>,
    /// Self-preservation of the embedded store, off by default: with a share such as 0.85, when
    /// fewer heartbeats arrive over a minute than that share of those expected (every node three
    /// times per TTL; at least 10 nodes), expiry pauses for at most 5 minutes — a network cut is
    /// likelier than that many crashes. Each node held back is logged and counted
    /// (`muster_self_preservation_held_back`). 0 turns it off.
    #[arg(long, env = "MUSTER_SELF_PRESERVATION", default_value_t = 0.0)]
    pub(crate) self_preservation: f64,
    /// The kind of fleet sharing the Redis: `titan` (prefix `titan:discovery`, pub/sub off) or
    /// `netron` (prefix `netron:discovery`, channel `netron:discovery:events`, pub/sub on).
    #[arg(long, env = "MUSTER_PRESET", default_value = "titan", value_parser = preset)]
    pub(crate) preset: muster_core::Preset,
    /// Redis key prefix (Titan's `redisPrefix`; default: the preset's).
    #[arg(long, env = "MUSTER_PREFIX")]
    pub(crate) prefix: Option<String>,
    /// Publish events on the Titan pub/sub channel, as Titan nodes do (Redis only; on with the
    /// netron preset).
    #[arg(long, env = "MUSTER_PUBSUB", default_value_t = false, action = clap::ArgAction::Set,
        num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub(crate) pubsub: bool,
    /// The pub/sub channel (Titan's `pubSubChannel`; default: the preset's).
    #[arg(long, env = "MUSTER_PUBSUB_CHANNEL")]
    pub(crate) pubsub_channel: Option<String>,
    /// With pub/sub on, publish `NODE_UPDATED` for every heartbeat of a node, as Titan does
    /// (`false`: only for changes).
    #[arg(long, env = "MUSTER_HEARTBEAT_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) heartbeat_events: bool,
    /// Acknowledge a write only once this many Redis replicas have it (`WAIT`; 0: off). With
    /// Sentinel or Cluster, 1 keeps every acknowledged registration and deregistration through a
    /// failover; a write that reaches fewer replicas in time answers 503 (repeat it).
    #[arg(long, env = "MUSTER_REDIS_REPLICA_ACKS", default_value_t = 0)]
    pub(crate) redis_replica_acks: u32,
    /// How long a write waits for `--redis-replica-acks` replicas.
    #[arg(long, env = "MUSTER_REDIS_REPLICA_ACK_TIMEOUT", default_value = "500ms", value_parser = duration)]
    pub(crate) redis_replica_ack_timeout: Duration,
    /// TTL of nodes registered through /v1 without one (e.g. 15s, 500ms).
    #[arg(long, env = "MUSTER_DEFAULT_TTL", default_value = "15s", value_parser = duration)]
    pub(crate) default_ttl: Duration,
    /// TTL of instances registered through the seed-003 routes. Alias: `HEARTBEAT_TIMEOUT_SECONDS`.
    #[arg(long, env = "MUSTER_COMPAT_TTL", default_value = "10s", value_parser = duration)]
    pub(crate) compat_ttl: Duration,
    /// Reported by /stats as the cleanup interval (expiry itself is immediate). Alias:
    /// `CLEANUP_INTERVAL_SECONDS`.
    #[arg(long, env = "MUSTER_CLEANUP_INTERVAL", default_value = "5s", value_parser = duration)]
    pub(crate) cleanup_interval: Duration,
    /// Most active instances of one service; more registrations answer 409. Alias:
    /// `MAX_INSTANCES_PER_SERVICE`.
    #[arg(long, env = "MUSTER_MAX_INSTANCES_PER_SERVICE", default_value_t = 1000)]
    pub(crate) max_instances_per_service: usize,
    /// Comma-separated origins allowed by CORS. Alias: `ALLOWED_ORIGINS`.
    #[arg(
        long,
        env = "MUSTER_ALLOWED_ORIGINS",
        default_value = "http://localhost:3000,http://localhost:8080"
    )]
    pub(crate) allowed_origins: String,
    /// Largest accepted request body in bytes; larger requests answer 413.
    #[arg(long, env = "MUSTER_BODY_LIMIT", default_value_t = 65536)]
    pub(crate) body_limit: usize,
    /// Time a client has to send a request's headers, counted from when its connection opens or
    /// goes idle after a response (so also the keep-alive idle timeout); slower connections close.
    #[arg(long, env = "MUSTER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub(crate) header_read_timeout: Duration,
    /// Time a client has to send a request's body; slower requests answer 408.
    #[arg(long, env = "MUSTER_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub(crate) request_timeout: Duration,
    /// Longest `wait` of a blocking query; longer ones are cut to it.
    #[arg(long, env = "MUSTER_MAX_WAIT", default_value = "5m", value_parser = duration)]
    pub(crate) max_wait: Duration,
    /// Most open client connections; further ones are closed at once.
    #[arg(long, env = "MUSTER_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub(crate) max_connections: usize,
    /// Log format.
    #[arg(long, env = "MUSTER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,
    /// Log level: error, warn, info (registrations, deregistrations, expiries, self-preservation),
    /// debug (also heartbeats and resolutions), trace; or tracing directives
    /// (`info,muster_redis=debug`). `RUST_LOG`, when set, takes precedence.
    #[arg(long, env = "MUSTER_LOG_LEVEL", default_value = "info", value_parser = log_level)]
    pub(crate) log_level: String,
    /// Access control: every request is checked against its token (`Authorization: Bearer ...` or
    /// `X-Muster-Token`); create the first admin token with `muster acl bootstrap`.
    #[arg(long, env = "MUSTER_ACL", default_value_t = false, action = clap::ArgAction::Set,
        num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub(crate) acl: bool,
    /// With --acl, what requests without a token may do: `deny` (nothing), `read` (discovery
    /// only) or `allow` (everything but token management).
    #[arg(long, env = "MUSTER_ACL_DEFAULT_POLICY", default_value = "deny", value_parser = ["deny", "read", "allow"])]
    pub(crate) acl_default_policy: String,
    /// With --acl, answer /metrics without a token (otherwise a token that may read is needed).
    #[arg(long, env = "MUSTER_PUBLIC_METRICS", default_value_t = false, action = clap::ArgAction::Set,
        num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub(crate) public_metrics: bool,
    /// With --acl, answer /openapi.json without a token.
    #[arg(long, env = "MUSTER_PUBLIC_OPENAPI", default_value_t = true, action = clap::ArgAction::Set,
        num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub(crate) public_openapi: bool,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key); reloaded when the file changes.
    #[arg(long, env = "MUSTER_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "MUSTER_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<std::path::PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by a CA in this PEM file.
    #[arg(long, env = "MUSTER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<std::path::PathBuf>,
    /// Requests per second one client may send (by token name, else by IP address); more answer
    /// 429 with Retry-After. 0 turns the limit off.
    #[arg(long, env = "MUSTER_RATE_LIMIT", default_value_t = 0)]
    pub(crate) rate_limit: u32,
    /// Requests one client may send at once after a quiet spell (default: the rate limit).
    #[arg(long, env = "MUSTER_RATE_BURST", default_value_t = 0)]
    pub(crate) rate_burst: u32,
    /// Comma-separated host names requests may be addressed to (the Host header, without the
    /// port); others answer 421. `auto`: localhost, 127.0.0.1 and `[::1]` when listening on loopback
    /// (a web page cannot reach the registry by rebinding its DNS name), any host otherwise; `*`: any.
    #[arg(long, env = "MUSTER_ALLOWED_HOSTS", default_value = "auto")]
    pub(crate) allowed_hosts: String,
    /// Answer DNS queries on this `ip:port` (UDP and TCP): `<service>.service.muster.` A/AAAA,
    /// `_<service>._tcp.service.muster.` SRV, `<node-id>.node.muster.`. Off when absent.
    #[arg(long, env = "MUSTER_DNS")]
    pub(crate) dns: Option<std::net::SocketAddr>,
    /// The DNS zone answered.
    #[arg(long, env = "MUSTER_DNS_DOMAIN", default_value = "muster.")]
    pub(crate) dns_domain: String,
    /// The TTL of DNS answers, in seconds.
    #[arg(long, env = "MUSTER_DNS_TTL", default_value_t = 5)]
    pub(crate) dns_ttl: u32,
    /// Print every setting as it would be used (flags > MUSTER_* > --config file > defaults) and
    /// exit without serving.
    #[arg(long)]
    pub(crate) check_config: bool,
}

/// `host:port` with a port number and a host (a name, an IPv4 address or a bracketed IPv6 one).
fn listen_address(text: &str) -> Result<String, String> {
    let (host, port) =
        text.rsplit_once(':').ok_or("expected host:port, like 127.0.0.1:3100 or localhost:3100")?;
    port.parse::<u16>().map_err(|_| format!("{port:?} is not a port number"))?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let valid = match bare {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && !host.contains(':'),
    };
    if !valid {
        return Err(format!("{host:?} is not a host (IPv6 addresses go in brackets: [::1]:3100)"));
    }
    Ok(text.to_owned())
}

fn log_level(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("{e} (expected error, warn, info, debug, trace or tracing directives)"))
}

pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    muster_api::parse_duration(text)
}

pub(crate) fn validate(args: &ServeArgs) -> Result<(), String> {
    if args.data_dir.is_some() && args.redis.is_some() {
        return Err("--data-dir applies to the embedded store only; Redis keeps its own data".into());
    }
    for (name, ttl) in [("--default-ttl", args.default_ttl), ("--compat-ttl", args.compat_ttl)] {
        muster_core::node::validate_ttl(ttl).map_err(|e| format!("{name}: {}", e.message()))?;
    }
    if !(0.0..=1.0).contains(&args.self_preservation) {
        return Err("--self-preservation must be a share between 0 and 1 (0 turns it off)".into());
    }
    if args.max_instances_per_service == 0 {
        return Err("--max-instances-per-service must be at least 1".into());
    }
    if args.header_read_timeout < Duration::from_millis(100)
        || args.request_timeout < Duration::from_millis(100)
    {
        return Err("--header-read-timeout and --request-timeout must be at least 100ms".into());
    }
    if args.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    if args.body_limit < 1024 {
        return Err("--body-limit must be at least 1024 bytes".into());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = muster_server::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        };
        muster_server::check_tls(&tls).map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    }
    Ok(())
}

/// Runs the server with the flags and the tokens the `--config` file declared (read with them).
pub(crate) async fn serve(
    args: ServeArgs,
    declared: Vec<muster_server::DeclaredToken>,
) -> anyhow::Result<()> {
    init_logging(&args.log_format, &args.log_level);
    let memory_options = muster_memory::MemoryOptions {
        self_preservation: (args.self_preservation > 0.0).then(|| muster_memory::SelfPreservation {
            threshold: args.self_preservation,
            ..muster_memory::SelfPreservation::default()
        }),
        ..muster_memory::MemoryOptions::default()
    };
    type Tokens = Arc<dyn muster_core::acl::TokenStore>;
    let (registry, store, tokens): (Arc<dyn Registry>, String, Tokens) = match &args.redis {
        None => match &args.data_dir {
            None => (
                Arc::new(muster_memory::MemoryRegistry::with_options(memory_options)),
                "embedded memory".to_owned(),
                Arc::new(muster_memory::LocalTokenStore::in_memory()),
            ),
            Some(dir) => {
                let registry = muster_memory::MemoryRegistry::open(
                    memory_options,
                    muster_memory::PersistOptions::new(dir),
                )
                .await
                .context("--data-dir")?;
                let tokens = muster_memory::LocalTokenStore::open(dir).await.context("--data-dir")?;
                (
                    Arc::new(registry),
                    format!("embedded memory, persisted in {}", dir.display()),
                    Arc::new(tokens),
                )
            }
        },
        Some(url) => {
            let config = redis_config(&args, url)?;
            let registry = muster_redis::RedisRegistry::connect(config)
                .await
                .with_context(|| format!("cannot use Redis at {url}"))?;
            let tokens = Arc::new(registry.token_store());
            (Arc::new(registry), format!("redis ({url})"), tokens)
        }
    };
    let config = server_config(&args, declared)?;
    let listener = tokio::net::TcpListener::bind(args.listen.as_str())
        .await
        .with_context(|| format!("cannot listen on {} (is another server running there?)", args.listen))?;
    let address = listener.local_addr()?;
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{address}");
    {
        // Written, not printed: a closed stdout must not take the server down.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "muster {} serving on {base} (store: {store})", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(out, "  dashboard: {base}/ui");
        let _ = writeln!(out, "  API:     {base}/v1/nodes  {base}/v1/services");
        let _ = writeln!(out, "  watch:   {base}/v1/watch (server-sent events)");
        let _ = writeln!(out, "  openapi: {base}/openapi.json");
        let _ = writeln!(out, "  health:  {base}/health  {base}/ready  metrics: {base}/metrics");
        let _ =
            writeln!(out, "  seed-003 routes: {base}/register /heartbeat /resolve/{{name}} /services /stats");
        if args.acl {
            let _ = writeln!(
                out,
                "  access control on (anonymous: {}); first admin token: muster acl bootstrap --registry {base}",
                args.acl_default_policy
            );
        }
        if address.ip().is_loopback() {
            let _ = writeln!(
                out,
                "  only this machine can connect; --listen 0.0.0.0:{} listens on every interface",
                address.port()
            );
        }
        let _ = out.flush();
    }
    let state = AppState::with_token_store(Arc::clone(&registry), config, tokens);
    if let Some(listen) = args.dns {
        let dns = muster_server::dns::DnsConfig {
            listen,
            domain: args.dns_domain.clone(),
            ttl: args.dns_ttl,
            ..Default::default()
        };
        let server = muster_server::dns::start(&state, dns)
            .await
            .with_context(|| format!("cannot answer DNS on {listen}"))?;
        use std::io::Write;
        let domain = args.dns_domain.trim_end_matches('.');
        let at = server.local_addr;
        let _ = writeln!(
            std::io::stdout().lock(),
            "  DNS:     {at} (udp+tcp): dig @{} -p {} <service>.service.{domain}.  (SRV: _<service>._tcp.service.{domain}.)",
            at.ip(),
            at.port()
        );
    }
    muster_server::run(listener, state, shutdown_signal()).await.context("server failed")?;
    // The store's background work ends: the final snapshot is written, the sweeper's lease freed.
    registry.shutdown().await.context("stopping the store (writing the final snapshot)")?;
    tracing::info!("stopped");
    Ok(())
}

/// The Redis store's settings from `--redis <url>` and the flags that shape it (preset, prefix,
/// channel, pub/sub, replica acks).
fn redis_config(args: &ServeArgs, url: &str) -> anyhow::Result<muster_redis::RedisConfig> {
    let config = muster_redis::RedisConfig::from_url(url).context("--redis")?.with_preset(args.preset);
    Ok(muster_redis::RedisConfig {
        prefix: args.prefix.clone().unwrap_or(config.prefix),
        pubsub_channel: args.pubsub_channel.clone().unwrap_or(config.pubsub_channel),
        pubsub_enabled: args.pubsub || config.pubsub_enabled,
        heartbeat_events: args.heartbeat_events,
        replica_acks: args.redis_replica_acks,
        replica_ack_timeout: args.redis_replica_ack_timeout,
        ..config
    })
}

/// The server's settings from the validated flags and the tokens the configuration file declares.
fn server_config(
    args: &ServeArgs,
    declared: Vec<muster_server::DeclaredToken>,
) -> anyhow::Result<ServerConfig> {
    let listen_host = args.listen.rsplit_once(':').map_or("", |(host, _)| host);
    Ok(ServerConfig {
        acl: muster_server::AclConfig {
            enabled: args.acl,
            default_policy: args
                .acl_default_policy
                .parse()
                .map_err(|e: muster_core::Error| anyhow::anyhow!("{e}"))?,
            public_metrics: args.public_metrics,
            public_openapi: args.public_openapi,
            tokens: declared,
        },
        tls: args.tls_cert.clone().zip(args.tls_key.clone()).map(|(cert, key)| muster_server::TlsConfig {
            cert,
            key,
            client_ca: args.tls_client_ca.clone(),
        }),
        rate_limit: (args.rate_limit > 0)
            .then_some(muster_server::RateLimit { per_second: args.rate_limit, burst: args.rate_burst }),
        allowed_hosts: allowed_hosts(&args.allowed_hosts, listen_host),
        default_ttl: args.default_ttl,
        compat_ttl: args.compat_ttl,
        cleanup_interval: args.cleanup_interval,
        max_instances_per_service: args.max_instances_per_service,
        body_limit: args.body_limit,
        header_read_timeout: args.header_read_timeout,
        request_timeout: args.request_timeout,
        max_connections: args.max_connections,
        max_wait: args.max_wait,
        allowed_origins: args
            .allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect(),
        ..ServerConfig::default()
    })
}

/// The `--allowed-hosts` list: `auto` allows the loopback names when listening on loopback (and
/// any host otherwise), `*` any host.
fn allowed_hosts(setting: &str, listen_host: &str) -> Vec<String> {
    match setting.trim() {
        "auto" => {
            let loopback = listen_host == "localhost"
                || listen_host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                ["localhost", "127.0.0.1", "::1"].iter().map(|h| (*h).to_owned()).collect()
            } else {
                Vec::new()
            }
        }
        "*" | "" => Vec::new(),
        list => list.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect(),
    }
}

/// The flags → settings mapping, without starting anything.
#[cfg(test)]
mod mapping;
