//! DISTRAFT_JOIN: a node with no data asks a running cluster to add it.
//!
//! It asks the members it was given, in turn, to add it as a learner
//! (`POST /cluster/members`, any member: followers pass it on to the leader) with the
//! addresses of its own entry in DISTRAFT_CLUSTER, and adopts what the answer says:
//! its member id, the cluster's id, the bootstrap voters its log starts from and the
//! members there are. The caller records that durably before the node starts, so a
//! node killed while catching up restarts as the same member. Asking again is safe: a
//! member added with the same name and addresses is answered as it is.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::{Config, Member};
use crate::driver::UNSAFE_CHANGE_HINT;
use crate::registry::{host_port, Record};
use crate::storage::identity::Joined;

/// How long a node keeps asking before it gives up (and exits, saying why).
const JOIN_PATIENCE: Duration = Duration::from_secs(60);
/// The pause between two rounds over the members.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// An answer larger than this is not a membership answer.
const MAX_ANSWER_BYTES: usize = 1 << 20;

#[derive(Deserialize)]
struct Answer {
    member: Option<AnswerMember>,
    cluster_id: String,
    members: Vec<AnswerMember>,
    bootstrap: Vec<AnswerMember>,
}

#[derive(Deserialize)]
struct AnswerMember {
    id: u64,
    name: String,
    peer: String,
    client: String,
    #[serde(default)]
    auto_promote: bool,
}

impl AnswerMember {
    fn record(&self) -> anyhow::Result<Record> {
        let (peer_host, peer_port) = host_port(&self.peer).map_err(anyhow::Error::msg)?;
        let (client_host, client_port) = host_port(&self.client).map_err(anyhow::Error::msg)?;
        crate::registry::check_name(&self.name).map_err(anyhow::Error::msg)?;
        if self.id == 0 {
            bail!("member {} has id 0", self.name);
        }
        Ok(Record {
            member: Member {
                id: self.id,
                name: self.name.clone(),
                peer_host,
                peer_port,
                client_host,
                client_port,
            },
            auto_promote: self.auto_promote,
        })
    }
}

