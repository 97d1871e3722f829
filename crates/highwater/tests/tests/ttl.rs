//! TTL with a manual clock: expired entries are not checkpointed, are not
//! brought back by a restore, and an entry that expires between a base and
//! an incremental does not resurface when the incremental is restored.

use std::sync::Arc;
use std::time::Duration;

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::ManualClock;
use highwater::memory::MemoryBackend;
use highwater::{CheckpointKind, StateManager, TtlConfig, ValueState, ValueStateDescriptor};

use crate::common::{config, dump};

const T0: u64 = 1_700_000_000_000;
const SEC: u64 = 1000;

struct Fixture {
    clock: ManualClock,
    m: StateManager,
    ttl: ValueState<u32, u64>,
    plain: ValueState<u32, u64>,
}

fn fixture() -> Fixture {
    let clock = ManualClock::new(T0);
    let m = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(Arc::new(ObjectCheckpointStore::in_memory()))
        .config(config(true, 8, 10))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    let ctx = m.keyed_state("sessions").unwrap();
    let ttl = ctx
        .value_state(
            &ValueStateDescriptor::new("last-seen")
                .with_ttl(TtlConfig::new(Duration::from_secs(10))),
        )
        .unwrap();
    let plain = ctx
        .value_state(&ValueStateDescriptor::new("total"))
        .unwrap();
    Fixture {
        clock,
        m,
        ttl,
        plain,
    }
}

impl Fixture {
    fn entries(&self) -> usize {
        dump(&**self.m.backend()).len()
    }
}

#[test]
fn expired_entries_are_not_checkpointed_nor_restored() {
    let f = fixture();
    for k in 1..=5 {
        f.ttl.update(&k, &u64::from(k)).unwrap();
        f.plain.update(&k, &u64::from(k)).unwrap();
    }
    f.clock.set(T0 + 11 * SEC);
    f.ttl.update(&6, &6).unwrap(); // alive until T0 + 21 s
    // Expired entries still occupy the backend: nothing has read them.
    assert_eq!(f.entries(), 11);

    let c1 = f.m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(c1.kind, CheckpointKind::Full);
    assert_eq!(c1.expired_dropped, 5);
    assert_eq!(c1.entries, 6, "5 plain entries and the live TTL entry");

    let info = f.m.restore(c1.id).unwrap();
    assert_eq!(info.stats.entries_loaded, 6);
    assert_eq!(f.entries(), 6, "the restore reclaimed the expired entries");
    for k in 1..=5 {
        assert_eq!(f.ttl.get(&k).unwrap(), None);
        assert_eq!(f.plain.get(&k).unwrap(), Some(u64::from(k)));
    }
    assert_eq!(f.ttl.get(&6).unwrap(), Some(6));

    // Even with the clock turned back, the restore cannot bring back what
    // the checkpoint never held.
    f.clock.set(T0);
    f.m.restore(c1.id).unwrap();
    for k in 1..=5 {
        assert_eq!(f.ttl.get(&k).unwrap(), None, "key {k} resurfaced");
    }
}

#[test]
fn entry_expiring_between_base_and_incremental_does_not_resurface() {
    let f = fixture();
    f.ttl.update(&6, &6).unwrap(); // expires T0 + 10 s, never touched again
    f.ttl.update(&8, &8).unwrap(); // expires T0 + 10 s, rewritten below
    f.plain.update(&1, &1).unwrap();
    let c1 = f.m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(
        (c1.kind, c1.entries, c1.expired_dropped),
        (CheckpointKind::Full, 3, 0)
    );

    f.clock.set(T0 + 5 * SEC);
    f.ttl.update(&8, &88).unwrap(); // now expires T0 + 15 s
    f.clock.set(T0 + 20 * SEC);
    f.plain.update(&2, &2).unwrap();
    let c2 = f.m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(c2.kind, CheckpointKind::Incremental);
    // Key 8 changed in this epoch and expired: written as a delete. Key 6
    // did not change, so the delta does not mention it.
    assert_eq!(c2.expired_dropped, 1);
    assert_eq!(c2.entries, 2, "the put of plain 2 and the delete of ttl 8");

    let info = f.m.restore(c2.id).unwrap();
    assert_eq!(info.stats.chain_length, 2);
    assert_eq!(info.stats.entries_loaded, 2, "plain 1 and 2 only");
    assert_eq!(f.entries(), 2);
    assert_eq!(f.ttl.get(&6).unwrap(), None);
    assert_eq!(f.ttl.get(&8).unwrap(), None);
    assert_eq!(f.plain.get(&2).unwrap(), Some(2));

    // A restore on a host whose clock is behind (T0 + 8 s: before the
    // base's copies of 6 and 8 expire). Key 8's delete in the delta keeps
    // the base's old value from resurfacing; key 6 was alive at that time
    // and never deleted, so it is (correctly) there.
    f.clock.set(T0 + 8 * SEC);
    f.m.restore(c2.id).unwrap();
    assert_eq!(
        f.ttl.get(&8).unwrap(),
        None,
        "the base's value of key 8 resurfaced"
    );
    assert_eq!(f.ttl.get(&6).unwrap(), Some(6));
}

