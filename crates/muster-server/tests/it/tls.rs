//! TLS and mutual TLS over real sockets with the SDK, with certificates generated at test time,
//! and a certificate replaced on disk while the server runs.

use std::sync::Arc;
use std::time::Duration;

use muster_client::{Client, ClientConfig, RegistrationSpec, Token};
use muster_core::{NodeStatus, ServiceInfo};
use muster_server::{AppState, ServerConfig, TlsConfig};
use muster_testkit::certs::TestPki;

use crate::TestServer;

/// A directory for a test's certificates, removed when the test ends.
fn pki_dir(name: &str) -> muster_testkit::redis_server::TempDir {
    muster_testkit::redis_server::TempDir::new(&format!("tls-{name}"))
}

async fn tls_server(pki: &TestPki, client_ca: bool) -> TestServer {
    let config = ServerConfig {
        tls: Some(TlsConfig {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: client_ca.then(|| pki.ca.clone()),
        }),
        ..ServerConfig::default()
    };
    TestServer::serve(AppState::new(Arc::new(muster_memory::MemoryRegistry::new()), config)).await
}

fn sdk(server: &TestServer, ca: Option<&std::path::Path>, identity: Option<&std::path::Path>) -> Client {
    Client::with_config(ClientConfig {
        registry_url: server.base.clone(),
        ca_cert: ca.map(Into::into),
        client_identity: identity.map(Into::into),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    })
    .unwrap()
}

async fn register_and_list(client: &Client) -> Result<usize, muster_client::ClientError> {
    let mut spec = RegistrationSpec::new("127.0.0.1:9000");
    spec.id = Some("tls-1".into());
    spec.services.push(ServiceInfo::parse("web@1.0.0").unwrap());
    client.register_once(&spec, NodeStatus::Up).await?;
    Ok(client.nodes(false).await?.nodes.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_speaks_https_with_a_trusted_ca_only() {
    let dir = pki_dir("https");
    let pki = TestPki::generate(dir.path());
    let server = tls_server(&pki, false).await;
    assert!(server.base.starts_with("https://"));
    assert_eq!(register_and_list(&sdk(&server, Some(&pki.ca), None)).await.unwrap(), 1);
    // A client that trusts another CA (and not the system roots' unknown one) refuses the server.
    let error = register_and_list(&sdk(&server, Some(&pki.other_ca), None)).await.unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    // Plain HTTP to a TLS port gets no answer it can read.
    let plain = server.base.replace("https://", "http://");
    let client =
        Client::with_config(ClientConfig { registry_url: plain, ..ClientConfig::default() }).unwrap();
    assert!(client.nodes(false).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    let dir = pki_dir("mtls");
    let pki = TestPki::generate(dir.path());
    let server = tls_server(&pki, true).await;
    let error = register_and_list(&sdk(&server, Some(&pki.ca), None)).await.unwrap_err();
    assert!(error.status().is_none(), "refused during the handshake, not by an HTTP answer: {error}");
    let client = sdk(&server, Some(&pki.ca), Some(&pki.client));
    assert_eq!(register_and_list(&client).await.unwrap(), 1);
    // The token rides along over TLS like over plain HTTP.
    let with_token = Client::with_config(ClientConfig {
        registry_url: server.base.clone(),
        ca_cert: Some(pki.ca.clone()),
        client_identity: Some(pki.client.clone()),
        token: Some(Token::new("unused-when-acl-is-off")),
        ..ClientConfig::default()
    })
    .unwrap();
    assert!(!with_token.whoami().await.unwrap().acl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_without_a_restart() {
    let dir = pki_dir("reload");
    let first = TestPki::generate(&dir.path().join("first"));
    let server = tls_server(&first, false).await;
    assert!(register_and_list(&sdk(&server, Some(&first.ca), None)).await.is_ok());
    // A renewal from another CA lands on the same paths.
    let second = TestPki::generate(&dir.path().join("second"));
    std::fs::copy(&second.server_key, &first.server_key).unwrap();
    std::fs::copy(&second.server_cert, &first.server_cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        // New connections (a new client each time) see the new certificate once it is reloaded.
        if register_and_list(&sdk(&server, Some(&second.ca), None)).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new certificate was not served");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(register_and_list(&sdk(&server, Some(&first.ca), None)).await.is_err(), "the old one is gone");
}

#[test]
fn unusable_tls_files_are_named() {
    let dir = pki_dir("broken");
    let pki = TestPki::generate(dir.path());
    let config = TlsConfig { cert: pki.server_cert.clone(), key: pki.ca.clone(), client_ca: None };
    let error = muster_server::check_tls(&config).unwrap_err();
    assert!(error.contains("ca.pem"), "{error}");
    let missing =
        TlsConfig { cert: "/nonexistent/cert.pem".into(), key: pki.server_key.clone(), client_ca: None };
    assert!(muster_server::check_tls(&missing).unwrap_err().contains("/nonexistent/cert.pem"));
}
