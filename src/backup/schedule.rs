//! Scheduled backups (DISTRAFT_BACKUP_DIR): while this node leads, a backup every
//! DISTRAFT_BACKUP_INTERVAL into the directory, the newest DISTRAFT_BACKUP_KEEP kept.
//! Only the leader writes: a node that becomes leader takes the schedule over from
//! the newest backup it finds in its directory (one is due at once if that is older
//! than the interval, or if there is none). What the schedule knows is shown in
//! `GET /` and Admin.Status (`backup`), as metrics, and in `/readyz` when
//! DISTRAFT_BACKUP_MAX_AGE is set: the leader is not ready once its newest backup is
//! older, so that backups that stopped are noticed.
//!
//! Files: `distraft-<cluster id, 16 hex digits>-<index, 20 digits>.backup`, written as
//! `.<name>.part`, fsynced, renamed, the directory fsynced. Other files, and backups
//! of other clusters, are left alone.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::format::{BackupHeader, HEADER_BYTES};
use super::pace::Pace;
use super::stream::header_of;
use super::Backups;
use crate::config::{BackupSchedule, Config};
use crate::driver::{BackupSource, DriverHandle};
use crate::proto::v1::BackupStatus;

/// How often the schedule looks at the clock and the leadership.
const POLL: Duration = Duration::from_secs(1);
/// After a failed backup, the next attempt waits this long (or the interval, if
/// shorter), so that a full disk is not hammered.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The longest a scheduled backup may wait for its snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(300);
/// Bytes read and written at a time (and paced as one).
const COPY_CHUNK: usize = 1024 * 1024;

/// The newest backup in the directory.
#[derive(Debug, Clone)]
struct Newest {
    path: PathBuf,
    index: u64,
    bytes: u64,
    created: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    /// Since when this node runs the schedule (it leads).
    active_since: Option<Instant>,
    newest: Option<Newest>,
    last_error: Option<String>,
    last_failure: Option<Instant>,
}

/// What the schedule knows, shared with Admin.Status.
#[derive(Debug, Default)]
pub struct ScheduleState(Mutex<State>);

impl ScheduleState {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The status of the schedule (`None` without one).
    pub fn status(&self, schedule: Option<&BackupSchedule>) -> Option<BackupStatus> {
        let schedule = schedule?;
        let state = self.lock();
        let age = |created: SystemTime| {
            SystemTime::now()
                .duration_since(created)
                .unwrap_or_default()
        };
        let newest_age = state.newest.as_ref().map(|n| age(n.created));
        // Overdue: active, and neither a young enough backup nor a young enough
        // leadership (a new leader gets the time to take its first one).
        let overdue = match (schedule.max_age, state.active_since) {
            (Some(max_age), Some(since)) => {
                newest_age.is_none_or(|a| a > max_age) && since.elapsed() > max_age
            }
            _ => false,
        };
        let newest = state.newest.as_ref();
        Some(BackupStatus {
            dir: schedule.dir.display().to_string(),
            active: state.active_since.is_some(),
            newest_file: newest.map_or(String::new(), |n| n.path.display().to_string()),
            newest_index: newest.map_or(0, |n| n.index),
            newest_bytes: newest.map_or(0, |n| n.bytes),
            newest_age_seconds: newest_age.map_or(0.0, |a| a.as_secs_f64()),
            last_error: state.last_error.clone().unwrap_or_default(),
            max_age_seconds: schedule.max_age.map_or(0.0, |a| a.as_secs_f64()),
            overdue,
        })
    }
}

