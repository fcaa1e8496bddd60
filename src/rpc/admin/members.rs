//! Admin's membership RPCs: ListMembers, AddMember, PromoteMember, RemoveMember.
//!
//! A change is made by the leader (`driver/members.rs` checks and proposes it); any
//! other member passes it on, once, to the leader it knows, and with none known waits
//! for one within the request's deadline, as a transfer does.

use tonic::{Request, Status};

use super::AdminService;
use crate::config::{Config, Member};
use crate::driver::{
    Assessment, ChangeError, ChangeOutcome, ChangeRequest, FaultTolerance, MemberChange,
    RequestError,
};
use crate::proto::v1 as pb;
use crate::raft::Membership;
use crate::registry::{check_name, host_port, Record, Roster};
use crate::rpc::auth::authorize;
use crate::rpc::deadline::{Backoff, Deadline};
use crate::rpc::kv::{forwarded_request, FORWARDED};
use crate::rpc::outcome::status_of;

/// One of the three changes, as asked over gRPC.
#[derive(Clone)]
pub(super) enum Ask {
    Add(pb::AddMemberRequest),
    Promote(pb::PromoteMemberRequest),
    Remove(pb::RemoveMemberRequest),
}

impl Ask {
    /// The driver's request, with every field checked (INVALID_ARGUMENT otherwise).
    fn change_request(&self) -> Result<ChangeRequest, Status> {
        let invalid = |reason: String| Status::invalid_argument(reason);
        let (change, force, dry_run) = match self {
            Ask::Add(add) => {
                let name = add.name.trim().to_lowercase();
                check_name(&name).map_err(invalid)?;
                let (peer_host, peer_port) =
                    host_port(add.peer.trim()).map_err(|e| invalid(format!("peer: {e}")))?;
                let (client_host, client_port) =
                    host_port(add.client.trim()).map_err(|e| invalid(format!("client: {e}")))?;
                let record = Record {
                    member: Member {
                        id: 0,
                        name,
                        peer_host,
                        peer_port,
                        client_host,
                        client_port,
                    },
                    auto_promote: add.learner && add.auto_promote,
                };
                let change = MemberChange::Add {
                    record,
                    learner: add.learner,
                };
                (change, add.force, add.dry_run)
            }
            Ask::Promote(promote) => {
                let name = promote.name.trim().to_lowercase();
                check_name(&name).map_err(invalid)?;
                (
                    MemberChange::Promote { name },
                    promote.force,
                    promote.dry_run,
                )
            }
            Ask::Remove(remove) => {
                let name = remove.name.trim().to_lowercase();
                check_name(&name).map_err(invalid)?;
                (MemberChange::Remove { name }, remove.force, remove.dry_run)
            }
        };
        Ok(ChangeRequest {
            change,
            force,
            dry_run,
        })
    }

    fn dry_run(&self) -> bool {
        match self {
            Ask::Add(add) => add.dry_run,
            Ask::Promote(promote) => promote.dry_run,
            Ask::Remove(remove) => remove.dry_run,
        }
    }

    /// Passes the change on to the leader `client` reaches.
    async fn forward(
        &self,
        config: &Config,
        client: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
        deadline: &Deadline,
    ) -> Result<pb::MemberChangeResponse, Status> {
        let remaining = deadline.remaining();
        let call = async {
            let answer = match self.clone() {
                Ask::Add(add) => {
                    client
                        .add_member(forwarded_request(config, add, remaining))
                        .await
                }
                Ask::Promote(promote) => {
                    client
                        .promote_member(forwarded_request(config, promote, remaining))
                        .await
                }
                Ask::Remove(remove) => {
                    client
                        .remove_member(forwarded_request(config, remove, remaining))
                        .await
                }
            };
            answer.map(tonic::Response::into_inner)
        };
        // Bounded here too: a paused leader never answers.
        tokio::time::timeout(remaining, call)
            .await
            .unwrap_or_else(|_| Err(deadline.expired(true)))
    }
}

impl AdminService {
    /// ListMembers: this node's view.
    pub(super) async fn list_members(&self) -> pb::ListMembersResponse {
        let config = self.config();
        let roster = config.registry.roster();
        let leader = *self.driver().leader_watch().borrow();
        pb::ListMembersResponse {
            members: current_members(&roster),
            leader: leader.map(|id| config.name_of(id)).unwrap_or_default(),
            cluster_id: format!("{:016x}", config.cluster_id),
            bootstrap: bootstrap(config),
        }
    }

