//! Conformance cases: changes snapshots: what they report and what they cost.

use super::*;

// ---------------------------------------------------------------------------
// Case 4: changes snapshots.

/// After a full snapshot: overwrites, deletes, delete-then-put, a delete of
/// a key that never existed, put-then-delete of a new key, new keys and a
/// batch. The changes snapshot must report exactly the changed keys with
/// their current values, deletes as `None`, no untouched key (a key created
/// and deleted within the epoch may be absent or `None`), and base +
/// changes must equal the current state. An epoch without writes reports
/// nothing, and a key changed then changed back is either omitted or
/// reported with its (unchanged) value.
pub fn changes_snapshot_tracks_puts_and_deletes(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!(
        "backend={} case=changes_snapshot_tracks_puts_and_deletes",
        b.name()
    );
    let mut m = Model::new();
    let k = |i: u32| numbered_key("chg", "s", i);
    let v = |tag: &str| plain_value(tag.as_bytes());
    let put = |m: &mut Model, key: &[u8], value: &[u8]| {
        must(b.put(key, value), &ctx);
        m.put(key, value);
    };
    let del = |m: &mut Model, key: &[u8]| {
        must(b.delete(key), &ctx);
        m.delete(key);
    };
    for i in 0..10 {
        put(&mut m, &k(i), &v(&format!("base-{i}")));
    }
    let base = full_entries(&*b, &ctx);
    check(m.check_full(&base), &format!("{ctx}: base"));
    m.start_epoch();

    put(&mut m, &k(0), &v("new-0"));
    put(&mut m, &k(1), &v("new-1a"));
    put(&mut m, &k(1), &v("new-1b"));
    del(&mut m, &k(2));
    del(&mut m, &k(3));
    put(&mut m, &k(3), &v("again-3"));
    del(&mut m, &k(100)); // never existed
    put(&mut m, &k(101), &v("short-lived"));
    del(&mut m, &k(101)); // created and deleted within the epoch
    put(&mut m, &k(102), &v("created"));
    let mut batch = WriteBatch::new();
    batch
        .put(k(4), v("batch-4"))
        .delete(k(5))
        .put(k(103), v("batch-new"))
        .put(k(104), v("batch-tmp"))
        .delete(k(104));
    must(b.write_batch(batch.clone()), &ctx);
    m.apply_batch(&batch);

    let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
    check(m.check_changes(&c.entries), &ctx);
    // The rule above, spelled out for the keys of this scenario.
    let expect: [(u32, Option<&str>); 8] = [
        (0, Some("new-0")),
        (1, Some("new-1b")),
        (2, None),
        (3, Some("again-3")),
        (4, Some("batch-4")),
        (5, None),
        (102, Some("created")),
        (103, Some("batch-new")),
    ];
    for (i, want) in expect {
        assert_eq!(
            c.entries.get(&k(i)),
            Some(&want.map(v)),
            "{ctx}: changes snapshot entry of key {i}"
        );
    }
    for i in 6..10 {
        assert!(
            !c.entries.contains_key(&k(i)),
            "{ctx}: untouched key {i} reported as changed"
        );
    }
    for i in [100, 101, 104] {
        assert!(
            matches!(c.entries.get(&k(i)), None | Some(None)),
            "{ctx}: key {i} (absent before and after) reported as {:?}",
            c.entries.get(&k(i))
        );
    }
    let mut folded = base.clone();
    apply_changes(&mut folded, &c.entries);
    check(
        diff_entries(m.entries(), &folded),
        &format!("{ctx}: base + changes"),
    );
    m.start_epoch();

    let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
    assert!(
        c.entries.is_empty(),
        "{ctx}: an epoch without writes reported {} changes",
        c.entries.len()
    );
    m.start_epoch();

    // Changed and changed back within one epoch.
    put(&mut m, &k(6), &v("temporary"));
    put(&mut m, &k(6), &v("base-6"));
    let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
    check(m.check_changes(&c.entries), &format!("{ctx}: changed back"));
    m.start_epoch();

    // A full snapshot also starts a new epoch.
    put(&mut m, &k(7), &v("before-full"));
    let _ = take(&*b, SnapshotKind::Full, &ctx);
    m.start_epoch();
    put(&mut m, &k(8), &v("after-full"));
    let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
    check(
        m.check_changes(&c.entries),
        &format!("{ctx}: changes after a full snapshot"),
    );
    assert_eq!(
        c.entries.len(),
        1,
        "{ctx}: only the change after the full snapshot must be reported"
    );
}

