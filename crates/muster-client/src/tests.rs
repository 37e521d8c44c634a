//! Unit tests of `src`.

use super::*;

fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
}

#[test]
fn environment_defaults_are_the_documented_ones() {
    let config = ClientConfig::from_vars(|_| None).unwrap();
    assert_eq!(config.registry_url, "http://127.0.0.1:3100", "where `muster serve` listens");
    assert_eq!(config.heartbeat_interval, Duration::from_millis(30_000));
    assert_eq!(config.retry_delay, Duration::from_millis(10_000));
    assert_eq!(config.max_retries, 5);
    assert_eq!((config.host.as_str(), config.port), ("localhost", 3000));
}

#[test]
fn environment_overrides_and_is_checked() {
    let config = ClientConfig::from_vars(vars(&[
        ("SERVICE_REGISTRY_URL", "http://10.0.0.1:3100"),
        ("SERVICE_REGISTRY_HEARTBEAT_INTERVAL", "5000"),
        ("SERVICE_REGISTRY_RETRY_DELAY", "250"),
        ("SERVICE_REGISTRY_MAX_RETRIES", "3"),
        ("HOST", "users-1.internal"),
        ("PORT", "8080"),
        ("MUSTER_TOKEN", " mst_secret-value "),
        ("MUSTER_CA_CERT", "/etc/muster/ca.pem"),
    ]))
    .unwrap();
    assert_eq!(config.token.as_ref().map(Token::secret), Some("mst_secret-value"));
    assert!(!format!("{config:?}").contains("mst_secret-value"), "a token is never printed");
    assert_eq!(config.ca_cert.as_deref(), Some(std::path::Path::new("/etc/muster/ca.pem")));
    assert_eq!(config.registry_url, "http://10.0.0.1:3100");
    assert_eq!(config.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(config.retry_delay, Duration::from_millis(250));
    assert_eq!(config.max_retries, 3);
    assert_eq!(RegistrationSpec::from_config(&config).address, "users-1.internal:8080");
    for (name, value) in [
        ("SERVICE_REGISTRY_URL", "localhost:3011"),
        ("SERVICE_REGISTRY_URL", "ftp://registry.internal:3100"),
        ("SERVICE_REGISTRY_HEARTBEAT_INTERVAL", "30s"),
        ("SERVICE_REGISTRY_RETRY_DELAY", "0"),
        ("SERVICE_REGISTRY_MAX_RETRIES", "-1"),
        ("PORT", "70000"),
        ("PORT", "0"),
        ("HOST", " "),
    ] {
        let error = ClientConfig::from_vars(vars(&[(name, value)])).unwrap_err();
        assert!(error.to_string().contains(name), "{error}");
    }
}
