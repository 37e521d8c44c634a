//! Change hints for the reconciliation: ids of nodes that may have changed, so the sweeper looks
//! at them at once instead of waiting for its next full pass.
//!
//! Two sources, each used where it exists:
//!
//! - **Keyspace notifications**, when the Redis operator enabled them for hashes and generic
//!   commands (`notify-keyspace-events` with `K` and `h`/`g`, or `A`): every `HSET`, `DEL`, ... of a
//!   `P:nodes:<id>` hash names the node. Titan peers' writes leave no other trace when their pub/sub
//!   is off, so while this subscription is up the full pass only runs as a slow safety net
//!   (`RedisConfig::safety_interval`, and whenever the subscription comes up, since notifications
//!   sent while it was down are lost). Not used in a Cluster (notifications are node-local there).
//! - **Titan's channel messages**, when pub/sub is on: a message from a Titan peer names its node
//!   (Muster's own, marked `"muster":true`, are skipped). These only make detection faster; they
//!   cannot replace the pass, since a peer's pub/sub may be off.
//!
//! Hints are only hints: the reconciliation script decides from the hash, so a lost, repeated or
//! spurious hint changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use muster_core::{Backoff, Error, Result};
use tokio::sync::mpsc;

use crate::conn::to_error;
use crate::{Inner, Topology};

/// Hinted ids buffered for the sweeper; beyond this, hints are dropped (the pass catches up).
const BUFFER: usize = 65_536;

/// The receiving end, held by the sweeper.
pub(crate) struct Hints {
    /// Ids that may have changed.
    pub(crate) ids: mpsc::Receiver<String>,
    /// True while keyspace notifications for the prefix are subscribed to.
    pub(crate) keyspace: Arc<AtomicBool>,
}

/// Starts the listener (when there is anything to listen to) and returns its receiving end.
pub(crate) fn spawn(inner: &Arc<Inner>) -> Hints {
    let (tx, ids) = mpsc::channel(BUFFER);
    let keyspace = Arc::new(AtomicBool::new(false));
    let wants_keyspace =
        inner.config.keyspace_notifications && !matches!(inner.config.topology, Topology::Cluster { .. });
    if wants_keyspace || inner.config.pubsub_enabled {
        inner.tasks.spawn(listen(Arc::clone(inner), wants_keyspace, Arc::clone(&keyspace), tx));
    }
    Hints { ids, keyspace }
}

/// True when `flags` (the `notify-keyspace-events` setting) publish keyspace events for hash and
/// generic commands.
pub(crate) fn keyspace_enabled(flags: &str) -> bool {
    let all = flags.contains('A');
    flags.contains('K') && (all || (flags.contains('h') && flags.contains('g')))
}

/// Escapes the glob characters of a pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Subscribes and forwards ids until the registry is dropped; resubscribes after failures.
async fn listen(
    inner: Arc<Inner>,
    wants_keyspace: bool,
    keyspace: Arc<AtomicBool>,
    tx: mpsc::Sender<String>,
) {
    let mut backoff = Backoff::default();
    loop {
        let outcome = tokio::select! {
            () = inner.cancel.cancelled() => return,
            outcome = subscribe_and_forward(&inner, wants_keyspace, &keyspace, &tx) => outcome,
        };
        keyspace.store(false, Ordering::SeqCst);
        match outcome {
            Ok(false) => return,
            Ok(true) => backoff.succeeded(),
            Err(error) => tracing::debug!(%error, "change hints unavailable; retrying"),
        }
        // After a stream that ended, wait the base pause; after failures, longer.
        let pause = backoff.failed();
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One subscription's life. `Ok(false)`: nothing to listen to; `Ok(true)`: the stream ended.
async fn subscribe_and_forward(
    inner: &Inner,
    wants_keyspace: bool,
    keyspace: &AtomicBool,
    tx: &mpsc::Sender<String>,
) -> Result<bool> {
    let keyspace_on = wants_keyspace && {
        // Refused (a managed Redis, ACLs) counts as off.
        let flags: Result<Vec<String>> = inner
            .pool
            .run(|mut conn| async move {
                redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut conn).await
            })
            .await;
        flags.ok().and_then(|reply| reply.get(1).cloned()).is_some_and(|flags| keyspace_enabled(&flags))
    };
    if !keyspace_on && !inner.config.pubsub_enabled {
        return Ok(false);
    }
    let mut pubsub = inner.pool.pubsub().await?;
    let nodes_prefix = inner.keys.of("nodes", "");
    let keyspace_prefix = format!("__keyspace@{}__:{nodes_prefix}", inner.config.database());
    if keyspace_on {
        pubsub.psubscribe(format!("{}*", glob_escape(&keyspace_prefix))).await.map_err(to_error)?;
    }
    if inner.config.pubsub_enabled {
        pubsub.subscribe(&inner.config.pubsub_channel).await.map_err(to_error)?;
    }
    keyspace.store(keyspace_on, Ordering::SeqCst);
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let id = match message.get_channel_name().strip_prefix(&keyspace_prefix) {
            // A TTL refresh (every heartbeat's `EXPIRE`) changes nothing a reader sees; the `hset`
            // beside it is the hint.
            Some(_) if message.get_payload::<String>().is_ok_and(|event| event == "expire") => None,
            Some(id) => Some(id.to_owned()),
            None => inner.channel_hint(&message),
        };
        if let Some(id) = id {
            // A full buffer drops the hint; the next pass sees the change.
            let _ = tx.try_send(id);
        }
    }
    Err(Error::unavailable("change hint subscription closed"))
}

impl Inner {
    /// The node a Titan peer's channel message names (`None` for Muster's own). A message that is
    /// not a discovery event (not text, not JSON, no node id) is counted and logged at debug.
    pub(crate) fn channel_hint(&self, message: &redis::Msg) -> Option<String> {
        let parsed =
            message.get_payload::<String>().map_err(|e| e.to_string()).and_then(|p| titan_node_id(&p));
        parsed.unwrap_or_else(|reason| {
            let unreadable = self.unreadable_messages.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(channel = message.get_channel_name(), %reason, unreadable, "a channel message that is not a discovery event");
            None
        })
    }
}

/// The node a Titan peer's channel message names (`Ok(None)` for Muster's own), or why the
/// message is not a discovery event.
fn titan_node_id(payload: &str) -> std::result::Result<Option<String>, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Message {
        node_id: String,
        #[serde(default)]
        muster: bool,
    }
    let message: Message =
        serde_json::from_str(payload).map_err(|e| format!("not a discovery event: {e}"))?;
    Ok((!message.muster).then_some(message.node_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_flags() {
        for (flags, on) in [
            ("", false),
            ("KEA", true),
            ("Kgh", true),
            ("Khg$", true),
            ("Eh", false),
            ("Kh", false),
            ("KA", true),
        ] {
            assert_eq!(keyspace_enabled(flags), on, "{flags:?}");
        }
    }

    #[test]
    fn hinted_ids() {
        assert_eq!(titan_node_id(r#"{"type":"NODE_UPDATED","nodeId":"w@h"}"#), Ok(Some("w@h".to_owned())));
        assert_eq!(titan_node_id(r#"{"nodeId":"m","muster":true}"#), Ok(None));
        assert!(titan_node_id("not json").is_err());
        assert_eq!(glob_escape("a*b[c]"), r"a\*b\[c\]");
    }
}
