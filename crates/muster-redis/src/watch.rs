//! Watch streams over the event log.
//!
//! Each watch owns a dedicated connection and reads the log with blocking `XREAD` from its
//! revision, so a watcher that reconnects from its last revision misses nothing. Revisions in the
//! log are contiguous, so a gap (entries trimmed by `MAXLEN`, or a counter that restarted after
//! Redis lost its data) is noticed and answered with a resync snapshot. During quiet periods the
//! watcher checks the counter, so a wiped Redis is noticed even without new events.
//!
//! Titan peers' changes reach the log through the sweeper's reconciliation, so a watch carries
//! exactly one event per change whatever Titan's pub/sub setting. The one exception is a read-only
//! inspection (`RedisConfig::read_only`) of a prefix no sweeper holds: nothing writes the log for
//! Titan peers there, so the watch runs the reconciliation's comparison itself, read-only — every
//! `reconcile_interval`, and at once on a Titan channel message (a hint, never trusted as the
//! change) — and passes each Titan-side change on as one [`WatchEvent::Peer`], whatever Titan's
//! pub/sub setting. Muster's own nodes arrive through the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use muster_core::{Error, Result, Revision, WatchEvent, WatchStart, WatchStream};
use tokio::sync::mpsc;

use muster_core::log::Mirror;

use crate::codec;
use crate::conn::{Conn, to_error};
use crate::{Inner, block_time};

/// Items buffered between the reader task and the consumer.
const BUFFER: usize = 256;
/// Log entries read per `XREAD`.
const BATCH: usize = 256;
/// After a channel message, how long an unswept inspection waits for others before it compares.
const HINT_SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// The XREAD reply: `[[stream, [[id, [field, value, ...]], ...]]]`, or nil on timeout.
type XReadReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

pub(crate) async fn open(inner: Arc<Inner>, start: WatchStart) -> Result<WatchStream> {
    let generation = inner.pool.generation();
    let conn = inner.pool.dedicated(reader_timeout(&inner)).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let cursor = match start {
        WatchStart::Now => inner.revision().await?.unwrap_or_default(),
        WatchStart::After(revision) => {
            let current = inner.revision().await?.unwrap_or_default();
            if revision > current { send_resync(&inner, &tx).await? } else { revision }
        }
        WatchStart::Snapshot => send_resync(&inner, &tx).await?,
    };
    let cursor = Arc::new(AtomicU64::new(cursor.0));
    if inner.config.read_only && !inner.sweeper_present().await? {
        let hints = if inner.config.pubsub_enabled {
            let mut pubsub = inner.pool.pubsub().await?;
            pubsub.subscribe(&inner.config.pubsub_channel).await.map_err(to_error)?;
            Some(pubsub)
        } else {
            None
        };
        let mut mirror = Mirror::default();
        mirror.replace(inner.snapshot().await?);
        inner.tasks.spawn(follow_unswept(Arc::clone(&inner), mirror, hints, Arc::clone(&cursor), tx.clone()));
    }
    inner.tasks.clone().spawn(read_log(inner, (conn, generation), cursor, tx));
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })))
}

/// A log reader's response timeout: a blocking read's wait plus the usual allowance.
fn reader_timeout(inner: &Inner) -> std::time::Duration {
    block_time(&inner.config) + inner.config.response_timeout
}

/// Takes a snapshot and queues it as a resync; returns its revision.
async fn send_resync(inner: &Inner, tx: &mpsc::Sender<Result<WatchEvent>>) -> Result<Revision> {
    let snapshot = inner.snapshot().await?;
    let revision = snapshot.revision;
    tx.send(Ok(WatchEvent::Resync(snapshot))).await.map_err(|_| Error::unavailable("watcher gone"))?;
    Ok(revision)
}

