//! Connections: one shared multiplexed connection (re-established after failures, re-resolving the
//! master through Sentinel), or a cluster connection; with replica acks, lanes of their own for the
//! writes that wait for replicas; plus dedicated connections for blocking reads and pub/sub.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use muster_core::{Error, ErrorKind, Result};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::Mutex;

use crate::config::{RedisConfig, Topology};

/// A connection of either kind; cheap to clone (both are handles to a shared pipeline). Counts
/// its round trips (a command, or a pipeline or transaction sent as one) in its pool's counter.
#[derive(Clone)]
pub(crate) struct Conn {
    link: Link,
    round_trips: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Link {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match &mut self.link {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match &mut self.link {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// `WAIT replicas timeout_ms` where this connection's last write went: the number of replicas
    /// that have every write made on it so far. In a Cluster, the write went to the master of
    /// `key`'s slot, so the command goes there too (on the same per-node connection), not to
    /// every master as the cluster client would send a keyless WAIT.
    pub(crate) async fn wait_for_replicas(
        &mut self,
        replicas: u32,
        timeout_ms: u64,
        key: &str,
    ) -> redis::RedisResult<i64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout_ms);
        match &mut self.link {
            Link::Single(_) => wait.query_async(self).await,
            Link::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
                self.round_trips.fetch_add(1, Ordering::Relaxed);
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let value = c
                    .route_command(wait, RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)))
                    .await?;
                redis::FromRedisValue::from_redis_value(value).map_err(Into::into)
            }
        }
    }
}

/// How new connections are made.
enum Connector {
    /// A fixed server.
    Direct(Client),
    /// Ask Sentinel for the current master each time.
    Sentinel(Mutex<SentinelClient>),
    /// A cluster; the client finds the slot owners. The seed nodes serve pub/sub.
    Cluster(ClusterClient, Vec<String>),
}

/// Runs on each new shared connection before anything else may use it (see [`Pool::on_connect`]).
pub(crate) type OnConnect =
    Box<dyn Fn(Conn) -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>;

/// Connections for writes that wait for replicas ([`RedisConfig::replica_acks`]), beside the
/// shared one. Redis blocks a connection in `WAIT` until the replicas answer or the timeout
/// passes, and every command pipelined behind it waits too: on the shared connection one write's
/// wait held up every read and heartbeat of the process (about two writes a second while no
/// replica answered). On lanes of their own, waits hold up only the writes that wait, and up to
/// this many overlap.
const ACK_LANES: usize = 8;

/// Hands out connections and replaces the shared one after failures.
pub(crate) struct Pool {
    connector: Connector,
    /// The shared connection (lane 0), then with replica acks the [`ACK_LANES`] connections of
    /// acknowledged writes: each made on first use and dropped after a connection-level failure
    /// (all of them together: a failure may mean the primary moved).
    lanes: Vec<Mutex<Option<Conn>>>,
    /// The next acknowledged write's lane.
    next_lane: std::sync::atomic::AtomicUsize,
    /// Per-command timeout.
    response_timeout: Duration,
    /// Round trips made on every connection of this pool (see [`Pool::round_trips`]).
    round_trips: Arc<AtomicU64>,
    /// Runs on each new shared connection first (see [`Pool::on_connect`]).
    on_connect: std::sync::OnceLock<OnConnect>,
    /// Bumped each time the shared connection is dropped (a failure, or Sentinel naming another
    /// master): a dedicated connection made before may lead to a server that is no longer the
    /// primary (see [`Pool::generation`]).
    generation: AtomicU64,
}

