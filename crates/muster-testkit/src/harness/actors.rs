//! The harness's actors: clients that register, heartbeat and deregister their nodes as the seed
//! chooses (each registration moves the node to another port), and watchers that record what they
//! saw.

use super::*;

pub(crate) fn last_revision(log: &WatchLog) -> Option<u64> {
    log.seen.iter().rev().find_map(|seen| match seen {
        Seen::Snapshot { revision, .. } | Seen::Event { revision, .. } => Some(*revision),
        Seen::Broken => None,
    })
}

/// What a client believes about one of its nodes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Belief {
    Absent,
    Registered,
}

/// One client: its nodes, what it believes of them, its seeded choices.
pub(crate) struct ClientState {
    clients: Vec<Client>,
    nodes: Vec<String>,
    beliefs: Vec<Belief>,
    ttl: Duration,
    rng: StdRng,
    /// Registrations sent so far (each gives the node another port).
    registrations: u64,
}

impl ClientState {
    pub(crate) fn new(servers: &[String], nodes: Vec<String>, ttl: Duration, rng: StdRng) -> Self {
        let beliefs = vec![Belief::Absent; nodes.len()];
        Self {
            clients: servers.iter().map(|s| client_of(s)).collect(),
            nodes,
            beliefs,
            ttl,
            rng,
            registrations: 0,
        }
    }

    /// Chooses and performs one operation; `None` when the choice was to abandon a node (a crash:
    /// it expires), which sends nothing.
    pub(crate) async fn step(&mut self) -> Option<Op> {
        let index = self.rng.random_range(0..self.nodes.len());
        let node = self.nodes[index].clone();
        let client = &self.clients[self.rng.random_range(0..self.clients.len())];
        let roll: u32 = self.rng.random_range(0..100);
        let kind = match self.beliefs[index] {
            Belief::Absent => OpKind::Register,
            Belief::Registered if roll < 4 => OpKind::Deregister,
            Belief::Registered if roll < 8 => {
                self.beliefs[index] = Belief::Absent;
                return None;
            }
            Belief::Registered if roll < 12 => OpKind::Register,
            Belief::Registered => OpKind::Heartbeat,
        };
        let sent_ms = now_ms();
        let outcome = match kind {
            OpKind::Register => {
                // Another port at every registration: a registration of a live node changes it
                // (an update), so observers that stopped following soon differ.
                self.registrations += 1;
                let port = 1_000 + self.registrations % 60_000;
                let spec = RegistrationSpec {
                    ttl: Some(self.ttl),
                    ..RegistrationSpec::new(format!("10.0.{}.{}:{port}", index / 250, index % 250))
                        .service("svc", Some("1.0.0"))
                        .id(node.clone())
                };
                client.register_once(&spec, NodeStatus::Up).await.map(drop)
            }
            OpKind::Heartbeat => client.heartbeat(&node, NodeStatus::Up).await,
            OpKind::Deregister => client.deregister(&node).await.map(drop),
        };
        let acked_ms = outcome.as_ref().ok().map(|()| now_ms());
        match (&outcome, kind) {
            (Ok(()), OpKind::Deregister) => self.beliefs[index] = Belief::Absent,
            (Ok(()), _) => self.beliefs[index] = Belief::Registered,
            // Expired meanwhile (the registry said so): register again next time.
            (Err(error), OpKind::Heartbeat) if error.is_not_found() => self.beliefs[index] = Belief::Absent,
            (Err(_), _) => {}
        }
        Some(Op { node, kind, sent_ms, acked_ms })
    }
}

pub(crate) fn node_names(workload: &Workload, client: usize) -> Vec<String> {
    (0..workload.nodes_per_client).map(|i| format!("s{}-c{client}-n{i}", workload.seed)).collect()
}

pub(crate) async fn client(mut state: ClientState, ops: Arc<Mutex<Vec<Op>>>, stop: CancellationToken) {
    // Each node heartbeats about four times per TTL.
    let pause = state.ttl / 4 / u32::try_from(state.nodes.len().max(1)).unwrap_or(1);
    while !stop.is_cancelled() {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
        if let Some(op) = state.step().await {
            lock(&ops).push(op);
        }
    }
}

pub(crate) async fn watch(
    servers: Vec<String>,
    log: Arc<Mutex<WatchLog>>,
    mut rng: StdRng,
    stop: CancellationToken,
) {
    let mut after: Option<Revision> = None;
    while !stop.is_cancelled() {
        let client = client_of(&servers[rng.random_range(0..servers.len())]);
        let options = WatchOptions { service: None, after, snapshot: after.is_none() };
        let opened = tokio::select! {
            opened = client.watch(&options) => opened,
            () = stop.cancelled() => return,
        };
        let Ok(mut stream) = opened else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = stop.cancelled() => return,
            };
            match item {
                Some(Ok(WatchEvent::Resync(snapshot))) => {
                    after = Some(snapshot.revision);
                    let nodes = snapshot.nodes.iter().map(|n| n.node_id.to_string()).collect();
                    lock(&log).seen.push(Seen::Snapshot {
                        revision: snapshot.revision.0,
                        nodes,
                        at_ms: now_ms(),
                    });
                }
                Some(Ok(WatchEvent::Event(event))) => {
                    after = Some(event.revision);
                    lock(&log).seen.push(Seen::Event {
                        revision: event.revision.0,
                        kind: event.kind.as_str().to_owned(),
                        node: event.node.node_id.to_string(),
                        reason: event.reason.map(|r| r.as_str().to_owned()),
                        at_ms: event.timestamp_ms,
                    });
                }
                Some(Ok(WatchEvent::Peer(_))) => {}
                Some(Err(_)) | None => {
                    lock(&log).seen.push(Seen::Broken);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
}
