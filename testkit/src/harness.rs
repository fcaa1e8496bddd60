//! Real `distraft` processes on loopback, driven only through HTTP and gRPC.
//!
//! A [`Cluster`] owns its child processes and kills every one of them when dropped,
//! panicking test or not; a failing test prints the tail of each node's output.

use distraft::proto::v1::{admin_client::AdminClient, kv_client::KvClient};
use distraft::tls::dev_certs::{self, DevCerts};
use distraft::tls::ClientTls;
use serde_json::Value;
use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    future::Future,
    io::{Read, Seek, SeekFrom},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};
use tempfile::TempDir;
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

/// Timings for tests: fast elections, and a request timeout short enough that a
/// majority loss answers 503 quickly.
pub const HEARTBEAT: &str = "0.05";
pub const ELECTION: &str = "0.25";
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a cluster may take to (re-)elect a leader or converge, on a busy 2-core
/// machine.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// Clusters running at once across the test threads: more would starve the 2-core
/// machine and turn timing into flakiness.
static RUNNING_CLUSTERS: Semaphore = Semaphore::const_new(2);

/// Ports handed out in this process, so that two clusters never pick the same one.
static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// With `tls`, a development CA and certificates for the local names (made by
/// `distraft certs`' own code) in `dir/certs`, and the client side of them; without,
/// none and a plaintext client.
pub fn test_certs(tls: bool, dir: &Path) -> (Option<DevCerts>, ClientTls) {
    let certs = tls.then(|| {
        let hosts = dev_certs::LOCAL_HOSTS.map(String::from);
        dev_certs::generate(&dir.join("certs"), &hosts, false).unwrap()
    });
    let client_args = certs
        .as_ref()
        .map(DevCerts::client_args)
        .unwrap_or_default();
    (certs, client_args.load().unwrap())
}

/// The `distraft` binary cargo built for the running test: integration tests run from
/// `target/<profile>/deps/`, and the package's binaries sit one level up (cargo builds
/// them before the tests of their package; `CARGO_BIN_EXE_*` is only known to the
/// package's own test targets, not to this crate).
pub fn distraft_binary() -> PathBuf {
    let test = std::env::current_exe().expect("the path of the running test");
    let profile = test
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let binary = profile.join(format!("distraft{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "no distraft binary at {} (run the tests through cargo test)",
        binary.display()
    );
    binary
}

/// The `distraft` binary, with nothing from the developer's own environment: every
/// `DISTRAFT_*` variable removed except `DISTRAFT_PLANT`, which plants a bug in the
/// nodes too (`scripts/plants.sh`, a build with the feature `plants`).
pub fn distraft_command() -> Command {
    let mut command = Command::new(distraft_binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("DISTRAFT_") && name != "DISTRAFT_PLANT" {
            command.env_remove(name);
        }
    }
    command
}

/// `count` distinct free loopback ports.
pub fn free_ports(count: usize) -> Vec<u16> {
    let mut used = USED_PORTS.lock().unwrap();
    let used = used.get_or_insert_with(HashSet::new);
    // Hold every listener until all ports are chosen, so the OS cannot repeat one.
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if used.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    ports
}

/// One node of a test cluster.
pub struct Node {
    pub name: String,
    pub raft_port: u16,
    pub http_port: u16,
    output: PathBuf,
    child: Option<Child>,
    /// `DISTRAFT_*` variables for this node only (see [`Cluster::start_with_node_env`]).
    env: Vec<(String, String)>,
    /// Serves HTTPS and mutual-TLS gRPC.
    tls: bool,
}

impl Node {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.http_port)
    }

    pub fn grpc_uri(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.raft_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    cluster_spec: String,
    dir: TempDir,
    http: reqwest::Client,
    /// The certificates of a cluster started with [`Cluster::start_tls`].
    pub certs: Option<DevCerts>,
    _permit: SemaphorePermit<'static>,
}

impl Cluster {
    /// Starts `size` nodes and waits until they agree on a leader.
    pub async fn start(size: usize) -> Cluster {
        Cluster::start_with(size, &[]).await
    }

    /// As [`Cluster::start`], with extra `DISTRAFT_*` variables for every node.
    pub async fn start_with(size: usize, extra_env: &[(&str, &str)]) -> Cluster {
        Cluster::launch(size, extra_env, false, |_, _| Vec::new()).await
    }

    /// As [`Cluster::start_with`], plus variables of each node's own, given by
    /// `node_env(i, cluster_dir)` (e.g. its own data directory); kept across restarts.
    pub async fn start_with_node_env(
        size: usize,
        extra_env: &[(&str, &str)],
        node_env: impl Fn(usize, &Path) -> Vec<(String, String)>,
    ) -> Cluster {
        Cluster::launch(size, extra_env, false, node_env).await
    }

