//! Suite `rocksdb`: the RocksDB state backend (`highwater-rocksdb`) against
//! the raw `rocksdb` crate doing the same work in the same run, on the disk
//! of the cargo target directory.
//!
//! Metrics:
//!
//! - `rocksdb_put`: puts per second of 100-byte values under 30-byte state
//!   keys (key group first), random order, one thread, through
//!   `StateBackend::put`. Baseline: `DB::put_opt` of the raw crate with the
//!   same options (block cache, bloom filter, LZ4, memtables, WAL off).
//! - `rocksdb_get`: gets per second of existing keys, random order, after
//!   the same load and a flush (reads go through SST files and the block
//!   cache), through `StateBackend::get`. Baseline: `DB::get` of the raw
//!   crate on an identical database.
//! - `rocksdb_incremental_upload_1pct`: bytes a native checkpoint uploads
//!   after 1 % of the keys changed, as a fraction of the bytes of the full
//!   checkpoint before it (lower is better), averaged over several rounds
//!   of "change 1 %, let RocksDB finish its compactions (as the interval
//!   between checkpoints would), checkpoint". `..._max_round` is the worst round: the
//!   round in which RocksDB compacted level 0 into level 1 uploads the
//!   rewritten files. `..._after_full_compaction` forces a full compaction
//!   before the checkpoint: every SST file is new, so it uploads about as
//!   much as a full checkpoint. That is the role of compaction: native
//!   checkpoints upload what RocksDB wrote since the last one, which is the
//!   flushed changes plus whatever compaction rewrote.
//! - `rocksdb_incremental_checkpoint_ms`: median time from trigger to
//!   commit of those rounds' checkpoints, against the full checkpoint
//!   before them (lower is better): files unchanged since the previous
//!   checkpoint are known by their identity and neither read nor hashed.
//! - `rocksdb_restore_throughput`: MB/s of checkpoint files restored by
//!   the recovery engine (`highwater::recovery::Recovery`) from a local checkpoint store
//!   (fetch, check the content address, write and fsync each file, open
//!   RocksDB). Baseline: copying the same files from the store's directory
//!   into a fresh directory with an fsync per file.
//!
//! - `rocksdb_cf_per_operator_put`, `rocksdb_cf_per_operator_full_scan`:
//!   the layout choice, on the raw crate: the same puts (keys of 4
//!   operators) and a full scan with one column family per operator,
//!   against one column family for everything (the backend's layout).
//!
//! Rounds alternate between highwater and the baseline so both see the same
//! load from the rest of the (shared) machine; figures are medians.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::{
    ArtifactId, CheckpointStore, KeyGroup, StateBackend, StateKey, load_manifest,
};
use highwater::rocksdb::{RocksDbBackend, RocksDbConfig, db_options};
use highwater::{CheckpointConfig, StateManager};
use rocksdb::{Cache, DB, Options, WriteOptions};
use serde_json::{Map, json};

use crate::util::{self, Rng, median};
use crate::{Ctx, Metric, Result, SuiteResult};

const VALUE_BYTES: usize = 100;

struct Plan {
    quick: bool,
    keys: usize,
    rounds: usize,
    incremental_rounds: usize,
    restore_reps: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                keys: 40_000,
                rounds: 3,
                incremental_rounds: 3,
                restore_reps: 2,
            }
        } else {
            Plan {
                quick,
                keys: 400_000,
                rounds: 5,
                incremental_rounds: 8,
                restore_reps: 5,
            }
        }
    }
}

fn data_root() -> PathBuf {
    bench_data("rocksdb")
}

/// `<target>/bench-data/<suite>`: scratch data on the disk of the cargo
/// target directory.
pub(crate) fn bench_data(suite: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("bench-data").join(suite)
}

/// A state key: key group `i % 128`, operator `window`, state `count`, an
/// 8-byte key (`i` big-endian), no namespace.
fn key(i: u64) -> Vec<u8> {
    StateKey {
        key_group: KeyGroup((i % 128) as u16),
        operator: "window",
        state: "count",
        key: &i.to_be_bytes(),
        namespace: &[],
        user_key: &[],
    }
    .encode()
    .expect("the names are short")
}

