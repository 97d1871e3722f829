//! Point-in-time recovery: random changes at known times, checkpoints now
//! and then, every change in the log; recovering to a random time gives
//! exactly the state the model had at that time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use highwater::ValueStateDescriptor;
use highwater::core::ManualClock;
use highwater_testkit::SplitMix64;
use highwater_testkit::model::Entries;

use crate::common::{JobDirs, assert_state, config, dump, manager};

const START_MS: u64 = 1_700_000_000_000;

/// Runs a random workload; returns the state after each commit, by the
/// time of its changes, and the checkpoints' creation times.
fn workload(dirs: &JobDirs, seed: u64) -> (BTreeMap<u64, Entries>, Vec<u64>) {
    let clock = Arc::new(ManualClock::new(START_MS));
    let m = manager(dirs, config(100), clock.clone(), Some(1 << 20)).expect("manager");
    let v = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, u64>(&ValueStateDescriptor::new("v"))
        .unwrap();
    let mut rng = SplitMix64::new(seed);
    let mut history = BTreeMap::new();
    let mut checkpoints = Vec::new();
    for step in 0..120u64 {
        clock.advance(Duration::from_millis(rng.range(1, 40)));
        for _ in 0..rng.range(1, 6) {
            let k = rng.below(40) as u32;
            if rng.chance(1, 4) {
                v.clear(&k).unwrap();
            } else {
                v.update(&k, &(step * 100 + rng.below(100))).unwrap();
            }
        }
        m.commit().unwrap();
        history.insert(clock.now(), dump(&**m.backend()));
        if rng.chance(1, 8) {
            clock.advance(Duration::from_millis(rng.range(0, 3)));
            m.checkpoint().unwrap().wait().unwrap();
            checkpoints.push(clock.now());
        }
    }
    m.close().unwrap();
    (history, checkpoints)
}

trait Now {
    fn now(&self) -> u64;
}

impl Now for ManualClock {
    fn now(&self) -> u64 {
        highwater::core::Clock::now_ms(self)
    }
}

/// The model's state at `t`: after the last commit at or before it.
fn model_at(history: &BTreeMap<u64, Entries>, t: u64) -> Entries {
    history
        .range(..=t)
        .next_back()
        .map(|(_, s)| s.clone())
        .unwrap_or_default()
}

#[test]
fn recovering_to_random_times_gives_the_models_state_at_that_time() {
    for seed in [1u64, 2, 3] {
        let dirs = JobDirs::new();
        let (history, checkpoints) = workload(&dirs, seed);
        assert!(checkpoints.len() >= 3, "seed={seed}: too few checkpoints");
        let first = *history.keys().next().unwrap();
        let last = *history.keys().next_back().unwrap();
        let mut rng = SplitMix64::new(seed ^ 0xA5A5);
        // Random times, exact commit times, checkpoint times and the edges.
        let mut times: Vec<u64> = (0..10).map(|_| rng.range(first - 20, last + 20)).collect();
        let keys: Vec<u64> = history.keys().copied().collect();
        times.extend((0..5).map(|_| *rng.pick(&keys)));
        times.extend(checkpoints.iter().take(3).copied());
        times.extend([first - 1, first, last]);
        let mut from_checkpoint = 0;
        let mut from_log_alone = 0;
        for t in times {
            // A later clock: the fork checkpoint each restore takes is
            // created after every target time.
            let clock = Arc::new(ManualClock::new(last + 1_000_000));
            let m = manager(&dirs, config(100), clock, Some(1 << 20)).expect("reopen");
            let info = m
                .restore_at(t)
                .unwrap_or_else(|e| panic!("seed={seed} t={t}: {e}"));
            let ctx = format!(
                "seed={seed} t={t} checkpoint={} replayed={}",
                info.stats
                    .checkpoint
                    .map_or("none".to_string(), |c| c.to_string()),
                info.stats.wal_records_replayed
            );
            assert_state(&model_at(&history, t), &dump(&**m.backend()), &ctx);
            assert!(info.fork_checkpoint.is_some(), "{ctx}");
            match info.stats.checkpoint {
                Some(_) => from_checkpoint += 1,
                None => from_log_alone += 1,
            }
            if let Some(c) = info.stats.checkpoint {
                // The newest checkpoint at or before t was used.
                let created = m
                    .checkpoint_history()
                    .unwrap()
                    .into_iter()
                    .find(|h| h.id == c)
                    .and_then(|h| h.manifest.ok())
                    .map(|mf| mf.created_at_ms)
                    .unwrap();
                assert!(created <= t, "{ctx}");
                let newer_qualifying = checkpoints.iter().filter(|&&c| c <= t).max();
                assert_eq!(Some(&created), newer_qualifying, "{ctx}");
            }
            m.close().unwrap();
        }
        assert!(
            from_checkpoint > 0,
            "seed={seed}: no recovery used a checkpoint"
        );
        assert!(
            from_log_alone > 0,
            "seed={seed}: no recovery used the log alone"
        );
    }
}

#[test]
fn restore_at_without_a_log_has_checkpoint_granularity() {
    let dirs = JobDirs::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let m = manager(&dirs, config(10), clock.clone(), None).unwrap();
    let v = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, u64>(&ValueStateDescriptor::new("v"))
        .unwrap();
    v.update(&1, &1).unwrap();
    m.checkpoint().unwrap().wait().unwrap();
    let at_first = dump(&**m.backend());
    clock.advance(Duration::from_millis(100));
    v.update(&1, &2).unwrap();
    m.checkpoint().unwrap().wait().unwrap();
    clock.advance(Duration::from_millis(100));
    v.update(&1, &3).unwrap();
    let info = m.restore_at(START_MS + 50).unwrap();
    assert_eq!(info.stats.checkpoint, Some(highwater::CheckpointId(1)));
    assert_eq!(info.fork_checkpoint, None);
    assert_state(
        &at_first,
        &dump(&**m.backend()),
        "restore_at between checkpoints",
    );
    let err = m.restore_at(START_MS - 1).unwrap_err();
    assert_eq!(err.kind(), highwater::ErrorKind::NotFound, "{err}");
}
