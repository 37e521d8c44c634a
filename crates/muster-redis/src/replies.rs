//! The scripts' replies, one typed decoder per script.
//!
//! A script answers with a Lua table of strings whose meaning depends on its first slot. Each
//! reply is decoded here, whole, into what it means; a reply of another shape (a short table, a
//! number that does not parse, an unknown outcome) is an internal error, never a plausible value:
//! a short reply is not "not found", a malformed timestamp is not "now", and a refusal never
//! travels in the slot of a timestamp.

use muster_core::{Change, Error, ErrorKind, Result, Revision};

/// A refusal by the per-service instance limit: `{'limit', service, others, ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitRefusal {
    /// The service that is full.
    pub(crate) service: String,
    /// How many other nodes provide it.
    pub(crate) others: usize,
}

impl LimitRefusal {
    /// The error the caller sees, with the limit it asked for.
    pub(crate) fn into_error(self, limit: Option<usize>) -> Error {
        Error::service_full(&self.service, self.others, limit.unwrap_or(0))
    }
}

/// The heartbeat script's reply: `{'conflict', ...}` (see `StoredServices`), `{change,
/// registeredAt, revision, expiredRevision, timestamp, kept}` (`kept`: the metadata written when a health check's verdict was kept — the node is then
/// `DOWN` — else empty) or `{'limit', service, others, '0', '0', ''}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeartbeatReply {
    /// The service limit refused the write; nothing changed.
    Limit(LimitRefusal),
    /// The stored node no longer matches the write's condition; nothing changed.
    Conflict,
    /// The node is written.
    Written {
        /// What the write changed.
        change: Change,
        /// When the node was registered (ms).
        registered_at_ms: u64,
        /// The revision of the write's event (none when unchanged).
        revision: Option<Revision>,
        /// The node's new timestamp (ms).
        timestamp_ms: u64,
        /// When a health check's verdict was kept: the metadata written (the node is `DOWN`).
        kept_verdict: Option<String>,
    },
}

/// The refresh and update scripts' reply: `{'notfound'}`, `{'conflict'}` and `{'limit', service,
/// others}` (update only), or `{change, revision, address, services, timestamp, registeredAt, status, metadata,
/// ttl}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoredReply {
    /// No live node of that id.
    NotFound,
    /// The stored node no longer matches the write's condition; nothing changed.
    Conflict,
    /// The service limit refused the write; nothing changed.
    Limit(LimitRefusal),
    /// The node as stored after the write.
    Node {
        /// Whether the write changed the node.
        change: Change,
        /// The revision of the write's event (none when unchanged).
        revision: Option<Revision>,
        /// The node's hash fields, in `codec::parse_row`'s order after the id and liveness.
        fields: Vec<String>,
    },
}

/// The sweep script's reply: `{removed, nextDeadline or '-1', now}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SweepReply {
    /// Nodes removed by this batch.
    pub(crate) removed: u64,
    /// The earliest deadline left (ms), if any.
    pub(crate) next_deadline_ms: Option<u64>,
    /// The server's clock (ms).
    pub(crate) now_ms: u64,
}

/// The read script's reply: `{revision, viewJson, viewDeadlines, row...}`, each row
/// `codec::ROW` strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadReply {
    /// The revision the rows reflect.
    pub(crate) revision: Revision,
    /// The materialized view's JSON list of nodes.
    pub(crate) view_json: String,
    /// The view's deadlines, comma-separated.
    pub(crate) view_deadlines: String,
    /// The rows read from hashes, flat.
    pub(crate) rows: Vec<String>,
}

/// Decodes the heartbeat script's reply.
pub(crate) fn heartbeat(reply: &[String]) -> Result<HeartbeatReply> {
    const SCRIPT: &str = "heartbeat";
    let [outcome, second, third, _expired, timestamp, kept] = reply else {
        return Err(malformed(SCRIPT, reply, "expected 6 values"));
    };
    if outcome == "limit" {
        return Ok(HeartbeatReply::Limit(limit(SCRIPT, reply, second, third)?));
    }
    if outcome == "conflict" {
        return Ok(HeartbeatReply::Conflict);
    }
    Ok(HeartbeatReply::Written {
        change: change(SCRIPT, reply, outcome, &["registered", "updated", "unchanged"])?,
        registered_at_ms: number(SCRIPT, reply, second)?,
        revision: revision(SCRIPT, reply, third)?,
        timestamp_ms: number(SCRIPT, reply, timestamp)?,
        kept_verdict: (!kept.is_empty()).then(|| kept.clone()),
    })
}

