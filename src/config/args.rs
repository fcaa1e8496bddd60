//! The node's flags and variables as clap collects them: raw strings, validated by
//! [`super::Config::from_args`].

use crate::access::AccessArgs;
use crate::limits::LimitArgs;

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
    /// Join a running cluster at the first start: client URLs of some of its members
    /// (comma-separated; any of them, followers pass the request on). This node asks
    /// to be added as a learner with the addresses of its own entry in
    /// DISTRAFT_CLUSTER (which may name only itself), adopts the cluster's id, and
    /// catches up. Ignored once the data directory holds an identity.
    #[arg(long = "join", env = "DISTRAFT_JOIN", default_value = "")]
    pub join: String,
    /// With DISTRAFT_JOIN: the leader promotes this node to voter by itself once it
    /// has caught up (true), or it stays a learner until `distraft member promote`.
    #[arg(
        long = "auto-promote",
        env = "DISTRAFT_AUTO_PROMOTE",
        default_value = "true"
    )]
    pub auto_promote: String,
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
    /// Scheduled backups, and a restore at the first start.
    #[command(flatten)]
    pub backups: BackupArgs,
}

/// Scheduled backups (docs/operations.md, "Backups"), and the restore of a new
/// member at its first start.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BackupArgs {
    /// While this node leads, write a backup into this directory every
    /// DISTRAFT_BACKUP_INTERVAL, keeping the newest DISTRAFT_BACKUP_KEEP (empty: no
    /// scheduled backups).
    #[arg(long, env = "DISTRAFT_BACKUP_DIR", default_value = "")]
    pub backup_dir: String,
    /// Seconds between scheduled backups.
    #[arg(long, env = "DISTRAFT_BACKUP_INTERVAL", default_value = "3600")]
    pub backup_interval: String,
    /// How many scheduled backups to keep (the oldest are deleted).
    #[arg(long, env = "DISTRAFT_BACKUP_KEEP", default_value = "7")]
    pub backup_keep: String,
    /// With DISTRAFT_BACKUP_DIR: the leader's /readyz fails once its newest backup is
    /// older than this many seconds (empty: never), so that backups that stopped are
    /// noticed.
    #[arg(long, env = "DISTRAFT_BACKUP_MAX_AGE", default_value = "")]
    pub backup_max_age: String,
    /// MiB/s that all backups this node streams or writes share (0: as fast as their
    /// readers take them), so that a backup leaves the machine to the writes.
    #[arg(long, env = "DISTRAFT_BACKUP_RATE", default_value = "50")]
    pub backup_rate: String,
    /// At the first start (no data yet), make this node's data directory from this
    /// backup file, as `distraft restore` does; ignored once the directory holds data.
    #[arg(long, env = "DISTRAFT_RESTORE_FROM", default_value = "")]
    pub restore_from: String,
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
