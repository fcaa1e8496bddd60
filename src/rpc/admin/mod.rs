//! The Admin service: Stop, Start and Status of this node, leadership transfer, and
//! the membership RPCs (`members.rs`).

mod backup;
mod members;

pub use backup::BackupChunks;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::backup::Backups;
use crate::config::Config;
use crate::driver::{DriverHandle, NodeStatus, RequestError};
use crate::metrics::metrics;
use crate::proto::v1 as pb;
use crate::raft::NodeId;
use crate::rpc::auth::authorize;
use crate::rpc::deadline::{Backoff, Deadline};
use crate::rpc::kv::{forwarded_request, FORWARDED};
use crate::rpc::outcome::status_of;
use crate::rpc::peers::Peers;
use members::Ask;

/// Stop, Start and TransferLeader need the API token (if set); Status stays open, as
/// `GET /` does (it names the members and the leader, nothing secret, and viewers poll
/// it).
pub struct AdminService {
    config: Arc<Config>,
    driver: DriverHandle,
    /// To pass a transfer on to the leader.
    peers: Peers,
    /// What the backup schedule knows (Status shows it), and the backups' pace.
    pub(super) backups: Arc<Backups>,
}

impl AdminService {
    pub(super) fn new(
        config: Arc<Config>,
        driver: DriverHandle,
        peers: Peers,
        backups: Arc<Backups>,
    ) -> AdminService {
        AdminService {
            config,
            driver,
            peers,
            backups,
        }
    }

    /// The transfer, from any member: the leader begins it and waits for the new
    /// leader; a follower passes it on to the leader it knows (once: a passed-on
    /// request is never passed on again); with no leader known, it waits for one,
    /// within the deadline.
    async fn transfer(
        &self,
        to: Option<NodeId>,
        deadline: &Deadline,
        forwarded: bool,
    ) -> Result<pb::TransferLeaderResponse, Status> {
        let mut backoff = Backoff::new();
        loop {
            let mut leader = self.driver.leader_watch();
            let known = *leader.borrow();
            match known {
                // The named member leads already: nothing to do.
                Some(current) if to == Some(current) => {
                    return Ok(self.response(current, current));
                }
                Some(current) if current == self.config.id => {
                    match self.driver.transfer_leader(to).await {
                        Ok(target) => return self.await_new_leader(target, deadline).await,
                        // Lost the post meanwhile: look again.
                        Err(RequestError::NotLeader { .. }) => {}
                        Err(RequestError::Rejected(why)) => {
                            return Err(Status::failed_precondition(why))
                        }
                        Err(err) => return Err(status_of(err)),
                    }
                }
                Some(_) if forwarded => {
                    return Err(Status::unavailable("not the leader any more; ask again"))
                }
                Some(current) => {
                    if let Some(mut client) = self.peers.admin_client(current) {
                        let message = pb::TransferLeaderRequest {
                            to: to.map(|id| self.name(id)).unwrap_or_default(),
                        };
                        let request =
                            forwarded_request(&self.config, message, deadline.remaining());
                        // Bounded here too: the deadline travels as grpc-timeout, which
                        // only the server heeds, and a paused leader never answers.
                        let call = client.transfer_leader(request);
                        let answer = tokio::time::timeout(deadline.remaining(), call)
                            .await
                            .unwrap_or_else(|_| Err(deadline.expired(false)));
                        match answer {
                            Ok(response) => return Ok(response.into_inner()),
                            // The leader changed under us (or went): look again.
                            Err(status) if status.code() == tonic::Code::Unavailable => {}
                            Err(status) => return Err(status),
                        }
                    }
                }
                None => {}
            }
            backoff.wait(deadline, &mut leader, false).await?;
        }
    }

    /// Waits until another member is known to lead. The core abandons a transfer
    /// after an election timeout; the target's election may take about as long again.
    async fn await_new_leader(
        &self,
        target: NodeId,
        deadline: &Deadline,
    ) -> Result<pb::TransferLeaderResponse, Status> {
        let patience = self.config.election_timeout * 2;
        let within = patience.min(deadline.remaining());
        match self.driver.other_leader(self.config.id, within).await {
            Some(leader) => Ok(self.response(leader, self.config.id)),
            None if within < patience => Err(deadline.expired(false)),
            None => Err(Status::aborted(format!(
                "{} did not take over within {patience:?}; {} leads on",
                self.name(target),
                self.config.name
            ))),
        }
    }

    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    pub(super) fn driver(&self) -> &DriverHandle {
        &self.driver
    }

    pub(super) fn peers(&self) -> &Peers {
        &self.peers
    }

    fn response(&self, leader: NodeId, previous: NodeId) -> pb::TransferLeaderResponse {
        pb::TransferLeaderResponse {
            leader: self.name(leader),
            previous: self.name(previous),
        }
    }

    fn name(&self, id: NodeId) -> String {
        self.config.name_of(id)
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    type BackupStream = BackupChunks;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<BackupChunks>, Status> {
        AdminService::backup(self, request).await
    }

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

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        authorize(&self.config, &request)?;
        let deadline = Deadline::of(&request, self.config.request_timeout);
        let forwarded = request.metadata().contains_key(FORWARDED);
        let name = request.into_inner().to.trim().to_lowercase();
        let to = match name.as_str() {
            "" => None,
            name => match self.config.registry.roster().named(name) {
                Some(member) => Some(member.id),
                None => return Err(Status::not_found(format!("no member is named {name:?}"))),
            },
        };
        let response = self.transfer(to, &deadline, forwarded).await?;
        Ok(Response::new(response))
    }

    async fn list_members(
        &self,
        _: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        Ok(Response::new(self.list_members().await))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let response = self.change_members(request, Ask::Add).await?;
        Ok(Response::new(response))
    }

    async fn promote_member(
        &self,
        request: Request<pb::PromoteMemberRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let response = self.change_members(request, Ask::Promote).await?;
        Ok(Response::new(response))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let response = self.change_members(request, Ask::Remove).await?;
        Ok(Response::new(response))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.driver.status().await.map_err(status_of)?;
        let mut response = status_response(&self.config, status);
        response.backup = self.backups.schedule.status(self.config.backups.as_ref());
        let metrics = metrics();
        response.reads_total = counter_sum(&metrics.reads);
        response.writes_total = counter_sum(&metrics.writes);
        Ok(Response::new(response))
    }
}

/// The driver's report as `Admin.Status` answers it, with the members as the registry
/// has them: the voters in `members`, the learners in `learners`.
fn status_response(config: &Config, status: NodeStatus) -> pb::StatusResponse {
    let roster = config.registry.roster();
    let by_name = |ids: &std::collections::BTreeSet<NodeId>| {
        ids.iter()
            .filter_map(|id| roster.member(*id))
            .map(|m| {
                let member = pb::Member {
                    peer_host: m.peer_host.clone(),
                    peer_port: u32::from(m.peer_port),
                    client_host: m.client_host.clone(),
                    client_port: u32::from(m.client_port),
                    id: m.id,
                };
                (m.name.clone(), member)
            })
            .collect()
    };
    let members = by_name(&roster.membership.voters);
    let learners = by_name(&roster.membership.learners);
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
        learners,
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
        // The schedule's, not the driver's: filled in by the caller.
        backup: None,
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
