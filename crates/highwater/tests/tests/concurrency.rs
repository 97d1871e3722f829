//! Writers keep writing while checkpoints run. Each writer writes its
//! counter to several keys in one `write_batch` (and sometimes deletes them
//! all in one batch), so in every consistent cut a writer's keys are all
//! absent or all equal. Every checkpoint must restore to such a cut, and a
//! writer's counter never goes backwards from one checkpoint to the next.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use highwater::CheckpointKind;
use highwater::core::WriteBatch;
use highwater_testkit::keys::{encode_key, plain_value};

use crate::common::{config, dump, memory_manager};

const WRITERS: usize = 4;
const KEYS_PER_BATCH: usize = 6;

fn writer_key(w: usize, j: usize) -> Vec<u8> {
    // Spread one writer's keys over key groups (so over artifacts and
    // shards) and give the rest of the state some bulk.
    let kg = ((w * 37 + j * 19) % 128) as u16;
    encode_key(kg, "writers", "counter", &[w as u8, j as u8], &[], &[])
}

/// Each writer's counter in `state`, or a description of the torn batch.
fn counters(state: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Vec<Option<u64>>, String> {
    (0..WRITERS)
        .map(|w| {
            let vals: Vec<Option<&Vec<u8>>> = (0..KEYS_PER_BATCH)
                .map(|j| state.get(&writer_key(w, j)))
                .collect();
            if vals.iter().all(|v| *v == vals[0]) {
                Ok(vals[0].map(|v| u64::from_le_bytes(v[1..9].try_into().unwrap())))
            } else {
                Err(format!("writer {w} has a torn batch: {vals:?}"))
            }
        })
        .collect()
}

#[test]
fn checkpoints_during_concurrent_batches_are_consistent_cuts() {
    let m = memory_manager(config(true, 3, 1000));
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let backend = m.backend().clone();
            let stop = stop.clone();
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut batch = WriteBatch::new();
                    for j in 0..KEYS_PER_BATCH {
                        if n.is_multiple_of(13) {
                            batch.delete(writer_key(w, j));
                        } else {
                            let mut payload = n.to_le_bytes().to_vec();
                            payload.extend_from_slice(&[w as u8; 24]);
                            batch.put(writer_key(w, j), plain_value(&payload));
                        }
                    }
                    // Some unrelated bulk, so full checkpoints have work.
                    batch.put(
                        encode_key(
                            (n % 128) as u16,
                            "bulk",
                            "b",
                            &(n % 2000).to_le_bytes(),
                            &[],
                            &[],
                        ),
                        plain_value(&[w as u8; 16]),
                    );
                    backend.write_batch(batch).expect("write batch");
                    progress[w].store(n, Ordering::Release);
                }
                n
            })
        })
        .collect();

    let mut ids = Vec::new();
    let mut kinds = Vec::new();
    for _ in 0..12 {
        // Let every writer make progress between checkpoints.
        let seen: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Acquire)).collect();
        while progress
            .iter()
            .zip(&seen)
            .any(|(p, s)| p.load(Ordering::Acquire) < s + 50)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let info = m.checkpoint().unwrap().wait().unwrap();
        ids.push(info.id);
        kinds.push(info.kind);
    }
    stop.store(true, Ordering::Relaxed);
    let finals: Vec<u64> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    let last = m.checkpoint().unwrap().wait().unwrap();
    ids.push(last.id);
    assert!(kinds.contains(&CheckpointKind::Full));
    assert!(kinds.contains(&CheckpointKind::Incremental));

    let mut prev: Vec<Option<u64>> = vec![None; WRITERS];
    let mut mid_run = 0;
    for id in &ids {
        m.restore(*id).unwrap();
        let state = dump(&**m.backend());
        let c = counters(&state).unwrap_or_else(|e| panic!("checkpoint {id}: {e}"));
        for w in 0..WRITERS {
            if let (Some(before), Some(now)) = (prev[w], c[w]) {
                assert!(
                    now >= before,
                    "checkpoint {id}: writer {w} went back {before} -> {now}"
                );
            }
            if c[w].is_some() {
                prev[w] = c[w];
            }
            if c[w].is_some_and(|n| n < finals[w]) {
                mid_run += 1;
            }
        }
    }
    assert!(mid_run > 0, "no checkpoint caught a writer mid-run");
    // The checkpoint after the writers stopped holds their final batches.
    m.restore(*ids.last().unwrap()).unwrap();
    let c = counters(&dump(&**m.backend())).unwrap();
    for w in 0..WRITERS {
        let want = (!finals[w].is_multiple_of(13)).then_some(finals[w]);
        assert_eq!(c[w], want, "writer {w} final state");
    }
}

/// A model of checkpoint handles: at most one checkpoint is in flight, so
/// once a new one has started (its handle exists), every earlier handle
/// holds its outcome. Random operations (`maybe_checkpoint` with a zero
/// interval, `checkpoint`, waiting on an older handle, polling) are checked
/// against that rule, with background merges on to widen the window in
/// which the worker finishes (the bug: the worker became idle before it
/// sent the outcome, and `try_result` answered `None` for a checkpoint that
/// had finished).
#[test]
fn handles_of_finished_checkpoints_always_hold_their_outcome() {
    use highwater::CheckpointHandle;
    for seed in crate::common::seeds(&[1, 2, 3]) {
        let mut cfg = config(true, 4, 3);
        cfg.interval = Some(Duration::ZERO);
        cfg.background_merge = true;
        cfg.merger.merge_at_chain_length = 2;
        let m = memory_manager(cfg);
        let mut rng = highwater_testkit::SplitMix64::new(seed);
        // Handles not yet waited on, oldest first; and how many outcomes
        // each one has shown (a handle answers exactly once).
        let mut open: Vec<CheckpointHandle> = Vec::new();
        let mut finished = 0usize;
        for step in 0..400u64 {
            let key = encode_key(
                rng.below(128) as u16,
                "op",
                "s",
                &step.to_le_bytes(),
                &[],
                &[],
            );
            m.backend().put(&key, &[1, 2, 3]).unwrap();
            let started = match rng.below(4) {
                0 => Some(m.checkpoint().unwrap()),
                1 | 2 => m.maybe_checkpoint().unwrap(),
                _ => {
                    if let Some(h) = open.pop() {
                        h.wait().unwrap();
                        finished += 1;
                    }
                    None
                }
            };
            if let Some(new) = started {
                // The model: every handle older than `new` has finished.
                for (i, h) in open.drain(..).enumerate() {
                    match h.try_result() {
                        Some(r) => {
                            r.unwrap();
                            finished += 1;
                        }
                        None => panic!(
                            "seed {seed} step {step}: checkpoint {} (handle {i}) had no outcome \
                             although checkpoint {} has started",
                            h.id(),
                            new.id()
                        ),
                    }
                }
                open.push(new);
            }
        }
        for h in open {
            h.wait().unwrap();
            finished += 1;
        }
        assert!(
            finished > 10,
            "seed {seed}: only {finished} checkpoints ran"
        );
        m.wait_merges();
    }
}
