//! `distraft cluster`: a local cluster in one command. Reads the example env file (the
//! original `distraft-config.env` format), starts one `distraft` child process per
//! member of its DISTRAFT_CLUSTER, waits for a leader, prints the curl lines to try, and
//! stops every node on Ctrl-C (or SIGTERM), or as soon as one of them dies.
//!
//! With `--tls`, the nodes run with mutual TLS: the certificates in `--certs-dir`
//! (`distraft certs` makes them), or, if there are none, new ones made there for the
//! cluster's hosts.

use crate::config::{parse_cluster, Member};
use crate::tls::dev_certs::{self, DevCerts, LOCAL_HOSTS};
use crate::tls::ClientTlsArgs;
use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::Value;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{
    process::{Child, Command},
    signal::unix::{signal, SignalKind},
};

/// Options of `distraft cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The env file describing the cluster (`export DISTRAFT_...=...` lines).
    #[arg(long, default_value = "distraft-config.env")]
    pub config: PathBuf,
    /// Where the nodes keep their log (`log/<name>`), snapshots (`state/<name>`) and
    /// output (`<name>.out`).
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// How long to wait for the cluster to elect a leader.
    #[arg(long, default_value_t = 30)]
    pub leader_timeout_secs: u64,
    /// Require this API token on every key route, /stop and /start (the nodes read it
    /// from `<data-dir>/api-token`, readable by this user only, not from their
    /// environment).
    #[arg(long, env = "DISTRAFT_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Mutual TLS between the nodes and HTTPS on their gateways.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: the certificates (ca.pem, node.pem, node-key.pem, client.pem,
    /// client-key.pem); made there if missing. Default: <data-dir>/certs.
    #[arg(long, requires = "tls")]
    pub certs_dir: Option<PathBuf>,
}

/// The URL of a member's HTTP gateway (HTTPS with TLS).
fn http_url(member: &Member, tls: Option<&DevCerts>) -> String {
    let scheme = if tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}:{}", member.client_host, member.client_port)
}

/// How long each node gets to shut down cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let env = parse_env_file(&text);
    let cluster = env
        .get("DISTRAFT_CLUSTER")
        .ok_or_else(|| anyhow!("{} sets no DISTRAFT_CLUSTER", args.config.display()))?;
    let members = parse_cluster(cluster)?;
    ensure_ports_free(&members)?;
    let exe = std::env::current_exe().context("finding the distraft binary")?;
    let mut env = env;
    if let Some(token) = &args.api_token {
        let path = write_token_file(&args.data_dir, token)?;
        env.remove("DISTRAFT_API_TOKEN");
        env.insert(
            "DISTRAFT_API_TOKEN_FILE".to_string(),
            path.display().to_string(),
        );
    }
    let certs = match args.tls {
        true => Some(certificates(&args, &members)?),
        false => None,
    };

    let mut nodes = Vec::with_capacity(members.len());
    for member in &members {
        let child = spawn_node(&exe, &env, member, &args.data_dir, certs.as_ref())
            .with_context(|| format!("starting node {}", member.name))?;
        nodes.push((member.clone(), child));
    }
    let result = supervise(&mut nodes, &args, certs.as_ref()).await;
    stop_all(&mut nodes).await;
    result
}

/// Writes the API token to `<data_dir>/api-token`, readable by this user only.
fn write_token_file(data_dir: &Path, token: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("api-token");
    // Replaced, not rewritten in place: an existing file may have looser permissions.
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
}

/// The certificates in the certs directory, made there first if missing (for the
/// local names and every host of the cluster).
fn certificates(args: &ClusterArgs, members: &[Member]) -> anyhow::Result<DevCerts> {
    let dir = match &args.certs_dir {
        Some(dir) => dir.clone(),
        None => args.data_dir.join("certs"),
    };
    let existing = DevCerts::in_dir(&dir);
    if existing.exist() {
        return Ok(existing);
    }
    let mut hosts: Vec<String> = LOCAL_HOSTS.map(String::from).to_vec();
    for member in members {
        for host in [&member.peer_host, &member.client_host] {
            if !hosts.contains(host) {
                hosts.push(host.clone());
            }
        }
    }
    let certs = dev_certs::generate(&dir, &hosts, false)?;
    println!(
        "distraft: made a development CA and certificates in {}",
        dir.display()
    );
    Ok(certs)
}

