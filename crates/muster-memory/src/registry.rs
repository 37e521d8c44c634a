//! The `Registry` contract on the embedded store: every write under the state's lock, with its
//! event appended to the log before the lock is released; and the self-preservation capability.

use super::*;

impl muster_core::SelfPreservation for MemoryRegistry {
    fn is_preserving(&self) -> bool {
        MemoryRegistry::is_preserving(self)
    }

    fn held_back_total(&self) -> u64 {
        MemoryRegistry::held_back_total(self)
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn heartbeat(&self, registration: Registration) -> Result<HeartbeatOutcome> {
        let shared = self.shared();
        let now = Instant::now();
        let now_ms = now_ms();
        let deadline = now + registration.ttl();
        let id = registration.node_id().clone();
        let mut state = shared.lock();
        shared.expire_if_due(&mut state, &id, now);
        if let Some(condition) = registration.stored_condition()
            && !condition.holds_for(state.nodes.get(&id).map(|e| e.node.service_names()))
        {
            return Err(muster_core::StoredServices::conflict(&id));
        }
        state.check_service_limit(&id, registration.services(), registration.service_limit())?;
        if let Some(config) = &shared.options.self_preservation
            && state.nodes.contains_key(&id)
        {
            state.renewals.record(now, config.window);
        }
        let earliest = state.deadlines.first().map(|(d, _)| *d);
        let (change, node, before) = match state.nodes.remove(&id) {
            Some(old) => {
                state.deadlines.remove(&(old.deadline, id.clone()));
                let mut node = registration.to_node(old.node.registered_at_ms, now_ms);
                // A health check's verdict is a condition of the write: a registration keeps it.
                node.keep_check_verdict(old.node.held_check());
                state.reindex_services(&id, old.node.service_names(), &node.services);
                let change = if old.node.differs_from(&node) { Change::Updated } else { Change::Unchanged };
                let before = (change == Change::Updated).then(|| old.node.to_node(&id).services);
                (change, node, before)
            }
            None => {
                let node = registration.to_node(now_ms, now_ms);
                state.reindex_services(&id, std::iter::empty(), &node.services);
                (Change::Registered, node, None)
            }
        };
        state.deadlines.insert((deadline, id.clone()));
        let stored = StoredNode::new(&node, &mut state.strings);
        state.nodes.insert(id, Entry { node: stored, deadline });
        let revision = match change {
            Change::Registered => Some(shared.publish(&mut state, EventKind::Registered, None, node.clone())),
            Change::Updated => Some(shared.publish_with(
                &mut state,
                EventKind::Updated,
                None,
                node.clone(),
                before.as_deref(),
            )),
            Change::Unchanged => None,
        };
        drop(state);
        if earliest.is_none_or(|e| deadline < e) {
            shared.sweeper_wake.notify_one();
        }
        Ok(HeartbeatOutcome { change, node, revision })
    }

    async fn refresh(
        &self,
        node_id: &NodeId,
        status: Option<muster_core::NodeStatus>,
    ) -> Result<HeartbeatOutcome> {
        let shared = self.shared();
        let now = Instant::now();
        let (mut state, mut node) = shared.lock_active(node_id, now)?;
        if let Some(config) = &shared.options.self_preservation {
            state.renewals.record(now, config.window);
        }
        let ttl = Duration::from_millis(node.ttl_ms.max(1));
        let deadline = now + ttl;
        // A health check's verdict holds against the node's own heartbeats.
        let status = status.filter(|_| !node.held_by_check());
        let changed = status.is_some_and(|s| s != node.status);
        if let Some(status) = status {
            node.status = status;
        }
        node.timestamp_ms = now_ms();
        let entry = state.nodes.get_mut(node_id).expect("checked above");
        let old_deadline = std::mem::replace(&mut entry.deadline, deadline);
        entry.node.status = node.status;
        entry.node.timestamp_ms = node.timestamp_ms;
        state.deadlines.remove(&(old_deadline, node_id.clone()));
        state.deadlines.insert((deadline, node_id.clone()));
        let revision = changed.then(|| shared.publish(&mut state, EventKind::Updated, None, node.clone()));
        let change = if changed { Change::Updated } else { Change::Unchanged };
        Ok(HeartbeatOutcome { change, node, revision })
    }

    async fn update(&self, node_id: &NodeId, update: NodeUpdate) -> Result<NodeInfo> {
        let shared = self.shared();
        let (mut state, mut node) = shared.lock_active(node_id, Instant::now())?;
        if let Some(condition) = update.stored_condition()
            && !condition.holds_for(Some(node.services.iter().map(|s| s.name.as_str())))
        {
            return Err(muster_core::StoredServices::conflict(node_id));
        }
        let before = node.services.clone();
        if !update.apply(&mut node) {
            return Ok(node);
        }
        state.check_service_limit(node_id, &node.services, update.service_limit())?;
        node.timestamp_ms = now_ms();
        let old = state.nodes.remove(node_id).expect("checked above");
        state.reindex_services(node_id, old.node.service_names(), &node.services);
        let stored = StoredNode::new(&node, &mut state.strings);
        state.nodes.insert(node_id.clone(), Entry { node: stored, deadline: old.deadline });
        shared.publish_with(&mut state, EventKind::Updated, None, node.clone(), Some(&before));
        Ok(node)
    }

    async fn deregister(&self, node_id: &NodeId, reason: DeregisterReason) -> Result<bool> {
        self.deregister_when(node_id, reason, None)
    }

    async fn deregister_if(
        &self,
        node_id: &NodeId,
        reason: DeregisterReason,
        condition: &muster_core::StoredServices,
    ) -> Result<bool> {
        self.deregister_when(node_id, reason, Some(condition))
    }

    async fn get(&self, node_id: &NodeId) -> Result<Option<NodeInfo>> {
        Ok(self.shared().read().nodes.get(node_id).map(|e| e.node.to_node(node_id)))
    }

    async fn exists(&self, node_id: &NodeId) -> Result<bool> {
        Ok(self.shared().read().nodes.contains_key(node_id))
    }

    async fn is_active(&self, node_id: &NodeId) -> Result<bool> {
        let now = Instant::now();
        let state = self.shared().read();
        Ok(state.nodes.get(node_id).is_some_and(|e| state.live(e, now)))
    }

    async fn list_active(&self) -> Result<Vec<NodeInfo>> {
        Ok(self.shared().read().active_nodes(Instant::now()))
    }

    async fn list_all(&self) -> Result<Vec<NodeInfo>> {
        let state = self.shared().read();
        let mut nodes: Vec<NodeInfo> = state.nodes.iter().map(|(id, e)| e.node.to_node(id)).collect();
        drop(state);
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    async fn find(&self, query: &ServiceQuery) -> Result<Vec<NodeInfo>> {
        Ok(self.find_at(query).await?.1)
    }

    /// One lock: the nodes and the revision are read together.
    async fn find_at(&self, query: &ServiceQuery) -> Result<(Revision, Vec<NodeInfo>)> {
        let now = Instant::now();
        let state = self.shared().read();
        let Some(ids) = state.by_service.get(query.name()) else {
            return Ok((state.log.revision(), Vec::new()));
        };
        // `ids` is a BTreeSet, so the result comes out ordered by node id.
        let nodes = ids
            .iter()
            .filter_map(|id| state.nodes.get(id).map(|e| (id, e)))
            .filter(|(_, e)| state.live(e, now) && e.node.provides(query))
            .map(|(id, e)| e.node.to_node(id))
            .collect();
        Ok((state.log.revision(), nodes))
    }

    /// The size of the service index entry: O(1). Nodes whose deadline passed count until the
    /// sweeper (which wakes at that deadline) has removed them.
    async fn count_service(&self, name: &str) -> Result<usize> {
        muster_core::name::validate_service_name(name)?;
        Ok(self.shared().read().by_service.get(name).map_or(0, BTreeSet::len))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared().read().log.revision())
    }

    fn self_preservation(&self) -> Option<&dyn muster_core::SelfPreservation> {
        Some(self)
    }

    async fn shutdown(&self) -> Result<()> {
        MemoryRegistry::shutdown(self).await
    }

    async fn watch(&self, start: WatchStart) -> Result<WatchStream> {
        let shared = Arc::clone(self.shared());
        muster_core::log::stream(shared, &self.shared().revision_tx, start)
            .ok_or_else(|| Error::unavailable("the registry has shut down"))
    }
}
