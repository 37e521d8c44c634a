//! The Lua scripts. Each runs atomically on the server, so concurrent writers cannot interleave
//! inside one change, and whether something changed is decided where the data is.
//!
//! Every script receives `KEYS[1]` = the Titan node index (for cluster routing; every key shares
//! its hash slot) and `ARGV[1..3]` = key prefix, pub/sub channel (`''` when off), log `MAXLEN`.
//! Time is the server's (`TIME`), so deadlines do not depend on client clocks.

use redis::Script;

/// Shared definitions, prepended to every script.
const PRELUDE: &str = include_str!("lua/prelude.lua");

/// Everything else the scripts share. Kept apart from [`PRELUDE`] so the heartbeat's steady-state
/// path returns before any of it is evaluated.
const COMMON: &str = include_str!("lua/common.lua");

/// Register-or-heartbeat, steady-state part: when the stored node equals the registration and its
/// heartbeat key is still there, refresh and return before [`COMMON`] is evaluated. `ARGV[4..]`: id,
/// address, services JSON, client timestamp ms (unused: timestamps are the server's, so they agree
/// with deadlines), TTL s, TTL ms, status, metadata JSON, and `'1'` to publish Titan's
/// `NODE_UPDATED` for every heartbeat (as a Titan node does when pub/sub is on).
const HEARTBEAT_FAST: &str = include_str!("lua/heartbeat_fast.lua");

/// Register-or-heartbeat, the rest: registrations, changes, and nodes whose heartbeat had run out.
/// Returns `{change, registeredAt, revision, expiredRevision, timestamp}`.
const HEARTBEAT: &str = include_str!("lua/heartbeat.lua");

/// Heartbeat of an active node with its stored values, optionally a new status. `ARGV[4..]`: id,
/// status (`''` to keep), `'1'` to publish Titan's `NODE_UPDATED` for an unchanged heartbeat. Returns `{'notfound'}` or `{change, revision, <7 node fields>}`.
const REFRESH: &str = include_str!("lua/refresh.lua");

/// Partial update of an active node, without extending its life. `ARGV[4..]`: id, address,
/// services JSON, status, metadata JSON (each `''` to keep). The timestamp is the server's.
/// Returns `{'notfound'}` or `{change, revision, <node fields...>}`.
const UPDATE: &str = include_str!("lua/update.lua");

/// Deregistration. `ARGV[4..]`: id, reason. Returns `{removed (0/1), revision}`; a node whose TTL
/// had already run out is expired instead (with its event) and counts as not removed.
const DEREGISTER: &str = include_str!("lua/deregister.lua");

/// Expiry of nodes whose deadline passed, at most `ARGV[4]` of them. Re-checks each heartbeat: a
/// node that heartbeated in time (a Titan peer's heartbeats do not move deadlines) gets its deadline
/// moved instead. A node whose heartbeat is alive but whose hash broke is evicted, as Titan's reader
/// would remove it. Returns `{removed, nextDeadline or -1, now}`.
const SWEEP: &str = include_str!("lua/sweep.lua");

/// Reconciliation with what Titan peers wrote, so that every change they make becomes exactly one
/// event whatever their pub/sub setting. `ARGV[4]` = `ids`, the nodes in `ARGV[5..]` (a full
/// pass's candidates, found with native commands by `Inner::reconcile`, or hinted ones). For each
/// node:
///
/// - in the Titan index but not tracked: adopted when live and valid (deadline from its heartbeat's
///   remaining TTL, announced as registered); removed, as Titan's reader removes it, when its
///   heartbeat is gone or its hash breaks the validity rule;
/// - tracked but gone from the index (Titan's shutdown, `deregisterNode`, or its reader's cleanup):
///   removed, announced as deregistered — 'graceful' before its deadline, 'expired' after;
/// - written by a Titan peer and tracked: compared with what was last seen (address and services);
///   a difference is announced as updated with the new values; a live node whose hash broke is
///   evicted.
///
/// Returns `{adopted, updated, removed}`.
const RECONCILE: &str = include_str!("lua/reconcile.lua");

