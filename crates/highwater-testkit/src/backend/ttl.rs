//! Conformance cases: tTL through the typed handles.

use super::*;

// ---------------------------------------------------------------------------
// Case 6: TTL through the typed handles.

/// The raw entries of one state of one operator.
fn raw_state(b: &dyn StateBackend, operator: &str, state: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    scan_all(b, "raw_state")
        .into_iter()
        .filter(|(k, _)| {
            StateKey::decode(k).is_ok_and(|sk| sk.operator == operator && sk.state == state)
        })
        .collect()
}

/// Mean of `u64` inputs; the accumulator is `(sum, count)`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Average;

impl AggregateFunction<u64> for Average {
    type Acc = (u64, u64);
    type Out = f64;

    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }

    fn add(&self, input: &u64, acc: (u64, u64)) -> (u64, u64) {
        (acc.0 + input, acc.1 + 1)
    }

    fn result(&self, acc: &(u64, u64)) -> f64 {
        if acc.1 == 0 {
            0.0
        } else {
            acc.0 as f64 / acc.1 as f64
        }
    }
}

pub(super) fn assert_close(got: Option<f64>, want: Option<f64>, ctx: &str) {
    match (got, want) {
        (Some(g), Some(w)) if (g - w).abs() < 1e-9 => {}
        (None, None) => {}
        _ => panic!("{ctx}: got {got:?}, expected {want:?}"),
    }
}

