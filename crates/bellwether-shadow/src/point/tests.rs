//! The point store alone: points of made-up content (the kinds' tests cover real data).

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn meta(source: &str) -> ShadowMeta {
    ShadowMeta {
        format: FORMAT,
        kind: ResourceKind::Dir,
        source: source.into(),
        shadow_type: ShadowType::Transactional,
        created_at: Timestamp(0),
        retention: Retention::default(),
    }
}

fn store(dir: &Path) -> PointStore {
    let mut s = PointStore::create(dir, meta("/data")).unwrap();
    s.lock_writer().unwrap();
    s
}

fn point(s: &PointStore, at: i64, content: &[u8]) -> Manifest {
    let (r, new) = s.put_object(content).unwrap();
    s.commit_point(PointDraft {
        taken_at: Timestamp(at),
        consistent_at: Timestamp(at + 1),
        reason: Reason::Schedule,
        position: Position::Dir {
            files: 1,
            bytes: content.len() as u64,
        },
        entries: vec![Entry {
            path: "f".into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: content.len() as u64,
            mtime: None,
            objects: vec![r],
        }],
        new_bytes: if new { r.len } else { 0 },
    })
    .unwrap()
}

#[test]
fn points_chain_and_deduplicate() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let p1 = point(&s, 100, b"one");
    let p2 = point(&s, 200, b"one");
    let p3 = point(&s, 300, b"three");
    assert_eq!((p1.seq, p2.seq, p3.seq), (1, 2, 3));
    assert_eq!(p2.prev_checksum.as_deref(), Some(p1.checksum.as_str()));
    assert_eq!(p2.new_bytes, 0, "the same content is stored once");
    assert_eq!(s.find(&Target::Time(Timestamp(250))).unwrap().seq, 2);
    assert_eq!(s.find(&Target::Time(Timestamp(301))).unwrap().seq, 3);
    assert_eq!(s.find(&Target::Latest).unwrap().seq, 3);
    let e = s.find(&Target::Time(Timestamp(100))).unwrap_err();
    assert!(matches!(e, ShadowError::BeforeFirstPoint { .. }), "{e}");
    let v = s.verify(true).unwrap();
    assert_eq!((v.points, v.objects), (3, 2));
}

#[test]
fn verify_names_the_missing_or_damaged_point() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    for i in 1..=4 {
        point(&s, i * 100, format!("c{i}").as_bytes());
    }
    let p2 = t.path().join("points/0000000002.json");
    let saved = std::fs::read(&p2).unwrap();
    std::fs::remove_file(&p2).unwrap();
    let e = s.verify(false).unwrap_err();
    assert!(
        matches!(e, ShadowError::MissingPoint { id: PointId(2), .. }),
        "{e}"
    );
    assert!(e.to_string().contains("point p2"), "{e}");

    // A manifest whose content no longer matches its checksum.
    let text = String::from_utf8(saved.clone()).unwrap();
    std::fs::write(&p2, text.replace("\"mode\":420", "\"mode\":511")).unwrap();
    let e = s.verify(false).unwrap_err();
    assert!(
        matches!(e, ShadowError::DamagedPoint { id: PointId(2), .. }),
        "{e}"
    );

    // A consistent manifest swapped for another: the chain breaks at the next point.
    std::fs::write(&p2, &saved).unwrap();
    s.verify(false).unwrap();
    std::fs::copy(
        t.path().join("points/0000000001.json"),
        t.path().join("points/0000000003.json"),
    )
    .unwrap();
    let e = s.verify(false).unwrap_err();
    assert!(e.to_string().contains("p3"), "{e}");
}

#[test]
fn losing_the_latest_point_is_detected() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    point(&s, 100, b"a");
    point(&s, 200, b"b");
    std::fs::remove_file(t.path().join("points/0000000002.json")).unwrap();
    let e = s.verify(false).unwrap_err();
    assert!(
        matches!(e, ShadowError::MissingPoint { id: PointId(2), .. }),
        "{e}"
    );
}