/// Reads nodes; never writes anything but the listing cache below, and that only with `ARGV[5]` =
/// `rw` (`ro`: a read-only inspection, or a replica). `ARGV[4]` = `active` (every live node),
/// `service` (live nodes listing the service `ARGV[6]`), `all` (every indexed node, live or not)
/// or `ids` (`ARGV[6..]`).
///
/// Live nodes written by Muster or adopted come from the info hash in bulk: one JSON array plus
/// their deadlines. Nodes in the Titan index that no sweeper tracks yet (written by Titan peers, not
/// adopted) are read from their hashes, so every reader sees them at once; tracked nodes that left
/// the index (removed by a Titan peer) are left out at once. For `active`, the bulk pair is kept as
/// a materialized view (`P:view`, with a TTL), valid while the revision is unchanged, the index
/// agrees with the tracked set, and until the earliest deadline in it, so a steady-state listing is
/// one `GET` rather than a read per node (its timestamps then lag the last heartbeat by at most the
/// time until that deadline). Adopted Titan nodes are always read from their hashes: their
/// heartbeats do not go through Muster. Returns `{revision, jsonArray, deadlinesCsv, id, alive,
/// <7 fields>, id, ...}` with `''` for missing fields.
const READ: &str = include_str!("lua/read.lua");

/// Takes or renews the sweeper lease. `ARGV[4..]`: token, lease ms. Returns 1 when held.
const LEASE: &str = include_str!("lua/lease.lua");

/// Releases the sweeper lease if held. `ARGV[4]`: token.
const RELEASE: &str = include_str!("lua/release.lua");

/// Carries the revision counter over to a new primary (`carry_over` in [`COMMON`]). `ARGV[4]`: its
/// replication id, `ARGV[5]`: `'1'` when it was promoted from a replica. Returns 1 when the counter
/// jumped.
const EPOCH: &str = include_str!("lua/epoch.lua");

/// Every script source, for checks over all of them.
#[cfg(test)]
pub(crate) const SOURCES: [&str; 13] = [
    PRELUDE,
    COMMON,
    HEARTBEAT_FAST,
    HEARTBEAT,
    REFRESH,
    UPDATE,
    DEREGISTER,
    SWEEP,
    RECONCILE,
    READ,
    LEASE,
    RELEASE,
    EPOCH,
];

/// The compiled scripts (each knows its SHA1; invocation uses EVALSHA and reloads on NOSCRIPT).
pub(crate) struct Scripts {
    pub(crate) heartbeat: Script,
    pub(crate) update: Script,
    pub(crate) refresh: Script,
    pub(crate) deregister: Script,
    pub(crate) sweep: Script,
    pub(crate) reconcile: Script,
    pub(crate) read: Script,
    pub(crate) lease: Script,
    pub(crate) release: Script,
    pub(crate) epoch: Script,
}

impl Scripts {
    /// `check_primary`: every script that issues a revision first checks whether the node it runs
    /// on is a primary the prefix has not met (a Cluster's, whose failovers no new connection
    /// reveals; see `carry_over` in `lua/common.lua`).
    pub(crate) fn new(check_primary: bool) -> Self {
        let keys = format!("{}local CHECK_PRIMARY = {check_primary}\n", crate::keys::lua_locals());
        // The body runs as a function so that its reply, whichever `return` gives it, passes
        // through `finish` (which reports a refused publish beside it).
        let script = |body: String| {
            Script::new(&format!("{PRELUDE}\nlocal function main()\n{body}\nend\nreturn finish(main())"))
        };
        let with_common = |body: &str| script(format!("{keys}\n{COMMON}\n{body}"));
        // The heartbeat's steady-state path returns before the key names are built: it defines
        // only the one key it needs.
        let fast_keys = crate::keys::lua_local("K_DEADLINES", crate::keys::DEADLINES);
        Self {
            heartbeat: script(format!("{fast_keys}\n{HEARTBEAT_FAST}\n{keys}\n{COMMON}\n{HEARTBEAT}")),
            update: with_common(UPDATE),
            refresh: with_common(REFRESH),
            deregister: with_common(DEREGISTER),
            sweep: with_common(SWEEP),
            reconcile: with_common(RECONCILE),
            read: with_common(READ),
            lease: with_common(LEASE),
            release: with_common(RELEASE),
            epoch: with_common(EPOCH),
        }
    }
}