/// Runs the schedule until `stop` turns true (returns at once without one).
pub async fn run(
    config: Arc<Config>,
    driver: DriverHandle,
    backups: Arc<Backups>,
    mut stop: watch::Receiver<bool>,
) {
    let state = &backups.schedule;
    let Some(schedule) = config.backups.clone() else {
        return;
    };
    info!(
        dir = %schedule.dir.display(),
        interval_s = schedule.interval.as_secs_f64(),
        keep = schedule.keep,
        "scheduled backups: while this node leads"
    );
    let leader = driver.leader_watch();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        if *stop.borrow() {
            return;
        }
        let leading = *leader.borrow() == Some(config.id);
        let became_active = {
            let mut state = state.lock();
            let was = state.active_since.is_some();
            state.active_since = match leading {
                true => state.active_since.or(Some(Instant::now())),
                false => None,
            };
            leading && !was
        };
        if !leading {
            continue;
        }
        if became_active {
            // Take over from what is there (another leader may have written some).
            let found = scan(&schedule.dir, config.cluster_id);
            match found {
                Ok(found) => state.lock().newest = found.last().cloned(),
                Err(err) => warn!(
                    "scheduled backups: reading {}: {err}",
                    schedule.dir.display()
                ),
            }
        }
        if !is_due(state, &schedule) {
            continue;
        }
        match take(&config, &driver, &schedule, &backups.pace).await {
            Ok(newest) => {
                info!(file = %newest.path.display(), index = newest.index, bytes = newest.bytes, "scheduled backup written");
                crate::metrics::metrics()
                    .backups
                    .with_label_values(&["ok"])
                    .inc();
                let mut state = state.lock();
                state.newest = Some(newest);
                state.last_error = None;
                state.last_failure = None;
            }
            Err(err) => {
                error!("scheduled backup failed: {err:#}");
                crate::metrics::metrics()
                    .backups
                    .with_label_values(&["failed"])
                    .inc();
                let mut state = state.lock();
                state.last_error = Some(format!("{err:#}"));
                state.last_failure = Some(Instant::now());
            }
        }
        if let Err(err) = rotate(&schedule.dir, config.cluster_id, schedule.keep) {
            warn!("scheduled backups: deleting old backups: {err}");
        }
    }
}

fn is_due(state: &ScheduleState, schedule: &BackupSchedule) -> bool {
    let state = state.lock();
    if state
        .last_failure
        .is_some_and(|at| at.elapsed() < RETRY_AFTER.min(schedule.interval))
    {
        return false;
    }
    state.newest.as_ref().is_none_or(|newest| {
        SystemTime::now()
            .duration_since(newest.created)
            .unwrap_or_default()
            >= schedule.interval
    })
}

/// One backup into the directory.
async fn take(
    config: &Config,
    driver: &DriverHandle,
    schedule: &BackupSchedule,
    pace: &Pace,
) -> anyhow::Result<Newest> {
    let source = tokio::time::timeout(SNAPSHOT_WAIT, driver.backup(false))
        .await
        .map_err(|_| anyhow::anyhow!("no snapshot within {}s", SNAPSHOT_WAIT.as_secs()))??;
    let (dir, cluster_id, pace) = (schedule.dir.clone(), config.cluster_id, pace.clone());
    tokio::task::spawn_blocking(move || write(&dir, cluster_id, source, &pace)).await?
}

fn file_name(cluster_id: u64, index: u64) -> String {
    format!("distraft-{cluster_id:016x}-{index:020}.backup")
}

