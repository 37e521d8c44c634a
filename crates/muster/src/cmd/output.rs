//! How the commands print: tables, JSON, watch lines, relative times.

use std::io::Write;

use muster_api::v1::Instance;
use muster_core::{DiscoveryEvent, NodeInfo, ServiceInfo, WatchEvent};
use serde::Serialize;

/// Writes to stdout, ignoring a closed pipe (`muster nodes | head`).
pub(crate) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

pub(crate) fn json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// A table with left-aligned columns.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (n, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if n + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = line(headers.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

pub(crate) fn service_list(services: &[ServiceInfo]) -> String {
    muster_core::ServiceList(services).to_string()
}

pub(crate) fn ago(ms: u64) -> String {
    let seconds = muster_core::time::now_ms().saturating_sub(ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        _ => format!("{}h ago", seconds / 3600),
    }
}

pub(crate) fn instance_rows(instances: &[Instance]) -> Vec<Vec<String>> {
    instances
        .iter()
        .map(|i| {
            let host = if i.host.contains(':') { format!("[{}]", i.host) } else { i.host.clone() };
            vec![
                i.id.clone(),
                format!("{host}:{}", i.port),
                i.version.clone().unwrap_or_else(|| "-".to_owned()),
                i.status.as_str().to_owned(),
                i.weight.map_or_else(|| "-".to_owned(), |w| w.to_string()),
                i.url.clone(),
            ]
        })
        .collect()
}

/// One watch item as a line of text or JSON.
pub(crate) fn watch_line(item: &WatchEvent, as_json: bool) -> String {
    let (label, event) = match item {
        WatchEvent::Resync(snapshot) => {
            if as_json {
                let value = serde_json::json!({"type": "resync", "revision": snapshot.revision, "nodes": snapshot.nodes});
                return value.to_string() + "\n";
            }
            let mut text = format!("#{}  resync  {} nodes\n", snapshot.revision, snapshot.nodes.len());
            for node in &snapshot.nodes {
                text.push_str(&format!(
                    "    {}  {}  {}\n",
                    node.node_id,
                    node.address,
                    service_list(&node.services)
                ));
            }
            return text;
        }
        WatchEvent::Event(event) => ("", event),
        WatchEvent::Peer(event) => ("peer ", event),
    };
    if as_json {
        let mut value = serde_json::to_value(event).unwrap_or_default();
        if !label.is_empty() {
            value["peer"] = serde_json::Value::Bool(true);
        }
        return value.to_string() + "\n";
    }
    event_line(label, event)
}

pub(crate) fn event_line(label: &str, event: &DiscoveryEvent) -> String {
    let kind = event.kind.as_str();
    let reason = event.reason.map(|r| format!(" ({r})"));
    let node: &NodeInfo = &event.node;
    format!(
        "{}  #{}  {label}{kind}{}  {}  {}  {}  {}\n",
        muster_api::iso8601(event.timestamp_ms),
        event.revision,
        reason.unwrap_or_default(),
        node.node_id,
        node.address,
        node.status.as_str(),
        service_list(&node.services)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["ID", "SERVICES"],
            &[vec!["a-long-id".into(), "x".into()], vec!["b".into(), "y@1".into()]],
        );
        assert_eq!(text, "ID         SERVICES\na-long-id  x\nb          y@1\n");
    }
}
