//! The everyday commands as a user runs them: spawn the binary, read its output and exit code.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use muster_core::{Address, NodeId, Registration, Registry, ServiceInfo};

use super::{muster, spawn_serve};

fn run(args: &[&str]) -> Output {
    muster().args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn interrupt(child: &Child) {
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Spawns a long-running command (killed when dropped); returns it with a reader of its stdout
/// lines.
fn spawn(args: &[&str]) -> (crate::Killed, std::sync::mpsc::Receiver<String>) {
    let mut child = crate::Killed::new(
        muster().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    );
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn next_line(lines: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    lines.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no line: {what}"))
}

async fn wait_exit(child: &mut Child) -> i32 {
    for _ in 0..400 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the command did not exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyday_commands_against_a_server() {
    let (mut server, base, _) = spawn_serve(["--listen", "127.0.0.1:0"], &[]);
    let registry = ["--registry", base.as_str()];
    let with = |args: &[&str]| -> Output { run(&[args, &registry[..]].concat()) };

    // Nothing yet: find exits 1 and says so.
    let output = with(&["find", "users"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("no instances of users"), "{}", text(&output.stderr));

    // `watch --json` prints one JSON object per event.
    let (mut watch, events) = spawn(&[&["watch", "--json", "--service", "users"], &registry[..]].concat());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // `register` keeps the node alive until Ctrl-C.
    let (mut node, node_out) = spawn(
        &[
            &["register", "--address", "10.0.0.5:8080", "--service", "users@1.2.0", "--service", "auth"],
            &[
                "--id",
                "cli-node",
                "--ttl",
                "2s",
                "--meta",
                "zone=eu",
                "--check",
                "http",
                "--check-interval",
                "1h",
                "--check-path",
                "/ready",
                "--check-timeout",
                "700ms",
                "--check-failures",
                "1",
                "--check-successes",
                "4",
            ][..],
            &registry[..],
        ]
        .concat(),
    );
    let said = next_line(&node_out, "register's first line");
    assert!(said.contains("registered cli-node at 10.0.0.5:8080"), "{said}");
    let event: serde_json::Value =
        serde_json::from_str(&next_line(&events, "the registration event")).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["node"]["nodeId"].as_str()),
        (Some("NODE_REGISTERED"), Some("cli-node"))
    );

    // Still there after more than its TTL: it heartbeats.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let output = with(&["find", "users", "--version", "1.2.0"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(
        table.starts_with("ID ") && table.contains("cli-node") && table.contains("10.0.0.5:8080"),
        "{table}"
    );
    assert_eq!(with(&["find", "users", "--version-req", "^2"]).status.code(), Some(1));
    let found: serde_json::Value =
        serde_json::from_slice(&with(&["find", "users@^1", "--json"]).stdout).unwrap();
    assert_eq!(found[0]["metadata"]["zone"], "eu");
    let check = &found[0]["metadata"];
    assert_eq!(
        [
            &check["check.type"],
            &check["check.interval-ms"],
            &check["check.path"],
            &check["check.timeout-ms"],
            &check["check.failures"],
            &check["check.successes"]
        ],
        ["http", "3600000", "/ready", "700", "1", "4"],
        "--check and every setting travel with the registration: {check}"
    );

    let nodes: serde_json::Value = serde_json::from_slice(&with(&["nodes", "--json"]).stdout).unwrap();
    assert_eq!(nodes["nodes"][0]["nodeId"], "cli-node");
    assert!(text(&with(&["nodes"]).stdout).contains("users@1.2.0,auth"));
    let services = text(&with(&["services"]).stdout);
    assert!(services.lines().any(|l| l.starts_with("users") && l.contains("1.2.0")), "{services}");
    let health = with(&["health"]);
    assert_eq!(health.status.code(), Some(0));
    assert!(text(&health.stdout).contains("is ready"));

    // Ctrl-C deregisters.
    interrupt(&node);
    assert_eq!(wait_exit(&mut node).await, 0);
    let event: serde_json::Value =
        serde_json::from_str(&next_line(&events, "the deregistration event")).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("NODE_DEREGISTERED"), Some("graceful"))
    );
    assert_eq!(with(&["find", "users"]).status.code(), Some(1));

    // Deregistering an unknown node is an error; a bad id is a usage error.
    let output = with(&["deregister", "ghost"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("no node ghost"));
    assert_eq!(with(&["deregister", "bad id!"]).status.code(), Some(2));

    // A server that goes away ends the watch with an error.
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(wait_exit(&mut watch).await, 1);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("watch"), "{stderr}");
}

