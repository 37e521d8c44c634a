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

mod cluster;
mod sentinel;

pub use cluster::RedisCluster;
pub use sentinel::{MASTER_NAME, SentinelSetup};

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

    /// A Redis user `quiet` that may do everything with Titan's keys and channel except publish
    /// (as an operator's ACL may leave it); returns its URL.
    pub fn user_without_publish(&self) -> String {
        let answer = self.cli(&[
            "ACL",
            "SETUSER",
            "quiet",
            "on",
            ">quiet-secret-1",
            "~titan:discovery:*",
            "&titan:discovery:*",
            "+@all",
            "-@dangerous",
            "-publish",
        ]);
        assert_eq!(answer.trim(), "OK", "ACL SETUSER quiet");
        format!("redis://quiet:quiet-secret-1@127.0.0.1:{}", self.port)
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

/// Cuts `replica` off `master` with nothing unsent on the way: the replica is frozen (SIGSTOP)
/// first, then the master closes its replication link; waits `lag`, while what the master takes
/// reaches no replica. The replica stays frozen until the caller continues it (SIGCONT), after
/// killing the master, so it cannot resynchronise first.
async fn cut_off(master: &RedisServer, replica: &RedisServer, lag: Duration) {
    replica.signal("STOP");
    let _ = master.cli(&["client", "kill", "type", "replica"]);
    sleep(lag).await;
}
