//! A Titan discovery peer, emulated from the seed's description (seed 001) and not from Muster's
//! code: it drives Titan's exact wire operations against a real Redis, so tests can put Muster in a
//! mixed fleet.
//!
//! - [`TitanNode::heartbeat`] — the `register-heartbeat.lua` script by `EVAL` (`HMSET`, `EXPIRE`
//!   seconds, `PSETEX` milliseconds, `SADD`), then, with pub/sub on, `NODE_REGISTERED` for the first
//!   heartbeat and `NODE_UPDATED` for every later one.
//! - [`TitanNode::update_services`] / [`TitanNode::update_address`] — Titan's own methods: change the
//!   state, then heartbeat at once.
//! - [`Titan::update_node_address`] / [`Titan::update_node_services`] — `HSET` of one field of any
//!   node's hash (plus `NODE_UPDATED` with pub/sub on).
//! - [`TitanNode::stop`] / [`Titan::deregister_node`] — `MULTI` `DEL` hash, `DEL` heartbeat, `SREM`
//!   index, then `NODE_DEREGISTERED`.
//! - [`Titan::get_active_nodes`] — Titan's reader: `SMEMBERS` the index, `HGETALL` + `EXISTS` per
//!   node; a node is active when its heartbeat key exists and its hash has a non-empty `address`,
//!   `services` that parse as a JSON array and a non-empty `timestamp`; every other node is cleaned
//!   up (`DEL`, `DEL`, `SREM`), as Titan's `cleanupInactiveNodes` does.

use std::collections::HashMap;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Seed 001's `register-heartbeat.lua`, as the seed prints it.
pub const REGISTER_HEARTBEAT_LUA: &str = r"
redis.call('HMSET', KEYS[1],
  'address', ARGV[2],
  'services', ARGV[3],
  'timestamp', ARGV[4]
)

redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PSETEX', KEYS[2], ARGV[6], '1')
redis.call('SADD', KEYS[3], ARGV[1])

return 1
";

/// Titan's options that matter on the wire.
#[derive(Debug, Clone)]
pub struct TitanOptions {
    /// `redisPrefix` (in a Cluster a hash-tagged one, e.g. `{titan:discovery}`, or Titan's own
    /// three-key script fails with CROSSSLOT).
    pub prefix: String,
    /// `pubSubEnabled`.
    pub pubsub_enabled: bool,
    /// `pubSubChannel`.
    pub pubsub_channel: String,
    /// `heartbeatTTL` in milliseconds.
    pub heartbeat_ttl_ms: u64,
}

impl TitanOptions {
    /// Titan's defaults (`titan:discovery`, pub/sub off, its channel, TTL 15 s), with pub/sub set.
    pub fn titan(pubsub_enabled: bool) -> Self {
        Self {
            prefix: "titan:discovery".to_owned(),
            pubsub_enabled,
            pubsub_channel: "titan:discovery:events".to_owned(),
            heartbeat_ttl_ms: 15_000,
        }
    }
}

/// A connection to a standalone server or a Cluster.
///
/// `muster-redis` has the same two-armed enum (`conn::Link`); it is written again here on purpose:
/// this emulator stands in for the TypeScript peer, so it shares no code with the backend it is
/// checked against, and using that crate's type would make the test kit depend on `muster-redis`,
/// whose own tests would then link two copies of it.
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// One Titan process's view of Redis: its connection and options.
#[derive(Clone)]
pub struct Titan {
    /// The connection (Titan's `redis`).
    conn: Connection,
    /// Its options.
    pub options: TitanOptions,
}

/// A node as Titan's reader returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct TitanNodeInfo {
    /// `nodeId`.
    pub node_id: String,
    /// `address`, as stored.
    pub address: String,
    /// `services`, parsed.
    pub services: serde_json::Value,
    /// `timestamp`, as stored.
    pub timestamp: String,
}