/// Decodes the refresh (`script` = "refresh") or update ("update") script's reply.
pub(crate) fn stored(script: &'static str, reply: &[String]) -> Result<StoredReply> {
    match reply {
        [outcome] if outcome == "notfound" => Ok(StoredReply::NotFound),
        [outcome] if outcome == "conflict" => Ok(StoredReply::Conflict),
        [outcome, service, others] if outcome == "limit" => {
            Ok(StoredReply::Limit(limit(script, reply, service, others)?))
        }
        [outcome, rev, fields @ ..] if fields.len() == 7 => Ok(StoredReply::Node {
            change: change(script, reply, outcome, &["updated", "unchanged"])?,
            revision: revision(script, reply, rev)?,
            fields: fields.to_vec(),
        }),
        _ => Err(malformed(script, reply, "expected 'notfound', a refusal, or 9 values")),
    }
}

/// Decodes the deregister script's reply `{removed (0 or 1), revision}`, or `{'conflict'}`: whether
/// a live node was removed, `None` when the write's condition no longer held.
pub(crate) fn deregister(reply: &[String]) -> Result<Option<bool>> {
    const SCRIPT: &str = "deregister";
    if let [outcome] = reply
        && outcome == "conflict"
    {
        return Ok(None);
    }
    let [removed, rev] = reply else {
        return Err(malformed(SCRIPT, reply, "expected 2 values"));
    };
    revision(SCRIPT, reply, rev)?;
    match removed.as_str() {
        "1" => Ok(Some(true)),
        "0" => Ok(Some(false)),
        _ => Err(malformed(SCRIPT, reply, "removed is neither 0 nor 1")),
    }
}

/// Decodes the sweep script's reply.
pub(crate) fn sweep(reply: &[String]) -> Result<SweepReply> {
    const SCRIPT: &str = "sweep";
    let [removed, next, now] = reply else {
        return Err(malformed(SCRIPT, reply, "expected 3 values"));
    };
    let next_deadline_ms = match next.as_str() {
        "-1" => None,
        // A sorted-set score: Redis may print it as a float.
        score => match score.parse::<f64>() {
            Ok(ms) if ms.is_finite() && ms >= 0.0 => Some(ms as u64),
            _ => return Err(malformed(SCRIPT, reply, format!("next deadline {score:?} is not a time"))),
        },
    };
    Ok(SweepReply {
        removed: number(SCRIPT, reply, removed)?,
        next_deadline_ms,
        now_ms: number(SCRIPT, reply, now)?,
    })
}

/// Decodes the read script's reply; `row` is the number of strings per row.
pub(crate) fn read(reply: Vec<String>, row: usize) -> Result<ReadReply> {
    const SCRIPT: &str = "read";
    if reply.len() < 3 || !(reply.len() - 3).is_multiple_of(row) {
        return Err(malformed(SCRIPT, &reply, format!("expected 3 values and rows of {row}")));
    }
    let revision = Revision(number(SCRIPT, &reply, &reply[0])?);
    let mut values = reply.into_iter();
    let mut next = || values.next().unwrap_or_default();
    let (_, view_json, view_deadlines) = (next(), next(), next());
    Ok(ReadReply { revision, view_json, view_deadlines, rows: values.collect() })
}

fn malformed(script: &str, reply: &[String], why: impl std::fmt::Display) -> Error {
    const SHOWN: usize = 12;
    let shown: Vec<_> = reply.iter().take(SHOWN).collect();
    Error::new(ErrorKind::Internal, format!("malformed reply of the {script} script ({why}): {shown:?}"))
}

fn number(script: &str, reply: &[String], text: &str) -> Result<u64> {
    text.parse().map_err(|_| malformed(script, reply, format!("{text:?} is not a number")))
}

/// A revision slot: `'0'` when the write published no event.
fn revision(script: &str, reply: &[String], text: &str) -> Result<Option<Revision>> {
    Ok(Some(number(script, reply, text)?).filter(|r| *r > 0).map(Revision))
}

fn change(script: &str, reply: &[String], text: &str, allowed: &[&str]) -> Result<Change> {
    match text {
        _ if !allowed.contains(&text) => Err(malformed(script, reply, format!("unknown outcome {text:?}"))),
        "registered" => Ok(Change::Registered),
        "updated" => Ok(Change::Updated),
        _ => Ok(Change::Unchanged),
    }
}

