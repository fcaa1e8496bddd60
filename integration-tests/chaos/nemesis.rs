//! The nemesis: from a seed, injects faults at random moments and heals each after a
//! random while. At most a minority of the nodes is faulty at any moment, so a majority
//! can always make progress once it has elected a leader; everything is healed at the
//! end.
//!
//! The seed fixes every choice (which fault, which nodes, how long); the moments they
//! meet the real processes still vary from run to run.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use rand::{rngs::SmallRng, seq::IteratorRandom, Rng, SeedableRng};

use crate::cluster::ChaosCluster;
use crate::harness::{eventually, CONVERGE};
use crate::proxy::Flow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `kill -9`, restarted from its files when healed.
    Kill,
    /// Admin.Stop, Admin.Start when healed.
    AdminStop,
    /// SIGSTOP, SIGCONT when healed.
    Pause,
    /// A random minority against the rest.
    Partition,
    /// One node can only talk, or only listen, to all or one of the others.
    OneWay,
    /// The leader (and maybe one follower) alone.
    IsolateLeader,
    /// Two halves that cannot talk to each other, and one node that talks to both.
    Bridge,
    /// Not a fault but an operator: a healthy node is asked to move leadership, to a
    /// random member or to the most up-to-date one (Admin.TransferLeader).
    Transfer,
    /// An operator replacing a member whose disk is gone: a healthy node is asked to
    /// remove it (the safety check may refuse), then it comes back with no data and
    /// joins as a new member of the same name (DISTRAFT_JOIN), and is promoted.
    Replace,
}

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Kill,
        Kind::AdminStop,
        Kind::Pause,
        Kind::Partition,
        Kind::OneWay,
        Kind::IsolateLeader,
        Kind::Bridge,
        Kind::Transfer,
        Kind::Replace,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::AdminStop => "admin-stop",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::OneWay => "one-way",
            Kind::IsolateLeader => "isolate-leader",
            Kind::Bridge => "bridge",
            Kind::Transfer => "transfer",
            Kind::Replace => "replace",
        }
    }
}
/// A fault lasts this long (milliseconds): from shorter than an election timeout to
/// long enough for the rest to elect, write and compact past the faulty node.
const FAULT_MS: std::ops::Range<u64> = 200..6000;
/// Between two attempts to inject a fault (milliseconds).
const GAP_MS: std::ops::Range<u64> = 100..2000;

enum Fault {
    Kill(usize),
    Stop(usize),
    Pause(usize),
    /// The network's rules; only one network fault is active at a time.
    Network,
    /// A node replaced by a fresh member: faulty until it has joined and caught up.
    Rejoin(usize),
}

struct Active {
    fault: Fault,
    /// The nodes that may not be able to take part while this fault lasts.
    faulty: BTreeSet<usize>,
    heal_at: Instant,
}

pub struct Nemesis {
    rng: SmallRng,
    started: Instant,
    active: Vec<Active>,
    /// Faults injected, by kind.
    pub injected: BTreeMap<&'static str, usize>,
}

impl Nemesis {
    pub fn new(seed: u64, started: Instant) -> Nemesis {
        Nemesis {
            rng: SmallRng::seed_from_u64(seed),
            started,
            active: Vec::new(),
            injected: BTreeMap::new(),
        }
    }

