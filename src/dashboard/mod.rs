//! The live dashboard at `/ui/`, served by every node from the binary itself (its page,
//! script and style are embedded: it works offline, with no CDN).
//!
//! The page never talks to other nodes: the node that served it asks every member for
//! its status (itself in process, the others over gRPC `Admin.Status`, the peer links'
//! channels) and streams the whole view to the page as server-sent events, so it needs no
//! CORS and works behind one published port. Its stop/start buttons go the same way
//! (`Admin.Stop`/`Admin.Start` on the chosen member, with the cluster's API token), and
//! its get/put form uses the ordinary key routes, and its remove button the membership
//! route (`DELETE /cluster/members/<name>`, first with `?dry_run=true` to show the
//! safety check's answer before the operator confirms). The members are the
//! registry's, at every view: a member that joins appears, one removed goes.
//!
//! | route                                   | answer                               |
//! |-----------------------------------------|--------------------------------------|
//! | `GET /ui`, `GET /ui/`                   | the page                             |
//! | `GET /ui/app.js`, `/ui/style.css`, `/ui/favicon.svg` | its script, style and icon |
//! | `GET /ui/api/cluster`                   | the cluster view, once (JSON)        |
//! | `GET /ui/api/events`                    | the cluster view, every 500 ms (SSE) |
//! | `POST /ui/api/members/<name>/stop`      | `Admin.Stop` on that member          |
//! | `POST /ui/api/members/<name>/start`     | `Admin.Start` on that member         |
//! | `POST /ui/api/members/<name>/lead`      | `Admin.TransferLeader` to that member (asked of this node) |
//!
//! Bounded: one fan-out serves every viewer (a view younger than [`VIEW_MAX_AGE`] is
//! reused), at most [`MAX_VIEWERS`] event streams at once, each for at most
//! [`STREAM_LIFETIME`] (browsers reconnect by themselves), each member's answer within
//! [`MEMBER_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use serde_json::{json, Value};
use tokio::sync::{watch, Mutex, OwnedSemaphorePermit, Semaphore};
use tonic::transport::Channel;

use crate::metrics::metrics;
use crate::proto::v1::{
    admin_client::AdminClient, admin_server::Admin, StartRequest, StatusRequest, StatusResponse,
    StopRequest, TransferLeaderRequest,
};
use crate::status::status_json;

pub const INDEX_HTML: &str = include_str!("index.html");
pub const APP_JS: &str = include_str!("app.js");
pub const STYLE_CSS: &str = include_str!("style.css");
pub const FAVICON_SVG: &str = include_str!("favicon.svg");

/// How often the event stream sends the view.
pub const EVENT_EVERY: Duration = Duration::from_millis(500);
/// A view this young is sent again instead of asking every member anew.
const VIEW_MAX_AGE: Duration = Duration::from_millis(250);
/// How long a member may take to answer before its card shows it unreachable.
const MEMBER_TIMEOUT: Duration = Duration::from_millis(400);
/// Event streams open at once; more viewers are told to poll.
pub const MAX_VIEWERS: usize = 32;
/// An event stream ends after this long; the browser's EventSource reconnects.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);

/// Another member, reached over gRPC.
#[derive(Clone)]
pub struct RemoteMember {
    pub name: String,
    pub admin: AdminClient<Channel>,
}

/// The members now, as this node's registry has them: the others (to ask over gRPC)
/// and the names of the learners. Asked at every view, so that members added or
/// removed while the page is open appear or go.
pub struct MemberList {
    pub others: Vec<RemoteMember>,
    pub learners: Vec<String>,
}

/// Where the dashboard learns the current members.
pub type Members = Arc<dyn Fn() -> MemberList + Send + Sync>;

/// What the dashboard's routes share.
pub struct Dashboard {
    /// This node's name.
    me: String,
    /// This node's Admin service, called in process.
    own: Arc<dyn Admin<BackupStream = crate::rpc::BackupChunks>>,
    /// The current members (see [`MemberList`]).
    members: Members,
    /// The API token (if set) to present to the other members for stop/start.
    bearer: Option<String>,
    /// The last view and when it was made; the lock also makes concurrent viewers
    /// wait for one fan-out instead of starting their own.
    last_view: Mutex<Option<(Instant, Arc<Value>)>>,
    viewers: Arc<Semaphore>,
    /// Turns true at shutdown: open event streams end.
    stop: watch::Receiver<bool>,
}

/// Why a member button's request failed.
#[derive(Debug)]
pub enum ActionError {
    UnknownMember(String),
    Failed(tonic::Status),
}

/// What a member button asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Start,
    /// Make the member the leader (a leadership transfer, asked of this node, which
    /// passes it on to the leader).
    Lead,
}

