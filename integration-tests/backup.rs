//! Backups and restores on real nodes: a backup taken under a write load restores
//! into a fresh cluster holding exactly the writes at or below its index; damaged
//! files are refused before anything is written; Admin.Backup streams the same file.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{last_json, run_cli, Cluster};
use distraft::proto::v1::BackupRequest;

fn restore_all(cluster: &Cluster, backup: &Path) {
    for i in 0..cluster.nodes.len() {
        let output = cluster.node_cli(i, &["restore", backup.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "restore of node {i}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Writes go on while a backup is taken from a follower; a new 3-node cluster
/// restored from it holds every write acknowledged before the backup began, exactly
/// the writes at or below the backup's index, and a new cluster id.
#[tokio::test]
async fn a_backup_under_load_restores_into_a_new_cluster_with_exactly_its_writes() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    for i in 0..25 {
        cluster
            .put_eventually(leader, &format!("before/{i}"), "x")
            .await;
    }
    // An earlier backup leaves a snapshot behind on the follower, which the next
    // backup must not take for a recent one.
    let early = cluster.dir().join("early.backup");
    let early_url = cluster.url(follower);
    let (ok, output) = run_cli(&["backup", "--url", &early_url, early.to_str().unwrap()]).await;
    assert!(ok, "early backup: {output}");
    for i in 25..50 {
        cluster
            .put_eventually(leader, &format!("before/{i}"), "x")
            .await;
    }
    // A writer that keeps going during the backup; each write is a new key, so what
    // the backup holds is told by the keys alone.
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, url) = (cluster.http().clone(), cluster.url(leader));
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("during/{n}");
                n += 1;
                let answer = http
                    .post(format!("{url}/v1/kv/{}", key.replace('/', "%2F")))
                    .form(&[("value", "y")])
                    .send()
                    .await;
                let Ok(answer) = answer else { continue };
                if answer.status() != 200 {
                    continue;
                }
                let body: serde_json::Value = answer.json().await.unwrap();
                let index = body["mod_index"].as_u64().unwrap();
                acknowledged.lock().unwrap().push((key, index));
            }
        })
    };
    let acknowledged_count = || acknowledged.lock().unwrap().len();
    crate::harness::eventually(Duration::from_secs(10), || async {
        match acknowledged_count() {
            0 => Err("the load has not begun".to_string()),
            _ => Ok(()),
        }
    })
    .await
    .unwrap();
    let acknowledged_before = acknowledged_count();
    let file = cluster.dir().join("under-load.backup");
    let (ok, output) = run_cli(&[
        "backup",
        "--url",
        &cluster.url(follower),
        file.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "backup: {output}");
    let made = last_json(&output);
    let index = made["index"].as_u64().unwrap();
    // The load goes on past the backup's index.
    crate::harness::eventually(Duration::from_secs(10), || async {
        let after = acknowledged.lock().unwrap().iter().any(|(_, i)| *i > index);
        match after {
            true => Ok(()),
            false => Err(format!("no write acknowledged after index {index} yet")),
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.iter().any(|(_, i)| *i > index),
        "no write after the backup's index {index}: the load did not overlap it"
    );
    assert!(!file.with_extension("backup.part").exists());

    let (ok, output) = run_cli(&["backup", "--check", file.to_str().unwrap()]).await;
    assert!(ok, "check: {output}");
    let checked = last_json(&output);
    assert_eq!(checked["index"], index);

    let restored = Cluster::start_prepared(3, &[], |fresh| restore_all(fresh, &file)).await;
    let listed = restored
        .answer(
            restored
                .http()
                .get(format!("{}/v1/keys?limit=10000", restored.url(1))),
        )
        .await
        .1;
    let keys: std::collections::BTreeSet<String> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(checked["keys"].as_u64().unwrap(), keys.len() as u64);
    for i in 0..50 {
        assert!(
            keys.contains(&format!("before/{i}")),
            "before/{i} is missing"
        );
    }
    for (n, (key, at)) in acknowledged.iter().enumerate() {
        if n < acknowledged_before {
            assert!(
                *at <= index,
                "{key} was acknowledged before the backup began"
            );
        }
        assert_eq!(
            keys.contains(key),
            *at <= index,
            "{key} (written at {at}) against the backup's index {index}"
        );
    }
    // A new cluster: another id, and it takes writes after the backup's index.
    let original = cluster.status(0).await.unwrap()["cluster_id"].clone();
    let new = restored.status(0).await.unwrap()["cluster_id"].clone();
    assert_ne!(original, new, "the restored cluster kept the original's id");
    let (status, body) = restored.put(0, "after-restore", "z").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["mod_index"].as_u64().unwrap() > index, "{body}");
}

/// A truncated, a damaged and a foreign file are refused by `backup --check` and by
/// `restore`, which then writes nothing.
#[tokio::test]
async fn a_damaged_or_truncated_backup_is_refused_before_anything_is_written() {
    let cluster = Cluster::start(1).await;
    for i in 0..20 {
        cluster
            .put_eventually(0, &format!("k{i}"), &"v".repeat(100))
            .await;
    }
    let file = cluster.dir().join("good.backup");
    let (ok, output) = run_cli(&["backup", "--url", &cluster.url(0), file.to_str().unwrap()]).await;
    assert!(ok, "{output}");
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let middle = bytes.len() / 2;
    flipped[middle] ^= 0x10;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", bytes[..bytes.len() - 7].to_vec(), "truncated"),
        ("flipped", flipped, "damaged"),
        (
            "foreign",
            b"not a backup at all".to_vec(),
            "not a distraft backup",
        ),
        (
            "longer",
            [bytes.clone(), vec![0]].concat(),
            "bytes after its image",
        ),
    ];
    for (name, content, expected) in cases {
        let bad = cluster.dir().join(format!("{name}.backup"));
        std::fs::write(&bad, content).unwrap();
        let (ok, output) = run_cli(&["backup", "--check", bad.to_str().unwrap()]).await;
        assert!(!ok && output.contains(expected), "check {name}: {output}");

        let dir = cluster.dir().join(format!("restore-{name}"));
        let output = distraft_testkit::harness::distraft_command()
            .args(["restore", bad.to_str().unwrap(), "--name", "a"])
            .args(["--cluster", "a=127.0.0.1:1:127.0.0.1:2"])
            .env("DISTRAFT_DATA_PATH", dir.join("data"))
            .env("DISTRAFT_LOG_PATH", dir.join("log"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "restore {name}: {stderr}"
        );
        assert!(!dir.exists(), "restore {name} wrote {}", dir.display());
    }
    // A directory that holds data is never overwritten.
    let (data, _) = cluster.node_dirs(0);
    let output = cluster.node_cli(0, &["restore", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("hold no distraft data"),
        "{stderr}"
    );
    assert!(data.exists());
}

/// Admin.Backup streams the same kind of file over gRPC: the first chunk says its
/// size and index, and the bytes check out.
#[tokio::test]
async fn admin_backup_streams_a_checked_file_over_grpc() {
    let cluster = Cluster::start(3).await;
    for i in 0..10 {
        cluster.put_eventually(0, &format!("g{i}"), "v").await;
    }
    let mut admin = cluster.admin(2).await;
    let mut stream = admin
        .backup(BackupRequest { stale: false })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    let mut first = None;
    while let Some(chunk) = stream.message().await.unwrap() {
        first.get_or_insert((chunk.total_bytes, chunk.index));
        bytes.extend_from_slice(&chunk.data);
    }
    let (total, index) = first.unwrap();
    assert_eq!(total, bytes.len() as u64);
    assert!(index >= 11, "index {index}");
    let file = cluster.dir().join("grpc.backup");
    std::fs::write(&file, &bytes).unwrap();
    let (ok, output) = run_cli(&["backup", "--check", file.to_str().unwrap()]).await;
    assert!(ok, "{output}");
    assert_eq!(last_json(&output)["keys"], 10);
    assert_eq!(last_json(&output)["index"], index);
}

/// DISTRAFT_BACKUP_RATE paces a backup however fast its reader: 3 MiB at 1 MiB/s take
/// at least 2 s (the first MiB goes at once), and the file is whole.
#[tokio::test]
async fn a_backup_keeps_the_nodes_pace() {
    let cluster = Cluster::start_with(1, &[("DISTRAFT_BACKUP_RATE", "1")]).await;
    let value = "v".repeat(128 * 1024);
    for i in 0..24 {
        cluster.put_eventually(0, &format!("big{i}"), &value).await;
    }
    let file = cluster.dir().join("paced.backup");
    let started = std::time::Instant::now();
    let (ok, output) = run_cli(&["backup", "--url", &cluster.url(0), file.to_str().unwrap()]).await;
    let took = started.elapsed();
    assert!(ok, "{output}");
    assert!(
        took >= Duration::from_secs(2),
        "3 MiB at 1 MiB/s took {took:?}"
    );
    let (ok, output) = run_cli(&["backup", "--check", file.to_str().unwrap()]).await;
    assert!(ok, "{output}");
    assert_eq!(last_json(&output)["keys"], 24);
}

/// Node `i`'s scheduled-backup status (`backup` of `GET /`).
async fn backup_status(cluster: &Cluster, i: usize) -> serde_json::Value {
    cluster.status(i).await.unwrap()["backup"].clone()
}

fn backups_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".backup"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Only the leader writes scheduled backups, keeping the newest DISTRAFT_BACKUP_KEEP;
/// after a leadership transfer the new leader takes over (in its own directory);
/// each is a backup that checks out.
#[tokio::test]
async fn scheduled_backups_rotate_and_move_with_the_leader() {
    let cluster = Cluster::start_with_node_env(
        3,
        &[
            ("DISTRAFT_BACKUP_INTERVAL", "0.5"),
            ("DISTRAFT_BACKUP_KEEP", "2"),
        ],
        |i, dir| {
            let backups = dir.join(format!("backups{}", i + 1));
            vec![("DISTRAFT_BACKUP_DIR".into(), backups.display().to_string())]
        },
    )
    .await;
    let dir = |i: usize| cluster.dir().join(format!("backups{}", i + 1));
    let leader = cluster.wait_for_leader().await;
    // Writes between backups, so that each backup has a new index.
    let rounds = crate::harness::eventually(Duration::from_secs(20), || async {
        cluster.put_eventually(leader, "tick", "x").await;
        let status = backup_status(&cluster, leader).await;
        match backups_in(&dir(leader)).len() >= 2 && status["newest_index"].as_u64() > Some(3) {
            true => Ok(status),
            false => Err(format!("not yet: {status}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(rounds["active"], true, "{rounds}");
    // Kept: the newest two, once two more rounds were written (so that older ones
    // had to go).
    let mut newest = rounds["newest_index"].as_u64().unwrap_or(0);
    for _ in 0..2 {
        newest = crate::harness::eventually(Duration::from_secs(20), || async {
            cluster.put_eventually(leader, "tick", "y").await;
            let index = backup_status(&cluster, leader).await["newest_index"]
                .as_u64()
                .unwrap_or(0);
            match index > newest {
                true => Ok(index),
                false => Err(format!("no backup after index {newest} yet")),
            }
        })
        .await
        .unwrap();
    }
    let kept = crate::harness::eventually(Duration::from_secs(10), || async {
        let kept = backups_in(&dir(leader));
        match kept.len() {
            2 => Ok(kept),
            _ => Err(format!("kept {kept:?}")),
        }
    })
    .await
    .unwrap();
    for name in &kept {
        let path = dir(leader).join(name);
        let (ok, output) = run_cli(&["backup", "--check", path.to_str().unwrap()]).await;
        assert!(ok, "{name}: {output}");
    }
    for i in (0..3).filter(|&i| i != leader) {
        assert!(backups_in(&dir(i)).is_empty(), "follower {i} wrote backups");
        assert_eq!(backup_status(&cluster, i).await["active"], false);
    }

    // Leadership moves: the new leader's directory gets the backups.
    let target = (leader + 1) % 3;
    let name = cluster.nodes[target].name.clone();
    let (ok, output) = run_cli(&[
        "leader",
        "transfer",
        "--url",
        &cluster.url(leader),
        "--to",
        &name,
    ])
    .await;
    assert!(ok, "{output}");
    crate::harness::eventually(Duration::from_secs(20), || async {
        cluster.put_eventually(target, "tick", "z").await;
        match backups_in(&dir(target)).len() {
            0 => Err("no backup in the new leader's directory yet".to_string()),
            _ => Ok(()),
        }
    })
    .await
    .unwrap();
    assert_eq!(backup_status(&cluster, target).await["active"], true);
    // The old leader notices at its next poll of the schedule (every second), which
    // may come after the new leader's first backup.
    crate::harness::eventually(Duration::from_secs(10), || async {
        match backup_status(&cluster, leader).await["active"].as_bool() {
            Some(false) => Ok(()),
            other => Err(format!(
                "the old leader's schedule is still active: {other:?}"
            )),
        }
    })
    .await
    .unwrap();
}

/// With DISTRAFT_BACKUP_MAX_AGE, a leader whose backups fail is not ready (saying
/// why), while the followers are; the failures are counted and shown.
#[tokio::test]
async fn readiness_fails_on_the_leader_when_its_backups_stop() {
    let blocker = tempfile::NamedTempFile::new().unwrap();
    // A directory under a regular file can never be made: every backup fails.
    let impossible = blocker.path().join("backups");
    let cluster = Cluster::start_with(
        3,
        &[
            ("DISTRAFT_BACKUP_DIR", impossible.to_str().unwrap()),
            ("DISTRAFT_BACKUP_INTERVAL", "1"),
            ("DISTRAFT_BACKUP_MAX_AGE", "1"),
        ],
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let readyz = |i: usize| {
        let url = format!("{}/readyz?verbose", cluster.url(i));
        let http = cluster.http().clone();
        async move {
            let answer = http.get(url).send().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((
                answer.status().as_u16(),
                answer.text().await.unwrap_or_default(),
            ))
        }
    };
    let (code, text) = crate::harness::eventually(Duration::from_secs(20), || async {
        let (code, text) = readyz(leader).await?;
        match code {
            503 => Ok((code, text)),
            _ => Err(format!("still ready: {text}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 503);
    assert!(text.contains("[-]backup failed: no backup yet"), "{text}");
    assert!(text.contains("DISTRAFT_BACKUP_MAX_AGE"), "{text}");
    let status = backup_status(&cluster, leader).await;
    assert_eq!(status["overdue"], true, "{status}");
    assert!(
        !status["last_error"].as_str().unwrap().is_empty(),
        "{status}"
    );
    let metrics = cluster
        .http()
        .get(format!("{}/metrics", cluster.url(leader)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("distraft_backups_total{result=\"failed\"}"),
        "{metrics}"
    );
    for i in (0..3).filter(|&i| i != leader) {
        let (code, text) = readyz(i).await.unwrap();
        assert_eq!(code, 200, "follower {i}: {text}");
    }
}

/// Losing a majority for good: 3 of 5 members gone with their data. While a quorum
/// is still reachable the recovery is refused, naming who answered; once it is not,
/// a survivor becomes a cluster of one with every committed key and a new cluster
/// id, and grows back to three by joining.
#[tokio::test]
async fn a_survivor_of_a_lost_majority_keeps_every_key_and_grows_back() {
    let mut cluster = Cluster::start(5).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..40 {
        cluster
            .put_eventually(leader, &format!("kept/{i}"), &format!("v{i}"))
            .await;
    }
    let (_, before) = cluster.put(leader, "kept/last", "last").await;
    let original_id = cluster.status(0).await.unwrap()["cluster_id"].clone();
    let survivor = (leader + 1) % 5;
    let other_survivor = (leader + 2) % 5;
    // Refused while a quorum answers: the survivor is stopped, four others run.
    cluster.terminate(survivor);
    let output = cluster.node_cli(survivor, &["force-new-cluster"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "forced with a quorum up");
    assert!(stderr.contains("still has a quorum"), "{stderr}");
    assert!(stderr.contains(&cluster.nodes[leader].name), "{stderr}");

    // Three members are lost with their data.
    for lost in [leader, (leader + 3) % 5, (leader + 4) % 5] {
        cluster.kill(lost);
        let (log, data) = cluster.node_dirs(lost);
        std::fs::remove_dir_all(log).unwrap();
        std::fs::remove_dir_all(data).unwrap();
    }
    let output = cluster.node_cli(survivor, &["force-new-cluster"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let forced = last_json(&stdout);
    assert!(
        forced["index"].as_u64() >= before["mod_index"].as_u64(),
        "{forced}"
    );
    assert_eq!(
        forced["unreachable"].as_array().unwrap().len(),
        3,
        "{forced}"
    );
    cluster.restart(survivor);
    cluster.wait_for_leader_among(&[survivor]).await;
    assert_ne!(
        cluster.status(survivor).await.unwrap()["cluster_id"],
        original_id
    );
    for i in 0..40 {
        cluster
            .assert_value_eventually(survivor, &format!("kept/{i}"), &format!("v{i}"))
            .await;
    }
    cluster.put_eventually(survivor, "after", "forced").await;

    // The other survivor, still of the old cluster, is wiped and joins anew; so
    // does a new member. The old one cannot talk to the new cluster meanwhile.
    cluster.kill(other_survivor);
    let (log, data) = cluster.node_dirs(other_survivor);
    std::fs::remove_dir_all(log).unwrap();
    std::fs::remove_dir_all(data).unwrap();
    let six = cluster.join_node("node6", &[survivor], &[]);
    let seven = cluster.join_node("node7", &[survivor], &[]);
    crate::harness::eventually(Duration::from_secs(30), || async {
        let status = cluster.status(survivor).await?;
        let voters = status["members"].as_object().map_or(0, |m| m.len());
        match voters {
            3 => Ok(()),
            n => Err(format!("{n} voters: {status}")),
        }
    })
    .await
    .unwrap();
    for i in [six, seven] {
        cluster.assert_value_eventually(i, "kept/39", "v39").await;
        cluster.assert_value_eventually(i, "after", "forced").await;
    }
}

/// DISTRAFT_RESTORE_FROM restores a node at its first start; one whose earlier
/// restore was cut short (its marker left, a log half made) starts it over instead of
/// coming up empty; once restored, the variable is ignored.
#[tokio::test]
async fn restore_from_at_the_first_start_and_over_again_after_an_interrupted_one() {
    let source = Cluster::start(1).await;
    for i in 0..10 {
        source.put_eventually(0, &format!("r{i}"), "v").await;
    }
    let file = source.dir().join("for-start.backup");
    let (ok, output) = run_cli(&["backup", "--url", &source.url(0), file.to_str().unwrap()]).await;
    assert!(ok, "{output}");
    let file_env = file.to_str().unwrap().to_string();
    let mut restored =
        Cluster::start_prepared(2, &[("DISTRAFT_RESTORE_FROM", &file_env)], |fresh| {
            // Node 2: an interrupted restore, as a full disk or a crash leaves it.
            let (log, data) = fresh.node_dirs(1);
            std::fs::create_dir_all(&log).unwrap();
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("restore.unfinished"), "").unwrap();
            std::fs::write(log.join("00000000000000000001.wal"), "half").unwrap();
        })
        .await;
    for i in 0..2 {
        restored.assert_value_eventually(i, "r9", "v").await;
    }
    let (_, data) = restored.node_dirs(1);
    assert!(!data.join("restore.unfinished").exists());
    restored.put_eventually(0, "new", "w").await;
    restored.kill(1);
    restored.restart_with(1, &[("DISTRAFT_RESTORE_FROM", &file_env)]);
    restored.wait_for_leader().await;
    restored.assert_value_eventually(1, "new", "w").await;
    assert!(restored
        .output(1)
        .contains("DISTRAFT_RESTORE_FROM is ignored"));
}