/// Fails fast, naming the port, when another process (often a cluster started
/// earlier) already listens on one of ours: otherwise its answers would pass for ours.
fn ensure_ports_free(members: &[Member]) -> anyhow::Result<()> {
    for member in members {
        let ports = [
            (&member.peer_host, member.peer_port, "gRPC"),
            (&member.client_host, member.client_port, "HTTP"),
        ];
        for (host, port, what) in ports {
            std::net::TcpListener::bind((host.as_str(), port)).with_context(|| {
                format!(
                    "{what} port {host}:{port} of {} is not free (is another cluster running?)",
                    member.name
                )
            })?;
        }
    }
    Ok(())
}

/// Waits for a leader, prints what to try, then waits for Ctrl-C or a dead node.
async fn supervise(
    nodes: &mut [(Member, Child)],
    args: &ClusterArgs,
    certs: Option<&DevCerts>,
) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let leader = tokio::select! {
        leader = wait_for_leader(nodes, Duration::from_secs(args.leader_timeout_secs), certs) => leader?,
        _ = interrupt.recv() => return Ok(()),
        _ = terminate.recv() => return Ok(()),
    };
    print_instructions(nodes, &leader, args, certs);
    tokio::select! {
        _ = interrupt.recv() => Ok(()),
        _ = terminate.recv() => Ok(()),
        dead = first_exit(nodes) => Err(dead),
    }
}

/// Resolves when any node exits, naming it.
async fn first_exit(nodes: &mut [(Member, Child)]) -> anyhow::Error {
    let waits = nodes.iter_mut().map(|(member, child)| {
        Box::pin(async move {
            let status = child.wait().await;
            anyhow!(
                "node {} exited ({status:?}); see its output file",
                member.name
            )
        })
    });
    futures::future::select_all(waits).await.0
}

/// Starts one node: the env file's variables (which win over the inherited
/// environment, as `source distraft-config.env` would), then this member's name, ports
/// and directories under `data_dir`. Output goes to `<data_dir>/<name>.out`.
fn spawn_node(
    exe: &Path,
    env: &BTreeMap<String, String>,
    member: &Member,
    data_dir: &Path,
    certs: Option<&DevCerts>,
) -> anyhow::Result<Child> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let output_path = data_dir.join(format!("{}.out", member.name));
    let output = std::fs::File::create(&output_path)
        .with_context(|| format!("creating {}", output_path.display()))?;
    let errors = output
        .try_clone()
        .with_context(|| format!("opening {}", output_path.display()))?;
    let mut command = Command::new(exe);
    if env.contains_key("DISTRAFT_API_TOKEN_FILE") {
        // An inherited token would clash with the file (and sit in /proc).
        command.env_remove("DISTRAFT_API_TOKEN");
    }
    if let Some(certs) = certs {
        command
            .env("DISTRAFT_TLS_CERT", &certs.node_cert)
            .env("DISTRAFT_TLS_KEY", &certs.node_key)
            .env("DISTRAFT_TLS_CA", &certs.ca);
    }
    let child = command
        .envs(env)
        .env("DISTRAFT_NAME", &member.name)
        .env("DISTRAFT_HOST", &member.peer_host)
        .env("DISTRAFT_UDP_PORT", member.peer_port.to_string())
        .env("DISTRAFT_CLIENT_HOST", &member.client_host)
        .env("DISTRAFT_TCP_PORT", member.client_port.to_string())
        // Each node adds its own name to these directories.
        .env("DISTRAFT_LOG_PATH", data_dir.join("log"))
        .env("DISTRAFT_DATA_PATH", data_dir.join("state"))
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors)
        // A backstop: if this process dies without stopping them, neither do they linger.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {}", exe.display()))?;
    Ok(child)
}

