//! Liveness and readiness, as `GET /livez` and `GET /readyz` answer them (the
//! Kubernetes and etcd conventions): a list of named checks, each passing or failing
//! with a reason, rendered as text (`[+]name ok`, `[-]name failed: why`).
//!
//! - live: the process answers and its driver turns (it answered a status request in
//!   time). A stopped node (`GET /stop`) is live: restarting its process would not help.
//! - ready: live, and able to serve clients: taking part in Raft, a leader known,
//!   applied within a small lag of the commit index, storage without alarm; and, with
//!   DISTRAFT_BACKUP_MAX_AGE, on the leader, a scheduled backup young enough.

use crate::proto::v1::StatusResponse;

/// Committed entries a ready node may still have to apply.
pub const READY_MAX_APPLY_LAG: u64 = 1000;

/// One named check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Result<(), String>,
}

impl Check {
    fn new(name: &'static str, passed: bool, why: impl FnOnce() -> String) -> Check {
        let outcome = match passed {
            true => Ok(()),
            false => Err(why()),
        };
        Check { name, outcome }
    }
}

/// The driver's answer to a status request, or why there was none.
pub type DriverAnswer<'a> = Result<&'a StatusResponse, String>;

/// The checks of `/livez`.
pub fn liveness(driver: DriverAnswer) -> Vec<Check> {
    vec![driver_check(&driver)]
}

/// The checks of `/readyz`. Without a status every later check fails as well.
pub fn readiness(driver: DriverAnswer) -> Vec<Check> {
    let mut checks = vec![driver_check(&driver)];
    let Ok(status) = driver else {
        for name in ["up", "leader", "applied", "storage"] {
            checks.push(Check::new(name, false, || {
                "no status from the driver".into()
            }));
        }
        return checks;
    };
    checks.push(Check::new("up", status.up, || {
        match status.alarm.is_empty() {
            true => "the node is stopped (GET /start starts it)".into(),
            false => format!("out of Raft: alarm {}", status.alarm),
        }
    }));
    checks.push(Check::new("leader", !status.leader.is_empty(), || {
        "no leader known".into()
    }));
    let apply_lag = status.commit_index.saturating_sub(status.last_applied);
    checks.push(Check::new(
        "applied",
        apply_lag <= READY_MAX_APPLY_LAG,
        || {
            format!(
                "{apply_lag} committed entries not applied yet (more than {READY_MAX_APPLY_LAG})"
            )
        },
    ));
    checks.push(Check::new("storage", status.alarm.is_empty(), || {
        format!("alarm {}: the disk is full", status.alarm)
    }));
    // Only with DISTRAFT_BACKUP_MAX_AGE, and only on the node that runs the schedule.
    if let Some(backup) = status.backup.as_ref().filter(|b| b.max_age_seconds > 0.0) {
        checks.push(Check::new("backup", !backup.overdue, || {
            let newest = match backup.newest_file.is_empty() {
                true => "no backup yet".to_string(),
                false => format!("the newest is {:.0}s old", backup.newest_age_seconds),
            };
            let error = match backup.last_error.is_empty() {
                true => String::new(),
                false => format!("; last attempt: {}", backup.last_error),
            };
            format!(
                "{newest}, more than DISTRAFT_BACKUP_MAX_AGE ({:.0}s){error}",
                backup.max_age_seconds
            )
        }));
    }
    checks
}

fn driver_check(driver: &DriverAnswer) -> Check {
    Check {
        name: "driver",
        outcome: driver.as_ref().map(|_| ()).map_err(|why| why.clone()),
    }
}

/// Whether every check passed, and the answer's text: `ok` alone when everything
/// passed and `verbose` is off; otherwise one line per check and a verdict, as
/// Kubernetes does (`what` is `livez` or `readyz`).
pub fn render(what: &str, checks: &[Check], verbose: bool) -> (bool, String) {
    let passed = checks.iter().all(|check| check.outcome.is_ok());
    if passed && !verbose {
        return (true, "ok\n".to_string());
    }
    let mut text = String::new();
    for check in checks {
        match &check.outcome {
            Ok(()) => text.push_str(&format!("[+]{} ok\n", check.name)),
            Err(why) => text.push_str(&format!("[-]{} failed: {why}\n", check.name)),
        }
    }
    match passed {
        true => text.push_str(&format!("{what} check passed\n")),
        false => text.push_str(&format!("{what} check failed\n")),
    }
    (passed, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> StatusResponse {
        StatusResponse {
            up: true,
            leader: "server1".into(),
            commit_index: 10,
            last_applied: 10,
            ..StatusResponse::default()
        }
    }

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks
            .iter()
            .filter(|c| c.outcome.is_err())
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_healthy_node_is_live_and_ready() {
        let status = healthy();
        assert!(failed(&readiness(Ok(&status))).is_empty());
        assert_eq!(
            render("readyz", &readiness(Ok(&status)), false),
            (true, "ok\n".into())
        );
        let (ok, text) = render("readyz", &readiness(Ok(&status)), true);
        assert!(ok);
        assert_eq!(
            text,
            "[+]driver ok\n[+]up ok\n[+]leader ok\n[+]applied ok\n[+]storage ok\nreadyz check passed\n"
        );
    }

    #[test]
    fn each_check_fails_for_its_reason() {
        let stopped = StatusResponse {
            up: false,
            leader: String::new(),
            ..healthy()
        };
        assert_eq!(failed(&readiness(Ok(&stopped))), ["up", "leader"]);
        assert!(failed(&liveness(Ok(&stopped))).is_empty());

        let no_leader = StatusResponse {
            leader: String::new(),
            ..healthy()
        };
        assert_eq!(failed(&readiness(Ok(&no_leader))), ["leader"]);

        let behind = StatusResponse {
            commit_index: 10 + READY_MAX_APPLY_LAG + 1,
            ..healthy()
        };
        assert_eq!(failed(&readiness(Ok(&behind))), ["applied"]);

        let full = StatusResponse {
            up: false,
            alarm: "NOSPACE".into(),
            ..healthy()
        };
        assert_eq!(failed(&readiness(Ok(&full))), ["up", "storage"]);

        let none: DriverAnswer = Err("no answer within 1s".into());
        assert_eq!(failed(&liveness(none.clone())), ["driver"]);
        let (ok, text) = render("readyz", &readiness(none), false);
        assert!(!ok);
        assert!(
            text.starts_with("[-]driver failed: no answer within 1s\n"),
            "{text}"
        );
        assert!(text.ends_with("readyz check failed\n"), "{text}");
    }
}
