//! The Redis key layout, written once for Rust and Lua: [`LAYOUT`] names every fixed key under the
//! prefix `P`; [`Keys`] holds them for Rust code and [`lua_locals`] defines them for the scripts.
//! Per-node and per-service keys are `P:<kind>:<id>` on both sides ([`Keys::of`], Lua's `key`):
//! Titan's `nodes` hash and `heartbeat` key, Muster's `last` hash and `index:services` sets.
//!
//! Titan's own keys are written exactly as the Titan discovery module does; the rest is Muster's.

/// Titan: set of all node ids.
const INDEX: &str = ":index:nodes";
/// Muster: revision counter.
const REVISION: &str = ":revision";
/// Muster: the event log (a stream whose entry ids are `<revision>-0`).
const LOG: &str = ":log";
/// Muster: the materialized listing `<revision>|<valid until ms>|<csv length>|<deadlines csv><json>`.
const VIEW: &str = ":view";
/// Muster: ids of nodes the sweeper tracks.
const TRACKED: &str = ":index:tracked";
/// Muster: ids of tracked nodes written by Titan peers.
const FOREIGN: &str = ":index:foreign";
/// Muster: sorted set of tracked node ids by deadline (ms).
pub(crate) const DEADLINES: &str = ":index:deadlines";
/// Muster: what a Titan peer's node looked like when last seen (`a:<id>`, `s:<id>`).
const SEEN: &str = ":index:seen";
/// Muster: each tracked node's JSON as of its last change.
const INFO: &str = ":info";
/// Muster: the sweeper lease.
const SWEEPER: &str = ":sweeper";
/// Muster: the replication id of the primary the revision counter was last carried over to.
const EPOCH: &str = ":epoch";

/// Every fixed key: its Lua name and its suffix after the prefix.
const LAYOUT: [(&str, &str); 11] = [
    ("K_INDEX", INDEX),
    ("K_REV", REVISION),
    ("K_LOG", LOG),
    ("K_VIEW", VIEW),
    ("K_TRACKED", TRACKED),
    ("K_FOREIGN", FOREIGN),
    ("K_DEADLINES", DEADLINES),
    ("K_SEEN", SEEN),
    ("K_INFO", INFO),
    ("K_SWEEPER", SWEEPER),
    ("K_EPOCH", EPOCH),
];

/// The Lua statement defining one fixed key as a local from the prefix `P`.
pub(crate) fn lua_local(name: &str, suffix: &str) -> String {
    format!("local {name} = P .. '{suffix}'\n")
}

/// Lua statements defining every key of [`LAYOUT`].
pub(crate) fn lua_locals() -> String {
    LAYOUT.iter().map(|(name, suffix)| lua_local(name, suffix)).collect()
}

/// Key names for one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// The prefix as written in keys (possibly `{hash-tagged}`).
    pub(crate) prefix: String,
    pub(crate) index: String,
    pub(crate) revision: String,
    pub(crate) log: String,
    pub(crate) view: String,
    pub(crate) tracked: String,
    pub(crate) foreign: String,
    pub(crate) seen: String,
    pub(crate) sweeper: String,
}

impl Keys {
    pub(crate) fn new(prefix: String) -> Self {
        Self {
            index: format!("{prefix}{INDEX}"),
            revision: format!("{prefix}{REVISION}"),
            log: format!("{prefix}{LOG}"),
            view: format!("{prefix}{VIEW}"),
            tracked: format!("{prefix}{TRACKED}"),
            foreign: format!("{prefix}{FOREIGN}"),
            seen: format!("{prefix}{SEEN}"),
            sweeper: format!("{prefix}{SWEEPER}"),
            prefix,
        }
    }

    /// `P:<kind>:<id>`, as the scripts' `key(kind, id)`.
    pub(crate) fn of(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    /// `P:nodes:<id>`: a node's Titan hash.
    pub(crate) fn node(&self, id: &str) -> String {
        self.of("nodes", id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_and_lua_share_one_layout() {
        let keys = Keys::new("titan:discovery".to_owned());
        assert_eq!(keys.index, "titan:discovery:index:nodes");
        assert_eq!(keys.node("n1"), "titan:discovery:nodes:n1");
        let lua = lua_locals();
        for (name, suffix) in LAYOUT {
            assert!(lua.contains(&format!("local {name} = P .. '{suffix}'")), "{lua}");
        }
        assert!(crate::scripts::SOURCES.iter().any(|s| s.contains("return P .. ':' .. kind .. ':' .. id")));
        // Every script uses only keys of the layout (no hand-built `P .. ':...'` names).
        for script in crate::scripts::SOURCES {
            assert!(!script.contains("P .. ':index") && !script.contains("P .. ':view"), "{script}");
        }
    }
}