#[test]
fn the_commit_log_ignores_a_torn_tail_but_names_damage() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let p = point(&s, 100, b"a");
    let mut w = s.log_writer(p.id()).unwrap();
    for i in 0..5 {
        w.append(Timestamp(200 + i), format!("commit {i}").as_bytes());
    }
    w.flush().unwrap();
    let path = w.path().to_owned();
    drop(w);
    assert_eq!(s.log_records(p.id(), None).unwrap().len(), 5);
    assert_eq!(
        s.log_records(p.id(), Some(Timestamp(202))).unwrap().len(),
        3
    );
    // A record cut short at the end: the follower died while appending.
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() - 3]).unwrap();
    assert_eq!(s.log_records(p.id(), None).unwrap().len(), 4);
    // Reopening for appending cuts the torn record and continues the chain.
    let mut w = s.log_writer(p.id()).unwrap();
    w.append(Timestamp(300), b"after");
    w.flush().unwrap();
    drop(w);
    let r = s.log_records(p.id(), None).unwrap();
    assert_eq!(r.len(), 5);
    assert_eq!(r[4].payload, b"after");
    // A flipped byte inside: named with its segment and offset.
    let mut bytes = std::fs::read(&path).unwrap();
    let second = r[1].offset as usize;
    bytes[second + 50] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = s.log_records(p.id(), None).unwrap_err();
    assert!(
        matches!(e, ShadowError::DamagedLog { offset, .. } if offset == r[1].offset),
        "{e}"
    );
    assert!(e.to_string().contains("0000000001.log"), "{e}");
}

#[test]
fn writing_needs_the_writer_lock_and_one_follower_holds_it() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let mut other = PointStore::open(t.path()).unwrap();
    assert!(other.put_object(b"x").is_err());
    let e = other.lock_writer().unwrap_err();
    assert!(matches!(e, ShadowError::Busy { .. }), "{e}");
    assert!(other.writer_running());
    drop(s);
    other.lock_writer().unwrap();
    // Another resource in the same directory is refused.
    let e = PointStore::create(t.path(), meta("/elsewhere")).unwrap_err();
    assert!(matches!(e, ShadowError::OtherResource { .. }), "{e}");
}

#[test]
fn thinning_keeps_the_chain_verifiable() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let h = 3_600_000_000i64;
    for i in 0..6 {
        point(&s, i * h / 2, format!("c{i}").as_bytes());
    }
    let policy = Retention {
        keep_all_for: bellwether_model::Dur::from_secs(3600),
        hourly_for: bellwether_model::Dur::from_secs(10 * 3600),
        daily_for: bellwether_model::Dur::ZERO,
    };
    let r = s.thin(&policy, Timestamp(3 * h)).unwrap();
    assert!(!r.removed.is_empty(), "{r:?}");
    assert_eq!(r.gc.objects_removed as usize, r.removed.len());
    let v = s.verify(true).unwrap();
    assert_eq!(v.thinned as usize, r.removed.len());
    let e = s.point(r.removed[0]).unwrap_err();
    assert!(e.to_string().contains("retention removed it"), "{e}");
}

#[test]
fn control_wakes_the_loop_at_once() {
    let ctl = std::sync::Arc::new(Control::new());
    let c2 = ctl.clone();
    let waiter = std::thread::spawn(move || c2.wait(Duration::from_secs(3600)));
    ctl.request_point(Reason::OnDemand);
    waiter.join().unwrap();
    assert_eq!(ctl.take_requests(), vec![Reason::OnDemand]);
    ctl.stop();
    ctl.wait(Duration::from_secs(3600));
    assert!(ctl.is_stopped());
}

#[test]
fn targets_parse() {
    assert_eq!(Target::parse("p7"), Ok(Target::Point(PointId(7))));
    assert_eq!(Target::parse("latest"), Ok(Target::Latest));
    assert_eq!(
        Target::parse("1796493600.5"),
        Ok(Target::Time(Timestamp(1_796_493_600_500_000)))
    );
    for bad in ["p", "p0", "px", "tomorrow", ""] {
        let e = Target::parse(bad).unwrap_err();
        assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
    }
}

fn any_reason() -> impl Strategy<Value = Reason> {
    prop_oneof![
        Just(Reason::Schedule),
        Just(Reason::OnDemand),
        Just(Reason::BeforeRestore),
        Just(Reason::Base),
        ("[a-z]{1,8}", any::<i64>(), 0.0f64..=1.0).prop_map(|(source, t, p)| Reason::Predicted {
            source,
            failure_at: Timestamp(t),
            probability: p,
        }),
    ]
}

