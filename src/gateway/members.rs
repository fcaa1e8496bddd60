//! `/cluster/members…`: runtime membership over HTTP, on top of Admin's membership
//! RPCs (`rpc/members.rs`). Paths that no key can have (a key is one path segment).
//!
//! | Route | Admin RPC |
//! |---|---|
//! | `GET /cluster/members` | `ListMembers` |
//! | `POST /cluster/members` (JSON `name`, `peer`, `client`, `learner`, `auto_promote`) | `AddMember` |
//! | `POST /cluster/members/<name>/promote` | `PromoteMember` |
//! | `DELETE /cluster/members/<name>` | `RemoveMember` |
//!
//! The changes take `?dry_run=true` (answer the safety check, change nothing) and
//! `?force=true` (make a change the check advises against); a refused change is 409
//! with the check's reason.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Buf;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Code;
use warp::http::header;
use warp::{Filter, Rejection};

use super::response::ApiError;
use super::{Gateway, Response, MAX_OPTIONS_BODY_BYTES};
use crate::proto::v1 as pb;

/// `?dry_run=…&force=…` of a change.
#[derive(Debug, Default, Deserialize)]
struct ChangeOptions {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
}

/// The body of `POST /cluster/members`.
#[derive(Debug, Deserialize)]
struct NewMember {
    name: String,
    peer: String,
    client: String,
    #[serde(default)]
    learner: bool,
    #[serde(default)]
    auto_promote: bool,
}

pub(super) fn member_routes(
    with_gateway: impl Filter<Extract = (Arc<Gateway>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    credentials: impl Filter<Extract = (Result<(), ApiError>,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let members = warp::path!("cluster" / "members");
    let list = members
        .and(warp::get())
        .and(with_gateway.clone())
        .then(|gw: Arc<Gateway>| async move { gw.respond(gw.list_members().await) });
    let add = members
        .and(warp::post())
        .and(credentials.clone())
        .and(warp::query::<ChangeOptions>())
        .and(warp::header::optional::<u64>(
            header::CONTENT_LENGTH.as_str(),
        ))
        .and(warp::body::stream())
        .and(with_gateway.clone())
        .then(
            |authorized: Result<(), ApiError>,
             options: ChangeOptions,
             content_length,
             body,
             gw: Arc<Gateway>| async move {
                gw.respond(
                    gw.add_member(authorized, options, content_length, body)
                        .await,
                )
            },
        );
    let promote = warp::path!("cluster" / "members" / String / "promote")
        .and(warp::post())
        .and(credentials.clone())
        .and(warp::query::<ChangeOptions>())
        .and(with_gateway.clone())
        .then(
            |name: String,
             authorized: Result<(), ApiError>,
             options: ChangeOptions,
             gw: Arc<Gateway>| async move {
                let result = match authorized {
                    Err(error) => Err(error),
                    Ok(()) => {
                        let request = pb::PromoteMemberRequest {
                            name,
                            force: options.force,
                            dry_run: options.dry_run,
                        };
                        let call = gw.backend.admin.promote_member(gw.request(request));
                        gw.change(call).await
                    }
                };
                gw.respond(result)
            },
        );
    let remove = warp::path!("cluster" / "members" / String)
        .and(warp::delete())
        .and(credentials)
        .and(warp::query::<ChangeOptions>())
        .and(with_gateway)
        .then(
            |name: String,
             authorized: Result<(), ApiError>,
             options: ChangeOptions,
             gw: Arc<Gateway>| async move {
                let result = match authorized {
                    Err(error) => Err(error),
                    Ok(()) => {
                        let request = pb::RemoveMemberRequest {
                            name,
                            force: options.force,
                            dry_run: options.dry_run,
                        };
                        let call = gw.backend.admin.remove_member(gw.request(request));
                        gw.change(call).await
                    }
                };
                gw.respond(result)
            },
        );
    list.or(add).unify().or(promote).unify().or(remove).unify()
}

impl Gateway {
    async fn list_members(&self) -> Result<Value, ApiError> {
        let request = self.request(pb::ListMembersRequest {});
        let list = self.call(self.backend.admin.list_members(request)).await?;
        Ok(json!({
            "members": list.members.iter().map(member_json).collect::<Vec<_>>(),
            "leader": list.leader,
            "cluster_id": list.cluster_id,
            "bootstrap": list.bootstrap.iter().map(member_json).collect::<Vec<_>>(),
        }))
    }

    async fn add_member<S, B>(
        &self,
        authorized: Result<(), ApiError>,
        options: ChangeOptions,
        content_length: Option<u64>,
        body: S,
    ) -> Result<Value, ApiError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin + Send,
        B: Buf,
    {
        let body = self
            .authorized_body(authorized, content_length, body, MAX_OPTIONS_BODY_BYTES)
            .await?;
        let new: NewMember = serde_json::from_slice(&body).map_err(|err| {
            ApiError::bad_request(format!(
                "the body must be JSON with the strings name, peer (host:port) and \
                 client (host:port), and optionally the booleans learner and \
                 auto_promote: {err}"
            ))
        })?;
        let request = pb::AddMemberRequest {
            name: new.name,
            peer: new.peer,
            client: new.client,
            learner: new.learner,
            auto_promote: new.auto_promote,
            force: options.force,
            dry_run: options.dry_run,
        };
        self.change(self.backend.admin.add_member(self.request(request)))
            .await
    }

    /// A change's answer as JSON; a change the safety check refused is 409, with its
    /// reason.
    async fn change(
        &self,
        call: impl std::future::Future<
            Output = Result<tonic::Response<pb::MemberChangeResponse>, tonic::Status>,
        >,
    ) -> Result<Value, ApiError> {
        // FAILED_PRECONDITION is the safety check's refusal here: a conflict with the
        // cluster's state (409), as ABORTED is.
        let as_conflict = |status: tonic::Status| match status.code() {
            Code::FailedPrecondition => tonic::Status::aborted(status.message()),
            _ => status,
        };
        let answer = self.call(async { call.await.map_err(as_conflict) }).await?;
        Ok(change_json(&answer))
    }
}

fn member_json(m: &pb::MemberInfo) -> Value {
    json!({
        "id": m.id,
        "name": m.name,
        "peer": m.peer,
        "client": m.client,
        "role": if m.learner { "learner" } else { "voter" },
        "auto_promote": m.auto_promote,
    })
}

fn tolerance_json(ft: Option<&pb::FaultTolerance>) -> Value {
    let ft = ft.cloned().unwrap_or_default();
    json!({"voters": ft.voters, "quorum": ft.quorum, "may_fail": ft.may_fail})
}

fn change_json(answer: &pb::MemberChangeResponse) -> Value {
    let assessment = answer.assessment.clone().unwrap_or_default();
    json!({
        "ok": true,
        "dry_run": answer.dry_run,
        "index": answer.index,
        "member": answer.member.as_ref().map(member_json),
        "assessment": {
            "before": tolerance_json(assessment.before.as_ref()),
            "after": tolerance_json(assessment.after.as_ref()),
            "reachable": assessment.reachable,
            "unreachable": assessment.unreachable,
            "safe": assessment.risk.is_empty(),
            "risk": if assessment.risk.is_empty() { Value::Null } else { Value::String(assessment.risk) },
        },
        "cluster_id": answer.cluster_id,
        "members": answer.members.iter().map(member_json).collect::<Vec<_>>(),
        "bootstrap": answer.bootstrap.iter().map(member_json).collect::<Vec<_>>(),
    })
}
