use super::*;

fn put(kv: &mut Kv, index: u64, key: &str, value: &str) -> Applied {
    kv.apply(index, &Kv::put_command(key.to_string(), value.to_string()))
}

fn delete(kv: &mut Kv, index: u64, key: &str) -> Applied {
    kv.apply(index, &Kv::delete_command(key.to_string()))
}

fn put_if(kv: &mut Kv, index: u64, key: &str, value: &str, must: Precondition) -> Applied {
    let command = Command::Put {
        key: key.to_string(),
        value: value.to_string(),
        precondition: Some(must),
    };
    kv.apply(index, &command.encode())
}

fn delete_if(kv: &mut Kv, index: u64, key: &str, must: Precondition) -> Applied {
    let command = Command::Delete {
        key: key.to_string(),
        precondition: Some(must),
    };
    kv.apply(index, &command.encode())
}

fn versions(create_index: u64, mod_index: u64, version: u64) -> Versions {
    Versions {
        create_index,
        mod_index,
        version,
    }
}

fn image_of(kv: &mut Kv) -> Vec<u8> {
    let mut image = Vec::new();
    kv.capture().write(&mut image).unwrap();
    image
}

#[test]
fn put_get_delete() {
    let mut kv = Kv::new();
    assert!(matches!(kv.apply(1, &[]), Applied::Rejected(_)));
    assert_eq!(
        put(&mut kv, 2, "a", "1"),
        Applied::Put {
            versions: versions(2, 2, 1)
        }
    );
    assert_eq!(
        put(&mut kv, 3, "a", "2"),
        Applied::Put {
            versions: versions(2, 3, 2)
        }
    );
    assert_eq!(kv.get("a"), Some("2"));
    assert_eq!(delete(&mut kv, 4, "a"), Applied::Delete { existed: true });
    assert_eq!(delete(&mut kv, 5, "a"), Applied::Delete { existed: false });
    assert_eq!(kv.get("a"), None);
    assert!(kv.is_empty());
    // Created again: its versions start over.
    put(&mut kv, 6, "a", "3");
    assert_eq!(
        kv.versioned("a"),
        Some(Versioned {
            value: "3".to_string(),
            versions: versions(6, 6, 1)
        })
    );
}

#[test]
fn preconditions_decide_whether_a_write_happens() {
    let mut kv = Kv::new();
    put(&mut kv, 1, "k", "v1");
    let current = Some(Versioned {
        value: "v1".to_string(),
        versions: versions(1, 1, 1),
    });
    let failed = |current: &Option<Versioned>| Applied::PreconditionFailed {
        current: current.clone(),
    };
    assert_eq!(
        put_if(&mut kv, 2, "k", "x", Precondition::ModIndex(7)),
        failed(&current)
    );
    assert_eq!(
        put_if(&mut kv, 3, "k", "x", Precondition::Absent),
        failed(&current)
    );
    assert_eq!(
        delete_if(&mut kv, 4, "k", Precondition::ModIndex(0)),
        failed(&current)
    );
    assert_eq!(kv.versioned("k"), current, "nothing changed");
    assert_eq!(
        put_if(&mut kv, 5, "k", "v2", Precondition::ModIndex(1)),
        Applied::Put {
            versions: versions(1, 5, 2)
        }
    );
    assert_eq!(
        put_if(&mut kv, 6, "k", "v3", Precondition::Exists),
        Applied::Put {
            versions: versions(1, 6, 3)
        }
    );
    assert_eq!(
        delete_if(&mut kv, 7, "k", Precondition::ModIndex(6)),
        Applied::Delete { existed: true }
    );
    assert_eq!(
        put_if(&mut kv, 8, "k", "x", Precondition::Exists),
        failed(&None)
    );
    assert_eq!(
        delete_if(&mut kv, 9, "k", Precondition::ModIndex(6)),
        failed(&None)
    );
    assert_eq!(
        put_if(&mut kv, 10, "k", "v4", Precondition::Absent),
        Applied::Put {
            versions: versions(10, 10, 1)
        }
    );
}