/// Reads the log from the cursor until the consumer goes away or the connection fails. `conn`:
/// the reader's own connection and the pool's [generation](crate::conn::Pool::generation) when it
/// was made; when the shared connection was dropped since (a failure, or Sentinel naming another
/// master), the reader connects again before its next read, so it never stays on a demoted
/// master that no longer takes the writes.
async fn read_log(
    inner: Arc<Inner>,
    (mut conn, mut generation): (Conn, u64),
    cursor: Arc<AtomicU64>,
    tx: mpsc::Sender<Result<WatchEvent>>,
) {
    let block_ms = u64::try_from(block_time(&inner.config).as_millis()).unwrap_or(1000);
    let outcome: Result<()> = async {
        loop {
            if inner.pool.generation() != generation {
                generation = inner.pool.generation();
                conn = inner.pool.dedicated(reader_timeout(&inner)).await?;
                // As a watch resuming from its cursor does: past the counter means the log went
                // back (the new primary lacks the last changes), so resync.
                let current = inner.revision().await?.unwrap_or_default();
                let position = cursor.load(Ordering::SeqCst);
                if current.0 < position {
                    tracing::info!(
                        position,
                        current = current.0,
                        "the new primary's log is behind; resyncing"
                    );
                    cursor.store(send_resync(&inner, &tx).await?.0, Ordering::SeqCst);
                }
            }
            let position = cursor.load(Ordering::SeqCst);
            let mut command = redis::cmd("XREAD");
            command
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&inner.keys.log)
                .arg(format!("{position}-0"));
            let read = command.query_async::<XReadReply>(&mut conn);
            let reply = tokio::select! {
                () = tx.closed() => return Ok(()),
                () = inner.cancel.cancelled() => return Ok(()),
                reply = read => reply.map_err(to_error)?,
            };
            let Some(streams) = reply else {
                // A quiet period: make sure the counter did not go backwards (Redis lost its data).
                let current = inner.revision().await?.unwrap_or_default();
                if current.0 < position {
                    tracing::info!(position, current = current.0, "event log restarted; resyncing");
                    cursor.store(send_resync(&inner, &tx).await?.0, Ordering::SeqCst);
                }
                continue;
            };
            'entries: for (_, entries) in streams {
                for (id, fields) in entries {
                    let revision = id.split('-').next().and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
                    let position = cursor.load(Ordering::SeqCst);
                    // The next revision, or the first of a fresh counter when nothing was seen yet.
                    let follows = revision == position + 1 || (position == 0 && codec::is_first(&fields));
                    if !follows {
                        let expected = position + 1;
                        tracing::info!(expected, found = revision, "events missing from the log; resyncing");
                        cursor.store(send_resync(&inner, &tx).await?.0, Ordering::SeqCst);
                        break 'entries;
                    }
                    match codec::parse_log_entry(Revision(revision), &fields) {
                        Ok(event) => {
                            if tx.send(Ok(WatchEvent::Event(event))).await.is_err() {
                                return Ok(());
                            }
                        }
                        // A change the watcher cannot read is a gap: resync rather than skip it.
                        Err(reason) => {
                            tracing::warn!(revision, %reason, "unreadable log entry; resyncing");
                            cursor.store(send_resync(&inner, &tx).await?.0, Ordering::SeqCst);
                            break 'entries;
                        }
                    }
                    cursor.store(revision, Ordering::SeqCst);
                }
            }
        }
    }
    .await;
    if let Err(error) = outcome {
        let _ = tx.send(Err(error)).await;
    }
}

/// The reconciliation's comparison, read-only, for an inspection of a prefix no sweeper holds:
/// compares what a reader sees now with what it saw, and passes on the changes of nodes Muster
/// did not write (Titan peers') as peer events — one per change, whatever Titan's pub/sub. Runs
/// every `reconcile_interval` and at once after a channel message; ends when a sweeper appears
/// (its log carries Titan's changes from then on), or with an error when a read fails.
async fn follow_unswept(
    inner: Arc<Inner>,
    mut mirror: Mirror,
    hints: Option<redis::aio::PubSub>,
    cursor: Arc<AtomicU64>,
    tx: mpsc::Sender<Result<WatchEvent>>,
) {
    let mut hints = hints.map(redis::aio::PubSub::into_on_message);
    let period = inner.config.reconcile_interval;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = inner.cancel.cancelled() => return,
            _ = ticks.tick() => {}
            message = async { hints.as_mut()?.next().await }, if hints.is_some() => match message {
                Some(message) => {
                    inner.channel_hint(&message);
                    // Titan writes, then publishes: the change is in place. Messages that follow
                    // at once are taken by the same comparison.
                    tokio::time::sleep(HINT_SETTLE).await;
                }
                None => hints = None,
            },
        }
        match compare_unswept(&inner, &mut mirror, Revision(cursor.load(Ordering::SeqCst))).await {
            Ok(Some(changes)) => {
                for change in changes {
                    if tx.send(Ok(WatchEvent::Peer(change))).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
        }
    }
}

/// One comparison (see [`follow_unswept`]); `None` once a sweeper holds the prefix.
async fn compare_unswept(
    inner: &Inner,
    mirror: &mut Mirror,
    revision: Revision,
) -> Result<Option<Vec<muster_core::DiscoveryEvent>>> {
    if inner.sweeper_present().await? {
        return Ok(None);
    }
    let snapshot = inner.snapshot().await?;
    // Nodes Muster wrote (tracked, not adopted from a Titan peer): their events are in the log.
    let own: std::collections::HashSet<String> =
        inner.pool.query(redis::cmd("SDIFF").arg(&inner.keys.tracked).arg(&inner.keys.foreign)).await?;
    let mut changes = mirror.replace(muster_core::Snapshot { revision, ..snapshot });
    changes.retain(|change| !own.contains(change.node.node_id.as_str()));
    for change in &mut changes {
        if change.kind == muster_core::EventKind::Deregistered {
            // Still in Titan's index: it died and waits for a reader to clean it; gone from the
            // index: a peer removed it (its stop, `deregisterNode`).
            let indexed: bool = inner
                .pool
                .query(redis::cmd("SISMEMBER").arg(&inner.keys.index).arg(change.node.node_id.as_str()))
                .await?;
            change.reason = Some(if indexed {
                muster_core::DeregisterReason::Expired
            } else {
                muster_core::DeregisterReason::Graceful
            });
        }
    }
    Ok(Some(changes))
}
