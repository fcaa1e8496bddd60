//! Node configuration: the original `distraft-config.env` variables (same names, meanings
//! and defaults), each also a command-line flag, plus a few new ones.
//!
//! Clap collects raw strings (flag > environment > default); [`Config::from_args`] then
//! validates them, so that every mistake is reported as one line naming the variable and
//! the offending value, whichever way it was given.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::access::{Access, AccessArgs};
use crate::limits::{LimitArgs, Limits};
use crate::raft::{self, NodeId};
use crate::tls::NodeTls;
use crate::validation::RequestRules;

/// How often the driver ticks the Raft core, unless heartbeats are so short that a
/// finer tick is needed (see [`Config::tick`]).
const DEFAULT_TICK: Duration = Duration::from_millis(10);
/// Per follower: AppendEntries batches in flight before the leader waits for answers.
const MAX_INFLIGHT_MSGS: usize = 64;
/// Bytes of entries per AppendEntries batch (a single larger entry still goes alone).
const MAX_MSG_BYTES: usize = 1024 * 1024;

/// The node's settings as given on the command line or in the environment.
///
/// Every field is a raw string so that [`Config::from_args`] can explain a bad value in
/// terms of the variable users know from `distraft-config.env`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// This node's name; must be one of the names in the cluster list.
    #[arg(long, env = "DISTRAFT_NAME", default_value = "default")]
    pub name: String,
    /// Address the Raft/gRPC server binds to.
    #[arg(long, env = "DISTRAFT_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the gRPC server (Raft between nodes, Kv and Admin for clients).
    #[arg(
        long = "raft-port",
        visible_alias = "udp-port",
        env = "DISTRAFT_UDP_PORT",
        default_value = "9000"
    )]
    pub raft_port: String,
    /// Address the HTTP (curl/JSON) gateway binds to.
    #[arg(long, env = "DISTRAFT_CLIENT_HOST", default_value = "127.0.0.1")]
    pub client_host: String,
    /// Port of the HTTP gateway.
    #[arg(
        long = "client-port",
        visible_alias = "tcp-port",
        env = "DISTRAFT_TCP_PORT",
        default_value = "5000"
    )]
    pub client_port: String,
    /// Every member, this node included:
    /// `name=peer_host:peer_port:client_host:client_port,...`.
    /// Unset: a single-node cluster of this node.
    #[arg(long, env = "DISTRAFT_CLUSTER")]
    pub cluster: Option<String>,
    /// Directory of the write-ahead log (a subdirectory per node name).
    #[arg(long, env = "DISTRAFT_LOG_PATH", default_value = "/etc/distraft/")]
    pub log_path: String,
    /// Directory of the state-machine snapshots (a subdirectory per node name).
    #[arg(long, env = "DISTRAFT_DATA_PATH", default_value = "/etc/distraft/")]
    pub data_path: String,
    /// Election timeouts are drawn from [election_timeout, election_timeout × ratio].
    #[arg(long, env = "DISTRAFT_TIMEOUT_SPREAD_RATIO", default_value = "2.0")]
    pub timeout_spread_ratio: String,
    /// Seconds between a leader's heartbeats.
    #[arg(long, env = "DISTRAFT_HEARTBEAT_TIMEOUT", default_value = "0.100")]
    pub heartbeat_timeout: String,
    /// A leader that hears from no majority for this many heartbeats steps down.
    #[arg(long, env = "DISTRAFT_MISSED_HEARTBEATS", default_value = "5")]
    pub missed_heartbeats: String,
    /// Seconds without a leader before a follower starts an election (lower end).
    #[arg(long, env = "DISTRAFT_ELECTION_TIMEOUT", default_value = "0.500")]
    pub election_timeout: String,
    /// Wipe this node's log and snapshots at start-up (the term and vote are kept, and
    /// the node does not vote until it caught up past a leader change).
    #[arg(long, env = "DISTRAFT_RESET_LOGS", default_value = "false")]
    pub reset_logs: String,
    /// Indented JSON in HTTP responses.
    #[arg(long, env = "DISTRAFT_PRETTY_PRINT_RESPONSES", default_value = "false")]
    pub pretty_print_responses: String,
    /// Log every HTTP request.
    #[arg(long, env = "DISTRAFT_WEB_SERVER_DEBUG", default_value = "false")]
    pub web_server_debug: String,
    /// DEBUG, INFO, WARNING or ERROR (or a tracing filter such as `distraft=debug`).
    #[arg(long, env = "DISTRAFT_LOG_LEVEL", default_value = "INFO")]
    pub log_level: String,
    /// `text` (for people) or `json` (one JSON object per line, for log collectors).
    #[arg(long, env = "DISTRAFT_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Accepted for compatibility with the original; gRPC always uses protobuf.
    #[arg(long, env = "DISTRAFT_SERIALIZER", default_value = "json")]
    pub serializer: String,
    /// Seconds a client request may wait for a leader and a majority.
    #[arg(long, env = "DISTRAFT_REQUEST_TIMEOUT", default_value = "3.0")]
    pub request_timeout: String,
    /// Largest accepted key, in bytes.
    #[arg(long, env = "DISTRAFT_MAX_KEY_BYTES", default_value = "4096")]
    pub max_key_bytes: String,
    /// Largest accepted value, in bytes.
    #[arg(long, env = "DISTRAFT_MAX_VALUE_BYTES", default_value = "1048576")]
    pub max_value_bytes: String,
    /// Take a snapshot once this many entries were applied since the last one (if
    /// the log also holds DISTRAFT_SNAPSHOT_LOG_RATIO x the state's size).
    #[arg(long, env = "DISTRAFT_SNAPSHOT_THRESHOLD", default_value = "10000")]
    pub snapshot_threshold: String,
    /// Mixed into the cluster id (with the member list), so that two clusters with the
    /// same member list still tell each other apart. Same on every member.
    #[arg(
        long = "cluster-token",
        env = "DISTRAFT_CLUSTER_TOKEN",
        default_value = ""
    )]
    pub cluster_token: String,
    /// Largest snapshot image accepted from a leader, in bytes.
    #[arg(
        long = "max-snapshot-bytes",
        env = "DISTRAFT_MAX_SNAPSHOT_BYTES",
        default_value = "4294967296"
    )]
    pub max_snapshot_bytes: String,
    /// Take a snapshot once the entries applied since the last one hold this many bytes
    /// (if the log also holds DISTRAFT_SNAPSHOT_LOG_RATIO x the state's size).
    #[arg(long, env = "DISTRAFT_SNAPSHOT_LOG_BYTES", default_value = "67108864")]
    pub snapshot_log_bytes: String,
    /// Never snapshot before the log since the last snapshot holds this many times the
    /// state's size (the last snapshot's): snapshots then write at most 1/ratio byte
    /// per byte of log however large the state (1 + 1/ratio while it grows).
    #[arg(long, env = "DISTRAFT_SNAPSHOT_LOG_RATIO", default_value = "1.0")]
    pub snapshot_log_ratio: String,
    /// Always snapshot once the log since the last snapshot holds this many bytes,
    /// whatever the ratio: bounds the log on disk and the replay at start-up.
    #[arg(
        long,
        env = "DISTRAFT_SNAPSHOT_LOG_MAX_BYTES",
        default_value = "1073741824"
    )]
    pub snapshot_log_max_bytes: String,
    /// Bytes of log entries kept in memory; older ones (applied, on disk) are read back
    /// from the WAL when a slow follower needs them.
    #[arg(long, env = "DISTRAFT_LOG_CACHE_BYTES", default_value = "67108864")]
    pub log_cache_bytes: String,
    /// Largest state (the sum of key and value bytes) writes may build; a write past it
    /// is refused (HTTP 507), deletes still work. Default 2 GiB, as etcd's quota.
    #[arg(long, env = "DISTRAFT_QUOTA_BYTES", default_value = "2147483648")]
    pub quota_bytes: String,
    /// API token, CORS origins, allowed Host names.
    #[command(flatten)]
    pub access: AccessArgs,
    /// Bounds at the edges (connections, body read time, forwarded writes).
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Mutual TLS: all three or none.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The TLS files of a node (see `src/tls/mod.rs`): all three set, or none (plaintext).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate (chain) of this node: served on the gRPC port and the HTTPS
    /// gateway, and presented to peers. Its SANs must name the host this node has in
    /// DISTRAFT_CLUSTER, and it must allow server and client authentication.
    #[arg(long = "tls-cert", env = "DISTRAFT_TLS_CERT")]
    pub cert: Option<String>,
    /// PEM private key of DISTRAFT_TLS_CERT.
    #[arg(long = "tls-key", env = "DISTRAFT_TLS_KEY")]
    pub key: Option<String>,
    /// PEM certificate of the CA: peers and gRPC clients must present a certificate it
    /// signed, and peers' servers must have one.
    #[arg(long = "tls-ca", env = "DISTRAFT_TLS_CA")]
    pub ca: Option<String>,
}

