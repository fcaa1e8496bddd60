//! Storage tests: behaviour, crash consistency (cuts and byte corruption) and a
//! model-based property test.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use distraft::raft::{
    ConfChange, Entry, EntryKind, HardState, Index, Membership, SnapshotMeta, Term,
};
use distraft::storage::{
    DiskFault, DiskStep, Recovered, SnapshotFile, Storage, StorageError, StorageOptions,
};
use tempfile::TempDir;

fn options(root: &Path, segment_bytes: u64) -> StorageOptions {
    StorageOptions {
        segment_bytes,
        ..StorageOptions::new(root.join("log"), root.join("data"))
    }
}

/// An entry whose payload says who it is, so that a mix-up cannot go unnoticed.
fn entry(index: Index, term: Term, len: usize) -> Entry {
    let mut data = format!("{index}/{term}:").into_bytes();
    data.resize(len.max(data.len()), b'a' + (index % 26) as u8);
    Entry::normal(index, term, Bytes::from(data))
}

fn entries(range: std::ops::RangeInclusive<Index>, term: Term) -> Vec<Entry> {
    range.map(|i| entry(i, term, 20)).collect()
}

fn hs(term: Term, vote: Option<u64>, commit: Index) -> HardState {
    HardState { term, vote, commit }
}

fn image_for(meta: &SnapshotMeta, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + meta.index * 7 + meta.term) as u8)
        .collect()
}

fn snapshot(storage: &mut Storage, index: Index, term: Term, image: &[u8]) -> SnapshotFile {
    let meta = SnapshotMeta {
        index,
        term,
        membership: Membership::with_voters([1, 2, 3]),
    };
    let mut writer = storage.begin_snapshot(meta).unwrap();
    // Several writes, as a state machine streaming its image would do.
    for chunk in image.chunks(1000) {
        writer.write_all(chunk).unwrap();
    }
    storage.finish_snapshot(writer).unwrap()
}

fn read_image(file: &SnapshotFile) -> std::io::Result<Vec<u8>> {
    let mut image = Vec::new();
    file.open_data().unwrap().read_to_end(&mut image)?;
    Ok(image)
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    found.sort();
    found
}

fn reopen(root: &Path, segment_bytes: u64) -> (Storage, Recovered) {
    Storage::open(options(root, segment_bytes)).unwrap()
}

#[test]
fn storage_types_can_move_across_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Storage>();
    assert_send::<distraft::storage::SnapshotWriter>();
    assert_send::<distraft::storage::SnapshotJob>();
    assert_send::<SnapshotFile>();
}

#[test]
fn fresh_storage_is_empty() {
    let dir = TempDir::new().unwrap();
    let (storage, recovered) = reopen(dir.path(), 1 << 20);
    assert_eq!(storage.last_index(), 0);
    assert_eq!(recovered.restored.hard_state, HardState::default());
    assert!(recovered.restored.snapshot.is_none());
    assert!(recovered.restored.entries.is_empty());
    assert!(recovered.snapshot.is_none());
}

/// Appends overwrite zeros written ahead; a clean reopen reads the zeros as the end
/// (not as a torn tail to cut off) and continues right after the last record.
#[test]
fn zeros_written_ahead_are_the_clean_end_across_reopens() {
    let dir = TempDir::new().unwrap();
    let segment_bytes = 1 << 30;
    let mut expected = Vec::new();
    for round in 0..3u64 {
        let (mut storage, recovered) = reopen(dir.path(), segment_bytes);
        assert_eq!(recovered.restored.entries, expected, "round {round}");
        let batch = entries(round * 10 + 1..=round * 10 + 10, 1);
        storage
            .append(Some(&hs(1, None, round * 10)), &batch)
            .unwrap();
        expected.extend(batch);
        let (segment, end) = storage.wal_end();
        let file_len = fs::metadata(segment).unwrap().len();
        assert!(
            file_len > end,
            "zeros ahead: file {file_len}, records {end}"
        );
        assert_eq!(files(&dir.path().join("log"), ".wal").len(), 1);
    }
    let (_, recovered) = reopen(dir.path(), segment_bytes);
    assert_eq!(recovered.restored.entries, expected);
}

#[test]
fn log_hard_state_and_conflict_truncation_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 300);
    storage
        .append(Some(&hs(1, Some(1), 0)), &entries(1..=10, 1))
        .unwrap();
    storage.append(Some(&hs(1, Some(1), 4)), &[]).unwrap();
    storage.append(None, &entries(11..=20, 1)).unwrap();
    // A new leader replaces 15.. with its own entries.
    storage
        .append(Some(&hs(2, None, 12)), &entries(15..=17, 2))
        .unwrap();
    assert_eq!(storage.last_index(), 17);
    assert!(
        files(&dir.path().join("log"), ".wal").len() > 1,
        "segments rolled"
    );
    drop(storage);

    let (storage, recovered) = reopen(dir.path(), 300);
    let mut expected = entries(1..=14, 1);
    expected.extend(entries(15..=17, 2));
    assert_eq!(recovered.restored.entries, expected);
    assert_eq!(recovered.restored.hard_state, hs(2, None, 12));
    assert_eq!(storage.last_index(), 17);
    assert_eq!(storage.hard_state(), hs(2, None, 12));
}

