//! The resolver: instances from a local cache that one watch stream per client keeps current.
//!
//! The first [`Client::instances`] call starts one `GET /v1/watch?snapshot=true` stream for the
//! whole client and waits for its first `resync`; from then on every lookup is a read of an
//! immutable view (an atomic pointer load and a hash lookup), and every event replaces the view
//! with one where only the services the event touches are rebuilt.
//!
//! - **Reconnect**: when the stream ends or fails, the task reconnects with `Last-Event-ID` (the
//!   last revision it applied), backing off with jitter; the server answers with the missed events
//!   or, when they are gone or the client fell behind, a `resync` that replaces the cache.
//! - **Stale-if-error**: while disconnected the cache keeps serving what it knows, with
//!   [`Resolved::stale`] set. Only a client that never reached the registry gets an error.
//! - **Push-empty protection**: a `resync` (a reconnect, a registry restart, a lagging watch) never
//!   turns a service's non-empty list into an empty one; the old list is kept, marked stale, until
//!   an event about the service arrives or [`ClientConfig::empty_protection`] passes. Explicit
//!   deregistration and expiry events do empty a list: those are news, not failures.
//!
//! [`ClientConfig::empty_protection`]: crate::ClientConfig::empty_protection

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use futures::stream::BoxStream;
use muster_api::v1::{Instance, ResyncData, instances_of};
use muster_core::{Backoff, DiscoveryEvent, Mirror, Revision, Snapshot, VersionQuery, WatchEvent};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{Client, ClientError};

/// The answer of [`Client::instances`].
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The matching instances, ordered by node id.
    pub instances: Arc<[Instance]>,
    /// True when the list may be out of date: the watch is disconnected, or the list is held by
    /// the push-empty protection.
    pub stale: bool,
    /// The registry revision the cache reflects.
    pub revision: Revision,
}

/// One service's instances in a view.
#[derive(Debug, Clone)]
struct Entry {
    instances: Arc<[Instance]>,
    /// Set when a resync would have emptied the list: the old list is served (stale) until then.
    protected_until: Option<Instant>,
}

/// What lookups read.
#[derive(Debug, Default)]
struct View {
    revision: Revision,
    /// True while the watch stream is up.
    connected: bool,
    services: HashMap<String, Entry>,
}

/// The state of the watch, for first use.
#[derive(Debug, Clone)]
enum Phase {
    /// No answer yet.
    Starting,
    /// The first resync arrived.
    Loaded,
    /// The registry could not be reached before anything was loaded.
    Failed(ClientError),
}

/// One client's resolver: the published view and its watch task.
#[derive(Debug)]
pub(crate) struct Resolver {
    view: Arc<ArcSwap<View>>,
    phase: watch::Receiver<Phase>,
    /// The revision of the published view.
    revision: watch::Receiver<Revision>,
    /// Ends the watch task when the last client clone is dropped.
    _task: DropGuard,
}

impl Resolver {
    fn start(client: &Client) -> Self {
        let view = Arc::new(ArcSwap::from_pointee(View::default()));
        let (phase_tx, phase) = watch::channel(Phase::Starting);
        let (revision_tx, revision) = watch::channel(Revision(0));
        let cancel = CancellationToken::new();
        let task = WatchTask {
            http: client.inner.watch_http.clone(),
            base: client.inner.base_url.clone(),
            protection: client.inner.config.empty_protection,
            view: Arc::clone(&view),
            phase: phase_tx,
            published: revision_tx,
            mirror: Mirror::default(),
            revision: None,
        };
        tokio::spawn(task.run(cancel.clone()));
        Self { view, phase, revision, _task: cancel.drop_guard() }
    }

    fn lookup(&self, service: &str, version: &VersionQuery) -> Resolved {
        let view = self.view.load();
        let (instances, protected) = match view.services.get(service) {
            Some(entry) => match entry.protected_until {
                Some(until) if Instant::now() >= until => (Arc::from(Vec::new()), false),
                Some(_) => (Arc::clone(&entry.instances), true),
                None => (Arc::clone(&entry.instances), false),
            },
            None => (Arc::from(Vec::new()), false),
        };
        let instances = match version {
            VersionQuery::Any => instances,
            query => instances.iter().filter(|i| query.matches(i.version.as_deref())).cloned().collect(),
        };
        Resolved { instances, stale: protected || !view.connected, revision: view.revision }
    }
}

/// What [`Client::watch`] asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Only events about this service (and nodes that just stopped providing it).
    pub service: Option<String>,
    /// Resume after this revision (the server answers with a resync when it is too old).
    pub after: Option<Revision>,
    /// Start with a resync carrying the current state.
    pub snapshot: bool,
}

