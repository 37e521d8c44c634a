//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven
//! over WebDriver): it loads without console errors, lists the registered services, follows
//! registrations, status changes and expiries live, filters, shows a lost connection and resumes,
//! works with a token under access control, and fits a phone's width. Screenshots go to
//! `target/ui-screenshots/` for review.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use muster_core::{Address, NodeId, NodeStatus, NodeUpdate, Registration, Registry, ServiceInfo};
use muster_memory::MemoryRegistry;
use muster_server::{AclConfig, AppState, ServerConfig};
use serde_json::json;

use crate::TestServer;

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

/// Page text of the element `css`.
async fn text_of(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
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

    // A service's instances, a node's details, by keyboard.
    client.find(Locator::Css("tr[data-service=users] button")).await.unwrap().click().await.unwrap();
    until(&client, "the instances", "return document.querySelectorAll('#instances tbody tr').length === 2")
        .await;
    let instances = text_of(&client, "#instances tbody").await;
    assert!(
        instances.contains("10.0.0.1:8080") && instances.contains("UP") && instances.contains("ago"),
        "{instances}"
    );
    client.find(Locator::Css("tr[data-node=users-1] button")).await.unwrap().click().await.unwrap();
    assert!(text_of(&client, "#node-json").await.contains("\"registeredAt\""));
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
    until(&client, "the status change", "return document.querySelector('#instances tr[data-node=users-2] td:nth-child(4)').textContent === 'DOWN'").await;
    until(&client, "the expiry", "return !document.querySelector('#instances tr[data-node=users-3]')").await;
    let events = text_of(&client, "#events").await;
    assert!(
        events.contains("registered users-3")
            && events.contains("updated users-2")
            && events.contains("expired users-3"),
        "{events}"
    );
    assert!(events.contains("(expired)"), "the reason is shown: {events}");

    // Filters: by name, by version, by status.
    let filter = client.find(Locator::Id("filter")).await.unwrap();
    filter.send_keys("bill").await.unwrap();
    until(&client, "the name filter", "return document.querySelectorAll('#services tbody tr').length === 1")
        .await;
    filter.clear().await.unwrap();
    filter.send_keys("2.0.0").await.unwrap();
    until(&client, "the version filter", "return document.querySelector('#services tbody').textContent.includes('users') && !document.querySelector('#services tbody').textContent.includes('billing')").await;
    filter.clear().await.unwrap();
    client.execute("const s = document.getElementById('status-filter'); s.value = 'DOWN'; s.dispatchEvent(new Event('change'));", vec![]).await.unwrap();
    until(
        &client,
        "the status filter",
        "return document.querySelectorAll('#instances tbody tr').length === 1",
    )
    .await;
    let errors = console_errors(&client).await;
    assert!(errors.is_empty(), "no console errors: {errors:?}");
    // The log is really read: an error the page logs now is seen.
    client.execute("console.error('seen by the test')", vec![]).await.unwrap();
    let seen = console_errors(&client).await;
    assert!(seen.iter().any(|e| e.contains("seen by the test")), "the console log is read: {seen:?}");

    // A phone's width: the page fits without scrolling sideways.
    client.set_window_size(390, 844).await.unwrap();
    let overflow = client
        .execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![])
        .await
        .unwrap();
    assert_eq!(overflow, json!(true), "no sideways scrolling at 390 px");
    screenshot(&client, "dashboard-390").await;
    client.close().await.unwrap();
}

/// A lost connection is shown, and the page resumes from its last revision once the server is back.
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
    state.shutdown();
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    until(
        &client,
        "the lost connection shown",
        "return document.getElementById('connection').className === 'lost'",
    )
    .await;
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
    client.close().await.unwrap();
}

/// Under access control the page asks for a token and shows only what it may read.
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
