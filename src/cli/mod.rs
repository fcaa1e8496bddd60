//! Client subcommands of the `distraft` binary (running it with no subcommand starts a
//! node instead, as `python server.py` did).
//!
//! `status`, `get`, `put` and `delete` talk to one node's HTTP gateway, exactly as `curl
//! -L` would; `cluster` launches a local cluster (3 nodes with the example configuration);
//! `certs` makes a development CA and certificates for a cluster with TLS; `bench` is the
//! load generator (the `distraft-bench` crate) with distraft's and etcd's clients.

mod backup;
mod bench;
mod certs;
mod client;
mod cluster;
mod watch;

pub use client::{key_url, kv_url, new_idempotency_key};

use clap::{Args, Subcommand};

/// A client subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a node's status (`GET /`).
    Status(Target),
    /// Check that a node is ready to serve (`GET /readyz?verbose`): prints each check
    /// and exits non-zero unless all pass (the docker-compose healthcheck).
    Ready(Target),
    /// Read a key (`GET /v1/kv/<key>`); linearizable unless --stale.
    Get {
        #[command(flatten)]
        target: Target,
        /// The key to read.
        key: String,
        /// Serve the read from the node's own state machine: faster, maybe stale.
        #[arg(long)]
        stale: bool,
    },
    /// Set a key (`POST /v1/kv/<key>` with `value=<value>`); answers once committed.
    Put {
        #[command(flatten)]
        target: Target,
        /// The key to set.
        key: String,
        /// Its new value (non-empty).
        value: String,
        #[command(flatten)]
        condition: WriteCondition,
        #[command(flatten)]
        retry: RetryKey,
    },
    /// Remove a key (`DELETE /v1/kv/<key>`); answers once committed.
    Delete {
        #[command(flatten)]
        target: Target,
        /// The key to remove.
        key: String,
        /// Only if the key was last written at this index (its mod_index, the ETag of
        /// its answers): `If-Match: "<INDEX>"`. Else 412 and nothing is removed.
        #[arg(long, value_name = "INDEX")]
        if_match: Option<u64>,
        #[command(flatten)]
        retry: RetryKey,
    },
    /// Compare keys and write one branch atomically (`POST /v1/txn`): TXN is the
    /// transaction's JSON, `{"compare": [...], "success": [...], "failure": [...]}`
    /// (docs/api.md), or `-` to read it from standard input. Prints the answer.
    Txn {
        #[command(flatten)]
        target: Target,
        /// The transaction as JSON, or `-` for standard input.
        txn: String,
        #[command(flatten)]
        retry: RetryKey,
    },
    /// List keys in order (`GET /v1/keys`, page after page): one JSON object per line
    /// with the key, its value and its versions.
    List {
        #[command(flatten)]
        target: Target,
        /// Only the keys that begin with it.
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many keys in all (default: every one).
        #[arg(long)]
        limit: Option<u64>,
        /// Leave the values out.
        #[arg(long)]
        keys_only: bool,
        /// Serve from the node's own state machine: faster, maybe stale.
        #[arg(long)]
        stale: bool,
    },
    /// Follow the changes of a key, or with --prefix of every key under it
    /// (`GET /v1/watch`, long-poll after long-poll): one JSON object per line per
    /// change, and a `resync` line before a resync's keys. Resumes by itself from the
    /// last index seen after a dropped connection.
    Watch {
        #[command(flatten)]
        target: Target,
        /// The key (with --prefix: the prefix; "" watches every key).
        key: String,
        /// Watch every key that begins with KEY.
        #[arg(long)]
        prefix: bool,
        /// The first index of interest (default: from now).
        #[arg(long)]
        index: Option<u64>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Save a backup of the cluster's state into FILE (`GET /v1/backup`), as of an
    /// index at least that of every write acknowledged before (unless --stale);
    /// written atomically (FILE.part, checked, fsynced, renamed). With --check, only
    /// check FILE (header, length, checksum, every pair), contacting no node.
    Backup {
        #[command(flatten)]
        target: Target,
        /// The backup file.
        file: std::path::PathBuf,
        /// Check FILE instead of making it.
        #[arg(long)]
        check: bool,
        /// Any snapshot the node has, without asking the leader: may miss the latest
        /// writes.
        #[arg(long)]
        stale: bool,
    },
    /// Make the data directory of one member of a NEW cluster from a backup (run it
    /// for every member of DISTRAFT_CLUSTER, with the same backup, list and token,
    /// then start them): a new cluster id, so it can never be taken for the original.
    /// The file is checked before anything is written; the directories must be empty.
    Restore(Box<RestoreArgs>),
    /// Disaster recovery after losing a majority for good: make this stopped member a
    /// cluster of one that keeps its data (every entry its log holds), with a new
    /// cluster id; then start it, and let new members join it with DISTRAFT_JOIN.
    /// Refused while a quorum of the voters can still be reached (it names them).
    /// Run with the member's own configuration (docs/operations.md).
    ForceNewCluster(Box<NodeOnly>),
    /// Leadership: `distraft leader transfer [--to NAME]`.
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// Membership: `distraft member list|add|promote|remove` (docs/operations.md).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Start a local cluster (3 nodes with the example env file): one process per member
    /// of its DISTRAFT_CLUSTER; print the curl lines to try; stop every node on Ctrl-C.
    Cluster(cluster::ClusterArgs),
    /// Make a development CA, a node certificate for the given hosts and a client
    /// certificate (for DISTRAFT_TLS_CERT/KEY/CA, curl --cacert, grpcurl -cert).
    Certs(certs::CertsArgs),
    /// Load-test a cluster (distraft over HTTP or gRPC, or etcd's v2 API), measure
    /// failover, or find the leader; see `distraft bench --help`.
    Bench(Box<bench::BenchArgs>),
}

