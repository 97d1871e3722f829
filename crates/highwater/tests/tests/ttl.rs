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
