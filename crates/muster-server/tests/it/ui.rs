//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven
//! over WebDriver): it loads without console errors, lists the registered services with each
//! status's count, follows registrations, status changes and expiries live, shows the real last
//! heartbeat, gives health checks their own column and panel, filters, sorts, deep-links, has a
//! nodes view and an activity chart, shows a lost connection as stale and resumes, asks for a token
//! under access control, fits 1280 and 390 px (or says that a table scrolls), and passes an axe-core
//! accessibility audit run inside the page. Screenshots go to `target/tmp/ui-screenshots/`; with
//! `MUSTER_UPDATE_SCREENSHOTS=1` the fleet view is also written to `docs/dashboard.png`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use muster_core::{Address, NodeId, NodeStatus, NodeUpdate, Registration, Registry, ServiceInfo};
use muster_memory::MemoryRegistry;
use muster_server::{AclConfig, AppState, ServerConfig};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{TestServer, send};

/// A chromedriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver runs (Debian packages chromium and chromium-driver)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver { child, url }
}

async fn browser(driver: &Driver, width: u32, height: u32) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={width},{height}")],
            "binary": "/usr/bin/chromium",
        }),
    );
    capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Page text of the element `css`, read in one script (the page re-renders its tables as events
/// arrive, so an element found in one call can be gone by the next).
async fn text_of(client: &Client, css: &str) -> String {
    let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null";
    let text = client.execute(script, vec![json!(css)]).await.unwrap();
    text.as_str().unwrap_or_else(|| panic!("no element {css}")).trim().to_owned()
}

/// Waits until `check` holds on the page's state (polled).
async fn until(client: &Client, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = client.execute(script, vec![]).await.unwrap();
        if value == json!(true) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the element `css` in one script (a table row's link or header can be re-rendered
/// between a WebDriver find and its click).
async fn click(client: &Client, css: &str) {
    let script =
        "const e = document.querySelector(arguments[0]); if (!e) return false; e.click(); return true";
    let clicked = client.execute(script, vec![json!(css)]).await.unwrap();
    assert_eq!(clicked, json!(true), "no element {css} to click");
}

/// The value of `script` run in the page.
async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.unwrap()
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Console messages at SEVERE level (errors), from Chromium's log.
async fn console_errors(client: &Client) -> Vec<String> {
    let logs = client.issue_cmd(GetLog).await.expect("Chromium's browser log");
    logs.as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["level"] == "SEVERE")
        .map(|entry| entry["message"].to_string())
        .collect()
}

/// Chromium's `GET /session/{id}/se/log` (not in the WebDriver standard).
#[derive(Debug)]
struct GetLog;

impl fantoccini::wd::WebDriverCompatibleCommand for GetLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

fn registration(id: &str, address: &str, service: &str, version: &str, ttl: Duration) -> Registration {
    Registration::new(
        NodeId::new(id).unwrap(),
        Address::parse(address).unwrap(),
        vec![ServiceInfo::new(service, Some(version)).unwrap()],
        ttl,
    )
    .unwrap()
}

/// A date and time as the page writes them: `2026-12-07 14:03:12`.
const STAMP: &str = r"/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_live_in_a_real_browser() {
    let registry = MemoryRegistry::new();
    let server = TestServer::start(Arc::new(registry.clone()), ServerConfig::default()).await;
    let long = Duration::from_secs(60);
    registry.heartbeat(registration("users-1", "10.0.0.1:8080", "users", "1.2.0", long)).await.unwrap();
    registry.heartbeat(registration("users-2", "10.0.0.2:8080", "users", "2.0.0", long)).await.unwrap();
    registry.heartbeat(registration("billing-1", "10.0.0.3:9000", "billing", "3.1.0", long)).await.unwrap();

    let driver = driver().await;
    let client = browser(&driver, 1280, 800).await;
    client.goto(&server.url("/")).await.unwrap();
    assert!(client.current_url().await.unwrap().as_str().ends_with("/ui"), "/ redirects to the dashboard");
    until(
        &client,
        "the services are listed",
        "return document.querySelectorAll('#services tbody tr').length === 2",
    )
    .await;
    assert_eq!(text_of(&client, "#connection").await, "live");
    let services = text_of(&client, "#services tbody").await;
    assert!(
        services.contains("billing") && services.contains("users") && services.contains("1.2.0, 2.0.0"),
        "{services}"
    );
    until(
        &client,
        "the figures",
        "return document.querySelector('[data-figure=instances] b')?.textContent === '3'",
    )
    .await;
    // The status filter offers exactly the statuses a node can have.
    let options =
        js(&client, "return [...document.querySelectorAll('#status-filter option')].map(o => o.textContent)")
            .await;
    assert_eq!(options, json!(["any", "UP", "DOWN", "STARTING", "STOPPING"]));

    // A service's instances, a node's details: the selected rows are marked, the URL follows.
    click(&client, "tr[data-service=users] a").await;
    until(&client, "the instances", "return document.querySelectorAll('#instances tbody tr').length === 2")
        .await;
    assert_eq!(
        js(&client, "return document.querySelector('tr[data-service=users]').className").await,
        "selected"
    );
    let instances = text_of(&client, "#instances tbody").await;
    assert!(
        instances.contains("10.0.0.1:8080") && instances.contains("UP") && instances.contains("ago"),
        "{instances}"
    );
    click(&client, "tr[data-node=users-1] a").await;
    until(&client, "the node's details", "return !document.getElementById('node-detail').hidden").await;
    assert_eq!(
        js(&client, "return document.querySelector('#instances tr[data-node=users-1]').className").await,
        "selected"
    );
    let hash = js(&client, "return location.hash").await;
    assert_eq!(hash, "#/services?service=users&node=users-1");
    // Times are dates, not epoch milliseconds; the JSON is there for who wants it.
    let registered = text_of(&client, "[data-prop=Registered]").await;
    let dated = js(
        &client,
        &format!("return {STAMP}.test(document.querySelector('[data-prop=Registered]').textContent)"),
    )
    .await;
    assert_eq!(dated, json!(true), "{registered}");
    assert!(registered.contains("ago"), "{registered}");
    // An epoch in milliseconds is 13 digits in a row; a date's digits ("07:17:04") never are.
    let props = text_of(&client, "#node-props").await;
    let epoch =
        js(&client, r"return /\d{12,}/.test(document.getElementById('node-props').textContent)").await;
    assert_eq!(epoch, json!(false), "no epoch milliseconds: {props}");
    let raw = js(&client, "return document.getElementById('node-json').textContent").await;
    assert!(raw.as_str().unwrap().contains("\"registeredAt\""), "{raw}");
    screenshot(&client, "dashboard-1280").await;

    // Live: a registration, a status change and an expiry show without a reload.
    registry
        .heartbeat(registration("users-3", "10.0.0.4:8080", "users", "2.0.0", Duration::from_millis(800)))
        .await
        .unwrap();
    until(&client, "the new instance", "return !!document.querySelector('#instances tr[data-node=users-3]')")
        .await;
    registry
        .update(&NodeId::new("users-2").unwrap(), NodeUpdate::new().status(NodeStatus::Down))
        .await
        .unwrap();
    until(&client, "the status change", "return document.querySelector('#instances tr[data-node=users-2] td:nth-child(2)').textContent === 'DOWN'").await;
    // Each status has its own count.
    until(
        &client,
        "the DOWN count",
        "return document.querySelector('tr[data-service=users] [data-status=DOWN]')?.textContent === '1 DOWN'",
    )
    .await;
    until(&client, "the expiry", "return !document.querySelector('#instances tr[data-node=users-3]')").await;
    let events = text_of(&client, "#events").await;
    assert!(
        events.contains("users-3 registered at 10.0.0.4:8080 (users 2.0.0), UP")
            && events.contains("users-2 UP → DOWN")
            && events.contains("users-3 expired: no heartbeat within its 0.8 s TTL"),
        "{events}"
    );
    assert!(!events.contains("(expired)"), "the reason reads as a sentence: {events}");
    let dated = js(
        &client,
        &format!(
            "return [...document.querySelectorAll('#events time')].every(t => {STAMP}.test(t.textContent))"
        ),
    )
    .await;
    assert_eq!(dated, json!(true), "every event has a date: {events}");

    // Filters: by name, by version, by status.
    let filter = client.find(Locator::Id("filter")).await.unwrap();
    filter.send_keys("bill").await.unwrap();
    until(&client, "the name filter", "return document.querySelectorAll('#services tbody tr').length === 1")
        .await;
    filter.clear().await.unwrap();
    client
        .execute("document.getElementById('filter').dispatchEvent(new Event('input'))", vec![])
        .await
        .unwrap();
    filter.send_keys("2.0.0").await.unwrap();
    until(&client, "the version filter", "return document.querySelector('#services tbody').textContent.includes('users') && !document.querySelector('#services tbody').textContent.includes('billing')").await;
    filter.clear().await.unwrap();
    client
        .execute("document.getElementById('filter').dispatchEvent(new Event('input'))", vec![])
        .await
        .unwrap();
    client.execute("const s = document.getElementById('status-filter'); s.value = 'DOWN'; s.dispatchEvent(new Event('change'));", vec![]).await.unwrap();
    until(
        &client,
        "the status filter",
        "return document.querySelectorAll('#instances tbody tr').length === 1",
    )
    .await;
    assert_eq!(
        js(&client, "return location.hash").await,
        "#/services?service=users&node=users-1&status=DOWN"
    );
    let errors = console_errors(&client).await;
    assert!(errors.is_empty(), "no console errors: {errors:?}");
    // The log is really read: an error the page logs now is seen.
    client.execute("console.error('seen by the test')", vec![]).await.unwrap();
    let seen = console_errors(&client).await;
    assert!(seen.iter().any(|e| e.contains("seen by the test")), "the console log is read: {seen:?}");
    client.close().await.unwrap();
}

/// The heartbeat column shows the node's last heartbeat (the watch carries changes only, so the
/// page refreshes them with one list request now and then, never a request per node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_heartbeat_is_the_real_one() {
    let registry = MemoryRegistry::new();
    let server = TestServer::start(Arc::new(registry.clone()), ServerConfig::default()).await;
    let beat = registration("beat-1", "10.0.0.1:80", "pulse", "1.0.0", Duration::from_secs(30));
    registry.heartbeat(beat.clone()).await.unwrap();
    let started = tokio::time::Instant::now();
    let beating = {
        let registry = registry.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                registry.heartbeat(beat.clone()).await.unwrap();
            }
        })
    };
    let driver = driver().await;
    let client = browser(&driver, 1280, 800).await;
    client.goto(&server.url("/ui#/services?service=pulse")).await.unwrap();
    until(&client, "the instance", "return !!document.querySelector('#instances tr[data-node=beat-1]')")
        .await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    // Registered five seconds ago, heartbeating every 0.3 s: the column says so.
    until(
        &client,
        "the heartbeat column shows the last heartbeat",
        "return /^[0-2]s ago$/.test(document.querySelector('#instances tr[data-node=beat-1] td.heartbeat').textContent)",
    )
    .await;
    let registered = text_of(&client, "#instances tr[data-node=beat-1] td:nth-child(7)").await;
    let seconds: u64 =
        registered.trim_end_matches("s ago").parse().unwrap_or_else(|_| panic!("{registered}"));
    assert!((4..60).contains(&seconds), "registered {registered}, not at the last heartbeat");
    // One list request every two seconds at most, none per node.
    let requests = js(
        &client,
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).pathname).filter(p => p.startsWith('/v1/nodes'))",
    )
    .await;
    let requests: Vec<String> = serde_json::from_value(requests).unwrap();
    assert!(requests.iter().all(|p| p == "/v1/nodes"), "no request per node: {requests:?}");
    let seconds = started.elapsed().as_secs() as usize;
    assert!(!requests.is_empty() && requests.len() <= seconds / 2 + 1, "{} in {seconds} s", requests.len());
    beating.abort();
    client.close().await.unwrap();
}