proptest! {
    /// A manifest read back from its JSON is the manifest written, with the same checksum;
    /// any text at all is either a manifest or an error, never a panic.
    #[test]
    fn manifests_round_trip(seq in 1u64..1_000_000, at in any::<i64>(), reason in any_reason(),
                            sizes in proptest::collection::vec(0u64..1 << 40, 0..5)) {
        let entries = sizes.iter().enumerate().map(|(i, n)| Entry {
            path: format!("d/{i}"),
            kind: EntryKind::File,
            mode: 0o600,
            size: *n,
            mtime: Some(Timestamp(at)),
            objects: vec![ObjectRef { id: ObjectId::of(&n.to_le_bytes()), len: *n }],
        }).collect();
        let mut m = Manifest {
            format: FORMAT, seq, kind: ResourceKind::Sqlite, source: "/x".into(),
            shadow_type: ShadowType::Full, taken_at: Timestamp(at), consistent_at: Timestamp(at),
            reason, position: Position::Postgres { timeline: 1, lsn: seq }, bytes: 0, new_bytes: 0,
            entries, clones: Vec::new(), from_log: None, prev_checksum: None, checksum: String::new(),
        };
        // A point's file: serialized once, its checksum put in (and a reason's free text
        // may itself hold `"checksum":""`).
        let mut written = m.clone();
        let bytes = store::manifest_bytes(&mut written);
        m.checksum = store::manifest_checksum(&m);
        prop_assert_eq!(&written.checksum, &m.checksum);
        let read: Manifest = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&read, &m);
        let back: Manifest = serde_json::from_str(&serde_json::to_string_pretty(&m).unwrap()).unwrap();
        prop_assert_eq!(store::manifest_checksum(&back), m.checksum.clone());
        prop_assert_eq!(back, m);
    }

    #[test]
    fn manifest_parser_never_panics(s in "\\PC{0,200}") {
        let _ = serde_json::from_str::<Manifest>(&s);
    }
}

#[test]
fn a_point_syncs_its_few_new_objects_one_by_one_and_many_with_the_file_system() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    // A store just opened does not know what a process before it left unsynced.
    assert_eq!(s.unsynced(), (0, true));
    let p1 = point(&s, 100, b"first");
    assert_eq!(s.unsynced(), (0, false));
    // Known content is not written again, so there is nothing to sync for it.
    s.put_object(b"first").unwrap();
    assert_eq!(s.unsynced(), (0, false));
    for i in 0..3u8 {
        s.put_object(&[i; 10]).unwrap();
    }
    assert_eq!(s.unsynced(), (3, false));
    // Objects of a point that failed, removed as unreferenced before the next point.
    s.gc().unwrap();
    assert!(!s.has_object(&ObjectId::of(&[0u8; 10])));
    let p2 = point(&s, 200, b"second");
    assert_eq!(s.unsynced(), (0, false));
    for i in 0..=store::SYNC_EACH_MAX as u32 {
        s.put_object(&i.to_le_bytes()).unwrap();
    }
    assert_eq!(s.unsynced(), (0, true), "past the bound: one syncfs");
    let p3 = point(&s, 300, b"third");
    assert_eq!(s.unsynced(), (0, false));
    // Whichever way they were synced, the points read back whole.
    let report = s.verify(true).unwrap();
    assert_eq!(report.points, 3, "{report:?}");
    for p in [p1, p2, p3] {
        assert_eq!(s.point(p.id()).unwrap(), p);
    }
}

#[test]
fn staged_objects_are_synced_kept_from_gc_and_released_by_the_point_that_uses_them() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    point(&s, 100, b"first");
    let (a, _) = s.put_object(b"ahead").unwrap();
    let (b, _) = s.put_object(b"dropped").unwrap();
    let (c, _) = s.put_object(b"not staged").unwrap();
    s.stage([a.id, b.id]).unwrap();
    // Staging made them durable: the next point has nothing of theirs to sync.
    assert_eq!(s.unsynced(), (0, false));
    assert_eq!(s.staged(), 2);
    s.gc().unwrap();
    assert!(s.has_object(&a.id) && s.has_object(&b.id));
    assert!(
        !s.has_object(&c.id),
        "gc removes what is neither referenced nor staged"
    );
    // A point referencing one releases it; the other stays staged until unstaged.
    let p = point(&s, 200, b"ahead");
    assert_eq!(p.objects().next().unwrap().id, a.id);
    assert_eq!(s.staged(), 1);
    s.unstage([b.id]);
    assert_eq!(s.staged(), 0);
    s.gc().unwrap();
    assert!(s.has_object(&a.id) && !s.has_object(&b.id));
    s.verify(true).unwrap();
}

