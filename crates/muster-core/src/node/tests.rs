//! Unit tests of `node`.

use super::*;

fn reg(ttl_ms: u64) -> Result<Registration> {
    Registration::new(
        NodeId::new("n1")?,
        Address::parse("h:1")?,
        vec![ServiceInfo::parse("a@1")?],
        Duration::from_millis(ttl_ms),
    )
}

#[test]
fn ttl_limits() {
    assert!(reg(100).is_ok());
    assert!(reg(99).unwrap_err().is_invalid_input());
    assert!(reg(86_400_001).unwrap_err().to_string().contains("heartbeat ttl"));
}

#[test]
fn node_json_is_titan_shaped() {
    let node = reg(15_000).unwrap().to_node(5, 7);
    let json = serde_json::to_value(&node).unwrap();
    assert_eq!(json["nodeId"], "n1");
    assert_eq!(json["address"], "h:1");
    assert_eq!(json["timestamp"], 7);
    assert_eq!(json["services"][0]["version"], "1");
    assert_eq!(json["status"], "UP");
    assert_eq!(serde_json::from_value::<NodeInfo>(json).unwrap(), node);
}

#[test]
fn update_applies_and_reports_change() {
    let mut node = reg(1000).unwrap().to_node(0, 0);
    assert!(!NodeUpdate::new().apply(&mut node));
    assert!(!NodeUpdate::new().address(node.address.clone()).apply(&mut node));
    let update = NodeUpdate::new().address(Address::parse("h:2").unwrap()).status(NodeStatus::Down);
    assert!(update.apply(&mut node));
    assert_eq!((node.address.port(), node.status), (2, NodeStatus::Down));
    assert!(NodeUpdate::new().metadata([("bad key".into(), String::new())].into()).is_err());
}

#[test]
fn status_parsing() {
    assert_eq!("up".parse::<NodeStatus>().unwrap(), NodeStatus::Up);
    assert_eq!("STOPPING".parse::<NodeStatus>().unwrap(), NodeStatus::Stopping);
    assert!("sleepy".parse::<NodeStatus>().unwrap_err().is_invalid_input());
}