    /// As [`Cluster::start`], with mutual TLS: a development CA and certificates (made
    /// by `distraft certs`' own code) in the cluster's directory, DISTRAFT_TLS_* set on
    /// every node, and this harness's HTTP and gRPC clients using them.
    pub async fn start_tls(size: usize) -> Cluster {
        Cluster::launch(size, &[], true, |_, _| Vec::new()).await
    }

    async fn launch(
        size: usize,
        extra_env: &[(&str, &str)],
        tls: bool,
        node_env: impl Fn(usize, &Path) -> Vec<(String, String)>,
    ) -> Cluster {
        let mut cluster = Cluster::assemble(size, tls, node_env).await;
        for i in 0..size {
            cluster.spawn(i, extra_env);
        }
        cluster.wait_for_leader().await;
        cluster
    }

    /// A cluster of `size` nodes, none started yet.
    async fn assemble(
        size: usize,
        tls: bool,
        node_env: impl Fn(usize, &Path) -> Vec<(String, String)>,
    ) -> Cluster {
        let permit = RUNNING_CLUSTERS.acquire().await.unwrap();
        let ports = free_ports(size * 2);
        let dir = tempfile::tempdir().unwrap();
        let (certs, client_tls) = test_certs(tls, dir.path());
        let nodes: Vec<Node> = (0..size)
            .map(|i| Node {
                name: format!("node{}", i + 1),
                raft_port: ports[2 * i],
                http_port: ports[2 * i + 1],
                output: dir.path().join(format!("node{}.out", i + 1)),
                child: None,
                env: node_env(i, dir.path()),
                tls,
            })
            .collect();
        let cluster_spec = nodes
            .iter()
            .map(|n| {
                format!(
                    "{}=127.0.0.1:{}:127.0.0.1:{}",
                    n.name, n.raft_port, n.http_port
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            nodes,
            cluster_spec,
            dir,
            http: client_tls
                .reqwest(reqwest::Client::builder().timeout(Duration::from_secs(15)))
                .build()
                .unwrap(),
            certs,
            _permit: permit,
        }
    }

    /// As [`Cluster::start`], but `prepare` runs first, on a cluster whose nodes are
    /// not started yet (to make their data directories, e.g. with `distraft restore`
    /// through [`Cluster::node_cli`]).
    pub async fn start_prepared(
        size: usize,
        extra_env: &[(&str, &str)],
        prepare: impl FnOnce(&Cluster),
    ) -> Cluster {
        let mut cluster = Cluster::assemble(size, false, |_, _| Vec::new()).await;
        prepare(&cluster);
        for i in 0..size {
            cluster.spawn(i, extra_env);
        }
        cluster.wait_for_leader().await;
        cluster
    }

    /// Runs `distraft ARGS` with node `i`'s environment (name, cluster, directories):
    /// a subcommand that works on the node's own files, such as `restore`.
    pub fn node_cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        let node = &self.nodes[i];
        self.node_command(i, node.raft_port, node.http_port, &[])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running distraft")
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    fn spawn(&mut self, i: usize, extra_env: &[(&str, &str)]) {
        let node = &self.nodes[i];
        assert!(node.child.is_none(), "{} is already running", node.name);
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.output)
            .unwrap();
        let mut command = self.node_command(i, node.raft_port, node.http_port, extra_env);
        command
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output);
        let child = command.spawn().expect("spawning distraft");
        self.nodes[i].child = Some(child);
    }

    /// The command that runs node `i` (its name, cluster and directories) listening on
    /// the given ports.
    fn node_command(
        &self,
        i: usize,
        raft_port: u16,
        http_port: u16,
        extra_env: &[(&str, &str)],
    ) -> Command {
        let node = &self.nodes[i];
        let mut command = distraft_command();
        command
            .env("DISTRAFT_NAME", &node.name)
            .env("DISTRAFT_HOST", "127.0.0.1")
            .env("DISTRAFT_UDP_PORT", raft_port.to_string())
            .env("DISTRAFT_CLIENT_HOST", "127.0.0.1")
            .env("DISTRAFT_TCP_PORT", http_port.to_string())
            .env("DISTRAFT_CLUSTER", &self.cluster_spec)
            .env("DISTRAFT_LOG_PATH", self.dir.path().join("log"))
            .env("DISTRAFT_DATA_PATH", self.dir.path().join("state"))
            .env("DISTRAFT_HEARTBEAT_TIMEOUT", HEARTBEAT)
            .env("DISTRAFT_ELECTION_TIMEOUT", ELECTION)
            .env(
                "DISTRAFT_REQUEST_TIMEOUT",
                REQUEST_TIMEOUT.as_secs_f64().to_string(),
            )
            .env("DISTRAFT_LOG_LEVEL", "INFO")
            .envs(extra_env.iter().copied())
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .envs(self.certs.iter().flat_map(|certs| {
                [
                    ("DISTRAFT_TLS_CERT", &certs.node_cert),
                    ("DISTRAFT_TLS_KEY", &certs.node_key),
                    ("DISTRAFT_TLS_CA", &certs.ca),
                ]
            }));
        command
    }