#[test]
fn entries_read_back_across_segments_rewrites_compaction_and_reopen() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 300);
    for i in 1..=20 {
        storage.append(None, &[entry(i, 1, 50)]).unwrap();
    }
    // One record of several entries, then a rewrite of part of it.
    storage.append(None, &entries(21..=30, 1)).unwrap();
    storage.append(None, &entries(26..=32, 2)).unwrap();
    assert!(files(&dir.path().join("log"), ".wal").len() > 3);
    let mut expected: Vec<Entry> = (1..=20).map(|i| entry(i, 1, 50)).collect();
    expected.extend(entries(21..=25, 1));
    expected.extend(entries(26..=32, 2));
    assert_eq!(storage.read_entries(1, 32, usize::MAX).unwrap(), expected);
    // Bounded by bytes (each of the first entries is 50 + 16), always at least one.
    assert_eq!(storage.read_entries(3, 32, 200).unwrap(), expected[2..5]);
    assert_eq!(storage.read_entries(3, 32, 0).unwrap(), expected[2..3]);
    assert_eq!(
        storage.read_entries(24, 27, usize::MAX).unwrap(),
        expected[23..27]
    );

    snapshot(&mut storage, 15, 1, b"image");
    assert_eq!(
        storage.read_entries(16, 32, usize::MAX).unwrap(),
        expected[15..]
    );
    assert!(matches!(
        storage.read_entries(15, 32, usize::MAX),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        storage.read_entries(30, 33, usize::MAX),
        Err(StorageError::Invalid(_))
    ));
    drop(storage);
    let (storage, _) = reopen(dir.path(), 300);
    assert_eq!(
        storage.read_entries(16, 32, usize::MAX).unwrap(),
        expected[15..]
    );
}

#[test]
fn a_damaged_record_read_back_is_refused() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 1 << 20);
    storage.append(None, &entries(1..=5, 1)).unwrap();
    storage.append(None, &entries(6..=9, 1)).unwrap();
    let segment = files(&dir.path().join("log"), ".wal").remove(0);
    let mut bytes = fs::read(&segment).unwrap();
    // The last byte of the first entry batch's payload (entry 5's data).
    let at = bytes
        .windows(4)
        .position(|w| w == b"6/1:")
        .expect("entry 6 is in the segment")
        - 40;
    bytes[at] ^= 0x55;
    fs::write(&segment, &bytes).unwrap();
    match storage.read_entries(2, 9, usize::MAX) {
        Err(StorageError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, segment);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The record after it is intact.
    assert_eq!(
        storage.read_entries(6, 9, usize::MAX).unwrap(),
        entries(6..=9, 1)
    );
}

#[test]
fn snapshot_compacts_the_log_and_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 400);
    for i in 1..=100 {
        storage
            .append(Some(&hs(1, Some(2), i - 1)), &[entry(i, 1, 30)])
            .unwrap();
    }
    let before = files(&dir.path().join("log"), ".wal").len();
    let meta = SnapshotMeta {
        index: 60,
        term: 1,
        membership: Membership::with_voters([1, 2, 3]),
    };
    let image = image_for(&meta, 10_000);
    let file = snapshot(&mut storage, 60, 1, &image);
    assert_eq!(file.data_len(), image.len() as u64);
    assert_eq!(read_image(&file).unwrap(), image);
    let after = files(&dir.path().join("log"), ".wal").len();
    assert!(
        after < before,
        "whole segments below the snapshot are deleted ({before} -> {after})"
    );
    assert_eq!(storage.last_index(), 100);
    drop(storage);

    let (mut storage, recovered) = reopen(dir.path(), 400);
    assert_eq!(recovered.restored.snapshot, Some(meta.clone()));
    assert_eq!(
        recovered.restored.entries,
        (61..=100).map(|i| entry(i, 1, 30)).collect::<Vec<_>>()
    );
    assert_eq!(recovered.restored.hard_state, hs(1, Some(2), 99));
    assert_eq!(
        read_image(recovered.snapshot.as_ref().unwrap()).unwrap(),
        image
    );

    // A newer snapshot replaces the older file.
    let newer = SnapshotMeta {
        index: 90,
        term: 1,
        membership: Membership::with_voters([1, 2, 3]),
    };
    snapshot(&mut storage, 90, 1, &image_for(&newer, 5));
    assert_eq!(files(&dir.path().join("data"), ".snap").len(), 1);
    assert_eq!(storage.latest_snapshot().unwrap().meta, newer);
    drop(storage);
    let (_, recovered) = reopen(dir.path(), 400);
    assert_eq!(
        recovered.restored.entries.first().map(|e| e.index),
        Some(91)
    );
}

#[test]
fn received_snapshot_drops_the_log() {
    for (index, term) in [(20, 3), (5, 2)] {
        let dir = TempDir::new().unwrap();
        let (mut storage, _) = reopen(dir.path(), 200);
        storage
            .append(Some(&hs(3, None, 2)), &entries(1..=10, 1))
            .unwrap();
        snapshot(&mut storage, index, term, b"leader's image");
        assert_eq!(storage.last_index(), index);
        assert_eq!(files(&dir.path().join("log"), ".wal").len(), 1);
        drop(storage);

        let (mut storage, recovered) = reopen(dir.path(), 200);
        assert!(
            recovered.restored.entries.is_empty(),
            "snapshot ({index}, {term})"
        );
        assert_eq!(recovered.restored.hard_state, hs(3, None, 2));
        assert_eq!(storage.last_index(), index);
        storage
            .append(None, &entries(index + 1..=index + 2, term))
            .unwrap();
        drop(storage);
        let (_, recovered) = reopen(dir.path(), 200);
        assert_eq!(
            recovered.restored.entries,
            entries(index + 1..=index + 2, term)
        );
    }
}