/// A node's health check has its own column and panel: type, target, last output, since when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_have_their_own_panel() {
    let server = TestServer::memory().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (status, body) = send(&server, Method::PUT, "/v1/nodes/db-1", json!({
        "address": "127.0.0.1:5432", "services": [{"name": "db", "version": "16.1.0"}], "ttlMs": 60_000,
        "metadata": {"zone": "eu-west-1a", "description": "primary database of the accounting successes and failures ledger"},
        "check": {"type": "tcp", "target": closed.to_string(), "intervalMs": 200, "failures": 1, "successes": 2},
    }))
    .await;
    assert_eq!(status.as_u16(), 201, "{body}");
    let driver = driver().await;
    let client = browser(&driver, 1280, 800).await;
    client.goto(&server.url("/ui#/services?service=db&node=db-1")).await.unwrap();
    until(
        &client,
        "the check fails",
        "return document.querySelector('#instances tr[data-node=db-1] td:nth-child(6)')?.textContent === 'tcp failing'",
    )
    .await;
    assert_eq!(
        js(&client, "return document.querySelector('#instances th[data-key=check]').textContent").await,
        "Check"
    );
    until(&client, "the panel", "return !!document.querySelector('#node-check [data-prop=Since]')").await;
    let panel = text_of(&client, "#node-check").await;
    assert!(
        panel.contains("TCP") && panel.contains(&closed.to_string()) && panel.contains("failing"),
        "{panel}"
    );
    let output = text_of(&client, "#node-check [data-prop='Last output']").await;
    assert!(output.starts_with(&format!("TCP {closed}")), "{output}");
    let dated = js(
        &client,
        &format!("return {STAMP}.test(document.querySelector('#node-check [data-prop=Since]').textContent)"),
    )
    .await;
    assert_eq!(dated, json!(true), "{panel}");
    // The metadata table has the node's own labels, not the check's keys.
    let metadata = text_of(&client, "#node-meta").await;
    assert!(
        metadata.contains("zone") && metadata.contains("eu-west-1a") && !metadata.contains("check."),
        "{metadata}"
    );
    // Long values break between words only.
    let broken = js(
        &client,
        "const td = [...document.querySelectorAll('#node-meta td')].find(td => td.textContent.startsWith('primary')); \
         return getComputedStyle(td).wordBreak + ' ' + getComputedStyle(td).overflowWrap",
    )
    .await;
    assert_eq!(broken, "normal break-word");
    client.close().await.unwrap();
}

