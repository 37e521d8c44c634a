//! The `muster` binary as a user runs it: start `muster serve`, talk to it, stop it with SIGTERM;
//! bad settings exit with a message and the usage exit code.

mod cli;
mod faults;
mod fleet;
mod map;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// An HTTP client for the tests' own requests. The TLS provider is process-wide: installing it
/// here, not relying on whichever test happened to build a client first, keeps each test
/// runnable alone.
pub(crate) fn http() -> reqwest::Client {
    muster_client::install_tls_provider();
    reqwest::Client::new()
}

fn muster() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_muster"));
    for alias in [
        "PORT",
        "HEARTBEAT_TIMEOUT_SECONDS",
        "CLEANUP_INTERVAL_SECONDS",
        "MAX_INSTANCES_PER_SERVICE",
        "ALLOWED_ORIGINS",
        "MUSTER_REGISTRY",
        "MUSTER_REDIS",
        "MUSTER_TOKEN",
        "MUSTER_ACL",
    ] {
        command.env_remove(alias);
    }
    command
}

/// A child process that is killed when dropped: a test that fails (panics) leaves no server
/// behind to hold its ports and CPU.
pub(crate) struct Killed(Option<std::process::Child>);

impl Killed {
    /// Kills `child` when dropped.
    pub(crate) fn new(child: std::process::Child) -> Self {
        Self(Some(child))
    }

    /// The process, no longer killed on drop (to wait for its output).
    pub(crate) fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("a process")
    }
}