/// A configuration value that cannot be used. Displays as one line:
/// `DISTRAFT_X: "value" problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {value:?} {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(var: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            var,
            value: value.to_string(),
            problem: problem.into(),
        }
    }
}

/// One cluster member as listed in `DISTRAFT_CLUSTER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    pub peer_host: String,
    pub peer_port: u16,
    pub client_host: String,
    pub client_port: u16,
}

impl Member {
    /// The URI of this member's gRPC server.
    pub fn grpc_uri(&self) -> String {
        format!("http://{}:{}", self.peer_host, self.peer_port)
    }
}

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub id: NodeId,
    pub host: String,
    pub raft_port: u16,
    pub client_host: String,
    pub client_port: u16,
    /// Sorted by name; a member's id is its position + 1, so every node that has the
    /// same list derives the same ids.
    pub members: Vec<Member>,
    pub log_dir: PathBuf,
    pub data_dir: PathBuf,
    pub timeout_spread_ratio: f64,
    pub heartbeat_timeout: Duration,
    pub missed_heartbeats: u32,
    pub election_timeout: Duration,
    pub reset_logs: bool,
    pub pretty_print_responses: bool,
    pub web_server_debug: bool,
    /// A `tracing_subscriber::EnvFilter` directive.
    pub log_filter: String,
    pub log_format: LogFormat,
    pub request_timeout: Duration,
    /// DISTRAFT_MAX_KEY_BYTES and DISTRAFT_MAX_VALUE_BYTES.
    pub request_rules: RequestRules,
    pub snapshot_threshold: u64,
    /// The cluster's identity, derived from `members` and DISTRAFT_CLUSTER_TOKEN (see
    /// [`cluster_id`]); persisted and checked at start by `storage::identity`.
    pub cluster_id: u64,
    /// Largest snapshot image accepted from a leader (DISTRAFT_MAX_SNAPSHOT_BYTES).
    pub max_snapshot_bytes: u64,
    pub snapshot_log_bytes: u64,
    pub snapshot_log_ratio: f64,
    pub snapshot_log_max_bytes: u64,
    pub log_cache_bytes: usize,
    /// The Raft core's flow control per follower: AppendEntries batches in flight, and
    /// bytes of entries per batch. No flag sets them (always the defaults); they are
    /// fields so that the simulator can vary them, which is where commit-rule and
    /// back-off bugs show.
    pub max_inflight_msgs: usize,
    pub max_msg_bytes: usize,
    /// The core's stall timer (`raft::Config::stalled_heartbeats`); likewise only the
    /// simulator varies it, to measure it.
    pub stalled_heartbeats: u32,
    /// Writes that would take the state's key and value bytes past this are refused.
    pub quota_bytes: u64,
    /// Who may use the client API (token, CORS, Host).
    pub access: Access,
    /// Bounds at the edges.
    pub limits: Limits,
    /// Mutual TLS on the gRPC port and HTTPS on the gateway; `None`: plaintext.
    pub tls: Option<Arc<NodeTls>>,
}

