//! Unit tests of `history`.

use super::*;

fn event(revision: u64, kind: &str, node: &str, at_ms: u64) -> Seen {
    let reason = (kind == "deregistered").then(|| "expired".to_owned());
    Seen::Event { revision, kind: kind.into(), node: node.into(), reason, at_ms }
}

fn snapshot(revision: u64, nodes: &[&str]) -> Seen {
    Seen::Snapshot { revision, nodes: nodes.iter().map(|n| (*n).to_owned()).collect(), at_ms: 0 }
}

fn op(node: &str, kind: OpKind, sent_ms: u64, acked_ms: Option<u64>) -> Op {
    Op { node: node.into(), kind, sent_ms, acked_ms }
}

/// Moves every expiry of the history to `ms`.
fn expire_at(history: &mut History, ms: u64) {
    for seen in history.watches.iter_mut().flat_map(|w| w.seen.iter_mut()) {
        if let Seen::Event { at_ms, kind, .. } = seen
            && kind == "deregistered"
        {
            *at_ms = ms;
        }
    }
}

fn good() -> History {
    History {
        ops: vec![
            op("a", OpKind::Register, 1_000, Some(1_010)),
            op("b", OpKind::Register, 1_100, Some(1_110)),
            op("b", OpKind::Heartbeat, 1_500, Some(1_510)),
        ],
        watches: vec![
            WatchLog {
                name: "w1".into(),
                seen: vec![
                    snapshot(10, &[]),
                    event(11, "registered", "a", 1_005),
                    event(12, "registered", "b", 1_105),
                    event(13, "deregistered", "a", 3_050),
                ],
            },
            WatchLog {
                name: "w2".into(),
                seen: vec![
                    snapshot(11, &["a"]),
                    Seen::Broken,
                    event(12, "registered", "b", 1_105),
                    event(13, "deregistered", "a", 3_050),
                ],
            },
        ],
        ttl_ms: 2_000,
        expiry_bound_ms: 1_000,
        faults: Vec::new(),
        final_nodes: ["b".to_owned()].into(),
        final_revision: 13,
        observers: vec![Observed {
            name: "resolver".into(),
            convergence_ms: vec![Some(40)],
            evidence: Vec::new(),
            final_view: ["b 10.0.0.2:1001".to_owned()].into(),
            registry_view: ["b 10.0.0.2:1001".to_owned()].into(),
        }],
    }
}

/// A watcher that resynced across a node's expiry (its event in the gap) saw it leave through
/// the snapshot, once the node could have expired; a snapshot without it sooner shows it lost.
#[test]
fn a_leaving_seen_only_in_a_snapshot_counts_after_the_ttl() {
    let mut history = good();
    // b's expiry event is not seen; a resync without b comes instead.
    let resync = |at_ms| Seen::Snapshot { revision: 20, nodes: BTreeSet::new(), at_ms };
    history.final_nodes.clear();
    history.final_revision = 20;
    for watch in &mut history.watches {
        watch.seen.push(resync(3_600));
    }
    let found = history.check();
    assert!(found.iter().all(|v| v.invariant != "acknowledged registrations"), "{found:?}");
    for watch in &mut history.watches {
        watch.seen.pop();
        watch.seen.push(resync(3_000));
    }
    let found = history.check();
    assert!(
        found.iter().any(|v| v.invariant == "acknowledged registrations" && v.detail.starts_with("b ")),
        "lost within its TTL (last heartbeat sent at 1,500, TTL 2,000): {found:?}"
    );
}

#[test]
fn a_correct_history_passes() {
    assert_eq!(good().check(), Vec::new());
}

/// A watcher told to resync twice in a row (a failover's jump right after another gap) has a
/// span without events: it misses nothing. (The checker panicked on it once, in a Sentinel run.)
#[test]
fn a_snapshot_followed_at_once_by_another_passes() {
    let mut history = good();
    history.watches[1].seen.insert(1, snapshot(11, &["a"]));
    assert_eq!(history.check(), Vec::new());
}

#[test]
fn each_broken_promise_is_found_and_shown() {
    type Breaker = Box<dyn Fn(&mut History)>;
    let cases: Vec<(&str, Breaker)> = vec![
        (
            "gap-free",
            Box::new(|h| {
                h.watches[1].seen.remove(2);
            }),
        ),
        ("order", Box::new(|h| h.watches[0].seen.swap(1, 2))),
        ("agreement", Box::new(|h| h.watches[1].seen[2] = event(12, "registered", "c", 1_105))),
        (
            "replay",
            Box::new(|h| {
                h.final_nodes.insert("z".into());
            }),
        ),
        (
            "acknowledged registrations",
            Box::new(|h| {
                h.final_nodes.clear();
                h.watches.iter_mut().for_each(|w| w.seen.retain(|s| !matches!(s, Seen::Event { node, kind, .. } if node == "b" && kind == "registered")));
            }),
        ),
        (
            "acknowledged deregistrations",
            Box::new(|h| h.ops.push(op("b", OpKind::Deregister, 2_000, Some(2_005)))),
        ),
        ("expiry timing", Box::new(|h| expire_at(h, 2_500))),
        ("expiry timing", Box::new(|h| expire_at(h, 9_000))),
        ("observers converge", Box::new(|h| h.observers[0].convergence_ms.push(None))),
        (
            "observers converge",
            Box::new(|h| {
                h.observers[0].final_view = ["b 10.0.0.2:1000".to_owned()].into();
            }),
        ),
    ];
    for (invariant, break_it) in cases {
        let mut history = good();
        break_it(&mut history);
        let found = history.check();
        assert!(found.iter().any(|v| v.invariant == invariant), "{invariant} not found: {found:?}");
        assert!(found.iter().all(|v| !v.evidence.is_empty()), "evidence shown: {found:?}");
    }
    // A late expiry inside a fault window is not a violation.
    let mut history = good();
    history.faults.push((2_000, 2_500));
    expire_at(&mut history, 5_000);
    assert_eq!(history.check(), Vec::new());
}
