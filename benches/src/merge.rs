//! Suite `merge`: incremental checkpoints, chain merging, deduplication and
//! compression of `highwater-merge`.
//!
//! The state is a realistic mix (same shape as suite `state`): keyed running
//! aggregates (operator `agg`, ~26-byte values) and window buffers
//! (operator `window`, lists of 4–14 sensor readings, ~100–400 bytes).
//! Full mode: 1 GiB of keys and values (≈ 10 M entries … the exact count is
//! in the parameters); `--quick`: 24 MiB.
//!
//! Metrics (each baseline measured in the same run, on the same data):
//!
//! - `incremental_bytes_1pct`: bytes written by an incremental checkpoint
//!   after 1% of the keys (random) were rewritten, against the bytes the
//!   full checkpoint of the state wrote (target ≤ 0.02).
//! - `incremental_time_1pct`: the time of that incremental checkpoint
//!   (trigger to committed manifest), against the full checkpoint's
//!   (target ≤ 0.05). Both go to an in-memory store, so encoding and
//!   compression are measured, not a disk.
//! - `merge_throughput`: logical (record) MB/s of merging the chain base +
//!   3 deltas (1% each) into a new base on all cores (fetch, verify,
//!   decompress, fold, chunk, compress, store), against zstd decompress +
//!   recompress of the very same stored artifacts on all cores (target
//!   ≥ 0.7).
//! - `dedup_saving`: stored bytes of a full checkpoint of 4 operators with
//!   identical window state, against the same checkpoint without
//!   deduplication (operator names in the keys); the ratio is what is kept
//!   (0.25 = three copies saved).
//! - `compression_ratio_window`, `compression_ratio_agg`: stored/logical
//!   bytes of each operator's artifacts in the full checkpoint (zstd level
//!   of the default configuration), against plain zstd level 3 over the
//!   same record streams (target: ratio ≤ 1.10).
//! - `dictionary_small_artifacts`: stored bytes of 2,000 small (≈ 2 KiB)
//!   window-state artifacts compressed with a zstd dictionary trained on
//!   other samples (dictionary bytes included once), against compressing
//!   them without one: the measurement behind keeping dictionaries off.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::codec::ARTIFACT_HEADER_LEN;
use highwater::core::{
    ArtifactId, CheckpointStore, SnapshotKind, StateBackend, StateKey, decode_artifact,
    key_group_for, load_manifest,
};
use highwater::memory::MemoryBackend;
use highwater::merge::{EncodeParams, MergerConfig, encode_snapshot};
use highwater::{CheckpointConfig, CheckpointInfo, CheckpointKind, StateManager};
use serde_json::{Map, json};

use crate::util::{CpuReading, Rng, loadavg, mib, push_str, push_varint};
use crate::{Ctx, Metric, Result, SuiteResult};

const MAX_PARALLELISM: u16 = 128;
const WINDOW_BASE_MS: u64 = 1_735_689_600_000;
const STATUSES: [&str; 6] = ["ok", "ok", "ok", "ok", "warn", "calibrating"];

fn key(operator: &str, state: &str, user_key: &[u8], ns: &[u8], out: &mut Vec<u8>) {
    out.clear();
    StateKey {
        key_group: key_group_for(user_key, MAX_PARALLELISM),
        operator,
        state,
        key: user_key,
        namespace: ns,
        user_key: b"",
    }
    .encode_into(out)
    .expect("benchmark names are valid");
}

/// Entry `i`: by `i % 5`, 0–1 an aggregate of one user, 2–4 the buffer of
/// one of 4 open windows of one sensor. `window_op` names the window
/// operator (the dedup measurement uses several).
fn entry(i: u64, window_op: &str, rng: &mut Rng, k: &mut Vec<u8>, v: &mut Vec<u8>) {
    let (block, r) = (i / 5, i % 5);
    v.clear();
    v.push(0); // plain envelope
    if r < 2 {
        let user = block * 2 + r;
        let uk = format!("user-{user:08}");
        let mut ukb = Vec::new();
        push_str(&mut ukb, &uk);
        key("agg", "sum", &ukb, b"", k);
        let count = rng.range(1, 50_000);
        let avg = rng.range(100, 99_999) as f64 / 100.0;
        push_varint(v, count);
        v.extend_from_slice(&(avg * count as f64).to_le_bytes());
        v.extend_from_slice(&((avg * 0.5) as f32).to_le_bytes());
        v.extend_from_slice(&((avg * 1.5) as f32).to_le_bytes());
        push_varint(v, WINDOW_BASE_MS + rng.below(3_600_000));
    } else {
        let slot = block * 3 + (r - 2);
        let (sensor, window) = (slot / 4, slot % 4);
        let mut ukb = Vec::new();
        push_str(&mut ukb, &format!("sensor-{sensor:08}"));
        let mut ns = Vec::new();
        push_varint(&mut ns, WINDOW_BASE_MS + window * 60_000);
        key(window_op, "buf", &ukb, &ns, k);
        let site = format!("site-{:02}", sensor % 40);
        let mut ts = WINDOW_BASE_MS + window * 60_000;
        let base_temp = 15.0 + (sensor % 150) as f32 / 10.0;
        for _ in 0..rng.range(4, 14) {
            ts += rng.range(100, 30_000);
            push_varint(v, ts);
            let temp = base_temp + rng.below(1_000) as f32 / 100.0;
            v.extend_from_slice(&temp.to_le_bytes());
            push_varint(v, rng.range(0, 100));
            push_str(v, STATUSES[rng.below(STATUSES.len() as u64) as usize]);
            push_str(v, &site);
        }
    }
}