impl Config {
    /// Validates raw arguments.
    pub fn from_args(args: &NodeArgs) -> Result<Config, ConfigError> {
        // The original lower-cases names and addresses; so do we, so that the same
        // env file names the same nodes.
        let name = args.name.trim().to_lowercase();
        if name.is_empty() {
            return Err(ConfigError::new("DISTRAFT_NAME", &args.name, "is empty"));
        }
        let host = parse_host("DISTRAFT_HOST", &args.host)?;
        let raft_port = parse_port("DISTRAFT_UDP_PORT", &args.raft_port)?;
        let client_host = parse_host("DISTRAFT_CLIENT_HOST", &args.client_host)?;
        let client_port = parse_port("DISTRAFT_TCP_PORT", &args.client_port)?;

        let members = match &args.cluster {
            Some(spec) => parse_cluster(spec)?,
            None => vec![Member {
                id: 1,
                name: name.clone(),
                peer_host: host.clone(),
                peer_port: raft_port,
                client_host: client_host.clone(),
                client_port,
            }],
        };
        let id = match members.iter().find(|m| m.name == name) {
            Some(m) => m.id,
            None => {
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                return Err(ConfigError::new(
                    "DISTRAFT_NAME",
                    &args.name,
                    format!("is not in DISTRAFT_CLUSTER (members: {})", names.join(", ")),
                ));
            }
        };

        let timeout_spread_ratio =
            parse_f64("DISTRAFT_TIMEOUT_SPREAD_RATIO", &args.timeout_spread_ratio)?;
        if timeout_spread_ratio < 1.0 {
            return Err(ConfigError::new(
                "DISTRAFT_TIMEOUT_SPREAD_RATIO",
                &args.timeout_spread_ratio,
                "must be at least 1.0",
            ));
        }
        let heartbeat_timeout =
            parse_seconds("DISTRAFT_HEARTBEAT_TIMEOUT", &args.heartbeat_timeout)?;
        let missed_heartbeats =
            parse_positive("DISTRAFT_MISSED_HEARTBEATS", &args.missed_heartbeats)?;
        let missed_heartbeats = u32::try_from(missed_heartbeats).map_err(|_| {
            ConfigError::new(
                "DISTRAFT_MISSED_HEARTBEATS",
                &args.missed_heartbeats,
                "is too large",
            )
        })?;
        let election_timeout = parse_seconds("DISTRAFT_ELECTION_TIMEOUT", &args.election_timeout)?;
        if election_timeout <= heartbeat_timeout {
            return Err(ConfigError::new(
                "DISTRAFT_ELECTION_TIMEOUT",
                &args.election_timeout,
                format!(
                    "must be greater than DISTRAFT_HEARTBEAT_TIMEOUT ({})",
                    args.heartbeat_timeout.trim()
                ),
            ));
        }

        let request_timeout = parse_seconds("DISTRAFT_REQUEST_TIMEOUT", &args.request_timeout)?;
        let max_key_bytes = parse_positive("DISTRAFT_MAX_KEY_BYTES", &args.max_key_bytes)?;
        let max_value_bytes = parse_positive("DISTRAFT_MAX_VALUE_BYTES", &args.max_value_bytes)?;
        let snapshot_threshold =
            parse_positive("DISTRAFT_SNAPSHOT_THRESHOLD", &args.snapshot_threshold)?;
        let max_snapshot_bytes =
            parse_positive("DISTRAFT_MAX_SNAPSHOT_BYTES", &args.max_snapshot_bytes)?;
        let cluster_id = cluster_id(&members, &args.cluster_token);
        let snapshot_log_bytes =
            parse_positive("DISTRAFT_SNAPSHOT_LOG_BYTES", &args.snapshot_log_bytes)?;
        let snapshot_log_ratio =
            parse_f64("DISTRAFT_SNAPSHOT_LOG_RATIO", &args.snapshot_log_ratio)?;
        if snapshot_log_ratio < 0.0 {
            return Err(ConfigError::new(
                "DISTRAFT_SNAPSHOT_LOG_RATIO",
                &args.snapshot_log_ratio,
                "must not be negative",
            ));
        }
        let snapshot_log_max_bytes = parse_positive(
            "DISTRAFT_SNAPSHOT_LOG_MAX_BYTES",
            &args.snapshot_log_max_bytes,
        )?;
        let log_cache_bytes = parse_positive("DISTRAFT_LOG_CACHE_BYTES", &args.log_cache_bytes)?;
        let quota_bytes = parse_positive("DISTRAFT_QUOTA_BYTES", &args.quota_bytes)?;
        let access = Access::from_args(&args.access, &members, &[&host, &client_host])?;
        let limits = Limits::from_args(&args.limits)?;

        Ok(Config {
            id,
            log_dir: PathBuf::from(args.log_path.trim()).join(&name),
            data_dir: PathBuf::from(args.data_path.trim()).join(&name),
            name,
            host,
            raft_port,
            client_host,
            client_port,
            members,
            timeout_spread_ratio,
            heartbeat_timeout,
            missed_heartbeats,
            election_timeout,
            reset_logs: parse_bool("DISTRAFT_RESET_LOGS", &args.reset_logs)?,
            pretty_print_responses: parse_bool(
                "DISTRAFT_PRETTY_PRINT_RESPONSES",
                &args.pretty_print_responses,
            )?,
            web_server_debug: parse_bool("DISTRAFT_WEB_SERVER_DEBUG", &args.web_server_debug)?,
            log_filter: parse_log_level(&args.log_level)?,
            log_format: LogFormat::parse(&args.log_format)?,
            request_timeout,
            request_rules: RequestRules {
                max_key_bytes: usize::try_from(max_key_bytes).unwrap_or(usize::MAX),
                max_value_bytes: usize::try_from(max_value_bytes).unwrap_or(usize::MAX),
            },
            snapshot_threshold,
            cluster_id,
            max_snapshot_bytes,
            snapshot_log_bytes,
            snapshot_log_ratio,
            snapshot_log_max_bytes,
            log_cache_bytes: usize::try_from(log_cache_bytes).unwrap_or(usize::MAX),
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            max_msg_bytes: MAX_MSG_BYTES,
            stalled_heartbeats: raft::STALLED_HEARTBEATS,
            quota_bytes,
            access,
            limits,
            tls: parse_tls(&args.tls)?,
        })
    }

