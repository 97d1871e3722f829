//! Suite `large`: state larger than memory on `RocksDbBackend` (issue 17),
//! against the raw `rocksdb` crate with the same options in the same run.
//!
//! `cargo xtask bench large [--size 32G]`: the default is 32 GiB of logical
//! state in full mode and 1 GiB with `--quick` (what CI runs). Keys are
//! state keys of one operator (8-byte user keys, 128 key groups), values
//! 160-byte envelopes of small numbers that compress about 2.5×. The memory
//! budget (`RocksDbConfig::memory_budget`) is 4 GiB, or a quarter of the
//! state when that is smaller, so the state never fits in it. SST files
//! are compressed with zstd (see `config`). Before anything is written the
//! free space of the target directory's disk is checked against 1.5 times
//! the logical size plus 1 GiB, and the run refuses to start when it is
//! short: two copies of the compressed state exist at once (the live
//! database and the store, then the store and the restored database or the
//! copy), each 0.58 of the logical size once compactions settled at 1 GiB,
//! but while 32 GiB were loading the live database alone passed 0.6 of
//! the logical size (files awaiting compaction).
//!
//! Phases, highwater first (so its resident-memory peak is its own), then
//! the raw baseline:
//!
//! - `large_load_throughput`: MB/s of logical bytes written through
//!   `StateBackend::write_batch` in batches of 4096, then a flush.
//!   Baseline: the raw crate writing the same records in `WriteBatch`es of
//!   4096 (WAL off, as the backend) into a database opened with
//!   `highwater::rocksdb::db_options` of the same configuration, then a
//!   flush. Target ≥ 0.9.
//! - A full native checkpoint into a local directory store, then 10
//!   rounds of "change 1 % of the keys at random, let RocksDB finish its
//!   compactions (as a checkpoint interval would), checkpoint":
//!   `large_incremental_upload_1pct` is the median round's bytes written
//!   against the full checkpoint's (target ≤ 0.05), `..._max_round` the
//!   worst round in % of the full checkpoint (target ≤ 20 %),
//!   `large_incremental_checkpoint_ms` the median round's time from
//!   trigger to commit against the full checkpoint's (target ≤ 0.10).
//! - `large_restore_throughput`: MB/s of checkpoint files restored by
//!   `StateManager::restore` into a fresh backend from the store. Baseline:
//!   copying the same files from the store with an fsync each. Target ≥ 0.7.
//!   Both run three times, alternately, each after a `sync` so that no
//!   earlier phase's writeback is still under way and from a dropped page
//!   cache (as root), so that neither reads the store's files from memory
//!   the other left them in (at 8 GiB, where they fit, the copies after a
//!   restore ran 2.5 times as fast); the medians compare (this machine's
//!   disk varied by 2× between single runs).
//! - `large_get`: random gets of existing keys per second on the live
//!   backend after the rounds. Baseline: the raw crate on the same
//!   database (its directory opened read-only beside the live backend, with
//!   the same options), so both read the same LSM shape. The two alternate,
//!   three passes each (highwater first), and the medians compare: on this
//!   machine's disk two consecutive single passes differed by more than
//!   the effect measured. Each pass starts from a dropped page cache (when
//!   the suite runs as root; the parameter `gets_from_a_dropped_page_cache`
//!   says), first warms its block cache with a quarter as many gets of
//!   other keys, and reads keys of its own seed, the same for both sides.
//!   Target ≥ 0.9.
//! - `large_rss_max`: the process's peak resident memory (sampled every
//!   50 ms) in every phase but the alternating gets (where the raw crate's
//!   cache is held beside highwater's; highwater's first pass runs alone,
//!   as the phase `gets`), against the budget plus 1 GiB (target: ratio
//!   ≤ 1); the parameter `rss_peak_mib_by_phase` has the peak of each
//!   phase (load, checkpoints, gets, the alternating gets, restores, local
//!   recoveries, and the baseline's copies). Before the restores, what the
//!   gets freed is returned to the system (`malloc_trim`).
//!
//! - `large_local_recovery_ms`: the same restore again, into a backend
//!   reopened in the restored one's working directory, which takes the SST
//!   files it still holds (local recovery, checked by length and content
//!   address) and fetches the rest, after each of the three restores.
//!   Baseline: the restore above, from the store into an empty directory.
//!   Target ≤ 0.2.
//!
//! With `--blob-values` both sides keep values in blob files
//! (`RocksDbConfig::blob_values`, key-value separation; the TTL
//! compaction filter off), recorded as the parameter `blob_values`. Blob
//! files compress each value alone, so the disk check asks for 2.5 times
//! the logical size plus 1 GiB then (the live database and the store each
//! held 1.09 times it after the rounds at 8 GiB).
//!
//! The load average and the share of CPU other processes used are
//! recorded, as in the other suites.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::{WriteBatch, load_manifest};
use highwater::rocksdb::{BlobValues, Compression, RocksDbBackend, RocksDbConfig, db_options};
use highwater::{CheckpointConfig, CheckpointStore, StateBackend, StateManager};
use rocksdb::{Cache, DB, WriteOptions};
use serde_json::{Map, json};

