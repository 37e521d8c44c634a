//! A Redis Cluster of three masters (with or without a replica each) on free ports: slot owners,
//! failovers, failovers that lose writes.

use super::*;

/// A Redis Cluster of three masters, with or without a replica each.
pub struct RedisCluster {
    /// The servers: the masters first, then their replicas (roles change with failovers).
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled masters, joins them and waits for `cluster_state:ok`.
    pub async fn start() -> Self {
        Self::start_shaped(0).await
    }

    /// Three masters with one replica each (a node timeout of 1 s, so a killed master's replica is
    /// promoted within a few seconds); returns once every replica has synchronised.
    pub async fn start_with_replicas() -> Self {
        Self::start_shaped(1).await
    }

    async fn start_shaped(replicas: usize) -> Self {
        let timeout = if replicas > 0 { "1000" } else { "2000" };
        let mut servers = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            servers.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    timeout,
                    "--repl-diskless-sync-delay",
                    "0",
                ])
                .await,
            );
        }
        let addresses: Vec<String> = servers.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { servers };
        cluster.settled().await;
        cluster
    }

    /// `redis+cluster://` URL listing every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.servers.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Waits until every server says `cluster_state:ok` and every replica's link to its master is up.
    async fn settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.servers.iter().all(|s| {
                s.cli(&["cluster", "info"]).contains("cluster_state:ok") && {
                    let replication = s.cli(&["info", "replication"]);
                    replication.contains("role:master") || replication.contains("master_link_status:up")
                }
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not settle");
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Which of [`RedisCluster::servers`] is the master of `key`'s slot now, and which replicates it.
    pub fn owner(&self, key: &str) -> (usize, Option<usize>) {
        let slot: u16 = self.servers[0].cli(&["cluster", "keyslot", key]).parse().expect("a slot number");
        // `CLUSTER NODES`, as a live server sees it: `<id> <ip:port@bus> <flags> <master id> ... <slots>`.
        let view = self
            .servers
            .iter()
            .map(|s| s.cli(&["cluster", "nodes"]))
            .find(|v| !v.is_empty())
            .expect("a live server");
        let lines: Vec<Vec<&str>> = view.lines().map(|l| l.split(' ').collect()).collect();
        let port_of = |fields: &[&str]| -> u16 {
            fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        };
        let master = lines
            .iter()
            .find(|f| {
                f[2].contains("master")
                    && !f[2].contains("fail")
                    && f.iter().skip(8).any(|range| {
                        let mut ends = range.split('-').filter_map(|n| n.parse::<u16>().ok());
                        match (ends.next(), ends.next()) {
                            (Some(a), Some(b)) => (a..=b).contains(&slot),
                            (Some(a), None) => a == slot,
                            _ => false,
                        }
                    })
            })
            .unwrap_or_else(|| panic!("no live master serves slot {slot}:\n{view}"));
        let replica =
            lines.iter().find(|f| f[3] == master[0] && f[2].contains("slave") && !f[2].contains("fail"));
        let index =
            |port: u16| self.servers.iter().position(|s| s.port == port).expect("a server of this cluster");
        (index(port_of(master)), replica.map(|r| index(port_of(r))))
    }

    /// A failover as a crash causes it: SIGKILLs the master of `key`'s slot, waits until the
    /// cluster promotes its replica, then restarts the old master (empty: no persistence; it keeps
    /// its cluster configuration), which the cluster turns into a replica of the new one; returns
    /// once it has synchronised and the cluster is ok, so the next failover has a replica to
    /// promote. Returns how long the promotion took.
    pub async fn fail_over(&mut self, key: &str) -> Duration {
        self.fail_over_after(key, None).await
    }

    /// [`RedisCluster::fail_over`] that loses the master's last writes: the replica is cut off
    /// first for `lag` (frozen, then its link closed by the master), so what the master takes
    /// meanwhile never reaches the replica promoted in its place.
    pub async fn fail_over_losing_writes(&mut self, key: &str, lag: Duration) -> Duration {
        self.fail_over_after(key, Some(lag)).await
    }

    async fn fail_over_after(&mut self, key: &str, lag: Option<Duration>) -> Duration {
        let (master, replica) = self.owner(key);
        let replica = replica.expect("the master has a replica to promote");
        if let Some(lag) = lag {
            cut_off(&self.servers[master], &self.servers[replica], lag).await;
        }
        let killed_at = Instant::now();
        self.servers[master].kill();
        self.servers[replica].signal("CONT");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.servers[replica].cli(&["role"]).starts_with("master") {
            assert!(Instant::now() < deadline, "the cluster did not promote the replica");
            sleep(Duration::from_millis(20)).await;
        }
        let promoted = killed_at.elapsed();
        self.servers[master].restart().await;
        self.settled().await;
        promoted
    }
}
