//! The Redis key layout, written once for Rust and Lua: [`LAYOUT`] names every key under the
//! prefix; [`Keys`] holds them for Rust code and [`lua_locals`] defines them for the scripts.
//!
//! Titan's own keys (per node `P:nodes:<id>` and `P:heartbeat:<id>`, and the index) are written
//! exactly as the Titan discovery module does; everything else is Muster's.

/// Every key under the prefix `P`: its Lua name and its suffix (the key is `P` + suffix).
pub(crate) const LAYOUT: [(&str, &str); 11] = [
    // Titan: set of all node ids.
    ("K_INDEX", ":index:nodes"),
    // Muster: revision counter.
    ("K_REV", ":revision"),
    // Muster: the event log (a stream whose entry ids are `<revision>-0`).
    ("K_LOG", ":log"),
    // Muster: the materialized listing `<revision>|<valid until ms>|<csv length>|<deadlines csv><json>`.
    ("K_VIEW", ":view"),
    // Muster: ids of nodes the sweeper tracks.
    ("K_TRACKED", ":index:tracked"),
    // Muster: ids of tracked nodes written by Titan peers.
    ("K_FOREIGN", ":index:foreign"),
    // Muster: sorted set of tracked node ids by deadline (ms).
    ("K_DEADLINES", ":index:deadlines"),
    // Muster: what a Titan peer's node looked like when last seen (`a:<id>`, `s:<id>`).
    ("K_SEEN", ":index:seen"),
    // Muster: each tracked node's JSON as of its last change.
    ("K_INFO", ":info"),
    // Muster: the sweeper lease.
    ("K_SWEEPER", ":sweeper"),
    // Titan: per-node keys are `P:nodes:<id>` and `P:heartbeat:<id>` (see `node_key`).
    ("K_NODES", ":nodes:"),
];

/// The suffix of the key named `name` in [`LAYOUT`].
const fn suffix(name: &str) -> &'static str {
    let mut i = 0;
    while i < LAYOUT.len() {
        if const_eq(LAYOUT[i].0, name) {
            return LAYOUT[i].1;
        }
        i += 1;
    }
    panic!("not in the key layout")
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Lua statements defining every key of [`LAYOUT`] as a local from the prefix `P`.
pub(crate) fn lua_locals() -> String {
    LAYOUT.iter().map(|(name, suffix)| format!("local {name} = P .. '{suffix}'\n")).collect()
}

/// The Lua statement defining one key of [`LAYOUT`].
pub(crate) fn lua_local(name: &str) -> String {
    format!("local {name} = P .. '{}'\n", suffix(name))
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
    /// `P:nodes:`, followed by a node id.
    pub(crate) nodes: String,
}

impl Keys {
    pub(crate) fn new(prefix: String) -> Self {
        let key = |name: &str| format!("{prefix}{}", suffix(name));
        Self {
            index: key("K_INDEX"),
            revision: key("K_REV"),
            log: key("K_LOG"),
            view: key("K_VIEW"),
            tracked: key("K_TRACKED"),
            foreign: key("K_FOREIGN"),
            seen: key("K_SEEN"),
            nodes: key("K_NODES"),
            prefix,
        }
    }

    /// `P:nodes:<id>`: a node's Titan hash.
    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}{id}", self.nodes)
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
        // Every script uses only keys of the layout (no hand-built `P .. ':...'` names).
        for script in crate::scripts::SOURCES {
            assert!(!script.contains("P .. ':index") && !script.contains("P .. ':view"), "{script}");
        }
    }
}