use crate::rocksdb::{bench_data, copy_synced, settle};
use crate::util::{self, CpuReading, Rng, median};
use crate::{Ctx, Metric, Result, SuiteResult};

const MAX_PARALLELISM: u16 = 128;
const VALUE_BYTES: usize = 160;
const ROUNDS: usize = 10;
const BATCH: usize = 4096;
/// The RSS phase of the alternating gets (the raw crate's cache is held
/// beside highwater's), which `large_rss_max` leaves out; highwater's first
/// pass, alone, is the phase `gets`.
const BASELINE_GETS: &str = "gets alternating with the raw crate";
/// Passes of random gets per side, alternating; medians reported.
const GET_REPS: u64 = 3;
/// Restores (and copies, and local recoveries) timed; medians reported.
const RESTORE_REPS: usize = 3;

fn key(i: u64) -> Vec<u8> {
    util::session_key(i, MAX_PARALLELISM).expect("the names are short")
}

/// A plain envelope around small numbers with some noise: about 2.5× with
/// zstd, like the state suite's values; `round` changes every byte.
fn value(i: u64, round: u64) -> Vec<u8> {
    let mut r = Rng::new(i ^ (round << 40) ^ 0x5eed);
    let mut v = Vec::with_capacity(VALUE_BYTES);
    v.push(0);
    while v.len() < VALUE_BYTES {
        v.push(r.below(24) as u8);
    }
    v
}

/// The backend's defaults, with the memory budget (one memtable a fifth of
/// it at most, so that small budgets are accepted: the memtables get a
/// third of the cache's two thirds) and zstd: LZ4 finds
/// few repeats in these values and leaves them nearly as they are, zstd's
/// entropy coding stores them in about 55 % of their size (measured at
/// 1 GiB: 582 MB of SST files), which is what lets 32 GiB of state and its
/// copies fit on this machine's disk.
///
/// With `--blob-values`, values go to blob files (`BlobValues::default()`,
/// which needs the TTL compaction filter off; these values never expire).
fn config(ctx: &Ctx, path: &Path, budget: usize) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path);
    if ctx.blob_values {
        c.blob_values = Some(BlobValues::default());
        c.ttl.compaction_filter = false;
    }
    // What `large_local_recovery_ms` measures (the default, said here).
    c.local_recovery = true;
    c.memory_budget = Some(budget);
    c.write_buffer_size = c.write_buffer_size.min(budget / 5);
    c.compression = Compression::Zstd;
    c
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Bytes free on the disk holding `dir`, from `df` (Linux, coreutils).
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Writes back every dirty page (`sync(1)`) so that a timed phase's
/// fsyncs do not wait behind what earlier phases left in the page cache.
fn settle_disk() {
    if let Err(e) = std::process::Command::new("sync").status() {
        println!("large: sync failed ({e}); timings may include earlier writes");
    }
}

/// Writes back every dirty page and drops the clean ones from the page
/// cache (`/proc/sys/vm/drop_caches`, which needs root), so that one side
/// does not read files from memory the other side left them in: the
/// 32 GiB run read the raw crate's gets on a page cache highwater's gets
/// had just filled, 38 485 against 19 431 gets/s. True if the cache was
/// dropped.
fn drop_page_cache() -> bool {
    settle_disk();
    match std::fs::write("/proc/sys/vm/drop_caches", b"1") {
        Ok(()) => true,
        Err(e) => {
            println!(
                "large: the page cache was not dropped ({e}): the second side may read files the first side left in memory"
            );
            false
        }
    }
}