impl std::ops::Deref for Killed {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("a process")
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("a process")
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `muster serve` with `args`; returns the process, its base URL and its first output line.
fn spawn_serve<I, S>(args: I, env: &[(&str, &str)]) -> (Killed, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    spawn_serve_with(args, env, Stdio::null())
}

/// [`spawn_serve`] keeping the server's log (its stderr) for the test to read, for `Stdio::piped()`.
fn spawn_serve_with<I, S>(args: I, env: &[(&str, &str)], log: Stdio) -> (Killed, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = muster();
    command.arg("serve").args(args).stdout(Stdio::piped()).stderr(log);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = Killed::new(command.spawn().unwrap());
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap()
        .to_owned();
    (child, base, first)
}

#[tokio::test]
async fn serve_answers_and_stops_on_sigterm() {
    // spawn_serve closes the server's stdout after the first line: that must not stop it.
    let (mut child, base, first) =
        spawn_serve(["--listen", "127.0.0.1:0"], &[("HEARTBEAT_TIMEOUT_SECONDS", "30")]);
    assert!(first.contains("store: embedded memory"), "{first}");
    muster_client::install_tls_provider();
    let client = crate::http();
    let health: serde_json::Value =
        client.get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    let stats: serde_json::Value =
        client.get(format!("{base}/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["heartbeatTimeout"], "30s", "HEARTBEAT_TIMEOUT_SECONDS is honoured");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    for (args, env, expect) in [
        (vec!["serve", "--default-ttl", "5 minutes"], None, "--default-ttl"),
        (vec!["serve", "--default-ttl", "1ms"], None, "--default-ttl"),
        (vec!["serve", "--listen", "nowhere"], None, "--listen"),
        (vec!["serve", "--max-instances-per-service", "0"], None, "--max-instances-per-service"),
        (vec!["serve"], Some(("PORT", "http")), "PORT"),
        (vec!["serve"], Some(("MAX_INSTANCES_PER_SERVICE", "many")), "MAX_INSTANCES_PER_SERVICE"),
        (vec!["frobnicate"], None, "unrecognized subcommand"),
        (vec!["serve", "--self-preservation", "2"], None, "--self-preservation"),
        (
            vec!["serve", "--redis", "redis://127.0.0.1:1", "--self-preservation", "0.6"],
            None,
            "--self-preservation applies to the embedded store only",
        ),
    ] {
        let mut command = muster();
        command.args(&args);
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn help_documents_every_setting_with_its_default() {
    let output = muster().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in [
        "--listen",
        "--redis",
        "--default-ttl",
        "--compat-ttl",
        "--max-instances-per-service",
        "--allowed-origins",
        "--body-limit",
        "MUSTER_LISTEN",
        "127.0.0.1:3100",
        "[default: 15s]",
    ] {
        assert!(help.contains(setting), "missing {setting} in:\n{help}");
    }
}

#[test]
fn unreachable_redis_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let output = muster()
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", &format!("redis://127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("cannot use Redis at"), "{stderr}");
}

/// With `--data-dir`, a restart keeps every live registration.
#[tokio::test]
async fn data_dir_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("muster-cli-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = || {
        let args = [
            std::ffi::OsStr::new("--listen"),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
        ];
        let (child, base, first) = spawn_serve(args, &[]);
        assert!(first.contains("persisted in"), "{first}");
        (child, base)
    };
    let stop = |mut child: Killed| {
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(child.wait().unwrap().success());
    };
    muster_client::install_tls_provider();
    let client = crate::http();
    let (child, base) = start();
    let response = client
        .put(format!("{base}/v1/nodes/kept"))
        .json(&serde_json::json!({"address": "h:1", "services": [{"name": "api"}], "ttlMs": 60000}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // A second server on the same directory is refused (it would overwrite the first one's
    // snapshots), naming the process that holds it.
    let second =
        muster().args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("in use by another registry (process {})", child.id())), "{stderr}");
    let revision = client
        .get(format!("{base}/v1/nodes"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["revision"]
        .as_u64()
        .unwrap();
    stop(child);
    let (child, base) = start();
    let response = client.get(format!("{base}/v1/nodes/kept")).send().await.unwrap();
    assert_eq!(response.status(), 200, "the registration survived the restart");
    // A watcher resumes across the restart from its Last-Event-ID: the next event follows it.
    let watch = client
        .get(format!("{base}/v1/watch"))
        .header("last-event-id", revision.to_string())
        .send()
        .await
        .unwrap();
    client.delete(format!("{base}/v1/nodes/kept")).send().await.unwrap();
    let mut stream = watch.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), futures_next(&mut stream))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.starts_with("event: deregistered"),
        "no resync needed after a restart with --data-dir: {text}"
    );
    assert!(text.contains(&format!("id: {}", revision + 1)), "{text}");
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
    let output =
        muster().args(["serve", "--data-dir", "/tmp/x", "--redis", "redis://127.0.0.1:1"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--data-dir"));
}

/// `--config` reads a TOML file; flags win over it; bad files name the problem.
#[tokio::test]
async fn config_file() {
    let dir = std::env::temp_dir().join(format!("muster-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("muster.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\ncompat-ttl = \"42s\"\ncleanup-interval = \"7s\"\n")
        .unwrap();
    let args =
        [std::ffi::OsStr::new("--cleanup-interval"), "9s".as_ref(), "--config".as_ref(), file.as_os_str()];
    let (mut child, base, _) = spawn_serve(args, &[]);
    let stats: serde_json::Value =
        crate::http().get(format!("{base}/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["heartbeatTimeout"], "42s", "taken from the file");
    assert_eq!(stats["cleanupInterval"], "9s", "the flag wins over the file");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());

    for (content, expect) in [
        ("colour = \"blue\"", "unknown setting `colour`"),
        ("default-ttl = \"soon\"", "default-ttl"),
        ("listen = [1, 2]", "must be a string"),
        ("this is not toml", "muster.toml"),
    ] {
        std::fs::write(&file, content).unwrap();
        let output = muster().args(["serve", "--config"]).arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{content}: {stderr}");
        assert!(stderr.contains(expect), "{content}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn futures_next<S: futures::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    use futures::StreamExt;
    stream.next().await
}

/// `muster serve --redis` in a mixed fleet: a Titan peer's node (with an id Muster itself would
/// refuse) reaches the SDK's resolver at once, its service change and its shutdown follow through
/// the server's watch, with Titan's pub/sub off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_follows_titan_peers() {
    use muster_core::VersionQuery;
    use muster_testkit::titan::{Titan, TitanOptions};
    let redis = muster_testkit::redis_server::RedisServer::start().await;
    let url = redis.url();
    let (mut server, base, _) = spawn_serve(["--listen", "127.0.0.1:0", "--redis", &url], &[]);
    let titan = Titan::connect(std::slice::from_ref(&url), TitanOptions::titan(false)).await;
    let mut node = titan.node(
        "worker@host-1",
        "ws://10.8.8.9:9000",
        serde_json::json!([{"name": "users", "version": "1.0.0"}]),
    );
    node.heartbeat().await;

    let client = muster_client::Client::with_config(muster_client::ClientConfig {
        registry_url: base.clone(),
        ..muster_client::ClientConfig::default()
    })
    .unwrap();
    let until = async |version: &str, count: usize| {
        let query = VersionQuery::exact(version).unwrap();
        for _ in 0..100 {
            let resolved = client.instances("users", &query).await.unwrap();
            if resolved.instances.len() == count {
                return resolved;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("users@{version} never had {count} instances");
    };
    let resolved = until("1.0.0", 1).await;
    let instance = &resolved.instances[0];
    assert_eq!(
        (instance.id.as_str(), instance.host.as_str(), instance.port),
        ("worker@host-1", "10.8.8.9", 9000)
    );
    let get = crate::http().get(format!("{base}/v1/nodes/worker@host-1")).send().await.unwrap();
    assert_eq!(get.status(), 200, "a node is read by the id it was written with");

    node.update_services(serde_json::json!([{"name": "users", "version": "2.0.0"}])).await;
    until("2.0.0", 1).await;
    until("1.0.0", 0).await;
    node.stop().await;
    until("2.0.0", 0).await;
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    server.wait().unwrap();
}

/// Every `serve` setting is read from the `--config` file, from its `MUSTER_*` variable and from
/// its flag, in that order of precedence. The table must name every setting `--check-config`
/// prints, so a setting added later is tested the same way.
#[test]
fn every_setting_honours_flag_env_and_file() {
    // (setting, value in the file, in the environment, as a flag)
    let table: &[(&str, &str, &str, &str)] = &[
        ("listen", "127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003"),
        ("redis", "redis://127.0.0.1:1", "redis://127.0.0.1:2", "redis://127.0.0.1:3"),
        ("data-dir", "/tmp/muster-a", "/tmp/muster-b", "/tmp/muster-c"),
        ("self-preservation", "0.2", "0.3", "0.4"),
        ("preset", "netron", "titan", "netron"),
        ("prefix", "p1", "p2", "p3"),
        ("pubsub", "true", "false", "true"),
        ("pubsub-channel", "c1", "c2", "c3"),
        ("heartbeat-events", "false", "true", "false"),
        ("redis-replica-acks", "1", "2", "3"),
        ("redis-replica-ack-timeout", "100ms", "200ms", "300ms"),
        ("default-ttl", "21s", "22s", "23s"),
        ("compat-ttl", "31s", "32s", "33s"),
        ("cleanup-interval", "4s", "5s", "6s"),
        ("max-instances-per-service", "11", "12", "13"),
        ("allowed-origins", "http://a", "http://b", "http://c"),
        ("body-limit", "2048", "4096", "8192"),
        ("log-format", "json", "text", "json"),
        ("log-level", "debug", "warn", "info,muster=debug"),
        ("header-read-timeout", "7s", "8s", "9s"),
        ("request-timeout", "11s", "12s", "13s"),
        ("max-connections", "100", "200", "300"),
        ("max-wait", "1m", "2m", "3m"),
        ("acl", "true", "false", "true"),
        ("acl-default-policy", "read", "allow", "deny"),
        ("public-metrics", "true", "false", "true"),
        ("public-openapi", "false", "true", "false"),
        ("rate-limit", "10", "20", "30"),
        ("rate-burst", "5", "6", "7"),
        ("allowed-hosts", "a.example", "b.example", "c.example"),
        ("dns", "127.0.0.1:8601", "127.0.0.1:8602", "127.0.0.1:8603"),
        ("dns-domain", "a.example.", "b.example.", "c.example."),
        ("dns-ttl", "1", "2", "3"),
    ];
    // The TLS files come together (and must be readable): one set per layer.
    let tls_settings = ["tls-cert", "tls-key", "tls-client-ca"];
    let dir = std::env::temp_dir().join(format!("muster-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("muster.toml");
    let check = |env: &[(String, &str)], flags: &[String]| {
        let mut command = muster();
        command.args(["serve", "--check-config", "--config"]).arg(&file).args(flags);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        stdout
    };
    let value_of = |printed: &str, setting: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{setting} = \"")))
            .and_then(|rest| rest.split('"').next())
            .map(str::to_owned)
    };
    std::fs::write(&file, "").unwrap();
    let printed = check(&[], &[]);
    let mut listed: Vec<&str> = printed.lines().filter_map(|l| l.split(" = ").next()).collect();
    let mut named: Vec<&str> = table.iter().map(|row| row.0).chain(tls_settings).collect();
    listed.sort_unstable();
    named.sort_unstable();
    assert_eq!(listed, named, "the table names every setting");
    for (setting, in_file, in_env, as_flag) in table {
        let quoted = if matches!(*in_file, "true" | "false") || in_file.parse::<f64>().is_ok() {
            (*in_file).to_owned()
        } else {
            format!("{in_file:?}")
        };
        std::fs::write(&file, format!("{setting} = {quoted}\n")).unwrap();
        // The redis setting excludes the data directory and self-preservation: keep them apart.
        assert_eq!(value_of(&check(&[], &[]), setting).as_deref(), Some(*in_file), "{setting} from the file");
        let env = [(format!("MUSTER_{}", setting.to_uppercase().replace('-', "_")), *in_env)];
        assert_eq!(
            value_of(&check(&env, &[]), setting).as_deref(),
            Some(*in_env),
            "{setting}: env over file"
        );
        let flag = [format!("--{setting}={as_flag}")];
        assert_eq!(
            value_of(&check(&env, &flag), setting).as_deref(),
            Some(*as_flag),
            "{setting}: flag over env"
        );
    }
    let pkis: Vec<muster_testkit::certs::TestPki> = ["file", "env", "flag"]
        .iter()
        .map(|layer| muster_testkit::certs::TestPki::generate(&dir.join(layer)))
        .collect();
    let files = |pki: &muster_testkit::certs::TestPki| {
        [&pki.server_cert, &pki.server_key, &pki.ca].map(|p| p.to_str().unwrap().to_owned())
    };
    let [file_set, env_set, flag_set] = [files(&pkis[0]), files(&pkis[1]), files(&pkis[2])];
    let lines: String = tls_settings.iter().zip(&file_set).map(|(k, v)| format!("{k} = {v:?}\n")).collect();
    std::fs::write(&file, lines).unwrap();
    let env: Vec<(String, &str)> = tls_settings
        .iter()
        .zip(&env_set)
        .map(|(k, v)| (format!("MUSTER_{}", k.to_uppercase().replace('-', "_")), v.as_str()))
        .collect();
    let flags: Vec<String> = tls_settings.iter().zip(&flag_set).map(|(k, v)| format!("--{k}={v}")).collect();
    for (i, setting) in tls_settings.iter().enumerate() {
        assert_eq!(value_of(&check(&[], &[]), setting).as_deref(), Some(file_set[i].as_str()), "{setting}");
        assert_eq!(value_of(&check(&env, &[]), setting).as_deref(), Some(env_set[i].as_str()), "{setting}");
        assert_eq!(
            value_of(&check(&env, &flags), setting).as_deref(),
            Some(flag_set[i].as_str()),
            "{setting}"
        );
    }
    // The `[acl]` section names the same settings without the prefix, and declares tokens.
    std::fs::write(
        &file,
        "[acl]\nenabled = true\ndefault-policy = \"read\"\n[[acl.tokens]]\nname = \"ops\"\nsecret = \"0123456789abcdef-ops\"\nrules = [{ access = \"admin\" }]\n",
    )
    .unwrap();
    let printed = check(&[], &[]);
    assert_eq!(value_of(&printed, "acl").as_deref(), Some("true"), "{printed}");
    assert_eq!(value_of(&printed, "acl-default-policy").as_deref(), Some("read"));
    for (bad, why) in [
        ("[acl]\nwhatever = 1\n", "acl.whatever"),
        ("[[acl.tokens]]\nname = \"x\"\nsecret = \"short\"\n", "at least 16"),
        ("[[acl.tokens]]\nname = \"x\"\nsecret-sha256 = \"zz\"\n", "64 hex digits"),
        (
            "[[acl.tokens]]\nname = \"x\"\nrules = [{ access = \"root\" }]\nsecret = \"0123456789abcdef\"\n",
            "root",
        ),
    ] {
        std::fs::write(&file, bad).unwrap();
        let output = muster().args(["serve", "--check-config", "--config"]).arg(&file).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{bad}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server's log tells the registry's lifecycle at `info` — registrations, deregistrations and
/// expiries with the node — without colour codes when stderr is not a terminal; heartbeats only at
/// `debug`. Self-preservation is off unless asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_is_logged_plainly() {
    let (child, base, _) = spawn_serve_with(["--listen", "127.0.0.1:0"], &[], Stdio::piped());
    muster_client::install_tls_provider();
    let client = crate::http();
    let body = serde_json::json!({"address": "10.0.0.9:80", "services": [{"name": "logged"}], "ttlMs": 1000});
    assert_eq!(client.put(format!("{base}/v1/nodes/log-1")).json(&body).send().await.unwrap().status(), 201);
    assert_eq!(client.put(format!("{base}/v1/nodes/log-2")).json(&body).send().await.unwrap().status(), 201);
    assert_eq!(client.put(format!("{base}/v1/nodes/log-1/heartbeat")).send().await.unwrap().status(), 200);
    assert_eq!(client.delete(format!("{base}/v1/nodes/log-1")).send().await.unwrap().status(), 204);
    tokio::time::sleep(Duration::from_millis(1500)).await; // log-2 expires
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let output = child.into_inner().wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!log.contains('\u{1b}'), "no colour codes off a terminal:\n{log}");
    let line = |needle: &str, id: &str| {
        log.lines().any(|l| l.contains(" INFO ") && l.contains(needle) && l.contains(id))
    };
    assert!(line("registered", "log-1") && line("registered", "log-2"), "{log}");
    assert!(line("deregistered", "log-1"), "{log}");
    assert!(line("expired", "log-2"), "{log}");
    assert!(!log.contains("v1: heartbeat"), "heartbeats are logged at debug only:\n{log}");
    let settings = muster().args(["serve", "--check-config"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&settings.stdout).contains("self-preservation = \"0\""),
        "off by default"
    );
}

/// With access control on, every write made with a token is logged at `info` on the audit target
/// with the token's name, the action and the node — never the secret (heartbeats at `debug`); a
/// refused write is logged too, with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_with_a_token_are_audited_without_the_secret() {
    let dir = std::env::temp_dir().join(format!("muster-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("muster.toml");
    let secret = "a-declared-secret-for-the-audit";
    std::fs::write(
        &file,
        format!("[acl]\nenabled = true\n[[acl.tokens]]\nname = \"deployer\"\nsecret = \"{secret}\"\nrules = [{{ services = \"web\", access = \"write\" }}]\n"),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let (child, base, _) =
        spawn_serve_with(["--listen", "127.0.0.1:0", "--config", config], &[], Stdio::piped());
    muster_client::install_tls_provider();
    let client = crate::http();
    let body = serde_json::json!({"address": "10.0.0.9:80", "services": [{"name": "web"}]});
    let put = client.put(format!("{base}/v1/nodes/web-1")).bearer_auth(secret).json(&body);
    assert_eq!(put.send().await.unwrap().status(), 201);
    let heartbeat = client.put(format!("{base}/v1/nodes/web-1/heartbeat")).bearer_auth(secret);
    assert_eq!(heartbeat.send().await.unwrap().status(), 200);
    let refused = client.put(format!("{base}/v1/nodes/web-1")).json(&body);
    assert_eq!(refused.send().await.unwrap().status(), 401);
    let db = serde_json::json!({"address": "10.0.0.9:81", "services": [{"name": "db"}]});
    let forbidden = client.put(format!("{base}/v1/nodes/db-1")).bearer_auth(secret).json(&db);
    assert_eq!(forbidden.send().await.unwrap().status(), 403);
    let delete = client.delete(format!("{base}/v1/nodes/web-1")).header("x-muster-token", secret);
    assert_eq!(delete.send().await.unwrap().status(), 204);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let output = child.into_inner().wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let audited = |action: &str| {
        log.lines().any(|l| {
            l.contains(" INFO ")
                && l.contains("muster::audit")
                && l.contains("token=deployer")
                && l.contains(&format!("action=\"{action}\""))
                && l.contains("node_id=\"web-1\"")
        })
    };
    assert!(audited("register") && audited("deregister"), "{log}");
    // Refused writes too, with the reason, whoever asked.
    let refused = |who: &str, status: &str, path: &str| {
        log.lines().any(|l| {
            l.contains(" INFO ")
                && l.contains("muster::audit")
                && l.contains(&format!("token=\"{who}\""))
                && l.contains(&format!("status={status}"))
                && l.contains(&format!("path=\"{path}\""))
                && l.contains("write refused")
                && l.contains("reason=")
        })
    };
    assert!(refused("anonymous", "401", "/v1/nodes/web-1"), "{log}");
    assert!(refused("deployer", "403", "/v1/nodes/db-1"), "{log}");
    assert!(!audited("heartbeat"), "heartbeats are audited at debug only:\n{log}");
    assert!(!log.contains(secret), "the secret is never logged:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--check-config` shows the values the seed-003 variables put in place.
#[test]
fn check_config_shows_seed_variables() {
    let output = muster()
        .args(["serve", "--check-config"])
        .env("PORT", "4555")
        .env("HEARTBEAT_TIMEOUT_SECONDS", "42")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("listen = \"127.0.0.1:4555\"  # PORT (seed-003 variable)"), "{printed}");
    assert!(printed.contains("compat-ttl = \"42s\"  # HEARTBEAT_TIMEOUT_SECONDS"), "{printed}");
    let flag_wins = muster()
        .args(["serve", "--check-config", "--listen", "127.0.0.1:1"])
        .env("PORT", "4555")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&flag_wins.stdout).contains("listen = \"127.0.0.1:1\"  # flag"));
}
