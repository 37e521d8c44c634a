//! Reconciling with what Titan peers wrote: candidates found with native commands (set
//! differences, pipelined probes), decided by the `RECONCILE` script from the hashes.

use muster_core::Result;

use crate::Inner;

/// Nodes per reconciliation script call.
const RECONCILE_BATCH: usize = 500;
/// Nodes per pipeline of the full pass's probes.
const PROBE_BATCH: usize = 1000;

/// What one reconciliation pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Nodes written by Titan peers, newly tracked (each announced as registered).
    pub adopted: u64,
    /// Titan peers' nodes whose address or services changed (each announced as updated).
    pub updated: u64,
    /// Nodes removed: gone from the index (announced as deregistered), broken, or dead and
    /// untracked (removed as Titan's reader removes them).
    pub removed: u64,
}

impl Inner {
    /// Reconciles with what Titan peers wrote — every node (`None`: the full pass), or the `ids`
    /// a hint named: adoptions, updates and removals become events. Returns the counts.
    ///
    /// The full pass finds its candidates with native commands (the two set differences between
    /// the Titan index and the tracked set, and each Titan peer's address and services next to what
    /// was seen last, pipelined); only candidates reach the script, which decides from the hash.
    pub(crate) async fn reconcile(&self, ids: Option<&[String]>) -> Result<Reconciled> {
        let candidates = match ids {
            Some(ids) => ids.to_vec(),
            None => self.reconcile_candidates().await?,
        };
        let mut total = Reconciled::default();
        for chunk in candidates.chunks(RECONCILE_BATCH) {
            let mut args = vec!["ids".to_owned()];
            args.extend_from_slice(chunk);
            let (adopted, updated, removed): (u64, u64, u64) =
                self.invoke_write(&self.scripts.reconcile, &args).await?;
            total.adopted += adopted;
            total.updated += updated;
            total.removed += removed;
        }
        Ok(total)
    }

    /// The nodes a full pass must look at: in the index but not tracked, tracked but not in the
    /// index, and Titan peers' nodes whose address or services differ from what was seen last.
    pub(crate) async fn reconcile_candidates(&self) -> Result<Vec<String>> {
        let keys = &self.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("SDIFF").arg(&keys.index).arg(&keys.tracked);
        pipe.cmd("SDIFF").arg(&keys.tracked).arg(&keys.index);
        pipe.cmd("SMEMBERS").arg(&keys.foreign);
        let (new, gone, foreign): (Vec<String>, Vec<String>, Vec<String>) =
            self.pool.query_pipe(&pipe).await?;
        let mut candidates = new;
        candidates.extend(gone);
        let seen = &keys.seen;
        for chunk in foreign.chunks(PROBE_BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET").arg(keys.node(id)).arg("address").arg("services");
                pipe.cmd("HMGET").arg(seen).arg(format!("a:{id}")).arg(format!("s:{id}"));
            }
            let replies: Vec<Vec<Option<String>>> = self.pool.query_pipe(&pipe).await?;
            // Replies alternate: the node's address and services, then what was seen last.
            candidates.extend(
                chunk
                    .iter()
                    .zip(replies.chunks_exact(2))
                    .filter(|(_, pair)| pair[0] != pair[1])
                    .map(|(id, _)| id.clone()),
            );
        }
        Ok(candidates)
    }

    /// The hinted ids worth a reconciliation: one pipeline of native reads per batch, so the common
    /// hint — a heartbeat that changed nothing, of a Titan peer or of a Muster node — costs no script
    /// call. An id is skipped when it is a Titan peer's node whose address and services equal what
    /// was seen last, or a node Muster tracks that is still indexed and not a Titan peer's.
    pub(crate) async fn needing_reconcile(&self, ids: &[String]) -> Result<Vec<String>> {
        type Probe = ((Option<String>, Option<String>), (Option<String>, Option<String>), bool, bool);
        let keys = &self.keys;
        let seen = &keys.seen;
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(keys.node(id))
                .arg("address")
                .arg("services")
                .cmd("HMGET")
                .arg(seen)
                .arg(format!("a:{id}"))
                .arg(format!("s:{id}"))
                .cmd("SISMEMBER")
                .arg(&keys.tracked)
                .arg(id)
                .cmd("SISMEMBER")
                .arg(&keys.index)
                .arg(id);
        }
        let probes: Vec<Probe> = self.pool.query_pipe(&pipe).await?;
        Ok(ids
            .iter()
            .zip(probes)
            .filter(|(_, (node, seen, tracked, indexed))| match seen.0 {
                Some(_) => !(*indexed && node == seen),
                None => tracked != indexed,
            })
            .map(|(id, _)| id.clone())
            .collect())
    }
}