#[test]
fn state_bytes_count_keys_and_values() {
    let mut kv = Kv::new();
    assert_eq!(kv.state_bytes(), 0);
    put(&mut kv, 1, "ab", "123");
    assert_eq!(kv.state_bytes(), 5);
    assert_eq!(
        kv.bytes_after_put("ab", 1),
        3,
        "a replaced value no longer counts"
    );
    assert_eq!(kv.bytes_after_put("c", 4), 10);
    put(&mut kv, 2, "ab", "1");
    put(&mut kv, 3, "c", "4444");
    assert_eq!(kv.state_bytes(), 8);
    delete(&mut kv, 4, "ab");
    delete(&mut kv, 5, "missing");
    assert_eq!(kv.state_bytes(), 5);
    // A snapshot image restores the count.
    let image = image_of(&mut kv);
    assert_eq!(Kv::read_image(&image[..]).unwrap().state_bytes(), 5);
}

#[test]
fn garbage_is_rejected_without_changing_state() {
    let mut kv = Kv::new();
    put(&mut kv, 1, "k", "v");
    let before = kv.clone();
    assert!(matches!(
        kv.apply(2, &[0xff, 0xff, 0xff]),
        Applied::Rejected(_)
    ));
    // A well-formed message without an operation (only an unknown field).
    assert!(matches!(kv.apply(3, &[0x1a, 0x00]), Applied::Rejected(_)));
    assert_eq!(kv, before);
}

#[test]
fn digest_depends_on_contents_and_versions_not_on_order() {
    let mut one = Kv::new();
    put(&mut one, 1, "a", "1");
    put(&mut one, 2, "b", "2");
    let mut two = Kv::new();
    put(&mut two, 2, "b", "2");
    put(&mut two, 1, "a", "1");
    assert_eq!(one.digest_hex(), two.digest_hex());
    put(&mut two, 3, "c", "3");
    assert_ne!(one.digest_hex(), two.digest_hex());
    delete(&mut two, 4, "c");
    assert_eq!(one.digest_hex(), two.digest_hex());
    // The same value written again is a new version.
    put(&mut two, 5, "a", "1");
    assert_ne!(one.digest_hex(), two.digest_hex());
    assert_eq!(Kv::new().digest_hex(), "0000000000000000");
    for key in ["a", "b"] {
        delete(&mut two, 6, key);
    }
    assert_eq!(two.digest_hex(), "0000000000000000");
    // Moving bytes between key and value changes the digest.
    let (mut x, mut y) = (Kv::new(), Kv::new());
    put(&mut x, 1, "ab", "c");
    put(&mut y, 1, "a", "bc");
    assert_ne!(x.digest_hex(), y.digest_hex());
}

#[test]
fn image_round_trip() {
    let mut kv = Kv::new();
    for i in 0..1000 {
        put(
            &mut kv,
            i + 1,
            &format!("key {} ü", i % 700),
            &"v".repeat(i as usize % 37),
        );
    }
    put(&mut kv, 2000, "", "empty key survives too");
    let image = image_of(&mut kv);
    let loaded = Kv::read_image(image.as_slice()).unwrap();
    assert_eq!(loaded, kv);
    assert_eq!(loaded.versioned("key 5 ü"), kv.versioned("key 5 ü"));
    assert_eq!(
        loaded.versioned("key 5 ü").map(|v| v.versions),
        Some(versions(6, 706, 2))
    );

    let empty = image_of(&mut Kv::new());
    assert_eq!(Kv::read_image(empty.as_slice()).unwrap(), Kv::new());
}

