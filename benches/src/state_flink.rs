//! Suite `state`, the workload issue 14 compared with Apache Flink 2.3 on
//! this machine: 6 M keys with 150-byte values (about 1 GiB), written
//! through the public typed API into a `MemoryBackend`, checkpointed into a
//! local directory store (fsync'd), then three rounds of "change 1 % of the
//! keys at random, checkpoint incrementally", then a restore into a fresh
//! manager and backend. Quick mode uses 300 k keys.
//!
//! Flink cannot run in this process, so there is no baseline in the same
//! run: the figures are absolute (seconds, bytes). Flink's, measured once
//! on this machine at 6 M keys (issue 14): full checkpoint HashMap 2.66 s,
//! ForSt 2.31 s; incremental ForSt 0.18 s and 10.0 MiB; restore ForSt
//! 0.61 s (it opens its files in place).
//!
//! - `flink_full_checkpoint`: seconds of the first (full) checkpoint.
//! - `flink_incremental_1pct`: median seconds of the three incrementals.
//! - `flink_incremental_1pct_bytes`: median bytes they wrote.
//! - `flink_restore`: seconds of `restore_latest()` into a fresh manager.

use std::sync::Arc;
use std::time::Instant;

use highwater::cloud::ObjectCheckpointStore;
use highwater::memory::MemoryBackend;
use highwater::{CheckpointConfig, CheckpointKind, StateManager, ValueStateDescriptor};
use serde_json::{Map, Value, json};

use crate::util::{Rng, median};
use crate::{Metric, Result};

/// Bytes of each value.
const VALUE_BYTES: usize = 150;

/// Rounds of 1 % changes, each followed by an incremental checkpoint.
const ROUNDS: u64 = 3;

/// A 150-byte value about as compressible as a JSON event (zstd-1 about
/// 2x): a fixed frame around random digits.
fn value(i: u64, rng: &mut Rng, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(format!("{{\"user\":{i},\"clicks\":[").as_bytes());
    while out.len() < VALUE_BYTES {
        out.push(b'0' + rng.below(10) as u8);
        if out.len().is_multiple_of(8) {
            out.extend_from_slice(b",\"a\":");
        }
    }
    out.truncate(VALUE_BYTES);
}

fn manager(dir: &std::path::Path) -> Result<StateManager> {
    let mut config = CheckpointConfig::default();
    config.max_chain_before_full = ROUNDS as usize + 2;
    Ok(StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(Arc::new(ObjectCheckpointStore::local(dir)?))
        .config(config)
        .build()?)
}

/// Runs the workload and appends its metrics.
pub fn run(
    quick: bool,
    out: &std::path::Path,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    let keys: u64 = if quick { 300_000 } else { 6_000_000 };
    println!("state: Flink workload, {keys} keys x {VALUE_BYTES} B …");
    let dir = tempfile::Builder::new()
        .prefix("state-flink-store-")
        .tempdir_in(out)?;
    let m = manager(dir.path())?;
    let state = m
        .keyed_state("job")?
        .value_state::<u64, Vec<u8>>(&ValueStateDescriptor::new("value"))?;
    let mut rng = Rng::new(0x5eed_f11c);
    let mut v = Vec::with_capacity(VALUE_BYTES);
    for i in 0..keys {
        value(i, &mut rng, &mut v);
        state.update(&i, &v)?;
    }

    let full = m.checkpoint()?.wait()?;
    if full.kind != CheckpointKind::Full {
        return Err("the first checkpoint of the Flink workload was not full".into());
    }
    println!(
        "state:   full: {:.2} s, {} MB logical, {} MB written",
        full.duration.as_secs_f64(),
        full.logical_bytes >> 20,
        full.bytes_written >> 20
    );
    let (mut inc_s, mut inc_bytes) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for _ in 0..keys / 100 {
            let i = rng.below(keys);
            value(i ^ (round + 1), &mut rng, &mut v);
            state.update(&i, &v)?;
        }
        let info = m.checkpoint()?.wait()?;
        if info.kind != CheckpointKind::Incremental {
            return Err("a checkpoint after 1% changes was not incremental".into());
        }
        println!(
            "state:   incremental: {:.3} s, {} KiB written",
            info.duration.as_secs_f64(),
            info.bytes_written >> 10
        );
        inc_s.push(info.duration.as_secs_f64());
        inc_bytes.push(info.bytes_written as f64);
    }
    let live = m.backend().stats();
    m.close()?;
    drop(state);
    drop(m);

    let fresh = manager(dir.path())?;
    let t = Instant::now();
    let restored = fresh
        .restore_latest()?
        .ok_or("the Flink workload's store holds no checkpoint")?;
    let restore_s = t.elapsed().as_secs_f64();
    if fresh.backend().stats().entries != live.entries {
        return Err(format!(
            "the restore holds {} entries, the job had {}",
            fresh.backend().stats().entries,
            live.entries
        )
        .into());
    }
    println!(
        "state:   restore: {restore_s:.2} s ({} entries, chain of {})",
        restored.stats.entries_loaded, restored.stats.chain_length
    );

    params.insert("flink_keys".into(), json!(keys));
    params.insert("flink_value_bytes".into(), json!(VALUE_BYTES));
    params.insert("flink_full_logical_bytes".into(), json!(full.logical_bytes));
    params.insert("flink_full_bytes_written".into(), json!(full.bytes_written));
    metrics.push(Metric::plain(
        "flink_full_checkpoint",
        full.duration.as_secs_f64(),
        "s",
        false,
    ));
    metrics.push(Metric::plain(
        "flink_incremental_1pct",
        median(&inc_s),
        "s",
        false,
    ));
    metrics.push(Metric::plain(
        "flink_incremental_1pct_bytes",
        median(&inc_bytes),
        "bytes",
        false,
    ));
    metrics.push(Metric::plain("flink_restore", restore_s, "s", false));
    Ok(())
}
