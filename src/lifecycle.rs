//! A node's lifecycle: starting its parts (storage and driver, the gRPC server on the
//! raft port, the peer links, and the HTTP gateway on the client port), waiting for
//! SIGTERM/SIGINT or a fatal failure, then shutting the parts down in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::dashboard::{Dashboard, MemberList, RemoteMember};
use crate::driver;
use crate::gateway::{self, Backend, GatewaySettings};
use crate::plant::{self, Plant};
use crate::rpc::{self, ClientServices, Peers};
use crate::storage::identity::{self, Identity};
use crate::storage::Storage;

/// How long shutdown waits for each part to finish what is in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs a node until SIGTERM/SIGINT (then shuts down cleanly and returns `Ok`) or a
/// fatal failure (returns the error).
pub async fn run_node(mut config: Config) -> anyhow::Result<()> {
    let (_dir_lock, list_check) = open_data_dir(&mut config).await?;
    let config = Arc::new(config);

    // Bind first: a port in use is the most common start-up failure.
    let raft_listener = bind(
        &config.host,
        config.raft_port,
        "DISTRAFT_HOST:DISTRAFT_UDP_PORT",
    )
    .await?;
    let client_listener = bind(
        &config.client_host,
        config.client_port,
        "DISTRAFT_CLIENT_HOST:DISTRAFT_TCP_PORT",
    )
    .await?;
    let grpc_addr = raft_listener.local_addr()?;

    let (peers, peer_tasks) = Peers::new(config.clone()).context("creating the peer links")?;
    let (driver, mut driver_done) =
        driver::spawn(config.clone(), peers.clone()).with_context(|| {
            format!(
                "opening storage in {} and {}",
                config.log_dir.display(),
                config.data_dir.display()
            )
        })?;
    peer_tasks.run(driver.clone());
    if let Some(check) = list_check {
        if let Err(err) = check.against(&config) {
            driver.shutdown();
            return Err(err);
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    // Ends when stop_rx turns true (at once without DISTRAFT_BACKUP_DIR).
    let backups = Arc::new(crate::backup::Backups::new(&config));
    tokio::spawn(crate::backup::schedule::run(
        config.clone(),
        driver.clone(),
        backups.clone(),
        stop_rx.clone(),
    ));
    let (services, backend) = client_backend(&config, &driver, peers, backups, &stop_rx);
    let mut grpc = tokio::spawn(rpc::serve(
        config.clone(),
        driver.clone(),
        services,
        raft_listener,
        stop_rx.clone(),
    ));
    let mut http = tokio::spawn(gateway::serve(
        gateway_settings(&config),
        client_listener,
        config.tls.as_ref().map(|tls| tls.gateway_acceptor()),
        backend,
        rpc::server::stopped(stop_rx),
    ));
    info!(
        name = %config.name,
        id = config.id,
        members = config.members.len(),
        tls = config.tls.is_some(),
        "serving gRPC on {grpc_addr} and {} on {}:{}",
        if config.tls.is_some() { "HTTPS" } else { "HTTP" },
        config.client_host,
        config.client_port
    );

    // A oneshot receiver must not be polled again once it has answered (tokio
    // panics "called after complete"), so remember whether the driver already ended.
    let mut driver_ended = false;
    let failure = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            info!("signal received: shutting down");
            hand_leadership_over(&driver, &config).await;
            None
        }
        result = &mut driver_done => Some({
            driver_ended = true;
            match result {
            Ok(Ok(())) => anyhow::anyhow!("the driver stopped unexpectedly"),
            // Its message already ends in the cause: not chained again.
            Ok(Err(err)) => anyhow::anyhow!("the Raft driver failed: {err}"),
            Err(_) => anyhow::anyhow!("the Raft driver thread died"),
        }}),
        result = &mut grpc => Some(match result {
            Ok(Ok(())) => anyhow::anyhow!("the gRPC server stopped unexpectedly"),
            Ok(Err(err)) => err.context("the gRPC server failed"),
            Err(err) => anyhow::Error::new(err).context("the gRPC server task failed"),
        }),
        result = &mut http => Some(anyhow::anyhow!("the HTTP gateway stopped unexpectedly ({result:?})")),
    };

    // Stop taking requests, then let the driver fail whatever is still pending (its
    // storage is synced at every turn, so nothing acknowledged is left unsynced), and
    // give the servers a moment to send those answers.
    let _ = stop_tx.send(true);
    driver.shutdown();
    if !driver_ended
        && tokio::time::timeout(SHUTDOWN_GRACE, &mut driver_done)
            .await
            .is_err()
    {
        error!("the driver did not stop in time");
    }
    finish("gRPC server", &mut grpc).await;
    finish("HTTP gateway", &mut http).await;
    match failure {
        Some(err) => Err(err),
        None => {
            info!("shut down cleanly");
            Ok(())
        }
    }
}

