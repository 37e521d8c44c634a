//! Unit tests of `serve`.

use clap::Parser;

use super::*;
use crate::{Cli, Command};

fn serve_args(flags: &[&str]) -> ServeArgs {
    let argv = ["muster", "serve"].into_iter().chain(flags.iter().copied());
    match Cli::try_parse_from(argv).expect("the flags parse").command {
        Command::Serve(args) => args,
        Command::Client(_) => unreachable!("muster serve"),
    }
}

#[test]
fn flags_map_onto_the_server_settings() {
    let args = serve_args(&[
        "--listen",
        "127.0.0.1:4000",
        "--acl",
        "--acl-default-policy",
        "read",
        "--rate-limit",
        "50",
        "--rate-burst",
        "10",
        "--allowed-origins",
        " http://a.example, ,http://b.example",
        "--max-connections",
        "7",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
    ]);
    let declared = vec![muster_server::DeclaredToken {
        name: "ops".into(),
        secret_hash: muster_server::hash_secret("s3cret"),
        rules: Vec::new(),
    }];
    let config = server_config(&args, declared.clone()).unwrap();
    assert!(config.acl.enabled);
    assert_eq!(config.acl.default_policy, muster_core::acl::DefaultPolicy::Read);
    assert_eq!(config.acl.tokens, declared);
    assert_eq!(config.rate_limit, Some(muster_server::RateLimit { per_second: 50, burst: 10 }));
    assert_eq!(config.allowed_origins, ["http://a.example", "http://b.example"]);
    assert_eq!(config.max_connections, 7);
    let tls = config.tls.expect("TLS from the cert and key");
    assert_eq!((tls.cert.to_str(), tls.key.to_str(), tls.client_ca), (Some("c.pem"), Some("k.pem"), None));
    assert_eq!(config.allowed_hosts, allowed_hosts("auto", "127.0.0.1"), "loopback names only");
    let plain = server_config(&serve_args(&[]), Vec::new()).unwrap();
    assert!(!plain.acl.enabled && plain.rate_limit.is_none() && plain.tls.is_none());
    assert_eq!(plain.max_connections, ServerConfig::default().max_connections);
}

#[test]
fn flags_map_onto_the_redis_settings() {
    let url = "redis://127.0.0.1:6390/0";
    let args = serve_args(&[
        "--redis",
        url,
        "--prefix",
        "fleet",
        "--pubsub",
        "--redis-replica-acks",
        "1",
        "--redis-replica-ack-timeout",
        "200ms",
    ]);
    let config = redis_config(&args, url).unwrap();
    assert_eq!(config.prefix, "fleet");
    assert!(config.pubsub_enabled);
    assert_eq!((config.replica_acks, config.replica_ack_timeout), (1, Duration::from_millis(200)));
    let titan = redis_config(&serve_args(&["--redis", url]), url).unwrap();
    assert_eq!((titan.prefix.as_str(), titan.replica_acks), ("titan:discovery", 0), "Titan's defaults");
    assert!(redis_config(&serve_args(&[]), "http://not-redis").is_err(), "a bad URL is an error");
}