    /// Starts a new node `name` that joins the running cluster through the members
    /// `via` (DISTRAFT_JOIN); its DISTRAFT_CLUSTER names only itself. Returns its
    /// index. `extra_env` stays with it across restarts.
    pub fn join_node(&mut self, name: &str, via: &[usize], extra_env: &[(&str, &str)]) -> usize {
        let ports = free_ports(2);
        let i = self.nodes.len();
        let own = format!("{name}=127.0.0.1:{}:127.0.0.1:{}", ports[0], ports[1]);
        let join: Vec<String> = via.iter().map(|&v| self.url(v)).collect();
        let mut env = vec![
            ("DISTRAFT_CLUSTER".to_string(), own),
            ("DISTRAFT_JOIN".to_string(), join.join(",")),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        self.nodes.push(Node {
            name: name.to_string(),
            raft_port: ports[0],
            http_port: ports[1],
            output: self.dir.path().join(format!("{name}.{i}.out")),
            child: None,
            env,
            tls: self.certs.is_some(),
        });
        self.spawn(i, &[]);
        i
    }

    /// Runs a second process as node `i` (same name and directories, other ports)
    /// while node `i` may still be running, and returns how it ended; killed if it
    /// has not exited within `within`.
    pub fn run_second_process(&self, i: usize, within: Duration) -> std::process::Output {
        let ports = free_ports(2);
        let mut child = self
            .node_command(i, ports[0], ports[1], &[])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning distraft");
        let deadline = Instant::now() + within;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    }

    /// The PID of node `i`'s process, if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Node `i`'s WAL and snapshot directories.
    pub fn node_dirs(&self, i: usize) -> (PathBuf, PathBuf) {
        let name = &self.nodes[i].name;
        (
            self.dir.path().join("log").join(name),
            self.dir.path().join("state").join(name),
        )
    }

    /// `kill -9` of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// `kill -TERM` of node `i` (what `docker stop` and Ctrl-C do), then waits for it
    /// to exit: at most 15 s, after which it is killed and this panics.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let Some(mut child) = self.nodes[i].child.take() else {
            panic!("{} is not running", self.nodes[i].name);
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within 15 s of SIGTERM", self.nodes[i].name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts node `i` again from its persisted state (same ports and directories).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, &[]);
    }

    /// As [`Cluster::restart`], with extra `DISTRAFT_*` variables for this start only.
    pub fn restart_with(&mut self, i: usize, extra_env: &[(&str, &str)]) {
        self.spawn(i, extra_env);
    }