/// An image as versions before 03 wrote it: magic, the member table (02 only), the
/// pairs without versions, and the digest of the pairs without versions.
fn unversioned_image(magic: &[u8; 8], pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut image = magic.to_vec();
    if magic == b"DKVIMG02" {
        image.extend(0u64.to_le_bytes());
    }
    image.extend((pairs.len() as u64).to_le_bytes());
    let mut digest = 0u64;
    for (key, value) in pairs {
        for field in [key, value] {
            image.extend((field.len() as u32).to_le_bytes());
            image.extend(field.as_bytes());
        }
        digest = digest.wrapping_add(unversioned_pair_hash(key, value));
    }
    image.extend(digest.to_le_bytes());
    image
}

/// A replica that loads an image without versions and one that applies the entries
/// of the format before agree: both give those keys versions of zero.
#[test]
fn state_from_before_versions_is_the_same_however_it_is_reached() {
    for magic in [b"DKVIMG01", b"DKVIMG02"] {
        let image = unversioned_image(magic, &[("a", "1"), ("b", "2")]);
        let loaded = Kv::read_image(image.as_slice()).unwrap();

        let mut replayed = Kv::new();
        // Entries of the format before: a bare `distraft.v1.Command` with a Put.
        for (index, (key, value)) in [(7, (b'a', b'1')), (9, (b'b', b'2'))] {
            let entry = [0x0a, 0x06, 0x0a, 0x01, key, 0x12, 0x01, value];
            assert_eq!(
                replayed.apply(index, &entry),
                Applied::Put {
                    versions: Versions::default()
                }
            );
        }
        assert_eq!(loaded, replayed);
        assert_eq!(loaded.digest_hex(), replayed.digest_hex());

        // Written again with versions, they count from there.
        let mut after = loaded.clone();
        assert_eq!(
            put_if(&mut after, 12, "a", "3", Precondition::ModIndex(0)),
            Applied::Put {
                versions: versions(0, 12, 1)
            }
        );
    }
    let mut bad = unversioned_image(b"DKVIMG02", &[("a", "1")]);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(Kv::read_image(bad.as_slice()).is_err(), "digest checked");
}

#[test]
fn images_with_unknown_sections_are_refused() {
    let mut kv = Kv::new();
    put(&mut kv, 1, "a", "1");
    let mut image = image_of(&mut kv);
    // Replace "no sections" (the u64 before the digest) by one section of tag 9.
    let at = image.len() - 16;
    let digest = image.split_off(at + 8);
    image.truncate(at);
    image.extend(1u64.to_le_bytes());
    image.extend(9u32.to_le_bytes());
    image.extend(0u64.to_le_bytes());
    image.extend(digest);
    let err = Kv::read_image(image.as_slice()).unwrap_err().to_string();
    assert!(err.contains("section 9"), "{err}");
}

#[test]
fn a_captured_image_does_not_change_and_costs_no_copy() {
    let mut kv = Kv::new();
    for i in 0..100 {
        put(&mut kv, 1, &format!("k{i}"), "before");
    }
    let before = kv.clone();
    let image = kv.capture();
    assert!(Arc::ptr_eq(&image.map, &kv.base), "shared, not copied");
    // Changes while the image is held: overwrite, delete, add, add then delete.
    let changes = |kv: &mut Kv| {
        put(kv, 2, "k1", "after");
        delete(kv, 3, "k2");
        put(kv, 4, "new", "after");
        put(kv, 5, "gone", "x");
        delete(kv, 6, "gone");
    };
    changes(&mut kv);
    let mut expected = before.clone();
    changes(&mut expected);
    assert_eq!(kv, expected);
    assert_eq!((kv.len(), kv.get("k2"), kv.get("gone")), (100, None, None));
    assert_eq!(
        kv.versioned("k1").map(|v| v.versions),
        Some(versions(1, 2, 2))
    );
    assert_eq!(kv.digest_hex(), expected.digest_hex());
    let mut held = Vec::new();
    image.write(&mut held).unwrap();
    assert_eq!(Kv::read_image(held.as_slice()).unwrap(), before);
    // A copy made while the image is held captures the changes as well.
    let merged = image_of(&mut kv.clone());
    assert_eq!(Kv::read_image(merged.as_slice()).unwrap(), expected);

    // Released, the next change folds the others into the map itself.
    drop(image);
    put(&mut kv, 7, "k3", "after");
    put(&mut expected, 7, "k3", "after");
    assert!(kv.delta.is_empty());
    assert_eq!(kv, expected);
    assert_eq!(kv.capture().map.len(), 100);
}