/// `distraft restore FILE` and the new member's configuration (DISTRAFT_NAME,
/// DISTRAFT_CLUSTER, DISTRAFT_CLUSTER_TOKEN, DISTRAFT_DATA_PATH, DISTRAFT_LOG_PATH, or
/// their flags).
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: std::path::PathBuf,
    #[command(flatten)]
    pub node: crate::config::NodeArgs,
}

/// A member's own configuration (DISTRAFT_NAME, DISTRAFT_CLUSTER, the paths...).
#[derive(Debug, Args)]
pub struct NodeOnly {
    #[command(flatten)]
    pub node: crate::config::NodeArgs,
}

/// `distraft leader ...`
#[derive(Debug, Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to another member (`POST /cluster/leader`), on any node: the
    /// leader brings the target up to date and tells it to campaign; writes meanwhile
    /// wait and go to the new leader. Prints the new leader once it is known.
    Transfer {
        #[command(flatten)]
        target: Target,
        /// The member to hand over to (its DISTRAFT_NAME); by default the one whose log
        /// is the most up to date.
        #[arg(long)]
        to: Option<String>,
    },
}

/// `distraft member ...`: on any node (a follower passes changes on to the leader).
/// Every change passes the safety check first and is refused, with the reason, when
/// it would leave the reachable voters short of a quorum; `--force` makes it anyway,
/// `--dry-run` only prints the assessment.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// The members, voters and learners, with their ids (`GET /cluster/members`).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Add a member (`POST /cluster/members`); start it afterwards with
    /// DISTRAFT_JOIN, or let it join by itself (DISTRAFT_JOIN does this step).
    Add {
        #[command(flatten)]
        target: Target,
        /// Its name (its DISTRAFT_NAME).
        name: String,
        /// Its Raft address, host:port.
        #[arg(long)]
        peer: String,
        /// Its client (HTTP) address, host:port.
        #[arg(long)]
        client: String,
        /// As a learner: it receives the log but does not vote until promoted.
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        change: ChangeFlags,
    },
    /// Make a learner a voter (`POST /cluster/members/NAME/promote`).
    Promote {
        #[command(flatten)]
        target: Target,
        name: String,
        #[command(flatten)]
        change: ChangeFlags,
    },
    /// Remove a voter or a learner (`DELETE /cluster/members/NAME`).
    Remove {
        #[command(flatten)]
        target: Target,
        name: String,
        #[command(flatten)]
        change: ChangeFlags,
    },
}