/// Checks this node's entry in the member list, takes the data directory's lock (held
/// until the returned guard is dropped, across Admin.Stop/Start, which reopen storage
/// in this process), checks or adopts the cluster identity, and carries out
/// DISTRAFT_RESET_LOGS: all before anything in the directory is read. A node that
/// joined (or joins now: DISTRAFT_JOIN with no identity yet) takes the id, cluster id
/// and bootstrap voters the cluster gave it.
pub(crate) async fn open_data_dir(
    config: &mut Config,
) -> anyhow::Result<(Option<crate::storage::DirLock>, Option<ListCheck>)> {
    let me = config.me();
    if (me.peer_port, me.client_port) != (config.raft_port, config.client_port) {
        warn!(
            "DISTRAFT_CLUSTER lists {} with ports {}/{}, but this node listens on {}/{}: \
             peers and clients following the cluster list will miss it",
            config.name, me.peer_port, me.client_port, config.raft_port, config.client_port
        );
    }
    // Before anything in them is read or wiped: one process per data directory.
    let dir_lock = match plant::active(Plant::NoDirLock) {
        true => None,
        false => Some(crate::storage::DirLock::acquire(&[
            &config.log_dir,
            &config.data_dir,
        ])?),
    };
    if let Some(backup) = &config.restore_from {
        if crate::backup::restore::clear_unfinished(config)? {
            warn!("DISTRAFT_RESTORE_FROM: an earlier restore did not finish; starting it over");
        }
        match crate::backup::restore::holds_data(config)? {
            Some(found) => info!(
                "DISTRAFT_RESTORE_FROM is ignored: the node has data ({} exists)",
                found.display()
            ),
            None => {
                let restored = crate::backup::restore::restore_locked(backup, config)
                    .context("DISTRAFT_RESTORE_FROM")?;
                info!(
                    backup = %backup.display(),
                    index = restored.checked.header.index,
                    keys = restored.checked.summary.keys,
                    "restored from a backup: a new cluster"
                );
            }
        }
    }
    // Before anything touches the data directory (the reset included): refuse to
    // start on another cluster's data, or adopt the configured identity at the first
    // start.
    let joining = !config.join.is_empty();
    let mut list_check = None;
    match identity::establish(config, &config.data_dir, joining)? {
        Identity::Reconfigured {
            bootstrap,
            cluster_id,
            mismatch,
        } => {
            // A wipe must not run on a list that may turn out not to be this node's:
            // refused before anything in the directory is touched.
            if config.reset_logs {
                return Err(mismatch.into());
            }
            let configured = config.members.clone();
            let own = bootstrap
                .iter()
                .find(|m| m.name == config.name)
                .map(|m| m.id)
                .ok_or(mismatch)?;
            let bootstrap_list = bootstrap.clone();
            config.adopt(own, cluster_id, bootstrap, []);
            list_check = Some(ListCheck {
                configured,
                bootstrap: bootstrap_list,
            });
        }
        Identity::Bootstrapped => {
            if joining {
                info!("DISTRAFT_JOIN is ignored: this node's data directory holds its identity");
            }
        }
        Identity::Joined(joined) => adopt(config, joined),
        Identity::Derived { cluster_id, joined } => {
            if let Some(joined) = joined {
                adopt(config, joined);
            }
            info!(
                cluster_id = format!("{cluster_id:016x}"),
                "a cluster made from another's data (restored, or forced new)"
            );
            config.cluster_id = cluster_id;
        }
        Identity::Unset => {
            let joined = crate::join::join(config).await?;
            identity::record_join(config, &config.data_dir, &joined)?;
            adopt(config, joined);
        }
    }
    if config.reset_logs {
        let bootstrap = crate::raft::Membership::with_voters(config.members.iter().map(|m| m.id));
        let changed = Storage::membership_changed(&driver::storage_options(config), &bootstrap)
            .context("DISTRAFT_RESET_LOGS: reading the membership the node's files record")?;
        // A wiped node restarts from the bootstrap membership: with another in force
        // it would count votes by the wrong members (with one bootstrap voter, it
        // would elect itself).
        if changed || !is_bootstrap_member(config) {
            bail!(
                "DISTRAFT_RESET_LOGS refused: this cluster's membership changed since it \
                 was bootstrapped (or this node joined it later), and a wiped node would \
                 restart from the bootstrap membership. Replace the member instead: \
                 `distraft member remove {}`, delete its data and log directories, and \
                 start it with DISTRAFT_JOIN (docs/operations.md, \"Replacing a dead \
                 member\")",
                config.name
            );
        }
        let wiped = Storage::reset(&driver::storage_options(config))
            .context("DISTRAFT_RESET_LOGS: wiping the log and data")?;
        if wiped {
            info!("reset: log and snapshots wiped; term and vote kept");
        } else {
            info!("reset: no log or snapshot to wipe");
        }
    }
    Ok((dir_lock, list_check))
}

/// A DISTRAFT_CLUSTER other than the bootstrap list: it must be the current
/// membership, which is known once storage is open.
pub(crate) struct ListCheck {
    configured: Vec<crate::config::Member>,
    bootstrap: Vec<crate::config::Member>,
}

