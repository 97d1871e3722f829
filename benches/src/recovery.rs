//! Suite `recovery`: the recovery engine restoring checkpoints from a local
//! directory store into the memory backend, against the machine's limit
//! measured in the same run.
//!
//! Setup: state of `state_bytes` logical bytes (keys + values; 1 GiB in
//! full mode, 32 MiB with `--quick`) of one operator, values of ~160 bytes
//! that zstd compresses about 2.5×, written through a `StateManager` into
//! two local stores: store A holds a chain of depth 10 (a full checkpoint,
//! then 10 incrementals each rewriting 10 % of the keys), store B one full
//! checkpoint of the same final state (depth 0). The writer is dropped
//! before anything is measured.
//!
//! Metrics:
//!
//! - `recovery_throughput` (MB/s of logical state loaded, higher is
//!   better): [`Recovery::recover`] of store B's checkpoint into a fresh
//!   `MemoryBackend` with one decode thread per core (fetch, content-address
//!   check, decode, fold, load; entries are counted after the load).
//!   Baseline: the limit of this machine — the same stored artifact files
//!   read one after another with `std::fs::read` and decompressed with
//!   `decode_artifact` (header, zstd, payload checksum; no records built)
//!   on one core, times the number of cores. Same numerator (the state's
//!   logical bytes) on both sides.
//! - `recovery_throughput_vs_fresh_memory` (MB/s): the same restore
//!   against the floor of any restore into memory — the same files read,
//!   decompressed, their records parsed and their keys and values copied
//!   into fresh 1 MiB segments held until the end (pages the process did
//!   not have, as a restored state's are; no index), on one core, times
//!   the cores. It shows how much of the gap to `recovery_throughput`'s
//!   baseline is the kernel handing out memory.
//! - `recovery_throughput_parallel_load` (MB/s): the same with
//!   `LoadStrategy::Parallel` (fold everything, then clear and load from
//!   all threads) instead of the default (folded ranges streamed into one
//!   `backend.restore` call), against the same limit.
//! - `recovery_scaling_<n>t` (MB/s): the same recovery with 1, 2 and 4
//!   decode threads; baseline the 1-thread figure.
//! - `recovery_chain_depth` (s, lower is better): recovery of store A's
//!   depth-10 chain; baseline the depth-0 recovery of the same logical
//!   state (store B). Target ratio ≤ 1.5.
//!
//! Parameters beside the metrics, per decode-thread count: the fetch and
//! load phases (`fetch_s_<n>t`, `load_s_<n>t`), the most of the checkpoint
//! a restore held at once (`fetch_ahead_peak_bytes_<n>t`, beside
//! `checkpoint_stored_bytes`), and how far the process's resident set rose
//! during a restore per logical byte loaded
//! (`restore_peak_rss_per_state_byte_<n>t`, from `VmHWM` reset before each
//! restore).
//!
//! Each figure is the median of `reps` runs (3 in both modes). The share
//! of CPU other processes used during the measurements is recorded
//! (`other_processes_cpu_pct`): the machine is shared.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::{CheckpointStore, DecodeLimits, WriteBatch, decode_artifact, load_manifest};
use highwater::memory::MemoryBackend;
use highwater::recovery::{
    LoadStrategy, Recovery, RecoveryConfig, RecoveryScope, RecoveryStats, RecoveryTarget,
};
use highwater::{CheckpointConfig, CheckpointKind, StateBackend, StateManager};
use serde_json::{Map, json};

use crate::util::{self, CpuReading, Rng, median};
use crate::{Ctx, Metric, Result, SuiteResult};

const MAX_PARALLELISM: u16 = 128;
const VALUE_LEN: usize = 160;
const DEPTH: usize = 10;

struct Plan {
    quick: bool,
    state_bytes: u64,
    reps: usize,
    cores: usize,
}

fn key(i: u64) -> Result<Vec<u8>> {
    util::session_key(i, MAX_PARALLELISM)
}

/// A value of [`VALUE_LEN`] bytes as the facade stores it: an envelope
/// without expiry (tag 0), then the version and small numbers with some
/// noise, which zstd compresses about 2.5×. (Before 2026-12-05 the
/// version was the first byte: versions 1 and 2 read as envelopes with
/// an expiry, 3 and up as damaged envelopes.)
fn value(rng: &mut Rng, version: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_LEN);
    v.push(0);
    v.push(version);
    while v.len() < VALUE_LEN {
        v.push(rng.below(24) as u8);
    }
    v
}

