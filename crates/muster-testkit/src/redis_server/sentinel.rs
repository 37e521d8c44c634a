//! A master, a replica and three Sentinels on free ports: failovers with and without lost writes,
//! the Sentinels' logs.

use super::*;

/// One `redis-server --sentinel` process.
struct SentinelProcess {
    port: u16,
    _dir: TempDir,
    child: Child,
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master, one replica and three Sentinels watching them under the name `mymaster`.
pub struct SentinelSetup {
    /// The initial master.
    pub master: RedisServer,
    /// The initial replica.
    pub replica: RedisServer,
    /// The Sentinels.
    sentinels: Vec<SentinelProcess>,
}

/// The master name the Sentinels monitor.
pub const MASTER_NAME: &str = "mymaster";

impl SentinelSetup {
    /// Starts everything and waits until every Sentinel knows the master and the replica.
    pub async fn start() -> Self {
        // A replica that (re)joins is synchronised at once (no wait for others to batch with).
        let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]).await;
        let replica = RedisServer::start_with(&[
            "--repl-diskless-sync-delay",
            "0",
            "--replicaof",
            "127.0.0.1",
            &master.port.to_string(),
        ])
        .await;
        let deadline = Instant::now() + READY_TIMEOUT;
        while !master.cli(&["info", "replication"]).contains("connected_slaves:1") {
            assert!(Instant::now() < deadline, "replica did not attach");
            sleep(Duration::from_millis(50)).await;
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = TempDir::new("sentinel");
            let conf = dir.0.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 2000\n\
                     sentinel failover-timeout {MASTER_NAME} 4000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir.0.display(),
                    master.port
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::from(std::fs::File::create(dir.0.join("sentinel.log")).expect("log file")))
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server --sentinel (install redis-sentinel)");
            wait_until_ready(port).await;
            sentinels.push(SentinelProcess { port, _dir: dir, child });
        }
        let setup = Self { master, replica, sentinels };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = setup.sentinels.iter().all(|s| {
                let info = cli(s.port, &["sentinel", "master", MASTER_NAME]);
                info.contains("num-slaves\n1") && info.contains("num-other-sentinels\n2")
            });
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "sentinels did not discover each other and the replica");
            sleep(Duration::from_millis(100)).await;
        }
        setup
    }

    /// `redis+sentinel://` URL listing every Sentinel.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port the Sentinels currently name as master.
    pub fn current_master_port(&self) -> Option<u16> {
        let answer = cli(self.sentinels[0].port, &["sentinel", "get-master-addr-by-name", MASTER_NAME]);
        answer.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }

    /// The Sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The last `lines` lines of each Sentinel's log (what it saw and did, for a failure's
    /// evidence).
    pub fn sentinel_logs(&self, lines: usize) -> Vec<String> {
        self.sentinels.iter().map(|s| tail(&s._dir.0.join("sentinel.log"), lines)).collect()
    }

    /// The server that is a replica now (by its own `ROLE`).
    pub fn current_replica(&self) -> &RedisServer {
        if self.master.cli(&["role"]).starts_with("slave") { &self.master } else { &self.replica }
    }

    /// A failover as a crash causes it: SIGKILLs the current master, waits until the Sentinels
    /// promote the replica, then restarts the old master (empty: no persistence), which the
    /// Sentinels turn into a replica of the new one; returns once it has synchronised, so the next
    /// failover has a replica to promote. Returns how long the promotion took.
    pub async fn fail_over(&mut self) -> Duration {
        self.fail_over_after(None).await
    }

    /// [`SentinelSetup::fail_over`] that loses the master's last writes: the replica is cut off
    /// first for `lag` (frozen, then its link closed by the master), so what the master takes
    /// meanwhile never reaches the replica promoted in its place.
    pub async fn fail_over_losing_writes(&mut self, lag: Duration) -> Duration {
        self.fail_over_after(Some(lag)).await
    }

    async fn fail_over_after(&mut self, lag: Option<Duration>) -> Duration {
        let old = self.current_master_port().expect("the Sentinels name a master");
        let (killed, standby) = if self.master.port == old {
            (&mut self.master, &self.replica)
        } else {
            (&mut self.replica, &self.master)
        };
        if let Some(lag) = lag {
            cut_off(killed, standby, lag).await;
        }
        let killed_at = Instant::now();
        killed.kill();
        standby.signal("CONT");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.current_master_port() == Some(old) || !cli(standby.port, &["role"]).starts_with("master") {
            assert!(Instant::now() < deadline, "the Sentinels did not promote the replica");
            sleep(Duration::from_millis(20)).await;
        }
        let promoted = killed_at.elapsed();
        let (killed, standby) = if self.master.port == old {
            (&mut self.master, &self.replica)
        } else {
            (&mut self.replica, &self.master)
        };
        // Restarted as a replica of the new master (as the Sentinels would make it anyway).
        killed.args =
            ["--repl-diskless-sync-delay", "0", "--replicaof", "127.0.0.1", &standby.port.to_string()]
                .map(String::from)
                .to_vec();
        killed.restart().await;
        // Settled: the Sentinels agree on a master, and the other server replicates from it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| {
                    let answer = cli(s.port, &["sentinel", "get-master-addr-by-name", MASTER_NAME]);
                    answer.lines().nth(1).and_then(|p| p.trim().parse().ok())
                })
                .collect();
            let agreed = named.windows(2).all(|w| w[0] == w[1]);
            let linked = [&self.master, &self.replica].iter().any(|s| {
                Some(s.port) != named[0] && s.cli(&["info", "replication"]).contains("master_link_status:up")
            });
            if agreed && linked {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no settled master and replica after the failover: Sentinels name {named:?}"
            );
            sleep(Duration::from_millis(50)).await;
        }
        promoted
    }
}