/// Samples the resident set size every 50 ms until stopped; keeps the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    /// The peak since the last [`RssPeak::phase`].
    phase_peak: Arc<AtomicU64>,
    phases: Vec<(&'static str, u64)>,
    thread: std::thread::JoinHandle<()>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let now = util::rss_bytes().unwrap_or(0);
        let phase_peak = Arc::new(AtomicU64::new(now));
        let (s, q) = (stop.clone(), phase_peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = util::rss_bytes() {
                    q.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssPeak {
            stop,
            phase_peak,
            phases: Vec::new(),
            thread,
        }
    }

    /// Ends phase `name`: its peak is kept (the largest, for a phase run
    /// more than once), and the next phase's starts.
    fn phase(&mut self, name: &'static str) {
        let now = util::rss_bytes().unwrap_or(0);
        let peak = self.phase_peak.swap(now, Ordering::Relaxed).max(now);
        let heap = util::malloc_heap()
            .map(|(used, free, mapped)| {
                format!(
                    "; at its end malloc holds {} MiB in use, {} MiB free in its arenas, {} MiB mapped",
                    used >> 20,
                    free >> 20,
                    mapped >> 20
                )
            })
            .unwrap_or_default();
        let split = match (
            util::status_bytes("RssAnon:"),
            util::status_bytes("RssFile:"),
        ) {
            (Some(anon), Some(file)) => format!(
                "; at its end {} MiB anonymous, {} MiB file-backed",
                anon >> 20,
                file >> 20
            ),
            _ => String::new(),
        };
        println!(
            "large: peak RSS during {name}: {} MiB{split}{heap}",
            peak >> 20
        );
        match self.phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, kept)) => *kept = (*kept).max(peak),
            None => self.phases.push((name, peak)),
        }
    }

    /// Each phase's peak.
    fn finish(self) -> Vec<(&'static str, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.phases
    }
}

/// Writes every record through `put` in batches of [`BATCH`].
fn load(entries: u64, mut put: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> Result) -> Result {
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..entries {
        batch.push((key(i), value(i, 0)));
        if batch.len() == BATCH {
            put(std::mem::take(&mut batch))?;
        }
    }
    put(batch)
}

