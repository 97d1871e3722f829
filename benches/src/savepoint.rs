//! Suite `savepoint`: taking and restoring savepoints against a full
//! checkpoint and a checkpoint restore of the same state in the same run,
//! and a savepoint restore into RocksDB against the raw `rocksdb` crate's
//! bulk load of the same records.
//!
//! Setup: state of `state_bytes` logical bytes (keys + values; 1 GiB in
//! full mode, 32 MiB with `--quick`) of one operator, values of ~160 bytes
//! that zstd compresses about 2.5×, written straight into a
//! `MemoryBackend` under a `StateManager` over a local directory store.
//!
//! Metrics (each the median of `reps` runs; MB/s of the state's logical
//! bytes, higher is better):
//!
//! - `savepoint_write_throughput`: `StateManager::savepoint` into a fresh
//!   local directory, from the call to the committed savepoint manifest.
//!   Baseline: a full checkpoint (`checkpoint().wait()`) of the same state
//!   into an empty local directory (each repetition has its own: into a
//!   store already holding the same state a checkpoint writes nothing, all
//!   its artifacts being there by content address; that figure is kept as
//!   `checkpoint_into_a_store_holding_it_mb_s`). Target ratio ≥ 0.8.
//! - `savepoint_restore_throughput`: `restore_savepoint_with` (without the
//!   trailing checkpoint, `skip_checkpoint`) into a fresh memory backend.
//!   Baseline: `restore(id)` of the full checkpoint into a fresh memory
//!   backend. Target ratio ≥ 0.8.
//! - `savepoint_restore_with_checkpoint_throughput`: the same with the
//!   full checkpoint a restore takes by default; same baseline.
//! - `savepoint_restore_rocksdb`: the savepoint restore (no trailing
//!   checkpoint) into a fresh `RocksDbBackend`. Baseline: the same records
//!   written to a fresh raw `rocksdb::DB` in `WriteBatch`es of 4096 with the
//!   write-ahead log off (the faster of the crate's two bulk paths here for
//!   state that fits a memtable budget: no SST building). Target ≥ 0.7.
//!
//! The share of CPU other processes used during the measurements is
//! recorded (`other_processes_cpu_pct`): the machine is shared.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::WriteBatch;
use highwater::memory::MemoryBackend;
use highwater::rocksdb::{RocksDbBackend, RocksDbConfig};
use highwater::{
    CheckpointConfig, CheckpointStore, SavepointRestoreOptions, StateBackend, StateManager,
};
use serde_json::{Map, json};

use crate::util::{self, CpuReading, Rng, median};
use crate::{Ctx, Metric, Result, SuiteResult};

const MAX_PARALLELISM: u16 = 128;
const VALUE_LEN: usize = 160;

fn key(i: u64) -> Result<Vec<u8>> {
    util::session_key(i, MAX_PARALLELISM)
}

/// An envelope (tag 0: no expiry) around small numbers with some noise,
/// which zstd compresses about 2.5×.
fn value(rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_LEN);
    v.push(0);
    while v.len() < VALUE_LEN {
        v.push(rng.below(24) as u8);
    }
    v
}

fn config() -> CheckpointConfig {
    let mut c = CheckpointConfig::default();
    c.max_parallelism = MAX_PARALLELISM;
    c.incremental = false;
    c.max_retained = 2;
    c
}

fn manager(backend: Arc<dyn StateBackend>, store: &Path) -> Result<StateManager> {
    Ok(StateManager::builder()
        .backend(backend)
        .store(Arc::new(ObjectCheckpointStore::local(store)?))
        .config(config())
        .build()?)
}

fn local(dir: &Path) -> Result<Arc<dyn CheckpointStore>> {
    Ok(Arc::new(ObjectCheckpointStore::local(dir)?))
}

fn no_checkpoint() -> SavepointRestoreOptions {
    let mut o = SavepointRestoreOptions::default();
    o.skip_checkpoint = true;
    o
}