fn value(i: u64, round: u64) -> Vec<u8> {
    let mut v = vec![0u8; VALUE_BYTES];
    v[0] = 0; // plain envelope
    let mut r = Rng::new(i ^ (round << 40));
    for chunk in v[1..].chunks_mut(8) {
        let x = r.next_u64().to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    v
}

fn config(path: &Path) -> RocksDbConfig {
    RocksDbConfig::new(path)
}

/// Raw RocksDB with the options `RocksDbBackend` derives from the default
/// `RocksDbConfig` (minus highwater's TTL compaction filter, which costs
/// nothing on writes and reads).
fn raw_db(path: &Path) -> Result<(DB, WriteOptions)> {
    let opts = raw_options(path);
    let _ = std::fs::remove_dir_all(path);
    let db = DB::open(&opts, path)?;
    let mut w = WriteOptions::default();
    w.disable_wal(true);
    Ok((db, w))
}

/// The options of [`raw_db`]: the backend's own, without highwater's TTL
/// compaction filter (which costs nothing on writes and reads).
fn raw_options(path: &Path) -> Options {
    let mut c = config(path);
    c.ttl.compaction_filter = false;
    db_options(&c, &Cache::new_lru_cache(c.block_cache_capacity()))
}

/// Operators of the column-family experiment.
const OPERATORS: usize = 4;

/// The layout question of the issue, measured on the raw crate: the same
/// puts (keys of 4 operators) and a full scan, with one column family (what
/// the backend does) and with one column family per operator (what Flink
/// does). Returns (one CF puts/s, per-operator puts/s, one CF scan s,
/// per-operator scan s), medians.
fn column_families(root: &Path, plan: &Plan) -> Result<(f64, f64, f64, f64)> {
    let keys: Vec<Vec<u8>> = (0..plan.keys as u64).map(key).collect();
    let values: Vec<Vec<u8>> = (0..plan.keys as u64).map(|i| value(i, 0)).collect();
    let names: Vec<String> = (0..OPERATORS).map(|i| format!("op{i}")).collect();
    let (mut one_put, mut many_put, mut one_scan, mut many_scan) = (vec![], vec![], vec![], vec![]);
    for round in 0..plan.rounds {
        let o = order(plan.keys, 500 + round as u64);
        let (one, w) = raw_db(&root.join("one-cf"))?;
        let t = Instant::now();
        for &i in &o {
            one.put_opt(&keys[i as usize], &values[i as usize], &w)?;
        }
        one_put.push(plan.keys as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut it = one.raw_iterator();
        it.seek_to_first();
        let mut n = 0usize;
        while it.valid() {
            n += 1;
            it.next();
        }
        one_scan.push(t.elapsed().as_secs_f64());
        drop(it);
        drop(one);

        let path = root.join("cf-per-operator");
        let _ = std::fs::remove_dir_all(&path);
        let mut opts = raw_options(&path);
        opts.create_missing_column_families(true);
        let many = DB::open_cf(&opts, &path, &names)?;
        let cfs: Vec<_> = names
            .iter()
            .map(|n| many.cf_handle(n).ok_or("column family missing"))
            .collect::<std::result::Result<_, _>>()?;
        let t = Instant::now();
        for &i in &o {
            // The operator decides the column family (here: index mod 4).
            let cf = cfs[i as usize % OPERATORS];
            many.put_cf_opt(cf, &keys[i as usize], &values[i as usize], &w)?;
        }
        many_put.push(plan.keys as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut m = 0usize;
        for cf in &cfs {
            let mut it = many.raw_iterator_cf(*cf);
            it.seek_to_first();
            while it.valid() {
                m += 1;
                it.next();
            }
        }
        many_scan.push(t.elapsed().as_secs_f64());
        if n != plan.keys || m != plan.keys {
            return Err(format!("scans saw {n} and {m} of {} keys", plan.keys).into());
        }
        drop(cfs);
        drop(many);
        let _ = std::fs::remove_dir_all(root.join("one-cf"));
        let _ = std::fs::remove_dir_all(&path);
    }
    Ok((
        median(&one_put),
        median(&many_put),
        median(&one_scan),
        median(&many_scan),
    ))
}

fn order(n: usize, seed: u64) -> Vec<u64> {
    let mut o: Vec<u64> = (0..n as u64).collect();
    Rng::new(seed).shuffle(&mut o);
    o
}

/// (highwater ops/s, raw ops/s) medians for puts and gets.
fn put_get(root: &Path, plan: &Plan) -> Result<((f64, f64), (f64, f64))> {
    let keys: Vec<Vec<u8>> = (0..plan.keys as u64).map(key).collect();
    let values: Vec<Vec<u8>> = (0..plan.keys as u64).map(|i| value(i, 0)).collect();
    let (mut put_hw, mut put_raw, mut get_hw, mut get_raw) = (vec![], vec![], vec![], vec![]);
    for round in 0..plan.rounds {
        // Who goes first alternates: both see the same machine on average.
        let hw_first = round % 2 == 0;
        let o = order(plan.keys, round as u64);
        let hw = RocksDbBackend::with_config(config(&root.join("hw")))?;
        let (raw, w) = raw_db(&root.join("raw"))?;
        let put_hw_round = |out: &mut Vec<f64>| -> Result {
            let t = Instant::now();
            for &i in &o {
                hw.put(&keys[i as usize], &values[i as usize])?;
            }
            out.push(plan.keys as f64 / t.elapsed().as_secs_f64());
            Ok(())
        };
        let put_raw_round = |out: &mut Vec<f64>| -> Result {
            let t = Instant::now();
            for &i in &o {
                raw.put_opt(&keys[i as usize], &values[i as usize], &w)?;
            }
            out.push(plan.keys as f64 / t.elapsed().as_secs_f64());
            Ok(())
        };
        if hw_first {
            put_hw_round(&mut put_hw)?;
            put_raw_round(&mut put_raw)?;
        } else {
            put_raw_round(&mut put_raw)?;
            put_hw_round(&mut put_hw)?;
        }

        hw.flush()?;
        raw.flush()?;
        let o = order(plan.keys, 1000 + round as u64);
        let get_hw_round = |out: &mut Vec<f64>| -> Result<usize> {
            let t = Instant::now();
            let mut found = 0usize;
            for &i in &o {
                found += usize::from(hw.get(&keys[i as usize])?.is_some());
            }
            out.push(plan.keys as f64 / t.elapsed().as_secs_f64());
            Ok(found)
        };
        let get_raw_round = |out: &mut Vec<f64>| -> Result<usize> {
            let t = Instant::now();
            let mut found = 0usize;
            for &i in &o {
                found += usize::from(raw.get(&keys[i as usize])?.is_some());
            }
            out.push(plan.keys as f64 / t.elapsed().as_secs_f64());
            Ok(found)
        };
        let (found, found_raw) = if hw_first {
            (get_hw_round(&mut get_hw)?, get_raw_round(&mut get_raw)?)
        } else {
            let r = get_raw_round(&mut get_raw)?;
            (get_hw_round(&mut get_hw)?, r)
        };
        if found != plan.keys || found_raw != plan.keys {
            return Err(format!("gets found {found} and {found_raw} of {} keys", plan.keys).into());
        }
        drop(hw);
        drop(raw);
        let _ = std::fs::remove_dir_all(root.join("hw"));
        let _ = std::fs::remove_dir_all(root.join("raw"));
    }
    Ok((
        (median(&put_hw), median(&put_raw)),
        (median(&get_hw), median(&get_raw)),
    ))
}

struct Incremental {
    full_bytes: u64,
    /// Seconds from trigger to commit of the full checkpoint.
    full_s: f64,
    ratios: Vec<f64>,
    /// Seconds from trigger to commit of each round's checkpoint.
    round_s: Vec<f64>,
    after_compaction: f64,
    store_dir: PathBuf,
    last: highwater::CheckpointId,
}

/// Waits (up to `limit`) until RocksDB runs and owes no compaction, as
/// the interval between two checkpoints would let it: rounds run back to
/// back, and a checkpoint that starts while the compaction its previous
/// flush triggered still runs sees the old files, which makes the upload
/// figures depend on how fast each checkpoint is.
pub(crate) fn settle(backend: &RocksDbBackend, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    let mut quiet = 0;
    while quiet < 3 && std::time::Instant::now() < deadline {
        let m = backend.metrics();
        if m.running_compactions == 0 && m.pending_compaction_bytes == 0 {
            quiet += 1;
        } else {
            quiet = 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Full checkpoint, then rounds of "change 1 % of the keys, let compactions
/// finish, checkpoint".
fn incremental(root: &Path, plan: &Plan) -> Result<Incremental> {
    let store_dir = root.join("store");
    let _ = std::fs::remove_dir_all(&store_dir);
    let store: Arc<dyn CheckpointStore> = Arc::new(ObjectCheckpointStore::local(&store_dir)?);
    let backend = Arc::new(RocksDbBackend::with_config(config(&root.join("live")))?);
    let mut cfg = CheckpointConfig::default();
    cfg.max_retained = 2;
    let manager = StateManager::builder()
        .backend(backend.clone())
        .store(store)
        .config(cfg)
        .build()?;
    for i in 0..plan.keys as u64 {
        backend.put(&key(i), &value(i, 0))?;
    }
    let full = manager.checkpoint()?.wait()?;
    let full_bytes = full.bytes_written;
    let full_s = full.duration.as_secs_f64();
    let mut rng = Rng::new(7);
    let changes = plan.keys / 100;
    let (mut ratios, mut round_s) = (Vec::new(), Vec::new());
    for round in 1..=plan.incremental_rounds as u64 {
        for _ in 0..changes {
            let i = rng.below(plan.keys as u64);
            backend.put(&key(i), &value(i, round))?;
        }
        settle(&backend, std::time::Duration::from_secs(30));
        let info = manager.checkpoint()?.wait()?;
        ratios.push(info.bytes_written as f64 / full_bytes as f64);
        round_s.push(info.duration.as_secs_f64());
    }
    for _ in 0..changes {
        let i = rng.below(plan.keys as u64);
        backend.put(&key(i), &value(i, 999))?;
    }
    backend.compact()?;
    let info = manager.checkpoint()?.wait()?;
    let after_compaction = info.bytes_written as f64 / full_bytes as f64;
    Ok(Incremental {
        full_bytes,
        full_s,
        ratios,
        round_s,
        after_compaction,
        store_dir,
        last: info.id,
    })
}

pub(crate) fn copy_synced(from: &Path, to: &Path) -> Result {
    std::fs::copy(from, to)?;
    std::fs::File::open(to)?.sync_all()?;
    Ok(())
}

/// (highwater MB/s, copy MB/s, bytes) medians.
fn restore(root: &Path, plan: &Plan, inc: &Incremental) -> Result<(f64, f64, u64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let store: Arc<dyn CheckpointStore> = Arc::new(ObjectCheckpointStore::local(&inc.store_dir)?);
    let manifest = rt.block_on(load_manifest(&*store, inc.last))?;
    let ids: BTreeSet<ArtifactId> = manifest.artifacts().map(|a| a.id).collect();
    let bytes: u64 = manifest.artifacts().map(|a| a.stored_bytes).sum();
    let (mut hw, mut copy) = (vec![], vec![]);
    for rep in 0..plan.restore_reps {
        let target = Arc::new(RocksDbBackend::with_config(config(
            &root.join(format!("restore-{rep}")),
        ))?);
        let t = Instant::now();
        highwater::recovery::Recovery::new(
            store.clone(),
            highwater::RecoveryConfig::default(),
            rt.handle().clone(),
        )?
        .recover(
            highwater::RecoveryTarget::Checkpoint(inc.last),
            &highwater::RecoveryScope::all(),
            &*target,
            None,
            None,
        )?;
        hw.push(util::mib(bytes) / t.elapsed().as_secs_f64());
        drop(target);
        let _ = std::fs::remove_dir_all(root.join(format!("restore-{rep}")));

        let dst = root.join(format!("copy-{rep}"));
        std::fs::create_dir_all(&dst)?;
        let t = Instant::now();
        for id in &ids {
            let src = inc
                .store_dir
                .join(highwater::cloud::layout::ARTIFACTS_DIR)
                .join(highwater::cloud::layout::artifact_name(*id));
            copy_synced(&src, &dst.join(id.to_hex()))?;
        }
        std::fs::File::open(&dst)?.sync_all()?;
        copy.push(util::mib(bytes) / t.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&dst);
    }
    Ok((median(&hw), median(&copy), bytes))
}

/// Runs the suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let plan = Plan::new(ctx.quick);
    let root = data_root();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let mut params = Map::new();
    params.insert("quick".into(), json!(plan.quick));
    params.insert("data_dir".into(), json!(root.display().to_string()));
    params.insert("keys".into(), json!(plan.keys));
    params.insert("value_bytes".into(), json!(VALUE_BYTES));
    params.insert("rounds".into(), json!(plan.rounds));
    params.insert(
        "config".into(),
        json!("RocksDbConfig defaults: 64 MiB x3 memtables, 256 MiB block cache, 16 KiB blocks, bloom 10 bits, LZ4, RocksDB WAL off"),
    );
    if let Some(load) = util::loadavg() {
        params.insert("loadavg_1m_at_start".into(), json!(load));
    }
    let mut metrics = Vec::new();

    println!(
        "rocksdb: put/get ({} keys, {} rounds)",
        plan.keys, plan.rounds
    );
    let ((put_hw, put_raw), (get_hw, get_raw)) = put_get(&root, &plan)?;
    metrics.push(Metric::versus(
        "rocksdb_put",
        put_hw,
        "ops/s",
        "raw rocksdb crate, same options",
        put_raw,
        true,
    ));
    metrics.push(Metric::versus(
        "rocksdb_get",
        get_hw,
        "ops/s",
        "raw rocksdb crate, same options",
        get_raw,
        true,
    ));

    println!("rocksdb: column family per operator vs one");
    let (one_put, many_put, one_scan, many_scan) = column_families(&root, &plan)?;
    metrics.push(Metric::versus(
        "rocksdb_cf_per_operator_put",
        many_put,
        "ops/s",
        "one column family (the backend's layout), raw crate",
        one_put,
        true,
    ));
    metrics.push(Metric::versus(
        "rocksdb_cf_per_operator_full_scan",
        many_scan * 1e3,
        "ms",
        "one column family (the backend's layout), raw crate",
        one_scan * 1e3,
        false,
    ));

    println!(
        "rocksdb: incremental upload ({} rounds of 1 % changes)",
        plan.incremental_rounds
    );
    let inc = incremental(&root, &plan)?;
    let mean = inc.ratios.iter().sum::<f64>() / inc.ratios.len() as f64;
    let max = inc.ratios.iter().copied().fold(0.0, f64::max);
    params.insert("full_checkpoint_bytes".into(), json!(inc.full_bytes));
    params.insert(
        "incremental_ratio_per_round".into(),
        json!(
            inc.ratios
                .iter()
                .map(|r| (r * 1e4).round() / 1e4)
                .collect::<Vec<_>>()
        ),
    );
    metrics.push(Metric::versus(
        "rocksdb_incremental_upload_1pct",
        mean * inc.full_bytes as f64,
        "bytes",
        "full native checkpoint",
        inc.full_bytes as f64,
        false,
    ));
    metrics.push(Metric::plain(
        "rocksdb_incremental_upload_1pct_max_round",
        max * 100.0,
        "% of full",
        false,
    ));
    metrics.push(Metric::versus(
        "rocksdb_incremental_checkpoint_ms",
        crate::util::median(&inc.round_s) * 1e3,
        "ms",
        "the full native checkpoint before the rounds",
        inc.full_s * 1e3,
        false,
    ));
    metrics.push(Metric::plain(
        "rocksdb_incremental_upload_1pct_after_full_compaction",
        inc.after_compaction * 100.0,
        "% of full",
        false,
    ));

    println!(
        "rocksdb: restore throughput ({} repetitions)",
        plan.restore_reps
    );
    let (hw, copy, bytes) = restore(&root, &plan, &inc)?;
    params.insert("restore_bytes".into(), json!(bytes));
    metrics.push(Metric::versus(
        "rocksdb_restore_throughput",
        hw,
        "MB/s",
        "copy of the same files with fsync",
        copy,
        true,
    ));
    let _ = std::fs::remove_dir_all(&root);
    Ok(SuiteResult {
        suite: "rocksdb".into(),
        params,
        metrics,
    })
}