    /// Whether node `i`'s process is still alive (it was started and has not exited).
    pub fn alive(&mut self, i: usize) -> bool {
        match &mut self.nodes[i].child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The DISTRAFT_CLUSTER value every node was given.
    pub fn cluster_spec(&self) -> &str {
        &self.cluster_spec
    }

    /// The directory holding every node's log (`log/`) and data (`state/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// Waits until every running node answers and names the same leader, which says it
    /// leads; returns the leader's index.
    pub async fn wait_for_leader(&self) -> usize {
        self.wait_for_leader_among(&self.running()).await
    }

    /// As [`Cluster::wait_for_leader`], asking only `members` (e.g. the ones still up).
    pub async fn wait_for_leader_among(&self, members: &[usize]) -> usize {
        let leader = eventually(CONVERGE, || async {
            let mut leaders = Vec::new();
            for &i in members {
                leaders.push(self.status(i).await?["leader"].clone());
            }
            let first = leaders.first().ok_or("no members")?;
            let name = first.as_str().filter(|name| !name.is_empty());
            let name = name.ok_or_else(|| format!("no leader yet: {leaders:?}"))?;
            if leaders.iter().any(|l| l != first) {
                return Err(format!("leaders disagree: {leaders:?}"));
            }
            let leader = self.nodes.iter().position(|n| n.name == name);
            let leader = leader.ok_or_else(|| format!("unknown leader {name}"))?;
            match self.status(leader).await?["is_leader"] == true {
                true => Ok(leader),
                false => Err(format!("{name} does not know it leads")),
            }
        })
        .await;
        leader.unwrap_or_else(|e| {
            panic!("no agreed leader among {members:?} within {CONVERGE:?}: {e}")
        })
    }

    /// `GET /` of node `i`: the `status` object.
    pub async fn status(&self, i: usize) -> Result<Value, String> {
        let (code, body) = self
            .request(self.http.get(format!("{}/", self.url(i))))
            .await?;
        if code != 200 {
            return Err(format!("GET / on {}: {code} {body}", self.nodes[i].name));
        }
        Ok(body["status"].clone())
    }

    pub async fn get(&self, i: usize, key: &str) -> (u16, Value) {
        self.answer(self.http.get(distraft::cli::key_url(&self.url(i), key)))
            .await
    }

    pub async fn get_stale(&self, i: usize, key: &str) -> (u16, Value) {
        let url = distraft::cli::key_url(&self.url(i), key);
        self.answer(self.http.get(url).query(&[("stale", "true")]))
            .await
    }

    pub async fn put(&self, i: usize, key: &str, value: &str) -> (u16, Value) {
        let url = distraft::cli::key_url(&self.url(i), key);
        self.answer(self.http.post(url).form(&[("value", value)]))
            .await
    }

    pub async fn delete(&self, i: usize, key: &str) -> (u16, Value) {
        self.answer(self.http.delete(distraft::cli::key_url(&self.url(i), key)))
            .await
    }

    /// `GET` of an arbitrary path on node `i` (for `/stop`, `/start`, raw keys).
    pub async fn get_path(&self, i: usize, path: &str) -> (u16, Value) {
        self.answer(self.http.get(format!("{}{path}", self.url(i))))
            .await
    }

    /// The HTTP client, for hand-made requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Puts, retrying while the cluster answers 503 (an election in progress).
    pub async fn put_eventually(&self, i: usize, key: &str, value: &str) {
        // A node still starting does not answer yet: that is tried again too.
        let done = eventually(CONVERGE, || async {
            let url = distraft::cli::key_url(&self.url(i), key);
            let put = self.http.post(url).form(&[("value", value)]);
            match self.request(put).await {
                Ok((200, _)) => Ok(()),
                answer => Err(format!("{answer:?}")),
            }
        })
        .await;
        if let Err(last) = done {
            panic!(
                "PUT {key} on node {i} kept failing: {last}\n{}",
                self.output(i)
            );
        }
    }

    /// Waits until node `i` serves `key` = `value` (linearizable read).
    pub async fn assert_value_eventually(&self, i: usize, key: &str, value: &str) {
        let done = eventually(CONVERGE, || async {
            match self.get(i, key).await {
                (200, body) if body["value"] == value => Ok(()),
                answer => Err(format!("{answer:?}")),
            }
        })
        .await;
        if let Err(last) = done {
            panic!("node {i} never served {key}={value}: last {last}");
        }
    }

    /// Sends any request, returning the status and the JSON body (which every answer
    /// must have).
    pub async fn answer(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        match self.request(request).await {
            Ok(answer) => answer,
            Err(e) => panic!("{e}"),
        }
    }

    /// As [`Cluster::answer`], with a node that does not answer an `Err`.
    pub async fn request(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let code = response.status().as_u16();
        let text = response.text().await.map_err(|e| format!("reading: {e}"))?;
        let body = serde_json::from_str(&text)
            .map_err(|e| format!("answer {code} is not JSON ({e}): {text:?}"))?;
        Ok((code, body))
    }

    pub async fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(i).await)
    }

    pub async fn admin(&self, i: usize) -> AdminClient<Channel> {
        AdminClient::new(self.channel(i).await)
    }

    pub async fn health(&self, i: usize) -> HealthClient<Channel> {
        HealthClient::new(self.channel(i).await)
    }

    /// Everything node `i` has written to stdout and stderr (its logs), up to 4 MiB.
    pub fn output(&self, i: usize) -> String {
        tail(&self.nodes[i].output, 4 << 20)
    }

    /// A gRPC connection to node `i`, with the client certificate on a TLS cluster.
    async fn channel(&self, i: usize) -> Channel {
        let mut endpoint = Endpoint::from_shared(self.nodes[i].grpc_uri()).unwrap();
        if let Some(certs) = &self.certs {
            let tls = certs.client_args().load().unwrap().tonic().unwrap();
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        endpoint.connect().await.unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "----- last output of {} ({}):\n{}",
                    node.name,
                    node.output.display(),
                    tail(&node.output, 4000)
                );
            }
        }
    }
}

/// `distraft ARGS...` (the client subcommands): whether it succeeded, and its output
/// (standard output, then standard error).
pub async fn run_cli(args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::from(distraft_command())
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The JSON line a CLI command printed last (in [`run_cli`]'s output).
pub fn last_json(output: &str) -> Value {
    let line = output
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {output}"));
    serde_json::from_str(line).unwrap()
}

/// The last `bytes` of a file, for failure reports.
pub fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(no output)");
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(bytes)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}

/// Polls `probe` every 50 ms until it succeeds or `within` has passed; the error is
/// the last reason it gave.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(reason) if Instant::now() >= deadline => return Err(reason),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