#[test]
fn crash_between_snapshot_rename_and_compaction_is_recovered() {
    // Node A has a log; a snapshot that does not match it appears in its data dir as
    // if a crash had struck right after the rename.
    let a = TempDir::new().unwrap();
    let b = TempDir::new().unwrap();
    let (mut storage, _) = reopen(a.path(), 1 << 20);
    storage
        .append(Some(&hs(4, None, 3)), &entries(1..=10, 1))
        .unwrap();
    drop(storage);
    let (mut other, _) = reopen(b.path(), 1 << 20);
    let file = snapshot(&mut other, 30, 4, b"image");
    fs::copy(
        &file.path,
        a.path().join("data").join(file.path.file_name().unwrap()),
    )
    .unwrap();

    let (mut storage, recovered) = reopen(a.path(), 1 << 20);
    assert_eq!(recovered.restored.snapshot.unwrap().index, 30);
    assert!(recovered.restored.entries.is_empty());
    assert_eq!(storage.last_index(), 30);
    storage.append(None, &entries(31..=31, 4)).unwrap();
    drop(storage);
    let (_, recovered) = reopen(a.path(), 1 << 20);
    assert_eq!(recovered.restored.entries, entries(31..=31, 4));
}

#[test]
fn reset_wipes_only_our_files() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 1 << 20);
    storage
        .append(Some(&hs(1, Some(1), 0)), &entries(1..=5, 1))
        .unwrap();
    snapshot(&mut storage, 3, 1, b"image");
    drop(storage);
    let foreign = dir.path().join("log").join("notes.txt");
    fs::write(&foreign, "keep me").unwrap();

    assert!(Storage::reset(&options(dir.path(), 1 << 20)).unwrap());
    assert!(foreign.exists());
    let (storage, recovered) = reopen(dir.path(), 1 << 20);
    assert_eq!(storage.last_index(), 0);
    assert!(recovered.restored.entries.is_empty());
    assert!(recovered.snapshot.is_none());
    // The term and vote survive the wipe, and the wipe is remembered.
    assert_eq!(recovered.restored.hard_state, hs(1, Some(1), 0));
    assert_eq!(recovered.restored.reset_term, Some(1));
    // Resetting directories that do not exist (or hold no data) changes nothing.
    let nowhere = dir.path().join("nowhere");
    assert!(!Storage::reset(&options(&nowhere, 1 << 20)).unwrap());
    let (_, recovered) = reopen(&nowhere, 1 << 20);
    assert_eq!(recovered.restored.reset_term, None);
}

#[test]
fn a_wipe_cut_short_by_a_crash_is_finished_by_the_next() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 1 << 10);
    storage
        .append(Some(&hs(4, Some(2), 0)), &entries(1..=40, 4))
        .unwrap();
    snapshot(&mut storage, 30, 4, b"image");
    storage.append(None, &entries(41..=45, 4)).unwrap();
    drop(storage);
    // As if a wipe crashed once the snapshot was gone: the WAL no longer fits any
    // snapshot, but a wipe reads only its term and vote.
    for file in fs::read_dir(dir.path().join("data")).unwrap() {
        fs::remove_file(file.unwrap().path()).unwrap();
    }
    assert!(Storage::reset(&options(dir.path(), 1 << 10)).unwrap());
    let (mut storage, recovered) = reopen(dir.path(), 1 << 10);
    assert_eq!(recovered.restored.hard_state, hs(4, Some(2), 0));
    assert_eq!(recovered.restored.reset_term, Some(4));
    // A later wipe records the later term.
    storage
        .append(Some(&hs(6, None, 0)), &entries(1..=3, 5))
        .unwrap();
    drop(storage);
    assert!(Storage::reset(&options(dir.path(), 1 << 10)).unwrap());
    let (_, recovered) = reopen(dir.path(), 1 << 10);
    assert_eq!(recovered.restored.hard_state, hs(6, None, 0));
    assert_eq!(recovered.restored.reset_term, Some(6));
}

#[test]
fn invalid_appends_are_refused_and_change_nothing() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 1 << 20);
    storage.append(None, &entries(1..=5, 1)).unwrap();
    snapshot(&mut storage, 3, 1, b"image");
    let gap = storage.append(Some(&hs(9, None, 0)), &entries(7..=8, 1));
    let holes = storage.append(None, &[entry(6, 1, 1), entry(8, 1, 1)]);
    let covered = storage.append(None, &entries(3..=4, 2));
    for result in [gap, holes, covered] {
        assert!(
            matches!(result, Err(StorageError::Invalid(_))),
            "{result:?}"
        );
    }
    let stale = storage.begin_snapshot(SnapshotMeta {
        index: 2,
        term: 1,
        membership: Membership::with_voters([]),
    });
    assert!(matches!(stale, Err(StorageError::Invalid(_))));
    assert_eq!(storage.last_index(), 5);
    drop(storage);
    let (_, recovered) = reopen(dir.path(), 1 << 20);
    assert_eq!(recovered.restored.entries, entries(4..=5, 1));
    assert_eq!(recovered.restored.hard_state, HardState::default());
}

#[test]
fn unfinished_snapshot_leaves_no_file() {
    let dir = TempDir::new().unwrap();
    let (storage, _) = reopen(dir.path(), 1 << 20);
    let mut writer = storage.begin_snapshot(SnapshotMeta::default()).unwrap();
    writer.write_all(b"half an image").unwrap();
    assert_eq!(files(&dir.path().join("data"), ".tmp").len(), 1);
    drop(writer);
    assert!(files(&dir.path().join("data"), "").is_empty());
}

/// A fault layer over snapshot files only: every write fails with `kind`.
fn failing_snapshot_writes(kind: std::io::ErrorKind) -> DiskFault {
    DiskFault(Arc::new(move |step| match step {
        DiskStep::SnapshotWrite => Err(std::io::Error::from(kind)),
        DiskStep::WalReserve | DiskStep::WalWrite | DiskStep::WalSync | DiskStep::SnapshotSync => {
            Ok(())
        }
    }))
}