impl Pool {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self> {
        let connector = match &config.topology {
            Topology::Standalone { url } => {
                Connector::Direct(Client::open(url.as_str()).map_err(config_error)?)
            }
            Topology::Sentinel { sentinels, master_name, db, username, password } => {
                let mut redis_info = redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(user) = username {
                    redis_info = redis_info.set_username(user);
                }
                if let Some(pass) = password {
                    redis_info = redis_info.set_password(pass);
                }
                let node_info = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info);
                let client = SentinelClient::build(
                    sentinels.iter().map(String::as_str).collect(),
                    master_name.clone(),
                    Some(node_info),
                    SentinelServerType::Master,
                )
                .map_err(config_error)?;
                Connector::Sentinel(Mutex::new(client))
            }
            Topology::Cluster { nodes } => Connector::Cluster(
                ClusterClient::builder(nodes.iter().map(String::as_str))
                    .response_timeout(config.response_timeout)
                    .connection_timeout(config.response_timeout)
                    .retries(2)
                    .build()
                    .map_err(config_error)?,
                nodes.clone(),
            ),
        };
        Ok(Self {
            connector,
            lanes: (0..if config.replica_acks > 0 { 1 + ACK_LANES } else { 1 })
                .map(|_| Mutex::new(None))
                .collect(),
            next_lane: std::sync::atomic::AtomicUsize::new(0),
            response_timeout: config.response_timeout,
            round_trips: Arc::default(),
            on_connect: std::sync::OnceLock::new(),
            generation: AtomicU64::new(0),
        })
    }

    /// A new connection with the given response timeout.
    async fn connect(&self, response_timeout: Duration) -> Result<Conn> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(self.response_timeout));
        let link = match &self.connector {
            Connector::Direct(client) => Link::Single(
                client.get_multiplexed_async_connection_with_config(&config).await.map_err(to_error)?,
            ),
            Connector::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await.map_err(to_error)?;
                Link::Single(
                    client.get_multiplexed_async_connection_with_config(&config).await.map_err(to_error)?,
                )
            }
            Connector::Cluster(client, _) => {
                Link::Cluster(client.get_async_connection().await.map_err(to_error)?)
            }
        };
        Ok(Conn { link, round_trips: Arc::clone(&self.round_trips) })
    }

    /// Round trips made so far on this pool's connections (shared and dedicated; pub/sub
    /// connections not counted): the cost of an operation, counted rather than timed.
    pub(crate) fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The connection of lane `index` (0: the shared one), connecting if there is none.
    async fn lane(&self, index: usize) -> Result<Conn> {
        let mut shared = self.lanes[index].lock().await;
        if let Some(conn) = shared.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.connect(self.response_timeout).await?;
        // While the lock is held: nothing uses the connection before the hook is done with it
        // (a retry after a failure included, which reconnects through here).
        if let Some(hook) = self.on_connect.get() {
            hook(conn.clone()).await?;
        }
        *shared = Some(conn.clone());
        Ok(conn)
    }

    /// Sets what runs on each new shared connection before anything else may use it — a new
    /// connection may lead to another server (a reconnect; with Sentinel, to the master it names
    /// now). Set once; the connection made before it was set is dropped, so the next call makes
    /// one the hook sees.
    pub(crate) async fn on_connect(&self, hook: OnConnect) {
        let _ = self.on_connect.set(hook);
        self.invalidate().await;
    }

    /// Forgets the shared connection so the next call reconnects (and, with Sentinel, looks the
    /// master up again).
    pub(crate) async fn invalidate(&self) {
        for lane in &self.lanes {
            lane.lock().await.take();
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the shared connection was dropped. A holder of a dedicated connection
    /// compares it with the value when its connection was made: a change means the primary may
    /// have moved (a Sentinel switch leaves the old master alive, demoted, and a connection to it
    /// open and silent), so it connects again.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A connection of its own, for blocking reads that must not hold up shared traffic.
    pub(crate) async fn dedicated(&self, response_timeout: Duration) -> Result<Conn> {
        self.connect(response_timeout).await
    }

    /// A pub/sub connection. In a cluster, published messages reach every node, so the first seed
    /// node that answers will do.
    pub(crate) async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        let client = match &self.connector {
            Connector::Direct(client) => client.clone(),
            Connector::Sentinel(sentinel) => {
                sentinel.lock().await.async_get_client().await.map_err(to_error)?
            }
            Connector::Cluster(_, nodes) => {
                let mut last = Error::unavailable("no cluster node to subscribe on");
                for node in nodes {
                    match Client::open(node.as_str()).map_err(config_error) {
                        Ok(client) => match client.get_async_pubsub().await {
                            Ok(pubsub) => return Ok(pubsub),
                            Err(error) => last = to_error(error),
                        },
                        Err(error) => last = error,
                    }
                }
                return Err(last);
            }
        };
        client.get_async_pubsub().await.map_err(to_error)
    }

    /// With Sentinel, a pub/sub connection to a Sentinel, for `+switch-master` notices.
    pub(crate) async fn sentinel_pubsub(&self) -> Option<Result<redis::aio::PubSub>> {
        let Connector::Sentinel(sentinel) = &self.connector else { return None };
        let client = match sentinel.lock().await.async_get_sentinel_client().await {
            Ok(client) => client,
            Err(error) => return Some(Err(to_error(error))),
        };
        Some(client.get_async_pubsub().await.map_err(to_error))
    }

    /// Sends one command with [`Pool::run`]'s reconnect.
    pub(crate) async fn query<T: redis::FromRedisValue + Send>(&self, cmd: &Cmd) -> Result<T> {
        self.run(|mut conn| {
            let cmd = cmd.clone();
            async move { cmd.query_async(&mut conn).await }
        })
        .await
    }

    /// Sends one pipeline with [`Pool::run`]'s reconnect.
    pub(crate) async fn query_pipe<T: redis::FromRedisValue + Send>(&self, pipe: &Pipeline) -> Result<T> {
        self.run(|mut conn| {
            let pipe = pipe.clone();
            async move { pipe.query_async(&mut conn).await }
        })
        .await
    }

    /// Runs `op` on the shared connection; after a connection-level failure, reconnects and runs it
    /// once more (every script is idempotent, so a repeat after an unknown outcome is safe).
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.run_on(0, op).await
    }

    /// [`Pool::run`] for a write followed by `WAIT`: on a lane of its own when there are any (see
    /// [`ACK_LANES`]), taken in turn.
    pub(crate) async fn run_acknowledged<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let lanes = self.lanes.len() - 1;
        let lane = if lanes == 0 {
            0
        } else {
            1 + self.next_lane.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % lanes
        };
        self.run_on(lane, op).await
    }

    async fn run_on<T, F, Fut>(&self, lane: usize, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.lane(lane).await?;
        match op(conn).await {
            Ok(value) => Ok(value),
            Err(error) if needs_reconnect(&error) => {
                tracing::debug!(%error, "redis connection failed; reconnecting");
                self.invalidate().await;
                let conn = self.lane(lane).await.inspect_err(|_| ())?;
                match op(conn).await {
                    Ok(value) => Ok(value),
                    Err(error) => {
                        if needs_reconnect(&error) {
                            self.invalidate().await;
                        }
                        Err(to_error(error))
                    }
                }
            }
            Err(error) => Err(to_error(error)),
        }
    }
}

/// True when the connection should be replaced: I/O failures, timeouts, and a master that turned
/// replica (READONLY, after a failover).
pub(crate) fn needs_reconnect(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown)
        )
}

/// Classifies a Redis error.
pub(crate) fn to_error(error: redis::RedisError) -> Error {
    use redis::ServerErrorKind as S;
    let kind = match error.kind() {
        _ if needs_reconnect(&error) => ErrorKind::Unavailable,
        redis::ErrorKind::Server(S::TryAgain | S::ClusterDown | S::BusyLoading | S::Moved | S::Ask) => {
            ErrorKind::Unavailable
        }
        redis::ErrorKind::ClusterConnectionNotFound
        | redis::ErrorKind::MasterNameNotFoundBySentinel
        | redis::ErrorKind::Io => ErrorKind::Unavailable,
        redis::ErrorKind::InvalidClientConfig | redis::ErrorKind::EmptySentinelList => {
            ErrorKind::InvalidInput
        }
        _ => ErrorKind::Internal,
    };
    Error::new(kind, format!("redis: {error}")).with_source(error)
}

fn config_error(error: redis::RedisError) -> Error {
    Error::invalid("redis connection", &error).with_source(error)
}