    /// The URI this node dials `member`'s gRPC server at: https:// when TLS is on (tonic
    /// then checks the member's certificate against its host in DISTRAFT_CLUSTER).
    pub fn peer_uri(&self, member: &Member) -> String {
        let uri = member.grpc_uri();
        match &self.tls {
            Some(_) => uri.replacen("http://", "https://", 1),
            None => uri,
        }
    }

    /// This node's own entry in the member list.
    pub fn me(&self) -> &Member {
        // `from_args` guarantees the entry exists; ids are positions + 1.
        &self.members[(self.id - 1) as usize]
    }

    /// The member with Raft id `id`.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        let position = usize::try_from(id.checked_sub(1)?).ok()?;
        self.members.get(position)
    }

    /// The member called `name`.
    pub fn member_named(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Every member but this node.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.id != self.id)
    }

    /// The length of one tick of the Raft core: 10 ms, or finer when heartbeats are
    /// shorter than two ticks, so that every timeout is a whole number of ticks.
    pub fn tick(&self) -> Duration {
        let half_heartbeat = self.heartbeat_timeout / 2;
        DEFAULT_TICK
            .min(half_heartbeat)
            .max(Duration::from_millis(1))
    }

    /// The Raft core's tuning, with the timeouts converted to ticks.
    pub fn raft_config(&self) -> raft::Config {
        let ticks = |d: Duration| -> u64 {
            let n = (d.as_secs_f64() / self.tick().as_secs_f64()).round();
            (n as u64).max(1)
        };
        let heartbeat_ticks = ticks(self.heartbeat_timeout);
        let election_ticks_min = ticks(self.election_timeout).max(heartbeat_ticks + 1);
        // The core draws from a half-open range; +1 so that timeout × ratio is included.
        let election_ticks_max =
            ((election_ticks_min as f64 * self.timeout_spread_ratio).floor() as u64 + 1)
                .max(election_ticks_min + 1);
        raft::Config {
            id: self.id,
            voters: self.members.iter().map(|m| m.id).collect(),
            election_ticks_min,
            election_ticks_max,
            heartbeat_ticks,
            check_quorum_ticks: heartbeat_ticks * u64::from(self.missed_heartbeats),
            max_inflight_msgs: self.max_inflight_msgs,
            max_msg_bytes: self.max_msg_bytes,
            max_cached_bytes: self.log_cache_bytes,
            stalled_heartbeats: self.stalled_heartbeats,
        }
    }

    /// The largest Kv request or Raft message (one entry) this node must accept.
    pub fn max_message_bytes(&self) -> usize {
        let largest_entry = self.request_rules.largest_pair_bytes();
        self.max_msg_bytes
            .saturating_add(largest_entry)
            .saturating_add(64 * 1024)
    }
}

