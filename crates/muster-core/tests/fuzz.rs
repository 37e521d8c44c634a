//! The parsers of outside input in the core — node ids, addresses, `name@version` and semver
//! queries, statuses, reasons, node JSON — on random and mutated input: an error or a value, never
//! a panic; and what they accept they print back as they read it.

use muster_core::{Address, NodeId, NodeInfo, ServiceInfo, ServiceQuery, VersionQuery};
use muster_testkit::fuzz::mutated;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9._:@/^~<>=*, -]{0,40}",
        mutated("users@^1.2.0"),
        mutated("users@>=1.0, <2"),
        mutated("10.0.0.1:8080"),
        mutated("[::1]:3100"),
        mutated("node-1.eu:a"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn names_addresses_and_queries_never_panic(input in text()) {
        if let Ok(id) = NodeId::new(input.as_str()) {
            prop_assert_eq!(id.as_str(), input.as_str());
        }
        if let Ok(address) = Address::parse(input.as_str()) {
            prop_assert_eq!(Address::parse(address.to_string()).ok(), Some(address.clone()), "re-reads as itself");
            let _ = (address.host(), address.port());
        }
        if let Ok(query) = ServiceQuery::parse(&input) {
            let _ = query.matches(&ServiceInfo { name: query.name().to_owned(), ..ServiceInfo::new("x", Some("1.2.3")).unwrap() });
        }
        let _ = ServiceInfo::parse(&input);
        if let Ok(semver) = VersionQuery::semver(&input) {
            let _ = semver.matches(Some("1.2.3"));
            let _ = semver.matches(Some(input.as_str()));
        }
        let _ = VersionQuery::exact(&input);
        let _ = input.parse::<muster_core::NodeStatus>();
        let _ = input.parse::<muster_core::DeregisterReason>();
        let _ = input.parse::<muster_core::EventKind>();
    }

    #[test]
    fn node_json_never_panics(json in prop_oneof![
        any::<String>(),
        mutated(r#"{"nodeId":"n1","address":"10.0.0.1:80","services":[{"name":"a","version":"1.0.0","weight":3}],"timestamp":1,"registeredAt":1,"status":"UP","metadata":{"k":"v"},"ttlMs":15000}"#),
    ]) {
        let _ = serde_json::from_str::<NodeInfo>(&json);
    }
}
