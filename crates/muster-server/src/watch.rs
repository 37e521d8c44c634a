//! `GET /v1/watch`: registry changes as server-sent events.
//!
//! Each event carries its revision as the SSE `id`, so a client that reconnects with
//! `Last-Event-ID` (or `?after=`) resumes exactly after it. Event names: `registered`, `updated`,
//! `deregistered` (data: the event JSON), `resync` (data: `{revision, nodes}` — replace what you
//! know; sent first for `?snapshot=true`, and whenever the events needed are gone or the watcher fell
//! behind), `peer` (a Titan peer's channel event; no id). With `?service=name` only events about nodes
//! that provide the service — or just stopped providing it — are sent. A slow client is never
//! waited for: it falls behind the registry's history and is told to resync. A stream whose token
//! is revoked (or whose rules change) ends with an `error` event saying so, as soon as the server
//! reads the tokens again.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use muster_api::v1::ResyncData;
use muster_core::{DiscoveryEvent, Revision, ServiceFilter, WatchEvent, WatchStart};
use serde::Deserialize;

use crate::AppState;
use crate::acl::Auth;
use crate::error::{ApiError, ApiQuery};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchParams {
    /// Resume after this revision (`Last-Event-ID` takes precedence).
    #[serde(default)]
    after: Option<u64>,
    /// Only events about this service.
    #[serde(default)]
    service: Option<String>,
    /// Start with a `resync` carrying the full current state.
    #[serde(default)]
    snapshot: bool,
}

#[utoipa::path(get, path = "/v1/watch", tag = "v1",
    params(("after" = Option<u64>, Query, description = "Resume after this revision (Last-Event-ID takes precedence)"),
        ("service" = Option<String>, Query, description = "Only events about this service"),
        ("snapshot" = Option<bool>, Query, description = "Start with a resync carrying the current state"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this revision")),
    responses((status = 200, description = "Server-sent events: registered, updated, deregistered (data: DiscoveryEvent), resync (data: ResyncData), peer, error", content_type = "text/event-stream", body = muster_core::DiscoveryEvent)))]
pub(crate) async fn watch(
    State(state): State<AppState>,
    Auth(caller): Auth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<WatchParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|v| (1..=19).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID must be a revision number"))?,
        ),
        None => None,
    };
    let service = params.service;
    if let Some(service) = &service {
        muster_core::name::validate_service_name(service)?;
        caller.require_read_service(service)?;
    } else {
        caller.require_some_read()?;
    }
    let start = match last_event_id.or(params.after) {
        Some(revision) => WatchStart::After(Revision(revision)),
        None if params.snapshot => WatchStart::Snapshot,
        None => WatchStart::Now,
    };
    let stream = state.inner.hub.watch(start).await?;
    state.inner.metrics.watchers.inc();
    let guard = crate::metrics::WatcherGuard(std::sync::Arc::clone(&state.inner));
    let filter = ServiceFilter::new(service);
    // A revoked token (or one whose rules changed) ends the stream with an event that says why.
    let withdrawal: std::pin::Pin<Box<dyn std::future::Future<Output = ApiError> + Send>> = {
        let (acl, caller) = (std::sync::Arc::clone(&state.inner.acl), std::sync::Arc::clone(&caller));
        Box::pin(async move { acl.withdrawal(&caller).await })
    };
    // Only what the token may read: events about nodes it may see now or saw before the change.
    let serialized = std::sync::Arc::clone(&state.inner);
    let events = futures::stream::unfold(Some((stream, filter, guard, withdrawal)), move |state| {
        let caller = std::sync::Arc::clone(&caller);
        let serialized = std::sync::Arc::clone(&serialized);
        async move {
            let (mut stream, mut filter, guard, mut withdrawal) = state?;
            loop {
                let next = tokio::select! {
                    next = stream.next() => next?,
                    error = &mut withdrawal => {
                        let data = serde_json::json!({"code": error.code().as_str(), "message": error.message()});
                        let event = Event::default().event("error").json_data(data).unwrap_or_default();
                        return Some((Ok(event), None));
                    }
                };
                let event = match next {
                    Ok(WatchEvent::Event(e)) => (filter.pass(&e) && caller.may_see_event(&e))
                        .then(|| Ok(shared_event(&serialized, &e))),
                    Ok(WatchEvent::Peer(e)) => {
                        (filter.pass(&e) && caller.may_see_event(&e)).then(|| peer_event(&e))
                    }
                    Ok(WatchEvent::Resync(snapshot)) => {
                        let mut nodes = filter.reset(snapshot.nodes);
                        nodes.retain(|node| caller.may_read_node(node));
                        let data = ResyncData { revision: snapshot.revision, nodes };
                        Some(
                            Event::default()
                                .event("resync")
                                .id(snapshot.revision.to_string())
                                .json_data(data),
                        )
                    }
                    Err(error) => {
                        // The store connection broke: say so and end; the client reconnects with
                        // Last-Event-ID and misses nothing.
                        let data = serde_json::json!({"code": "unavailable", "message": error.message()});
                        let event = Event::default().event("error").json_data(data).unwrap_or_default();
                        return Some((Ok(event), None));
                    }
                };
                if let Some(event) = event {
                    let event = event.unwrap_or_else(|_| Event::default().event("error"));
                    return Some((Ok(event), Some((stream, filter, guard, withdrawal))));
                }
            }
        }
    });
    let shutdown = state.inner.shutdown.clone().cancelled_owned();
    Ok(Sse::new(events.take_until(shutdown)).keep_alive(KeepAlive::new().interval(state.config().keep_alive)))
}

