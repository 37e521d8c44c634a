//! Following a new primary: revisions carried past the old primary's on a promoted replica
//! (standalone and Sentinel), and Sentinel's `+switch-master` followed at once.

use super::*;

/// What runs on each new shared connection before any script may use it: when it leads to a
/// primary promoted from a replica (a failover), the revision counter is moved past anything the
/// old primary issued (`lua/epoch.lua`, once per primary), so no revision a watcher saw is issued
/// again for another change, and every watcher resyncs. `None` in a Cluster (its client follows a
/// failover inside, with no new connection to hook: there the scripts check the node they run on,
/// `check_primary` in `lua/common.lua`) or read-only. A Redis user that may not run
/// `INFO` gets a warning, once, and no carry-over.
pub(crate) fn carry_over_revisions(inner: &Inner) -> Option<conn::OnConnect> {
    if inner.config.read_only || matches!(inner.config.topology, Topology::Cluster { .. }) {
        return None;
    }
    let script = inner.scripts.epoch.clone();
    let common =
        [inner.keys.prefix.clone(), inner.channel_arg.clone(), inner.config.event_history.to_string()];
    let index = inner.keys.index.clone();
    let warned = Arc::new(AtomicBool::new(false));
    Some(Box::new(move |mut conn| {
        let (script, common, index, warned) =
            (script.clone(), common.clone(), index.clone(), Arc::clone(&warned));
        Box::pin(async move {
            let info: String = match redis::cmd("INFO").arg("replication").query_async(&mut conn).await {
                Ok(info) => info,
                Err(error) if error.to_string().to_ascii_lowercase().contains("noperm") => {
                    if !warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%error, "the Redis user may not run INFO: after a failover, watchers \
                            may miss changes the old primary had not replicated (grant +info to it)");
                    }
                    return Ok(());
                }
                Err(error) => return Err(conn::to_error(error)),
            };
            let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
            // A server without replication ids (not Redis itself): nothing to compare.
            let Some(replid) = field("master_replid:") else { return Ok(()) };
            // A promoted replica keeps its old master's id as its second one.
            let promoted = field("master_replid2:").is_some_and(|id| id.bytes().any(|b| b != b'0'));
            let mut invocation = script.prepare_invoke();
            invocation.key(&index);
            for arg in &common {
                invocation.arg(arg);
            }
            invocation.arg(replid).arg(if promoted { "1" } else { "0" });
            let jumped: i64 = invocation.invoke_async(&mut conn).await.map_err(conn::to_error)?;
            if jumped == 1 {
                tracing::info!(
                    replid,
                    "a new Redis primary: revisions continue past the old one's; watchers resync"
                );
            }
            Ok(())
        })
    }))
}

/// Listens for Sentinel's `+switch-master` and drops the shared connection at once, so the next
/// call goes to the new master instead of first failing against the old one. (Connection errors
/// and `READONLY` replies trigger the same lookup; this only makes it earlier.)
pub(crate) async fn follow_master_switches(inner: Arc<Inner>) {
    let mut backoff = muster_core::Backoff::default();
    loop {
        let subscribed = async {
            let mut pubsub =
                inner.pool.sentinel_pubsub().await.ok_or_else(|| Error::unavailable("not sentinel"))??;
            pubsub.subscribe("+switch-master").await.map_err(conn::to_error)?;
            Ok::<_, Error>(pubsub)
        };
        let pubsub = tokio::select! {
            () = inner.cancel.cancelled() => return,
            pubsub = subscribed => pubsub,
        };
        match pubsub {
            Ok(pubsub) => {
                backoff.succeeded();
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        () = inner.cancel.cancelled() => return,
                        message = futures::StreamExt::next(&mut messages) => message,
                    };
                    let Some(message) = message else { break };
                    let notice: String = message.get_payload().unwrap_or_default();
                    tracing::info!(%notice, "sentinel switched masters; reconnecting");
                    inner.pool.invalidate().await;
                }
            }
            Err(error) => tracing::debug!(%error, "cannot subscribe to sentinel notices; retrying"),
        }
        let pause = backoff.failed();
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
