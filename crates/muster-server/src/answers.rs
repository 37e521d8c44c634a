//! Resolve answers kept as bytes: a resolve whose store read returns what the last one returned
//! sends the bytes written then instead of writing the same JSON again.
//!
//! - An answer is reused only when the store's read now is *equal* to the read it was written
//!   from — the same revision and the same nodes, field by field (last heartbeat included) — so
//!   the bytes are exactly what writing them again would give. Nothing is assumed about what a
//!   revision covers (a Titan peer's write on Redis changes nodes before the revision moves).
//! - Answers are per request target (path and query: the service, its filters) and only for
//!   callers who may read everything (a restricted caller's answer depends on its rules).
//! - The nodes the answer was written from are the ones the read returned (moved in, not
//!   copied). Bounded in count ([`MAX_ANSWERS`] targets) and in size ([`MAX_BYTES`], estimated
//!   from the bodies and the nodes): all are forgotten when either is reached, and an answer
//!   larger than an eighth of the size is not kept — so clients varying their query strings
//!   cannot make the server hold more than that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use muster_core::{NodeInfo, Revision};

/// Most request targets whose answers are kept.
pub(crate) const MAX_ANSWERS: usize = 1024;
/// Most bytes the kept answers may hold (estimated).
pub(crate) const MAX_BYTES: usize = 32 << 20;

/// Kept values bounded in count and in bytes — the rule every kept answer follows (resolve
/// answers here, DNS answers in `dns.rs`): a value over an eighth of the byte bound is not kept,
/// and when either bound would be passed everything is forgotten first (cheap, and a client
/// varying its queries only empties what it filled).
pub(crate) struct Bounded<K: ?Sized, V> {
    entries: HashMap<Box<K>, (V, usize)>,
    /// Bytes of the entries held (as their `insert` said).
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<K: ?Sized + std::hash::Hash + Eq, V> Bounded<K, V> {
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self { entries: HashMap::new(), bytes: 0, max_entries, max_bytes }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(value, _)| value)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(value, _)| value)
    }

    /// Keeps `value`, which holds about `size` bytes, under `key` (see the type's rule).
    pub(crate) fn insert(&mut self, key: Box<K>, value: V, size: usize) {
        if size > self.max_bytes / 8 {
            return;
        }
        if let Some((_, old)) = self.entries.remove(&*key) {
            self.bytes -= old;
        }
        if self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.insert(key, (value, size));
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The kept answers.
pub(crate) struct Answers {
    entries: Mutex<Bounded<str, Arc<Answer>>>,
}

impl Default for Answers {
    fn default() -> Self {
        Self { entries: Mutex::new(Bounded::new(MAX_ANSWERS, MAX_BYTES)) }
    }
}

/// One kept answer.
struct Answer {
    revision: Revision,
    nodes: Vec<NodeInfo>,
    body: Bytes,
}

impl Answers {
    /// The answer written for `target` from exactly this read, if one is kept.
    pub(crate) fn get(&self, target: &str, revision: Revision, nodes: &[NodeInfo]) -> Option<Bytes> {
        let answer = self.lock().get(target).cloned()?;
        (answer.revision == revision && answer.nodes == nodes).then(|| answer.body.clone())
    }

    /// Keeps `body`, written for `target` from the read (`revision`, `nodes`).
    pub(crate) fn put(&self, target: &str, revision: Revision, nodes: Vec<NodeInfo>, body: Bytes) {
        let size = target.len() + body.len() + nodes.iter().map(estimated_size).sum::<usize>();
        let answer = Arc::new(Answer { revision, nodes, body });
        self.lock().insert(target.into(), answer, size);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bounded<str, Arc<Answer>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Roughly what a node holds in memory (its fields and their text).
fn estimated_size(node: &NodeInfo) -> usize {
    let metadata = |m: &muster_core::Metadata| m.iter().map(|(k, v)| 48 + k.len() + v.len()).sum::<usize>();
    std::mem::size_of::<NodeInfo>()
        + node.node_id.as_str().len()
        + 32
        + metadata(&node.metadata)
        + node
            .services
            .iter()
            .map(|s| 96 + s.name.len() + s.version.as_ref().map_or(0, String::len) + metadata(&s.metadata))
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::ServiceInfo;

    fn node(id: &str, heartbeat: u64) -> NodeInfo {
        NodeInfo { timestamp_ms: heartbeat, ..muster_testkit::conformance::node_info(id, &["svc@1.0.0"]) }
    }

    #[test]
    fn an_answer_is_reused_only_for_an_equal_read() {
        let answers = Answers::default();
        let read = vec![node("a", 10), node("b", 10)];
        answers.put("/t", Revision(5), read.clone(), Bytes::from_static(b"answer"));
        assert_eq!(answers.get("/t", Revision(5), &read).as_deref(), Some(&b"answer"[..]));
        assert!(answers.get("/other", Revision(5), &read).is_none(), "another target");
        assert!(answers.get("/t", Revision(6), &read).is_none(), "another revision");
        let heartbeat = vec![node("a", 10), node("b", 11)];
        assert!(answers.get("/t", Revision(5), &heartbeat).is_none(), "a heartbeat changed a node");
        assert!(
            answers.get("/t", Revision(5), &read[..1]).is_none(),
            "a node is gone (expired, not yet swept)"
        );
        let mut titan = read.clone();
        titan[0].services = vec![ServiceInfo::parse("svc@2.0.0").unwrap()];
        assert!(answers.get("/t", Revision(5), &titan).is_none(), "a peer's write before the revision moved");
    }

    #[test]
    fn kept_answers_are_bounded() {
        let answers = Answers::default();
        for n in 0..MAX_ANSWERS + 10 {
            answers.put(&format!("/t{n}"), Revision(1), Vec::new(), Bytes::new());
        }
        assert!(answers.lock().len() <= MAX_ANSWERS);
        assert!(
            answers.get(&format!("/t{}", MAX_ANSWERS + 9), Revision(1), &[]).is_some(),
            "the latest is kept"
        );
    }

    #[test]
    fn kept_answers_are_bounded_in_size() {
        let answers = Answers::default();
        // Large answers for ever new query strings (a client varying a filter's value).
        let nodes: Vec<NodeInfo> = (0..2000).map(|i| node(&format!("n{i}"), 1)).collect();
        let body = Bytes::from(vec![b'x'; 500_000]);
        for n in 0..200 {
            answers.put(&format!("/t?meta.k={n}"), Revision(1), nodes.clone(), body.clone());
            let entries = answers.lock();
            assert!(entries.bytes() <= MAX_BYTES, "{} bytes kept", entries.bytes());
            assert_eq!(entries.bytes(), entries.entries.values().map(|(_, size)| size).sum::<usize>());
        }
        assert!(answers.get("/t?meta.k=199", Revision(1), &nodes).is_some(), "the latest is kept");
        // One answer over an eighth of the budget is not kept at all.
        let huge = Bytes::from(vec![b'x'; MAX_BYTES / 8 + 1]);
        answers.put("/huge", Revision(1), Vec::new(), huge);
        assert!(answers.get("/huge", Revision(1), &[]).is_none());
    }
}
