//! `distraft restore`: the data directory of one member of a *new* cluster, made
//! from a backup. Every member of the new cluster runs it with the same backup and
//! the same DISTRAFT_CLUSTER (and token): each gets the same snapshot (the backup's
//! state at its index, the new member list as voters) and the same new cluster id,
//! derived from the backup's origin, so that the restored cluster can never be taken
//! for the original, nor talk to it.
//!
//! The whole file is checked (header, length, checksum, the image's shape and digest)
//! before anything is written; then the snapshot is written and made durable as any
//! snapshot from a leader is; the identity file last.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::format::{backup_error, BackupError, BackupHeader, ImageReader};
use crate::config::Config;
use crate::kv::{copy_with_members, ImageSummary, KvError};
use crate::raft::{Membership, SnapshotMeta};
use crate::storage::identity::{self, Origin, OriginKind};
use crate::storage::{create_dir_durably, DirLock, Storage};

/// In the data directory while a restore is under way.
const UNFINISHED: &str = "restore.unfinished";

/// The term of the restored snapshot: the new cluster's history begins at term 1, at
/// the backup's index (which its versions and watches carry on from).
const RESTORED_TERM: u64 = 1;

/// What a checked backup holds.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub header: BackupHeader,
    pub summary: ImageSummary,
}

/// Reads the whole backup at `path` and checks it, holding one pair at a time.
pub fn check(path: &Path) -> Result<Checked, BackupError> {
    copy_image(&mut File::open(path)?, io::sink())
}

/// Copies the image of the backup at `path` into `out` with an empty member table
/// (the new cluster's members are its bootstrap list, as in a cluster just started),
/// checking everything on the way.
fn copy_image(file: &mut File, out: impl io::Write) -> Result<Checked, BackupError> {
    file.seek(SeekFrom::Start(0))?;
    let mut input = BufReader::with_capacity(1024 * 1024, &*file);
    let header = BackupHeader::read(&mut input)?;
    let image = ImageReader::new(input, header);
    let summary = match copy_with_members(image, out, &[]) {
        Ok(summary) => summary,
        Err(KvError::Io(err)) => return Err(backup_error(err)),
        // Damage shows as a malformed image before the checksum at its end is
        // reached: the checksum names it better.
        Err(KvError::Malformed(reason)) => {
            checksum_only(file)?;
            return Err(BackupError::Malformed(reason));
        }
    };
    Ok(Checked { header, summary })
}

/// Reads the backup through, checking its header, length and checksum only.
fn checksum_only(file: &mut File) -> Result<(), BackupError> {
    file.seek(SeekFrom::Start(0))?;
    let mut input = BufReader::with_capacity(1024 * 1024, &*file);
    let header = BackupHeader::read(&mut input)?;
    io::copy(&mut ImageReader::new(input, header), &mut io::sink()).map_err(backup_error)?;
    Ok(())
}

/// What a restore made.
#[derive(Debug)]
pub struct Restored {
    pub checked: Checked,
    pub cluster_id: u64,
    pub data_dir: PathBuf,
}

/// Builds `config`'s data and log directories from the backup at `path`.
pub fn restore(path: &Path, config: &Config) -> anyhow::Result<Restored> {
    // Everything is checked before anything is written (the lock creates the
    // directories).
    let (mut file, checked) = check_all(path, config)?;
    let _lock = DirLock::acquire(&[&config.log_dir, &config.data_dir])?;
    write(&mut file, path, config, checked)
}

/// [`restore`], by a process that holds the directories' lock already (a node
/// started with DISTRAFT_RESTORE_FROM).
pub fn restore_locked(path: &Path, config: &Config) -> anyhow::Result<Restored> {
    let (mut file, checked) = check_all(path, config)?;
    write(&mut file, path, config, checked)
}

/// The configuration, the file and the directories, checked; the file stays open,
/// so that the copy reads what was checked even if the path is replaced meanwhile.
fn check_all(path: &Path, config: &Config) -> anyhow::Result<(File, Checked)> {
    if !config.join.is_empty() {
        bail!(
            "DISTRAFT_JOIN is set: a restore builds a bootstrap member of a new cluster. \
             Restore every member of DISTRAFT_CLUSTER, start them, and let others join later"
        );
    }
    let refused = || format!("{} is refused", path.display());
    let mut file = File::open(path).with_context(refused)?;
    let checked = copy_image(&mut file, io::sink()).with_context(refused)?;
    check_empty(config)?;
    Ok((file, checked))
}

