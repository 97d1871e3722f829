//! Conformance cases: size statistics.

use super::*;

// ---------------------------------------------------------------------------
// Case 11: stats.

/// `stats().entries` equals the number of live keys after puts,
/// overwrites, deletes (including of missing keys), batches, clears,
/// restores and snapshots; `stats().bytes` is positive whenever entries
/// are held.
pub fn stats(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=stats", b.name());
    let ctx = ctx.as_str();
    let expect = |n: u64, when: &str| {
        let s = b.stats();
        assert_eq!(s.entries, n, "{ctx}: stats().entries {when}");
        if n > 0 {
            assert!(
                s.bytes > 0,
                "{ctx}: stats().bytes is 0 with {n} entries {when}"
            );
        }
    };
    expect(0, "of a fresh backend");
    let k = |i: u32| numbered_key("stats", "s", i);
    let mut rng = SplitMix64::new(5);
    for i in 0..100 {
        must(b.put(&k(i), &random_value(&mut rng)), ctx);
    }
    expect(100, "after 100 puts");
    for i in 0..30 {
        must(b.put(&k(i), &random_value(&mut rng)), ctx);
    }
    expect(100, "after overwrites");
    for i in 0..20 {
        must(b.delete(&k(i)), ctx);
    }
    expect(80, "after 20 deletes");
    for i in 1000..1010 {
        must(b.delete(&k(i)), ctx);
    }
    expect(80, "after deletes of missing keys");
    let mut batch = WriteBatch::new();
    for i in 200..210 {
        batch.put(k(i), random_value(&mut rng));
    }
    for i in 20..25 {
        batch.delete(k(i));
    }
    batch.put(k(300), plain_value(b"x")).delete(k(300));
    batch
        .put(k(301), plain_value(b"x"))
        .put(k(301), plain_value(b"y"));
    must(b.write_batch(batch), ctx);
    expect(86, "after a batch");
    let _ = take(&*b, SnapshotKind::Full, ctx);
    let _ = take(&*b, SnapshotKind::Changes, ctx);
    expect(86, "after snapshots");
    must(b.clear(), ctx);
    expect(0, "after clear");
    restore_from(
        &*b,
        (0..40).map(|i| (k(i), random_value(&mut rng))).collect(),
        ctx,
    );
    expect(40, "after restoring 40 entries");
    must(b.put(&k(40), &random_value(&mut rng)), ctx);
    expect(41, "after a put following a restore");
}