#[test]
fn damaged_images_are_refused() {
    let mut kv = Kv::new();
    put(&mut kv, 1, "alpha", "one");
    put(&mut kv, 2, "beta", "two");
    let image = image_of(&mut kv);

    // Every truncation fails.
    for cut in 0..image.len() {
        assert!(Kv::read_image(&image[..cut]).is_err(), "cut at {cut}");
    }
    // Every single-byte change fails (magic, lengths, contents, versions or digest).
    for at in 0..image.len() {
        let mut bad = image.clone();
        bad[at] ^= 0x01;
        assert!(Kv::read_image(bad.as_slice()).is_err(), "flip at {at}");
    }
    let mut longer = image.clone();
    longer.push(0);
    assert!(Kv::read_image(longer.as_slice()).is_err());
}

fn keys_of(page: &ListPage) -> Vec<&str> {
    page.keys.iter().map(|listed| listed.key.as_str()).collect()
}

fn query(prefix: &str, limit: usize) -> ListQuery {
    ListQuery {
        prefix: prefix.to_string(),
        limit,
        max_bytes: usize::MAX,
        ..ListQuery::default()
    }
}

#[test]
fn listing_by_prefix_and_range_in_pages() {
    let mut kv = Kv::new();
    for (i, key) in ["a", "app/1", "app/2", "app/3", "apq", "b", "c"]
        .iter()
        .enumerate()
    {
        put(&mut kv, i as u64 + 1, key, &format!("v{i}"));
    }
    let page = kv.list(&query("app/", 10));
    assert_eq!(keys_of(&page), ["app/1", "app/2", "app/3"]);
    assert!(!page.more);
    assert_eq!(page.keys[1].value, "v2");
    assert_eq!(page.keys[1].versions, versions(3, 3, 1));

    // Page by page, each continuing after the last key of the one before.
    let mut first = query("app/", 2);
    let page = kv.list(&first);
    assert_eq!((keys_of(&page), page.more), (vec!["app/1", "app/2"], true));
    first.after = Some("app/2".to_string());
    let page = kv.list(&first);
    assert_eq!((keys_of(&page), page.more), (vec!["app/3"], false));

    // A range, with or without values; an `after` below the start changes nothing.
    let range = ListQuery {
        start: "apq".to_string(),
        end: Some("c".to_string()),
        after: Some("a".to_string()),
        keys_only: true,
        ..query("", 100)
    };
    let page = kv.list(&range);
    assert_eq!(keys_of(&page), ["apq", "b"]);
    assert!(page.keys.iter().all(|listed| listed.value.is_empty()));
    assert_eq!(keys_of(&kv.list(&query("zzz", 10))), Vec::<&str>::new());

    // The byte budget ends a page early, but never before its first key.
    let small = ListQuery {
        max_bytes: 1,
        ..query("", 100)
    };
    let page = kv.list(&small);
    assert_eq!((keys_of(&page), page.more), (vec!["a"], true));
}

/// While a snapshot holds the map, changes wait aside; a listing sees them merged.
#[test]
fn listing_merges_the_changes_a_snapshot_keeps_aside() {
    let mut kv = Kv::new();
    for (i, key) in ["k1", "k2", "k3", "k5"].iter().enumerate() {
        put(&mut kv, i as u64 + 1, key, "old");
    }
    let image = kv.capture();
    put(&mut kv, 10, "k2", "new");
    delete(&mut kv, 11, "k3");
    put(&mut kv, 12, "k4", "new");
    put(&mut kv, 13, "k0", "new");
    assert!(!kv.delta.is_empty());
    let page = kv.list(&query("k", 100));
    let listed: Vec<(&str, &str)> = page
        .keys
        .iter()
        .map(|l| (l.key.as_str(), l.value.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("k0", "new"),
            ("k1", "old"),
            ("k2", "new"),
            ("k4", "new"),
            ("k5", "old")
        ]
    );
    let mut paged = query("k", 2);
    paged.after = Some("k1".to_string());
    assert_eq!(keys_of(&kv.list(&paged)), ["k2", "k4"]);
    drop(image);
}

