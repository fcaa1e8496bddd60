//! `distraft backup FILE` (from a node, over `GET /v1/backup`), `distraft backup
//! --check FILE` and `distraft restore FILE` (see `crate::backup`).

use std::fs::{self, File};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use super::client::http_client;
use super::Target;
use crate::backup::format::{BackupHeader, HEADER_BYTES};
use crate::backup::restore::{self, Checked};
use crate::config::{Config, NodeArgs};

/// A backup may take long (a large state, a slow link); it is bounded all the same.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// Downloads a backup into `file`, atomically: into `<file>.part`, checked (length
/// and checksum, as it streams by), fsynced, then renamed.
pub async fn backup(target: &Target, file: &Path, stale: bool) -> anyhow::Result<()> {
    let url = format!("{}/v1/backup", target.url.trim_end_matches('/'));
    let mut request = http_client(target)?.get(&url).timeout(BACKUP_TIMEOUT);
    if stale {
        request = request.query(&[("stale", "true")]);
    }
    let mut response = request.send().await.with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        bail!("GET {url}: {status}: {}", body.trim());
    }
    let total = response.content_length().unwrap_or(0);
    let part = part_path(file)?;
    let mut out = File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let bar = progress_bar(total);
    let mut check = StreamCheck::default();
    let received = async {
        while let Some(chunk) = response
            .chunk()
            .await
            .context("the backup stream broke off")?
        {
            check.update(&chunk);
            out.write_all(&chunk)
                .with_context(|| format!("writing {}", part.display()))?;
            if let Some(bar) = &bar {
                bar.inc(chunk.len() as u64);
            }
        }
        let header = check.finish()?;
        out.sync_all()
            .with_context(|| format!("fsync {}", part.display()))?;
        anyhow::Ok(header)
    }
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let header = match received {
        Ok(header) => header,
        Err(err) => {
            let _ = fs::remove_file(&part);
            return Err(err);
        }
    };
    drop(out);
    fs::rename(&part, file).with_context(|| format!("renaming to {}", file.display()))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync {}", dir.display()))?;
    }
    println!(
        "{}",
        serde_json::json!({
            "ok": true,
            "file": file.display().to_string(),
            "bytes": header.file_len(),
            "index": header.index,
            "cluster_id": format!("{:016x}", header.cluster_id),
        })
    );
    Ok(())
}

/// `distraft backup --check FILE`: the whole file checked, nothing written.
pub fn check(file: &Path) -> anyhow::Result<()> {
    let checked = restore::check(file).with_context(|| format!("{} is refused", file.display()))?;
    println!("{}", summary_json(file, &checked));
    Ok(())
}

/// `distraft restore FILE` with the new member's configuration.
pub fn restore(file: &Path, node: &NodeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(node)?;
    let restored = restore::restore(file, &config)?;
    let mut answer = summary_json(file, &restored.checked);
    answer["name"] = config.name.clone().into();
    answer["data_dir"] = restored.data_dir.display().to_string().into();
    answer["new_cluster_id"] = format!("{:016x}", restored.cluster_id).into();
    println!("{answer}");
    Ok(())
}

/// `distraft force-new-cluster` with the member's configuration.
pub async fn force_new_cluster(node: &NodeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(node)?;
    let name = config.name.clone();
    let forced = crate::backup::force::force_new_cluster(config).await?;
    println!(
        "{}",
        serde_json::json!({
            "ok": true,
            "name": name,
            "index": forced.index,
            "keys": forced.keys,
            "new_cluster_id": format!("{:016x}", forced.cluster_id),
            "unreachable": forced.lost,
        })
    );
    Ok(())
}

fn summary_json(file: &Path, checked: &Checked) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "file": file.display().to_string(),
        "bytes": checked.header.file_len(),
        "index": checked.header.index,
        "cluster_id": format!("{:016x}", checked.header.cluster_id),
        "created_unix_ms": checked.header.created_unix_ms,
        "keys": checked.summary.keys,
        "state_bytes": checked.summary.state_bytes,
    })
}

fn part_path(file: &Path) -> anyhow::Result<PathBuf> {
    let name = file
        .file_name()
        .with_context(|| format!("{} is not a file name", file.display()))?;
    let mut part = name.to_os_string();
    part.push(".part");
    Ok(file.with_file_name(part))
}

fn progress_bar(total: u64) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() || total == 0 {
        return None;
    }
    let style =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .ok()?;
    Some(ProgressBar::new(total).with_style(style))
}

/// The header and the image's checksum, checked as the bytes stream by.
#[derive(Default)]
struct StreamCheck {
    head: Vec<u8>,
    header: Option<BackupHeader>,
    image_bytes: u64,
    crc: u32,
}

impl StreamCheck {
    fn update(&mut self, mut bytes: &[u8]) {
        if self.head.len() < HEADER_BYTES {
            let take = bytes.len().min(HEADER_BYTES - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        self.image_bytes += bytes.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, bytes);
    }

    fn finish(&mut self) -> anyhow::Result<BackupHeader> {
        let header = BackupHeader::read(&mut self.head.as_slice())?;
        if self.image_bytes != header.image_len {
            bail!(
                "the backup stream broke off: {} of {} image bytes received",
                self.image_bytes,
                header.image_len
            );
        }
        if self.crc != header.image_crc {
            bail!("the backup arrived damaged (checksum mismatch)");
        }
        self.header = Some(header);
        Ok(header)
    }
}
