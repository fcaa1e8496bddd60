//! Failover time: with writes probing the survivors at a steady, light rate, kill the
//! leader's process and measure how long until a survivor acknowledges a write sent
//! after the kill.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{Connection, Protocol};

/// What a failover measurement does (the survivors and protocol are the caller's).
#[derive(Debug, Args)]
pub struct Failover {
    /// The leader's process id, killed with SIGKILL.
    #[arg(long)]
    pub kill_pid: i32,
    /// Milliseconds between two probe writes (each probe is sent on its own, whether
    /// or not earlier ones were answered).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub interval_ms: u64,
    /// Seconds of probing before the kill (the cluster must acknowledge at least one).
    #[arg(long, default_value_t = 1.0, value_parser = crate::positive_seconds)]
    pub warmup: f64,
    /// Seconds to wait for a survivor's acknowledgement after the kill.
    #[arg(long, default_value_t = 30.0, value_parser = crate::positive_seconds)]
    pub max_wait: f64,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The result, as JSON; `N` names the protocol.
#[derive(Debug, Serialize)]
pub struct FailoverReport<N> {
    pub target: N,
    pub survivors: Vec<String>,
    pub killed_pid: i32,
    /// From the kill to the first acknowledgement of a write sent after it.
    pub failover_ms: f64,
    /// Probe writes acknowledged before the kill.
    pub acknowledged_before_kill: u64,
}

/// How long to wait for a killed process to be gone (it takes microseconds normally).
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// Whether process `pid` has exited: no longer listed, or a zombie waiting to be
/// reaped. Where there is no /proc, it is presumed gone.
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (command) state ...`; the command may contain spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// What a probe reports: when it was acknowledged, and whether it was sent after the
/// kill.
struct Ack {
    at: Instant,
    after_kill: bool,
}

/// Measures failover with probes to the nodes at `survivors`, prints the result (and
/// writes it as JSON with --json).
pub async fn run<P: Protocol>(
    protocol: &P,
    survivors: Vec<String>,
    failover: &Failover,
) -> anyhow::Result<()> {
    let report = execute(protocol, survivors, failover).await?;
    println!(
        "{:?}: first write acknowledged {:.0} ms after kill -9 of pid {}",
        report.target, report.failover_ms, report.killed_pid
    );
    if let Some(path) = &failover.json {
        crate::write_json(path, &report)?;
    }
    Ok(())
}

/// Probes, kills and measures.
pub async fn execute<P: Protocol>(
    protocol: &P,
    survivors: Vec<String>,
    failover: &Failover,
) -> anyhow::Result<FailoverReport<P::Name>> {
    if failover.kill_pid <= 1 {
        bail!("--kill-pid {} is not a process to kill", failover.kill_pid);
    }
    let connections = survivors
        .iter()
        .map(|url| protocol.open(url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if connections.is_empty() {
        bail!("no survivor URL to probe");
    }
    // Set once the leader is gone; probes sent from then on count.
    let killed_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let (acks, mut acked) = mpsc::unbounded_channel::<Ack>();
    let value = Arc::new(P::Connection::encode("failover-probe")?);

    let prober = {
        let killed_at = killed_at.clone();
        let interval = Duration::from_millis(failover.interval_ms);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                ticks.tick().await;
                let mut connection = connections[n as usize % connections.len()].clone();
                let acks = acks.clone();
                let after_kill = killed_at.get().is_some();
                let value = value.clone();
                tokio::spawn(async move {
                    let key = format!("failover-{n}");
                    if connection.put(&key, &value).await.is_ok() {
                        let _ = acks.send(Ack {
                            at: Instant::now(),
                            after_kill,
                        });
                    }
                });
            }
        })
    };

    let outcome = measure(failover, &killed_at, &mut acked).await;
    prober.abort();
    let (delay, acknowledged_before_kill) = outcome?;
    Ok(FailoverReport {
        target: protocol.name(),
        survivors,
        killed_pid: failover.kill_pid,
        failover_ms: delay.as_secs_f64() * 1000.0,
        acknowledged_before_kill,
    })
}

/// Warms up, kills, and waits for the first acknowledgement of a probe sent after the
/// kill. Returns that delay and how many probes were acknowledged before the kill.
async fn measure(
    failover: &Failover,
    killed_at: &OnceLock<Instant>,
    acked: &mut mpsc::UnboundedReceiver<Ack>,
) -> anyhow::Result<(Duration, u64)> {
    let kill_at = tokio::time::Instant::now() + Duration::from_secs_f64(failover.warmup);
    let mut before_kill = 0u64;
    loop {
        tokio::select! {
            ack = acked.recv() => {
                if ack.is_some() {
                    before_kill += 1;
                }
            }
            _ = tokio::time::sleep_until(kill_at) => break,
        }
    }
    if before_kill == 0 {
        bail!(
            "no probe write was acknowledged during the {} s warm-up; is the cluster up?",
            failover.warmup
        );
    }

    // SAFETY: kill(2) has no memory effects; the pid is the caller's choice, as with
    // `kill -9 <pid>`.
    let killed = unsafe { libc::kill(failover.kill_pid, libc::SIGKILL) };
    let at = Instant::now();
    if killed != 0 {
        bail!(
            "kill -9 {}: {}",
            failover.kill_pid,
            std::io::Error::last_os_error()
        );
    }
    // SIGKILL is delivered asynchronously: count only probes sent once the process is
    // gone, so that no write its last moments acknowledged can pass for a failover.
    let gone_by = tokio::time::Instant::now() + EXIT_WAIT;
    while !is_gone(failover.kill_pid) && tokio::time::Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = killed_at.set(at);

    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(failover.max_wait);
    loop {
        let ack = tokio::time::timeout_at(deadline, acked.recv())
            .await
            .ok()
            .flatten();
        match ack {
            Some(Ack {
                at: acked_at,
                after_kill: true,
            }) => return Ok((acked_at.saturating_duration_since(at), before_kill)),
            Some(_) => {}
            None => bail!(
                "no survivor acknowledged a write within {} s of the kill",
                failover.max_wait
            ),
        }
    }
}