impl Titan {
    /// Connects to a standalone server (`redis://...`) or, given several `redis://` seed URLs, a
    /// Cluster.
    pub async fn connect(urls: &[String], options: TitanOptions) -> Self {
        let conn = if urls.len() == 1 {
            let client = redis::Client::open(urls[0].as_str()).expect("redis url");
            Connection::Single(client.get_multiplexed_async_connection().await.expect("connect"))
        } else {
            let client = redis::cluster::ClusterClient::new(urls.to_vec()).expect("cluster urls");
            Connection::Cluster(client.get_async_connection().await.expect("connect to the cluster"))
        };
        Self { conn, options }
    }

    /// Runs any command on Titan's connection (for writing hashes by hand).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> T {
        cmd.query_async(&mut self.conn.clone()).await.expect("redis command")
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.options.prefix)
    }

    fn index(&self) -> String {
        format!("{}:index:nodes", self.options.prefix)
    }

    /// The same process with other options (another TTL, say).
    #[must_use]
    pub fn with_options(&self, options: TitanOptions) -> Self {
        Self { conn: self.conn.clone(), options }
    }

    /// A node of this process (not yet registered).
    pub fn node(&self, node_id: &str, address: &str, services: serde_json::Value) -> TitanNode {
        TitanNode {
            titan: self.clone(),
            node_id: node_id.to_owned(),
            address: address.to_owned(),
            services,
            registered: false,
        }
    }

    /// Publishes an event when pub/sub is on (Titan's `publishEvent`).
    async fn publish(&self, kind: &str, node_id: &str, address: &str, services: &serde_json::Value) {
        if !self.options.pubsub_enabled {
            return;
        }
        let message = serde_json::json!({
            "type": kind,
            "nodeId": node_id,
            "address": address,
            "services": services,
            "timestamp": now_ms(),
        });
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&self.options.pubsub_channel)
            .arg(message.to_string())
            .query_async(&mut self.conn.clone())
            .await
            .expect("PUBLISH");
    }

    /// `deregisterNode(nodeId)`: `MULTI` `DEL` hash, `DEL` heartbeat, `SREM` index, then
    /// `NODE_DEREGISTERED`.
    pub async fn deregister_node(&self, node_id: &str) {
        self.remove_keys(node_id).await;
        self.publish("NODE_DEREGISTERED", node_id, "", &serde_json::json!([])).await;
    }

    async fn remove_keys(&self, node_id: &str) {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.key("nodes", node_id))
            .del(self.key("heartbeat", node_id))
            .srem(self.index(), node_id);
        let _: () = pipe.query_async(&mut self.conn.clone()).await.expect("MULTI deregistration");
    }

    /// `updateNodeAddress(nodeId, address)`: `HSET` of the address (and `NODE_UPDATED`).
    pub async fn update_node_address(&self, node_id: &str, address: &str) {
        self.hset(node_id, "address", address).await;
    }

    /// `updateNodeServices(nodeId, services)`: `HSET` of the services (and `NODE_UPDATED`).
    pub async fn update_node_services(&self, node_id: &str, services: &serde_json::Value) {
        self.hset(node_id, "services", &services.to_string()).await;
    }

    async fn hset(&self, node_id: &str, field: &str, value: &str) {
        let _: i64 = redis::cmd("HSET")
            .arg(self.key("nodes", node_id))
            .arg(field)
            .arg(value)
            .query_async(&mut self.conn.clone())
            .await
            .expect("HSET");
        if self.options.pubsub_enabled {
            let node = self.read_hash(node_id).await;
            let address = node.get("address").cloned().unwrap_or_default();
            let services = node
                .get("services")
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(serde_json::Value::Null);
            self.publish("NODE_UPDATED", node_id, &address, &services).await;
        }
    }

    async fn read_hash(&self, node_id: &str) -> HashMap<String, String> {
        redis::cmd("HGETALL")
            .arg(self.key("nodes", node_id))
            .query_async(&mut self.conn.clone())
            .await
            .expect("HGETALL")
    }

    /// `getActiveNodes()`: every active node; every other indexed node is cleaned up.
    pub async fn get_active_nodes(&self) -> Vec<TitanNodeInfo> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> =
            redis::cmd("SMEMBERS").arg(self.index()).query_async(&mut conn).await.expect("SMEMBERS");
        let (mut active, mut inactive) = (Vec::new(), Vec::new());
        for id in ids {
            let hash = self.read_hash(&id).await;
            let alive: bool = redis::cmd("EXISTS")
                .arg(self.key("heartbeat", &id))
                .query_async(&mut conn)
                .await
                .expect("EXISTS");
            let field = |name: &str| hash.get(name).filter(|v| !v.is_empty()).cloned();
            // `JSON.parse`: any JSON is kept, a list or not.
            let services = field("services").and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
            match (alive, field("address"), services, field("timestamp")) {
                (true, Some(address), Some(services), Some(timestamp)) => {
                    active.push(TitanNodeInfo { node_id: id, address, services, timestamp });
                }
                _ => inactive.push(id),
            }
        }
        if !inactive.is_empty() {
            let mut pipe = redis::pipe();
            for id in &inactive {
                pipe.del(self.key("nodes", id)).del(self.key("heartbeat", id)).srem(self.index(), id);
            }
            let _: () = pipe.query_async(&mut conn).await.expect("cleanup pipeline");
        }
        active.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        active
    }

    /// `findNodesByService(name, version?)`: active nodes listing the service (exact version).
    pub async fn find_nodes_by_service(&self, name: &str, version: Option<&str>) -> Vec<TitanNodeInfo> {
        self.get_active_nodes()
            .await
            .into_iter()
            .filter(|node| {
                node.services
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"] == name && version.is_none_or(|v| s["version"].as_str() == Some(v)))
            })
            .collect()
    }
}

