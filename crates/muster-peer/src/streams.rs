//! Netron streams on the receiving side: chunks arrive as STREAM packets with an index, possibly out
//! of order and possibly before the reply that names the stream; a [`ReadableStream`] yields them in
//! index order until the end-of-stream packet, a STREAM_ERROR or a STREAM_CLOSE.
//!
//! Netron has no backpressure on the wire, so each stream holds at most `max_buffered` chunks the
//! reader has not taken yet; beyond that the stream fails ("buffer overflow") and its chunks are
//! dropped, as Netron destroys a stream past 10,000 buffered chunks. A stream that is not live also
//! fails after `timeout` without a chunk (Netron's `streamTimeout`, 60 s).

use crate::sync::Locked as _;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::wire::{JsError, Value};

#[derive(Default)]
struct State {
    /// Chunks that arrived ahead of their turn, by index.
    early: BTreeMap<u32, Value>,
    /// Chunks ready to read, in order.
    ready: VecDeque<Value>,
    /// The index the next in-order chunk has.
    next: u32,
    /// The index of the end-of-stream packet, once it arrived.
    end_at: Option<u32>,
    /// Why the stream failed.
    failed: Option<String>,
    /// The reader waiting for a chunk.
    waker: Option<Waker>,
    /// A chunk or the end arrived since the reader last looked (for the inactivity timeout).
    active: bool,
}

impl State {
    fn wake(&mut self) {
        self.active = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn finished(&self) -> bool {
        self.end_at.is_some_and(|end| self.next >= end)
    }
}

/// The streams of one connection, by stream id.
pub(crate) struct Streams {
    streams: Mutex<HashMap<u32, Arc<Mutex<State>>>>,
    max_buffered: usize,
    max_streams: usize,
}

impl Streams {
    pub(crate) fn new(max_buffered: usize, max_streams: usize) -> Self {
        Self { streams: Mutex::new(HashMap::new()), max_buffered, max_streams }
    }

    fn slot(&self, id: u32) -> Option<Arc<Mutex<State>>> {
        let mut streams = self.streams.locked();
        if !streams.contains_key(&id) && streams.len() >= self.max_streams {
            return None;
        }
        Some(Arc::clone(streams.entry(id).or_default()))
    }

    /// A STREAM packet: chunk `index` of stream `id` (`eos`: the end, whose value is not a chunk).
    pub(crate) fn chunk(&self, id: u32, index: u32, value: Value, eos: bool) {
        if id == 0 {
            return;
        }
        let Some(slot) = self.slot(id) else {
            return tracing::debug!(stream = id, "too many open streams; chunk dropped");
        };
        let mut state = slot.locked();
        if state.failed.is_some() || index < state.next {
            return;
        }
        if eos {
            state.end_at = Some(index);
        } else {
            state.early.insert(index, value);
        }
        loop {
            let next = state.next;
            let Some(value) = state.early.remove(&next) else { break };
            state.ready.push_back(value);
            state.next += 1;
        }
        if state.ready.len() + state.early.len() > self.max_buffered {
            state.failed =
                Some(format!("stream {id}: more than {} chunks unread (buffer overflow)", self.max_buffered));
            state.ready.clear();
            state.early.clear();
        }
        state.wake();
    }

    /// STREAM_ERROR or STREAM_CLOSE of stream `id`.
    pub(crate) fn fail(&self, id: u32, message: String) {
        let Some(slot) = self.slot(id) else { return };
        {
            let mut state = slot.locked();
            state.failed.get_or_insert(message);
            state.wake();
        }
    }

    /// The reader of stream `id` (its early chunks included).
    pub(crate) fn reader(self: &Arc<Self>, id: u32, live: bool, timeout: Duration) -> ReadableStream {
        let state = self.slot(id).unwrap_or_default();
        ReadableStream {
            id,
            state,
            streams: Arc::downgrade(self),
            timeout: (!live).then(|| (timeout, Box::pin(tokio::time::sleep(timeout)))),
        }
    }

    /// Every stream fails (the connection closed).
    pub(crate) fn close_all(&self, why: &str) {
        let slots: Vec<Arc<Mutex<State>>> = self.streams.locked().values().cloned().collect();
        for slot in slots {
            let mut state = slot.locked();
            if !state.finished() {
                state.failed.get_or_insert_with(|| why.to_owned());
                state.wake();
            }
        }
    }

