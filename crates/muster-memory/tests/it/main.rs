//! Integration tests of the in-memory registry: the shared conformance suite plus what is
//! specific to this backend. All on paused tokio time.

mod specific;

use muster_memory::MemoryRegistry;
use muster_testkit::conformance::Timing;

muster_testkit::conformance_tests!(
    setup = ((), MemoryRegistry::new()),
    timing = Timing::default(),
    start_paused = true,
);