impl ListCheck {
    fn against(&self, config: &Config) -> anyhow::Result<()> {
        let roster = config.registry.roster();
        let key = |m: &crate::config::Member| {
            (
                m.name.clone(),
                (m.peer_host.clone(), m.peer_port),
                (m.client_host.clone(), m.client_port),
            )
        };
        let current: std::collections::BTreeSet<_> = roster.current().map(key).collect();
        let configured: std::collections::BTreeSet<_> = self.configured.iter().map(key).collect();
        if current == configured {
            info!("DISTRAFT_CLUSTER lists the current members (not the bootstrap list): fine");
            return Ok(());
        }
        let list = |members: &mut dyn Iterator<Item = &crate::config::Member>| {
            members
                .map(|m| {
                    format!(
                        "{}={}:{}:{}:{}",
                        m.name, m.peer_host, m.peer_port, m.client_host, m.client_port
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        bail!(
            "DISTRAFT_CLUSTER is neither the list this node was bootstrapped with ({}) nor \
             the current membership ({}): start with one of them. Change the membership \
             with `distraft member add|promote|remove` (docs/operations.md), not with \
             DISTRAFT_CLUSTER",
            list(&mut self.bootstrap.iter()),
            list(&mut roster.current())
        )
    }
}

/// Whether this node is one of the bootstrap voters (not one that joined later).
fn is_bootstrap_member(config: &Config) -> bool {
    config.members.iter().any(|m| m.id == config.id)
}

/// Takes what the cluster told this node when it joined.
fn adopt(config: &mut Config, joined: identity::Joined) {
    info!(
        id = joined.id,
        cluster_id = format!("{:016x}", joined.cluster_id),
        "a member that joined a running cluster"
    );
    config.adopt(joined.id, joined.cluster_id, joined.bootstrap, joined.known);
}

/// The client services (Kv, Admin) and what the gateway serves from them, the
/// dashboard included.
fn client_backend(
    config: &Arc<Config>,
    driver: &driver::DriverHandle,
    peers: Peers,
    backups: Arc<crate::backup::Backups>,
    stop_rx: &watch::Receiver<bool>,
) -> (ClientServices, Backend) {
    let members: crate::dashboard::Members = {
        let (config, peers) = (config.clone(), peers.clone());
        Arc::new(move || {
            let roster = config.registry.roster();
            let others = roster
                .current()
                .filter(|member| member.id != config.id)
                .filter_map(|member| {
                    let admin = peers.admin_client(member.id)?;
                    Some(RemoteMember {
                        name: member.name.clone(),
                        admin,
                    })
                })
                .collect();
            let learners = roster
                .membership
                .learners
                .iter()
                .filter_map(|id| roster.member(*id))
                .map(|m| m.name.clone())
                .collect();
            MemberList { others, learners }
        })
    };
    let services = ClientServices::new(config.clone(), driver.clone(), peers, backups);
    let dashboard = Dashboard::new(
        config.name.clone(),
        services.admin.clone(),
        members,
        config.access.bearer(),
        stop_rx.clone(),
    );
    let backend = Backend {
        kv: services.kv.clone(),
        admin: services.admin.clone(),
        dashboard: Arc::new(dashboard),
    };
    (services, backend)
}

/// The gateway's share of the configuration.
fn gateway_settings(config: &Config) -> GatewaySettings {
    GatewaySettings {
        request_rules: config.request_rules,
        request_timeout: config.request_timeout,
        pretty: config.pretty_print_responses,
        access: config.access.clone(),
        body_read_timeout: config.limits.body_read_timeout,
        max_connections: config.limits.max_http_connections,
    }
}

/// A leader asked to stop first hands leadership to the most up-to-date follower, so
/// that a rolling restart costs no election (the others would otherwise wait out an
/// election timeout first). Bounded: the core abandons a transfer after an election
/// timeout, and this waits at most two; meanwhile the node still serves, and writes
/// wait for the new leader.
async fn hand_leadership_over(driver: &driver::DriverHandle, config: &Config) {
    if *driver.leader_watch().borrow() != Some(config.id) {
        return;
    }
    // One bound for the whole hand-over, even if the driver never answers (a disk
    // that hangs): stopping waits no longer than this for it.
    let within = config.election_timeout * 2;
    let until = tokio::time::Instant::now() + within;
    let Ok(begun) = tokio::time::timeout_at(until, driver.transfer_leader(None)).await else {
        warn!("the driver did not begin a hand-over within {within:?}; stopping anyway");
        return;
    };
    let left = until.saturating_duration_since(tokio::time::Instant::now());
    match begun {
        Ok(target) => match driver.other_leader(config.id, left).await {
            Some(leader) => info!(
                leader = config.name_of(leader),
                "handed leadership over before stopping"
            ),
            None => warn!(
                to = config.name_of(target),
                "leadership was not taken over within {within:?}; stopping anyway"
            ),
        },
        // A single-member cluster, or the post lost meanwhile: nothing to hand over.
        Err(err) => info!("not handing leadership over: {err}"),
    }
}

/// Waits, bounded, for a server task to finish the requests in flight.
async fn finish<T>(name: &str, task: &mut tokio::task::JoinHandle<T>) {
    if !task.is_finished() && tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
        warn!("the {name} did not finish its requests in time");
    }
}

async fn bind(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("{what}: cannot listen on {host}:{port}"))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
