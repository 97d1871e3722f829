//! Conformance cases: typed handles without TTL.

use super::*;

// ---------------------------------------------------------------------------
// Case 7: typed handles without TTL.

/// Value, list, map, reducing and aggregating state behave as specified;
/// states, operators, keys and namespaces are isolated from each other.
pub fn typed_state_handles(factory: BackendFactory<'_>) {
    let backend = factory();
    let b = &*backend;
    let ctx = format!("backend={} case=typed_state_handles", b.name());
    let ctx = ctx.as_str();
    let op = must(KeyedStateContext::new(backend.clone(), "typed", 128), ctx);
    let other_op = must(KeyedStateContext::new(backend.clone(), "typed-2", 128), ctx);

    // Value state.
    let v = must(
        op.value_state::<&str, String>(&ValueStateDescriptor::new("v")),
        ctx,
    );
    let v_other_state = must(
        op.value_state::<&str, String>(&ValueStateDescriptor::new("v2")),
        ctx,
    );
    let v_other_op = must(
        other_op.value_state::<&str, String>(&ValueStateDescriptor::new("v")),
        ctx,
    );
    assert_eq!(must(v.get(&"a"), ctx), None, "{ctx}: unset value");
    must(v.update(&"a", &"one".to_string()), ctx);
    must(v.update(&"b", &"bee".to_string()), ctx);
    must(v.update(&"a", &"two".to_string()), ctx);
    assert_eq!(
        must(v.get(&"a"), ctx).as_deref(),
        Some("two"),
        "{ctx}: overwritten value"
    );
    assert_eq!(
        must(v.get(&"b"), ctx).as_deref(),
        Some("bee"),
        "{ctx}: other key"
    );
    assert_eq!(
        must(v_other_state.get(&"a"), ctx),
        None,
        "{ctx}: state isolation"
    );
    assert_eq!(
        must(v_other_op.get(&"a"), ctx),
        None,
        "{ctx}: operator isolation"
    );
    must(v_other_op.update(&"a", &"elsewhere".to_string()), ctx);
    assert_eq!(
        must(v.get(&"a"), ctx).as_deref(),
        Some("two"),
        "{ctx}: operator isolation"
    );
    must(v.clear(&"a"), ctx);
    assert_eq!(must(v.get(&"a"), ctx), None, "{ctx}: cleared value");
    assert_eq!(
        must(v.get(&"b"), ctx).as_deref(),
        Some("bee"),
        "{ctx}: clear of another key"
    );
    assert_eq!(
        must(v_other_op.get(&"a"), ctx).as_deref(),
        Some("elsewhere"),
        "{ctx}: clear in another operator"
    );

    // List state.
    let l = must(
        op.list_state::<&str, u32>(&ListStateDescriptor::new("l")),
        ctx,
    );
    assert!(must(l.get(&"k"), ctx).is_empty(), "{ctx}: unset list");
    must(l.add(&"k", &1), ctx);
    must(l.add(&"k", &2), ctx);
    must(l.add_all(&"k", &[3, 4, 300_000]), ctx);
    assert_eq!(
        must(l.get(&"k"), ctx),
        vec![1, 2, 3, 4, 300_000],
        "{ctx}: list after adds"
    );
    must(l.add(&"j", &9), ctx);
    must(l.update(&"k", &[7, 8]), ctx);
    assert_eq!(
        must(l.get(&"k"), ctx),
        vec![7, 8],
        "{ctx}: list after update"
    );
    assert_eq!(must(l.get(&"j"), ctx), vec![9], "{ctx}: other list");
    must(l.update(&"k", &[]), ctx);
    assert!(
        must(l.get(&"k"), ctx).is_empty(),
        "{ctx}: list updated to empty"
    );
    must(l.add(&"k", &5), ctx);
    must(l.clear(&"k"), ctx);
    assert!(must(l.get(&"k"), ctx).is_empty(), "{ctx}: cleared list");
    assert_eq!(
        must(l.get(&"j"), ctx),
        vec![9],
        "{ctx}: clear of another list"
    );

    // Map state.
    let m = must(
        op.map_state::<&str, u32, String>(&MapStateDescriptor::new("m")),
        ctx,
    );
    assert!(must(m.is_empty(&"k"), ctx), "{ctx}: unset map");
    for (uk, uv) in [(3u32, "c"), (1, "a"), (2, "b"), (1000, "big")] {
        must(m.put(&"k", &uk, &uv.to_string()), ctx);
    }
    must(m.put(&"kk", &1, &"other key".to_string()), ctx);
    must(m.put(&"k", &2, &"B".to_string()), ctx);
    assert_eq!(
        must(m.get(&"k", &2), ctx).as_deref(),
        Some("B"),
        "{ctx}: overwritten map entry"
    );
    assert_eq!(must(m.get(&"k", &9), ctx), None, "{ctx}: missing map entry");
    assert!(must(m.contains(&"k", &1), ctx), "{ctx}: contains present");
    assert!(!must(m.contains(&"k", &9), ctx), "{ctx}: contains absent");
    let mut entries = must(m.entries(&"k"), ctx);
    entries.sort();
    assert_eq!(
        entries,
        vec![
            (1, "a".to_string()),
            (2, "B".to_string()),
            (3, "c".to_string()),
            (1000, "big".to_string())
        ],
        "{ctx}: map entries"
    );
    must(m.remove(&"k", &3), ctx);
    must(m.remove(&"k", &42), ctx);
    assert!(!must(m.contains(&"k", &3), ctx), "{ctx}: removed entry");
    assert_eq!(
        must(m.entries(&"k"), ctx).len(),
        3,
        "{ctx}: entries after remove"
    );
    // Namespaces isolate map entries.
    let m1 = must(m.in_namespace("window-1"), ctx);
    let m2 = must(m.in_namespace("window-2"), ctx);
    must(m1.put(&"k", &1, &"w1".to_string()), ctx);
    must(m2.put(&"k", &1, &"w2".to_string()), ctx);
    must(m2.put(&"k", &5, &"w2-5".to_string()), ctx);
    assert_eq!(
        must(m1.get(&"k", &1), ctx).as_deref(),
        Some("w1"),
        "{ctx}: namespace 1"
    );
    assert_eq!(
        must(m2.get(&"k", &1), ctx).as_deref(),
        Some("w2"),
        "{ctx}: namespace 2"
    );
    assert_eq!(
        must(m.get(&"k", &1), ctx).as_deref(),
        Some("a"),
        "{ctx}: default namespace"
    );
    assert_eq!(
        must(m1.entries(&"k"), ctx).len(),
        1,
        "{ctx}: namespace 1 entries"
    );
    must(m2.clear(&"k"), ctx);
    assert!(must(m2.is_empty(&"k"), ctx), "{ctx}: cleared namespace");
    assert_eq!(
        must(m1.entries(&"k"), ctx).len(),
        1,
        "{ctx}: clear of another namespace"
    );
    assert_eq!(
        must(m.entries(&"k"), ctx).len(),
        3,
        "{ctx}: clear of another namespace"
    );
    must(m.clear(&"k"), ctx);
    assert!(must(m.is_empty(&"k"), ctx), "{ctx}: cleared map");
    assert_eq!(
        must(m.entries(&"kk"), ctx),
        vec![(1, "other key".to_string())],
        "{ctx}: clear of another key's map"
    );

    // Value state in namespaces.
    let vw1 = must(v.in_namespace(&(1u64, 2u64)), ctx);
    let vw2 = must(v.in_namespace(&(1u64, 3u64)), ctx);
    must(vw1.update(&"b", &"in window".to_string()), ctx);
    assert_eq!(
        must(vw1.get(&"b"), ctx).as_deref(),
        Some("in window"),
        "{ctx}: namespaced value"
    );
    assert_eq!(must(vw2.get(&"b"), ctx), None, "{ctx}: other namespace");
    assert_eq!(
        must(v.get(&"b"), ctx).as_deref(),
        Some("bee"),
        "{ctx}: default namespace"
    );
    must(vw1.clear(&"b"), ctx);
    assert_eq!(
        must(v.get(&"b"), ctx).as_deref(),
        Some("bee"),
        "{ctx}: namespaced clear"
    );

    // Reducing state.
    let sum = must(
        op.reducing_state::<&str, u64>(&ReducingStateDescriptor::new("sum", |a: u64, b: u64| {
            a + b
        })),
        ctx,
    );
    let max = must(
        op.reducing_state::<&str, u64>(&ReducingStateDescriptor::new("max", u64::max)),
        ctx,
    );
    assert_eq!(
        must(sum.get(&"k"), ctx),
        None,
        "{ctx}: unset reducing state"
    );
    for x in [1, 2, 3, 10] {
        must(sum.add(&"k", x), ctx);
        must(max.add(&"k", x), ctx);
    }
    must(max.add(&"k", 4), ctx);
    assert_eq!(must(sum.get(&"k"), ctx), Some(16), "{ctx}: sum");
    assert_eq!(must(max.get(&"k"), ctx), Some(10), "{ctx}: max");
    must(sum.clear(&"k"), ctx);
    assert_eq!(must(sum.get(&"k"), ctx), None, "{ctx}: cleared sum");
    must(sum.add(&"k", 5), ctx);
    assert_eq!(must(sum.get(&"k"), ctx), Some(5), "{ctx}: sum after clear");

    // Aggregating state.
    let avg = must(
        op.aggregating_state::<&str, u64, Average>(&AggregatingStateDescriptor::new(
            "avg", Average,
        )),
        ctx,
    );
    assert_close(must(avg.get(&"k"), ctx), None, ctx);
    for x in [2, 4, 9] {
        must(avg.add(&"k", &x), ctx);
    }
    assert_close(must(avg.get(&"k"), ctx), Some(5.0), ctx);
    must(avg.add(&"j", &1), ctx);
    assert_close(must(avg.get(&"j"), ctx), Some(1.0), ctx);
    let avg_w = must(avg.in_namespace("w"), ctx);
    must(avg_w.add(&"k", &100), ctx);
    assert_close(must(avg_w.get(&"k"), ctx), Some(100.0), ctx);
    assert_close(must(avg.get(&"k"), ctx), Some(5.0), ctx);
    must(avg.clear(&"k"), ctx);
    assert_close(must(avg.get(&"k"), ctx), None, ctx);
    assert_close(must(avg_w.get(&"k"), ctx), Some(100.0), ctx);

    // The typed writes are ordinary backend entries, all under the
    // operators' key groups.
    for (k, _) in scan_all(b, ctx) {
        let sk = StateKey::decode(&k)
            .unwrap_or_else(|e| panic!("{ctx}: stored key does not decode: {e}"));
        assert!(
            sk.key_group.0 < 128,
            "{ctx}: key group out of range in {}",
            describe_key(&k)
        );
    }
}