/// Parses `name=peer_host:peer_port:client_host:client_port,...` (DISTRAFT_CLUSTER)
/// into members sorted by name, with ids assigned by position.
pub fn parse_cluster(spec: &str) -> Result<Vec<Member>, ConfigError> {
    const VAR: &str = "DISTRAFT_CLUSTER";
    const SHAPE: &str = "is not name=peer_host:peer_port:client_host:client_port";
    let mut members: Vec<Member> = Vec::new();
    for item in spec
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (name, address) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::new(VAR, item, SHAPE))?;
        let parts: Vec<&str> = address.split(':').map(str::trim).collect();
        let name = name.trim().to_lowercase();
        if name.is_empty() || parts.len() != 4 || parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::new(VAR, item, SHAPE));
        }
        let port = |s: &str| -> Result<u16, ConfigError> {
            match s.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(ConfigError::new(
                    VAR,
                    item,
                    format!("has an invalid port {s:?}"),
                )),
            }
        };
        if members.iter().any(|m| m.name == name) {
            return Err(ConfigError::new(VAR, &name, "is listed twice"));
        }
        members.push(Member {
            id: 0,
            name,
            peer_host: parts[0].to_lowercase(),
            peer_port: port(parts[1])?,
            client_host: parts[2].to_lowercase(),
            client_port: port(parts[3])?,
        });
    }
    if members.is_empty() {
        return Err(ConfigError::new(VAR, spec, "lists no member"));
    }
    // Answers are credited to the member that was called: two members behind one
    // address would count one node's answers twice.
    for (position, member) in members.iter().enumerate() {
        for earlier in &members[..position] {
            let shared = if (&member.peer_host, member.peer_port)
                == (&earlier.peer_host, earlier.peer_port)
            {
                Some(("peer", &member.peer_host, member.peer_port))
            } else if (&member.client_host, member.client_port)
                == (&earlier.client_host, earlier.client_port)
            {
                Some(("client", &member.client_host, member.client_port))
            } else {
                None
            };
            if let Some((kind, host, port)) = shared {
                return Err(ConfigError::new(
                    VAR,
                    &format!("{host}:{port}"),
                    format!(
                        "is the {kind} address of both {} and {}: every member needs its own",
                        earlier.name, member.name
                    ),
                ));
            }
        }
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for (position, member) in members.iter_mut().enumerate() {
        member.id = position as NodeId + 1;
    }
    Ok(members)
}

/// The cluster id every member derives alike, with no coordination: FNV-1a (64-bit)
/// over the members sorted by name (name and client address) and the token. Peer
/// addresses are left out: they are each node's own view of how to reach the others
/// (through a proxy, a NAT, another network), and may differ between members of one
/// cluster; client addresses and names are the same everywhere.
/// A fixed, documented function rather than std's hasher, whose output may change
/// between Rust releases. Not a secret and not authentication (that is TLS's job): it
/// catches a node talking to, or listed by, the wrong cluster. Never 0, which on the
/// wire means "none".
pub fn cluster_id(members: &[Member], token: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = String::from("distraft-cluster-v1\n");
    for m in sorted {
        text.push_str(&format!("{}={}:{}\n", m.name, m.client_host, m.client_port));
    }
    text.push_str("token=");
    text.push_str(token);
    let hash = text.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    hash.max(1)
}

fn parse_host(var: &'static str, raw: &str) -> Result<String, ConfigError> {
    let host = raw.trim().to_lowercase();
    if host.is_empty() {
        return Err(ConfigError::new(var, raw, "is empty"));
    }
    Ok(host)
}

fn parse_port(var: &'static str, raw: &str) -> Result<u16, ConfigError> {
    match raw.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(ConfigError::new(var, raw, "is not a port number (1-65535)")),
    }
}

fn parse_f64(var: &'static str, raw: &str) -> Result<f64, ConfigError> {
    match raw.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(ConfigError::new(var, raw, "is not a number")),
    }
}

/// A positive duration in (possibly fractional) seconds, as the original's floats.
pub(crate) fn parse_seconds(var: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let seconds = parse_f64(var, raw)?;
    if seconds <= 0.0 {
        return Err(ConfigError::new(
            var,
            raw,
            "must be a positive number of seconds",
        ));
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConfigError::new(var, raw, "is not a usable number of seconds"))
}

pub(crate) fn parse_positive(var: &'static str, raw: &str) -> Result<u64, ConfigError> {
    match raw.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError::new(var, raw, "is not a positive integer")),
    }
}