fn write_state(
    backend: &dyn StateBackend,
    keys: u64,
    version: u8,
    every: u64,
    seed: u64,
) -> Result {
    let mut rng = Rng::new(seed);
    let mut batch = WriteBatch::new();
    for i in (0..keys).filter(|i| i % every == u64::from(version) % every) {
        batch.put(key(i)?, value(&mut rng, version));
        if batch.len() == 4096 {
            backend.write_batch(std::mem::take(&mut batch))?;
        }
    }
    backend.write_batch(batch)?;
    Ok(())
}

fn checkpoint_config(incremental: bool) -> CheckpointConfig {
    let mut c = CheckpointConfig::default();
    c.max_parallelism = MAX_PARALLELISM;
    c.incremental = incremental;
    c.max_chain_before_full = DEPTH + 2;
    c.max_retained = DEPTH + 2;
    c
}

/// Builds store A (depth-10 chain) and store B (depth 0) of one state.
fn build(dir_a: &Path, dir_b: &Path, keys: u64) -> Result<(u64, u64)> {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let a = StateManager::builder()
        .backend(backend.clone())
        .store(Arc::new(ObjectCheckpointStore::local(dir_a)?))
        .config(checkpoint_config(true))
        .build()?;
    write_state(&*backend, keys, 0, 1, 1)?;
    let first = a.checkpoint()?.wait()?;
    assert_eq!(first.kind, CheckpointKind::Full);
    for d in 1..=DEPTH {
        // 10 % of the keys get a new value of the same size.
        write_state(&*backend, keys, d as u8, 10, 100 + d as u64)?;
        let info = a.checkpoint()?.wait()?;
        if info.kind != CheckpointKind::Incremental || info.chain_length != d + 1 {
            return Err(format!("expected an incremental of depth {d}: {info:?}").into());
        }
    }
    a.wait_idle();
    let b = StateManager::builder()
        .backend(backend.clone())
        .store(Arc::new(ObjectCheckpointStore::local(dir_b)?))
        .config(checkpoint_config(false))
        .build()?;
    let full = b.checkpoint()?.wait()?;
    let stats = backend.stats();
    drop((a, b, full));
    Ok((stats.entries, stats.bytes))
}

/// One recovery of the newest checkpoint of `dir`; returns the engine's
/// statistics, the wall time and how far the resident set rose above
/// where it started (its high-water mark, where it can be reset).
fn recover(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    threads: usize,
    load: LoadStrategy,
) -> Result<(RecoveryStats, Duration, Option<u64>)> {
    let store: Arc<dyn CheckpointStore> = Arc::new(ObjectCheckpointStore::local(dir)?);
    let engine = Recovery::new(
        store,
        RecoveryConfig::default()
            .max_parallel_threads(threads)
            .load_strategy(load),
        rt.handle().clone(),
    )?;
    let backend = MemoryBackend::new();
    let rss_before = util::rss_bytes();
    let reset = util::reset_peak_rss();
    let started = Instant::now();
    let out = engine.recover(
        RecoveryTarget::Latest,
        &RecoveryScope::all(),
        &backend,
        None,
        None,
    )?;
    let elapsed = started.elapsed();
    let rss_growth = match (reset, rss_before, util::peak_rss_bytes()) {
        (true, Some(before), Some(peak)) => Some(peak.saturating_sub(before)),
        _ => None,
    };
    if backend.stats().entries != out.stats.entries_loaded {
        return Err("the backend does not hold what was loaded".into());
    }
    // Freeing a GiB of small allocations is not part of the recovery; nor
    // is reusing it: the next recovery starts, like one in a new process,
    // from memory the allocator has returned to the system (otherwise its
    // arenas would land on pages this one already faulted in).
    drop(backend);
    util::malloc_trim();
    Ok((out.stats, elapsed, rss_growth))
}

/// The newest checkpoint's manifest in the local store at `dir`.
fn newest_manifest(rt: &tokio::runtime::Runtime, dir: &Path) -> Result<highwater::core::Manifest> {
    let store = ObjectCheckpointStore::local(dir)?;
    let ids = rt.block_on(store.list_manifests())?;
    let newest = ids.into_iter().max().ok_or("no checkpoint")?;
    Ok(rt.block_on(load_manifest(&store, newest))?)
}