/// Deep links: the view, the service, the node, the filters and the sort are in the URL; the nodes
/// view lists every node and sorts on every column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_links_sorting_and_the_nodes_view() {
    let registry = MemoryRegistry::new();
    let server = TestServer::start(Arc::new(registry.clone()), ServerConfig::default()).await;
    let long = Duration::from_secs(60);
    for (id, address, service) in [
        ("n-a", "10.0.0.3:80", "web"),
        ("n-b", "10.0.0.1:80", "web"),
        ("n-c", "10.0.0.2:80", "api"),
        ("n-d", "10.0.0.4:80", "api"),
    ] {
        registry.heartbeat(registration(id, address, service, "1.0.0", long)).await.unwrap();
    }
    registry
        .update(&NodeId::new("n-d").unwrap(), NodeUpdate::new().status(NodeStatus::Stopping))
        .await
        .unwrap();
    let driver = driver().await;
    let client = browser(&driver, 1280, 800).await;
    client.goto(&server.url("/ui#/nodes?sort-nodes=address:desc")).await.unwrap();
    let order = "[...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node).join(' ')";
    until(&client, "the nodes, by address descending", &format!("return {order} === 'n-d n-a n-c n-b'"))
        .await;
    assert_eq!(
        js(&client, "return document.querySelector('#nodes th[data-key=address]').getAttribute('aria-sort')")
            .await,
        "descending"
    );
    assert_eq!(
        js(&client, "return document.getElementById('tab-nodes').getAttribute('aria-current')").await,
        "page"
    );
    // Every column sorts; a click on the sorted one turns it around; the URL keeps it.
    let keys: Vec<String> = serde_json::from_value(
        js(&client, "return [...document.querySelectorAll('#nodes th')].map(th => th.dataset.key)").await,
    )
    .unwrap();
    assert_eq!(keys, ["node", "status", "heartbeat", "address", "age", "services", "check"]);
    click(&client, "#nodes th[data-key=node] button").await;
    until(&client, "by node", &format!("return {order} === 'n-a n-b n-c n-d'")).await;
    click(&client, "#nodes th[data-key=node] button").await;
    until(&client, "by node, descending", &format!("return {order} === 'n-d n-c n-b n-a'")).await;
    assert_eq!(js(&client, "return location.hash").await, "#/nodes?sort-nodes=node:desc");
    click(&client, "#nodes th[data-key=status] button").await;
    until(&client, "by status", &format!("return ({order}).endsWith('n-d')")).await;
    // A pasted link opens the same page: view, service, node and filter.
    client.goto(&server.url("/ui#/services?service=api&node=n-c&status=UP")).await.unwrap();
    until(
        &client,
        "the linked node",
        "return document.getElementById('node-title').textContent === 'Node n-c'",
    )
    .await;
    assert_eq!(js(&client, "return document.getElementById('status-filter').value").await, "UP");
    assert_eq!(
        js(&client, "return [...document.querySelectorAll('#instances tbody tr')].map(r => r.dataset.node)")
            .await,
        json!(["n-c"])
    );
    // Back to the nodes view by its tab, with the filter kept.
    client.find(Locator::Id("tab-nodes")).await.unwrap().click().await.unwrap();
    until(&client, "the nodes view, filtered", &format!("return {order} === 'n-a n-b n-c'")).await;
    client.close().await.unwrap();
}