    fn forget(&self, id: u32) {
        {
            let mut streams = self.streams.locked();
            streams.remove(&id);
        }
    }
}

/// A stream a remote peer writes: its chunks in order, then the end — or an error.
pub struct ReadableStream {
    id: u32,
    state: Arc<Mutex<State>>,
    streams: std::sync::Weak<Streams>,
    /// For streams that are not live: the inactivity limit and its timer.
    timeout: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl std::fmt::Debug for ReadableStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadableStream").field("id", &self.id).finish_non_exhaustive()
    }
}

impl futures::Stream for ReadableStream {
    type Item = Result<Value, JsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut state = this.state.locked();
        if let Some(value) = state.ready.pop_front() {
            state.active = false;
            if let Some((limit, timer)) = &mut this.timeout {
                timer.as_mut().reset(tokio::time::Instant::now() + *limit);
            }
            return Poll::Ready(Some(Ok(value)));
        }
        if let Some(why) = state.failed.take() {
            state.end_at = Some(state.next);
            return Poll::Ready(Some(Err(JsError::new(why))));
        }
        if state.finished() {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        if let Some((limit, timer)) = &mut this.timeout {
            if std::mem::take(&mut state.active) {
                timer.as_mut().reset(tokio::time::Instant::now() + *limit);
            }
            if timer.as_mut().poll(cx).is_ready() {
                state.end_at = Some(state.next);
                return Poll::Ready(Some(Err(JsError::new(format!(
                    "Stream {} inactive for {}ms, closing.",
                    this.id,
                    limit.as_millis()
                )))));
            }
        }
        Poll::Pending
    }
}

impl Drop for ReadableStream {
    fn drop(&mut self) {
        if let Some(streams) = self.streams.upgrade() {
            streams.forget(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn chunks_come_out_in_order_and_early_ones_wait() {
        let streams = Arc::new(Streams::new(100, 10));
        // Chunks overtake the reply: they are kept until the reader exists.
        streams.chunk(5, 1, Value::Int(1), false);
        streams.chunk(5, 0, Value::Int(0), false);
        streams.chunk(5, 3, Value::Null, true);
        let mut reader = streams.reader(5, true, Duration::from_secs(60));
        streams.chunk(5, 2, Value::Int(2), false);
        let items: Vec<_> = (&mut reader).collect().await;
        assert_eq!(items, vec![Ok(Value::Int(0)), Ok(Value::Int(1)), Ok(Value::Int(2))]);
        streams.chunk(0, 0, Value::Int(9), false);
        assert!(streams.streams.lock().unwrap().get(&0).is_none(), "stream 0 is ignored");
    }

    #[tokio::test]
    async fn overflow_errors_and_close_fails_readers() {
        let streams = Arc::new(Streams::new(3, 10));
        let mut reader = streams.reader(1, true, Duration::from_secs(60));
        for i in 0..5 {
            streams.chunk(1, i, Value::Int(i64::from(i)), false);
        }
        let first = reader.next().await.unwrap();
        assert!(first.unwrap_err().message.contains("buffer overflow"));
        assert_eq!(reader.next().await, None);
        let mut open = streams.reader(2, true, Duration::from_secs(60));
        streams.close_all("the connection closed");
        assert_eq!(open.next().await.unwrap().unwrap_err().message, "the connection closed");
        let mut failed = streams.reader(3, true, Duration::from_secs(60));
        streams.fail(3, "boom".into());
        assert_eq!(failed.next().await.unwrap().unwrap_err().message, "boom");
        let limited = Streams::new(3, 1);
        limited.chunk(1, 0, Value::Int(0), false);
        limited.chunk(2, 0, Value::Int(0), false);
        assert_eq!(limited.streams.lock().unwrap().len(), 1, "at most max_streams streams");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_that_are_not_live_time_out() {
        let streams = Arc::new(Streams::new(10, 10));
        let mut reader = streams.reader(4, false, Duration::from_secs(60));
        streams.chunk(4, 0, Value::Int(0), false);
        assert_eq!(reader.next().await, Some(Ok(Value::Int(0))));
        let error = reader.next().await.unwrap().unwrap_err();
        assert_eq!(error.message, "Stream 4 inactive for 60000ms, closing.");
    }
}