#[test]
fn a_snapshot_that_finds_the_disk_full_fails_as_no_space_and_keeps_the_log() {
    let dir = TempDir::new().unwrap();
    let mut opts = options(dir.path(), 1 << 20);
    opts.disk_fault = Some(failing_snapshot_writes(std::io::ErrorKind::StorageFull));
    let (mut storage, _) = Storage::open(opts).unwrap();
    storage.append(None, &entries(1..=20, 1)).unwrap();
    let meta = SnapshotMeta {
        index: 10,
        term: 1,
        membership: Membership::with_voters([1]),
    };
    // The node's own snapshot, written off the driver.
    let job = storage.snapshot_job(meta.clone()).unwrap();
    let written = job.write(|out| out.write_all(b"image"));
    assert!(
        matches!(written, Err(StorageError::NoSpace { .. })),
        "{written:?}"
    );
    // A leader's snapshot, streamed in.
    let begun = storage.begin_snapshot(meta);
    assert!(matches!(begun, Err(StorageError::NoSpace { .. })));
    // No file left behind, the log whole, the storage still usable.
    assert!(files(&dir.path().join("data"), "").is_empty());
    storage.append(None, &entries(21..=21, 1)).unwrap();
    drop(storage);
    let (_, recovered) = reopen(dir.path(), 1 << 20);
    assert!(recovered.restored.snapshot.is_none());
    assert_eq!(recovered.restored.entries, entries(1..=21, 1));
}

#[test]
fn snapshot_job_written_off_thread_compacts_only_once_adopted() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 400);
    for e in entries(1..=40, 1) {
        storage.append(None, &[e]).unwrap();
    }
    let meta = SnapshotMeta {
        index: 30,
        term: 1,
        membership: Membership::with_voters([1]),
    };
    let image = image_for(&meta, 3000);
    let job = storage.snapshot_job(meta).unwrap();
    let writer = std::thread::spawn(move || job.write(|out| out.write_all(&image)));
    // The log goes on while the image is written.
    storage.append(None, &entries(41..=50, 1)).unwrap();
    let file = writer.join().unwrap().unwrap();
    // Durable but not adopted yet: a crash here recovers from it.
    assert!(storage.latest_snapshot().is_none());
    let segments = files(&dir.path().join("log"), ".wal").len();
    let garbage = storage
        .adopt_snapshot(file.clone())
        .unwrap()
        .expect("adopted");
    assert_eq!(storage.latest_snapshot().unwrap().meta.index, 30);
    // The dead segments are deleted when the caller chooses (off the driver).
    assert_eq!(files(&dir.path().join("log"), ".wal").len(), segments);
    garbage.delete().unwrap();
    assert!(files(&dir.path().join("log"), ".wal").len() < segments);
    drop(storage);
    let (_, recovered) = reopen(dir.path(), 400);
    assert_eq!(recovered.restored.snapshot.unwrap().index, 30);
    assert_eq!(recovered.restored.entries, entries(31..=50, 1));
    assert_eq!(
        read_image(&recovered.snapshot.unwrap()).unwrap(),
        read_image(&file).unwrap()
    );
}

#[test]
fn garbage_left_by_a_crash_is_deleted_at_recovery() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 400);
    for e in entries(1..=40, 1) {
        storage.append(None, &[e]).unwrap();
    }
    let old = snapshot(&mut storage, 10, 1, b"old");
    let meta = SnapshotMeta {
        index: 30,
        term: 1,
        membership: Membership::with_voters([1]),
    };
    let job = storage.snapshot_job(meta).unwrap();
    let file = job.write(|out| out.write_all(b"new")).unwrap();
    let segments = files(&dir.path().join("log"), ".wal").len();
    // A crash before the deletions.
    drop(
        storage
            .adopt_snapshot(file.clone())
            .unwrap()
            .expect("adopted"),
    );
    drop(storage);
    assert!(old.path.exists());
    let (_, recovered) = reopen(dir.path(), 400);
    assert_eq!(recovered.restored.snapshot.unwrap().index, 30);
    assert_eq!(recovered.restored.entries, entries(31..=40, 1));
    assert_eq!(files(&dir.path().join("data"), ""), vec![file.path]);
    assert!(files(&dir.path().join("log"), ".wal").len() < segments);
}

#[test]
fn snapshot_job_superseded_by_a_received_snapshot_is_discarded() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 1 << 20);
    storage.append(None, &entries(1..=10, 1)).unwrap();
    let meta = SnapshotMeta {
        index: 8,
        term: 1,
        membership: Membership::with_voters([1]),
    };
    let job = storage.snapshot_job(meta.clone()).unwrap();
    let own = job
        .write(|out| out.write_all(&image_for(&meta, 100)))
        .unwrap();
    // Meanwhile the leader's snapshot at 20 was installed.
    let received = snapshot(&mut storage, 20, 2, b"from the leader");
    assert!(storage.adopt_snapshot(own).unwrap().is_none());
    assert_eq!(storage.latest_snapshot().unwrap().meta.index, 20);
    assert_eq!(files(&dir.path().join("data"), ""), vec![received.path]);
    assert_eq!(storage.last_index(), 20);
}