/// The original wrote booleans as `True`/`False`; accept the usual spellings.
/// The TLS files: all three or none (an empty value counts as unset), each loaded and
/// checked now so that a bad file is reported at start-up.
fn parse_tls(args: &TlsArgs) -> Result<Option<Arc<NodeTls>>, ConfigError> {
    fn given(value: &Option<String>) -> Option<&Path> {
        value
            .as_deref()
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .map(Path::new)
    }
    match (given(&args.cert), given(&args.key), given(&args.ca)) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => match NodeTls::load(cert, key, ca) {
            Ok(tls) => Ok(Some(Arc::new(tls))),
            Err(err) => Err(ConfigError::new(
                err.file.var(),
                &err.path.to_string_lossy(),
                err.problem,
            )),
        },
        (cert, key, ca) => {
            let (var, value) = match (cert, key, ca) {
                (None, _, _) => ("DISTRAFT_TLS_CERT", args.cert.as_deref()),
                (_, None, _) => ("DISTRAFT_TLS_KEY", args.key.as_deref()),
                _ => ("DISTRAFT_TLS_CA", args.ca.as_deref()),
            };
            Err(ConfigError::new(
                var,
                value.unwrap_or(""),
                "is not set: DISTRAFT_TLS_CERT, DISTRAFT_TLS_KEY and DISTRAFT_TLS_CA go together \
                 (set all three for TLS, none for plaintext)",
            ))
        }
    }
}

fn parse_bool(var: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" | "on" => Ok(true),
        "false" | "f" | "0" | "no" | "n" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            var,
            raw,
            "is not a boolean (true/false, 1/0, yes/no)",
        )),
    }
}

/// How log lines are written (DISTRAFT_LOG_FORMAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields).
    Json,
}

impl LogFormat {
    fn parse(raw: &str) -> Result<LogFormat, ConfigError> {
        match raw.trim().to_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ConfigError::new(
                "DISTRAFT_LOG_FORMAT",
                raw,
                "is not a log format (text, json)",
            )),
        }
    }
}