/// The location of axe-core's browser build: `MUSTER_AXE_JS`, or version 4.10.2 fetched once from
/// the npm registry into the target directory (needs `curl` and `tar`).
fn axe_source() -> String {
    if let Ok(path) = std::env::var("MUSTER_AXE_JS") {
        return std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("MUSTER_AXE_JS={path}: {e}"));
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("axe-core-4.10.2");
    let file = dir.join("package/axe.min.js");
    if !file.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let tarball = dir.join("axe-core.tgz");
        let fetched = Command::new("curl")
            .args(["-sSfL", "--retry", "3", "-o"])
            .arg(&tarball)
            .arg("https://registry.npmjs.org/axe-core/-/axe-core-4.10.2.tgz")
            .status()
            .expect("curl runs (Debian package curl)");
        assert!(fetched.success(), "fetching axe-core from the npm registry failed");
        let unpacked = Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&dir)
            .arg("package/axe.min.js")
            .status()
            .unwrap();
        assert!(unpacked.success(), "unpacking axe-core failed");
    }
    std::fs::read_to_string(file).unwrap()
}

/// The serious and critical findings of an axe-core audit of the page as it is now.
async fn audit(client: &Client) -> Vec<Value> {
    if js(client, "return typeof window.axe").await != "object" {
        client.execute(&axe_source(), vec![]).await.unwrap();
    }
    let result = client
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             axe.run(document, { resultTypes: ['violations'] }) \
               .then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ')) })))) \
               .catch(e => done('axe failed: ' + e));",
            vec![],
        )
        .await
        .unwrap();
    let findings = result.as_array().unwrap_or_else(|| panic!("{result}")).clone();
    findings.into_iter().filter(|v| v["impact"] == "serious" || v["impact"] == "critical").collect()
}

