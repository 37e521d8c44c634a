//! Turning what the scripts return into domain types, and Titan's event JSON into events.

use muster_core::{
    Address, DeregisterReason, DiscoveryEvent, EventKind, NodeId, NodeInfo, NodeStatus, Revision, ServiceInfo,
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Values per node in the read script's output: id, alive, then the seven hash fields.
pub(crate) const ROW: usize = 9;

/// One node as read, before filtering.
pub(crate) enum Row {
    /// Readable; `alive` tells whether its heartbeat key exists.
    Node { node: NodeInfo, alive: bool },
    /// Its hash breaks the validity rule ([`check_hash`]).
    Broken { id: String, reason: String },
}

/// Parses the bulk part of the read script: a JSON array of nodes (as of their last change) and
/// their deadlines; each node's timestamp becomes its last heartbeat (deadline minus TTL).
pub(crate) fn parse_bulk(json: &str, deadlines: &str) -> Result<Vec<Row>, String> {
    let deadlines: Vec<u64> = if deadlines.is_empty() {
        Vec::new()
    } else {
        deadlines
            .split(',')
            .map(|d| parse_ms(d).ok_or_else(|| format!("deadline {d:?}")))
            .collect::<Result<_, _>>()?
    };
    // The common case, every node in Muster's own form, decodes in one pass; anything odd (a Titan
    // peer's services, say) falls back to the lenient reader.
    let nodes: Vec<Result<NodeInfo, (String, String)>> = match serde_json::from_str::<Vec<NodeInfo>>(json) {
        Ok(nodes) => nodes.into_iter().map(Ok).collect(),
        Err(_) => serde_json::from_str::<Vec<WireNode<'_>>>(json)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(WireNode::into_node)
            .collect(),
    };
    if nodes.len() != deadlines.len() {
        return Err(format!("{} nodes but {} deadlines", nodes.len(), deadlines.len()));
    }
    Ok(nodes
        .into_iter()
        .zip(deadlines)
        .map(|(node, deadline)| match node {
            Ok(mut node) => {
                node.timestamp_ms = deadline.saturating_sub(node.ttl_ms).max(node.timestamp_ms);
                Row::Node { node, alive: true }
            }
            Err((id, reason)) => Row::Broken { id, reason },
        })
        .collect())
}

/// The longest view header (`revision|until|csv length|`): three numbers of at most 20 digits.
pub(crate) const VIEW_HEADER_MAX: usize = 64;

/// The header of a materialized view (from its first [`VIEW_HEADER_MAX`] bytes), when the view is
/// for `revision` and still valid at `now_ms`. Views with one header have the same contents.
pub(crate) fn view_header<'a>(prefix: &'a str, revision: &str, now_ms: u64) -> Option<&'a str> {
    let mut end = 0;
    for _ in 0..3 {
        end += prefix.get(end..)?.find('|')? + 1;
    }
    let header = &prefix[..end];
    let mut parts = header.split('|');
    let (view_revision, until) = (parts.next()?, parts.next()?);
    (view_revision == revision && until.parse::<u64>().ok()? > now_ms).then_some(header)
}

