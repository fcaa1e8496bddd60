//! The nodes under test: real `distraft` processes whose peers are reached through the
//! [`Network`]'s proxies, and the process-level faults (kill, Admin stop, pause).
//!
//! Unlike the integration harness's cluster, every node gets its own `DISTRAFT_CLUSTER`
//! (its peers at their proxies' ports) and the test keeps each child's pid to pause it.
//! The test itself talks to every node directly, never through a proxy.
//!
//! [`ChaosCluster::start_tls`] runs the nodes with mutual TLS; the proxies forward TCP,
//! so the handshakes pass through them (and are cut, lost or delayed like any bytes).

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use distraft::proto::v1::{
    admin_client::AdminClient, StartRequest, StatusRequest, StatusResponse, StopRequest,
    TransferLeaderRequest,
};
use distraft::tls::dev_certs::DevCerts;
use distraft::tls::ClientTls;
use tempfile::TempDir;
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::transport::{Channel, Endpoint};

use crate::harness::{
    distraft_command, free_ports, tail, test_certs, ELECTION, HEARTBEAT, REQUEST_TIMEOUT,
};
use crate::proxy::Network;

/// A node takes a snapshot every this many applied entries: low, so that runs exercise
/// snapshots, log compaction and InstallSnapshot to nodes that fell behind.
const SNAPSHOT_THRESHOLD: &str = "200";
/// Deadline of the test's own Admin calls; a paused node never answers.
const ADMIN_TIMEOUT: Duration = Duration::from_millis(1500);

/// Where a client reaches a node.
#[derive(Clone, Debug)]
pub struct Address {
    pub name: String,
    pub raft_port: u16,
    pub http_port: u16,
    /// The client certificate and CA of a cluster with TLS (none: plaintext).
    pub tls: ClientTls,
}

impl Address {
    fn scheme(&self) -> &'static str {
        match self.tls.tonic() {
            Some(_) => "https",
            None => "http",
        }
    }

    pub fn grpc_uri(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.raft_port)
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.http_port)
    }

    /// The node's gRPC endpoint, with the client certificate on a TLS cluster.
    pub fn endpoint(&self) -> Endpoint {
        let endpoint = Endpoint::from_shared(self.grpc_uri()).unwrap();
        match self.tls.tonic() {
            Some(tls) => endpoint.tls_config(tls).unwrap(),
            None => endpoint,
        }
    }

    /// An HTTP client builder that trusts the cluster's CA, if it has one.
    pub fn http_client(&self) -> reqwest::ClientBuilder {
        self.tls.reqwest(reqwest::Client::builder())
    }
}

struct Process {
    address: Address,
    /// This node's `DISTRAFT_CLUSTER`: itself, and its peers behind their proxies.
    cluster_spec: String,
    output: PathBuf,
    child: Option<Child>,
    admin: AdminClient<Channel>,
    /// DISTRAFT_JOIN, once the node was replaced by a fresh member of its name.
    join: Option<String>,
}

/// One cluster at a time across this target's tests: two would starve the 2-core
/// machine and blur each other's timings.
static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

pub struct ChaosCluster {
    nodes: Vec<Process>,
    network: Network,
    dir: TempDir,
    certs: Option<DevCerts>,
    _permit: SemaphorePermit<'static>,
}

impl ChaosCluster {
    /// Starts `size` nodes behind a fresh [`Network`] (without waiting for a leader).
    pub async fn start(size: usize) -> ChaosCluster {
        ChaosCluster::launch(size, false).await
    }

    /// As [`ChaosCluster::start`], with mutual TLS between the nodes (through the
    /// proxies) and towards the test's clients.
    pub async fn start_tls(size: usize) -> ChaosCluster {
        ChaosCluster::launch(size, true).await
    }