fn limit(script: &str, reply: &[String], service: &str, others: &str) -> Result<LimitRefusal> {
    if service.is_empty() {
        return Err(malformed(script, reply, "a refusal without its service"));
    }
    let others = usize::try_from(number(script, reply, others)?).unwrap_or(usize::MAX);
    Ok(LimitRefusal { service: service.to_owned(), others })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| (*s).to_owned()).collect()
    }

    fn internal<T: std::fmt::Debug>(result: Result<T>) -> String {
        let error = result.expect_err("a malformed reply is an error");
        assert_eq!(error.kind(), ErrorKind::Internal, "{error}");
        assert!(!error.is_retryable() && !error.is_not_found(), "{error}");
        error.to_string()
    }

    #[test]
    fn heartbeat_replies() {
        assert_eq!(
            heartbeat(&strings(&["registered", "100", "7", "0", "120", ""])).unwrap(),
            HeartbeatReply::Written {
                change: Change::Registered,
                registered_at_ms: 100,
                revision: Some(Revision(7)),
                timestamp_ms: 120,
                kept_verdict: None,
            }
        );
        assert_eq!(
            heartbeat(&strings(&["unchanged", "100", "0", "0", "120", "{}"])).unwrap(),
            HeartbeatReply::Written {
                change: Change::Unchanged,
                registered_at_ms: 100,
                revision: None,
                timestamp_ms: 120,
                kept_verdict: Some("{}".into()),
            }
        );
        assert_eq!(
            heartbeat(&strings(&["limit", "users", "3", "0", "0", ""])).unwrap(),
            HeartbeatReply::Limit(LimitRefusal { service: "users".into(), others: 3 })
        );
        // Short, unknown, malformed numbers: never a plausible value.
        for bad in [
            &["registered", "100", "7", "0", "120"][..],
            &["registered", "100", "7", "0", "soon", ""],
            &["registered", "", "7", "0", "120", ""],
            &["registered", "100", "x", "0", "120", ""],
            &["maybe", "100", "7", "0", "120", ""],
            &["limit", "", "3", "0", "0", ""],
            &["limit", "users", "many", "0", "0", ""],
            &[],
        ] {
            internal(heartbeat(&strings(bad)));
        }
    }

    #[test]
    fn refresh_and_update_replies() {
        let node = ["10.0.0.1:80", "[]", "120", "100", "UP", "{}", "15000"];
        let mut reply = strings(&["updated", "9"]);
        reply.extend(strings(&node));
        assert_eq!(
            stored("refresh", &reply).unwrap(),
            StoredReply::Node {
                change: Change::Updated,
                revision: Some(Revision(9)),
                fields: strings(&node)
            }
        );
        assert_eq!(stored("refresh", &strings(&["notfound"])).unwrap(), StoredReply::NotFound);
        assert_eq!(
            stored("update", &strings(&["limit", "users", "2"])).unwrap(),
            StoredReply::Limit(LimitRefusal { service: "users".into(), others: 2 })
        );
        // A short reply is not "not found" (the SDK would register the node again).
        let short = &reply[..8];
        assert!(internal(stored("refresh", short)).contains("refresh"));
        let mut registered = reply.clone();
        registered[0] = "registered".into();
        internal(stored("update", &registered));
        let mut bad_revision = reply.clone();
        bad_revision[1] = "-".into();
        internal(stored("update", &bad_revision));
        internal(stored("update", &strings(&["limit", "users"])));
    }

    #[test]
    fn deregister_sweep_and_read_replies() {
        assert_eq!(deregister(&strings(&["1", "5"])).unwrap(), Some(true));
        assert_eq!(deregister(&strings(&["0", "0"])).unwrap(), Some(false));
        assert_eq!(deregister(&strings(&["conflict"])).unwrap(), None);
        internal(deregister(&strings(&["2", "5"])));
        internal(deregister(&strings(&["1"])));
        assert_eq!(
            sweep(&strings(&["2", "-1", "1000"])).unwrap(),
            SweepReply { removed: 2, next_deadline_ms: None, now_ms: 1000 }
        );
        assert_eq!(sweep(&strings(&["0", "1500", "1000"])).unwrap().next_deadline_ms, Some(1500));
        internal(sweep(&strings(&["0", "1500", ""])));
        internal(sweep(&strings(&["0", "soon", "1000"])));
        let read_ok = read(strings(&["4", "[]", "", "a", "1", "b", "c"]), 4).unwrap();
        assert_eq!((read_ok.revision, read_ok.rows.len()), (Revision(4), 4));
        internal(read(strings(&["4", "[]", "", "a", "1"]), 4));
        internal(read(strings(&["four", "[]", ""]), 4));
        internal(read(strings(&["4", "[]"]), 4));
    }
}
