//! Conformance cases: snapshots are immutable and keep the visiting contract.

use super::*;

// ---------------------------------------------------------------------------
// Case 2: snapshots are immutable.

pub(super) fn numbered_key(op: &str, state: &str, i: u32) -> Vec<u8> {
    // Spread over many key groups so partitioned snapshots use several
    // partitions.
    encode_key(
        (i.wrapping_mul(2_654_435_761) >> 17) as u16,
        op,
        state,
        &i.to_be_bytes(),
        &[],
        &[],
    )
}

/// Takes a full and a changes snapshot, then overwrites every key, deletes
/// half, adds new ones, clears and restores other content, while another
/// thread keeps re-reading both snapshots. Every read, during and after,
/// must return exactly what the snapshot held when it was taken.
pub fn snapshot_is_immutable(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=snapshot_is_immutable", b.name());
    let mut rng = SplitMix64::new(0x1111);
    let mut m = Model::new();
    let keys: Vec<Vec<u8>> = (0..2000).map(|i| numbered_key("imm", "s", i)).collect();
    for k in &keys {
        let v = random_value(&mut rng);
        must(b.put(k, &v), &ctx);
        m.put(k, &v);
    }
    let full = take(&*b, SnapshotKind::Full, &ctx);
    let full_content = read(&*full, &ctx).puts();
    check(
        m.check_full(&full_content),
        &format!("{ctx}: full snapshot at capture"),
    );
    m.start_epoch();

    for k in keys.iter().take(50) {
        let v = random_value(&mut rng);
        must(b.put(k, &v), &ctx);
        m.put(k, &v);
    }
    for k in keys.iter().skip(50).take(10) {
        must(b.delete(k), &ctx);
        m.delete(k);
    }
    let changes = take(&*b, SnapshotKind::Changes, &ctx);
    let changes_content = read(&*changes, &ctx).entries;
    check(
        m.check_changes(&changes_content),
        &format!("{ctx}: changes snapshot at capture"),
    );

    let reread = |when: &str| -> std::result::Result<(), String> {
        let f = model::read_snapshot(&*full)?;
        diff_entries(&full_content, &f.puts())
            .map_err(|e| format!("full snapshot changed {when}: {e}"))?;
        let c = model::read_snapshot(&*changes)?;
        if c.entries != changes_content {
            let (a, b): (Entries, Entries) = (
                changes_content
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                    .collect(),
                c.entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                    .collect(),
            );
            return Err(format!(
                "changes snapshot changed {when}: {}",
                diff_entries(&a, &b)
                    .err()
                    .unwrap_or_else(|| "deletes differ".into())
            ));
        }
        Ok(())
    };

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| -> std::result::Result<usize, String> {
            let mut reads = 0;
            while !(stop.load(Ordering::Acquire) && reads >= 3) {
                reread("while the backend was mutated")?;
                reads += 1;
            }
            Ok(reads)
        });
        let mut rng = SplitMix64::new(0x2222);
        for k in &keys {
            must(b.put(k, &random_value(&mut rng)), &ctx);
        }
        for k in keys.iter().step_by(2) {
            must(b.delete(k), &ctx);
        }
        for chunk in (2000..3000).collect::<Vec<u32>>().chunks(100) {
            let mut batch = WriteBatch::new();
            for i in chunk {
                batch.put(numbered_key("imm", "s", *i), random_value(&mut rng));
            }
            batch.delete(keys[1].clone());
            must(b.write_batch(batch), &ctx);
        }
        must(b.clear(), &ctx);
        let other: Vec<(Vec<u8>, Vec<u8>)> = (5000..5500)
            .map(|i| (numbered_key("imm", "t", i), random_value(&mut rng)))
            .collect();
        restore_from(&*b, other, &ctx);
        for k in keys.iter().take(500) {
            must(b.put(k, &random_value(&mut rng)), &ctx);
        }
        let _ = take(&*b, SnapshotKind::Changes, &ctx);
        let _ = take(&*b, SnapshotKind::Full, &ctx);
        stop.store(true, Ordering::Release);
        match reader.join() {
            Ok(Ok(_reads)) => {}
            Ok(Err(e)) => panic!("{ctx}: {e}"),
            Err(_) => panic!("{ctx}: snapshot reader thread panicked"),
        }
    });
    check(reread("after the mutations"), &ctx);
    drop(b);
    // The backend is gone; a snapshot must stand on its own.
    check(reread("after the backend was dropped"), &ctx);
}

// ---------------------------------------------------------------------------
// Case 3: the visiting contract of snapshots.

/// A visitor's error stops the visit of its partition and is returned as
/// is; visiting a partition index past [`StateSnapshot::partitions`] fails
/// or visits nothing, without a panic; snapshots of an empty backend are
/// empty.
pub fn snapshot_visit_contract(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=snapshot_visit_contract", b.name());
    for kind in [SnapshotKind::Full, SnapshotKind::Changes] {
        let c = read(&*take(&*b, kind, &ctx), &ctx);
        assert_eq!(c.visited, 0, "{ctx}: {kind:?} snapshot of an empty backend");
    }
    let mut rng = SplitMix64::new(3);
    for i in 0..500 {
        must(
            b.put(&numbered_key("visit", "s", i), &random_value(&mut rng)),
            &ctx,
        );
    }
    // Changes first: the full snapshot starts a new epoch.
    for kind in [SnapshotKind::Changes, SnapshotKind::Full] {
        let s = take(&*b, kind, &ctx);
        let content = read(&*s, &ctx);
        assert_eq!(content.visited, 500, "{ctx}: {kind:?} snapshot entries");
        let mut stopped_any = false;
        for p in 0..s.partitions() {
            let mut calls = 0usize;
            let r = s.for_each_in_partition(p, &mut |_, _| {
                calls += 1;
                Err(Error::Internal("testkit visitor stop".into()))
            });
            if calls == 0 {
                assert!(r.is_ok(), "{ctx}: empty partition {p} failed: {r:?}");
                continue;
            }
            stopped_any = true;
            assert_eq!(
                calls, 1,
                "{ctx}: visit of partition {p} went on after the visitor failed"
            );
            match r {
                Err(Error::Internal(msg)) if msg == "testkit visitor stop" => {}
                other => panic!(
                    "{ctx}: partition {p}: the visitor's error must be returned as is, got {other:?}"
                ),
            }
        }
        assert!(stopped_any, "{ctx}: no partition visited any entry");
        let past = s.partitions();
        let mut calls = 0usize;
        let r = catch_unwind(AssertUnwindSafe(|| {
            s.for_each_in_partition(past, &mut |_, _| {
                calls += 1;
                Ok(())
            })
        }));
        match r {
            Err(_) => panic!("{ctx}: for_each_in_partition({past}) of {past} partitions panicked"),
            Ok(Ok(())) => assert_eq!(
                calls, 0,
                "{ctx}: partition index {past} out of range visited entries"
            ),
            Ok(Err(_)) => {}
        }
    }
}