    async fn launch(size: usize, tls: bool) -> ChaosCluster {
        let permit = ONE_AT_A_TIME.acquire().await.unwrap();
        let ports = free_ports(size * 2);
        let dir = tempfile::tempdir().unwrap();
        let (certs, client_tls) = test_certs(tls, dir.path());
        let addresses: Vec<Address> = (0..size)
            .map(|i| Address {
                name: format!("node{}", i + 1),
                raft_port: ports[2 * i],
                http_port: ports[2 * i + 1],
                tls: client_tls.clone(),
            })
            .collect();
        let raft_ports: Vec<u16> = addresses.iter().map(|a| a.raft_port).collect();
        let network = Network::start(&raft_ports).await.unwrap();
        let nodes = (0..size)
            .map(|me| {
                let cluster_spec = addresses
                    .iter()
                    .enumerate()
                    .map(|(peer, a)| {
                        let port = match peer == me {
                            true => a.raft_port,
                            false => network.port(me, peer),
                        };
                        format!("{}=127.0.0.1:{port}:127.0.0.1:{}", a.name, a.http_port)
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let admin = addresses[me]
                    .endpoint()
                    .connect_timeout(ADMIN_TIMEOUT)
                    .timeout(ADMIN_TIMEOUT)
                    .connect_lazy();
                Process {
                    output: dir.path().join(format!("{}.out", addresses[me].name)),
                    address: addresses[me].clone(),
                    cluster_spec,
                    child: None,
                    admin: AdminClient::new(admin),
                    join: None,
                }
            })
            .collect();
        let mut cluster = ChaosCluster {
            nodes,
            network,
            dir,
            certs,
            _permit: permit,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    pub fn addresses(&self) -> Vec<Address> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].address.name
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        assert!(
            node.child.is_none(),
            "{} is already running",
            node.address.name
        );
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.output)
            .unwrap();
        // Nothing from the developer's environment (DISTRAFT_CHAOS_* included) leaks in,
        // but a planted bug (DISTRAFT_PLANT, scripts/plants.sh) does.
        let mut command = distraft_command();
        command
            .env("DISTRAFT_NAME", &node.address.name)
            .env("DISTRAFT_HOST", "127.0.0.1")
            .env("DISTRAFT_UDP_PORT", node.address.raft_port.to_string())
            .env("DISTRAFT_CLIENT_HOST", "127.0.0.1")
            .env("DISTRAFT_TCP_PORT", node.address.http_port.to_string())
            .env("DISTRAFT_CLUSTER", &node.cluster_spec)
            .env("DISTRAFT_LOG_PATH", self.dir.path().join("log"))
            .env("DISTRAFT_DATA_PATH", self.dir.path().join("state"))
            .env("DISTRAFT_HEARTBEAT_TIMEOUT", HEARTBEAT)
            .env("DISTRAFT_ELECTION_TIMEOUT", ELECTION)
            .env(
                "DISTRAFT_REQUEST_TIMEOUT",
                REQUEST_TIMEOUT.as_secs_f64().to_string(),
            )
            .env("DISTRAFT_SNAPSHOT_THRESHOLD", SNAPSHOT_THRESHOLD)
            .env("DISTRAFT_LOG_LEVEL", log_level())
            .envs(node.join.iter().map(|urls| ("DISTRAFT_JOIN", urls)))
            .envs(self.certs.iter().flat_map(|certs| {
                [
                    ("DISTRAFT_TLS_CERT", &certs.node_cert),
                    ("DISTRAFT_TLS_KEY", &certs.node_key),
                    ("DISTRAFT_TLS_CA", &certs.ca),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output);
        self.nodes[i].child = Some(command.spawn().expect("spawning distraft"));
    }

    /// `kill -9` of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Where node `i` writes its output.
    pub fn output(&self, i: usize) -> &std::path::Path {
        &self.nodes[i].output
    }

    /// Starts node `i` again from what it persisted.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// SIGSTOP: the node freezes mid-whatever, its sockets stay open.
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONT: the node resumes where it froze.
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        let child = self.nodes[i].child.as_ref();
        let pid = child.and_then(|c| i32::try_from(c.id()).ok());
        let pid = pid.unwrap_or_else(|| panic!("{} is not running", self.name(i)));
        // SAFETY: kill(2) has no memory effects; `pid` is our own child, not yet reaped
        // (we hold its `Child`), so the id cannot have been reused.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "signal {signal} to {}", self.name(i));
    }

    /// Admin.Stop: the node leaves Raft as if crashed, its process keeps running.
    pub async fn admin_stop(&self, i: usize) -> Result<(), tonic::Status> {
        let mut admin = self.nodes[i].admin.clone();
        admin.stop(StopRequest {}).await.map(|_| ())
    }

    /// Admin.Start: the node rejoins Raft from its persisted state.
    pub async fn admin_start(&self, i: usize) -> Result<(), tonic::Status> {
        let mut admin = self.nodes[i].admin.clone();
        admin.start(StartRequest {}).await.map(|_| ())
    }

    /// Admin.TransferLeader asked of node `i`, to node `to` or (`None`) to the most
    /// up-to-date member; answers the new leader's name. Bounded: a paused node, or
    /// one cut off, does not answer.
    pub async fn transfer_leader(
        &self,
        i: usize,
        to: Option<usize>,
    ) -> Result<String, tonic::Status> {
        let mut admin = self.nodes[i].admin.clone();
        let to = to.map(|t| self.name(t).to_string()).unwrap_or_default();
        let mut request = tonic::Request::new(TransferLeaderRequest { to });
        request.set_timeout(Duration::from_secs(3));
        match tokio::time::timeout(Duration::from_secs(4), admin.transfer_leader(request)).await {
            Ok(answer) => Ok(answer?.into_inner().leader),
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 4 s")),
        }
    }

    /// `DELETE /cluster/members/<target>` asked of node `i` (the safety check on, no
    /// force). Bounded; an error may still have removed it (the answer was lost).
    pub async fn remove_member(&self, i: usize, target: usize) -> Result<(), String> {
        let node = &self.nodes[i].address;
        let url = format!("{}/cluster/members/{}", node.url(), self.name(target));
        let client = node
            .http_client()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let answer = client.delete(url).send().await.map_err(|e| e.to_string())?;
        let code = answer.status();
        let body = answer.text().await.unwrap_or_default();
        match code.is_success() {
            true => Ok(()),
            false => Err(format!("{code}: {body}")),
        }
    }

    /// The current members as node `i` sees them: name → voter (false: learner).
    pub async fn members_seen_by(&self, i: usize) -> Result<BTreeMap<String, bool>, String> {
        let node = &self.nodes[i].address;
        let client = node
            .http_client()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        let answer = client
            .get(format!("{}/cluster/members", node.url()))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let list: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
        let members = list["members"].as_array().ok_or("no members")?;
        Ok(members
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["role"] == "voter",
                )
            })
            .collect())
    }