/// Splits a materialized view into its JSON body and deadlines, when it is for `revision` and still
/// valid at `now_ms`.
pub(crate) fn parse_view<'a>(view: &'a str, revision: &str, now_ms: u64) -> Option<(&'a str, &'a str)> {
    let mut parts = view.splitn(4, '|');
    let (view_revision, until, csv_len, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if view_revision != revision || until.parse::<u64>().ok()? <= now_ms {
        return None;
    }
    let csv_len: usize = csv_len.parse().ok()?;
    let (csv, body) = (rest.get(..csv_len)?, rest.get(csv_len..)?);
    Some((body, csv))
}

/// Parses one row of the read script (`id, alive, address, services, timestamp, registeredAt,
/// status, metadata, ttl`).
pub(crate) fn parse_row(row: &[String]) -> Row {
    // A row of another shape (a script of another version during an upgrade) is reported, not
    // indexed into.
    if row.len() < ROW {
        let id = row.first().cloned().unwrap_or_default();
        return Row::Broken { id, reason: format!("a row of {} fields, expected {ROW}", row.len()) };
    }
    match node_from_fields(&row[0], &row[2..ROW]) {
        Ok(node) => Row::Node { node, alive: row[1] == "1" },
        Err(reason) => Row::Broken { id: row[0].clone(), reason },
    }
}

/// The validity rule of a node hash, Titan's reader's own and the Lua scripts' (`is_valid` in
/// `scripts.rs`; both are tested on one table of inputs): a non-empty address, services that parse
/// as JSON (any JSON, as Titan's `JSON.parse`: a node whose services are not a list provides
/// none), a non-empty timestamp. Everything else about a node is read leniently.
pub(crate) fn check_hash(address: &str, services: &str, timestamp: &str) -> Result<(), String> {
    if address.is_empty() || services.is_empty() || timestamp.is_empty() {
        return Err("missing address, services or timestamp".to_owned());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(services)
        .map_err(|e| format!("services are not JSON: {e}"))?;
    Ok(())
}

/// A node from its hash fields (`address, services, timestamp, registeredAt, status, metadata,
/// ttl`), as a Titan reader would accept it: the id and address exactly as written, the services
/// that can be understood, and defaults for Muster's own fields when they are missing or unreadable.
fn node_from_fields(id: &str, f: &[String]) -> Result<NodeInfo, String> {
    check_hash(&f[0], &f[1], &f[2])?;
    let timestamp_ms = parse_ms(&f[2]).unwrap_or(0);
    Ok(NodeInfo {
        node_id: NodeId::from_wire(id),
        address: Address::from_wire(f[0].as_str()),
        services: services_from_wire(&f[1]),
        timestamp_ms,
        registered_at_ms: parse_ms(&f[3]).unwrap_or(timestamp_ms),
        status: f[4].parse().unwrap_or(NodeStatus::Up),
        metadata: serde_json::from_str(&f[5]).unwrap_or_default(),
        ttl_ms: parse_ms(&f[6]).unwrap_or(0),
    })
}

/// The services of a JSON list that can be understood: objects with a string `name`; a `version`
/// that is not a string counts as none (so, as with Titan, no versioned query matches it), and
/// metadata or a weight of the wrong type are dropped. Other entries are skipped.
pub(crate) fn services_from_wire(json: &str) -> Vec<ServiceInfo> {
    if let Ok(services) = serde_json::from_str::<Vec<ServiceInfo>>(json) {
        return services;
    }
    let Ok(entries) = serde_json::from_str::<Vec<serde_json::Value>>(json) else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|entry| {
            let name = entry.get("name")?.as_str()?.to_owned();
            Some(ServiceInfo {
                name,
                version: entry.get("version").and_then(|v| v.as_str()).map(str::to_owned),
                metadata: entry
                    .get("metadata")
                    .and_then(|m| serde_json::from_value(m.clone()).ok())
                    .unwrap_or_default(),
                weight: entry.get("weight").and_then(|w| w.as_u64()).and_then(|w| u32::try_from(w).ok()),
            })
        })
        .collect()
}

/// A node as the scripts write it in JSON (`node_json`), read leniently: the services are whatever
/// list the hash held.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireNode<'a> {
    node_id: String,
    address: String,
    #[serde(borrow)]
    services: &'a RawValue,
    #[serde(default)]
    timestamp: u64,
    #[serde(default)]
    registered_at: u64,
    #[serde(default)]
    status: Option<String>,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(default)]
    ttl_ms: u64,
}

impl WireNode<'_> {
    /// The node, or its id and why it cannot be read.
    fn into_node(self) -> Result<NodeInfo, (String, String)> {
        if let Err(reason) = check_hash(&self.address, self.services.get(), "-") {
            return Err((self.node_id, reason));
        }
        Ok(NodeInfo {
            services: services_from_wire(self.services.get()),
            address: Address::from_wire(self.address),
            node_id: NodeId::from_wire(self.node_id),
            timestamp_ms: self.timestamp,
            registered_at_ms: self.registered_at,
            status: self.status.and_then(|s| s.parse().ok()).unwrap_or(NodeStatus::Up),
            metadata: self.metadata.and_then(|m| serde_json::from_str(m.get()).ok()).unwrap_or_default(),
            ttl_ms: self.ttl_ms,
        })
    }
}

/// Milliseconds as Titan writes them (`Date.now().toString()`), tolerating a fractional part.
fn parse_ms(text: &str) -> Option<u64> {
    text.parse::<u64>()
        .ok()
        .or_else(|| text.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).map(|v| v as u64))
}