/// Value, list, map, reducing and aggregating state with a TTL, driven by a
/// [`ManualClock`]: a value is returned until `ttl` after its last write and
/// never at or after that; writes refresh the expiry; reads refresh it only
/// with [`TtlConfig::refresh_on_read`]; map entries expire independently;
/// an expired entry read through a handle is gone from the backend; a write
/// after expiry starts from nothing (no resurrection).
pub fn ttl_via_handles(factory: BackendFactory<'_>) {
    const OP: &str = "ttl-op";
    let backend = factory();
    let b = &*backend;
    let ctx = format!("backend={} case=ttl_via_handles", b.name());
    let ctx = ctx.as_str();
    let clock = ManualClock::new(1_700_000_000_000);
    let kctx = must(
        KeyedStateContext::with_clock(backend.clone(), OP, 128, Arc::new(clock.clone())),
        ctx,
    );
    let ttl = TtlConfig::new(Duration::from_millis(1000));
    let ms = Duration::from_millis;

    // Value state: expiry is stored in the envelope; reads do not refresh.
    let v = must(
        kctx.value_state::<&str, u64>(&ValueStateDescriptor::new("value").with_ttl(ttl)),
        ctx,
    );
    must(v.update(&"a", &1), ctx);
    let written_at = clock.now_ms();
    let raw = raw_state(b, OP, "value");
    assert_eq!(raw.len(), 1, "{ctx}: value state entries");
    let env = must(Envelope::decode(&raw[0].1), ctx);
    assert_eq!(
        env.expires_at_ms,
        Some(written_at + 1000),
        "{ctx}: stored expiry"
    );
    clock.advance(ms(999));
    assert_eq!(
        must(v.get(&"a"), ctx),
        Some(1),
        "{ctx}: value 1 ms before expiry"
    );
    clock.advance(ms(1));
    assert_eq!(must(v.get(&"a"), ctx), None, "{ctx}: value at its expiry");
    assert!(
        raw_state(b, OP, "value").is_empty(),
        "{ctx}: an expired value read through a handle must be deleted from the backend"
    );
    assert_eq!(must(v.get(&"a"), ctx), None, "{ctx}: value after expiry");

    // Writes refresh the expiry.
    must(v.update(&"b", &1), ctx);
    clock.advance(ms(800));
    must(v.update(&"b", &2), ctx);
    clock.advance(ms(800));
    assert_eq!(
        must(v.get(&"b"), ctx),
        Some(2),
        "{ctx}: value after a refreshing write"
    );
    clock.advance(ms(200));
    assert_eq!(
        must(v.get(&"b"), ctx),
        None,
        "{ctx}: value ttl after the last write"
    );

    // Reads refresh the expiry only when asked to.
    let r = must(
        kctx.value_state::<&str, u64>(
            &ValueStateDescriptor::new("refreshing").with_ttl(ttl.refresh_on_read()),
        ),
        ctx,
    );
    must(r.update(&"a", &7), ctx);
    for i in 0..5 {
        clock.advance(ms(800));
        assert_eq!(must(r.get(&"a"), ctx), Some(7), "{ctx}: refreshed read {i}");
    }
    clock.advance(ms(1000));
    assert_eq!(
        must(r.get(&"a"), ctx),
        None,
        "{ctx}: ttl after the last read"
    );
    must(r.update(&"a", &8), ctx);
    clock.advance(ms(1000));
    assert_eq!(
        must(r.get(&"a"), ctx),
        None,
        "{ctx}: unread refreshing value"
    );

    // List state: each element expires on its own, `ttl` after it was
    // added (Flink's semantics; appending does not refresh older elements).
    let l = must(
        kctx.list_state::<&str, u32>(&ListStateDescriptor::new("list").with_ttl(ttl)),
        ctx,
    );
    must(l.add(&"k", &1), ctx);
    clock.advance(ms(500));
    must(l.add(&"k", &2), ctx);
    clock.advance(ms(499));
    assert_eq!(
        must(l.get(&"k"), ctx),
        vec![1, 2],
        "{ctx}: list before the first element's expiry"
    );
    clock.advance(ms(1));
    assert_eq!(
        must(l.get(&"k"), ctx),
        vec![2],
        "{ctx}: the first element expired alone"
    );
    clock.advance(ms(500));
    assert!(must(l.get(&"k"), ctx).is_empty(), "{ctx}: list at expiry");
    assert!(
        raw_state(b, OP, "list").is_empty(),
        "{ctx}: an emptied list is removed from the backend"
    );
    must(l.add(&"k", &3), ctx);
    assert_eq!(
        must(l.get(&"k"), ctx),
        vec![3],
        "{ctx}: list restarted after expiry"
    );
    list_elements_against_a_model(&kctx, &clock, ctx);

    // Map state: entries expire independently.
    let m = must(
        kctx.map_state::<&str, u32, String>(&MapStateDescriptor::new("map").with_ttl(ttl)),
        ctx,
    );
    must(m.put(&"k", &1, &"x".to_string()), ctx);
    clock.advance(ms(500));
    must(m.put(&"k", &2, &"y".to_string()), ctx);
    clock.advance(ms(600));
    assert_eq!(
        must(m.entries(&"k"), ctx),
        vec![(2, "y".to_string())],
        "{ctx}: map entries after the first expired"
    );
    assert!(
        !must(m.contains(&"k", &1), ctx),
        "{ctx}: expired map entry contained"
    );
    assert_eq!(
        must(m.get(&"k", &1), ctx),
        None,
        "{ctx}: expired map entry returned"
    );
    assert_eq!(
        must(m.get(&"k", &2), ctx),
        Some("y".to_string()),
        "{ctx}: live map entry"
    );
    assert_eq!(
        raw_state(b, OP, "map").len(),
        1,
        "{ctx}: expired map entry must be deleted once read"
    );
    clock.advance(ms(400));
    assert!(
        must(m.entries(&"k"), ctx).is_empty(),
        "{ctx}: map entries all expired"
    );
    assert!(must(m.is_empty(&"k"), ctx), "{ctx}: map empty after expiry");
    assert!(
        raw_state(b, OP, "map").is_empty(),
        "{ctx}: map entries reclaimed"
    );

    // Reducing state: an add after expiry starts over.
    let red = must(
        kctx.reducing_state::<&str, u64>(
            &ReducingStateDescriptor::new("sum", |a: u64, b: u64| a + b).with_ttl(ttl),
        ),
        ctx,
    );
    must(red.add(&"k", 5), ctx);
    must(red.add(&"k", 6), ctx);
    assert_eq!(must(red.get(&"k"), ctx), Some(11), "{ctx}: reduced value");
    clock.advance(ms(1000));
    assert_eq!(
        must(red.get(&"k"), ctx),
        None,
        "{ctx}: reduced value at expiry"
    );
    must(red.add(&"k", 1), ctx);
    assert_eq!(
        must(red.get(&"k"), ctx),
        Some(1),
        "{ctx}: reduced value restarted"
    );

    // Aggregating state: same.
    let agg = must(
        kctx.aggregating_state::<&str, u64, Average>(
            &AggregatingStateDescriptor::new("avg", Average).with_ttl(ttl),
        ),
        ctx,
    );
    must(agg.add(&"k", &2), ctx);
    must(agg.add(&"k", &4), ctx);
    assert_close(must(agg.get(&"k"), ctx), Some(3.0), ctx);
    clock.advance(ms(1000));
    assert_close(must(agg.get(&"k"), ctx), None, ctx);
    must(agg.add(&"k", &10), ctx);
    assert_close(must(agg.get(&"k"), ctx), Some(10.0), ctx);

    // Namespaces expire independently.
    let w1 = must(v.in_namespace(&1u32), ctx);
    let w2 = must(v.in_namespace(&2u32), ctx);
    must(w1.update(&"n", &1), ctx);
    clock.advance(ms(600));
    must(w2.update(&"n", &2), ctx);
    clock.advance(ms(400));
    assert_eq!(must(w1.get(&"n"), ctx), None, "{ctx}: namespace 1 expired");
    assert_eq!(must(w2.get(&"n"), ctx), Some(2), "{ctx}: namespace 2 alive");
}