/// The limit: read every artifact file of `dir`'s newest checkpoint in
/// sequence and decompress it on this one thread.
fn sequential_read_decompress(rt: &tokio::runtime::Runtime, dir: &Path) -> Result<Duration> {
    let manifest = newest_manifest(rt, dir)?;
    let limits = DecodeLimits::default();
    let started = Instant::now();
    let mut raw = 0usize;
    for r in manifest.artifacts() {
        let bytes = std::fs::read(dir.join("artifacts").join(r.id.to_hex()))?;
        let decoded = decode_artifact(&bytes, &limits)?;
        raw += decoded.header.entries as usize;
    }
    let elapsed = started.elapsed();
    if raw == 0 {
        return Err("nothing decoded".into());
    }
    Ok(elapsed)
}

/// The floor of any restore into memory: read every artifact file of
/// `dir`'s newest checkpoint in sequence, decompress it, and copy each
/// record's key and value into 1 MiB segments, on this one thread. With
/// `fresh`, every segment is new and all are held until the end (memory
/// the process did not have, as a restored state's is); without, one
/// segment is refilled (the same work on memory already resident). No
/// index is built.
fn sequential_read_decompress_copy(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    fresh: bool,
) -> Result<Duration> {
    const SEGMENT: usize = 1 << 20;
    let manifest = newest_manifest(rt, dir)?;
    let limits = DecodeLimits::default();
    let started = Instant::now();
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::with_capacity(SEGMENT);
    for r in manifest.artifacts() {
        let bytes = std::fs::read(dir.join("artifacts").join(r.id.to_hex()))?;
        let decoded = decode_artifact(&bytes, &limits)?;
        for rec in decoded.records() {
            let rec = rec?;
            let (key, value) = (rec.0, rec.1.unwrap_or_default());
            if current.len() + key.len() + value.len() > current.capacity() {
                if fresh {
                    let full = std::mem::replace(
                        &mut current,
                        Vec::with_capacity(SEGMENT.max(key.len() + value.len())),
                    );
                    segments.push(full);
                } else {
                    current.clear();
                    current.reserve(key.len() + value.len());
                }
            }
            current.extend_from_slice(key);
            current.extend_from_slice(value);
        }
    }
    segments.push(current);
    let elapsed = started.elapsed();
    if segments.iter().all(Vec::is_empty) {
        return Err("nothing decoded".into());
    }
    drop(segments);
    util::malloc_trim();
    Ok(elapsed)
}