/// Writes the snapshot, then the identity (last: a directory without it holds an
/// unfinished restore, see [`clear_unfinished`]).
fn write(
    file: &mut File,
    path: &Path,
    config: &Config,
    checked: Checked,
) -> anyhow::Result<Restored> {
    // Written first and deleted last: a restore cut short (a crash, a full disk) is
    // started over by the next DISTRAFT_RESTORE_FROM, never taken for a member.
    let marker = config.data_dir.join(UNFINISHED);
    create_dir_durably(&config.data_dir)?;
    File::create(&marker)
        .and_then(|f| f.sync_all())
        .and_then(|()| File::open(&config.data_dir)?.sync_all())
        .with_context(|| format!("creating {}", marker.display()))?;
    let (mut storage, _) = Storage::open(crate::driver::storage_options(config))
        .context("creating the new member's storage")?;
    let meta = SnapshotMeta {
        index: checked.header.index,
        term: RESTORED_TERM,
        membership: Membership::with_voters(config.members.iter().map(|m| m.id)),
    };
    let mut writer = storage.begin_snapshot(meta)?;
    let copied =
        copy_image(file, &mut writer).with_context(|| format!("reading {}", path.display()))?;
    if (copied.header, copied.summary) != (checked.header, checked.summary) {
        bail!("{} changed while it was restored", path.display());
    }
    storage
        .finish_snapshot(writer)
        .context("making the restored snapshot durable")?;
    drop(storage);
    let origin = Origin {
        kind: OriginKind::Restore,
        from_cluster: checked.header.cluster_id,
        index: checked.header.index,
        base: config.cluster_id,
    };
    let cluster_id = identity::record_origin(config, &config.data_dir, origin)?;
    std::fs::remove_file(&marker)
        .and_then(|()| File::open(&config.data_dir)?.sync_all())
        .with_context(|| format!("deleting {}", marker.display()))?;
    Ok(Restored {
        checked,
        cluster_id,
        data_dir: config.data_dir.clone(),
    })
}

/// Deletes what an interrupted restore left (its marker file says so); returns
/// whether there was anything.
pub fn clear_unfinished(config: &Config) -> anyhow::Result<bool> {
    let marker = config.data_dir.join(UNFINISHED);
    if !marker.exists() {
        return Ok(false);
    }
    for dir in [&config.data_dir, &config.log_dir] {
        for ours in files_of_ours(dir)?.into_iter().filter(|f| *f != marker) {
            std::fs::remove_file(&ours).with_context(|| format!("deleting {}", ours.display()))?;
        }
    }
    std::fs::remove_file(&marker).with_context(|| format!("deleting {}", marker.display()))?;
    Ok(true)
}

/// Refuses directories that hold a node's files.
fn check_empty(config: &Config) -> anyhow::Result<()> {
    match holds_data(config)? {
        Some(ours) => bail!(
            "{} exists: a restore makes a new member, only into directories that hold \
             no distraft data",
            ours.display()
        ),
        None => Ok(()),
    }
}

/// The first file of a node's in its data or log directory, if any.
pub fn holds_data(config: &Config) -> anyhow::Result<Option<PathBuf>> {
    for dir in [&config.data_dir, &config.log_dir] {
        if let Some(ours) = first_file_of_ours(dir)? {
            return Ok(Some(ours));
        }
    }
    Ok(None)
}

/// A file a node keeps in `dir`, if there is one (a missing directory is empty).
fn first_file_of_ours(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    Ok(files_of_ours(dir)?.into_iter().next())
}

/// The files a node keeps in `dir` (a missing directory has none).
fn files_of_ours(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == identity::IDENTITY_FILE
            || [".wal", ".snap", ".tmp"].iter().any(|s| name.ends_with(s))
            || name == "reset-term"
            || name == UNFINISHED
        {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}