/// Asks the members of `config.join` to add this node; returns what it adopts.
pub async fn join(config: &Config) -> anyhow::Result<Joined> {
    let me = config.me();
    let body = serde_json::json!({
        "name": me.name,
        "peer": format!("{}:{}", me.peer_host, me.peer_port),
        "client": format!("{}:{}", me.client_host, me.client_port),
        "learner": true,
        "auto_promote": config.auto_promote,
    });
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(bearer) = config.access.bearer() {
        let mut value = reqwest::header::HeaderValue::from_str(&bearer)
            .context("the API token must be visible ASCII characters")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let tls = config.join_tls.load()?;
    let client = tls
        .reqwest(
            reqwest::Client::builder().timeout(config.request_timeout + Duration::from_secs(1)),
        )
        .default_headers(headers)
        .build()
        .context("building the HTTP client to join")?;
    let deadline = Instant::now() + JOIN_PATIENCE;
    let mut last_error = String::new();
    loop {
        for url in &config.join {
            let target = format!("{url}/cluster/members");
            match ask(&client, &target, &body).await {
                Ok(answer) => {
                    let joined = adopt(answer, me)
                        .with_context(|| format!("the answer of {target} to the join"))?;
                    info!(
                        id = joined.id,
                        cluster_id = format!("{:016x}", joined.cluster_id),
                        via = url.as_str(),
                        "joined the cluster as a learner"
                    );
                    return Ok(joined);
                }
                Err(Refused(reason)) => bail!("{target} refused to add this node: {reason}"),
                Err(Failed(reason)) => {
                    warn!(url = url.as_str(), "cannot join yet: {reason}");
                    last_error = format!("{target}: {reason}");
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "could not join the cluster within {JOIN_PATIENCE:?} (DISTRAFT_JOIN); last \
                 error: {last_error}"
            );
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Why one attempt did not join: for good (the cluster said no), or for now.
enum AskError {
    Refused(String),
    Failed(String),
}
use AskError::{Failed, Refused};

async fn ask(
    client: &reqwest::Client,
    target: &str,
    body: &serde_json::Value,
) -> Result<Answer, AskError> {
    let response = client
        .post(target)
        .json(body)
        .send()
        .await
        .map_err(|err| Failed(format!("no answer: {err}")))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|err| Failed(format!("reading the answer: {err}")))?;
    if bytes.len() > MAX_ANSWER_BYTES {
        return Err(Failed(format!("an answer of {} bytes", bytes.len())));
    }
    let text = String::from_utf8_lossy(&bytes);
    match status.as_u16() {
        200 => serde_json::from_slice(&bytes)
            .map_err(|err| Failed(format!("an unreadable answer ({err}): {text}"))),
        // The safety check's refusal: too few voters are reachable and up to date
        // for the change to commit now (a member down, partitioned or catching up).
        // That passes; asking again within the patience is what an operator would do.
        409 if text.contains(UNSAFE_CHANGE_HINT) => Err(Failed(format!("{status}: {text}"))),
        // Bad input, a taken name or address, the token: asking again would meet the
        // same answer.
        400 | 401 | 403 | 404 | 409 => Err(Refused(format!("{status}: {text}"))),
        _ => Err(Failed(format!("{status}: {text}"))),
    }
}

/// What the answer tells this node `me` to adopt.
fn adopt(answer: Answer, me: &Member) -> anyhow::Result<Joined> {
    let own = answer
        .member
        .as_ref()
        .context("the answer names no member")?
        .record()?;
    if own.member.name != me.name {
        bail!("the answer is about {}, not {}", own.member.name, me.name);
    }
    let cluster_id = u64::from_str_radix(&answer.cluster_id, 16)
        .ok()
        .filter(|id| *id != 0)
        .context("the answer's cluster id is not 16 hex digits")?;
    let bootstrap = answer
        .bootstrap
        .iter()
        .map(|m| m.record().map(|r| r.member))
        .collect::<anyhow::Result<Vec<Member>>>()?;
    if bootstrap.is_empty() {
        bail!("the answer names no bootstrap voter");
    }
    let mut known = answer
        .members
        .iter()
        .map(AnswerMember::record)
        .collect::<anyhow::Result<Vec<Record>>>()?;
    known.push(own.clone());
    Ok(Joined {
        id: own.member.id,
        cluster_id,
        bootstrap,
        known,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{Assessment, ChangeError, FaultTolerance};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on loopback that answers every request with `status` and `body`, as
    /// the gateway answers a refused change; returns its URL.
    async fn answering(status: &'static str, body: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                // The whole request (headers, then content-length bytes), then the answer.
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                    request.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        url
    }

    fn error_body(message: String) -> String {
        serde_json::json!({"error": message, "ok": false}).to_string()
    }

    #[tokio::test]
    async fn the_safety_checks_refusal_is_asked_again_and_a_conflict_is_final() {
        let tolerance = FaultTolerance {
            voters: 4,
            quorum: 3,
            may_fail: 1,
        };
        let refusal = ChangeError::Unsafe(Box::new(Assessment {
            before: tolerance,
            after: tolerance,
            reachable: vec!["node1".into()],
            unreachable: vec!["node3".into(), "node4".into(), "node5".into()],
            risk: Some("after the change 3 of its 4 voters must agree (its quorum), but only 1 would be reachable and up to date".into()),
        }));
        let client = reqwest::Client::new();
        let body = serde_json::json!({"name": "node2"});

        let unsafe_now = answering("409 Conflict", error_body(refusal.to_string())).await;
        let answer = ask(&client, &format!("{unsafe_now}/cluster/members"), &body).await;
        assert!(matches!(answer, Err(Failed(_))), "asked again later");

        let taken = ChangeError::Conflict("the name node2 belongs to member 2".into());
        let conflict = answering("409 Conflict", error_body(taken.to_string())).await;
        let answer = ask(&client, &format!("{conflict}/cluster/members"), &body).await;
        assert!(matches!(answer, Err(Refused(_))), "given up at once");
    }
}
