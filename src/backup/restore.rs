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
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::format::{backup_error, BackupError, BackupHeader, ImageReader};
use crate::config::Config;
use crate::kv::{copy_with_members, ImageSummary, KvError};
use crate::raft::{Membership, SnapshotMeta};
use crate::storage::identity::{self, Origin, OriginKind};
use crate::storage::{DirLock, Storage};

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
    copy_image(path, io::sink())
}

/// Copies the image of the backup at `path` into `out` with an empty member table
/// (the new cluster's members are its bootstrap list, as in a cluster just started),
/// checking everything on the way.
fn copy_image(path: &Path, out: impl io::Write) -> Result<Checked, BackupError> {
    let file = File::open(path)?;
    let mut input = BufReader::with_capacity(1024 * 1024, file);
    let header = BackupHeader::read(&mut input)?;
    let image = ImageReader::new(input, header);
    let summary = match copy_with_members(image, out, &[]) {
        Ok(summary) => summary,
        Err(KvError::Io(err)) => return Err(backup_error(err)),
        // Damage shows as a malformed image before the checksum at its end is
        // reached: the checksum names it better.
        Err(KvError::Malformed(reason)) => {
            checksum_only(path)?;
            return Err(BackupError::Malformed(reason));
        }
    };
    Ok(Checked { header, summary })
}

/// Reads the backup through, checking its header, length and checksum only.
fn checksum_only(path: &Path) -> Result<(), BackupError> {
    let mut input = BufReader::with_capacity(1024 * 1024, File::open(path)?);
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
    let checked = check_all(path, config)?;
    let _lock = DirLock::acquire(&[&config.log_dir, &config.data_dir])?;
    write(path, config, checked)
}

/// [`restore`], by a process that holds the directories' lock already (a node
/// started with DISTRAFT_RESTORE_FROM).
pub fn restore_locked(path: &Path, config: &Config) -> anyhow::Result<Restored> {
    let checked = check_all(path, config)?;
    write(path, config, checked)
}

/// The configuration, the file and the directories, checked.
fn check_all(path: &Path, config: &Config) -> anyhow::Result<Checked> {
    if !config.join.is_empty() {
        bail!(
            "DISTRAFT_JOIN is set: a restore builds a bootstrap member of a new cluster. \
             Restore every member of DISTRAFT_CLUSTER, start them, and let others join later"
        );
    }
    let checked = check(path).with_context(|| format!("{} is refused", path.display()))?;
    check_empty(config)?;
    Ok(checked)
}

/// Writes the snapshot, then the identity.
fn write(path: &Path, config: &Config, checked: Checked) -> anyhow::Result<Restored> {
    let (mut storage, _) = Storage::open(crate::driver::storage_options(config))
        .context("creating the new member's storage")?;
    let meta = SnapshotMeta {
        index: checked.header.index,
        term: RESTORED_TERM,
        membership: Membership::with_voters(config.members.iter().map(|m| m.id)),
    };
    let mut writer = storage.begin_snapshot(meta)?;
    copy_image(path, &mut writer).with_context(|| format!("reading {}", path.display()))?;
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
    Ok(Restored {
        checked,
        cluster_id,
        data_dir: config.data_dir.clone(),
    })
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
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == identity::IDENTITY_FILE
            || [".wal", ".snap", ".tmp"].iter().any(|s| name.ends_with(s))
            || name == "reset-term"
        {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}
