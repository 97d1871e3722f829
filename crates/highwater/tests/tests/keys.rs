//! Visiting the keys of a state per key-group range (`keys`,
//! `for_each_key`), against a model.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use highwater::memory::MemoryBackend;
use highwater::{
    KeyGroupRange, KeyedStateContext, ManualClock, MapStateDescriptor, StateBackend, TtlConfig,
    ValueStateDescriptor,
};

#[test]
fn keys_are_visited_once_per_namespace_and_range() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let clock = Arc::new(ManualClock::new(1_000));
    let ctx = KeyedStateContext::with_clock(backend, "op", 64, clock.clone()).unwrap();
    let values = ctx
        .value_state::<u32, u64>(&ValueStateDescriptor::new("v"))
        .unwrap();
    // A state whose name starts with the other's must not leak into it.
    let longer = ctx
        .value_state::<u32, u64>(&ValueStateDescriptor::new("vv"))
        .unwrap();
    let maps = ctx
        .map_state::<String, u8, u8>(&MapStateDescriptor::new("m"))
        .unwrap();
    let windowed = values.in_namespace(&5u64).unwrap();
    let expiring = ctx
        .value_state::<u32, u64>(
            &ValueStateDescriptor::new("ttl").with_ttl(TtlConfig::new(Duration::from_secs(1))),
        )
        .unwrap();
    let mut model = BTreeSet::new();
    for k in 0..500u32 {
        if k % 3 != 0 {
            values.update(&k, &1).unwrap();
            model.insert(k);
        }
        longer.update(&(k + 10_000), &1).unwrap();
        if k % 7 == 0 {
            windowed.update(&(k + 20_000), &1).unwrap();
        }
        if k < 50 {
            for uk in 0..5u8 {
                maps.put(&format!("m{k}"), &uk, &uk).unwrap();
            }
        }
        if k < 10 {
            expiring.update(&k, &1).unwrap();
        }
    }
    let all = KeyGroupRange::all(64);
    let got: BTreeSet<u32> = values.keys(all).unwrap().into_iter().collect();
    assert_eq!(got, model);
    assert_eq!(
        values.keys(all).unwrap().len(),
        model.len(),
        "each key once"
    );
    let win: BTreeSet<u32> = windowed.keys(all).unwrap().into_iter().collect();
    assert_eq!(
        win,
        (0..500)
            .filter(|k| k % 7 == 0)
            .map(|k| k + 20_000)
            .collect()
    );
    assert_eq!(
        maps.keys(all).unwrap().len(),
        50,
        "a map's entries give one key"
    );

    // The ranges of three subtasks partition the keys.
    let mut union = BTreeSet::new();
    for i in 0..3 {
        let range = KeyGroupRange::for_subtask(64, 3, i).unwrap();
        for k in values.keys(range).unwrap() {
            assert!(range.contains(ctx.key_group(&k).unwrap()));
            assert!(union.insert(k), "key {k} in two ranges");
        }
    }
    assert_eq!(union, model);

    // Expired entries are not keys.
    assert_eq!(expiring.keys(all).unwrap().len(), 10);
    clock.advance(Duration::from_secs(2));
    assert!(expiring.keys(all).unwrap().is_empty());

    // for_each_key may write state (here: clear every visited key) and
    // stops at the first error.
    values.for_each_key(all, |k| values.clear(&k)).unwrap();
    assert!(values.keys(all).unwrap().is_empty());
    let mut n = 0;
    let err = longer
        .for_each_key(all, |_| {
            n += 1;
            Err(highwater::Error::InvalidArgument("stop".into()))
        })
        .unwrap_err();
    assert_eq!(n, 1);
    assert!(err.to_string().contains("stop"));
    // A range beyond the key groups is an error.
    assert!(values.keys(KeyGroupRange::new(0, 65).unwrap()).is_err());
}