#[test]
fn snapshot_interrupted_by_a_crash_is_ignored_at_recovery() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 1 << 20);
    storage.append(None, &entries(1..=10, 1)).unwrap();
    let old = snapshot(&mut storage, 5, 1, b"old image");
    let mut writer = storage
        .begin_snapshot(SnapshotMeta {
            index: 9,
            term: 1,
            membership: Membership::with_voters([1]),
        })
        .unwrap();
    writer.write_all(&vec![1u8; 3 << 20]).unwrap();
    // A crash: the writer never finishes nor cleans up.
    std::mem::forget(writer);
    drop(storage);
    assert_eq!(files(&dir.path().join("data"), ".tmp").len(), 1);
    let (_, recovered) = reopen(dir.path(), 1 << 20);
    assert_eq!(recovered.restored.snapshot.unwrap().index, 5);
    assert_eq!(recovered.restored.entries, entries(6..=10, 1));
    assert_eq!(
        read_image(&recovered.snapshot.unwrap()).unwrap(),
        b"old image"
    );
    assert_eq!(files(&dir.path().join("data"), ""), vec![old.path]);
}

#[test]
fn damaged_snapshot_is_refused() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 1 << 20);
    storage.append(None, &entries(1..=5, 1)).unwrap();
    let image = vec![7u8; 5000];
    let file = snapshot(&mut storage, 4, 1, &image);
    drop(storage);
    let mut bytes = fs::read(&file.path).unwrap();
    let pristine = bytes.clone();
    for at in [0, 20, 60, 3000, bytes.len() - 5] {
        bytes[at] ^= 0x10;
        fs::write(&file.path, &bytes).unwrap();
        match Storage::open(options(dir.path(), 1 << 20)) {
            Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, file.path),
            other => panic!("flip at {at}: {:?}", other.map(|_| ())),
        }
        bytes[at] ^= 0x10;
    }
    fs::write(&file.path, &pristine).unwrap();
    let (_, recovered) = reopen(dir.path(), 1 << 20);
    let file = recovered.snapshot.unwrap();
    // Damage after open is caught while reading.
    bytes[3000] ^= 1;
    fs::write(&file.path, &bytes).unwrap();
    let err = read_image(&file).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn missing_segments_are_reported() {
    let dir = TempDir::new().unwrap();
    let (mut storage, _) = reopen(dir.path(), 200);
    for i in 1..=30 {
        storage.append(None, &[entry(i, 1, 40)]).unwrap();
    }
    drop(storage);
    let segments = files(&dir.path().join("log"), ".wal");
    assert!(segments.len() >= 3);
    for victim in [&segments[1], &segments[0]] {
        let saved = fs::read(victim).unwrap();
        fs::remove_file(victim).unwrap();
        match Storage::open(options(dir.path(), 200)) {
            Err(StorageError::Corrupt { reason, .. }) => {
                assert!(reason.contains("missing"), "{reason}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        fs::write(victim, saved).unwrap();
    }
    // Without any segment the hard state (term, vote) is gone: refuse, if a snapshot
    // shows this node had state.
    let moved = TempDir::new().unwrap();
    let (mut storage, _) = reopen(moved.path(), 200);
    storage.append(None, &entries(1..=3, 1)).unwrap();
    snapshot(&mut storage, 2, 1, b"image");
    drop(storage);
    for segment in files(&moved.path().join("log"), ".wal") {
        fs::remove_file(segment).unwrap();
    }
    assert!(matches!(
        Storage::open(options(moved.path(), 200)),
        Err(StorageError::Corrupt { .. })
    ));

    // A non-last segment cut short is corruption, not a torn tail.
    let len = fs::metadata(&segments[1]).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&segments[1])
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    match Storage::open(options(dir.path(), 200)) {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, segments[1]),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Crash consistency. A history of appends is written once; after each append we note
/// the size of the last segment (what was durable when the call returned). Then the
/// files are cut or damaged in copies and reopened.
mod crash {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// These tests check what recovery makes of given bytes, hundreds of times; with
    /// other builds running, each fsync on ext4 costs tens of milliseconds, so they
    /// use tmpfs when the machine has one (the other tests use the real disk).
    fn scratch() -> TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            TempDir::new_in(shm).unwrap()
        } else {
            TempDir::new().unwrap()
        }
    }

    /// What the storage held after an append returned: the state and where the WAL
    /// ended.
    #[derive(Clone)]
    struct Durable {
        entries: Vec<Entry>,
        hard_state: HardState,
        segment: PathBuf,
        len: u64,
    }

    /// Writes a history of appends with conflicts and hard-state updates.
    fn write_history(root: &Path, segment_bytes: u64, appends: usize, seed: u64) -> Vec<Durable> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut storage, _) = reopen(root, segment_bytes);
        let mut log: Vec<Entry> = Vec::new();
        let mut hard_state = HardState::default();
        let mut history = vec![state(&storage, &log, hard_state)];
        for _ in 0..appends {
            let term = hard_state.term.max(1);
            let from = if !log.is_empty() && rng.random_bool(0.15) {
                rng.random_range(1..=log.len() as Index)
            } else {
                log.len() as Index + 1
            };
            let batch: Vec<Entry> = (from..from + rng.random_range(0..4))
                .map(|i| entry(i, term, rng.random_range(0..60)))
                .collect();
            let new_hs = rng.random_bool(0.4).then(|| HardState {
                term: term + rng.random_range(0..2),
                vote: rng.random_bool(0.5).then_some(rng.random_range(1..4)),
                commit: rng.random_range(0..=from - 1),
            });
            storage.append(new_hs.as_ref(), &batch).unwrap();
            if !batch.is_empty() {
                log.truncate(from as usize - 1);
                log.extend(batch);
            }
            hard_state = new_hs.unwrap_or(hard_state);
            history.push(state(&storage, &log, hard_state));
        }
        history
    }

    fn state(storage: &Storage, log: &[Entry], hard_state: HardState) -> Durable {
        let (segment, len) = storage.wal_end();
        let segment = segment.to_path_buf();
        Durable {
            entries: log.to_vec(),
            hard_state,
            segment,
            len,
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        for sub in ["log", "data"] {
            fs::create_dir_all(to.join(sub)).unwrap();
            for file in files(&from.join(sub), "") {
                fs::copy(&file, to.join(sub).join(file.file_name().unwrap())).unwrap();
            }
        }
    }

    fn recovered_state(recovered: &Recovered) -> (Vec<Entry>, HardState) {
        (
            recovered.restored.entries.clone(),
            recovered.restored.hard_state,
        )
    }

    /// Cuts the last segment at `cut` bytes (in a copy) and checks that recovery yields
    /// exactly the state of the last append that was durable at that size, and that
    /// the repaired files open again to the same state.
    fn check_cut(original: &Path, history: &[Durable], cut: u64) {
        let last = history.last().unwrap();
        let copy = scratch();
        copy_dir(original, copy.path());
        let segment = copy
            .path()
            .join("log")
            .join(last.segment.file_name().unwrap());
        fs::File::options()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(cut)
            .unwrap();

        // The newest durable state that fits in the cut: appends are atomic, so it is
        // exactly that one (a partial batch is dropped as a torn tail).
        let expected = history
            .iter()
            .rev()
            .find(|d| d.segment != last.segment || d.len <= cut)
            // Even the first segment's header was cut: the initial, empty state.
            .unwrap_or(&history[0]);
        let (_, recovered) = Storage::open(options(copy.path(), 1 << 30))
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let got = recovered_state(&recovered);
        assert_eq!(
            got,
            (expected.entries.clone(), expected.hard_state),
            "cut at {cut}"
        );
        let (_, again) = Storage::open(options(copy.path(), 1 << 30)).unwrap();
        assert_eq!(
            recovered_state(&again),
            got,
            "reopen after repair, cut at {cut}"
        );
    }

    #[test]
    fn every_cut_of_a_small_last_segment() {
        let dir = scratch();
        let history = write_history(dir.path(), 700, 60, 1);
        assert!(files(&dir.path().join("log"), ".wal").len() > 2);
        let last = history.last().unwrap();
        for cut in 0..=last.len {
            check_cut(dir.path(), &history, cut);
        }
    }

    #[test]
    fn sampled_cuts_of_a_large_last_segment() {
        let dir = scratch();
        let history = write_history(dir.path(), 1 << 30, 400, 2);
        let last = history.last().unwrap();
        assert!(last.len > 10_000);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut cuts: Vec<u64> = (0..150).map(|_| rng.random_range(0..=last.len)).collect();
        // Record boundaries and their neighbours, where off-by-ones live.
        for d in history.iter().rev().take(40) {
            cuts.extend(
                [d.len.saturating_sub(1), d.len, d.len + 1]
                    .into_iter()
                    .filter(|&c| c <= last.len),
            );
        }
        for cut in cuts {
            check_cut(dir.path(), &history, cut);
        }
    }

    #[test]
    fn zeroed_tail_counts_as_torn() {
        // Blocks allocated but never written read back as zeros.
        let dir = scratch();
        let history = write_history(dir.path(), 1 << 30, 30, 4);
        let (last, before) = (&history[history.len() - 1], &history[history.len() - 2]);
        for (zero_from, extra) in [
            (last.len, 4096),
            (before.len, 0),
            (before.len, 100),
            (before.len + 5, 7),
        ] {
            let copy = scratch();
            copy_dir(dir.path(), copy.path());
            let segment = copy
                .path()
                .join("log")
                .join(last.segment.file_name().unwrap());
            let mut bytes = fs::read(&segment).unwrap();
            bytes[zero_from as usize..].fill(0);
            bytes.resize(bytes.len() + extra, 0);
            fs::write(&segment, &bytes).unwrap();
            let (_, recovered) = Storage::open(options(copy.path(), 1 << 30)).unwrap();
            let expected = if zero_from == last.len { last } else { before };
            assert_eq!(
                recovered_state(&recovered),
                (expected.entries.clone(), expected.hard_state),
                "zeros from {zero_from} plus {extra}"
            );
        }
    }

    #[test]
    fn random_byte_corruption_is_reported_or_loses_only_the_final_batch() {
        let dir = scratch();
        let history = write_history(dir.path(), 900, 80, 5);
        let segments = files(&dir.path().join("log"), ".wal");
        let last = history.last().unwrap();
        let before = &history[history.len() - 2];
        let mut rng = SmallRng::seed_from_u64(6);
        let (mut reported, mut torn) = (0, 0);
        for _ in 0..300 {
            let victim = &segments[rng.random_range(0..segments.len())];
            // Within the records: zeros written ahead are not records.
            let len = match victim == &last.segment {
                true => last.len,
                false => fs::metadata(victim).unwrap().len(),
            };
            let at = rng.random_range(0..len);
            let copy = scratch();
            copy_dir(dir.path(), copy.path());
            let target = copy.path().join("log").join(victim.file_name().unwrap());
            let mut bytes = fs::read(&target).unwrap();
            bytes[at as usize] ^= rng.random_range(1..=255u8);
            fs::write(&target, &bytes).unwrap();
            match Storage::open(options(copy.path(), 1 << 30)) {
                Err(StorageError::Corrupt {
                    path,
                    offset,
                    reason,
                }) => {
                    assert_eq!(path, target, "flip at {at}: {reason}");
                    assert!(
                        offset <= at,
                        "reported offset {offset} after the flip at {at}"
                    );
                    reported += 1;
                }
                Ok((_, recovered)) => {
                    // Damage to the final record cannot be told from a torn write; only
                    // the final batch may be lost, and it is.
                    assert_eq!(victim, &last.segment, "flip at {at} in an older segment");
                    if before.segment == last.segment {
                        assert!(at >= before.len, "flip at {at} before the final batch");
                    }
                    assert_eq!(
                        recovered_state(&recovered),
                        (before.entries.clone(), before.hard_state)
                    );
                    torn += 1;
                }
                Err(other) => panic!("flip at {at}: unexpected {other}"),
            }
        }
        assert!(reported > 250, "{reported} reported, {torn} torn");
    }
}