#[test]
fn errors_say_what_to_do_and_exit_codes_hold() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = format!("http://127.0.0.1:{port}");
    for args in [vec!["nodes"], vec!["services"], vec!["find", "users"], vec!["health"], vec!["watch"]] {
        let output = muster().args(&args).env("MUSTER_REGISTRY", &nowhere).output().unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("no registry at {nowhere}")), "{args:?}: {stderr}");
        assert!(stderr.contains("is `muster serve` running?"), "{args:?}: {stderr}");
    }
    // Something else answers on the port: the error says so instead of blaming a missing server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    let output = muster().args(["nodes", "--registry", &other]).output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unreadable answer from") && !stderr.contains("no registry at"), "{stderr}");

    for args in [
        vec!["find", "bad name"],
        vec!["find", "users", "--version", "1", "--version-req", "^1"],
        vec!["register", "--address", "10.0.0.1:80"],
        vec!["register", "--address", "10.0.0.1:80", "--service", "users", "--meta", "novalue"],
        vec!["register", "--address", "10.0.0.1:80", "--service", "users", "--check", "ping"],
        vec![
            "register",
            "--address",
            "10.0.0.1:80",
            "--service",
            "users",
            "--check",
            "tcp",
            "--check-interval",
            "5ms",
        ],
        vec!["nodes", "--registry", "localhost:3100"],
        vec!["watch", "--service", "no spaces"],
    ] {
        let output = muster().args(&args).env("MUSTER_REGISTRY", &nowhere).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_and_watch_read_redis_directly() {
    let redis = muster_testkit::redis_server::RedisServer::start().await;
    let url = redis.url();
    let store = muster_redis::RedisRegistry::connect_url(&url).await.unwrap();
    let registration = |id: &str, version: &str| {
        Registration::new(
            NodeId::new(id).unwrap(),
            Address::parse("10.1.0.1:9000").unwrap(),
            vec![ServiceInfo::new("orders", Some(version)).unwrap()],
            Duration::from_secs(30),
        )
        .unwrap()
    };
    store.heartbeat(registration("r-1", "3.1.0")).await.unwrap();

    let nodes = muster().args(["nodes", "--redis", &url]).output().unwrap();
    assert_eq!(nodes.status.code(), Some(0), "{}", text(&nodes.stderr));
    assert!(text(&nodes.stdout).contains("r-1") && text(&nodes.stdout).contains("orders@3.1.0"));
    let found = muster().args(["find", "orders@^3", "--redis", &url, "--json"]).output().unwrap();
    let found: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(found[0]["id"], "r-1");
    assert_eq!(
        muster().args(["find", "orders@^4", "--redis", &url]).output().unwrap().status.code(),
        Some(1)
    );

    let (mut watch, lines) = spawn(&["watch", "--redis", &url]);
    let (mut billing, billing_lines) = spawn(&["watch", "--redis", &url, "--service", "billing"]);
    assert!(next_line(&lines, "the watch banner").contains("watching"));
    assert!(next_line(&billing_lines, "the watch banner").contains("watching"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    store.heartbeat(registration("r-2", "3.2.0")).await.unwrap();
    let line = next_line(&lines, "the registration");
    assert!(line.contains("registered") && line.contains("r-2") && line.contains("orders@3.2.0"), "{line}");
    // The service filter passes billing's nodes only.
    let invoice = Registration::new(
        NodeId::new("b-1").unwrap(),
        Address::parse("10.1.0.2:9000").unwrap(),
        vec![ServiceInfo::new("billing", None).unwrap()],
        Duration::from_secs(30),
    )
    .unwrap();
    store.heartbeat(invoice).await.unwrap();
    let line = next_line(&billing_lines, "billing's registration");
    assert!(line.contains("b-1") && !line.contains("r-2"), "{line}");
    for child in [&watch, &billing] {
        interrupt(child);
    }
    assert_eq!(wait_exit(&mut watch).await, 0);
    assert_eq!(wait_exit(&mut billing).await, 0);

    // Peers' addresses as they wrote them: a URL keeps its own scheme, IPv6 gets its brackets.
    for (id, address) in [("t-ws", "ws://10.8.8.9:9000"), ("t-v6", "::1:9001")] {
        redis.cli(&[
            "hset",
            &format!("titan:discovery:nodes:{id}"),
            "address",
            address,
            "services",
            r#"[{"name":"edge","version":"1.0.0"}]"#,
            "timestamp",
            "1700000000000",
        ]);
        redis.cli(&["set", &format!("titan:discovery:heartbeat:{id}"), "1", "PX", "30000"]);
        redis.cli(&["sadd", "titan:discovery:index:nodes", id]);
    }
    let found = muster().args(["find", "edge", "--redis", &url, "--json"]).output().unwrap();
    let found: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    let urls: Vec<_> =
        found.as_array().unwrap().iter().map(|i| i["url"].as_str().unwrap().to_owned()).collect();
    assert_eq!(urls, ["http://[::1]:9001", "ws://10.8.8.9:9000"], "{found}");
    let table = muster().args(["find", "edge", "--redis", &url]).output().unwrap();
    let table = text(&table.stdout);
    assert!(table.contains("ws://10.8.8.9:9000") && !table.contains("http://ws://"), "{table}");
}

/// `nodes`, `find` and `watch` with `--redis` write nothing: the key space is byte-for-byte the same
/// afterwards, with live, dead and broken nodes of Muster and of Titan peers (ids and addresses
/// Muster itself refuses among them), on a foreign prefix too, and they work against a read-only
/// replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_writes_nothing() {
    use muster_testkit::redis_server::RedisServer;
    use muster_testkit::titan::{Titan, TitanOptions};
    let primary = RedisServer::start().await;
    let url = primary.url();
    let store = muster_redis::RedisRegistry::connect(muster_redis::RedisConfig {
        sweeper: false,
        ..muster_redis::RedisConfig::from_url(&url).unwrap()
    })
    .await
    .unwrap();
    let registration = Registration::new(
        NodeId::new("m-1").unwrap(),
        Address::parse("10.1.0.1:9000").unwrap(),
        vec![ServiceInfo::new("users", Some("1.0.0")).unwrap()],
        Duration::from_secs(60),
    )
    .unwrap();
    store.heartbeat(registration).await.unwrap();
    let titan = Titan::connect(std::slice::from_ref(&url), TitanOptions::titan(false)).await;
    for (id, address) in [("worker@host-1", "ws://10.8.8.9:9000"), ("v6", "fe80::1:9000")] {
        titan.node(id, address, serde_json::json!([{"name": "users", "version": "1.0.0"}])).heartbeat().await;
    }
    // Dead (heartbeat gone) and broken (services not JSON) nodes, which Titan's reader would delete.
    primary.cli(&[
        "hset",
        "titan:discovery:nodes:dead",
        "address",
        "h:1",
        "services",
        "[]",
        "timestamp",
        "1",
    ]);
    primary.cli(&[
        "hset",
        "titan:discovery:nodes:broken",
        "address",
        "h:1",
        "services",
        "{not json",
        "timestamp",
        "1",
    ]);
    primary.cli(&["set", "titan:discovery:heartbeat:broken", "1"]);
    primary.cli(&["sadd", "titan:discovery:index:nodes", "dead", "broken"]);
    let replica = RedisServer::replica_of(&primary).await;
    let before = primary.keyspace();

    for target in [&url, &replica.url()] {
        let nodes = muster().args(["nodes", "--redis", target]).output().unwrap();
        assert_eq!(nodes.status.code(), Some(0), "{}", text(&nodes.stderr));
        let listed = text(&nodes.stdout);
        for id in ["m-1", "worker@host-1", "v6", "ws://10.8.8.9:9000"] {
            assert!(listed.contains(id), "{id} missing from {listed}");
        }
        assert!(!listed.contains("dead") && !listed.contains("broken"), "{listed}");
        let found = muster().args(["find", "users@1.0.0", "--redis", target, "--json"]).output().unwrap();
        assert_eq!(found.status.code(), Some(0), "{}", text(&found.stderr));
        let found: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
        assert_eq!(found.as_array().unwrap().len(), 3, "{found}");
        let foreign = muster().args(["nodes", "--redis", target, "--prefix", "elsewhere"]).output().unwrap();
        assert_eq!(foreign.status.code(), Some(0), "{}", text(&foreign.stderr));
        let netron =
            muster().args(["find", "users", "--redis", target, "--preset", "netron"]).output().unwrap();
        assert_eq!(netron.status.code(), Some(1), "nothing on the netron prefix");
        let (mut watch, lines) = spawn(&["watch", "--redis", target]);
        assert!(next_line(&lines, "the watch banner").contains("watching"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        interrupt(&watch);
        assert_eq!(wait_exit(&mut watch).await, 0);
    }
    assert_eq!(primary.keyspace(), before, "inspection wrote to Redis");
    let titan_view: Vec<String> = titan.get_active_nodes().await.into_iter().map(|n| n.node_id).collect();
    assert_eq!(titan_view, ["m-1", "v6", "worker@host-1"], "Titan still sees its nodes");
}

/// A first-time user is told what is going on: other versions of a service, a registry that went
/// away and came back (and registered the node again), JSON from `deregister --json`, help from
/// `help --help`, and which URLs are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_say_what_happened() {
    let (mut server, base, _) = spawn_serve(["--listen", "127.0.0.1:0"], &[]);
    let port = base.rsplit(':').next().unwrap().to_owned();
    let registry = ["--registry", base.as_str()];
    let with = |args: &[&str]| -> Output { run(&[args, &registry[..]].concat()) };

    let (mut node, said) = spawn(
        &[
            &["register", "--address", "10.0.0.5:8080", "--service", "users@1.2.0"],
            &["--id", "n1", "--ttl", "1s"][..],
            &registry[..],
        ]
        .concat(),
    );
    assert!(next_line(&said, "registered").contains("registered n1"));
    let output = with(&["find", "users", "--version-req", "^2"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("users has version 1.2.0"), "{}", text(&output.stderr));

    // The registry goes away: register says so; it comes back empty: register says it registered again.
    let _ = server.kill();
    let _ = server.wait();
    let line = next_line(&said, "the failure");
    assert!(line.contains("heartbeat failed"), "{line}");
    let (mut server, _, _) = spawn_serve(["--listen", &format!("127.0.0.1:{port}")], &[]);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("registered n1 again")) {
        lines.push(next_line(&said, "registered again"));
    }
    interrupt(&node);
    assert_eq!(wait_exit(&mut node).await, 0);

    let gone: serde_json::Value =
        serde_json::from_slice(&with(&["deregister", "n1", "--json"]).stdout).unwrap();
    assert_eq!(gone, serde_json::json!({"id": "n1", "deregistered": false}));
    let help = run(&["help", "--help"]);
    assert_eq!(help.status.code(), Some(0), "{}", text(&help.stderr));
    assert!(text(&help.stdout).contains("Usage"));
    let ftp = run(&["nodes", "--registry", "ftp://127.0.0.1:1"]);
    assert_eq!(ftp.status.code(), Some(2));
    assert!(text(&ftp.stderr).contains("not an http:// or https:// URL"), "{}", text(&ftp.stderr));
    let _ = server.kill();
    let _ = server.wait();
}

/// The README's "locking it down" steps over mutual TLS: bootstrap, a node-scoped token, a
/// registration with it, a forbidden write refused, anonymous reads refused, a revoked token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_down_registry_over_mutual_tls() {
    let dir = muster_testkit::redis_server::TempDir::new("cli-tls");
    let pki = muster_testkit::certs::TestPki::generate(dir.path());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (cert, key, ca, client) =
        (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca), path(&pki.client));
    let (mut server, base, first) = spawn_serve(
        ["--listen", "127.0.0.1:0", "--acl", "--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca],
        &[],
    );
    assert!(base.starts_with("https://"), "{first}");
    let tls = ["--registry", base.as_str(), "--ca-cert", ca.as_str(), "--client-cert", client.as_str()];
    let with = |args: &[&str]| -> Output { run(&[args, &tls[..]].concat()) };

    let boot = with(&["acl", "bootstrap"]);
    assert_eq!(boot.status.code(), Some(0), "{}", text(&boot.stderr));
    let admin = text(&boot.stdout).lines().last().unwrap().to_owned();
    assert!(admin.starts_with("mst_"), "{}", text(&boot.stdout));
    assert_eq!(with(&["acl", "bootstrap"]).status.code(), Some(2), "only once");

    let created = with(&[
        "acl",
        "create",
        "billing-deploy",
        "--rule",
        "access=write,services=billing,nodes=billing-*",
        "--token",
        &admin,
    ]);
    assert_eq!(created.status.code(), Some(0), "{}", text(&created.stderr));
    let token = text(&created.stdout).lines().last().unwrap().to_owned();

    let (mut node, lines) =
        spawn(
            &[
                &[
                    "register",
                    "--address",
                    "10.0.0.7:8080",
                    "--service",
                    "billing@1.0.0",
                    "--id",
                    "billing-1",
                ][..],
                &tls[..],
                &["--token", token.as_str()][..],
            ]
            .concat(),
        );
    let said = next_line(&lines, "register's first line");
    assert!(said.contains("registered billing-1"), "{said}");

    let forbidden = with(&[
        "register",
        "--address",
        "10.0.0.8:8080",
        "--service",
        "auth",
        "--id",
        "billing-2",
        "--token",
        &token,
    ]);
    assert_eq!(forbidden.status.code(), Some(2));
    assert!(
        text(&forbidden.stderr).contains("does not grant write on service `auth`"),
        "{}",
        text(&forbidden.stderr)
    );

    let anonymous = with(&["nodes"]);
    assert_eq!(anonymous.status.code(), Some(2));
    assert!(text(&anonymous.stderr).contains("token"), "{}", text(&anonymous.stderr));
    let listed = with(&["nodes", "--token", &token]);
    assert!(text(&listed.stdout).contains("billing-1"), "{}", text(&listed.stdout));
    let whoami = with(&["acl", "whoami", "--token", &token]);
    assert!(text(&whoami.stdout).starts_with("billing-deploy:"), "{}", text(&whoami.stdout));
    let tokens = with(&["acl", "list", "--token", &admin]);
    assert!(text(&tokens.stdout).contains("billing-deploy") && !text(&tokens.stdout).contains(&token));

    // Without the CA the server is not trusted; without a client certificate the handshake fails.
    let untrusted = run(&["nodes", "--registry", &base, "--token", &token]);
    assert_eq!(untrusted.status.code(), Some(1), "{}", text(&untrusted.stderr));
    let no_identity = run(&["nodes", "--registry", &base, "--ca-cert", &ca, "--token", &token]);
    assert_eq!(no_identity.status.code(), Some(1), "{}", text(&no_identity.stderr));

    interrupt(&node);
    assert_eq!(wait_exit(&mut node).await, 0);
    assert_eq!(with(&["acl", "revoke", "billing-deploy", "--token", &admin]).status.code(), Some(0));
    let revoked = with(&["nodes", "--token", &token]);
    assert_eq!(revoked.status.code(), Some(2));
    assert!(text(&revoked.stderr).contains("not valid"), "{}", text(&revoked.stderr));
    let _ = server.kill();
    let _ = server.wait();
}

/// Tokens of the embedded store live in its data directory: a restarted server knows them, and
/// bootstrap stays done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_restart_in_the_data_dir() {
    let dir = std::env::temp_dir().join(format!("muster-cli-acl-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.to_str().unwrap().to_owned();
    let (mut server, base, _) = spawn_serve(["--listen", "127.0.0.1:0", "--acl", "--data-dir", &data], &[]);
    let boot = run(&["acl", "bootstrap", "--registry", &base]);
    assert_eq!(boot.status.code(), Some(0), "{}", text(&boot.stderr));
    let admin = text(&boot.stdout).lines().last().unwrap().to_owned();
    let stored = std::fs::read_to_string(dir.join("acl-tokens.json")).unwrap();
    assert!(stored.contains("bootstrap") && !stored.contains(&admin), "hashes only: {stored}");
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    server.wait().unwrap();
    let (mut server, base, _) = spawn_serve(["--listen", "127.0.0.1:0", "--acl", "--data-dir", &data], &[]);
    assert_eq!(
        run(&["acl", "bootstrap", "--registry", &base]).status.code(),
        Some(2),
        "bootstrap stays done"
    );
    let whoami = run(&["acl", "whoami", "--registry", &base, "--token", &admin]);
    assert!(text(&whoami.stdout).starts_with("bootstrap:"), "{}", text(&whoami.stdout));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `muster call` and `muster describe` against a Netron peer: by address, found in a fleet on
/// Redis, and found through a registry server; results as JSON, streams one chunk per line, the
/// service's errors exit 1, bad arguments exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_and_describe_netron_peers() {
    use muster_peer::wire::{JsError, Value};
    let peer = muster_peer::Peer::new(muster_peer::PeerConfig::default());
    let calculator = muster_peer::ServiceBuilder::new("calculator", "1.0.0")
        .unwrap()
        .method("add", &["Number", "Number"], "Number", |(a, b): (f64, f64)| async move { Ok(a + b) })
        .method("fail", &[], "void", |(): ()| async move { Err::<(), _>(JsError::new("on purpose")) })
        .method("refuse", &[], "void", |(): ()| async move {
            let details = Value::object([("max", Value::Int(3))]);
            let fields = vec![("code".to_owned(), Value::str("E_LIMIT")), ("details".to_owned(), details)];
            Err::<(), _>(JsError { fields, ..JsError::new("over the limit") })
        })
        .property("since", "Date", false, Value::Null)
        .stream_method("count", &["Number"], "AsyncGenerator", |n: u32| {
            futures::stream::iter((1..=n).map(Ok::<u32, JsError>))
        })
        .property("version", "String", true, Value::str("1.0.0"))
        .build();
    peer.expose_service(std::sync::Arc::clone(&calculator)).unwrap();
    let address = peer.listen("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{address}");
    let at = ["--peer", url.as_str()];
    let with = |args: &[&str]| -> Output { run(&[&args[..2], &at[..], &args[2..]].concat()) };

    let sum = with(&["call", "calculator@1.0.0", "add", "5", "3"]);
    assert_eq!((sum.status.code(), text(&sum.stdout)), (Some(0), "8\n".to_owned()), "{}", text(&sum.stderr));
    let counted = with(&["call", "calculator", "count", "3"]);
    assert_eq!(text(&counted.stdout), "1\n2\n3\n");
    let failed = with(&["call", "calculator", "fail"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(text(&failed.stderr).contains("on purpose"), "{}", text(&failed.stderr));
    assert_eq!(with(&["call", "calculator", "add", "five", "3"]).status.code(), Some(2), "not JSON");
    // An error's own fields are shown.
    let refused = with(&["call", "calculator", "refuse"]);
    assert_eq!(refused.status.code(), Some(1));
    let said = text(&refused.stderr);
    assert!(
        said.contains("over the limit")
            && said.contains("code: \"E_LIMIT\"")
            && said.contains(r#"details: {"max":3}"#),
        "{said}"
    );
    // Properties: read, written with Netron's richer types in the tagged form, read-only refused.
    let version = with(&["get", "calculator@1.0.0", "version"]);
    assert_eq!(
        (version.status.code(), text(&version.stdout)),
        (Some(0), "\"1.0.0\"\n".to_owned()),
        "{}",
        text(&version.stderr)
    );
    let set = with(&["set", "calculator", "since", r#"{"$date":1700000000000}"#]);
    assert_eq!(set.status.code(), Some(0), "{}", text(&set.stderr));
    assert_eq!(calculator.get("since").unwrap(), Value::Date(1_700_000_000_000), "a Date, not a number");
    assert_eq!(text(&with(&["get", "calculator", "since"]).stdout), "1700000000000\n");
    let set = with(&[
        "set",
        "calculator",
        "since",
        r#"{"$map":[[{"$bigint":"12345678901234567890"},{"$set":[1]}]]}"#,
    ]);
    assert_eq!(set.status.code(), Some(0), "{}", text(&set.stderr));
    assert_eq!(
        calculator.get("since").unwrap(),
        Value::Map(vec![(Value::BigInt("12345678901234567890".into()), Value::Set(vec![Value::Int(1)]))])
    );
    assert_eq!(with(&["set", "calculator", "version", r#""2.0.0""#]).status.code(), Some(1), "read-only");
    assert_eq!(
        with(&["set", "calculator", "since", r#"{"$dtae":1}"#]).status.code(),
        Some(2),
        "an unknown tag"
    );
    assert_eq!(with(&["call", "nothing", "add"]).status.code(), Some(1));
    let described = text(&run(&["describe", "--peer", &url]).stdout);
    assert!(described.starts_with("calculator@1.0.0\n"), "{described}");
    assert!(
        described.contains("  add(Number, Number) -> Number\n")
            && described.contains("  version: String (read-only)")
    );
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["describe", "--peer", &url, "--json"]).stdout).unwrap();
    assert_eq!(json["calculator@1.0.0"]["methods"]["count"]["arguments"][0], "Number");
    assert_eq!(
        run(&["call", "calculator", "add", "1", "2"]).status.code(),
        Some(2),
        "no --peer/--redis/--registry"
    );

    // Found in a fleet on Redis (Netron's keys).
    let redis = muster_testkit::redis_server::RedisServer::start().await;
    let config =
        muster_redis::RedisConfig::from_url(&redis.url()).unwrap().with_preset(muster_core::Preset::Netron);
    let registry = std::sync::Arc::new(muster_redis::RedisRegistry::connect(config).await.unwrap());
    let advertised = muster_core::Address::parse(address.to_string()).unwrap();
    peer.enable_discovery(registry, muster_core::DiscoveryOptions::default(), Some(advertised))
        .await
        .unwrap();
    let by_redis = run(&["call", "--redis", &redis.url(), "calculator@^1", "add", "2", "2"]);
    assert_eq!(text(&by_redis.stdout), "4\n", "{}", text(&by_redis.stderr));

    // Found through a registry server.
    let (mut server, base, _) = spawn_serve(["--listen", "127.0.0.1:0"], &[]);
    muster_client::install_tls_provider();
    let body = serde_json::json!({"address": address.to_string(), "services": [{"name": "calculator", "version": "1.0.0"}]});
    let put = crate::http().put(format!("{base}/v1/nodes/calc-1")).json(&body).send().await.unwrap();
    assert_eq!(put.status(), 201);
    let by_registry = run(&["call", "--registry", &base, "calculator@^1", "add", "1", "1"]);
    assert_eq!(text(&by_registry.stdout), "2\n", "{}", text(&by_registry.stderr));
    let _ = server.kill();
    let _ = server.wait();
    peer.stop().await;
}

/// The newcomer's walk: `muster serve --dns`, `muster register`; the node answers in DNS and on
/// the dashboard's data; the register process is killed and the node leaves both by its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_node_shows_in_dns_and_leaves_when_killed() {
    let dns_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dns = format!("127.0.0.1:{dns_port}");
    let (mut server, base, _) = spawn_serve(["--listen", "127.0.0.1:0", "--dns", dns.as_str()], &[]);
    muster_client::install_tls_provider();
    let page = crate::http().get(format!("{base}/ui")).send().await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("<title>Muster</title>"), "the dashboard is served");
    let dig = || {
        let output = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &dns_port.to_string(),
                "+short",
                "+time=1",
                "+tries=1",
                "shop.service.muster.",
            ])
            .output()
            .expect("dig runs (Debian package dnsutils)");
        text(&output.stdout)
    };
    let (mut node, out) = spawn(&[
        "register",
        "--address",
        "10.9.8.7:80",
        "--service",
        "shop@1.0.0",
        "--ttl",
        "1s",
        "--registry",
        &base,
    ]);
    next_line(&out, "register's first line");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dig().trim() != "10.9.8.7" {
        assert!(tokio::time::Instant::now() < deadline, "the node answers in DNS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.kill().unwrap();
    node.wait().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !dig().trim().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the killed node leaves DNS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let nodes: serde_json::Value =
        crate::http().get(format!("{base}/v1/nodes")).send().await.unwrap().json().await.unwrap();
    assert_eq!(nodes["nodes"], serde_json::json!([]), "and the registry (what the dashboard shows)");

    // The binary runs health checks: a node nothing listens for is set DOWN.
    let (mut dead, out) = spawn(&[
        "register",
        "--address",
        "127.0.0.1:1",
        "--service",
        "dead",
        "--id",
        "dead-1",
        "--check",
        "tcp",
        "--check-interval",
        "100ms",
        "--registry",
        &base,
    ]);
    next_line(&out, "register's first line");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let node: serde_json::Value =
            crate::http().get(format!("{base}/v1/nodes/dead-1")).send().await.unwrap().json().await.unwrap();
        if node["status"] == "DOWN" {
            assert!(
                node["metadata"]["check.output"].as_str().is_some_and(|o| o.contains("127.0.0.1:1")),
                "{node}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the check sets it DOWN: {node}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every DNS form, from the binary: a DOWN node answers by name and says so in TXT; SRV by
    // version and by declared protocol; reverse lookups; NS; metrics.
    let (mut udp_node, out) = spawn(&[
        "register",
        "--address",
        "10.9.8.6:5353",
        "--service",
        "names@2.1.0",
        "--id",
        "names-1",
        "--meta",
        "protocol=tcp,udp",
        "--meta",
        "zone=eu-1",
        "--registry",
        &base,
    ]);
    next_line(&out, "register's first line");
    let dig = |args: &[&str]| {
        let output = Command::new("dig")
            .args(["@127.0.0.1", "-p", &dns_port.to_string(), "+short", "+time=1", "+tries=1"])
            .args(args)
            .output()
            .expect("dig runs (Debian package dnsutils)");
        text(&output.stdout)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dig(&["names.service.muster."]).trim() != "10.9.8.6" {
        assert!(tokio::time::Instant::now() < deadline, "names-1 answers in DNS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dig(&["v2-1-0.names.service.muster."]), "10.9.8.6\n");
    assert_eq!(dig(&["_names._udp.service.muster.", "SRV"]), "1 1 5353 names-1.node.muster.\n");
    assert_eq!(dig(&["_names._tcp.v2-1-0.service.muster.", "SRV"]), "1 1 5353 names-1.node.muster.\n");
    assert_eq!(dig(&["_names._tcp.muster.", "SRV"]), "1 1 5353 names-1.node.muster.\n");
    assert_eq!(dig(&["names-1.node.muster.", "TXT"]), "\"status=UP\" \"protocol=tcp,udp\" \"zone=eu-1\"\n");
    assert_eq!(dig(&["-x", "10.9.8.6"]), "names-1.node.muster.\n");
    assert_eq!(dig(&["dead-1.node.muster."]), "127.0.0.1\n", "a DOWN node answers by name");
    assert!(dig(&["dead-1.node.muster.", "TXT"]).starts_with("\"status=DOWN\""), "and says so in TXT");
    assert!(dig(&["dead.service.muster."]).is_empty(), "but not for its service");
    assert_eq!(dig(&["muster.", "NS"]), "ns.muster.\n");
    assert_eq!(dig(&["ns.muster."]), "127.0.0.1\n");
    let metrics = crate::http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("muster_dns_queries_total{qtype=\"PTR\",rcode=\"NOERROR\",transport=\"udp\"} 1"),
        "{metrics}"
    );
    let _ = udp_node.kill();
    let _ = dead.kill();
    let _ = server.kill();
    let _ = server.wait();
}