    /// Node `i` anew, as an operator replaces a member whose disk is gone: killed, its
    /// data deleted, started with DISTRAFT_JOIN (every other node's client URL), so
    /// that it joins as a new member of the same name, catches up and is promoted.
    pub fn rejoin_fresh(&mut self, i: usize) {
        self.kill(i);
        let name = self.name(i).to_string();
        for dir in ["log", "state"] {
            let _ = std::fs::remove_dir_all(self.dir.path().join(dir).join(&name));
        }
        let urls: Vec<String> = (0..self.size())
            .filter(|&j| j != i)
            .map(|j| self.nodes[j].address.url())
            .collect();
        self.nodes[i].join = Some(urls.join(","));
        self.spawn(i);
    }

    pub async fn status(&self, i: usize) -> Result<StatusResponse, tonic::Status> {
        let mut admin = self.nodes[i].admin.clone();
        Ok(admin.status(StatusRequest {}).await?.into_inner())
    }

    /// The node that says it leads in the highest term, if any answers so.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.size() {
            if let Ok(status) = self.status(i).await {
                if status.is_leader && best.is_none_or(|(term, _)| status.term > term) {
                    best = Some((status.term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Copies every node's whole output where it outlives the run (under cargo's
    /// target/tmp), for a failure report; says where, or why not.
    pub fn keep_outputs(&self) -> String {
        let name = self
            .dir
            .path()
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("chaos-failures")
            .join(name.as_ref());
        let copied = std::fs::create_dir_all(&kept).and_then(|()| {
            self.nodes.iter().try_for_each(|n| {
                std::fs::copy(&n.output, kept.join(format!("{}.out", n.address.name))).map(drop)
            })
        });
        match copied {
            Ok(()) => format!("every node's whole output is kept in {}", kept.display()),
            Err(e) => format!(
                "could not keep the nodes' outputs in {}: {e}",
                kept.display()
            ),
        }
    }

    /// Fails the run with `reason`, after every node's last output and where their
    /// whole outputs are kept. The reason comes last and without a backtrace
    /// (`resume_unwind` skips the panic hook), so that the end of a long CI log says
    /// why.
    pub fn fail(&self, reason: &str) -> ! {
        println!("{}", self.outputs());
        println!("{}", self.keep_outputs());
        println!("chaos check failed: {reason}");
        std::panic::resume_unwind(Box::new(reason.to_string()))
    }

    /// The last lines each node wrote, for a failure report.
    pub fn outputs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "----- last output of {} ({}):\n{}\n",
                    n.address.name,
                    n.output.display(),
                    tail(&n.output, 3000)
                )
            })
            .collect()
    }
}

/// The nodes' `DISTRAFT_LOG_LEVEL`: `DISTRAFT_CHAOS_LOG_LEVEL` (e.g. `debug`, to study a
/// run), INFO by default.
fn log_level() -> String {
    std::env::var("DISTRAFT_CHAOS_LOG_LEVEL").unwrap_or_else(|_| "INFO".into())
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // SIGKILL ends a paused process too.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