    /// A change, from any member: made by the leader, passed on by the others.
    pub(super) async fn change_members<T>(
        &self,
        request: Request<T>,
        ask: impl FnOnce(T) -> Ask,
    ) -> Result<pb::MemberChangeResponse, Status> {
        authorize(self.config(), &request)?;
        let deadline = Deadline::of(&request, self.config().request_timeout);
        let forwarded = request.metadata().contains_key(FORWARDED);
        let ask = ask(request.into_inner());
        let change = ask.change_request()?;
        let mut backoff = Backoff::new();
        loop {
            let mut leader = self.driver().leader_watch();
            let known = *leader.borrow();
            match known {
                Some(current) if current == self.config().id => {
                    let made = tokio::time::timeout(
                        deadline.remaining(),
                        self.driver().change_membership(change.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(RequestError::Indeterminate.into()));
                    match made {
                        Ok(outcome) => return Ok(self.change_response(outcome, ask.dry_run())),
                        // Lost the leadership, or another change is being committed:
                        // look again, within the deadline.
                        Err(ChangeError::Request(RequestError::NotLeader { .. }))
                        | Err(ChangeError::Busy(_)) => {}
                        Err(err) => return Err(status_of_change(err)),
                    }
                }
                Some(_) if forwarded => {
                    return Err(Status::unavailable("not the leader any more; ask again"))
                }
                Some(current) => {
                    if let Some(mut client) = self.peers().admin_client(current) {
                        match ask.forward(self.config(), &mut client, &deadline).await {
                            Ok(response) => return Ok(response),
                            // The leader changed under us (or went): look again.
                            Err(status) if status.code() == tonic::Code::Unavailable => {}
                            Err(status) => return Err(status),
                        }
                    }
                }
                None => {}
            }
            backoff.wait(&deadline, &mut leader, false).await?;
        }
    }

    fn change_response(&self, outcome: ChangeOutcome, dry_run: bool) -> pb::MemberChangeResponse {
        let config = self.config();
        let roster = config.registry.roster();
        pb::MemberChangeResponse {
            member: Some(member_info(&roster, &outcome.member)),
            assessment: Some(assessment(&outcome.assessment)),
            dry_run,
            index: outcome.index.unwrap_or(0),
            cluster_id: format!("{:016x}", config.cluster_id),
            members: current_members(&roster),
            bootstrap: bootstrap(config),
        }
    }
}

/// The current members, voters first, then learners.
fn current_members(roster: &Roster) -> Vec<pb::MemberInfo> {
    roster.current().map(|m| member_info(roster, m)).collect()
}

/// The bootstrap voters (as voters: where every log starts).
fn bootstrap(config: &Config) -> Vec<pb::MemberInfo> {
    let roster = Roster::default();
    config
        .members
        .iter()
        .map(|m| pb::MemberInfo {
            learner: false,
            ..member_info(&roster, m)
        })
        .collect()
}

pub(super) fn member_info(roster: &Roster, member: &Member) -> pb::MemberInfo {
    let Membership { learners, .. } = &roster.membership;
    pb::MemberInfo {
        id: member.id,
        name: member.name.clone(),
        peer: format!("{}:{}", member.peer_host, member.peer_port),
        client: format!("{}:{}", member.client_host, member.client_port),
        learner: learners.contains(&member.id),
        auto_promote: roster.record(member.id).is_some_and(|r| r.auto_promote),
    }
}

fn fault_tolerance(ft: &FaultTolerance) -> pb::FaultTolerance {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::FaultTolerance {
        voters: count(ft.voters),
        quorum: count(ft.quorum),
        may_fail: count(ft.may_fail),
    }
}

fn assessment(a: &Assessment) -> pb::Assessment {
    pb::Assessment {
        before: Some(fault_tolerance(&a.before)),
        after: Some(fault_tolerance(&a.after)),
        reachable: a.reachable.clone(),
        unreachable: a.unreachable.clone(),
        risk: a.risk.clone().unwrap_or_default(),
    }
}

/// The status of a change the leader did not make.
fn status_of_change(err: ChangeError) -> Status {
    match err {
        ChangeError::Request(err) => status_of(err),
        ChangeError::NotFound(name) => {
            Status::not_found(format!("no current member is named {name:?}"))
        }
        ChangeError::Conflict(why) => Status::already_exists(why),
        err @ ChangeError::Unsafe(_) => Status::failed_precondition(err.to_string()),
        ChangeError::Busy(why) => Status::unavailable(why),
    }
}
