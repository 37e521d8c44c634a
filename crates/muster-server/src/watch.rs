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
    responses((status = 200, description = "Server-sent events: registered, updated, deregistered (data: DiscoveryEvent), resync (data: ResyncData), peer, error", content_type = "text/event-stream", body = muster_core::DiscoveryEvent), (status = 400, description = "Invalid input (the message names the field)", body = muster_api::ErrorBody), (status = 503, description = "The store is unreachable", body = muster_api::ErrorBody)))]
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
    let events = futures::stream::unfold(Some((stream, filter, guard, withdrawal)), move |state| {
        let caller = std::sync::Arc::clone(&caller);
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
                    Ok(WatchEvent::Event(e)) => {
                        (filter.pass(&e) && caller.may_see_event(&e)).then(|| sse_event(&e, true))
                    }
                    Ok(WatchEvent::Peer(e)) => {
                        (filter.pass(&e) && caller.may_see_event(&e)).then(|| sse_event(&e, false))
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

fn sse_event(event: &DiscoveryEvent, with_id: bool) -> Result<Event, axum::Error> {
    let name = if with_id { event.kind.as_str() } else { "peer" };
    let sse = Event::default().event(name);
    let sse = if with_id { sse.id(event.revision.to_string()) } else { sse };
    sse.json_data(event)
}
