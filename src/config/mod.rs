//! Node configuration: the original `distraft-config.env` variables (same names, meanings
//! and defaults), each also a command-line flag, plus a few new ones.
//!
//! Clap collects raw strings (flag > environment > default); [`Config::from_args`] then
//! validates them, so that every mistake is reported as one line naming the variable and
//! the offending value, whichever way it was given.

mod args;
pub(crate) mod cluster;
pub(crate) mod parse;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use args::{NodeArgs, TlsArgs};
use cluster::own_id;
pub use cluster::{cluster_id, parse_cluster, Member};
pub use parse::{ConfigError, LogFormat};

use crate::access::Access;
use crate::limits::Limits;
use crate::raft::{self, Membership, NodeId};
use crate::registry::{Record, Registry};
use crate::tls::NodeTls;
use crate::validation::RequestRules;
use parse::*;

/// How often the driver ticks the Raft core, unless heartbeats are so short that a
/// finer tick is needed (see [`Config::tick`]).
const DEFAULT_TICK: Duration = Duration::from_millis(10);
/// Per follower: AppendEntries batches in flight before the leader waits for answers.
const MAX_INFLIGHT_MSGS: usize = 64;
/// Bytes of entries per AppendEntries batch (a single larger entry still goes alone).
const MAX_MSG_BYTES: usize = 1024 * 1024;

/// The validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub id: NodeId,
    pub host: String,
    pub raft_port: u16,
    pub client_host: String,
    pub client_port: u16,
    /// The bootstrap members: the voters the cluster's log starts from. Sorted by
    /// name; a member's id is its position + 1, so every node that has the same list
    /// derives the same ids. A node that joined a running cluster has the list it was
    /// given when it joined ([`Config::adopt`]). Who the members are *now* is the
    /// registry's to say.
    pub members: Vec<Member>,
    /// This node's own entry.
    own: Member,
    /// DISTRAFT_JOIN: client URLs of members to ask for membership at the first start
    /// (empty: bootstrap from DISTRAFT_CLUSTER).
    pub join: Vec<String>,
    /// DISTRAFT_AUTO_PROMOTE.
    pub auto_promote: bool,
    /// How to reach the members' HTTPS gateways when joining: this node's CA and
    /// certificate, when TLS is on.
    pub join_tls: crate::tls::ClientTlsArgs,
    /// The live member registry (the one part of the configuration that changes while
    /// the node runs: membership changes; see `registry.rs`). Here because every layer
    /// that names or reaches a member already holds the configuration.
    pub registry: Registry,
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
    /// DISTRAFT_BACKUP_*: scheduled backups, if any.
    pub backups: Option<BackupSchedule>,
    /// DISTRAFT_BACKUP_RATE: bytes per second all backups share; `None`: no limit.
    pub backup_rate: Option<u64>,
    /// DISTRAFT_RESTORE_FROM: a backup to make the data directory from at the first
    /// start.
    pub restore_from: Option<PathBuf>,
}

/// Scheduled backups: while a node leads, one every `interval` into `dir`.
#[derive(Debug, Clone)]
pub struct BackupSchedule {
    pub dir: PathBuf,
    pub interval: Duration,
    pub keep: usize,
    /// Readiness fails on the leader once its newest backup is older.
    pub max_age: Option<Duration>,
}

/// The most backups a schedule may keep.
const MAX_BACKUP_KEEP: u64 = 10_000;
/// The largest DISTRAFT_BACKUP_RATE, in MiB/s (faster than any disk here: 0 means no
/// limit).
const MAX_BACKUP_RATE_MIB: u64 = 1024 * 1024;

/// DISTRAFT_BACKUP_RATE, MiB/s, into bytes per second (`None`: 0, no limit).
fn parse_backup_rate(raw: &str) -> Result<Option<u64>, ConfigError> {
    const VAR: &str = "DISTRAFT_BACKUP_RATE";
    match raw.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(mib) if mib <= MAX_BACKUP_RATE_MIB => Ok(Some(mib * 1024 * 1024)),
        Ok(_) => Err(ConfigError::new(
            VAR,
            raw,
            format!("is more than {MAX_BACKUP_RATE_MIB} MiB/s (0: no limit)"),
        )),
        Err(_) => Err(ConfigError::new(
            VAR,
            raw,
            "is not a whole number of MiB/s (0: no limit)",
        )),
    }
}

