//! `distraft force-new-cluster`: disaster recovery after losing a majority for good.
//! One surviving member, stopped, becomes a cluster of one that keeps its data; new
//! members then join it with DISTRAFT_JOIN as usual (etcd's `--force-new-cluster`).
//!
//! What it does, in order:
//! 1. refuses unless the member's data directory holds data, it may vote (a wiped
//!    member that has not caught up since may lack committed entries), and fewer than
//!    a quorum of the current voters, counting itself, can be reached now: while a
//!    quorum is reachable the cluster can still decide, and members must be replaced
//!    one by one instead (`distraft member remove`, then a join). Reachable means its
//!    Raft port accepts a TCP connection within [`PROBE_TIMEOUT`]; it names the
//!    members it reached;
//! 2. applies every entry its log holds, committed or not as far as it knows (an
//!    entry past its commit index may have been committed by the lost majority; one
//!    that was not was never acknowledged, so it is a write whose outcome its client
//!    did not learn);
//! 3. records a new cluster id derived from the old one (identity format 3), so that
//!    the old members, should one come back, can never talk to the new cluster;
//! 4. writes a snapshot of that state at its last entry with itself as the only
//!    voter, through the same durable steps as any snapshot (the log before it goes).

use std::net::ToSocketAddrs;
use std::time::Duration;

use anyhow::{bail, Context};
use tracing::info;

use crate::config::Config;
use crate::kv::Kv;
use crate::plant::{self, Plant};
use crate::raft::{Membership, NodeId, RawNode, SnapshotMeta};
use crate::storage::identity::{self, Origin, OriginKind};
use crate::storage::Storage;

/// How long a member's Raft port has to accept a connection to count as reachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the recovery did.
#[derive(Debug)]
pub struct Forced {
    pub index: u64,
    pub keys: u64,
    pub cluster_id: u64,
    /// The voters it could not reach (by name).
    pub lost: Vec<String>,
}

/// Makes `config`'s member a cluster of one.
pub async fn force_new_cluster(mut config: Config) -> anyhow::Result<Forced> {
    if config.reset_logs || config.restore_from.is_some() {
        bail!("DISTRAFT_RESET_LOGS and DISTRAFT_RESTORE_FROM must be unset for a recovery");
    }
    if !config.data_dir.join(identity::IDENTITY_FILE).exists() {
        bail!(
            "{} holds no member's data: there is nothing to recover here",
            config.data_dir.display()
        );
    }
    // The same checks a start makes (one process per directory, the right cluster).
    let (_lock, _) = crate::lifecycle::open_data_dir(&mut config).await?;
    let (mut storage, recovered) = Storage::open(crate::driver::storage_options(&config))
        .context("opening the member's storage")?;
    let mut kv = match &recovered.snapshot {
        Some(file) => Kv::read_image(file.open_data()?)?,
        None => Kv::new(),
    };
    config.registry.learn(kv.members().cloned());
    let entries = recovered.restored.entries.clone();
    let snapshot = recovered.restored.snapshot.clone();
    let node = RawNode::new(config.raft_config(), recovered.restored, 0);
    config.registry.set_membership(node.membership());
    let membership = node.membership().clone();
    if !node.may_vote() {
        bail!(
            "this member was wiped (DISTRAFT_RESET_LOGS) and has not caught up with a \
             leader since: it may lack committed entries. Recover another survivor"
        );
    }
    if !membership.voters.contains(&config.id) {
        bail!("this member is not a voter of the cluster: recover a voter");
    }
    let (reached, lost) = probe(&config, &membership).await;
    let names =
        |ids: &[NodeId]| -> Vec<String> { ids.iter().map(|id| config.name_of(*id)).collect() };
    if reached.len() + 1 >= membership.quorum()
        && !plant::active(Plant::ForceIgnoresReachableQuorum)
    {
        bail!(
            "refused: {} of the {} voters can be reached ({}, and this member): the cluster \
             still has a quorum. Replace the lost members one by one instead (`distraft \
             member remove`, then join new ones: docs/operations.md)",
            reached.len() + 1,
            membership.voters.len(),
            names(&reached).join(", "),
        );
    }
    let (mut index, mut term) = snapshot.map_or((0, 0), |s| (s.index, s.term));
    for entry in &entries {
        kv.apply_entry(entry);
        (index, term) = (entry.index, entry.term);
    }
    if index == 0 {
        bail!("this member's log is empty: there is nothing to recover");
    }
    let origin = Origin {
        kind: OriginKind::ForceNewCluster,
        from_cluster: config.cluster_id,
        index,
        base: config.cluster_id,
    };
    let cluster_id = identity::record_origin(&config, &config.data_dir, origin)?;
    let meta = SnapshotMeta {
        index,
        term,
        membership: Membership::with_voters([config.id]),
    };
    let mut writer = storage.begin_snapshot(meta)?;
    kv.capture()
        .write(&mut writer)
        .context("writing the snapshot")?;
    storage
        .finish_snapshot(writer)
        .context("making the snapshot durable")?;
    info!(index, keys = kv.len(), "forced a new cluster of one");
    Ok(Forced {
        index,
        keys: kv.len() as u64,
        cluster_id,
        lost: names(&lost),
    })
}

/// The other voters whose Raft port answers, and those whose port does not.
async fn probe(config: &Config, membership: &Membership) -> (Vec<NodeId>, Vec<NodeId>) {
    let roster = config.registry.roster();
    let mut reached = Vec::new();
    let mut lost = Vec::new();
    for &id in membership.voters.iter().filter(|&&id| id != config.id) {
        let answers = match roster.member(id) {
            Some(member) => {
                let address = format!("{}:{}", member.peer_host, member.peer_port);
                connects(&address).await
            }
            None => false,
        };
        match answers {
            true => reached.push(id),
            false => lost.push(id),
        }
    }
    (reached, lost)
}

async fn connects(address: &str) -> bool {
    let Ok(mut addresses) = address.to_socket_addrs() else {
        return false;
    };
    let Some(address) = addresses.next() else {
        return false;
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}
