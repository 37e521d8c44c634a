//! The OpenAPI document checked against the running binary: schemathesis (from PyPI) generates
//! requests from `/openapi.json` — valid ones that must be accepted, invalid ones that must be
//! refused — and checks every answer against the document, with all its checks on. It must find
//! nothing, on the embedded store and on Redis.
//!
//! Schemathesis is installed once into a virtual environment under the build directory (Python 3
//! with `venv` and access to PyPI are needed), or taken from `MUSTER_SCHEMATHESIS`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use muster_testkit::redis_server::RedisServer;

/// The schemathesis version the document is checked with.
const VERSION: &str = "4.32.5";

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("MUSTER_SCHEMATHESIS") {
        return path.into();
    }
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{VERSION}"));
            let bin = venv.join("bin").join("schemathesis");
            if !bin.exists() {
                let created = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
                assert!(
                    created.is_ok_and(|s| s.success()),
                    "creating a Python virtual environment failed: install python3 and python3-venv"
                );
                let pip = venv.join("bin").join("pip");
                let installed =
                    Command::new(pip).args(["install", "-q", &format!("schemathesis=={VERSION}")]).status();
                assert!(installed.is_ok_and(|s| s.success()), "installing schemathesis from PyPI failed");
            }
            bin
        })
        .clone()
}

/// Starts `muster serve` with `args`; returns the process and its base URL.
fn spawn_serve(args: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_muster"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("muster serve starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("the banner");
    let base =
        first.split_whitespace().find(|w| w.starts_with("http://")).expect("a URL in the banner").to_owned();
    (child, base)
}

/// Runs schemathesis against a server started with `store` arguments.
fn check_document(store: &[&str]) {
    let schemathesis = schemathesis();
    let mut args = vec!["--listen", "127.0.0.1:0", "--max-wait", "500ms"];
    args.extend_from_slice(store);
    let (mut server, base) = spawn_serve(&args);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(schemathesis)
        // Its cache of found failures goes to the build directory, not the source tree.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .arg("--no-color")
        .arg("--config-file")
        .arg(workspace.join("schemathesis.toml"))
        .args(["run", &format!("{base}/openapi.json"), "--checks", "all", "--workers", "1"])
        // See schemathesis.toml: a node created with a short TTL may expire between two steps.
        .args(["--exclude-checks", "ensure_resource_availability"])
        .args(["--max-examples", "30", "--request-timeout", "2.5", "--seed", "20261201"])
        .output()
        .expect("schemathesis runs");
    let _ = server.kill();
    let _ = server.wait();
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: String = report.lines().filter(|l| l.len() < 600).collect::<Vec<_>>().join("\n");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{summary}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It ran every phase (a warning about missing test data is no failure).
    assert!(
        report.contains("Stateful") && report.contains("passed") && !report.contains("FAILURES"),
        "{summary}"
    );
}

/// One store after the other: each run keeps a core busy, and other tests of this crate run in
/// other binaries, so a slow answer is the server's, not the machine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_on_either_store() {
    tokio::task::spawn_blocking(|| check_document(&[])).await.unwrap();
    let redis = RedisServer::start().await;
    let url = redis.url();
    tokio::task::spawn_blocking(move || check_document(&["--redis", &url])).await.unwrap();
    drop(redis);
}