    /// Injects and heals faults until `until`, then heals everything.
    pub async fn run(&mut self, cluster: &mut ChaosCluster, until: Instant) {
        let mut next_injection = Instant::now();
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let due: Vec<usize> = (0..self.active.len())
                .filter(|&i| self.active[i].heal_at <= now)
                .collect();
            for i in due.into_iter().rev() {
                let active = self.active.remove(i);
                self.heal(cluster, active).await;
            }
            if now >= next_injection {
                self.inject(cluster).await;
                next_injection = Instant::now() + self.millis(GAP_MS);
            }
            let wake = self
                .active
                .iter()
                .map(|a| a.heal_at)
                .fold(next_injection.min(until), Instant::min);
            tokio::time::sleep_until(wake.into()).await;
        }
        while let Some(active) = self.active.pop() {
            self.heal(cluster, active).await;
        }
        self.restore_members(cluster).await;
    }

    fn millis(&mut self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(self.rng.random_range(range))
    }

    fn log(&self, what: std::fmt::Arguments) {
        println!(
            "[{:7.3}s] nemesis: {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Picks a fault that keeps the faulty nodes a minority, and injects it.
    async fn inject(&mut self, cluster: &mut ChaosCluster) {
        let size = cluster.size();
        let minority = (size - 1) / 2;
        let faulty: BTreeSet<usize> = self.active.iter().flat_map(|a| a.faulty.clone()).collect();
        let network_busy = self
            .active
            .iter()
            .any(|a| matches!(a.fault, Fault::Network));
        let kind = Kind::ALL[self.rng.random_range(0..Kind::ALL.len())];
        let healthy = (0..size).filter(|i| !faulty.contains(i));

        let (fault, new_faulty, cuts) = match kind {
            Kind::Replace => {
                if faulty.len() >= minority {
                    return;
                }
                let healthy: Vec<usize> = healthy.collect();
                let (Some(&node), Some(&asked)) = (
                    healthy.iter().choose(&mut self.rng),
                    healthy.iter().choose(&mut self.rng),
                ) else {
                    return;
                };
                let (name, asked_name) = (cluster.name(node).to_string(), cluster.name(asked));
                match cluster.remove_member(asked, node).await {
                    Ok(()) => {
                        self.log(format_args!("removed {name} (asked of {asked_name})"));
                        cluster.rejoin_fresh(node);
                    }
                    Err(why) => {
                        self.log(format_args!(
                            "removing {name} (asked of {asked_name}): {why}"
                        ));
                        *self.injected.entry("replace-refused").or_default() += 1;
                        return;
                    }
                }
                (Fault::Rejoin(node), BTreeSet::from([node]), Vec::new())
            }
            Kind::Transfer => {
                let Some(asked) = healthy.choose(&mut self.rng) else {
                    return;
                };
                let to = self
                    .rng
                    .random_bool(0.7)
                    .then(|| self.rng.random_range(0..size));
                let target = to.map_or("any", |t| cluster.name(t)).to_string();
                let answer = cluster.transfer_leader(asked, to).await;
                let asked = cluster.name(asked);
                match answer {
                    Ok(leader) => self.log(format_args!(
                        "transfer to {target} asked of {asked}: {leader} leads"
                    )),
                    Err(status) => self.log(format_args!(
                        "transfer to {target} asked of {asked}: {status}"
                    )),
                }
                *self.injected.entry(kind.name()).or_default() += 1;
                return;
            }
            Kind::Kill | Kind::AdminStop | Kind::Pause => {
                if faulty.len() >= minority {
                    return;
                }
                let Some(node) = healthy.choose(&mut self.rng) else {
                    return;
                };
                let fault = match kind {
                    Kind::Kill => Fault::Kill(node),
                    Kind::AdminStop => Fault::Stop(node),
                    _ => Fault::Pause(node),
                };
                (fault, BTreeSet::from([node]), Vec::new())
            }
            _ if network_busy => return,
            _ => {
                let Some((side, cuts)) = self.partition(cluster, kind).await else {
                    return;
                };
                (Fault::Network, side, cuts)
            }
        };
        if faulty.union(&new_faulty).count() > minority {
            return;
        }
        match &fault {
            Fault::Kill(node) => cluster.kill(*node),
            Fault::Stop(node) => {
                // A Stop that got no answer may still have happened: healing starts it
                // either way (Start is idempotent).
                if let Err(status) = cluster.admin_stop(*node).await {
                    self.log(format_args!("admin-stop {}: {status}", cluster.name(*node)));
                }
            }
            Fault::Pause(node) => cluster.pause(*node),
            // Done above: removed and started anew.
            Fault::Rejoin(_) => {}
            Fault::Network => {
                let flow = Flow::FAULTS[self.rng.random_range(0..Flow::FAULTS.len())];
                cluster.network().apply(&cuts, flow);
                let cuts: Vec<String> = cuts
                    .iter()
                    .map(|&(a, b)| format!("{}->{}", cluster.name(a), cluster.name(b)))
                    .collect();
                self.log(format_args!(
                    "{} ({flow:?}) cuts {}",
                    kind.name(),
                    cuts.join(" ")
                ));
            }
        }
        // A replaced node counts as faulty for as long as a fault may last: joining
        // and catching up take a few seconds, under the other faults.
        let heal_at = match fault {
            Fault::Rejoin(_) => Instant::now() + Duration::from_millis(FAULT_MS.end),
            _ => Instant::now() + self.millis(FAULT_MS),
        };
        let names: Vec<&str> = new_faulty.iter().map(|&i| cluster.name(i)).collect();
        self.log(format_args!(
            "{} {names:?} for {:.1}s",
            kind.name(),
            (heal_at - Instant::now()).as_secs_f64()
        ));
        *self.injected.entry(kind.name()).or_default() += 1;
        self.active.push(Active {
            fault,
            faulty: new_faulty,
            heal_at,
        });
    }

    /// A network fault of `kind`: the nodes cut off from the connected majority, and the
    /// directions to block ("messages from a never reach b").
    async fn partition(
        &mut self,
        cluster: &ChaosCluster,
        kind: Kind,
    ) -> Option<(BTreeSet<usize>, Vec<(usize, usize)>)> {
        let size = cluster.size();
        let minority = (size - 1) / 2;
        let everyone = 0..size;
        let both_ways = |side: &BTreeSet<usize>| -> Vec<(usize, usize)> {
            let mut cuts = Vec::new();
            for &a in side {
                for b in (0..size).filter(|b| !side.contains(b)) {
                    cuts.extend([(a, b), (b, a)]);
                }
            }
            cuts
        };
        match kind {
            Kind::Partition => {
                let count = self.rng.random_range(1..=minority);
                let side: BTreeSet<usize> = everyone
                    .choose_multiple(&mut self.rng, count)
                    .into_iter()
                    .collect();
                let cuts = both_ways(&side);
                Some((side, cuts))
            }
            Kind::OneWay => {
                let node = self.rng.random_range(0..size);
                let others: Vec<usize> = everyone.filter(|&i| i != node).collect();
                let targets = match self.rng.random_bool(0.5) {
                    true => others,
                    false => vec![others[self.rng.random_range(0..others.len())]],
                };
                let mute = self.rng.random_bool(0.5);
                let cuts = targets
                    .into_iter()
                    .map(|other| if mute { (node, other) } else { (other, node) })
                    .collect();
                Some((BTreeSet::from([node]), cuts))
            }
            // It keeps its post for a few heartbeats while the majority elects another.
            Kind::IsolateLeader => {
                let leader = cluster.leader().await?;
                let mut side = BTreeSet::from([leader]);
                if minority >= 2 && self.rng.random_bool(0.5) {
                    let other = everyone.filter(|&i| i != leader).choose(&mut self.rng)?;
                    side.insert(other);
                }
                let cuts = both_ways(&side);
                Some((side, cuts))
            }
            Kind::Bridge => {
                let mut order: Vec<usize> = everyone.collect();
                let bridge = order.remove(self.rng.random_range(0..order.len()));
                let left: BTreeSet<usize> = order
                    .iter()
                    .copied()
                    .choose_multiple(&mut self.rng, order.len() / 2)
                    .into_iter()
                    .collect();
                let right: BTreeSet<usize> =
                    order.into_iter().filter(|i| !left.contains(i)).collect();
                let cuts = left
                    .iter()
                    .flat_map(|&a| right.iter().flat_map(move |&b| [(a, b), (b, a)]))
                    .collect();
                self.log(format_args!("bridge through {}", cluster.name(bridge)));
                // From the bridge and the left, the right is the faulty side.
                Some((right, cuts))
            }
            Kind::Kill | Kind::AdminStop | Kind::Pause | Kind::Transfer | Kind::Replace => None,
        }
    }

    async fn heal(&mut self, cluster: &mut ChaosCluster, active: Active) {
        match active.fault {
            Fault::Kill(node) => {
                cluster.restart(node);
                self.log(format_args!("restarted {}", cluster.name(node)));
            }
            Fault::Stop(node) => {
                let started = eventually(CONVERGE, || async {
                    cluster.admin_start(node).await.map_err(|s| s.to_string())
                })
                .await;
                if let Err(error) = started {
                    let name = cluster.name(node);
                    cluster.fail(&format!("Admin.Start of {name} kept failing: {error}"));
                }
                self.log(format_args!("started {}", cluster.name(node)));
            }
            Fault::Pause(node) => {
                cluster.resume(node);
                self.log(format_args!("resumed {}", cluster.name(node)));
            }
            Fault::Network => {
                cluster.network().heal();
                self.log(format_args!("healed the network"));
            }
            Fault::Rejoin(node) => {
                self.log(format_args!(
                    "{} rejoined, as a new member",
                    cluster.name(node)
                ));
            }
        }
    }

    /// After the last heal: every node a voter again. A removal whose answer was lost
    /// may have happened anyway; such a node is replaced as the nemesis would have.
    async fn restore_members(&mut self, cluster: &mut ChaosCluster) {
        let names: Vec<String> = (0..cluster.size())
            .map(|i| cluster.name(i).to_string())
            .collect();
        let view = eventually(CONVERGE, || async {
            let leader = cluster.leader().await.ok_or("no leader")?;
            cluster.members_seen_by(leader).await
        })
        .await;
        let Ok(view) = view else {
            cluster.fail(&format!("no member list after healing: {view:?}"));
        };
        for (i, name) in names.iter().enumerate() {
            if !view.contains_key(name) {
                self.log(format_args!("{name} was removed: it joins again"));
                cluster.rejoin_fresh(i);
            }
        }
        let all_voters = eventually(CONVERGE, || async {
            let leader = cluster.leader().await.ok_or("no leader")?;
            let view = cluster.members_seen_by(leader).await?;
            match names.iter().all(|n| view.get(n) == Some(&true)) {
                true => Ok(()),
                false => Err(format!("members: {view:?}")),
            }
        })
        .await;
        if let Err(why) = all_voters {
            cluster.fail(&format!(
                "the replaced nodes never became voters again: {why}"
            ));
        }
    }
}
