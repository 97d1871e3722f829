//! Conformance cases: scans.

use super::*;

// ---------------------------------------------------------------------------
// Case 9: scans.

/// Prefix scans return exactly the keys with the prefix, sorted, for every
/// semantic prefix (key group, operator, state, key, base) and for edge
/// prefixes (empty, `0xFF…` without successor); range scans include the
/// start and exclude the end, are empty for `start == end` and for
/// `start > end` (which may also be refused as invalid, but must not
/// panic); results follow overwrites and deletes.
pub fn scan_order_and_bounds(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=scan_order_and_bounds", b.name());
    let ctx = ctx.as_str();
    let space = KeySpace::small();
    let mut rng = SplitMix64::new(0x5CA9);
    let mut m = Model::new();
    let mut keys = space.all_keys();
    // Keys at the edges of the byte order and a maximal operator name.
    let long_op = "z".repeat(255);
    keys.push(encode_key(
        0xFFFF,
        &long_op,
        "s",
        &[0xFF; 8],
        &[0xFF],
        &[0xFF, 0xFF],
    ));
    keys.push(encode_key(0, "a", "s", &[], &[], &[0x00]));
    keys.sort();
    keys.dedup();
    // Insert in shuffled order so a backend cannot get sorting for free.
    let mut order = keys.clone();
    rng.shuffle(&mut order);
    for k in &order {
        let v = random_value(&mut rng);
        must(b.put(k, &v), ctx);
        m.put(k, &v);
    }
    let all: Vec<_> = keys
        .iter()
        .map(|k| (k.clone(), m.get(k).map(<[u8]>::to_vec).unwrap_or_default()))
        .collect();
    check(
        diff_scan(&all, &scan_all(&*b, ctx)),
        &format!("{ctx}: full scan"),
    );

    let run = |m: &Model, rng: &mut SplitMix64| {
        for p in [
            Vec::new(),
            vec![0x00],
            vec![0x00, 0x00],
            vec![0xFF],
            vec![0xFF, 0xFF],
            vec![0xFF, 0xFF, 255],
            vec![0xFF; 12],
            vec![0x7F],
        ] {
            check(check_prefix(&*b, m, &p), ctx);
        }
        for k in keys.iter().step_by(7) {
            for cut in 0..=k.len() {
                check(check_prefix(&*b, m, &k[..cut]), ctx);
            }
        }
        for _ in 0..300 {
            let p = space.prefix(rng);
            check(check_prefix(&*b, m, &p), ctx);
        }
        // Exact bounds.
        for (i, k) in keys.iter().enumerate().step_by(5) {
            check(check_range(&*b, m, k, k), ctx);
            let mut next = k.clone();
            next.push(0x00);
            check(check_range(&*b, m, k, &next), ctx);
            let j = (i + 1 + rng.index(keys.len() - i)).min(keys.len() - 1);
            check(check_range(&*b, m, k, &keys[j]), ctx);
            check(check_range(&*b, m, &keys[j], k), ctx);
        }
        check(check_range(&*b, m, &[], &[]), ctx);
        check(check_range(&*b, m, &[], &[0xFF; 16]), ctx);
        check(check_range(&*b, m, &keys[0], &keys[keys.len() - 1]), ctx);
        check(check_range(&*b, m, &[0xFF; 16], &[]), ctx);
        for _ in 0..300 {
            let (s, e) = (space.bound(rng), space.bound(rng));
            check(check_range(&*b, m, &s, &e), ctx);
        }
    };
    run(&m, &mut rng);
    // Scans follow overwrites and deletes.
    for k in keys.iter().step_by(3) {
        must(b.delete(k), ctx);
        m.delete(k);
    }
    for k in keys.iter().skip(1).step_by(4) {
        let v = random_value(&mut rng);
        must(b.put(k, &v), ctx);
        m.put(k, &v);
    }
    run(&m, &mut rng);
    // Explicit expectations, independent of the model.
    must(b.clear(), ctx);
    let k = |kg: u16, key: &[u8]| encode_key(kg, "op", "st", key, &[], &[]);
    for key in [k(1, b"a"), k(1, b"b"), k(1, b"c"), k(2, b"a")] {
        must(b.put(&key, &plain_value(&key)), ctx);
    }
    let got: Vec<Vec<u8>> = must(b.scan_range(&k(1, b"a"), &k(1, b"c")), ctx)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        got,
        vec![k(1, b"a"), k(1, b"b")],
        "{ctx}: start inclusive, end exclusive"
    );
    let got: Vec<Vec<u8>> = must(b.scan_prefix(&1u16.to_be_bytes()), ctx)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        got,
        vec![k(1, b"a"), k(1, b"b"), k(1, b"c")],
        "{ctx}: key group prefix"
    );
}