/// Fills `backend` until keys and values reach `bytes`; returns entries.
fn fill(backend: &dyn StateBackend, bytes: u64) -> Result<u64> {
    let mut rng = Rng::new(0x5eed_0010);
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let (mut total, mut i) = (0u64, 0u64);
    while total < bytes {
        entry(i, "window", &mut rng, &mut k, &mut v);
        backend.put(&k, &v)?;
        total += (k.len() + v.len()) as u64;
        i += 1;
    }
    Ok(i)
}

/// Rewrites `percent`% of the `entries` (random), with new values.
fn touch(backend: &dyn StateBackend, entries: u64, percent: u64, seed: u64) -> Result<u64> {
    let mut rng = Rng::new(seed);
    let mut vals = Rng::new(seed ^ 0xabcd);
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let mut n = 0;
    for i in 0..entries {
        if rng.below(100) < percent {
            entry(i, "window", &mut vals, &mut k, &mut v);
            backend.put(&k, &v)?;
            n += 1;
        }
    }
    Ok(n)
}

fn checkpoint(m: &StateManager, want: CheckpointKind) -> Result<CheckpointInfo> {
    let info = m.checkpoint()?.wait()?;
    if info.kind != want {
        return Err(format!("expected a {want} checkpoint, got {}", info.kind).into());
    }
    Ok(info)
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs `f` over `items` on `threads` threads (work handed out in order).
fn on_all_cores<T: Sync>(items: &[T], threads: usize, f: impl Fn(&T) -> Result + Sync) -> Result {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| -> Result {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        f(item)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a worker panicked")??;
        }
        Ok(())
    })
}