/// Random gets of existing keys (pass `rep`'s own), after `n / 4` untimed
/// ones of other random keys that warm the block cache; gets per second.
fn gets(rep: u64, n: u64, entries: u64, mut get: impl FnMut(&[u8]) -> Result<bool>) -> Result<f64> {
    let mut pass = |seed: u64, n: u64| -> Result<f64> {
        let mut rng = Rng::new(seed);
        let t = Instant::now();
        for _ in 0..n {
            if !get(&key(rng.below(entries)))? {
                return Err("a loaded key is missing".into());
            }
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    pass(2 * rep + 12, n / 4)?;
    pass(2 * rep + 11, n)
}

/// Runs the suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let size = ctx
        .size
        .unwrap_or(if ctx.quick { 1 << 30 } else { 32 << 30 });
    let budget = usize::try_from((size / 4).clamp(64 << 20, 4 << 30))?;
    let root = bench_data("large");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    // Blob files compress each value alone: at 8 GiB the live database
    // and the store each held 1.09 times the logical size after the rounds.
    let need = if ctx.blob_values {
        size * 5 / 2 + (1 << 30)
    } else {
        size + size / 2 + (1 << 30)
    };
    let free = free_bytes(&root);
    if let Some(free) = free
        && free < need
    {
        return Err(format!(
            "{} GiB of state needs about {} GiB free on the disk of {}, which has {} GiB: free space or pass a smaller --size",
            size >> 30,
            need >> 30,
            root.display(),
            free >> 30
        )
        .into());
    }
    let entries = size / (key(0).len() + VALUE_BYTES) as u64;
    let bytes = entries * (key(0).len() + VALUE_BYTES) as u64;
    let mb = bytes as f64 / 1e6;
    let gets_n = entries.min(if ctx.quick { 100_000 } else { 1_000_000 });
    let mut params = Map::new();
    params.insert("quick".into(), json!(ctx.quick));
    params.insert("blob_values".into(), json!(ctx.blob_values));
    params.insert("state_bytes".into(), json!(bytes));
    params.insert("entries".into(), json!(entries));
    params.insert("memory_budget_bytes".into(), json!(budget));
    params.insert("rounds".into(), json!(ROUNDS));
    params.insert("data_dir".into(), json!(root.display().to_string()));
    if let Some(free) = free {
        params.insert("disk_free_bytes_at_start".into(), json!(free));
    }
    if let Some(load) = util::loadavg() {
        params.insert("loadavg_1m_at_start".into(), json!(load));
    }
    let cpu_start = CpuReading::now();
    let mut metrics = Vec::new();

    // highwater: load.
    let mut rss = RssPeak::start();
    let backend = Arc::new(RocksDbBackend::with_config(config(
        ctx,
        &root.join("live"),
        budget,
    ))?);
    println!("large: loading {} MB into RocksDbBackend", mb as u64);
    let t = Instant::now();
    load(entries, |records| {
        let mut b = WriteBatch::new();
        for (k, v) in records {
            b.put(k, v);
        }
        Ok(backend.write_batch(b)?)
    })?;
    backend.flush()?;
    let hw_load = mb / t.elapsed().as_secs_f64();
    println!("large: loaded at {hw_load:.1} MB/s");
    settle(&backend, Duration::from_secs(1800));
    rss.phase("load");
    params.insert(
        "live_db_bytes_after_load".into(),
        json!(dir_bytes(&root.join("live"))),
    );

    // Full checkpoint, then rounds of 1 % changes.
    let store_dir = root.join("store");
    let store: Arc<dyn CheckpointStore> = Arc::new(ObjectCheckpointStore::local(&store_dir)?);
    let mut cfg = CheckpointConfig::default();
    cfg.max_parallelism = MAX_PARALLELISM;
    cfg.max_retained = 2;
    let manager = StateManager::builder()
        .backend(backend.clone())
        .store(store.clone())
        .config(cfg.clone())
        .build()?;
    println!("large: full checkpoint");
    let full = manager.checkpoint()?.wait()?;
    let (full_bytes, full_ms) = (full.bytes_written, full.duration.as_secs_f64() * 1e3);
    println!("large: full checkpoint of {full_bytes} bytes in {full_ms:.0} ms");
    let changes = (entries / 100).max(1);
    let mut rng = Rng::new(7);
    let (mut ratios, mut round_ms, mut known) = (Vec::new(), Vec::new(), Vec::new());
    // Where each round's new SST bytes sit in the LSM: flushes land in
    // level 0, compactions write the levels below.
    let mut seen: std::collections::HashSet<String> = backend
        .live_sst_files()?
        .into_iter()
        .map(|f| f.name)
        .collect();
    let mut new_by_level = Vec::new();
    let mut last = full.id;
    for round in 1..=ROUNDS as u64 {
        let mut b = WriteBatch::new();
        for _ in 0..changes {
            let i = rng.below(entries);
            b.put(key(i), value(i, round));
            if b.len() == BATCH {
                backend.write_batch(std::mem::take(&mut b))?;
            }
        }
        backend.write_batch(b)?;
        settle(&backend, Duration::from_secs(600));
        let info = manager.checkpoint()?.wait()?;
        ratios.push(info.bytes_written as f64 / full_bytes.max(1) as f64);
        round_ms.push(info.duration.as_secs_f64() * 1e3);
        known.push(info.native_files_known);
        let live = backend.live_sst_files()?;
        let mut by_level = std::collections::BTreeMap::<u32, u64>::new();
        for f in live.iter().filter(|f| !seen.contains(&f.name)) {
            *by_level.entry(f.level).or_default() += f.size;
        }
        seen = live.into_iter().map(|f| f.name).collect();
        new_by_level.push(
            by_level
                .iter()
                .map(|(level, bytes)| (format!("L{level}"), json!(bytes >> 20)))
                .collect::<serde_json::Map<_, _>>(),
        );
        last = info.id;
        println!(
            "large: round {round}: uploaded {:.2} % of the full checkpoint in {:.0} ms",
            ratios.last().copied().unwrap_or(0.0) * 100.0,
            round_ms.last().copied().unwrap_or(0.0)
        );
    }
    params.insert("full_checkpoint_bytes".into(), json!(full_bytes));
    params.insert("new_sst_mib_by_level_per_round".into(), json!(new_by_level));
    params.insert(
        "store_bytes_after_rounds".into(),
        json!(dir_bytes(&store_dir)),
    );
    params.insert(
        "live_db_bytes_after_rounds".into(),
        json!(dir_bytes(&root.join("live"))),
    );
    params.insert(
        "disk_free_bytes_after_rounds".into(),
        json!(free_bytes(&root)),
    );
    params.insert(
        "upload_ratio_per_round".into(),
        json!(
            ratios
                .iter()
                .map(|r| (r * 1e4).round() / 1e4)
                .collect::<Vec<_>>()
        ),
    );
    params.insert("checkpoint_ms_per_round".into(), json!(round_ms));
    params.insert("native_files_known_per_round".into(), json!(known));
    rss.phase("checkpoints");
    let cold = drop_page_cache();
    params.insert("gets_from_a_dropped_page_cache".into(), json!(cold));
    let hw_pass = |rep: u64| gets(rep, gets_n, entries, |k| Ok(backend.get(k)?.is_some()));
    let mut hw_gets = vec![hw_pass(0)?];
    rss.phase("gets");
    println!("large: {:.0} gets/s", hw_gets[0]);
    let db_metrics = backend.metrics();
    params.insert(
        "memory_bytes_after_gets".into(),
        json!(db_metrics.memory_bytes),
    );
    // The baseline's gets on the same database: its directory opened
    // read-only by the raw crate with the same options, beside the backend
    // (which writes nothing now: the last round's compactions settled).
    let db_dir = backend.db_dir();
    let mut raw_gets = Vec::new();
    {
        let mut c = config(ctx, &db_dir, budget);
        c.ttl.compaction_filter = false;
        let cache = Cache::new_lru_cache(c.block_cache_capacity());
        let db = DB::open_for_read_only(&db_options(&c, &cache), &db_dir, false)?;
        for rep in 0..GET_REPS {
            if rep > 0 {
                if cold {
                    drop_page_cache();
                }
                hw_gets.push(hw_pass(rep)?);
            }
            if cold {
                drop_page_cache();
            }
            raw_gets.push(gets(rep, gets_n, entries, |k| Ok(db.get(k)?.is_some()))?);
            println!(
                "large: gets pass {rep}: {:.0} gets/s, raw crate on the same database {:.0} gets/s",
                hw_gets[rep as usize], raw_gets[rep as usize]
            );
        }
    }
    params.insert("gets_per_s_per_pass".into(), json!(hw_gets));
    params.insert("raw_gets_per_s_per_pass".into(), json!(raw_gets));
    let (hw_get, raw_get) = (median(&hw_gets), median(&raw_gets));
    manager.close()?;
    drop(manager);
    drop(backend);
    // What the raw crate's cache freed stays in malloc's arenas otherwise,
    // and would count in the restores' peak.
    util::malloc_trim();
    rss.phase(BASELINE_GETS);
    std::fs::remove_dir_all(root.join("live"))?;

    // Restore into a fresh backend, against copying the files.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let manifest = rt.block_on(load_manifest(&*store, last))?;
    let files: u64 = manifest.artifacts().map(|a| a.stored_bytes).sum();
    params.insert("restore_bytes".into(), json!(files));
    let restored_dir = root.join("restored");
    let copy_dir = root.join("copy");
    // This machine's disk varies by 2× from one minute to the next:
    // restores and copies alternate, and the medians are compared.
    let (mut restore_s, mut copy_s, mut local_s) = (Vec::new(), Vec::new(), Vec::new());
    let restore = |label: &str| -> Result<(f64, highwater::RecoveryStats)> {
        let backend = Arc::new(RocksDbBackend::with_config(config(
            ctx,
            &restored_dir,
            budget,
        ))?);
        let m = StateManager::builder()
            .backend(backend.clone())
            .store(store.clone())
            .config(cfg.clone())
            .build()?;
        println!("large: {label}");
        drop_page_cache();
        let t = Instant::now();
        let stats = m.restore(last)?.stats;
        let s = t.elapsed().as_secs_f64();
        m.close()?;
        Ok((s, stats))
    };
    for rep in 0..RESTORE_REPS {
        let _ = std::fs::remove_dir_all(&restored_dir);
        restore_s.push(restore(&format!("restore {rep}"))?.0);
        rss.phase("restores");
        // Local recovery: a restart in the same working directory
        // restores the same checkpoint, taking the SST files it holds.
        let (s, local) = restore(&format!("local recovery {rep}"))?;
        local_s.push(s);
        rss.phase("local recoveries");
        params.insert(
            "local_recovery_bytes_local".into(),
            json!(local.bytes_local),
        );
        params.insert(
            "local_recovery_bytes_fetched".into(),
            json!(local.bytes_fetched),
        );
        std::fs::remove_dir_all(&restored_dir)?;
        std::fs::create_dir_all(&copy_dir)?;
        drop_page_cache();
        let t = Instant::now();
        for a in manifest.artifacts() {
            let src = store_dir
                .join(highwater::cloud::layout::ARTIFACTS_DIR)
                .join(highwater::cloud::layout::artifact_name(a.id));
            copy_synced(&src, &copy_dir.join(a.id.to_hex()))?;
        }
        std::fs::File::open(&copy_dir)?.sync_all()?;
        copy_s.push(t.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&copy_dir)?;
        rss.phase("copies");
    }
    let rss_phases = rss.finish();
    // The backend's peak: every phase but the baseline's gets.
    let rss_max = rss_phases
        .iter()
        .filter(|(name, _)| *name != BASELINE_GETS)
        .map(|(_, peak)| *peak)
        .max()
        .unwrap_or(0);
    params.insert(
        "rss_peak_mib_by_phase".into(),
        json!(
            rss_phases
                .iter()
                .map(|(name, bytes)| (name.to_string(), json!(bytes >> 20)))
                .collect::<serde_json::Map<_, _>>()
        ),
    );
    params.insert("restore_s_per_rep".into(), json!(restore_s));
    params.insert("copy_s_per_rep".into(), json!(copy_s));
    params.insert("local_recovery_s_per_rep".into(), json!(local_s));
    let (restore_s, copy_s, local_s) = (median(&restore_s), median(&copy_s), median(&local_s));
    let hw_restore = files as f64 / 1e6 / restore_s;
    let copy = files as f64 / 1e6 / copy_s;
    println!(
        "large: restore {hw_restore:.0} MB/s, copy {copy:.0} MB/s, local recovery {:.0} ms against {:.0} ms, peak RSS {} MiB",
        local_s * 1e3,
        restore_s * 1e3,
        rss_max >> 20
    );
    std::fs::remove_dir_all(&store_dir)?;

    // The raw crate, same options.
    let raw_dir = root.join("raw");
    let mut c = config(ctx, &raw_dir, budget);
    c.ttl.compaction_filter = false;
    let cache = Cache::new_lru_cache(c.block_cache_capacity());
    let db = DB::open(&db_options(&c, &cache), &raw_dir)?;
    let mut wo = WriteOptions::default();
    wo.disable_wal(true);
    println!("large: loading {} MB into raw RocksDB", mb as u64);
    let t = Instant::now();
    load(entries, |records| {
        let mut b = rocksdb::WriteBatch::default();
        for (k, v) in records {
            b.put(k, v);
        }
        Ok(db.write_opt(b, &wo)?)
    })?;
    db.flush()?;
    let raw_load = mb / t.elapsed().as_secs_f64();
    drop(db);
    let _ = std::fs::remove_dir_all(&root);

    metrics.push(Metric::versus(
        "large_load_throughput",
        hw_load,
        "MB/s",
        "raw rocksdb crate, same options, WriteBatches of 4096, then a flush",
        raw_load,
        true,
    ));
    metrics.push(Metric::versus(
        "large_incremental_upload_1pct",
        median(&ratios) * full_bytes as f64,
        "bytes",
        "full native checkpoint",
        full_bytes as f64,
        false,
    ));
    metrics.push(Metric::plain(
        "large_incremental_upload_1pct_max_round",
        ratios.iter().copied().fold(0.0, f64::max) * 100.0,
        "% of full",
        false,
    ));
    metrics.push(Metric::versus(
        "large_incremental_checkpoint_ms",
        median(&round_ms),
        "ms",
        "full native checkpoint",
        full_ms,
        false,
    ));
    metrics.push(Metric::versus(
        "large_restore_throughput",
        hw_restore,
        "MB/s",
        "copy of the same files from the store with fsync",
        copy,
        true,
    ));
    metrics.push(Metric::versus(
        "large_local_recovery_ms",
        local_s * 1e3,
        "ms",
        "restore from the store with an empty local directory",
        restore_s * 1e3,
        false,
    ));
    metrics.push(Metric::versus(
        "large_get",
        hw_get,
        "gets/s",
        "raw rocksdb crate on the same database, same options",
        raw_get,
        true,
    ));
    metrics.push(Metric::versus(
        "large_rss_max",
        rss_max as f64 / f64::from(1u32 << 20),
        "MiB",
        "memory budget + 1 GiB",
        (budget as f64 + f64::from(1u32 << 30)) / f64::from(1u32 << 20),
        false,
    ));
    Ok(util::finish("large", params, metrics, cpu_start))
}