/// A node of a Titan process: its identity, services and registration state.
pub struct TitanNode {
    /// The process.
    pub titan: Titan,
    /// `nodeId`.
    pub node_id: String,
    /// `address`.
    pub address: String,
    /// `services` (a JSON array of `{name, version?}`).
    pub services: serde_json::Value,
    /// Whether the first heartbeat went out.
    registered: bool,
}

impl TitanNode {
    /// `publishHeartbeat()`: the script by `EVAL`, then the channel message.
    pub async fn heartbeat(&mut self) {
        let titan = &self.titan;
        let ttl = titan.options.heartbeat_ttl_ms;
        let _: i64 = redis::cmd("EVAL")
            .arg(REGISTER_HEARTBEAT_LUA)
            .arg(3)
            .arg(titan.key("nodes", &self.node_id))
            .arg(titan.key("heartbeat", &self.node_id))
            .arg(titan.index())
            .arg(&self.node_id)
            .arg(&self.address)
            .arg(self.services.to_string())
            .arg(now_ms().to_string())
            .arg(ttl.div_ceil(1000).to_string())
            .arg(ttl.to_string())
            .query_async(&mut titan.conn.clone())
            .await
            .expect("EVAL register-heartbeat");
        let kind = if self.registered { "NODE_UPDATED" } else { "NODE_REGISTERED" };
        self.registered = true;
        titan.publish(kind, &self.node_id, &self.address, &self.services).await;
    }

    /// `updateServices(services)`: new services, then a heartbeat at once.
    pub async fn update_services(&mut self, services: serde_json::Value) {
        self.services = services;
        self.heartbeat().await;
    }

    /// `updateAddress(address)`: a new address, then a heartbeat at once.
    pub async fn update_address(&mut self, address: &str) {
        address.clone_into(&mut self.address);
        self.heartbeat().await;
    }

    /// `stop()`: deregisters the node (the `MULTI` of `deregisterNode`, and its event).
    pub async fn stop(&mut self) {
        self.titan.remove_keys(&self.node_id).await;
        self.titan.publish("NODE_DEREGISTERED", &self.node_id, &self.address, &self.services).await;
        self.registered = false;
    }
}

/// `Date.now()`.
fn now_ms() -> u64 {
    muster_core::time::now_ms()
}
