//! `RemoteRegistry`: the registry contract over HTTP, run with the backend conformance suite
//! against a real server on loopback (each case on a fresh server over a fresh embedded store).

use std::sync::Arc;
use std::time::Duration;

use muster_client::{Client, RemoteRegistry};
use muster_memory::MemoryRegistry;
use muster_server::{AppState, ServerConfig};
use muster_testkit::conformance::Timing;

const TIMING: Timing = Timing {
    interval: Duration::from_millis(150),
    ttl: Duration::from_millis(600),
    expiry_slack: Duration::from_secs(1),
};

/// A server on a fresh embedded store; the server runs until the test's runtime ends.
async fn remote() -> RemoteRegistry {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = AppState::new(Arc::new(MemoryRegistry::new()), ServerConfig::default());
    tokio::spawn(async move {
        muster_server::run(listener, state, std::future::pending()).await.unwrap();
    });
    RemoteRegistry::new(Client::new(&format!("http://127.0.0.1:{port}")).unwrap())
}

/// The conformance cases the HTTP API can satisfy, each on a fresh server, and their names.
macro_rules! remote_cases {
    ($($case:ident),* $(,)?) => {
        muster_testkit::__conformance_cases!(((), remote().await), TIMING, false; $($case),*);
        const RUN: &[&str] = &[$(stringify!($case)),*];
    };
}

remote_cases!(
    heartbeats_keep_node_alive,
    silent_node_expires_with_event,
    deregister_removes_at_once,
    reregistration_after_expiry,
    version_queries,
    find_follows_service_changes,
    update_changes_without_extending_life,
    concurrent_updates_all_land,
    watch_snapshot_then_live,
    watch_from_unknown_revision_resyncs,
    bad_input_changes_nothing,
    updates_carry_previous_services,
    agent_defaults_and_overrides,
    agent_start_registers_and_heartbeats,
    agent_stop_deregisters_once,
    agent_service_changes,
    agent_concurrent_updates_both_land,
    agent_handlers_and_unsubscribe,
    agent_own_event_filtering,
    agent_client_mode,
    agent_heartbeat_retries,
    agent_cache_follows_registry,
    agent_cache_resyncs_after_broken_watch,
    agent_follows_after_a_clean_watch_end,
    agent_operations_on_other_nodes,
);

/// The cases the HTTP API does not carry, each with the reason (see `what_the_api_does_not_carry`).
const LEFT_OUT: &[(&str, &str)] = &[
    ("registration_round_trip", "a heartbeat's outcome carries no revision over HTTP"),
    ("unchanged_heartbeat_publishes_nothing", "a call cannot tell an updated node from an unchanged one"),
    ("refresh_never_resurrects", "a call cannot tell an updated node from an unchanged one"),
    ("service_limit_is_atomic", "the server applies its own service limit, not a caller's"),
    ("watch_resumes_after_revision", "a removal over HTTP is always a graceful deregistration"),
    (
        "check_verdict_holds_against_every_write",
        "only the server's own checks write a verdict (its HTTP side: muster-server's checks tests)",
    ),
    (
        "writes_conditional_on_the_stored_node",
        "the server sets a write's condition from its own access decision",
    ),
];

/// Every conformance case runs here or is named above with its reason: a new case fails this test
/// until it is one or the other.
#[test]
fn every_conformance_case_runs_or_is_left_out_with_a_reason() {
    muster_testkit::check_partial_conformance(RUN, LEFT_OUT);
}

/// What a call over HTTP reports instead: a new node is `Registered`, an existing one `Updated`
/// (whether or not anything changed), without a revision; a refresh is `Unchanged`; a removal is
/// a graceful deregistration whatever the reason given; errors keep their kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_api_does_not_carry() {
    use futures::StreamExt;
    use muster_core::{
        Address, Change, DeregisterReason, ErrorKind, NodeId, Registration, Registry, ServiceInfo,
        WatchEvent, WatchStart,
    };
    let registry = remote().await;
    let id = NodeId::new("n1").unwrap();
    let registration = Registration::new(
        id.clone(),
        Address::parse("10.0.0.1:80").unwrap(),
        vec![ServiceInfo::new("users", Some("1.0.0")).unwrap()],
        Duration::from_secs(30),
    )
    .unwrap();
    let first = registry.heartbeat(registration.clone()).await.unwrap();
    assert_eq!((first.change, first.revision), (Change::Registered, None));
    assert_eq!(registry.heartbeat(registration).await.unwrap().change, Change::Updated);
    assert_eq!(registry.refresh(&id, None).await.unwrap().change, Change::Unchanged);
    let ghost = NodeId::new("ghost").unwrap();
    assert_eq!(registry.refresh(&ghost, None).await.unwrap_err().kind(), ErrorKind::NotFound);
    let mut watch = registry.watch(WatchStart::Now).await.unwrap();
    assert!(registry.deregister(&id, DeregisterReason::Evicted).await.unwrap());
    assert!(!registry.deregister(&id, DeregisterReason::Evicted).await.unwrap(), "already gone");
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Event(event) = event else { panic!("an event: {event:?}") };
    assert_eq!(event.reason, Some(DeregisterReason::Graceful));
    // A registry that is not there: unavailable, as a store that cannot be reached.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gone = RemoteRegistry::new(Client::new(&format!("http://127.0.0.1:{port}")).unwrap());
    assert_eq!(gone.list_active().await.unwrap_err().kind(), ErrorKind::Unavailable);
}
