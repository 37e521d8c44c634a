//! The `Registry` contract on Redis: each write one script (atomic, with its event), reads from the
//! node hashes and the service index; and the fleet-leadership capability (the sweeper lease).

use super::*;

/// The readable nodes of `rows`, with their liveness; unreadable ones are skipped (the sweeper
/// removes what Titan's reader would).
pub(crate) fn readable(rows: Vec<Row>) -> Vec<(NodeInfo, bool)> {
    rows.into_iter()
        .filter_map(|row| match row {
            Row::Node { node, alive } => Some((node, alive)),
            Row::Broken { id, reason, .. } => {
                tracing::debug!(node_id = %id, %reason, "skipping a node hash that breaks the rule");
                None
            }
        })
        .collect()
}

pub(crate) fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::new(ErrorKind::Internal, format!("serializing: {e}")))
}

/// The scripts' service-limit argument: empty for none.
pub(crate) fn limit_arg(limit: Option<usize>) -> String {
    limit.map(|max| max.to_string()).unwrap_or_default()
}

/// The node a refresh or update script answered with (its hash fields after the write).
pub(crate) fn stored_node(node_id: &NodeId, fields: Vec<String>) -> Result<NodeInfo> {
    let mut row = Vec::with_capacity(ROW);
    row.extend([node_id.to_string(), "1".to_owned()]);
    row.extend(fields);
    match codec::parse_row(&row) {
        Row::Node { node, .. } => Ok(node),
        Row::Broken { reason, .. } => Err(Error::new(ErrorKind::Internal, reason)),
    }
}

impl muster_core::ChangeChannel for RedisRegistry {
    fn publish_failures_total(&self) -> u64 {
        self.publish_failures()
    }
}

