//! Watch streams: the watch component reading the store's log, with a snapshot when behind.

use muster_core::{LogSource, Revision, Snapshot, WatchEvent};
use tokio::time::Instant;

use crate::Shared;

/// Watch streams read the store's log and, when behind, a snapshot of its nodes — under one lock.
impl LogSource for Shared {
    fn read_after(&self, cursor: Revision, max: usize) -> Option<Vec<WatchEvent>> {
        let state = self.read();
        if state.shutdown {
            // Events written before the shutdown are still delivered, then the stream ends.
            return muster_core::log::read_remaining(&state.log, cursor, max);
        }
        Some(muster_core::log::read_log(&state.log, cursor, max, || {
            tracing::debug!(%cursor, current = %state.log.revision(), "watcher resyncs");
            Snapshot { revision: state.log.revision(), nodes: state.active_nodes(Instant::now()) }
        }))
    }

    fn position(&self, with_snapshot: bool) -> Option<(Revision, Option<Snapshot>)> {
        let state = self.read();
        let revision = state.log.revision();
        let snapshot =
            with_snapshot.then(|| Snapshot { revision, nodes: state.active_nodes(Instant::now()) });
        Some((revision, snapshot))
    }
}