/// The options of every membership change.
#[derive(Debug, Args)]
pub struct ChangeFlags {
    /// Make the change even if the safety check advises against it.
    #[arg(long)]
    pub force: bool,
    /// Only print the safety check's assessment; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The node a client subcommand talks to.
#[derive(Debug, Args)]
pub struct Target {
    /// The node's HTTP URL (its DISTRAFT_CLIENT_HOST:DISTRAFT_TCP_PORT); https:// for a
    /// node with TLS (with --cacert).
    #[arg(long, env = "DISTRAFT_URL", default_value = "http://127.0.0.1:5001")]
    pub url: String,
    /// The cluster's API token (DISTRAFT_API_TOKEN), sent as `Authorization: Bearer`.
    #[arg(long, env = "DISTRAFT_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
}

/// The idempotency key of `distraft put` and `delete`: the write is sent with it and,
/// when its answer is lost (no answer, or 503), sent again with it, so that it is
/// applied once (the second answer is the first outcome, `Idempotent-Replayed: true`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RetryKey {
    /// The `Idempotency-Key` to send (default: a new random one). Give the key of an
    /// earlier attempt to learn its outcome without applying it twice.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
}

impl RetryKey {
    fn key(self) -> String {
        self.idempotency_key
            .unwrap_or_else(client::new_idempotency_key)
    }
}

/// The condition of `distraft put`: at most one of them.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(multiple = false)]
pub struct WriteCondition {
    /// Only if the key was last written at this index (its mod_index, the ETag of its
    /// answers): `If-Match: "<INDEX>"`. Else 412 and nothing is written.
    #[arg(long, value_name = "INDEX")]
    if_match: Option<u64>,
    /// Only if the key does not exist (create only): `If-None-Match: *`.
    #[arg(long)]
    if_absent: bool,
}

impl WriteCondition {
    /// The conditional header it sends, if any.
    fn header(&self) -> Option<(&'static str, String)> {
        match (self.if_match, self.if_absent) {
            (Some(index), _) => Some(("if-match", format!("\"{index}\""))),
            (None, true) => Some(("if-none-match", "*".to_string())),
            (None, false) => None,
        }
    }
}

/// Runs a client subcommand.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status(target) => client::status(&target).await,
        Command::Ready(target) => client::ready(&target).await,
        Command::Get { target, key, stale } => client::get(&target, &key, stale).await,
        Command::Put {
            target,
            key,
            value,
            condition,
            retry,
        } => client::put(&target, &key, &value, condition.header(), &retry.key()).await,
        Command::Delete {
            target,
            key,
            if_match,
            retry,
        } => {
            let condition = if_match.map(|index| ("if-match", format!("\"{index}\"")));
            client::delete(&target, &key, condition, &retry.key()).await
        }
        Command::List {
            target,
            prefix,
            limit,
            keys_only,
            stale,
        } => client::list(&target, &prefix, limit, keys_only, stale).await,
        Command::Watch {
            target,
            key,
            prefix,
            index,
            count,
        } => watch::watch(&target, &key, prefix, index, count).await,
        Command::Txn { target, txn, retry } => client::txn(&target, &txn, &retry.key()).await,
        Command::Backup {
            target,
            file,
            check,
            stale,
        } => match check {
            true => backup::check(&file),
            false => backup::backup(&target, &file, stale).await,
        },
        Command::Restore(args) => backup::restore(&args.file, &args.node),
        Command::ForceNewCluster(args) => backup::force_new_cluster(&args.node).await,
        Command::Leader(LeaderCommand::Transfer { target, to }) => {
            client::transfer_leader(&target, to.as_deref()).await
        }
        Command::Member(command) => client::member(command).await,
        Command::Cluster(args) => cluster::run(args).await,
        Command::Certs(args) => certs::run(args),
        Command::Bench(args) => bench::run(*args).await,
    }
}