/// Model-based test: random appends (with conflicts), hard states, local and received
/// snapshots and reopens, against an in-memory model of what must be recovered.
mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Append {
            back: u8,
            count: u8,
            term: Term,
            len: u8,
            hard_state: Option<(Term, Option<u64>, Index)>,
        },
        /// A snapshot of the local state machine at `back` entries before the end.
        Snapshot {
            back: u8,
            image_len: u16,
        },
        /// A snapshot from the leader at `ahead` past the snapshot point, any term.
        Receive {
            ahead: u8,
            term: Term,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..4, 0u8..5, 1u64..4, 0u8..80, proptest::option::of((0u64..5, proptest::option::of(1u64..4), 0u64..50)))
                .prop_map(|(back, count, term, len, hard_state)| Op::Append { back, count, term, len, hard_state }),
            1 => (0u8..8, 0u16..3000).prop_map(|(back, image_len)| Op::Snapshot { back, image_len }),
            1 => (0u8..30, 1u64..4).prop_map(|(ahead, term)| Op::Receive { ahead, term }),
            1 => Just(Op::Reopen),
        ]
    }

    #[derive(Default)]
    struct Model {
        hard_state: HardState,
        snapshot: SnapshotMeta,
        image: Vec<u8>,
        /// Entries after the snapshot.
        entries: Vec<Entry>,
    }

    impl Model {
        fn last(&self) -> Index {
            self.snapshot.index + self.entries.len() as Index
        }
        fn term_at(&self, index: Index) -> Option<Term> {
            if index == self.snapshot.index {
                return Some(self.snapshot.term);
            }
            let offset = index.checked_sub(self.snapshot.index + 1)?;
            self.entries.get(offset as usize).map(|e| e.term)
        }
        fn install(&mut self, meta: SnapshotMeta, image: Vec<u8>) {
            if meta.index > self.snapshot.index && self.term_at(meta.index) == Some(meta.term) {
                self.entries
                    .drain(..(meta.index - self.snapshot.index) as usize);
            } else if meta.index != self.snapshot.index || meta.term != self.snapshot.term {
                self.entries.clear();
            }
            self.snapshot = meta;
            self.image = image;
        }
    }

    /// Every suffix of the log reads back as the model has it, whole and in pieces.
    fn check_read_back(storage: &Storage, model: &Model) {
        for from in model.snapshot.index + 1..=model.last() {
            let suffix = &model.entries[(from - model.snapshot.index - 1) as usize..];
            let whole = storage
                .read_entries(from, model.last(), usize::MAX)
                .unwrap();
            assert_eq!(whole, suffix, "read back from {from}");
            let first = storage.read_entries(from, model.last(), 0).unwrap();
            assert_eq!(first, suffix[..1], "read back one from {from}");
        }
    }

    fn check(storage: &Storage, recovered: &Recovered, model: &Model) {
        assert_eq!(recovered.restored.hard_state, model.hard_state);
        assert_eq!(recovered.restored.entries, model.entries);
        assert_eq!(storage.last_index(), model.last());
        if model.snapshot.index == 0 {
            assert!(recovered.snapshot.is_none());
        } else {
            assert_eq!(recovered.restored.snapshot.as_ref(), Some(&model.snapshot));
            assert_eq!(
                read_image(recovered.snapshot.as_ref().unwrap()).unwrap(),
                model.image
            );
        }
    }

    fn run(ops: Vec<Op>) {
        let dir = TempDir::new().unwrap();
        let segment_bytes = 256;
        let (mut storage, _) = reopen(dir.path(), segment_bytes);
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Append {
                    back,
                    count,
                    term,
                    len,
                    hard_state,
                } => {
                    let from = (model.last() + 1)
                        .saturating_sub(back as Index)
                        .max(model.snapshot.index + 1);
                    let batch: Vec<Entry> = (from..from + count as Index)
                        .map(|i| entry(i, term, len as usize))
                        .collect();
                    let hard_state = hard_state.map(|(t, v, c)| hs(t, v, c));
                    storage.append(hard_state.as_ref(), &batch).unwrap();
                    if !batch.is_empty() {
                        model
                            .entries
                            .truncate((from - model.snapshot.index - 1) as usize);
                        model.entries.extend(batch);
                    }
                    model.hard_state = hard_state.unwrap_or(model.hard_state);
                }
                Op::Snapshot { back, image_len } => {
                    let index = model
                        .last()
                        .saturating_sub(back as Index)
                        .max(model.snapshot.index);
                    if index == 0 {
                        continue;
                    }
                    let term = model.term_at(index).unwrap();
                    let meta = SnapshotMeta {
                        index,
                        term,
                        membership: Membership::with_voters([1, 2, 3]),
                    };
                    let image = image_for(&meta, image_len as usize);
                    snapshot(&mut storage, index, term, &image);
                    model.install(meta, image);
                }
                Op::Receive { ahead, term } => {
                    let index = model.snapshot.index + ahead as Index;
                    if index == 0 {
                        continue;
                    }
                    let meta = SnapshotMeta {
                        index,
                        term,
                        membership: Membership::with_voters([1, 2, 3]),
                    };
                    let image = image_for(&meta, 100);
                    snapshot(&mut storage, index, term, &image);
                    model.install(meta, image);
                }
                Op::Reopen => {
                    drop(storage);
                    let (reopened, recovered) = reopen(dir.path(), segment_bytes);
                    storage = reopened;
                    check(&storage, &recovered, &model);
                }
            }
            assert_eq!(storage.last_index(), model.last());
            check_read_back(&storage, &model);
        }
        drop(storage);
        let (storage, recovered) = reopen(dir.path(), segment_bytes);
        check(&storage, &recovered, &model);
        check_read_back(&storage, &model);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        #[test]
        fn storage_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
            run(ops);
        }
    }
}

