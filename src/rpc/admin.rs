//! The Admin service: Stop, Start and Status of this node.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::outcome::status_of;
use crate::config::Config;
use crate::driver::{DriverHandle, NodeStatus};
use crate::metrics::metrics;
use crate::proto::v1 as pb;

/// Stop and Start need the API token (if set); Status stays open, as `GET /` does
/// (it names the members and the leader, nothing secret, and viewers poll it).
pub struct AdminService {
    config: Arc<Config>,
    driver: DriverHandle,
}

impl AdminService {
    pub(super) fn new(config: Arc<Config>, driver: DriverHandle) -> AdminService {
        AdminService { config, driver }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn stop(
        &self,
        request: Request<pb::StopRequest>,
    ) -> Result<Response<pb::StopResponse>, Status> {
        authorize(&self.config, &request)?;
        self.driver.stop().await.map_err(status_of)?;
        Ok(Response::new(pb::StopResponse {}))
    }

    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StartResponse>, Status> {
        authorize(&self.config, &request)?;
        self.driver.start().await.map_err(status_of)?;
        Ok(Response::new(pb::StartResponse {}))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.driver.status().await.map_err(status_of)?;
        let mut response = status_response(&self.config, status);
        let metrics = metrics();
        response.reads_total = counter_sum(&metrics.reads);
        response.writes_total = counter_sum(&metrics.writes);
        Ok(Response::new(response))
    }
}

/// The driver's report as `Admin.Status` answers it, with the members as configured.
fn status_response(config: &Config, status: NodeStatus) -> pb::StatusResponse {
    let members = config
        .members
        .iter()
        .map(|m| {
            let member = pb::Member {
                peer_host: m.peer_host.clone(),
                peer_port: u32::from(m.peer_port),
                client_host: m.client_host.clone(),
                client_port: u32::from(m.client_port),
            };
            (m.name.clone(), member)
        })
        .collect();
    pb::StatusResponse {
        id: config.name.clone(),
        state: status.role_name().to_string(),
        is_leader: status.is_leader(),
        term: status.term,
        leader: status.leader.unwrap_or_default(),
        commit_index: status.commit_index,
        last_applied: status.last_applied,
        last_log_index: status.last_log_index,
        last_log_term: status.last_log_term,
        match_index: status.match_index.into_iter().collect(),
        next_index: status.next_index.into_iter().collect(),
        members,
        up: status.up,
        snapshot_index: status.snapshot_index,
        state_digest: status.state_digest,
        voting: status.voting,
        cluster_id: format!("{:016x}", status.cluster_id),
        state_bytes: status.state_bytes,
        alarm: status
            .alarm
            .map(|alarm| alarm.name().to_string())
            .unwrap_or_default(),
        keys: status.keys,
        followers: status
            .followers
            .into_iter()
            .map(|(name, lag)| {
                let lag = pb::FollowerLag {
                    lag_entries: lag.lag_entries,
                    lag_ms: lag.lag_ms,
                    last_ack_ms: lag.last_ack_ms,
                };
                (name, lag)
            })
            .collect(),
        quorum_ack_ms: status.quorum_ack_ms,
        proposals_pending: status.proposals_pending,
        // Counted by the services, not the driver: filled in by the caller.
        reads_total: 0,
        writes_total: 0,
    }
}

/// The sum of a counter over all its labels.
fn counter_sum(counter: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}