/// Runs the suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let quick = ctx.quick;
    let state_bytes: u64 = if quick { 32 << 20 } else { 1 << 30 };
    let reps = 3;
    let scratch = tempfile::Builder::new()
        .prefix("savepoint-")
        .tempdir_in(&ctx.out)?;
    let s = scratch.path();
    let keys = state_bytes / (key(0)?.len() + VALUE_LEN) as u64;
    let mut params = Map::new();
    params.insert("quick".into(), json!(quick));
    params.insert("reps".into(), json!(reps));
    params.insert("state_bytes_target".into(), json!(state_bytes));
    if let Some(load) = util::loadavg() {
        params.insert("loadavg_1m_at_start".into(), json!(load));
    }

    let t = Instant::now();
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let mut rng = Rng::new(7);
    let mut batch = WriteBatch::new();
    for i in 0..keys {
        batch.put(key(i)?, value(&mut rng));
        if batch.len() == 4096 {
            backend.write_batch(std::mem::take(&mut batch))?;
        }
    }
    backend.write_batch(batch)?;
    let stats = backend.stats();
    let mb = stats.bytes as f64 / 1e6;
    params.insert("setup_s".into(), json!(t.elapsed().as_secs_f64()));
    params.insert("state_entries".into(), json!(stats.entries));
    params.insert("state_bytes".into(), json!(stats.bytes));
    let records = backend.scan_range(&[], &[0xFF; 4])?;

    let cpu_start = CpuReading::now();
    let mut metrics = Vec::new();

    // Writing: a full checkpoint and a savepoint, alternately, each into a
    // store of its own. (A checkpoint into a store that already holds the
    // same state writes nothing: every artifact is found by its content
    // address. That is measured too, for information.)
    let (mut cp, mut sp, mut again) = (Vec::new(), Vec::new(), Vec::new());
    let mut pauses = Vec::new();
    let mut checkpoint = None;
    for r in 0..reps {
        let m = manager(backend.clone(), &s.join(format!("ckpt{r}")))?;
        let t = Instant::now();
        let info = m.checkpoint()?.wait()?;
        cp.push(t.elapsed().as_secs_f64());
        if info.bytes_written == 0 {
            return Err("a checkpoint into an empty store wrote nothing".into());
        }
        checkpoint.get_or_insert(info.id);
        let t = Instant::now();
        let h = m.savepoint(local(&s.join(format!("sp{r}")))?)?;
        pauses.push(h.snapshot_pause().as_secs_f64() * 1e3);
        let info = h.wait()?;
        sp.push(t.elapsed().as_secs_f64());
        if info.entries != stats.entries {
            return Err(format!(
                "savepoint holds {} of {} entries",
                info.entries, stats.entries
            )
            .into());
        }
        let t = Instant::now();
        m.checkpoint()?.wait()?;
        again.push(t.elapsed().as_secs_f64());
        m.close()?;
        drop(m);
        if r > 0 {
            std::fs::remove_dir_all(s.join(format!("ckpt{r}")))?;
            std::fs::remove_dir_all(s.join(format!("sp{r}")))?;
        }
    }
    params.insert("savepoint_snapshot_pause_ms".into(), json!(median(&pauses)));
    params.insert(
        "checkpoint_into_a_store_holding_it_mb_s".into(),
        json!(mb / median(&again)),
    );
    metrics.push(Metric::versus(
        "savepoint_write_throughput",
        mb / median(&sp),
        "MB/s",
        "a full checkpoint of the same state into an empty local directory",
        mb / median(&cp),
        true,
    ));
    let checkpoint = checkpoint.ok_or("no checkpoint")?;

    // Restoring into memory.
    let (mut rc, mut rs, mut rsc) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..reps {
        let target: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let m = manager(target.clone(), &s.join("ckpt0"))?;
        let t = Instant::now();
        m.restore(checkpoint)?;
        rc.push(t.elapsed().as_secs_f64());
        drop(m);
        drop(target);

        let target: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let m = manager(target.clone(), &s.join(format!("r{r}")))?;
        let t = Instant::now();
        m.restore_savepoint_with(local(&s.join("sp0"))?, &no_checkpoint())?;
        rs.push(t.elapsed().as_secs_f64());
        if target.stats().entries != stats.entries {
            return Err("the savepoint restore lost entries".into());
        }
        drop(m);
        drop(target);

        let target: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let m = manager(target.clone(), &s.join(format!("rc{r}")))?;
        let t = Instant::now();
        m.restore_savepoint(local(&s.join("sp0"))?)?;
        rsc.push(t.elapsed().as_secs_f64());
        drop(m);
        drop(target);
    }
    metrics.push(Metric::versus(
        "savepoint_restore_throughput",
        mb / median(&rs),
        "MB/s",
        "restore(id) of a full checkpoint of the same state",
        mb / median(&rc),
        true,
    ));
    metrics.push(Metric::versus(
        "savepoint_restore_with_checkpoint_throughput",
        mb / median(&rsc),
        "MB/s",
        "restore(id) of a full checkpoint of the same state",
        mb / median(&rc),
        true,
    ));

    // Restoring into RocksDB, against the raw crate.
    let (mut rocks, mut raw) = (Vec::new(), Vec::new());
    for r in 0..reps {
        let dir = s.join(format!("rocks{r}"));
        let target: Arc<dyn StateBackend> =
            Arc::new(RocksDbBackend::with_config(RocksDbConfig::new(&dir))?);
        let m = manager(target.clone(), &s.join(format!("rr{r}")))?;
        let t = Instant::now();
        m.restore_savepoint_with(local(&s.join("sp0"))?, &no_checkpoint())?;
        rocks.push(t.elapsed().as_secs_f64());
        drop(m);
        drop(target);

        let dir = s.join(format!("raw{r}"));
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, &dir)?;
        let mut wo = rocksdb::WriteOptions::default();
        wo.disable_wal(true);
        let t = Instant::now();
        for chunk in records.chunks(4096) {
            let mut b = rocksdb::WriteBatch::default();
            for (k, v) in chunk {
                b.put(k, v);
            }
            db.write_opt(b, &wo)?;
        }
        db.flush()?;
        raw.push(t.elapsed().as_secs_f64());
        drop(db);
    }
    metrics.push(Metric::versus(
        "savepoint_restore_rocksdb",
        mb / median(&rocks),
        "MB/s",
        "raw rocksdb: the same records in WriteBatches of 4096, WAL off, then a flush",
        mb / median(&raw),
        true,
    ));

    Ok(util::finish("savepoint", params, metrics, cpu_start))
}
