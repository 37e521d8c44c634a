//! Real `redis-server` processes for tests: standalone, a 3-master Cluster (with or without a
//! replica per master), and a master + replica + 3 Sentinels. Each runs on free loopback ports in
//! its own temporary directory, is waited for until it answers, can be killed (SIGKILL) and
//! restarted on the same port, and is killed on drop; both replicated topologies fail over on
//! demand as a crash makes them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

/// Longest wait for a server to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A free loopback port whose cluster bus port (`port + 10000`) is free too.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/muster-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("muster-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temporary directory");
        Self(path)
    }
}

impl TempDir {
    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends `PING` until the server answers `+PONG` (or `-LOADING`-free), or panics after a while.
pub async fn wait_until_ready(port: u16) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await
            && stream.write_all(b"PING\r\n").await.is_ok()
        {
            let mut buf = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await
                && buf[..n].starts_with(b"+PONG")
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "redis on port {port} did not become ready");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `redis-cli -p <port> <args>` and returns its standard output (raw format).
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .expect("run redis-cli (install redis-tools)");
    String::from_utf8_lossy(&output.stdout).trim_end().to_owned()
}

/// The last `lines` lines of a file (empty when it cannot be read).
fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Lines sorted (a dump of a hash or set, whose order Redis does not fix).
fn sorted(text: String) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

/// One `redis-server` process.
pub struct RedisServer {
    /// Its port, kept across restarts.
    port: u16,
    /// Extra command-line arguments, kept across restarts.
    args: Vec<String>,
    /// Its working directory.
    dir: TempDir,
    /// The process, when running.
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone server without persistence.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra arguments (e.g. `["--appendonly", "yes"]`).
    pub async fn start_with(args: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            dir: TempDir::new("redis"),
            child: None,
        };
        server.spawn();
        wait_until_ready(server.port).await;
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.0.join("redis.log")).expect("log file");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--protected-mode", "no", "--dir"])
            .arg(&self.dir.0)
            .args(&self.args)
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (install redis-server)");
        self.child = Some(child);
    }

    /// Starts a read-only replica of `primary` and waits until it has synchronised.
    pub async fn replica_of(primary: &RedisServer) -> Self {
        let port = primary.port.to_string();
        let replica = Self::start_with(&["--replicaof", "127.0.0.1", &port]).await;
        let deadline = Instant::now() + READY_TIMEOUT;
        while !replica.cli(&["info", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "replica did not synchronise");
            sleep(Duration::from_millis(50)).await;
        }
        replica
    }

    /// Every key with its type, value and whether it has a TTL, sorted: two dumps are equal when
    /// nothing was written in between (TTLs are left out as numbers since they tick down).
    pub fn keyspace(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.cli(&["--scan"]).lines().map(str::to_owned).collect();
        keys.sort();
        keys.into_iter()
            .map(|key| {
                let kind = self.cli(&["type", &key]);
                let value = match kind.as_str() {
                    "string" => self.cli(&["get", &key]),
                    "hash" => {
                        let dump = self.cli(&["hgetall", &key]);
                        let lines: Vec<&str> = dump.lines().collect();
                        sorted(lines.chunks(2).map(|pair| pair.join("=")).collect::<Vec<_>>().join("\n"))
                    }
                    "set" => sorted(self.cli(&["smembers", &key])),
                    "zset" => self.cli(&["zrange", &key, "0", "-1", "withscores"]),
                    "stream" => self.cli(&["xrange", &key, "-", "+"]),
                    other => other.to_owned(),
                };
                let expires = self.cli(&["pttl", &key]) != "-1";
                format!("{key} {kind} expires={expires} {value}")
            })
            .collect()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port (with the same data directory) and waits until it
    /// answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        wait_until_ready(self.port).await;
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.0.join("redis.log"), lines)
    }

    /// Runs `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process, when running: `STOP` freezes it as a
    /// stalled machine would be, its connections open and silent.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A standalone server speaking only TLS, with a self-signed certificate made by `openssl`.
pub struct TlsRedisServer {
    /// The TLS port.
    port: u16,
    /// Certificates and data.
    _dir: TempDir,
    /// The process.
    child: Child,
}

impl TlsRedisServer {
    /// Makes a self-signed certificate and starts a TLS-only server with it.
    pub async fn start() -> Self {
        let dir = TempDir::new("redis-tls");
        let (cert, key) = (dir.0.join("server.crt"), dir.0.join("server.key"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl could not make a certificate");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&cert)
            .args(["--tls-auth-clients", "no", "--dir"])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let pong = Command::new("redis-cli")
                .args(["--tls", "--insecure", "-h", "127.0.0.1", "-p", &port.to_string(), "ping"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
                .unwrap_or(false);
            if pong {
                break;
            }
            assert!(Instant::now() < deadline, "TLS redis on port {port} did not become ready");
            sleep(Duration::from_millis(50)).await;
        }
        Self { port, _dir: dir, child }
    }

    /// `rediss://127.0.0.1:<port>/#insecure` (the certificate is self-signed).
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/#insecure", self.port)
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// Cuts `replica` off `master` with nothing unsent on the way: the replica is frozen (SIGSTOP)
/// first, then the master closes its replication link; waits `lag`, while what the master takes
/// reaches no replica. The replica stays frozen until the caller continues it (SIGCONT), after
/// killing the master, so it cannot resynchronise first.
async fn cut_off(master: &RedisServer, replica: &RedisServer, lag: Duration) {
    replica.signal("STOP");
    let _ = master.cli(&["client", "kill", "type", "replica"]);
    sleep(lag).await;
}

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