/// Restart through the core: a node that persisted every `Ready` to real storage comes
/// back, after a reopen, with the same term, vote, log and snapshot, and keeps its vote.
#[test]
fn a_core_restarts_from_storage_with_term_vote_log_and_snapshot() {
    use distraft::raft::{AppendOutcome, Body, Config, Message, RawNode, Role};

    let dir = TempDir::new().unwrap();
    let (mut storage, recovered) = reopen(dir.path(), 4096);
    let config = || Config::for_tests(1, vec![1, 2, 3]);
    let mut node = RawNode::new(config(), recovered.restored, 1);
    let persist = |node: &mut RawNode, storage: &mut Storage| {
        while node.has_ready() {
            let rd = node.ready();
            storage.append(rd.hard_state.as_ref(), &rd.entries).unwrap();
            node.advance();
        }
    };
    // Become leader of term 1 with node 2's vote, write 30 entries, have them commit.
    while node.role() != Role::Candidate {
        node.tick();
        persist(&mut node, &mut storage);
        let term = node.term() + 1;
        node.step(Message {
            from: 2,
            to: 1,
            term,
            body: Body::PreVoteResponse { granted: true },
        });
        persist(&mut node, &mut storage);
    }
    node.step(Message {
        from: 2,
        to: 1,
        term: node.term(),
        body: Body::VoteResponse { granted: true },
    });
    assert_eq!(node.role(), Role::Leader);
    for i in 0..30 {
        node.propose(Bytes::from(format!("w{i}"))).unwrap();
    }
    persist(&mut node, &mut storage);
    let last = node.status().last_index;
    node.step(Message {
        from: 2,
        to: 1,
        term: node.term(),
        body: Body::AppendResponse {
            outcome: AppendOutcome::Match { index: last },
        },
    });
    persist(&mut node, &mut storage);
    assert_eq!(node.status().commit, last);
    // Snapshot at 20, as the driver does.
    let file = snapshot(&mut storage, 20, 1, b"image");
    node.compact(file.meta.index);
    let before = node.status();
    drop((node, storage));

    let (_storage, recovered) = reopen(dir.path(), 4096);
    assert_eq!(recovered.snapshot.as_ref().map(|s| s.meta.index), Some(20));
    let mut restarted = RawNode::new(config(), recovered.restored, 2);
    let after = restarted.status();
    assert_eq!((after.term, after.vote), (before.term, Some(1)));
    assert_eq!(
        (after.last_index, after.last_term),
        (before.last_index, before.last_term)
    );
    assert_eq!(after.snapshot_index, 20);
    // The vote of this term is remembered: another candidate is refused.
    restarted.step(Message {
        from: 3,
        to: 1,
        term: after.term,
        body: Body::Vote {
            last_index: 99,
            last_term: after.term,
            transfer: false,
        },
    });
    let rd = restarted.ready();
    assert!(rd
        .persisted_messages
        .iter()
        .any(|m| m.body == Body::VoteResponse { granted: false }));
}