/// The SSE event of a registry event, from its JSON written once for every watcher (see
/// [`Serialized`]).
fn shared_event(state: &crate::StateInner, event: &DiscoveryEvent) -> Event {
    let written = state.serialized.get(event);
    Event::default().event(event.kind.as_str()).id(&written.id).data(&written.json)
}

/// Registry events as JSON, written once and shared by every watcher that sends them (the most
/// recent [`Serialized::KEPT`]: watchers read the same few recent events). A kept JSON is used only
/// for an equal event — a revision alone is not trusted to name one event (a store that lost its
/// data starts its revisions again).
#[derive(Default)]
pub(crate) struct Serialized {
    recent: std::sync::Mutex<std::collections::VecDeque<Arc<Written>>>,
}

/// One event and what it is written as.
struct Written {
    event: DiscoveryEvent,
    id: String,
    json: String,
}

impl Serialized {
    const KEPT: usize = 256;

    /// The event's id and JSON.
    fn get(&self, event: &DiscoveryEvent) -> Arc<Written> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(written) = recent.iter().rev().find(|w| w.event == *event) {
            return Arc::clone(written);
        }
        // Compact JSON has no raw newline, so it is one `data:` line.
        let written = Arc::new(Written {
            event: event.clone(),
            id: event.revision.to_string(),
            json: serde_json::to_string(event).unwrap_or_default(),
        });
        if recent.len() >= Self::KEPT {
            recent.pop_front();
        }
        recent.push_back(Arc::clone(&written));
        written
    }
}

/// A Titan peer's channel event: no revision, so no id.
fn peer_event(event: &DiscoveryEvent) -> Result<Event, axum::Error> {
    Event::default().event("peer").json_data(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::{Address, EventKind, NodeId, NodeInfo, NodeStatus, ServiceInfo};

    fn event(revision: u64, node: &str) -> DiscoveryEvent {
        DiscoveryEvent {
            revision: Revision(revision),
            kind: EventKind::Registered,
            reason: None,
            node: NodeInfo {
                node_id: NodeId::new(node).unwrap(),
                address: Address::parse("10.0.0.1:80").unwrap(),
                services: vec![ServiceInfo::parse("svc@1.0.0").unwrap()],
                timestamp_ms: 1,
                registered_at_ms: 1,
                status: NodeStatus::Up,
                metadata: Default::default(),
                ttl_ms: 1000,
            },
            timestamp_ms: 1,
            previous_services: None,
        }
    }

    #[test]
    fn events_are_written_once_and_only_for_an_equal_event() {
        let serialized = Serialized::default();
        let first = serialized.get(&event(7, "a"));
        assert_eq!(first.json, serde_json::to_string(&event(7, "a")).unwrap());
        assert_eq!(first.id, "7");
        assert!(Arc::ptr_eq(&first, &serialized.get(&event(7, "a"))), "written once, shared");
        // The same revision for another event (a store that started its revisions again).
        let other = serialized.get(&event(7, "b"));
        assert!(other.json.contains("\"b\""), "{}", other.json);
        for r in 0..(Serialized::KEPT as u64 + 10) {
            serialized.get(&event(100 + r, "c"));
        }
        assert!(serialized.recent.lock().unwrap().len() <= Serialized::KEPT);
    }
}
