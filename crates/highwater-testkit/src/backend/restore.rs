//! Conformance cases: restore and clear.

use super::*;

// ---------------------------------------------------------------------------
// Case 10: restore and clear.

/// A restore replaces everything: keys not in the restored set are gone
/// (from gets, scans, stats and snapshots), restored keys carry their
/// restored values, and the next changes snapshot reports only writes made
/// after the restore. A restore whose source fails returns the error. A
/// clear empties the backend and also starts a new change epoch.
pub fn restore_replaces_everything_and_clear(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!(
        "backend={} case=restore_replaces_everything_and_clear",
        b.name()
    );
    let ctx = ctx.as_str();
    let mut rng = SplitMix64::new(0x7E57);
    let set_a: Entries = (0..300)
        .map(|i| (numbered_key("rst", "a", i), random_value(&mut rng)))
        .collect();
    for (k, v) in &set_a {
        must(b.put(k, v), ctx);
    }
    let snap_a = take(&*b, SnapshotKind::Full, ctx);
    // Overlapping set B: new keys, overwrites of A's keys, deletes of A's.
    for i in 150..450 {
        must(
            b.put(&numbered_key("rst", "a", i), &random_value(&mut rng)),
            ctx,
        );
    }
    for i in 0..50 {
        must(b.delete(&numbered_key("rst", "a", i)), ctx);
    }
    for i in 0..100 {
        must(
            b.put(&numbered_key("rst", "b", i), &random_value(&mut rng)),
            ctx,
        );
    }
    let a_content = read(&*snap_a, ctx).records;
    let a_records: Vec<(Vec<u8>, Vec<u8>)> = a_content
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    restore_from(&*b, a_records, ctx);
    check_content(&*b, &set_a, &format!("{ctx}: after restore"));
    for i in [300, 449] {
        assert_eq!(
            must(b.get(&numbered_key("rst", "a", i)), ctx),
            None,
            "{ctx}: key {i} not in the restored set"
        );
    }
    assert!(
        must(b.scan_prefix(&numbered_key("rst", "b", 0)[..2]), ctx)
            .iter()
            .all(|(k, _)| set_a.contains_key(k)),
        "{ctx}: scan returned keys that are not in the restored set"
    );
    check(
        diff_entries(&set_a, &full_entries(&*b, ctx)),
        &format!("{ctx}: full snapshot after restore"),
    );

    // The epoch restarts at the restore.
    let mut m = Model::new();
    m.reset_to(set_a.clone());
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    assert!(
        c.entries.is_empty(),
        "{ctx}: changes snapshot right after a restore reported {} entries (a restore starts a new epoch)",
        c.entries.len()
    );
    m.start_epoch();
    restore_from(&*b, set_a.clone().into_iter().collect(), ctx);
    let k0 = numbered_key("rst", "a", 7);
    let k_new = numbered_key("rst", "c", 1);
    let v0 = plain_value(b"after restore");
    must(b.put(&k0, &v0), ctx);
    must(b.put(&k_new, &v0), ctx);
    must(b.delete(&numbered_key("rst", "a", 8)), ctx);
    m.put(&k0, &v0);
    m.put(&k_new, &v0);
    m.delete(&numbered_key("rst", "a", 8));
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    check(
        m.check_changes(&c.entries),
        &format!("{ctx}: changes after restore"),
    );
    assert_eq!(
        c.entries.len(),
        3,
        "{ctx}: only the three writes after the restore"
    );
    m.start_epoch();

    // A failing source makes restore fail.
    let mut failing = std::iter::once(Ok(set_a.iter().take(10).collect()))
        .chain(std::iter::once(Err(Error::corrupt(
            "testkit restore source",
            "injected failure",
        ))))
        .chain(std::iter::once(Ok(set_a.iter().skip(10).collect())));
    let r = b.restore(&mut failing);
    assert!(
        r.is_err(),
        "{ctx}: restore must return the error of its source, not succeed"
    );
    if b.restore_is_atomic() {
        check_content(
            &*b,
            m.entries(),
            &format!("{ctx}: a failed restore of a backend whose restore is atomic"),
        );
    }

    // Clear empties everything and starts a new epoch.
    must(b.clear(), ctx);
    check_content(&*b, &Entries::new(), &format!("{ctx}: after clear"));
    assert!(
        full_entries(&*b, ctx).is_empty(),
        "{ctx}: full snapshot after clear"
    );
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    assert!(
        c.entries.is_empty(),
        "{ctx}: changes snapshot after clear and full"
    );
    must(b.put(&k0, &v0), ctx);
    must(b.clear(), ctx);
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    assert!(
        c.entries.is_empty(),
        "{ctx}: changes snapshot right after a clear reported {} entries (a clear starts a new epoch)",
        c.entries.len()
    );
    must(b.put(&k_new, &v0), ctx);
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    assert_eq!(
        c.entries,
        Changes::from([(k_new.clone(), Some(v0.clone()))]),
        "{ctx}: changes after clear"
    );

    // Restoring nothing empties the backend; restoring works after a clear.
    restore_from(&*b, Vec::new(), ctx);
    check_content(&*b, &Entries::new(), &format!("{ctx}: after empty restore"));
    restore_from(&*b, set_a.clone().into_iter().collect(), ctx);
    check_content(&*b, &set_a, &format!("{ctx}: restore after clear"));
}