/// Maps the original's Python level names onto a tracing filter; anything else must be
/// a valid tracing filter directive (for example `distraft=debug,tonic=info`).
fn parse_log_level(raw: &str) -> Result<String, ConfigError> {
    let level = match raw.trim().to_lowercase().as_str() {
        "critical" | "fatal" | "error" => "error",
        "warning" | "warn" => "warn",
        "info" => "info",
        "debug" => "debug",
        "trace" => "trace",
        _ => {
            // Only `target=level` lists: a lone word would be taken as a target name.
            let directive = raw.trim();
            return match tracing_subscriber::EnvFilter::try_new(directive) {
                Ok(_) if directive.contains('=') => Ok(directive.to_string()),
                _ => Err(ConfigError::new(
                    "DISTRAFT_LOG_LEVEL",
                    raw,
                    "is not a log level (DEBUG, INFO, WARNING, ERROR)",
                )),
            };
        }
    };
    Ok(level.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    #[command(args_override_self = true)]
    struct TestCli {
        #[command(flatten)]
        node: NodeArgs,
    }

    const CLUSTER: &str = "b=127.0.0.1:9002:127.0.0.1:5002,a=127.0.0.1:9001:127.0.0.1:5001,\
                           c=127.0.0.1:9003:127.0.0.1:5003";

    /// Arguments as given on the command line only (the environment of the test process
    /// carries no DISTRAFT_ variable).
    fn args(extra: &[&str]) -> NodeArgs {
        let mut argv = vec!["distraft", "--name", "a", "--cluster", CLUSTER];
        argv.extend_from_slice(extra);
        TestCli::try_parse_from(argv).unwrap().node
    }

    fn error(extra: &[&str]) -> ConfigError {
        Config::from_args(&args(extra)).unwrap_err()
    }

    #[test]
    fn tls_files_go_together() {
        let err = error(&["--tls-cert", "node.pem"]);
        assert_eq!(err.var, "DISTRAFT_TLS_KEY", "{err}");
        let err = error(&["--tls-cert", "node.pem", "--tls-key", "key.pem"]);
        assert_eq!(err.var, "DISTRAFT_TLS_CA", "{err}");
        let err = error(&["--tls-ca", "ca.pem"]);
        assert_eq!(err.var, "DISTRAFT_TLS_CERT", "{err}");
        // All three, but unreadable: one line naming the first file.
        let err = error(&[
            "--tls-cert",
            "/nonexistent/n.pem",
            "--tls-key",
            "k",
            "--tls-ca",
            "c",
        ]);
        assert_eq!(err.var, "DISTRAFT_TLS_CERT", "{err}");
        // Empty values are unset: plaintext.
        let config = Config::from_args(&args(&["--tls-cert", "", "--tls-key", " "])).unwrap();
        assert!(config.tls.is_none());
        assert_eq!(config.peer_uri(config.me()), "http://127.0.0.1:9001");
    }

    #[test]
    fn defaults_match_the_original() {
        let node = TestCli::try_parse_from(["distraft"]).unwrap().node;
        let config = Config::from_args(&node).unwrap();
        assert_eq!(config.name, "default");
        assert_eq!(
            (config.host.as_str(), config.raft_port),
            ("127.0.0.1", 9000)
        );
        assert_eq!(
            (config.client_host.as_str(), config.client_port),
            ("127.0.0.1", 5000)
        );
        assert_eq!(
            config.members.len(),
            1,
            "no cluster given: a single-node cluster"
        );
        assert_eq!(config.id, 1);
        assert_eq!(config.log_dir, PathBuf::from("/etc/distraft/default"));
        assert_eq!(config.timeout_spread_ratio, 2.0);
        assert_eq!(config.heartbeat_timeout, Duration::from_millis(100));
        assert_eq!(config.missed_heartbeats, 5);
        assert_eq!(config.election_timeout, Duration::from_millis(500));
        assert!(!config.reset_logs && !config.pretty_print_responses && !config.web_server_debug);
        assert_eq!(config.log_filter, "info");
        assert_eq!(config.request_rules.max_key_bytes, 4096);
        assert_eq!(config.request_rules.max_value_bytes, 1 << 20);
        assert_eq!(config.request_rules, RequestRules::default());
        assert_eq!(config.quota_bytes, 2 << 30);
    }

    #[test]
    fn the_cluster_id_depends_on_members_and_token_only() {
        let a = Config::from_args(&args(&[])).unwrap();
        let b = Config::from_args(&args(&["--name", "b"])).unwrap();
        assert_eq!(
            a.cluster_id, b.cluster_id,
            "every member derives the same id"
        );
        let token = Config::from_args(&args(&["--cluster-token", "t"])).unwrap();
        assert_ne!(a.cluster_id, token.cluster_id);
        let other = "a=127.0.0.1:9001:127.0.0.1:5001,b=127.0.0.1:9002:127.0.0.1:5002";
        let two = Config::from_args(&args(&["--cluster", other])).unwrap();
        assert_ne!(a.cluster_id, two.cluster_id);
        // Each node's own view of the peer addresses (proxies) does not matter.
        let proxied = "b=127.0.0.1:7002:127.0.0.1:5002,a=127.0.0.1:9001:127.0.0.1:5001,\
                       c=127.0.0.1:7003:127.0.0.1:5003";
        let proxied = Config::from_args(&args(&["--cluster", proxied])).unwrap();
        assert_eq!(a.cluster_id, proxied.cluster_id);
        // Pinned: the id is persisted, so its derivation must never change.
        assert_eq!(format!("{:016x}", a.cluster_id), "210d878a050578b2");
    }

    #[test]
    fn cluster_ids_follow_sorted_names() {
        let config = Config::from_args(&args(&[])).unwrap();
        let names: Vec<(&str, NodeId)> = config
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.id))
            .collect();
        assert_eq!(names, [("a", 1), ("b", 2), ("c", 3)]);
        assert_eq!(config.id, 1);
        assert_eq!(config.me().peer_port, 9001);
        assert_eq!(config.member(3).unwrap().client_port, 5003);
        assert!(config.member(0).is_none() && config.member(4).is_none());
        assert_eq!(config.peers().map(|m| m.id).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(
            config.member_named("b").unwrap().grpc_uri(),
            "http://127.0.0.1:9002"
        );
    }

    #[test]
    fn names_are_case_insensitive_like_the_original() {
        let config = Config::from_args(&args(&["--name", "B "])).unwrap();
        assert_eq!((config.name.as_str(), config.id), ("b", 2));
    }

    #[test]
    fn old_flag_names_still_work() {
        let config =
            Config::from_args(&args(&["--udp-port", "7000", "--tcp-port", "7001"])).unwrap();
        assert_eq!((config.raft_port, config.client_port), (7000, 7001));
    }

    #[test]
    fn timeouts_become_ticks() {
        let raft = Config::from_args(&args(&[])).unwrap().raft_config();
        assert_eq!(raft.heartbeat_ticks, 10);
        assert_eq!(
            (raft.election_ticks_min, raft.election_ticks_max),
            (50, 101)
        );
        assert_eq!(raft.check_quorum_ticks, 50);
        assert_eq!(raft.voters, [1, 2, 3]);

        // Short heartbeats get a finer tick instead of rounding to nothing.
        let config = Config::from_args(&args(&[
            "--heartbeat-timeout",
            "0.004",
            "--election-timeout",
            "0.02",
            "--timeout-spread-ratio",
            "1",
            "--missed-heartbeats",
            "3",
        ]))
        .unwrap();
        assert_eq!(config.tick(), Duration::from_millis(2));
        let raft = config.raft_config();
        assert_eq!(raft.heartbeat_ticks, 2);
        assert_eq!((raft.election_ticks_min, raft.election_ticks_max), (10, 11));
        assert_eq!(raft.check_quorum_ticks, 6);
    }

    #[test]
    fn booleans_and_log_levels() {
        let config = Config::from_args(&args(&[
            "--reset-logs",
            "True",
            "--pretty-print-responses",
            "yes",
            "--web-server-debug",
            "0",
            "--log-level",
            "WARNING",
        ]))
        .unwrap();
        assert!(config.reset_logs && config.pretty_print_responses && !config.web_server_debug);
        assert_eq!(config.log_filter, "warn");
        let config = Config::from_args(&args(&["--log-level", "distraft=debug"])).unwrap();
        assert_eq!(config.log_filter, "distraft=debug");
    }

    #[test]
    fn each_bad_value_is_one_line_naming_the_variable() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--cluster", "x=1.2.3"],
                r#"DISTRAFT_CLUSTER: "x=1.2.3" is not name=peer_host:peer_port:client_host:client_port"#,
            ),
            (
                &["--cluster", "a127.0.0.1:1:h:2"],
                r#"DISTRAFT_CLUSTER: "a127.0.0.1:1:h:2" is not name=peer_host:peer_port:client_host:client_port"#,
            ),
            (
                &["--cluster", "a=h:1:h:x"],
                r#"DISTRAFT_CLUSTER: "a=h:1:h:x" has an invalid port "x""#,
            ),
            (
                &["--cluster", " , "],
                r#"DISTRAFT_CLUSTER: " , " lists no member"#,
            ),
            (
                &["--cluster", "a=h:1:h:2,A=h:3:h:4"],
                r#"DISTRAFT_CLUSTER: "a" is listed twice"#,
            ),
            (
                &["--cluster", "a=h:1:h:2,b=h:1:h:4"],
                r#"DISTRAFT_CLUSTER: "h:1" is the peer address of both a and b: every member needs its own"#,
            ),
            (
                &["--cluster", "a=h:1:h:2,b=h:3:h:2"],
                r#"DISTRAFT_CLUSTER: "h:2" is the client address of both a and b: every member needs its own"#,
            ),
            (
                &["--name", "d"],
                r#"DISTRAFT_NAME: "d" is not in DISTRAFT_CLUSTER (members: a, b, c)"#,
            ),
            (&["--name", " "], r#"DISTRAFT_NAME: " " is empty"#),
            (&["--host", ""], r#"DISTRAFT_HOST: "" is empty"#),
            (
                &["--raft-port", "0"],
                r#"DISTRAFT_UDP_PORT: "0" is not a port number (1-65535)"#,
            ),
            (
                &["--client-port", "70000"],
                r#"DISTRAFT_TCP_PORT: "70000" is not a port number (1-65535)"#,
            ),
            (
                &["--heartbeat-timeout", "abc"],
                r#"DISTRAFT_HEARTBEAT_TIMEOUT: "abc" is not a number"#,
            ),
            (
                &["--heartbeat-timeout=-1"],
                r#"DISTRAFT_HEARTBEAT_TIMEOUT: "-1" must be a positive number of seconds"#,
            ),
            (
                &["--election-timeout", "0"],
                r#"DISTRAFT_ELECTION_TIMEOUT: "0" must be a positive number of seconds"#,
            ),
            (
                &["--election-timeout", "0.05"],
                r#"DISTRAFT_ELECTION_TIMEOUT: "0.05" must be greater than DISTRAFT_HEARTBEAT_TIMEOUT (0.100)"#,
            ),
            (
                &["--election-timeout", "1e300"],
                r#"DISTRAFT_ELECTION_TIMEOUT: "1e300" is not a usable number of seconds"#,
            ),
            (
                &["--timeout-spread-ratio", "0.5"],
                r#"DISTRAFT_TIMEOUT_SPREAD_RATIO: "0.5" must be at least 1.0"#,
            ),
            (
                &["--timeout-spread-ratio", "NaN"],
                r#"DISTRAFT_TIMEOUT_SPREAD_RATIO: "NaN" is not a number"#,
            ),
            (
                &["--missed-heartbeats", "0"],
                r#"DISTRAFT_MISSED_HEARTBEATS: "0" is not a positive integer"#,
            ),
            (
                &["--missed-heartbeats", "99999999999"],
                r#"DISTRAFT_MISSED_HEARTBEATS: "99999999999" is too large"#,
            ),
            (
                &["--reset-logs", "maybe"],
                r#"DISTRAFT_RESET_LOGS: "maybe" is not a boolean (true/false, 1/0, yes/no)"#,
            ),
            (
                &["--pretty-print-responses", "2"],
                r#"DISTRAFT_PRETTY_PRINT_RESPONSES: "2" is not a boolean (true/false, 1/0, yes/no)"#,
            ),
            (
                &["--web-server-debug", ""],
                r#"DISTRAFT_WEB_SERVER_DEBUG: "" is not a boolean (true/false, 1/0, yes/no)"#,
            ),
            (
                &["--log-level", "loud!"],
                r#"DISTRAFT_LOG_LEVEL: "loud!" is not a log level (DEBUG, INFO, WARNING, ERROR)"#,
            ),
            (
                &["--request-timeout", "0"],
                r#"DISTRAFT_REQUEST_TIMEOUT: "0" must be a positive number of seconds"#,
            ),
            (
                &["--max-key-bytes=-4"],
                r#"DISTRAFT_MAX_KEY_BYTES: "-4" is not a positive integer"#,
            ),
            (
                &["--max-value-bytes", "1MiB"],
                r#"DISTRAFT_MAX_VALUE_BYTES: "1MiB" is not a positive integer"#,
            ),
            (
                &["--snapshot-threshold", "0"],
                r#"DISTRAFT_SNAPSHOT_THRESHOLD: "0" is not a positive integer"#,
            ),
        ];
        for (extra, expected) in cases {
            let message = error(extra).to_string();
            assert_eq!(&message, expected, "for {extra:?}");
            assert!(!message.contains('\n'));
        }
    }

    #[test]
    fn a_multiline_value_still_gives_one_line() {
        assert!(!error(&["--raft-port", "1\n2"]).to_string().contains('\n'));
    }
}