/// Parses one event-log entry (`type`, `reason`, `node`, `ts` fields; `prev`, the services before
/// an update that changed them).
pub(crate) fn parse_log_entry(revision: Revision, fields: &[String]) -> Result<DiscoveryEvent, String> {
    let field = |name: &str| {
        fields.chunks_exact(2).find(|pair| pair[0] == name).map(|pair| pair[1].as_str()).unwrap_or_default()
    };
    let kind: EventKind = field("type").parse().map_err(|e: muster_core::Error| e.message().to_owned())?;
    let reason = match field("reason") {
        "" => None,
        other => Some(other.parse::<DeregisterReason>().map_err(|e| e.message().to_owned())?),
    };
    let node = serde_json::from_str::<WireNode<'_>>(field("node"))
        .map_err(|e| format!("node does not parse: {e}"))?
        .into_node()
        .map_err(|(_, reason)| reason)?;
    let timestamp_ms = match field("ts") {
        "" => node.timestamp_ms,
        ts => ts.parse().map_err(|_| format!("timestamp {ts:?} is not a number"))?,
    };
    let previous_services = match field("prev") {
        "" => None,
        prev => Some(services_from_wire(prev)),
    };
    Ok(DiscoveryEvent { revision, kind, reason, node, timestamp_ms, previous_services })
}