/// The suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let state_bytes: u64 = if ctx.quick { 24 << 20 } else { 1 << 30 };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut params = Map::new();
    let mut metrics = Vec::new();
    params.insert(
        "mode".into(),
        json!(if ctx.quick { "quick" } else { "full" }),
    );
    params.insert("state_bytes".into(), json!(state_bytes));
    params.insert("threads".into(), json!(threads));
    params.insert("loadavg_at_start".into(), json!(loadavg()));
    // The share of the machine other processes used during each timed
    // phase: a shared machine disturbs a phase and its baseline unequally.
    let phase =
        |name: &str, from: Option<CpuReading>, params: &mut Map<String, serde_json::Value>| {
            if let (Some(a), Some(b)) = (from, CpuReading::now()) {
                params.insert(
                    format!("other_processes_cpu_pct_{name}"),
                    json!(b.others_since(&a).map(|x| (x * 10.0).round() / 10.0)),
                );
            }
        };
    let merger = MergerConfig::default();
    params.insert("zstd_level".into(), json!(merger.compression.zstd_level()));
    params.insert(
        "chunk_target_bytes".into(),
        json!(merger.chunking.target_bytes),
    );

    println!("merge: filling {:.0} MiB of state …", mib(state_bytes));
    let backend = Arc::new(MemoryBackend::new());
    let entries = fill(&*backend, state_bytes)?;
    params.insert("entries".into(), json!(entries));
    let store = Arc::new(ObjectCheckpointStore::in_memory());
    let mut cfg = CheckpointConfig::default();
    cfg.max_retained = 8;
    cfg.max_chain_before_full = 8;
    let manager = StateManager::builder()
        .backend(backend.clone())
        .store(store.clone())
        .config(cfg)
        .build()?;

    // Full, then 1% changed and an incremental.
    println!("merge: full checkpoint …");
    let cpu = CpuReading::now();
    let full = checkpoint(&manager, CheckpointKind::Full)?;
    phase("full_checkpoint", cpu, &mut params);
    let touched = touch(&*backend, entries, 1, 11)?;
    println!("merge: incremental after {touched} rewrites …");
    let cpu = CpuReading::now();
    let inc = checkpoint(&manager, CheckpointKind::Incremental)?;
    phase("incremental_checkpoint", cpu, &mut params);
    params.insert("keys_rewritten_1pct".into(), json!(touched));
    params.insert(
        "full_checkpoint_ms".into(),
        json!(round3(full.duration.as_secs_f64() * 1e3)),
    );
    params.insert("full_checkpoint_bytes".into(), json!(full.bytes_written));
    params.insert("full_checkpoint_artifacts".into(), json!(full.artifacts));
    metrics.push(Metric::versus(
        "incremental_bytes_1pct",
        inc.bytes_written as f64,
        "bytes",
        "full checkpoint bytes",
        full.bytes_written as f64,
        false,
    ));
    metrics.push(Metric::versus(
        "incremental_time_1pct",
        inc.duration.as_secs_f64() * 1e3,
        "ms",
        "full checkpoint time",
        full.duration.as_secs_f64() * 1e3,
        false,
    ));

    // Compression of each operator's artifacts in the full checkpoint.
    let full_manifest = block_on(load_manifest(&*store, full.id))??;
    for (op, name) in [
        ("window", "compression_ratio_window"),
        ("agg", "compression_ratio_agg"),
    ] {
        let refs: Vec<_> = full_manifest
            .artifacts()
            .filter(|a| a.operator == op)
            .collect();
        let mut logical = 0u64;
        let mut stored = 0u64;
        let mut plain3 = 0u64;
        for r in refs {
            let bytes = block_on(store.get_artifact(r.id))??;
            let decoded = decode_artifact(&bytes, &Default::default())?;
            // The record stream itself: re-encode raw to get it back.
            let raw = raw_stream(&decoded)?;
            logical += raw.len() as u64;
            stored += bytes.len() as u64;
            plain3 += zstd::bulk::compress(&raw, 3)?.len() as u64;
        }
        let ours = stored as f64 / logical.max(1) as f64;
        let base = plain3 as f64 / logical.max(1) as f64;
        params.insert(format!("{op}_logical_bytes"), json!(logical));
        metrics.push(Metric::versus(
            name,
            round3(ours),
            "stored/logical",
            "plain zstd level 3 over the same record streams",
            round3(base),
            false,
        ));
    }

    // Two more 1% deltas, then merge the 4-layer chain.
    for seed in [12, 13] {
        touch(&*backend, entries, 1, seed)?;
        checkpoint(&manager, CheckpointKind::Incremental)?;
    }
    let newest = manager
        .last_checkpoint()
        .ok_or("no checkpoint after the incrementals")?;
    let chain = block_on(load_manifest(&*store, newest))??;
    let chain_logical: u64 = chain.artifacts().map(|a| a.logical_bytes).sum();
    println!(
        "merge: merging a chain of {} layers ({:.0} MiB logical) …",
        chain.layers.len(),
        mib(chain_logical)
    );
    let cpu = CpuReading::now();
    let t = Instant::now();
    let stats = manager.compact()?.ok_or("nothing to merge")?;
    let merge_time = t.elapsed();
    phase("merge", cpu, &mut params);
    params.insert("merge_layers".into(), json!(chain.layers.len()));
    params.insert("merge_logical_bytes".into(), json!(chain_logical));
    params.insert("merge_clusters".into(), json!(stats.clusters));
    params.insert(
        "merge_artifacts_out".into(),
        json!(stats.artifacts_encoded + stats.artifacts_kept),
    );
    // Baseline: decompress + recompress every stored artifact of the chain
    // (same level) on all cores.
    let mut ids: Vec<ArtifactId> = chain.artifacts().map(|a| a.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let blobs: Vec<bytes::Bytes> = ids
        .iter()
        .map(|id| block_on(store.get_artifact(*id))?.map_err(Into::into))
        .collect::<Result<_>>()?;
    let level = merger
        .compression
        .zstd_level()
        .ok_or("the merge suite measures compressed artifacts")?;
    let cpu = CpuReading::now();
    let t = Instant::now();
    on_all_cores(&blobs, threads, |b| {
        let decoded = decode_artifact(b, &Default::default())?;
        let raw = raw_stream(&decoded)?;
        black_box(zstd::bulk::compress(&raw, level)?);
        Ok(())
    })?;
    let baseline_time = t.elapsed();
    phase("merge_baseline", cpu, &mut params);
    let mbps = |d: Duration| chain_logical as f64 / 1e6 / d.as_secs_f64();
    metrics.push(Metric::versus(
        "merge_throughput",
        round3(mbps(merge_time)),
        "MB/s",
        "zstd decompress + recompress of the same artifacts, all cores",
        round3(mbps(baseline_time)),
        true,
    ));
    drop(blobs);
    drop(manager);
    drop(store);
    drop(backend);

    // Dedup: 4 operators holding identical window state.
    let per_op = state_bytes / 8;
    let dedup_backend = MemoryBackend::new();
    let mut rng_seed = 0u64;
    for op in ["w0", "w1", "w2", "w3"] {
        let mut rng = Rng::new(0x5eed_0020);
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let (mut total, mut i) = (0u64, 0u64);
        while total < per_op {
            // Window entries only (i % 5 in 2..5).
            if i % 5 >= 2 {
                entry(i, op, &mut rng, &mut k, &mut v);
                dedup_backend.put(&k, &v)?;
                total += (k.len() + v.len()) as u64;
            }
            i += 1;
        }
        rng_seed += i;
    }
    params.insert("dedup_state_bytes_per_operator".into(), json!(per_op));
    black_box(rng_seed);
    let snap = dedup_backend.snapshot(SnapshotKind::Full)?;
    let stored_with = |dedup: bool| -> Result<u64> {
        let mut m = MergerConfig::default();
        m.enable_deduplication = dedup;
        let p = EncodeParams {
            max_parallelism: MAX_PARALLELISM,
            key_groups_per_artifact: CheckpointConfig::default().key_groups_per_artifact,
            merger: m,
            now_ms: 0,
        };
        let seen = std::sync::Mutex::new(HashSet::new());
        let bytes = std::sync::atomic::AtomicU64::new(0);
        encode_snapshot(&*snap, &p, &|prod| {
            if seen
                .lock()
                .map_err(|_| highwater::Error::Internal("poisoned".into()))?
                .insert(prod.reference.id)
            {
                bytes.fetch_add(
                    prod.bytes.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            Ok(())
        })?;
        Ok(bytes.into_inner())
    };
    let with = stored_with(true)?;
    let without = stored_with(false)?;
    metrics.push(Metric::versus(
        "dedup_saving",
        with as f64,
        "bytes stored",
        "the same checkpoint without deduplication",
        without as f64,
        false,
    ));
    drop(snap);

    // Dictionary: many small artifacts.
    let (with_dict, without_dict, dict_len) = dictionary_experiment(level)?;
    params.insert("dictionary_bytes".into(), json!(dict_len));
    metrics.push(Metric::versus(
        "dictionary_small_artifacts",
        with_dict as f64,
        "bytes stored",
        "the same small artifacts compressed without a dictionary",
        without_dict as f64,
        false,
    ));

    Ok(SuiteResult {
        suite: "merge".into(),
        params,
        metrics,
    })
}

/// The record stream of a decoded artifact, re-serialised (the codec keeps
/// it private; the encoding is deterministic, so this is the same bytes).
fn raw_stream(decoded: &highwater::core::DecodedArtifact) -> Result<Vec<u8>> {
    let mut w = highwater::core::RecordWriter::new(
        highwater::core::ArtifactKind::Delta,
        decoded.header.raw_len as usize,
    );
    for r in decoded.records() {
        let (k, v) = r?;
        w.push(k, v)?;
    }
    let enc = w.finish(&highwater::core::EncodeOptions {
        zstd_level: 1,
        compression_threshold: usize::MAX,
    })?;
    Ok(enc.bytes[ARTIFACT_HEADER_LEN..].to_vec())
}

/// 2,000 small window-state record streams (≈ 2 KiB each): compressed one
/// by one with and without a 16 KiB dictionary trained on 2,000 others.
/// Returns (bytes with dictionary + the dictionary, bytes without, dictionary).
fn dictionary_experiment(level: i32) -> Result<(u64, u64, usize)> {
    let mut rng = Rng::new(0x5eed_0030);
    let sample = |rng: &mut Rng, offset: u64| -> Result<Vec<u8>> {
        let mut w =
            highwater::core::RecordWriter::new(highwater::core::ArtifactKind::Entries, 2048);
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut i = offset;
        while w.raw_len() < 2048 {
            if i % 5 >= 2 {
                entry(i, "window", rng, &mut k, &mut v);
                w.push(&k, Some(&v))?;
            }
            i += 1;
        }
        let enc = w.finish(&highwater::core::EncodeOptions {
            zstd_level: 1,
            compression_threshold: usize::MAX,
        })?;
        Ok(enc.bytes[ARTIFACT_HEADER_LEN..].to_vec())
    };
    let training: Vec<Vec<u8>> = (0..2000u64)
        .map(|j| sample(&mut rng, j * 1000))
        .collect::<Result<_>>()?;
    let dict = zstd::dict::from_samples(&training, 16 << 10)?;
    let test: Vec<Vec<u8>> = (0..2000u64)
        .map(|j| sample(&mut rng, 5_000_000 + j * 1000))
        .collect::<Result<_>>()?;
    let mut plain = 0u64;
    let mut with = dict.len() as u64;
    let mut c = zstd::bulk::Compressor::with_dictionary(level, &dict)?;
    for t in &test {
        plain += zstd::bulk::compress(t, level)?.len().min(t.len()) as u64;
        with += c.compress(t)?.len().min(t.len()) as u64;
    }
    Ok((with, plain, dict.len()))
}