/// Opens `GET /v1/watch` and decodes its server-sent events. One connection: the stream ends when
/// it breaks (reconnect with [`WatchOptions::after`] set to the last revision seen).
pub(crate) async fn open_watch(
    http: &reqwest::Client,
    base_url: &reqwest::Url,
    options: &WatchOptions,
) -> Result<BoxStream<'static, Result<WatchEvent, ClientError>>, ClientError> {
    let base = base_url.as_str().trim_end_matches('/');
    let mut request = http.get(crate::endpoint(base_url, &["v1", "watch"]));
    if let Some(service) = &options.service {
        request = request.query(&[("service", service)]);
    }
    if let Some(after) = options.after {
        request = request.header("last-event-id", after.to_string());
    } else if options.snapshot {
        request = request.query(&[("snapshot", "true")]);
    }
    let response = request.send().await.map_err(|e| crate::transport_error(base, e))?;
    if !response.status().is_success() {
        return Err(crate::api_error(response.status(), response).await);
    }
    let base = base.to_owned();
    let events = response.bytes_stream().eventsource().filter_map(move |event| {
        let base = base.clone();
        async move { decode(&base, event) }
    });
    Ok(events.boxed())
}

/// One server-sent event as a watch item (`None`: not one of ours).
fn decode<E: std::fmt::Display>(
    base: &str,
    event: Result<eventsource_stream::Event, eventsource_stream::EventStreamError<E>>,
) -> Option<Result<WatchEvent, ClientError>> {
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            return Some(Err(ClientError::disconnected(
                base,
                format!("the watch stream failed ({error})"),
                None,
            )));
        }
    };
    let unreadable = |e: serde_json::Error| ClientError::Unreadable {
        url: base.to_owned(),
        detail: format!("a watch event that does not decode: {e}"),
        source: Some(Arc::new(e)),
    };
    let item = match event.event.as_str() {
        "resync" => serde_json::from_str::<ResyncData>(&event.data)
            .map(|d| WatchEvent::Resync(Snapshot { revision: d.revision, nodes: d.nodes }))
            .map_err(unreadable),
        "registered" | "updated" | "deregistered" => {
            serde_json::from_str::<DiscoveryEvent>(&event.data).map(WatchEvent::Event).map_err(unreadable)
        }
        "peer" => {
            serde_json::from_str::<DiscoveryEvent>(&event.data).map(WatchEvent::Peer).map_err(unreadable)
        }
        "error" => {
            Err(ClientError::disconnected(base, format!("the registry's store failed: {}", event.data), None))
        }
        _ => return None,
    };
    Some(item)
}

impl Client {
    /// Registry changes as they happen (`GET /v1/watch`), over one connection.
    pub async fn watch(
        &self,
        options: &WatchOptions,
    ) -> Result<BoxStream<'static, Result<WatchEvent, ClientError>>, ClientError> {
        open_watch(&self.inner.watch_http, &self.inner.base_url, options).await
    }

    /// A receiver that changes whenever the resolver cache applies a change (its value: the
    /// revision the cache now reflects). Starts the resolver like [`Client::instances`].
    pub async fn cache_changes(&self) -> Result<watch::Receiver<Revision>, ClientError> {
        Ok(self.resolver().await?.revision.clone())
    }

    /// The active instances of `service` matching `version`, from the local cache.
    ///
    /// The first call starts the client's watch stream and waits for its first answer; it fails
    /// only when the registry cannot be reached at all. Later calls never wait on the network.
    pub async fn instances(&self, service: &str, version: &VersionQuery) -> Result<Resolved, ClientError> {
        Ok(self.resolver().await?.lookup(service, version))
    }

    /// The resolver, started on first use and loaded (or failed) once.
    async fn resolver(&self) -> Result<&Resolver, ClientError> {
        let resolver = self.inner.resolver.get_or_init(|| async { Resolver::start(self) }).await;
        if matches!(*resolver.phase.borrow(), Phase::Loaded) {
            return Ok(resolver);
        }
        let mut phase = resolver.phase.clone();
        let ready = phase.wait_for(|p| !matches!(p, Phase::Starting)).await.map(|p| p.clone());
        match ready {
            Ok(Phase::Failed(error)) => Err(error),
            Ok(_) => Ok(resolver),
            Err(_) => Err(ClientError::disconnected(&self.inner.base, "the resolver stopped", None)),
        }
    }
}