/// A copy of `tests/fixtures/<name>` in a temporary directory, to open and change.
fn fixture(name: &str) -> TempDir {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = TempDir::new().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    copy(&source, dir.path());
    dir
}

/// Format 1 (before entries had kinds and snapshots learners): the directory a
/// single node of the build before left behind (see tests/fixtures/format-1/README.md)
/// opens with the same contents, the no-op recognised by its empty data, and takes
/// new entries of every kind after them.
#[test]
fn a_format_1_directory_opens_and_takes_new_entries() {
    let dir = fixture("format-1");
    let options = || {
        StorageOptions::new(
            dir.path().join("log/fixture"),
            dir.path().join("state/fixture"),
        )
    };
    let (mut storage, recovered) = Storage::open(options()).unwrap();
    let restored = &recovered.restored;
    let snapshot = restored
        .snapshot
        .as_ref()
        .expect("the fixture has a snapshot");
    assert_eq!(
        (snapshot.index, snapshot.term, &snapshot.membership),
        (15, 2, &Membership::with_voters([1]))
    );
    assert_eq!(restored.hard_state.term, 3);
    let kinds: Vec<(Index, Term, EntryKind)> = restored
        .entries
        .iter()
        .map(|e| (e.index, e.term, e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (16, 3, EntryKind::Noop),
            (17, 3, EntryKind::Normal),
            (18, 3, EntryKind::Normal),
            (19, 3, EntryKind::Normal)
        ]
    );
    assert_eq!(
        storage.read_entries(16, 19, usize::MAX).unwrap(),
        restored.entries
    );

    let new = [
        Entry::noop(20, 4),
        Entry {
            kind: EntryKind::ConfChange,
            ..Entry::normal(21, 4, ConfChange::AddLearner(2).encode(b"context"))
        },
        Entry::normal(22, 4, Bytes::from_static(b"command")),
    ];
    storage
        .append(
            Some(&HardState {
                term: 4,
                vote: None,
                commit: 19,
            }),
            &new,
        )
        .unwrap();
    drop(storage);
    let (_, recovered) = Storage::open(options()).unwrap();
    assert_eq!(recovered.restored.entries[4..], new);
}