#[test]
fn versions_survive_an_image_whatever_their_size() {
    let mut kv = Kv::new();
    for (i, index) in [
        1u64,
        127,
        128,
        16_383,
        16_384,
        u32::MAX as u64,
        u64::MAX - 1,
        u64::MAX,
    ]
    .into_iter()
    .enumerate()
    {
        put(&mut kv, index, &format!("k{i}"), "v");
        put(&mut kv, index, &format!("k{i}"), "w");
    }
    let image = image_of(&mut kv);
    let loaded = Kv::read_image(image.as_slice()).unwrap();
    assert_eq!(loaded, kv);
    assert_eq!(
        loaded.versioned("k7").map(|v| v.versions),
        Some(versions(u64::MAX, u64::MAX, 2))
    );
}

#[test]
fn a_transaction_compares_then_writes_one_branch_atomically() {
    let mut kv = Kv::new();
    put(&mut kv, 1, "a", "1");
    put(&mut kv, 2, "b", "2");
    let compare = |key: &str, target: Target| Compare {
        key: key.to_string(),
        target,
    };
    let txn = |compares: Vec<Compare>| {
        Command::Txn(Txn {
            compares,
            success: vec![
                TxnOp::Put {
                    key: "a".into(),
                    value: "won".into(),
                },
                TxnOp::Delete { key: "b".into() },
            ],
            failure: vec![TxnOp::Put {
                key: "lost".into(),
                value: "yes".into(),
            }],
        })
        .encode()
    };
    // One comparison off: the failure branch, and nothing of the success branch.
    let applied = kv.apply(
        3,
        &txn(vec![
            compare("a", Target::Value("1".into())),
            compare("b", Target::ModIndex(1)),
        ]),
    );
    assert_eq!(
        applied,
        Applied::Txn {
            succeeded: false,
            results: vec![TxnResult::Put {
                key: "lost".into(),
                versions: versions(3, 3, 1)
            }]
        }
    );
    assert_eq!((kv.get("a"), kv.get("b")), (Some("1"), Some("2")));
    // All hold (an absent key has version 0): both writes, at the same index.
    let applied = kv.apply(
        4,
        &txn(vec![
            compare("a", Target::Value("1".into())),
            compare("a", Target::Version(1)),
            compare("b", Target::ModIndex(2)),
            compare("never", Target::Version(0)),
        ]),
    );
    assert_eq!(
        applied,
        Applied::Txn {
            succeeded: true,
            results: vec![
                TxnResult::Put {
                    key: "a".into(),
                    versions: versions(1, 4, 2)
                },
                TxnResult::Delete {
                    key: "b".into(),
                    existed: true
                },
            ]
        }
    );
    assert_eq!((kv.get("a"), kv.get("b")), (Some("won"), None));
    // An absent key matches no value and no mod_index.
    let applied = kv.apply(5, &txn(vec![compare("b", Target::ModIndex(0))]));
    assert!(matches!(
        applied,
        Applied::Txn {
            succeeded: false,
            ..
        }
    ));
}

fn idempotent(kv: &mut Kv, index: u64, command: &Command, key: &str, at_ms: u64) -> Applied {
    kv.apply(index, &command.encode_idempotent(key, at_ms))
}