/// The background task that owns the node map and publishes views.
struct WatchTask {
    http: reqwest::Client,
    base: reqwest::Url,
    protection: Duration,
    view: Arc<ArcSwap<View>>,
    phase: watch::Sender<Phase>,
    /// Told the revision of every view published.
    published: watch::Sender<Revision>,
    /// Every active node, indexed by service (the watch component's mirror).
    mirror: Mirror,
    /// The last revision applied.
    revision: Option<Revision>,
}

/// Why a stream ended.
enum Ended {
    Cancelled,
    Broken(ClientError),
}

impl WatchTask {
    async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let ended = tokio::select! {
                () = cancel.cancelled() => Ended::Cancelled,
                ended = self.stream(&mut backoff) => ended,
            };
            let Ended::Broken(error) = ended else { return };
            self.set_connected(false);
            if self.revision.is_none() {
                self.phase.send_replace(Phase::Failed(error.clone()));
            }
            let pause = backoff.failed();
            tracing::debug!(%error, ?pause, "registry watch broken; reconnecting");
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Connects and applies events until the stream breaks.
    async fn stream(&mut self, backoff: &mut Backoff) -> Ended {
        let options = match self.revision {
            Some(revision) => WatchOptions { after: Some(revision), ..WatchOptions::default() },
            None => WatchOptions { snapshot: true, ..WatchOptions::default() },
        };
        let mut events = match open_watch(&self.http, &self.base, &options).await {
            Ok(events) => events,
            Err(error) => return Ended::Broken(error),
        };
        self.set_connected(true);
        while let Some(event) = events.next().await {
            match event {
                Ok(WatchEvent::Resync(snapshot)) => self.resync(snapshot),
                Ok(WatchEvent::Event(event)) => self.apply(event),
                // Titan peers' channel events are announced again with revisions once adopted.
                Ok(WatchEvent::Peer(_)) => continue,
                Err(error) => return Ended::Broken(error),
            }
            backoff.succeeded();
        }
        Ended::Broken(ClientError::disconnected(
            self.base.as_str().trim_end_matches('/'),
            "the registry closed the watch",
            None,
        ))
    }

    fn resync(&mut self, data: Snapshot) {
        self.mirror.replace(data);
        let old = self.view.load_full();
        let now = Instant::now();
        let mut services = HashMap::new();
        for name in self.mirror.service_names() {
            services.insert(name.to_owned(), Entry { instances: self.build(name), protected_until: None });
        }
        for (name, entry) in &old.services {
            let still_protected = entry.protected_until.is_none_or(|until| now < until);
            if !services.contains_key(name) && !entry.instances.is_empty() && still_protected {
                let until = entry.protected_until.unwrap_or(now + self.protection);
                tracing::info!(service = %name, "a resync would empty the service; keeping its last instances");
                services.insert(
                    name.clone(),
                    Entry { instances: Arc::clone(&entry.instances), protected_until: Some(until) },
                );
            }
        }
        let revision = self.mirror.revision();
        self.revision = Some(revision);
        self.view.store(Arc::new(View { revision, connected: true, services }));
        self.published.send_replace(revision);
        self.phase.send_if_modified(|p| {
            let first = !matches!(p, Phase::Loaded);
            *p = Phase::Loaded;
            first
        });
    }

    fn apply(&mut self, event: DiscoveryEvent) {
        let mut touched: BTreeSet<String> = event.node.services.iter().map(|s| s.name.clone()).collect();
        if let Some(old) = self.mirror.get(&event.node.node_id) {
            touched.extend(old.services.iter().map(|s| s.name.clone()));
        }
        if !self.mirror.apply(&event) {
            return;
        }
        let old = self.view.load_full();
        let mut services = old.services.clone();
        for name in touched {
            let instances = self.build(&name);
            if instances.is_empty() {
                services.remove(&name);
            } else {
                services.insert(name, Entry { instances, protected_until: None });
            }
        }
        self.revision = Some(event.revision);
        self.view.store(Arc::new(View { revision: event.revision, connected: true, services }));
        self.published.send_replace(event.revision);
    }

    /// The instances of `service`, ordered by node id.
    fn build(&self, service: &str) -> Arc<[Instance]> {
        self.mirror.service(service).flat_map(|node| instances_of(node, |s| s.name == service)).collect()
    }

    fn set_connected(&self, connected: bool) {
        let old = self.view.load_full();
        if old.connected != connected {
            self.view.store(Arc::new(View {
                revision: old.revision,
                connected,
                services: old.services.clone(),
            }));
        }
    }
}
