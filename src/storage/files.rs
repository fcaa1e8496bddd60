//! Filesystem helpers: numbered files, durable creation, replacement and removal.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::error::io_error;
use super::StorageError;

/// Files named `<20-digit number><suffix>` in `dir`, sorted by number. Other files
/// are not ours and are left alone.
pub(super) fn list_numbered(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    for dirent in fs::read_dir(dir).map_err(io_error(dir))? {
        let dirent = dirent.map_err(io_error(dir))?;
        let name = dirent.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(number) = stem.parse() {
                found.push((number, dirent.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Removes the files in `dir` whose name satisfies `ours`; a missing dir is empty.
pub(super) fn remove_files(dir: &Path, ours: impl Fn(&str) -> bool) -> Result<(), StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir)(e)),
    };
    let mut removed = false;
    for dirent in entries {
        let dirent = dirent.map_err(io_error(dir))?;
        if dirent.file_name().to_str().is_some_and(&ours) {
            let path = dirent.path();
            fs::remove_file(&path).map_err(io_error(&path))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Deletes a file; one already gone is fine. The caller fsyncs the directory if it
/// must be durable.
pub(super) fn remove_if_present(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(path)(e)),
        _ => Ok(()),
    }
}

/// Durably replaces `dir/name` with `bytes`: a temporary file (`<name>.new`, never a
/// `.tmp` that open() sweeps), fsynced, renamed over the old one, and `dir` fsynced; a
/// crash leaves the old file or the new one.
pub(super) fn replace_file_durably(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.new"));
    let mut file = File::create(&temp).map_err(io_error(&temp))?;
    io::Write::write_all(&mut file, bytes).map_err(io_error(&temp))?;
    file.sync_all().map_err(io_error(&temp))?;
    drop(file);
    fs::rename(&temp, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

/// Makes file creations, renames and deletions in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent so the
/// directories themselves survive a crash.
pub fn create_dir_durably(dir: &Path) -> Result<(), StorageError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}