/// A retry of a write (same idempotency key, same request) is answered with the first
/// outcome and changes nothing, however the state changed meanwhile; the key with a
/// different request is refused; both survive a snapshot.
#[test]
fn retries_apply_once() {
    let mut kv = Kv::new();
    let create = Command::Put {
        key: "k".into(),
        value: "1".into(),
        precondition: Some(Precondition::Absent),
    };
    let first = idempotent(&mut kv, 5, &create, "r1", 100);
    assert_eq!(
        first,
        Applied::Put {
            versions: versions(5, 5, 1)
        }
    );
    put(&mut kv, 6, "k", "2");
    let retry = idempotent(&mut kv, 7, &create, "r1", 200);
    assert_eq!(
        retry,
        Applied::Replayed {
            index: 5,
            outcome: Box::new(first.clone())
        }
    );
    assert_eq!(kv.get("k"), Some("2"), "the retry changed nothing");
    let other = Command::Delete {
        key: "k".into(),
        precondition: None,
    };
    assert_eq!(
        idempotent(&mut kv, 8, &other, "r1", 200),
        Applied::IdempotencyMismatch { key: "r1".into() }
    );
    assert_eq!(kv.get("k"), Some("2"));
    // A failed precondition is an outcome like any other.
    let failed = idempotent(&mut kv, 9, &create, "r2", 300);
    assert!(matches!(failed, Applied::PreconditionFailed { .. }));

    let mut loaded = Kv::read_image(image_of(&mut kv).as_slice()).unwrap();
    assert_eq!(loaded, kv);
    assert_eq!(loaded.idempotency_keys(), 2);
    assert!(matches!(
        idempotent(&mut loaded, 10, &create, "r2", 300),
        Applied::Replayed { index: 9, .. }
    ));
    assert!(matches!(
        idempotent(&mut loaded, 11, &create, "r1", 300),
        Applied::Replayed { index: 5, .. }
    ));
}

/// A transaction's outcome is remembered whole, and the image keeps it.
#[test]
fn transaction_retries_apply_once() {
    let mut kv = Kv::new();
    let txn = Command::Txn(Txn {
        compares: vec![Compare {
            key: "a".into(),
            target: Target::Version(0),
        }],
        success: vec![
            TxnOp::Put {
                key: "a".into(),
                value: "x".into(),
            },
            TxnOp::Delete { key: "b".into() },
        ],
        failure: vec![],
    });
    let first = idempotent(&mut kv, 3, &txn, "t", 1);
    let mut loaded = Kv::read_image(image_of(&mut kv).as_slice()).unwrap();
    assert_eq!(
        idempotent(&mut loaded, 4, &txn, "t", 2),
        Applied::Replayed {
            index: 3,
            outcome: Box::new(first)
        }
    );
}

/// A restore's streaming copy of an image: the same pairs, versions, digest and
/// idempotency table, the member table replaced; damage and disorder refused.
#[test]
fn an_image_copied_with_other_members_holds_the_same_state() {
    let mut kv = Kv::new();
    for (i, key) in ["b", "a", "c", "d"].iter().enumerate() {
        put(&mut kv, i as u64 + 1, key, &format!("value-{i}"));
    }
    delete(&mut kv, 5, "c");
    put(&mut kv, 6, "a", "again");
    let mut image = Vec::new();
    kv.capture().write(&mut image).unwrap();
    let mut copied = Vec::new();
    let summary = copy_with_members(image.as_slice(), &mut copied, &[]).unwrap();
    assert_eq!(summary.keys, 3);
    assert_eq!(summary.state_bytes, kv.state_bytes());
    let read = Kv::read_image(copied.as_slice()).unwrap();
    assert_eq!(read.digest_hex(), kv.digest_hex());
    assert_eq!(read.versioned("a"), kv.versioned("a"));
    assert_eq!(read.members().count(), 0);
    // Damage anywhere is refused, never copied through.
    for at in [12, image.len() / 2, image.len() - 3] {
        let mut damaged = image.clone();
        damaged[at] ^= 0x41;
        assert!(
            copy_with_members(damaged.as_slice(), std::io::sink(), &[]).is_err(),
            "damage at {at} passed"
        );
    }
    assert!(copy_with_members(&image[..image.len() - 1], std::io::sink(), &[]).is_err());
}