#[test]
fn an_older_format_is_read_and_marked_current_by_a_writer_a_newer_one_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let p1 = {
        let s = store(t.path());
        point(&s, 100, b"before")
    };
    let meta_path = t.path().join("shadow.json");
    let set_format = |n: u32| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        v["format"] = n.into();
        std::fs::write(&meta_path, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    // A store an earlier Bellwether wrote: read as it is.
    set_format(OLDEST_FORMAT);
    let s = PointStore::open(t.path()).unwrap();
    assert_eq!(s.meta().format, OLDEST_FORMAT);
    assert_eq!(s.point(p1.id()).unwrap(), p1);
    drop(s);
    // A writer marks it with the current format before it stores anything.
    let s = store(t.path());
    assert_eq!(s.meta().format, FORMAT);
    drop(s);
    assert_eq!(PointStore::open(t.path()).unwrap().meta().format, FORMAT);
    // A newer format is refused, and says so, naming the file.
    set_format(FORMAT + 1);
    let e = PointStore::open(t.path()).unwrap_err().to_string();
    assert!(
        e.contains("shadow.json") && e.contains("newer Bellwether"),
        "{e}"
    );
}

#[test]
fn a_new_segment_is_made_by_its_first_commit_and_replaces_what_a_crash_left() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let p = point(&s, 100, b"a");
    let w = s.new_log_writer(p.id()).unwrap();
    let path = w.path().to_owned();
    // Taking the point touched nothing: no commit yet, no file, and an empty segment.
    assert!(!path.exists());
    assert!(w.is_empty());
    assert_eq!(s.log_records(p.id(), None).unwrap().len(), 0);
    drop(w);
    // What a follower that crashed while writing under this name may have left.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        b"half of a record from a point that was never committed",
    )
    .unwrap();
    let mut w = s.new_log_writer(p.id()).unwrap();
    w.append(Timestamp(200), b"first");
    w.append(Timestamp(201), b"second");
    w.flush().unwrap();
    w.append(Timestamp(202), b"third");
    w.flush().unwrap();
    assert_eq!(
        (w.records(), w.len()),
        (3, std::fs::metadata(&path).unwrap().len())
    );
    drop(w);
    let r = s.log_records(p.id(), None).unwrap();
    let payloads: Vec<&[u8]> = r.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(payloads, [&b"first"[..], b"second", b"third"]);
    // It reopens like any segment and the chain goes on.
    let mut w = s.log_writer(p.id()).unwrap();
    assert_eq!(w.records(), 3);
    w.append(Timestamp(203), b"fourth");
    w.flush().unwrap();
    assert_eq!(s.log_records(p.id(), None).unwrap().len(), 4);
}

#[test]
fn head_is_rewritten_in_place_and_reads_as_before() {
    let t = tempfile::tempdir().unwrap();
    let head = t.path().join("points").join("HEAD");
    {
        let s = store(t.path());
        point(&s, 100, b"one");
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&head).unwrap());
        point(&s, 200, b"two");
        let p3 = point(&s, 300, b"three");
        // The same file, overwritten: no rename after the first write.
        let md = std::fs::metadata(&head).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&md), inode);
        assert_eq!(md.len(), 256);
        let text = std::fs::read_to_string(&head).unwrap();
        assert!(text.contains(&p3.checksum), "{text}");
    }
    // HEAD as a shadow before this change wrote it (pretty JSON, renamed into place).
    let pretty = format!(
        "{{\n  \"seq\": 3,\n  \"checksum\": \"{}\"\n}}\n",
        PointStore::open(t.path())
            .unwrap()
            .point(PointId(3))
            .unwrap()
            .checksum
    );
    std::fs::write(&head, pretty).unwrap();
    let mut s = PointStore::open(t.path()).unwrap();
    s.lock_writer().unwrap();
    let p4 = point(&s, 400, b"four");
    assert_eq!(p4.seq, 4);
    let p5 = point(&s, 500, b"five");
    assert_eq!(p5.prev_checksum.as_deref(), Some(p4.checksum.as_str()));
    assert_eq!(s.verify(false).unwrap().points, 5);
    // Losing the last point is still found: HEAD names it.
    std::fs::remove_file(t.path().join("points").join("0000000005.json")).unwrap();
    assert!(s.verify(false).is_err());
}