#[test]
fn entry_alive_at_checkpoint_but_expired_at_restore_is_dropped() {
    let f = fixture();
    f.ttl.update(&1, &1).unwrap();
    f.plain.update(&1, &1).unwrap();
    let c1 = f.m.checkpoint().unwrap().wait().unwrap();
    assert_eq!((c1.entries, c1.expired_dropped), (2, 0));
    f.clock.set(T0 + 60 * SEC);
    let info = f.m.restore(c1.id).unwrap();
    assert_eq!(info.stats.entries_loaded, 1);
    assert_eq!(f.entries(), 1);
    assert_eq!(f.ttl.get(&1).unwrap(), None);
    assert_eq!(f.plain.get(&1).unwrap(), Some(1));
}

/// A manager over a fresh memory backend reading `clock`, with the list
/// state "recent" of operator "sessions" (u32 elements at schema version
/// 1, or u64 at version 2 migrated from 1), TTL 1 s per element.
fn list_manager(clock: &ManualClock, store: Arc<dyn highwater::CheckpointStore>) -> StateManager {
    StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store)
        .config(config(true, 8, 10))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap()
}

fn recent_v1(m: &StateManager) -> highwater::ListState<u32, u32> {
    m.keyed_state("sessions")
        .unwrap()
        .list_state(
            &highwater::ListStateDescriptor::new("recent")
                .with_ttl(TtlConfig::new(Duration::from_secs(1))),
        )
        .unwrap()
}

fn recent_v2(m: &StateManager) -> highwater::ListState<u32, u64> {
    m.keyed_state("sessions")
        .unwrap()
        .list_state(
            &highwater::ListStateDescriptor::new("recent")
                .with_ttl(TtlConfig::new(Duration::from_secs(1)))
                .with_schema_version(2)
                .migrate_from(1, |old: u32| u64::from(old) * 1000),
        )
        .unwrap()
}

/// Issue 16: list state TTL applies per element, as in Flink, and each
/// element keeps its own expiry through a checkpoint restore, a savepoint
/// restore and a schema migration; a list written before elements expired
/// one by one (one expiry for the whole list) still reads, and its elements
/// keep that expiry when new ones are added.
#[test]
fn list_elements_keep_their_own_expiry_through_restores_savepoints_and_migrations() {
    let clock = ManualClock::new(T0);
    let store: Arc<dyn highwater::CheckpointStore> = Arc::new(ObjectCheckpointStore::in_memory());
    let m = list_manager(&clock, store.clone());
    let l = recent_v1(&m);
    l.add(&7, &1).unwrap();
    clock.advance(Duration::from_millis(500));
    l.add_all(&7, &[2, 3]).unwrap();
    m.checkpoint().unwrap().wait().unwrap();
    let sp: Arc<dyn highwater::CheckpointStore> = Arc::new(ObjectCheckpointStore::in_memory());
    m.savepoint(sp.clone()).unwrap().wait().unwrap();

    // Each restored copy: element 1 expires at T0 + 1 s, 2 and 3 at T0 + 1.5 s.
    let check = |what: &str, get: &dyn Fn() -> Vec<u64>| {
        clock.set(T0 + 999);
        assert_eq!(get(), vec![1, 2, 3], "{what}: before the first expiry");
        clock.set(T0 + SEC);
        assert_eq!(get(), vec![2, 3], "{what}: the first element expired alone");
        clock.set(T0 + 1500);
        assert!(get().is_empty(), "{what}: all expired");
        clock.set(T0 + 500);
    };
    let widen = |v: Vec<u32>| v.into_iter().map(u64::from).collect::<Vec<u64>>();
    let restored = list_manager(&clock, store.clone());
    let r = recent_v1(&restored);
    restored.restore_latest().unwrap().unwrap();
    check("checkpoint restore", &|| widen(r.get(&7).unwrap()));

    let from_sp = list_manager(&clock, Arc::new(ObjectCheckpointStore::in_memory()));
    let s = recent_v1(&from_sp);
    from_sp.restore_savepoint(sp.clone()).unwrap();
    check("savepoint restore", &|| widen(s.get(&7).unwrap()));

    // Version 2 (u64, ×1000) migrated from the checkpoint: expiries kept.
    let migrated = list_manager(&clock, store);
    let v2 = recent_v2(&migrated);
    migrated.restore_latest().unwrap().unwrap();
    check("migrated", &|| {
        v2.get(&7).unwrap().into_iter().map(|v| v / 1000).collect()
    });

    // A whole-list value as written before: elements 4 and 5 under one
    // expiry (T0 + 800); an element added at T0 + 500 gets its own.
    let old = list_manager(&clock, Arc::new(ObjectCheckpointStore::in_memory()));
    let o = recent_v1(&old);
    o.add(&8, &0).unwrap();
    let key = dump(&**old.backend()).into_keys().next().unwrap();
    let mut value = Vec::new();
    let mut items = postcard_u32(4);
    items.extend(postcard_u32(5));
    highwater::core::Envelope::encode_into(Some(T0 + 800), &items, &mut value);
    old.backend().put(&key, &value).unwrap();
    assert_eq!(o.get(&8).unwrap(), vec![4, 5], "the old form reads");
    o.add(&8, &6).unwrap();
    clock.set(T0 + 799);
    assert_eq!(o.get(&8).unwrap(), vec![4, 5, 6]);
    clock.set(T0 + 800);
    assert_eq!(
        o.get(&8).unwrap(),
        vec![6],
        "converted elements keep the list's expiry"
    );
    clock.set(T0 + 1500);
    assert!(o.get(&8).unwrap().is_empty());
}

fn postcard_u32(v: u32) -> Vec<u8> {
    // postcard encodes a u32 as a varint: 7 bits per byte.
    let mut out = Vec::new();
    let mut v = v;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}