/// True when a log entry is the first revision of a fresh counter (nothing came before it).
pub(crate) fn is_first(fields: &[String]) -> bool {
    fields.chunks_exact(2).any(|pair| pair[0] == "first" && pair[1] == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(fields: [&str; ROW]) -> Vec<String> {
        fields.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn reads_titan_and_muster_rows() {
        let titan = row([
            "titan-1",
            "1",
            "localhost:3000",
            r#"[{"name":"a","version":"1.0.0"}]"#,
            "1700000000000",
            "",
            "",
            "",
            "",
        ]);
        match parse_row(&titan) {
            Row::Node { node, alive } => {
                assert!(alive);
                assert_eq!(
                    (node.timestamp_ms, node.registered_at_ms, node.ttl_ms),
                    (1_700_000_000_000, 1_700_000_000_000, 0)
                );
                assert_eq!(node.services[0].version.as_deref(), Some("1.0.0"));
            }
            Row::Broken { reason, .. } => panic!("{reason}"),
        }
        let muster = row(["m1", "0", "[::1]:80", "[]", "5", "4", "DOWN", r#"{"zone":"eu"}"#, "15000"]);
        let Row::Node { node, alive } = parse_row(&muster) else { panic!("should parse") };
        assert!(!alive);
        assert_eq!((node.status, node.ttl_ms, node.registered_at_ms), (NodeStatus::Down, 15000, 4));
    }

    #[test]
    fn broken_rows_say_why() {
        for (fields, why) in [
            (["n", "1", "", "[]", "1", "", "", "", ""], "missing"),
            (["n", "1", "h:1", "[]", "", "", "", "", ""], "missing"),
            (["n", "1", "h:1", "not json", "1", "", "", "", ""], "services"),
            (["n", "1", "h:1", "abc", "1", "", "", "", ""], "not JSON"),
        ] {
            match parse_row(&row(fields)) {
                Row::Broken { reason, .. } => assert!(reason.contains(why), "{reason}"),
                Row::Node { .. } => panic!("{fields:?} should be broken"),
            }
        }
    }

    #[test]
    fn services_that_are_json_but_not_a_list_provide_nothing() {
        for services in [r#"{"name":"auth"}"#, "null", r#""abc""#, "{}"] {
            match parse_row(&row(["n", "1", "h:1", services, "1", "", "", "", ""])) {
                Row::Node { node, .. } => assert!(node.services.is_empty(), "{services}"),
                Row::Broken { reason, .. } => panic!("{services}: {reason}"),
            }
        }
    }

    #[test]
    fn what_titan_accepts_is_read_as_written() {
        let odd = row([
            "worker@host-1",
            "1",
            "ws://10.8.8.9:9000",
            r#"[{"name":"a","version":1},"junk",{"name":"b","version":"2","weight":"x"}]"#,
            "soon",
            "",
            "SLEEPY",
            "[1]",
            "",
        ]);
        let Row::Node { node, .. } = parse_row(&odd) else { panic!("Titan accepts it") };
        assert_eq!((node.node_id.as_str(), node.address.as_str()), ("worker@host-1", "ws://10.8.8.9:9000"));
        assert_eq!((node.address.host(), node.address.port()), ("10.8.8.9", 9000));
        assert_eq!(node.services.len(), 2);
        assert_eq!((node.services[0].name.as_str(), node.services[0].version.as_deref()), ("a", None));
        assert_eq!(node.services[1].version.as_deref(), Some("2"));
        assert_eq!((node.timestamp_ms, node.status), (0, NodeStatus::Up));
    }

    #[test]
    fn every_reason_written_is_read_back() {
        let node = r#"{"nodeId":"n","address":"h:1","services":[],"timestamp":1}"#;
        for reason in [
            DeregisterReason::Graceful,
            DeregisterReason::Expired,
            DeregisterReason::Evicted,
            DeregisterReason::Unknown,
        ] {
            let fields: Vec<String> =
                ["type", "deregistered", "reason", reason.as_str(), "node", node, "ts", "2"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect();
            let event = parse_log_entry(Revision(3), &fields).unwrap();
            assert_eq!((event.reason, event.timestamp_ms), (Some(reason), 2));
        }
    }

    #[test]
    fn view_headers() {
        assert_eq!(view_header("7|2000|3|1,2[{...", "7", 1000), Some("7|2000|3|"));
        assert_eq!(view_header("7|2000|3|1,2[{...", "8", 1000), None, "another revision");
        assert_eq!(view_header("7|2000|3|1,2[{...", "7", 2000), None, "expired");
        assert_eq!(view_header("7|2000", "7", 1000), None, "truncated");
        assert_eq!(view_header("", "0", 0), None, "no view");
    }

    #[test]
    fn views() {
        let view = "42|1000|7|5,6,7,8[1]";
        assert_eq!(parse_view(view, "42", 999), Some(("[1]", "5,6,7,8")));
        assert_eq!(parse_view(view, "42", 1000), None, "expired at its earliest deadline");
        assert_eq!(parse_view(view, "43", 0), None, "another revision");
        assert_eq!(parse_view("42|1000|99|x", "42", 0), None, "truncated");
    }
}

/// Everything read from Redis or its channel that another process wrote — hashes, view rows,
/// event-log entries, Titan channel messages — parsed from random and mutated input: an error or a
/// value, never a panic.
#[cfg(test)]
mod fuzz {
    use muster_testkit::fuzz::mutated;
    use proptest::prelude::*;

    use super::*;

    const NODE: &str = r#"{"nodeId":"n1","address":"10.0.0.1:80","services":[{"name":"users","version":"1.2.0"}],"timestamp":1700000000000,"registeredAt":1700000000000,"status":"UP","metadata":{"zone":"a"},"ttlMs":15000}"#;

    proptest! {
        #[test]
        fn hashes_rows_and_views_never_panic(
            json in prop_oneof![mutated(NODE), any::<String>()],
            deadlines in prop_oneof![Just("1700000015000".to_owned()), any::<String>()],
            row in prop::collection::vec(any::<String>(), 0..12),
            view in any::<String>(),
            now in any::<u64>(),
        ) {
            let _ = parse_bulk(&format!("[{json}]"), &format!("[{deadlines}]"));
            let _ = parse_bulk(&json, &deadlines);
            let _ = parse_row(&row);
            let _ = parse_view(&view, &deadlines, now);
            let _ = services_from_wire(&json);
        }

        #[test]
        fn log_entries_never_panic(
            kind in prop_oneof![Just("registered".to_owned()), Just("deregistered".to_owned()), any::<String>()],
            reason in prop_oneof![Just(String::new()), Just("expired".to_owned()), any::<String>()],
            node in prop_oneof![mutated(NODE), any::<String>()],
            ts in any::<String>(),
            prev in prop_oneof![Just(String::new()), mutated(r#"[{"name":"a","version":"1.0.0"}]"#), any::<String>()],
            extra in prop::collection::vec(any::<String>(), 0..5),
            revision in any::<u64>(),
        ) {
            let mut fields: Vec<String> = ["type", &kind, "reason", &reason, "node", &node, "ts", &ts, "prev", &prev]
                .iter().map(|s| (*s).to_owned()).collect();
            fields.extend(extra);
            if let Ok(event) = parse_log_entry(Revision(revision), &fields) {
                prop_assert_eq!(event.revision, Revision(revision));
            }
            let _ = is_first(&fields);
        }
    }

    #[test]
    fn the_valid_inputs_parse() {
        let fields: Vec<String> =
            ["type", "registered", "node", NODE].iter().map(|s| (*s).to_owned()).collect();
        assert!(parse_log_entry(Revision(3), &fields).is_ok());
        // Found by the fuzzer: a short row indexed out of bounds.
        assert!(matches!(parse_row(&["x".to_owned(), "1".to_owned()]), Row::Broken { .. }));
    }
}