/// A point is committed by its manifest; `HEAD` (written in place, not synced) may lag it
/// only where the machine stopped. Such points are accepted by `verify` and adopted by the
/// next writer; a manifest past `HEAD` that does not chain from it is still damage.
#[test]
fn points_past_a_lagging_head_that_chain_from_it_are_adopted() {
    let t = tempfile::tempdir().unwrap();
    let head = t.path().join("points").join("HEAD");
    let (p1, p3) = {
        let s = store(t.path());
        let p1 = point(&s, 100, b"one");
        point(&s, 200, b"two");
        (p1, point(&s, 300, b"three"))
    };
    // What a power loss after p3's manifest, before its `HEAD` reached the disk, leaves.
    let lagging = format!("{{\"seq\":1,\"checksum\":\"{}\"}}\n", p1.checksum);
    std::fs::write(&head, format!("{lagging:<256}")).unwrap();
    let reader = PointStore::open(t.path()).unwrap();
    assert_eq!(reader.verify(true).unwrap().points, 3);
    let mut s = PointStore::open(t.path()).unwrap();
    s.lock_writer().unwrap();
    assert!(
        std::fs::read_to_string(&head)
            .unwrap()
            .contains(&p3.checksum),
        "the writer moved HEAD to p3"
    );
    let p4 = point(&s, 400, b"four");
    assert_eq!(p4.seq, 4);
    assert_eq!(p4.prev_checksum.as_deref(), Some(p3.checksum.as_str()));
    assert_eq!(s.verify(false).unwrap().points, 4);
    drop(s);

    // A manifest past HEAD that does not chain from it (another shadow's p5) is named.
    let other = tempfile::tempdir().unwrap();
    {
        let o = store(other.path());
        for at in [1, 2, 3, 4, 5] {
            point(&o, at * 1000, format!("other {at}").as_bytes());
        }
    }
    std::fs::copy(
        other.path().join("points").join("0000000005.json"),
        t.path().join("points").join("0000000005.json"),
    )
    .unwrap();
    let err = PointStore::open(t.path())
        .unwrap()
        .verify(false)
        .unwrap_err();
    assert!(
        err.to_string().contains("newer than points/HEAD (p4)"),
        "{err}"
    );
    // And a writer does not adopt it: the next point is p5 again, over it.
    let mut s = PointStore::open(t.path()).unwrap();
    s.lock_writer().unwrap();
    let p5 = point(&s, 500, b"five");
    assert_eq!(p5.prev_checksum.as_deref(), Some(p4.checksum.as_str()));
    assert_eq!(s.verify(true).unwrap().points, 5);
}

/// A point of one file made of `chunks`, each stored compressed where that saves.
fn compressed_point(s: &PointStore, at: i64, chunks: &[Vec<u8>]) -> Manifest {
    let objects: Vec<ObjectRef> = chunks
        .iter()
        .map(|c| s.put_object_compressed(c).unwrap().0)
        .collect();
    let size = objects.iter().map(|o| o.len).sum();
    s.commit_point(PointDraft {
        taken_at: Timestamp(at),
        consistent_at: Timestamp(at + 1),
        reason: Reason::Schedule,
        position: Position::Dir {
            files: 1,
            bytes: size,
        },
        entries: vec![Entry {
            path: "f".into(),
            kind: EntryKind::File,
            mode: 0o644,
            size,
            mtime: None,
            objects,
        }],
        new_bytes: size,
    })
    .unwrap()
}