impl Dashboard {
    pub fn new(
        me: String,
        own: Arc<dyn Admin<BackupStream = crate::rpc::BackupChunks>>,
        members: Members,
        bearer: Option<String>,
        stop: watch::Receiver<bool>,
    ) -> Dashboard {
        Dashboard {
            me,
            own,
            members,
            bearer,
            last_view: Mutex::new(None),
            viewers: Arc::new(Semaphore::new(MAX_VIEWERS)),
            stop,
        }
    }

    /// A place for one more event stream, if there is room.
    pub fn viewer_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.viewers.clone().try_acquire_owned().ok()
    }

    /// A receiver that turns true at shutdown.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// The cluster as every member reports it, at most [`VIEW_MAX_AGE`] old.
    pub async fn view(&self) -> Arc<Value> {
        let mut last = self.last_view.lock().await;
        if let Some((made, view)) = last.as_ref() {
            if made.elapsed() < VIEW_MAX_AGE {
                return view.clone();
            }
        }
        let view = Arc::new(self.fan_out().await);
        *last = Some((Instant::now(), view.clone()));
        view
    }

    async fn fan_out(&self) -> Value {
        let MemberList { others, learners } = (self.members)();
        let own = async {
            let request = tonic::Request::new(StatusRequest {});
            let answer = tokio::time::timeout(MEMBER_TIMEOUT, self.own.status(request)).await;
            member_json(&self.me, answer)
        };
        let others = others.iter().map(|member| async move {
            let mut request = tonic::Request::new(StatusRequest {});
            request.set_timeout(MEMBER_TIMEOUT);
            let mut client = member.admin.clone();
            let answer = tokio::time::timeout(MEMBER_TIMEOUT, client.status(request)).await;
            (member.name.clone(), member_json(&member.name, answer))
        });
        let (own, others) = futures::join!(own, join_all(others));
        let mut members = vec![own];
        members.extend(others.into_iter().map(|(_, member)| member));
        for member in &mut members {
            let learner = member["name"]
                .as_str()
                .is_some_and(|name| learners.iter().any(|l| l == name));
            member["learner"] = Value::Bool(learner);
        }
        json!({
            "ok": true,
            "served_by": self.me,
            "at_ms": unix_ms(),
            "members": members,
            "timeline": metrics().timeline(),
        })
    }

    /// Stops, starts or makes leader member `name`.
    pub async fn act(&self, name: &str, action: Action) -> Result<(), ActionError> {
        let known = name == self.me || (self.members)().others.iter().any(|m| m.name == name);
        if !known {
            return Err(ActionError::UnknownMember(name.to_string()));
        }
        let result = match action {
            // Asked of this node, which passes it on to the leader.
            Action::Lead => {
                let request = self.request(TransferLeaderRequest {
                    to: name.to_string(),
                });
                self.own.transfer_leader(request).await.map(drop)
            }
            Action::Stop | Action::Start => self.stop_or_start(name, action).await,
        };
        result.map_err(ActionError::Failed)
    }

    /// Stops or starts `name`, a member: this node in process, another over gRPC.
    async fn stop_or_start(&self, name: &str, action: Action) -> Result<(), tonic::Status> {
        let stop = action == Action::Stop;
        if name == self.me {
            return match stop {
                true => self.own.stop(self.request(StopRequest {})).await.map(drop),
                false => self
                    .own
                    .start(self.request(StartRequest {}))
                    .await
                    .map(drop),
            };
        }
        let others = (self.members)().others;
        let Some(member) = others.iter().find(|m| m.name == name) else {
            return Err(tonic::Status::not_found(format!("no such member: {name}")));
        };
        let mut client = member.admin.clone();
        match stop {
            true => client.stop(self.request(StopRequest {})).await.map(drop),
            false => client.start(self.request(StartRequest {})).await.map(drop),
        }
    }

    /// A request with a deadline and the cluster's API token.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(MEMBER_TIMEOUT * 5);
        if let Some(bearer) = self.bearer.as_deref().and_then(|b| b.parse().ok()) {
            request.metadata_mut().insert("authorization", bearer);
        }
        request
    }
}

/// One member's card: its status, or why it did not answer.
fn member_json(
    name: &str,
    answer: Result<
        Result<tonic::Response<StatusResponse>, tonic::Status>,
        tokio::time::error::Elapsed,
    >,
) -> Value {
    match answer {
        Ok(Ok(status)) => json!({
            "name": name,
            "reachable": true,
            "status": status_json(status.into_inner()),
        }),
        Ok(Err(status)) => json!({
            "name": name,
            "reachable": false,
            "error": status.message(),
        }),
        Err(_) => json!({
            "name": name,
            "reachable": false,
            "error": format!("no answer within {MEMBER_TIMEOUT:?}"),
        }),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