/// Writes the backup file durably: `.<name>.part`, fsync, rename, fsync the directory.
fn write(dir: &Path, cluster_id: u64, source: BackupSource, pace: &Pace) -> anyhow::Result<Newest> {
    // Durably: the directory's own entry must survive a crash with the file.
    crate::storage::create_dir_durably(dir)?;
    let header = header_of(cluster_id, &source);
    let name = file_name(cluster_id, header.index);
    let part = dir.join(format!(".{name}.part"));
    let path = dir.join(&name);
    let written = (|| -> io::Result<()> {
        let mut out = File::create(&part)?;
        out.write_all(&header.encode())?;
        // The snapshot reader checks the image's checksum at its end.
        let mut image = source.image;
        let copied = pace.copy(&mut image, &mut out, COPY_CHUNK)?;
        if copied != header.image_len {
            return Err(io::Error::other("the snapshot ended early"));
        }
        out.sync_all()?;
        drop(out);
        fs::rename(&part, &path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&part);
        return Err(anyhow::Error::new(err).context(format!("writing {}", path.display())));
    }
    Ok(Newest {
        path,
        index: header.index,
        bytes: header.file_len(),
        created: UNIX_EPOCH + Duration::from_millis(header.created_unix_ms),
    })
}

/// This cluster's backups in `dir`, oldest first (by index), as their headers say.
fn scan(dir: &Path, cluster_id: u64) -> io::Result<Vec<Newest>> {
    let prefix = format!("distraft-{cluster_id:016x}-");
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".backup"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let mut head = [0u8; HEADER_BYTES];
        let header = File::open(entry.path())
            .and_then(|mut f| io::Read::read_exact(&mut f, &mut head))
            .ok()
            .and_then(|()| BackupHeader::read(&mut head.as_slice()).ok());
        // A file with a damaged header is not counted as a backup (nor deleted).
        let Some(header) = header.filter(|h| h.index == index) else {
            warn!(file = %entry.path().display(), "scheduled backups: not a readable backup");
            continue;
        };
        // A creation time ahead of this node's clock (another node's, skewed) is
        // taken as now: else the schedule would wait for that clock.
        let now = SystemTime::now();
        let created = UNIX_EPOCH
            .checked_add(Duration::from_millis(header.created_unix_ms))
            .map_or(now, |created| created.min(now));
        found.push(Newest {
            path: entry.path(),
            index,
            bytes: entry.metadata()?.len(),
            created,
        });
    }
    found.sort_by_key(|n| n.index);
    Ok(found)
}

/// Deletes this cluster's backups but the newest `keep`.
fn rotate(dir: &Path, cluster_id: u64, keep: usize) -> io::Result<()> {
    let found = scan(dir, cluster_id)?;
    let surplus = found.len().saturating_sub(keep);
    for old in &found[..surplus] {
        fs::remove_file(&old.path)?;
        info!(file = %old.path.display(), "deleted an old scheduled backup");
    }
    if surplus > 0 {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_backup(dir: &Path, cluster_id: u64, index: u64) {
        let header = BackupHeader {
            cluster_id,
            index,
            term: 1,
            created_unix_ms: 1_000 * index,
            image_len: 0,
            image_crc: 0,
        };
        fs::write(dir.join(file_name(cluster_id, index)), header.encode()).unwrap();
    }

    #[test]
    fn rotation_keeps_the_newest_of_this_cluster_and_leaves_the_rest_alone() {
        let dir = tempfile::tempdir().unwrap();
        for index in [5, 50, 7, 100] {
            fake_backup(dir.path(), 1, index);
        }
        fake_backup(dir.path(), 2, 1);
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        fs::write(dir.path().join(file_name(1, 3)), "damaged").unwrap();
        rotate(dir.path(), 1, 2).unwrap();
        let indexes: Vec<u64> = scan(dir.path(), 1)
            .unwrap()
            .iter()
            .map(|n| n.index)
            .collect();
        assert_eq!(indexes, [50, 100]);
        assert_eq!(scan(dir.path(), 2).unwrap().len(), 1);
        assert!(dir.path().join("notes.txt").exists());
        assert!(dir.path().join(file_name(1, 3)).exists());
    }

    #[test]
    fn a_creation_time_ahead_of_the_clock_is_taken_as_now() {
        let dir = tempfile::tempdir().unwrap();
        let header = BackupHeader {
            cluster_id: 1,
            index: 9,
            term: 1,
            created_unix_ms: u64::MAX,
            image_len: 0,
            image_crc: 0,
        };
        fs::write(dir.path().join(file_name(1, 9)), header.encode()).unwrap();
        let found = scan(dir.path(), 1).unwrap();
        assert!(found[0].created <= SystemTime::now());
    }
}