#[test]
fn compressed_objects_read_clone_and_verify_as_their_content() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    // Text-like bytes compress; noise does not and is stored as it is.
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("row {i} status=ok\n").into_bytes())
        .collect();
    let random = crate::drill::rng::noise(7, 100_000);
    let m = compressed_point(&s, 100, &[text.clone(), random.clone()]);
    let (rt, rr) = (m.entries[0].objects[0], m.entries[0].objects[1]);
    let stored = |r: &ObjectRef| std::fs::metadata(s.object_path(&r.id)).unwrap().len();
    assert!(
        stored(&rt) * 4 < rt.len,
        "text is stored compressed: {} of {}",
        stored(&rt),
        rt.len
    );
    assert_eq!(stored(&rr), rr.len, "noise is stored as it is");
    assert_eq!(
        rt.id,
        ObjectId::of(&text),
        "named by the content, not the stored bytes"
    );

    assert_eq!(s.read_object(m.id(), &rt).unwrap(), text);
    let one = t.path().join("one");
    s.clone_object_into(m.id(), &rt, &one).unwrap();
    assert_eq!(std::fs::read(&one).unwrap(), text);
    let both = t.path().join("both");
    let n = s
        .clone_objects_into(m.id(), &m.entries[0].objects, &both)
        .unwrap();
    assert_eq!(n, (text.len() + random.len()) as u64);
    assert_eq!(
        std::fs::read(&both).unwrap(),
        [text.clone(), random].concat()
    );
    s.verify_point(&m).unwrap();
    assert_eq!(s.verify(true).unwrap().objects, 2);
    // The same content again is not stored again.
    let (_, new) = s.put_object_compressed(&text).unwrap();
    assert!(!new);
}

#[test]
fn a_damaged_compressed_object_is_named_and_never_restored() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    let text: Vec<u8> = (0..100_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let m = compressed_point(&s, 100, &[text]);
    let r = m.entries[0].objects[0];
    let path = s.object_path(&r.id);
    let mut stored = std::fs::read(&path).unwrap();
    // A flipped byte inside the frame: it fails to decompress or hashes differently.
    let mid = stored.len() / 2;
    stored[mid] ^= 0x40;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&path, &stored).unwrap();
    let e = s.read_object(m.id(), &r).unwrap_err();
    assert!(matches!(e, ShadowError::BadObject { .. }), "{e}");
    let to = t.path().join("restored");
    let e = s.clone_object_into(m.id(), &r, &to).unwrap_err();
    assert!(e.to_string().contains(&r.id.hex()), "{e}");
    assert!(s.verify(true).is_err());
    // Cut short to a few bytes of zstd's magic and nothing else: damaged, not "compressed".
    std::fs::write(&path, &stored[..4]).unwrap();
    assert!(s.verify(true).is_err());
    // No longer a zstd frame (magic gone) and shorter than its content: damaged.
    stored[0] = 0;
    std::fs::write(&path, &stored).unwrap();
    let e = s.verify_point(&m).unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
}

/// A manifest of 64 KiB or more (a PostgreSQL point lists every file of its base backup) is
/// stored compressed, read back whole and chained; damaged, it names the point.
#[test]
fn a_long_manifest_is_stored_compressed_and_read_back() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path());
    point(&s, 100, b"one");
    let (r, _) = s.put_object(b"two").unwrap();
    let entries: Vec<Entry> = (0..2000)
        .map(|i| Entry {
            path: format!("base/5/{}", 16384 + i),
            kind: EntryKind::File,
            mode: 0o600,
            size: 3,
            mtime: None,
            objects: vec![r],
        })
        .collect();
    let m = s
        .commit_point(PointDraft {
            taken_at: Timestamp(200),
            consistent_at: Timestamp(201),
            reason: Reason::Schedule,
            position: Position::Dir {
                files: 2000,
                bytes: 6000,
            },
            entries: entries.clone(),
            new_bytes: 0,
        })
        .unwrap();
    let path = t.path().join("points/0000000002.json");
    let stored = std::fs::read(&path).unwrap();
    assert!(
        stored.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        "not compressed"
    );
    assert!(stored.len() < 64 << 10, "{} bytes", stored.len());
    // The short one stays JSON.
    let first = std::fs::read(t.path().join("points/0000000001.json")).unwrap();
    assert!(first.starts_with(b"{"));
    let back = s.point(m.id()).unwrap();
    assert_eq!(back.entries, entries);
    assert_eq!(back.checksum, m.checksum);
    s.verify(true).unwrap();
    // Cut short: the point is named as damaged, never read as another.
    std::fs::write(&path, &stored[..stored.len() / 2]).unwrap();
    let e = s.point(m.id()).unwrap_err();
    assert!(matches!(e, ShadowError::DamagedPoint { .. }), "{e}");
    assert!(e.to_string().contains("p2"), "{e}");
}
