//! Test support shared by every backend's tests (never a dependency of production code).
//!
//! - [`certs`] — a CA, server and client certificates generated at test time (TLS tests).
//! - [`conformance`] — the one suite every [`muster_core::Registry`] backend must pass, covering the
//!   trait and the agent's behaviour on it. Backends instantiate it with [`conformance_tests!`].
//! - [`faults`] — [`faults::FaultyRegistry`], which wraps a real backend and makes chosen calls fail,
//!   to test retries and reconnects without mocking the store.
//! - [`redis_server`] — real `redis-server` processes (standalone, Cluster, Sentinel) on free ports.
//! - [`titan`] — a Titan discovery peer emulated from seed 001's wire operations, for mixed fleets.
//! - [`fuzz`] — the mutation strategy of the property tests that stand in for fuzzing.
//! - [`history`] — the history checker: what clients did and watchers saw, against the promises.
//! - [`harness`] — the fault runs' workload (seeded clients, watchers, observers) over `muster serve`.
//! - [`proxy`] — a TCP fault proxy: latency, dropped connections, blackholes, partitions.

pub mod certs;
pub mod conformance;
pub mod faults;
pub mod fuzz;
pub mod harness;
pub mod history;
pub mod proxy;
pub mod redis_server;
pub mod titan;

/// Generates one `#[tokio::test]` per conformance case.
///
/// ```text
/// muster_testkit::conformance_tests!(
///     setup = ((), muster_memory::MemoryRegistry::new()),
///     timing = muster_testkit::conformance::Timing::default(),
///     start_paused = true
/// );
/// ```
///
/// `setup` is evaluated inside each async test (it may `.await`) and yields `(guard, registry)`;
/// the guard (a server process, say) lives until the case ends. `start_paused` must be a literal
/// (paused tokio time for in-process backends, real time for external stores).
#[macro_export]
macro_rules! conformance_tests {
    (setup = $make:expr, timing = $timing:expr, start_paused = $paused:literal $(,)?) => {
        $crate::__with_cases!(__conformance_cases!($make, $timing, $paused));
    };
}

/// Runs every conformance case in sequence inside the current async test, each on a registry made
/// by `make(case_name)` (an async closure; use the name to pick a fresh key prefix), so a costly
/// fixture (a Redis Cluster, a Sentinel group) is started once for the whole suite.
///
/// ```text
/// muster_testkit::conformance_sequence!(make = |case| async move { connect(case).await }, timing = timing);
/// ```
#[macro_export]
macro_rules! conformance_sequence {
    (make = $make:expr, timing = $timing:expr $(,)?) => {
        $crate::__with_cases!(__conformance_sequence!($make, $timing));
    };
}

/// The name of every conformance case, for a suite that runs only some of them to check that it
/// names each of the others as left out, with the reason (so a new case is never skipped
/// silently).
pub const CONFORMANCE_CASES: &[&str] = __with_cases!(__case_names!());

#[doc(hidden)]
#[macro_export]
macro_rules! __case_names {
    (; $($case:ident),* $(,)?) => {
        &[$(stringify!($case)),*]
    };
}

/// Checks a partial run of the conformance suite: every case is in exactly one of `run` and
/// `left_out` (each left-out case with its reason, which may not be empty), and both name only
/// cases that exist.
pub fn check_partial_conformance(run: &[&str], left_out: &[(&str, &str)]) {
    for case in CONFORMANCE_CASES {
        let runs = run.contains(case);
        let left = left_out.iter().any(|(name, _)| name == case);
        assert!(runs != left, "conformance case {case}: run it, or name it as left out with the reason");
    }
    for name in run.iter().chain(left_out.iter().map(|(name, _)| name)) {
        assert!(CONFORMANCE_CASES.contains(name), "{name} is not a conformance case");
    }
    for (name, why) in left_out {
        assert!(!why.trim().is_empty(), "{name} is left out without a reason");
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ($callback:ident!($($args:tt)*)) => {
        $crate::$callback! { $($args)*;
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
            refresh_never_resurrects,
            watch_resumes_after_revision,
            watch_snapshot_then_live,
            watch_from_unknown_revision_resyncs,
            bad_input_changes_nothing,
            service_limit_is_atomic,
            updates_carry_previous_services,
            check_verdict_holds_against_every_write,
            writes_conditional_on_the_stored_node,
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
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:expr, $timing:expr, $paused:literal; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = $paused)]
            async fn $case() {
                let (_guard, registry) = $make;
                $crate::conformance::$case(registry, $timing).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_sequence {
    ($make:expr, $timing:expr; $($case:ident),* $(,)?) => {{
        let make = $make;
        $(
            {
                let started = tokio::time::Instant::now();
                let registry = make(stringify!($case)).await;
                $crate::conformance::$case(registry, $timing).await;
                eprintln!("conformance case {} passed in {:?}", stringify!($case), started.elapsed());
            }
        )*
    }};
}