/// Over several epochs of random writes, a base full snapshot plus every
/// changes snapshot, applied in order, equals a final full snapshot; the
/// same chain replayed into a fresh backend (restore of the base, then one
/// write batch per changes snapshot) yields the same full snapshot. A full
/// snapshot in the middle of the chain must equal the fold so far.
pub fn incrementals_fold_to_full(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=incrementals_fold_to_full", b.name());
    let space = KeySpace::small();
    for seed in 0..4u64 {
        let ctx = format!("{ctx} seed={seed}");
        must(b.clear(), &ctx);
        let mut rng = SplitMix64::new(0xF01D + seed);
        let mut m = Model::new();
        for _ in 0..100 {
            let (k, v) = (space.key(&mut rng), random_value(&mut rng));
            must(b.put(&k, &v), &ctx);
            m.put(&k, &v);
        }
        let base = full_entries(&*b, &ctx);
        check(m.check_full(&base), &format!("{ctx}: base"));
        m.start_epoch();
        let mut folded = base.clone();
        let mut chain: Vec<Changes> = Vec::new();
        for epoch in 0..8 {
            let ctx = format!("{ctx} epoch={epoch}");
            for _ in 0..40 {
                let k = space.key(&mut rng);
                match rng.below(10) {
                    0..=4 => {
                        let v = random_value(&mut rng);
                        must(b.put(&k, &v), &ctx);
                        m.put(&k, &v);
                    }
                    5..=6 => {
                        must(b.delete(&k), &ctx);
                        m.delete(&k);
                    }
                    7 => {
                        // Put then delete a key within the epoch.
                        must(b.put(&k, &random_value(&mut rng)), &ctx);
                        must(b.delete(&k), &ctx);
                        m.delete(&k);
                    }
                    _ => {
                        let mut batch = WriteBatch::new();
                        for _ in 0..4 {
                            let k = space.key(&mut rng);
                            if rng.chance(2, 3) {
                                batch.put(k, random_value(&mut rng));
                            } else {
                                batch.delete(k);
                            }
                        }
                        must(b.write_batch(batch.clone()), &ctx);
                        m.apply_batch(&batch);
                    }
                }
            }
            let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
            check(m.check_changes(&c.entries), &ctx);
            m.start_epoch();
            apply_changes(&mut folded, &c.entries);
            chain.push(c.entries);
            check(diff_entries(m.entries(), &folded), &format!("{ctx}: fold"));
            if epoch == 4 {
                let mid = full_entries(&*b, &ctx);
                check(
                    diff_entries(&folded, &mid),
                    &format!("{ctx}: full snapshot in the middle of the chain"),
                );
                m.start_epoch();
            }
        }
        let last = full_entries(&*b, &ctx);
        check(
            diff_entries(&folded, &last),
            &format!("{ctx}: base + incrementals vs final full snapshot"),
        );

        let fresh = factory();
        restore_from(&*fresh, base.into_iter().collect(), &ctx);
        for changes in &chain {
            let mut batch = WriteBatch::new();
            for (k, v) in changes {
                match v {
                    Some(v) => batch.put(k.clone(), v.clone()),
                    None => batch.delete(k.clone()),
                };
            }
            must(fresh.write_batch(batch), &ctx);
        }
        check(
            diff_entries(&last, &full_entries(&*fresh, &ctx)),
            &format!("{ctx}: chain replayed into a fresh backend"),
        );
    }
}

// ---------------------------------------------------------------------------
// Case 5: cost of changes snapshots.

/// With 20 000 keys and 10 changes since the last snapshot, the changes
/// snapshot's `approximate_entries` and the entries it visits stay within
/// 10 + 6, and an epoch without changes visits nothing: incremental
/// checkpoints cost O(changes), not O(state).
pub fn changes_cost_is_proportional(factory: BackendFactory<'_>) {
    const TOTAL: u32 = 20_000;
    const SLACK: usize = 6;
    let b = factory();
    let ctx = format!("backend={} case=changes_cost_is_proportional", b.name());
    let mut rng = SplitMix64::new(0xC057);
    let mut m = Model::new();
    let keys: Vec<Vec<u8>> = (0..TOTAL).map(|i| numbered_key("cost", "s", i)).collect();
    for chunk in keys.chunks(1000) {
        let mut batch = WriteBatch::new();
        for k in chunk {
            let v = plain_value(&rng.bytes(8));
            batch.put(k.clone(), v);
        }
        m.apply_batch(&batch);
        must(b.write_batch(batch), &ctx);
    }
    let base = full_entries(&*b, &ctx);
    assert_eq!(base.len(), TOTAL as usize, "{ctx}: full snapshot entries");
    m.start_epoch();

    for round in 0..3u32 {
        let ctx = format!("{ctx} round={round}");
        let off = round * 3000;
        let mut changed = 0usize;
        for i in 0..6 {
            let k = &keys[(off + i * 401) as usize];
            let v = plain_value(&rng.bytes(8));
            must(b.put(k, &v), &ctx);
            m.put(k, &v);
            changed += 1;
        }
        let mut batch = WriteBatch::new();
        batch
            .delete(keys[(off + 2999) as usize].clone())
            .delete(keys[(off + 2998) as usize].clone())
            .put(numbered_key("cost", "new", off), plain_value(b"n1"))
            .put(numbered_key("cost", "new", off + 1), plain_value(b"n2"));
        changed += 4;
        m.apply_batch(&batch);
        must(b.write_batch(batch), &ctx);

        let s = take(&*b, SnapshotKind::Changes, &ctx);
        assert!(
            s.approximate_entries() <= changed + SLACK,
            "{ctx}: approximate_entries={} for {changed} changes among {TOTAL} keys: changes snapshots must cost O(changes)",
            s.approximate_entries()
        );
        let c = read(&*s, &ctx);
        assert!(
            c.visited <= changed + SLACK,
            "{ctx}: visited {} entries for {changed} changes among {TOTAL} keys",
            c.visited
        );
        check(m.check_changes(&c.entries), &ctx);
        m.start_epoch();

        let s = take(&*b, SnapshotKind::Changes, &ctx);
        assert!(
            s.approximate_entries() <= SLACK,
            "{ctx}: approximate_entries={} for an epoch without changes",
            s.approximate_entries()
        );
        let c = read(&*s, &ctx);
        assert_eq!(
            c.visited, 0,
            "{ctx}: an epoch without changes visited entries"
        );
        m.start_epoch();
    }
}