impl BackupSchedule {
    fn from_args(args: &args::BackupArgs) -> Result<Option<BackupSchedule>, ConfigError> {
        let dir = args.backup_dir.trim();
        let interval = parse_seconds("DISTRAFT_BACKUP_INTERVAL", &args.backup_interval)?;
        let keep = parse_positive("DISTRAFT_BACKUP_KEEP", &args.backup_keep)?;
        if keep > MAX_BACKUP_KEEP {
            return Err(ConfigError::new(
                "DISTRAFT_BACKUP_KEEP",
                &args.backup_keep,
                format!("is more than {MAX_BACKUP_KEEP}"),
            ));
        }
        let max_age = match args.backup_max_age.trim() {
            "" => None,
            raw => Some(parse_seconds("DISTRAFT_BACKUP_MAX_AGE", raw)?),
        };
        if dir.is_empty() {
            if max_age.is_some() {
                return Err(ConfigError::new(
                    "DISTRAFT_BACKUP_MAX_AGE",
                    &args.backup_max_age,
                    "needs DISTRAFT_BACKUP_DIR (no backups are scheduled)",
                ));
            }
            return Ok(None);
        }
        Ok(Some(BackupSchedule {
            dir: PathBuf::from(dir),
            interval,
            keep: keep as usize,
            max_age,
        }))
    }
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
        let id = own_id(&members, &name, &args.name)?;
        let timeouts = Timeouts::from_args(args)?;

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

        let own = members
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .ok_or_else(|| ConfigError::new("DISTRAFT_NAME", &args.name, "has no entry"))?;
        let registry = bootstrap_registry(&members);
        let join = parse_join(&args.join)?;
        let tls_path = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let join_tls = crate::tls::ClientTlsArgs {
            cacert: tls_path(&args.tls.ca),
            cert: tls_path(&args.tls.cert),
            key: tls_path(&args.tls.key),
        };
        Ok(Config {
            join,
            auto_promote: parse_bool("DISTRAFT_AUTO_PROMOTE", &args.auto_promote)?,
            join_tls,
            id,
            own,
            registry,
            log_dir: PathBuf::from(args.log_path.trim()).join(&name),
            data_dir: PathBuf::from(args.data_path.trim()).join(&name),
            name,
            host,
            raft_port,
            client_host,
            client_port,
            members,
            timeout_spread_ratio: timeouts.spread_ratio,
            heartbeat_timeout: timeouts.heartbeat,
            missed_heartbeats: timeouts.missed_heartbeats,
            election_timeout: timeouts.election,
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
            backups: BackupSchedule::from_args(&args.backups)?,
            backup_rate: parse_backup_rate(&args.backups.backup_rate)?,
            restore_from: Some(args.backups.restore_from.trim())
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
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

    /// Member `id`'s name, for logs and answers ("?" for an id never recorded).
    pub fn name_of(&self, id: NodeId) -> String {
        self.registry
            .roster()
            .member(id)
            .map_or_else(|| "?".to_string(), |m| m.name.clone())
    }

    /// This node's own entry.
    pub fn me(&self) -> &Member {
        &self.own
    }

    /// Makes this the configuration of a node that joined a running cluster (or
    /// restarts after joining): its id and the cluster's, the bootstrap voters its log
    /// starts from, and the members it was told of.
    pub fn adopt(
        &mut self,
        id: NodeId,
        cluster_id: u64,
        bootstrap: Vec<Member>,
        known: impl IntoIterator<Item = Record>,
    ) {
        self.id = id;
        self.own.id = id;
        self.cluster_id = cluster_id;
        // Where this node's own DISTRAFT_CLUSTER names a member, its addresses are
        // this node's view of it (through a proxy, a NAT): they win over the view in
        // the answer.
        let configured = std::mem::take(&mut self.members);
        let own_view = |mut member: Member| {
            if let Some(mine) = configured.iter().find(|m| m.name == member.name) {
                member.peer_host.clone_from(&mine.peer_host);
                member.peer_port = mine.peer_port;
            }
            member
        };
        let bootstrap: Vec<Member> = bootstrap.into_iter().map(own_view).collect();
        self.registry = bootstrap_registry(&bootstrap);
        self.registry.learn(known.into_iter().map(|record| Record {
            member: own_view(record.member),
            ..record
        }));
        self.registry.learn([Record {
            member: self.own.clone(),
            auto_promote: false,
        }]);
        self.members = bootstrap;
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

/// The Raft timing settings, checked against each other.
struct Timeouts {
    spread_ratio: f64,
    heartbeat: Duration,
    missed_heartbeats: u32,
    election: Duration,
}

impl Timeouts {
    fn from_args(args: &NodeArgs) -> Result<Timeouts, ConfigError> {
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
        Ok(Timeouts {
            spread_ratio: timeout_spread_ratio,
            heartbeat: heartbeat_timeout,
            missed_heartbeats,
            election: election_timeout,
        })
    }
}

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

/// DISTRAFT_JOIN: comma-separated http(s):// URLs.
fn parse_join(raw: &str) -> Result<Vec<String>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            let valid = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() <= 2048
                && url.chars().all(|c| c.is_ascii_graphic());
            match valid {
                true => Ok(url.trim_end_matches('/').to_string()),
                false => Err(ConfigError::new(
                    "DISTRAFT_JOIN",
                    url,
                    "is not an http:// or https:// URL of a member's client port",
                )),
            }
        })
        .collect()
}

/// A registry of the bootstrap voters.
fn bootstrap_registry(members: &[Member]) -> Registry {
    let records = members.iter().map(|m| Record {
        member: m.clone(),
        auto_promote: false,
    });
    Registry::new(
        records,
        Membership::with_voters(members.iter().map(|m| m.id)),
    )
}
