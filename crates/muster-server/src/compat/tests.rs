//! Unit tests of `compat`.

use super::*;
use muster_core::{Address, NodeId, NodeStatus};

fn node(metadata: &[(&str, &str)], version: Option<&str>, status: NodeStatus) -> NodeInfo {
    NodeInfo {
        node_id: NodeId::new("users-10.0.0.1-8080").unwrap(),
        address: Address::parse("[::1]:8080").unwrap(),
        services: vec![ServiceInfo::new("users".to_owned(), version).unwrap()],
        timestamp_ms: 1_764_000_000_123,
        registered_at_ms: 1_763_999_000_000,
        status,
        metadata: metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ttl_ms: 30_000,
    }
}

/// The borrowed view writes exactly the owned instance's JSON, whatever the metadata holds:
/// keys before and after `version`, a `version` of its own, values kept as JSON.
#[test]
fn the_borrowed_view_writes_what_the_owned_instance_writes() {
    let nodes = [
        node(&[], None, NodeStatus::Up),
        node(&[], Some("1.2.0"), NodeStatus::Down),
        node(&[("alpha", "a"), ("zone", "z\"q")], Some("1.2.0"), NodeStatus::Up),
        node(&[("version", "9.9.9"), ("a", "b")], Some("1.2.0"), NodeStatus::Starting),
        node(
            &[("weight", "5"), ("tags", "[\"x\",1]"), (JSON_KEYS, "[\"tags\",\"weight\"]")],
            Some("2.0.0"),
            NodeStatus::Up,
        ),
        node(&[("broken", "{"), (JSON_KEYS, "[\"broken\"]"), ("v", "1")], Some("3.0.0"), NodeStatus::Up),
        node(&[(JSON_KEYS, "not json"), ("x", "1")], None, NodeStatus::Up),
    ];
    for node in &nodes {
        for with_name in [false, true] {
            let owned = serde_json::to_string(&compat_instance(node, with_name)).unwrap();
            let view = serde_json::to_string(&InstanceOut { node, with_name }).unwrap();
            assert_eq!(view, owned, "metadata {:?}", node.metadata);
        }
    }
    let answer = ResolveOut {
        service_name: "users",
        instance_count: 1,
        instances: vec![InstanceOut { node: &nodes[2], with_name: false }],
        timestamp: Some(Text(Iso8601(1_764_000_000_000))),
    };
    let owned = muster_api::compat::ResolveResponse {
        service_name: "users".to_owned(),
        instance_count: 1,
        instances: vec![compat_instance(&nodes[2], false)],
        timestamp: iso8601(1_764_000_000_000),
    };
    assert_eq!(serde_json::to_string(&answer).unwrap(), serde_json::to_string(&owned).unwrap());
}