impl muster_core::FleetLeadership for RedisRegistry {
    /// True while this process holds the sweeper lease.
    fn leads_fleet_tasks(&self) -> bool {
        self.inner.leading.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl Registry for RedisRegistry {
    async fn heartbeat(&self, registration: Registration) -> Result<HeartbeatOutcome> {
        self.inner.writable()?;
        let ttl_ms = u64::try_from(registration.ttl().as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let args = vec![
            registration.node_id().to_string(),
            registration.address().to_string(),
            json(&registration.services())?,
            now.to_string(),
            ttl_ms.div_ceil(1000).to_string(),
            ttl_ms.to_string(),
            registration.status().as_str().to_owned(),
            json(registration.metadata())?,
            self.inner.heartbeat_events_arg(),
            limit_arg(registration.service_limit()),
            registration.stored_condition().map(muster_core::StoredServices::to_wire).unwrap_or_default(),
        ];
        let reply: Vec<String> = self.inner.invoke_write(&self.inner.scripts.heartbeat, &args).await?;
        match replies::heartbeat(&reply)? {
            HeartbeatReply::Limit(refusal) => Err(refusal.into_error(registration.service_limit())),
            HeartbeatReply::Conflict => Err(muster_core::StoredServices::conflict(registration.node_id())),
            HeartbeatReply::Written { change, registered_at_ms, revision, timestamp_ms, kept_verdict } => {
                let mut node = registration.to_node(registered_at_ms, timestamp_ms);
                if let Some(metadata) = kept_verdict {
                    // A health check holds the node down: what was written instead.
                    node.status = muster_core::NodeStatus::Down;
                    node.metadata = serde_json::from_str(&metadata).map_err(|e| {
                        Error::new(
                            ErrorKind::Internal,
                            format!("malformed reply of the heartbeat script: {e}"),
                        )
                    })?;
                }
                Ok(HeartbeatOutcome { change, node, revision })
            }
        }
    }

    async fn refresh(
        &self,
        node_id: &NodeId,
        status: Option<muster_core::NodeStatus>,
    ) -> Result<HeartbeatOutcome> {
        self.inner.writable()?;
        let args = vec![
            node_id.to_string(),
            status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
            self.inner.heartbeat_events_arg(),
        ];
        let reply: Vec<String> = self.inner.invoke_write(&self.inner.scripts.refresh, &args).await?;
        match replies::stored("refresh", &reply)? {
            StoredReply::NotFound => Err(Error::node_not_found(node_id.as_str())),
            StoredReply::Conflict | StoredReply::Limit(_) => Err(Error::new(
                ErrorKind::Internal,
                "the refresh script answered with a refusal it cannot make",
            )),
            StoredReply::Node { change, revision, fields } => {
                Ok(HeartbeatOutcome { change, node: stored_node(node_id, fields)?, revision })
            }
        }
    }

    async fn update(&self, node_id: &NodeId, update: NodeUpdate) -> Result<NodeInfo> {
        self.inner.writable()?;
        let args = vec![
            node_id.to_string(),
            update.new_address().map(ToString::to_string).unwrap_or_default(),
            update.new_services().map(json).transpose()?.unwrap_or_default(),
            update.new_status().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            update.new_metadata().map(json).transpose()?.unwrap_or_default(),
            limit_arg(update.service_limit()),
            if update.is_check_verdict() { "1" } else { "0" }.to_owned(),
            update.stored_condition().map(muster_core::StoredServices::to_wire).unwrap_or_default(),
        ];
        let reply: Vec<String> = self.inner.invoke_write(&self.inner.scripts.update, &args).await?;
        match replies::stored("update", &reply)? {
            StoredReply::NotFound => Err(Error::node_not_found(node_id.as_str())),
            StoredReply::Conflict => Err(muster_core::StoredServices::conflict(node_id)),
            StoredReply::Limit(refusal) => Err(refusal.into_error(update.service_limit())),
            StoredReply::Node { fields, .. } => stored_node(node_id, fields),
        }
    }

    async fn deregister(&self, node_id: &NodeId, reason: DeregisterReason) -> Result<bool> {
        self.inner.deregister(node_id, reason, None).await
    }

    async fn deregister_if(
        &self,
        node_id: &NodeId,
        reason: DeregisterReason,
        condition: &muster_core::StoredServices,
    ) -> Result<bool> {
        self.inner.deregister(node_id, reason, Some(condition)).await
    }

    async fn get(&self, node_id: &NodeId) -> Result<Option<NodeInfo>> {
        let (_, nodes) = self.inner.read_nodes("ids", &[node_id.to_string()]).await?;
        Ok(nodes.into_iter().next().map(|(node, _)| node))
    }

    async fn is_active(&self, node_id: &NodeId) -> Result<bool> {
        let (_, rows) = self.inner.read("ids", &[node_id.to_string()]).await?;
        Ok(rows.iter().any(|row| matches!(row, Row::Node { alive: true, .. })))
    }

    async fn list_active(&self) -> Result<Vec<NodeInfo>> {
        Ok(self.inner.snapshot().await?.nodes)
    }

    async fn list_all(&self) -> Result<Vec<NodeInfo>> {
        let (_, nodes) = self.inner.read_nodes("all", &[]).await?;
        Ok(nodes.into_iter().map(|(node, _)| node).collect())
    }

    async fn find(&self, query: &ServiceQuery) -> Result<Vec<NodeInfo>> {
        let (_, nodes) = self.inner.read_nodes("service", &[query.name().to_owned()]).await?;
        Ok(nodes
            .into_iter()
            .filter(|(node, alive)| *alive && node.provides(query))
            .map(|(node, _)| node)
            .collect())
    }

    /// Answered from the service index (`SCARD`): nodes whose TTL just ran out count until the
    /// sweeper removes them, so this is an upper bound for a few milliseconds after an expiry.
    async fn count_service(&self, name: &str) -> Result<usize> {
        muster_core::name::validate_service_name(name)?;
        self.inner.pool.query(redis::cmd("SCARD").arg(self.inner.keys.of("index:services", name))).await
    }

    fn fleet(&self) -> Option<&dyn muster_core::FleetLeadership> {
        Some(self)
    }

    fn channel(&self) -> Option<&dyn muster_core::ChangeChannel> {
        self.inner.config.pubsub_enabled.then_some(self as &dyn muster_core::ChangeChannel)
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.revision().await?.unwrap_or_default())
    }

    async fn watch(&self, start: WatchStart) -> Result<WatchStream> {
        watch::open(Arc::clone(&self.inner), start).await
    }

    /// Cancels the sweeper (which releases its lease), the hint listener, the Sentinel follower and
    /// every watch reader, and waits for them to end.
    async fn shutdown(&self) -> Result<()> {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        Ok(())
    }
}