fn register(id: &str, service: &str, version: &str, extra: Value) -> Value {
    let mut body = json!({
        "address": format!("10.1.{}.{}:8080", id.len(), id.bytes().map(u32::from).sum::<u32>() % 250),
        "services": [{"name": service, "version": version}],
        "ttlMs": 60_000,
        "metadata": {"zone": if id.ends_with('1') { "eu-west-1a" } else { "eu-west-1b" }},
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// Thirty nodes over six services, with checks, as an operator sees them: counts match the API, the
/// activity chart moves, the tables fit 1280 px (at 390 px the heartbeat stays on screen and a
/// table that scrolls says so), and an axe-core audit finds nothing serious. The 1280 px view is
/// the README's screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_thirty_fits_and_passes_an_accessibility_audit() {
    let server = TestServer::memory().await;
    let open = server.url("/").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let fleet = [("users", 6), ("billing", 5), ("search", 5), ("auth", 5), ("mail", 4), ("media", 5)];
    let driver = driver().await;
    let client = browser(&driver, 1280, 900).await;
    client.goto(&server.url("/ui#/services?service=users&node=users-5")).await.unwrap();
    until(&client, "live", "return document.getElementById('connection').textContent === 'live'").await;
    for (service, count) in fleet {
        for n in 1..=count {
            let id = format!("{service}-{n}");
            let version = if n % 3 == 0 { "2.0.0" } else { "1.4.2" };
            let extra = match (service, n) {
                ("users", 5) | ("mail", 1) => {
                    json!({"check": {"type": "tcp", "target": closed, "intervalMs": 500, "failures": 1}})
                }
                ("users", _) | ("auth", _) => {
                    json!({"check": {"type": "tcp", "target": open, "intervalMs": 2000}})
                }
                ("billing", 3) => json!({"status": "STARTING"}),
                ("search", 2) => json!({"status": "STOPPING"}),
                _ => json!({}),
            };
            let (status, body) = send(
                &server,
                Method::PUT,
                &format!("/v1/nodes/{id}"),
                register(&id, service, version, extra),
            )
            .await;
            assert_eq!(status.as_u16(), 201, "{body}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every node heartbeats once a second, as agents do.
    let beating = {
        let url = server.url("/v1/nodes");
        tokio::spawn(async move {
            let client = crate::client();
            loop {
                for (service, count) in fleet {
                    for n in 1..=count {
                        let _ = client
                            .put(format!("{url}/{service}-{n}/heartbeat"))
                            .json(&json!({}))
                            .send()
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    until(
        &client,
        "thirty instances",
        "return document.querySelector('[data-figure=instances] b')?.textContent === '30'",
    )
    .await;
    until(
        &client,
        "the failing checks",
        "return document.querySelectorAll('#services [data-status=DOWN]').length === 2",
    )
    .await;
    // The counts are the API's.
    let (_, api) = send(&server, Method::GET, "/v1/services", Value::Null).await;
    for service in api["services"].as_array().unwrap() {
        let name = service["name"].as_str().unwrap();
        let shown = js(
            &client,
            &format!("return document.querySelector('tr[data-service={name}] td:nth-child(3)').textContent"),
        )
        .await;
        assert_eq!(shown, service["instances"].to_string(), "{name}");
    }
    let counts = text_of(&client, "tr[data-service=search] td:nth-child(4)").await;
    assert_eq!(counts, "4 UP · 1 STOPPING");
    assert_eq!(text_of(&client, "tr[data-service=users] td:nth-child(5)").await, "83%");
    // The chart moved with the registrations.
    until(
        &client,
        "the chart",
        "return Number(document.querySelector('#legend [data-series=registrations]').dataset.peak) > 0",
    )
    .await;
    until(
        &client,
        "heartbeats on the chart",
        "return document.querySelector('#chart [data-series=heartbeats]').getAttribute('points').split(' ').length >= 3 \
         && Number(document.querySelector('#legend [data-series=heartbeats]').dataset.peak) > 0",
    )
    .await;
    let points = js(&client, "return document.querySelector('#chart [data-series=registrations]').getAttribute('points').split(' ').length").await;
    assert!(points.as_u64().unwrap() >= 2, "{points}");

    // 1280 px: no table is cut, no header is clipped.
    let fits = "return [...document.querySelectorAll('.table-wrap')].filter(w => w.offsetParent && w.scrollWidth > w.clientWidth + 1).map(w => w.firstChild.id) \
                .concat([...document.querySelectorAll('th')].filter(th => th.offsetParent && th.scrollWidth > th.clientWidth + 1).map(th => th.textContent))";
    assert_eq!(js(&client, fits).await, json!([]), "everything fits at 1280 px");
    client.set_window_size(1280, 900).await.unwrap();
    screenshot(&client, "fleet-1280").await;
    if std::env::var_os("MUSTER_UPDATE_SCREENSHOTS").is_some() {
        // Half a minute of history on the chart.
        let deadline = Duration::from_secs(60);
        let filled = "return document.querySelector('#chart [data-series=heartbeats]').getAttribute('points').split(' ').length >= 15";
        tokio::time::timeout(deadline, async {
            while js(&client, filled).await != json!(true) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await
        .expect("the chart fills");
        let png = client.screenshot().await.unwrap();
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dashboard.png"), png).unwrap();
    }
    let findings = audit(&client).await;
    assert!(findings.is_empty(), "accessibility at 1280 px: {findings:#?}");
    // The audit really runs: a button without a name is found.
    js(&client, "const b = document.createElement('button'); b.id = 'bad'; document.querySelector('main').append(b); return true").await;
    let findings = audit(&client).await;
    assert!(findings.iter().any(|f| f["id"] == "button-name"), "{findings:#?}");
    js(&client, "document.getElementById('bad').remove(); return true").await;

    // 390 px: no sideways scrolling of the page; the heartbeat column is on screen; a table wider
    // than the screen says it scrolls.
    client.set_window_size(390, 844).await.unwrap();
    until(&client, "the narrow layout", "return window.innerWidth <= 400").await;
    js(&client, "window.dispatchEvent(new Event('resize')); return true").await;
    let page = js(&client, "return document.documentElement.scrollWidth <= window.innerWidth + 1").await;
    assert_eq!(page, json!(true), "no sideways scrolling at 390 px");
    let beat = js(&client, "return document.querySelector('#instances th[data-key=heartbeat]').getBoundingClientRect().right <= window.innerWidth").await;
    assert_eq!(beat, json!(true), "the heartbeat column is on screen at 390 px");
    let hinted = js(
        &client,
        "return [...document.querySelectorAll('.table-wrap')].filter(w => w.offsetParent && w.scrollWidth > w.clientWidth + 1) \
         .every(w => getComputedStyle(w.nextElementSibling).display !== 'none')",
    )
    .await;
    assert_eq!(hinted, json!(true), "a table wider than the screen says it scrolls");
    screenshot(&client, "fleet-390").await;
    let findings = audit(&client).await;
    assert!(findings.is_empty(), "accessibility at 390 px: {findings:#?}");
    let errors = console_errors(&client).await;
    assert!(errors.is_empty(), "no console errors: {errors:?}");
    beating.abort();
    client.close().await.unwrap();
}

/// A lost connection is shown, the stale figures are greyed out with the time they were last live,
/// and the page resumes from its last revision once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_shown_and_resumed() {
    let registry = MemoryRegistry::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = |registry: MemoryRegistry| async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let state = AppState::new(Arc::new(registry), ServerConfig::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(muster_server::run(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        (stop, task, state)
    };
    registry
        .heartbeat(registration("a-1", "10.0.0.1:80", "alpha", "1.0.0", Duration::from_secs(60)))
        .await
        .unwrap();
    let (stop, task, state) = serve(registry.clone()).await;
    let driver = driver().await;
    let client = browser(&driver, 1280, 800).await;
    client.goto(&format!("http://127.0.0.1:{port}/ui")).await.unwrap();
    until(&client, "alpha listed", "return !!document.querySelector('tr[data-service=alpha]')").await;
    assert_eq!(js(&client, "return document.body.classList.contains('stale')").await, json!(false));
    state.shutdown();
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    until(
        &client,
        "the lost connection shown, the figures greyed",
        "return document.getElementById('connection').className === 'lost' && document.body.classList.contains('stale')",
    )
    .await;
    let shown = text_of(&client, "#connection").await;
    assert!(shown.starts_with("disconnected since ") && shown.contains("stale"), "{shown}");
    let grey = js(&client, "return getComputedStyle(document.querySelector('main')).filter").await;
    assert_eq!(grey, "grayscale(1)");
    screenshot(&client, "dashboard-disconnected").await;
    // Meanwhile the registry changed; the server comes back on the same store.
    registry
        .heartbeat(registration("b-1", "10.0.0.2:80", "beta", "1.0.0", Duration::from_secs(60)))
        .await
        .unwrap();
    let (_stop, _task, _state) = serve(registry.clone()).await;
    until(&client, "live again", "return document.getElementById('connection').textContent === 'live'").await;
    until(&client, "the change made while away", "return !!document.querySelector('tr[data-service=beta]')")
        .await;
    assert_eq!(js(&client, "return document.body.classList.contains('stale')").await, json!(false));
    client.close().await.unwrap();
}

/// Under access control the page says a token is needed and shows only what the token may read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_with_a_token() {
    let registry = MemoryRegistry::new();
    let secret = "s3cret-admin-token-for-the-dashboard";
    let config = ServerConfig {
        acl: AclConfig {
            enabled: true,
            tokens: vec![muster_server::DeclaredToken {
                name: "viewer".into(),
                secret_hash: muster_server::hash_secret(secret),
                rules: vec![muster_core::acl::Rule {
                    services: muster_core::acl::Pattern::new("users").unwrap(),
                    nodes: muster_core::acl::Pattern::any(),
                    access: muster_core::acl::Access::Read,
                }],
            }],
            ..AclConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start(Arc::new(registry.clone()), config).await;
    let long = Duration::from_secs(60);
    registry.heartbeat(registration("users-1", "10.0.0.1:8080", "users", "1.2.0", long)).await.unwrap();
    registry.heartbeat(registration("billing-1", "10.0.0.3:9000", "billing", "3.1.0", long)).await.unwrap();
    let driver = driver().await;
    let client = browser(&driver, 1280, 800).await;
    client.goto(&server.url("/ui")).await.unwrap();
    until(
        &client,
        "refused without a token",
        "return document.getElementById('connection').textContent === 'not allowed'",
    )
    .await;
    assert!(text_of(&client, "#error").await.contains("401"));
    let empty = text_of(&client, "#services-empty").await;
    assert!(empty.contains("token is needed"), "not 'no services': {empty}");
    client.find(Locator::Id("token")).await.unwrap().send_keys(secret).await.unwrap();
    client.find(Locator::Css("#token-form button")).await.unwrap().click().await.unwrap();
    until(
        &client,
        "live with the token",
        "return document.getElementById('connection').textContent === 'live'",
    )
    .await;
    until(&client, "users listed", "return !!document.querySelector('tr[data-service=users]')").await;
    assert!(!text_of(&client, "#services").await.contains("billing"), "only what the token may read");
    client.close().await.unwrap();
}
