//! Key names. The Titan keys are exactly Titan's; the rest are Muster's additions, which Titan
//! readers never look at.

/// Every key the backend uses, derived from one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// The prefix as written in keys (possibly `{hash-tagged}`).
    pub(crate) prefix: String,
    /// Titan: set of all node ids.
    pub(crate) index: String,
    /// Muster: revision counter.
    pub(crate) revision: String,
    /// Muster: the event log (a stream whose entry ids are `<revision>-0`).
    pub(crate) log: String,
    /// Muster: the materialized listing `<revision>|<valid until ms>|<csv length>|<deadlines csv><json>`.
    pub(crate) view: String,
    /// Muster: ids of nodes the sweeper tracks.
    pub(crate) tracked: String,
    /// Muster: ids of tracked nodes written by Titan peers.
    pub(crate) foreign: String,
}

impl Keys {
    pub(crate) fn new(prefix: String) -> Self {
        Self {
            index: format!("{prefix}:index:nodes"),
            revision: format!("{prefix}:revision"),
            log: format!("{prefix}:log"),
            view: format!("{prefix}:view"),
            tracked: format!("{prefix}:index:tracked"),
            foreign: format!("{prefix}:index:foreign"),
            prefix,
        }
    }
}