/// Polls every node's `GET /` until one says it leads; fails early if a node died.
async fn wait_for_leader(
    nodes: &mut [(Member, Child)],
    timeout: Duration,
    certs: Option<&DevCerts>,
) -> anyhow::Result<String> {
    let tls = ClientTlsArgs {
        cacert: certs.map(|certs| certs.ca.clone()),
        ..ClientTlsArgs::default()
    };
    let client = tls
        .load()?
        .reqwest(reqwest::Client::builder().timeout(Duration::from_secs(1)))
        .build()
        .context("building the HTTP client")?;
    let deadline = Instant::now() + timeout;
    loop {
        for (member, child) in nodes.iter_mut() {
            if let Some(status) = child.try_wait().context("checking a node")? {
                bail!(
                    "node {} exited during startup ({status}); see its output file",
                    member.name
                );
            }
            if let Some(leader) = leader_of(&client, &http_url(member, certs)).await {
                return Ok(leader);
            }
        }
        if Instant::now() >= deadline {
            bail!("no leader elected within {timeout:?}; see the nodes' output files");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader `member` knows of, if any.
async fn leader_of(client: &reqwest::Client, url: &str) -> Option<String> {
    let status: Value = client
        .get(format!("{url}/"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    match status.pointer("/status/leader")?.as_str()? {
        "" => None,
        leader => Some(leader.to_string()),
    }
}

fn print_instructions(
    nodes: &[(Member, Child)],
    leader: &str,
    args: &ClusterArgs,
    certs: Option<&DevCerts>,
) {
    let data_dir = &args.data_dir;
    let Some((first, _)) = nodes.first() else {
        return;
    };
    let url = http_url(first, certs);
    // With TLS, curl must trust the development CA.
    let curl = match certs {
        Some(certs) => format!("curl --cacert {}", certs.ca.display()),
        None => "curl".to_string(),
    };
    println!("distraft: {} nodes up, leader is {leader}", nodes.len());
    for (member, _) in nodes {
        println!(
            "  {:<10} http {}  grpc {}:{}  output {}",
            member.name,
            http_url(member, certs),
            member.peer_host,
            member.peer_port,
            data_dir.join(format!("{}.out", member.name)).display()
        );
    }
    println!();
    // The token itself is not printed: it sits in the token file.
    let auth = match args.api_token {
        Some(_) => format!(
            " -H \"Authorization: Bearer $(cat {})\"",
            data_dir.join("api-token").display()
        ),
        None => String::new(),
    };
    println!("Dashboard: {url}/ui/  (any node's; metrics at {url}/metrics)");
    println!();
    println!("Try:");
    println!("  {curl} {url}/");
    println!("  {curl} -L{auth} -XPOST --data 'value=world' {url}/hello");
    println!("  {curl} -L{auth} {url}/hello");
    println!("  {curl} -L{auth} -XDELETE {url}/hello");
    println!("  {curl}{auth} {url}/stop");
    println!("  {curl}{auth} {url}/start");
    if let Some(certs) = certs {
        println!(
            "  grpcurl -cacert {} -cert {} -key {} {}:{} list",
            certs.ca.display(),
            certs.client_cert.display(),
            certs.client_key.display(),
            first.peer_host,
            first.peer_port
        );
    }
    println!();
    println!("Ctrl-C stops every node.");
}

/// Asks every node to shut down (SIGTERM), then kills the ones still running after
/// the grace period.
async fn stop_all(nodes: &mut [(Member, Child)]) {
    for (_, child) in nodes.iter() {
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) has no memory effects; `pid` is our own child, not yet
            // reaped (we hold its `Child`), so the id cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    for (member, child) in nodes.iter_mut() {
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "node {} did not stop within {STOP_GRACE:?}; killing it",
                    member.name
                );
                // Already exited or already killed are both fine here.
                let _ = child.kill().await;
            }
        }
    }
}

/// The variables of a shell env file: `export NAME=value` or `NAME=value` lines, with
/// optional quotes; comments and anything else ignored.
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
            let (name, value) = line.split_once('=')?;
            let valid_name =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            valid_name.then(|| (name.to_string(), unquote(value.trim()).to_string()))
        })
        .collect()
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines() {
        let env = parse_env_file(
            "# comment\nexport DISTRAFT_NAME=a\nDISTRAFT_HOST=\"127.0.0.1\"\n  export X='y z'\nnot a line\n",
        );
        assert_eq!(env.get("DISTRAFT_NAME").map(String::as_str), Some("a"));
        assert_eq!(
            env.get("DISTRAFT_HOST").map(String::as_str),
            Some("127.0.0.1")
        );
        assert_eq!(env.get("X").map(String::as_str), Some("y z"));
        assert_eq!(env.len(), 3);
    }
}
