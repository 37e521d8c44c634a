//! Test support shared by every backend's tests (never a dependency of production code).
//!
//! - [`conformance`] — the one suite every [`muster_core::Registry`] backend must pass, covering the
//!   trait and the agent's behaviour on it. Backends instantiate it with [`conformance_tests!`].
//! - [`faults`] — [`faults::FaultyRegistry`], which wraps a real backend and makes chosen calls fail,
//!   to test retries and reconnects without mocking the store.

pub mod conformance;
pub mod faults;

/// Generates one `#[tokio::test]` per conformance case.
///
/// ```text
/// muster_testkit::conformance_tests!(
///     registry = muster_memory::MemoryRegistry::new(),
///     timing = muster_testkit::conformance::Timing::default(),
///     start_paused = true
/// );
/// ```
///
/// `registry` is evaluated inside each async test (it may `.await`); `start_paused` must be a
/// literal (paused tokio time for in-process backends, real time for external stores).
#[macro_export]
macro_rules! conformance_tests {
    (registry = $make:expr, timing = $timing:expr, start_paused = $paused:literal $(,)?) => {
        $crate::__conformance_cases!($make, $timing, $paused;
            registration_round_trip,
            unchanged_heartbeat_publishes_nothing,
            heartbeats_keep_node_alive,
            silent_node_expires_with_event,
            deregister_removes_at_once,
            reregistration_after_expiry,
            version_queries,
            find_follows_service_changes,
            update_changes_without_extending_life,
            concurrent_updates_all_land,
            watch_resumes_after_revision,
            watch_snapshot_then_live,
            watch_from_unknown_revision_resyncs,
            bad_input_changes_nothing,
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
            agent_operations_on_other_nodes,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:expr, $timing:expr, $paused:literal; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = $paused)]
            async fn $case() {
                let registry = $make;
                $crate::conformance::$case(registry, $timing).await;
            }
        )*
    };
}