/// Runs the suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = Plan {
        quick: ctx.quick,
        state_bytes: if ctx.quick { 32 << 20 } else { 1 << 30 },
        reps: 3,
        cores,
    };
    let scratch = tempfile::Builder::new()
        .prefix("recovery-")
        .tempdir_in(&ctx.out)?;
    let dir_a = scratch.path().join("depth10");
    let dir_b = scratch.path().join("depth0");
    let entry_bytes = (key(0)?.len() + VALUE_LEN) as u64;
    let keys = plan.state_bytes / entry_bytes;
    let mut params = Map::new();
    params.insert("quick".into(), json!(plan.quick));
    params.insert("cores".into(), json!(plan.cores));
    params.insert("reps".into(), json!(plan.reps));
    params.insert("state_bytes_target".into(), json!(plan.state_bytes));
    params.insert("chain_depth".into(), json!(DEPTH));
    if let Some(load) = util::loadavg() {
        params.insert("loadavg_1m_at_start".into(), json!(load));
    }
    let t = Instant::now();
    let (entries, bytes) = build(&dir_a, &dir_b, keys)?;
    params.insert("setup_s".into(), json!(t.elapsed().as_secs_f64()));
    params.insert("state_entries".into(), json!(entries));
    params.insert("state_bytes".into(), json!(bytes));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cpu_start = CpuReading::now();
    let mut metrics = Vec::new();

    // The limit baseline.
    let mut seq = Vec::new();
    for _ in 0..plan.reps {
        seq.push(sequential_read_decompress(&rt, &dir_b)?.as_secs_f64());
    }
    let seq_s = median(&seq);
    let mut fresh = Vec::new();
    let mut resident = Vec::new();
    for _ in 0..plan.reps {
        fresh.push(sequential_read_decompress_copy(&rt, &dir_b, true)?.as_secs_f64());
        resident.push(sequential_read_decompress_copy(&rt, &dir_b, false)?.as_secs_f64());
    }
    let fresh_s = median(&fresh);

    // Throughput with one thread per core, and scaling.
    let mut by_threads = Vec::new();
    let mut logical = 0;
    let mut fetched = 0;
    for threads in [1usize, 2, 4] {
        let mut times = Vec::new();
        let mut phases: [Vec<f64>; 2] = Default::default();
        let mut held = 0;
        let mut rss = Vec::new();
        for _ in 0..plan.reps {
            let (s, d, growth) = recover(&rt, &dir_b, threads, LoadStrategy::Restore)?;
            rss.extend(growth.map(|g| g as f64));
            logical = s.logical_bytes;
            times.push(d.as_secs_f64());
            for (all, one) in phases.iter_mut().zip([s.fetch_duration, s.load_duration]) {
                all.push(one.as_secs_f64());
            }
            held = held.max(s.fetch_ahead_peak_bytes);
            fetched = s.bytes_fetched;
        }
        by_threads.push((threads, median(&times)));
        // Where the time goes: fetching (and checking) the artifacts, and
        // decoding and loading them. Into the memory backend the two
        // overlap: the fetch time is until the last artifact arrived, the
        // load time the whole restore's.
        params.insert(format!("fetch_s_{threads}t"), json!(median(&phases[0])));
        params.insert(format!("load_s_{threads}t"), json!(median(&phases[1])));
        // The most of the checkpoint held at once while fetching overlapped
        // decoding (`RecoveryConfig::fetch_ahead_bytes` bounds it).
        params.insert(format!("fetch_ahead_peak_bytes_{threads}t"), json!(held));
        // What the restore cost in memory at its peak, over the state it
        // loaded (the resident set's rise; 1.0 would be the logical bytes).
        if !rss.is_empty() && logical > 0 {
            params.insert(
                format!("restore_peak_rss_per_state_byte_{threads}t"),
                json!(median(&rss) / logical as f64),
            );
        }
    }
    let mb = logical as f64 / 1e6;
    let limit = mb / seq_s * cores as f64;
    params.insert("logical_bytes_loaded".into(), json!(logical));
    params.insert("checkpoint_stored_bytes".into(), json!(fetched));
    params.insert("sequential_read_decompress_s".into(), json!(seq_s));
    params.insert(
        "sequential_read_decompress_into_fresh_memory_s".into(),
        json!(fresh_s),
    );
    // The same copies into one resident segment: the difference is what
    // the kernel's fresh pages cost.
    params.insert(
        "sequential_read_decompress_copy_resident_s".into(),
        json!(median(&resident)),
    );
    let at_cores = by_threads
        .iter()
        .find(|(t, _)| *t == cores.min(4))
        .map_or(by_threads[0].1, |(_, s)| *s);
    metrics.push(Metric::versus(
        "recovery_throughput",
        mb / at_cores,
        "MB/s",
        &format!("sequential read + zstd decompress on one core × {cores} cores"),
        limit,
        true,
    ));
    // The same restore against what any restore into memory must do.
    metrics.push(Metric::versus(
        "recovery_throughput_vs_fresh_memory",
        mb / at_cores,
        "MB/s",
        &format!(
            "sequential read + zstd decompress + copy into fresh memory on one core × {cores} cores"
        ),
        mb / fresh_s * cores as f64,
        true,
    ));
    // The other load strategy, for comparison.
    let mut parallel = Vec::new();
    for _ in 0..plan.reps {
        let (_, d, _) = recover(&rt, &dir_b, 0, LoadStrategy::Parallel)?;
        parallel.push(d.as_secs_f64());
    }
    metrics.push(Metric::versus(
        "recovery_throughput_parallel_load",
        mb / median(&parallel),
        "MB/s",
        &format!("sequential read + zstd decompress on one core × {cores} cores"),
        limit,
        true,
    ));
    let one = mb / by_threads[0].1;
    for (threads, s) in &by_threads {
        metrics.push(Metric::versus(
            &format!("recovery_scaling_{threads}t"),
            mb / s,
            "MB/s",
            "the same recovery with 1 thread",
            one,
            true,
        ));
    }

    // Chain depth.
    let mut deep = Vec::new();
    let mut flat = Vec::new();
    for _ in 0..plan.reps {
        let (s, d, _) = recover(&rt, &dir_a, 0, LoadStrategy::Restore)?;
        let l = s.logical_bytes;
        if l != logical {
            return Err(format!("depth 10 loaded {l} bytes, depth 0 {logical}").into());
        }
        deep.push(d.as_secs_f64());
        flat.push(
            recover(&rt, &dir_b, 0, LoadStrategy::Restore)?
                .1
                .as_secs_f64(),
        );
    }
    metrics.push(Metric::versus(
        "recovery_chain_depth",
        median(&deep),
        "s",
        "depth-0 recovery of the same logical state",
        median(&flat),
        false,
    ));
    Ok(util::finish("recovery", params, metrics, cpu_start))
}
