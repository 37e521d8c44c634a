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
//! Titan peers there, so with pub/sub on their channel messages are passed on as
//! [`WatchEvent::Peer`] (Muster's own are skipped: they arrive through the log).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use muster_core::{Error, Result, Revision, WatchEvent, WatchStart, WatchStream};
use tokio::sync::mpsc;

use crate::codec::{self, ChannelMessage};
use crate::conn::{Conn, to_error};
use crate::{Inner, block_time};

/// Items buffered between the reader task and the consumer.
const BUFFER: usize = 256;
/// Log entries read per `XREAD`.
const BATCH: usize = 256;

/// The XREAD reply: `[[stream, [[id, [field, value, ...]], ...]]]`, or nil on timeout.
type XReadReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

pub(crate) async fn open(inner: Arc<Inner>, start: WatchStart) -> Result<WatchStream> {
    let block = block_time(&inner.config);
    let conn = inner.pool.dedicated(block + inner.config.response_timeout).await?;
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
    if inner.config.pubsub_enabled && inner.config.read_only && !inner.sweeper_present().await? {
        let mut pubsub = inner.pool.pubsub().await?;
        pubsub.subscribe(&inner.config.pubsub_channel).await.map_err(to_error)?;
        inner.tasks.spawn(read_channel(Arc::clone(&inner), pubsub, Arc::clone(&cursor), tx.clone()));
    }
    inner.tasks.clone().spawn(read_log(inner, conn, cursor, tx));
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })))
}

/// Takes a snapshot and queues it as a resync; returns its revision.
async fn send_resync(inner: &Inner, tx: &mpsc::Sender<Result<WatchEvent>>) -> Result<Revision> {
    let snapshot = inner.snapshot().await?;
    let revision = snapshot.revision;
    tx.send(Ok(WatchEvent::Resync(snapshot))).await.map_err(|_| Error::unavailable("watcher gone"))?;
    Ok(revision)
}

/// Reads the log from the cursor until the consumer goes away or the connection fails.
async fn read_log(
    inner: Arc<Inner>,
    mut conn: Conn,
    cursor: Arc<AtomicU64>,
    tx: mpsc::Sender<Result<WatchEvent>>,
) {
    let block_ms = u64::try_from(block_time(&inner.config).as_millis()).unwrap_or(1000);
    let outcome: Result<()> = async {
        loop {
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

/// Forwards Titan peers' channel events until the consumer goes away or the connection drops.
async fn read_channel(
    inner: Arc<Inner>,
    pubsub: redis::aio::PubSub,
    cursor: Arc<AtomicU64>,
    tx: mpsc::Sender<Result<WatchEvent>>,
) {
    let mut messages = pubsub.into_on_message();
    loop {
        let message = tokio::select! {
            () = tx.closed() => return,
            () = inner.cancel.cancelled() => return,
            message = messages.next() => message,
        };
        let Some(message) = message else {
            let _ = tx.send(Err(Error::unavailable("pub/sub connection closed"))).await;
            return;
        };
        let payload: String = match message.get_payload() {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "ignoring a channel message that is not text");
                continue;
            }
        };
        match codec::parse_channel_message(&payload, Revision(cursor.load(Ordering::SeqCst))) {
            Ok(ChannelMessage::Own) => {}
            Ok(ChannelMessage::Peer(event)) => {
                if tx.send(Ok(WatchEvent::Peer(event))).await.is_err() {
                    return;
                }
            }
            Err(reason) => tracing::warn!(%reason, %payload, "ignoring a malformed channel message"),
        }
    }
}