/// List state with a TTL against a model of elements with their own
/// expiries: random appends, replacements, clears, reads and clock moves,
/// with and without refresh on read.
fn list_elements_against_a_model(kctx: &KeyedStateContext, clock: &ManualClock, ctx: &str) {
    for (name, refresh) in [("list-model", false), ("list-model-refresh", true)] {
        let mut ttl = TtlConfig::new(Duration::from_millis(100));
        if refresh {
            ttl = ttl.refresh_on_read();
        }
        let l = must(
            kctx.list_state::<u8, u32>(&ListStateDescriptor::new(name).with_ttl(ttl)),
            ctx,
        );
        let mut model: std::collections::BTreeMap<u8, Vec<(u64, u32)>> = Default::default();
        let mut rng = SplitMix64::new(0x1157 + u64::from(refresh));
        for step in 0..400 {
            let now = clock.now_ms();
            let key = rng.below(4) as u8;
            let entry = model.entry(key).or_default();
            entry.retain(|(at, _)| *at > now);
            match rng.below(10) {
                0..4 => {
                    let items: Vec<u32> = (0..1 + rng.below(3))
                        .map(|_| rng.below(1000) as u32)
                        .collect();
                    must(l.add_all(&key, &items), ctx);
                    entry.extend(items.iter().map(|i| (now + 100, *i)));
                }
                4 => {
                    let items: Vec<u32> =
                        (0..rng.below(3)).map(|_| rng.below(1000) as u32).collect();
                    must(l.update(&key, &items), ctx);
                    *entry = items.iter().map(|i| (now + 100, *i)).collect();
                }
                5 => {
                    must(l.clear(&key), ctx);
                    entry.clear();
                }
                6..8 => {
                    let got = must(l.get(&key), ctx);
                    let want: Vec<u32> = entry.iter().map(|(_, i)| *i).collect();
                    assert_eq!(got, want, "{ctx}: {name} step {step} key {key} at {now}");
                    if refresh {
                        entry.iter_mut().for_each(|e| e.0 = now + 100);
                    }
                }
                _ => clock.advance(Duration::from_millis(rng.below(60))),
            }
        }
    }
}
