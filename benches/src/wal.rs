//! Suite `wal`: the write-ahead log (`highwater-wal`) against baselines
//! measured in the same run, in the same directory, on the disk of the
//! cargo target directory (not a tmpfs).
//!
//! Metrics:
//!
//! - `durable_append_1w_100b`, `durable_append_8w_100b`,
//!   `durable_append_64w_1k`: records per second with every append durable
//!   before it returns (`SyncPolicy::Always`, default configuration), from
//!   1, 8 and 64 threads appending 100-byte and 1 KiB records (16-byte key
//!   plus value). Baseline: `okaywal` doing the same work — one entry with
//!   one chunk of the same bytes per append, committed (fsync'd) before the
//!   next — from the same number of threads.
//! - `fsync_latency_1w`: microseconds per acknowledged append with one
//!   writer (the mean of the 1-writer rounds above). Baseline: a raw loop of
//!   `pwrite` of the same 100 bytes and `fdatasync` into a pre-zeroed file —
//!   the physical limit of a durable append on this disk.
//!   `fsync_latency_1w_p99` is the 99th percentile of the same appends.
//! - `buffered_append_1k`: MB/s of record bytes (key plus value) appended
//!   with `SyncPolicy::Never` by one thread through `Wal::submit`, ending
//!   with `Wal::flush` (everything written to the operating system).
//!   Baseline: the same record bytes written sequentially to one file
//!   through a 1 MiB `BufWriter`, then flushed.
//!
//! The durable figures are medians of short alternating rounds — highwater,
//! okaywal and (for one writer) the raw loop take turns on logs kept open —
//! so all of them see the same disk and the same load from anything else on
//! the machine, which on a shared machine changes by the second. The
//! buffered figure is the median of repetitions, highwater and the raw
//! write alternating. Every log starts in a fresh directory, removed
//! afterwards. `*_appends_per_fsync` (params) says how well group commit
//! grouped.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use highwater_wal::{SyncPolicy, Wal, WalBatch, WalConfig};
use okaywal::{LogVoid, WriteAheadLog};
use serde_json::{Map, json};

use crate::util::{self, median, percentile};
use crate::{Ctx, Metric, Result, SuiteResult};

/// Bytes of the key of every record.
const KEY_BYTES: usize = 16;

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    /// Alternating rounds of each durable configuration.
    rounds: usize,
    /// Appends per round of the 1-writer configuration.
    per_round_1w: usize,
    /// Appends per thread and round of the 8-writer configuration.
    per_round_8w: usize,
    /// Appends per thread and round of the 64-writer configuration.
    per_round_64w: usize,
    /// Bytes of records of each buffered repetition.
    buffered_bytes: usize,
    /// Buffered repetitions (each into a fresh log and file).
    buffered_reps: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 5,
                per_round_1w: 200,
                per_round_8w: 100,
                per_round_64w: 25,
                buffered_bytes: 256 << 20,
                buffered_reps: 3,
            }
        } else {
            Plan {
                quick,
                rounds: 21,
                per_round_1w: 500,
                per_round_8w: 300,
                per_round_64w: 80,
                buffered_bytes: 1 << 30,
                buffered_reps: 5,
            }
        }
    }
}

/// The record `i` of `size` bytes: a 16-byte key and a value.
fn record(size: usize, i: u64) -> (Vec<u8>, Vec<u8>) {
    let key = format!("key-{:012}", i % 1_000_000_000_000).into_bytes();
    debug_assert_eq!(key.len(), KEY_BYTES);
    let value = (0..size - KEY_BYTES)
        .map(|j| (i as usize).wrapping_mul(31).wrapping_add(j) as u8)
        .collect();
    (key, value)
}

/// Where the suite's scratch directories go: under the cargo target
/// directory (`CARGO_TARGET_DIR`, else the directory two levels above this
/// binary, else `./target`), so the disk measured is the build disk.
fn data_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("bench-data").join("wal")
}

/// A fresh, empty directory under `root`.
fn fresh(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `work(t)` on `threads` threads started together; returns the wall
/// time from the start signal to the last thread's end, and what thread 0
/// returned.
fn on_threads<T: Send>(
    threads: usize,
    work: impl Fn(usize) -> std::result::Result<T, String> + Sync,
) -> Result<(Duration, T)> {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| -> Result<(Duration, T)> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, work) = (&barrier, &work);
                s.spawn(move || {
                    barrier.wait();
                    work(t)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut first = None;
        for h in handles {
            let r = h.join().map_err(|_| "bench thread panicked")??;
            first.get_or_insert(r);
        }
        Ok((start.elapsed(), first.ok_or("no threads")?))
    })
}

/// Records of one round of one thread: `(key, value)` for highwater, the
/// same bytes concatenated for okaywal.
fn round_records(
    size: usize,
    round: usize,
    t: usize,
    per_thread: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..per_thread)
        .map(|i| record(size, ((round * 1000 + t) * per_thread + i) as u64))
        .collect()
}

/// Durable appends through an open highwater log: records/s and, per
/// append, thread 0's latencies in nanoseconds.
fn highwater_round(
    wal: &Wal,
    threads: usize,
    per_thread: usize,
    size: usize,
    round: usize,
) -> Result<(f64, Vec<u64>)> {
    let records: Vec<_> = (0..threads)
        .map(|t| round_records(size, round, t, per_thread))
        .collect();
    let (elapsed, lat) = on_threads(threads, |t| {
        let mut lat = Vec::with_capacity(per_thread);
        // One batch per thread, cleared and reused, as the API documents.
        let mut b = WalBatch::with_capacity(size + 16);
        for (key, value) in &records[t] {
            let t0 = Instant::now();
            b.clear();
            b.put(key, value, None);
            wal.append_batch(&b).map_err(|e| e.to_string())?;
            lat.push(t0.elapsed().as_nanos() as u64);
        }
        Ok(lat)
    })?;
    Ok(((threads * per_thread) as f64 / elapsed.as_secs_f64(), lat))
}

/// The same work through an open okaywal log: records/s.
fn okaywal_round(
    log: &WriteAheadLog,
    threads: usize,
    per_thread: usize,
    size: usize,
    round: usize,
) -> Result<f64> {
    let chunks: Vec<Vec<Vec<u8>>> = (0..threads)
        .map(|t| {
            round_records(size, round, t, per_thread)
                .into_iter()
                .map(|(mut k, v)| {
                    k.extend_from_slice(&v);
                    k
                })
                .collect()
        })
        .collect();
    let (elapsed, ()) = on_threads(threads, |t| {
        for chunk in &chunks[t] {
            let mut entry = log.begin_entry().map_err(|e| e.to_string())?;
            entry.write_chunk(chunk).map_err(|e| e.to_string())?;
            entry.commit().map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    Ok((threads * per_thread) as f64 / elapsed.as_secs_f64())
}

/// The raw loop's file: pre-zeroed and synced, as a log's preallocated
/// segment is.
fn raw_file(root: &Path, bytes: usize) -> Result<(PathBuf, File)> {
    let dir = fresh(root, "raw")?;
    let path = dir.join("raw.log");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < bytes {
        file.write_all_at(&zeros, at as u64)?;
        at += zeros.len();
    }
    file.sync_data()?;
    Ok((dir, file))
}

/// The physical limit: `pwrite` of `size` bytes and `fdatasync`, `n` times,
/// at consecutive offsets from `at` of a pre-zeroed file. Mean ns per
/// append.
fn raw_round(file: &File, at: usize, n: usize, size: usize) -> Result<f64> {
    let (key, value) = record(size, 1);
    let mut buf = key;
    buf.extend_from_slice(&value);
    let start = Instant::now();
    for i in 0..n {
        file.write_all_at(&buf, (at + i * size) as u64)?;
        file.sync_data()?;
    }
    Ok(start.elapsed().as_nanos() as f64 / n as f64)
}

/// What one durable configuration measured, medians over its rounds.
struct Durable {
    highwater: f64,
    okaywal: f64,
    /// Mean and p99 latency of thread 0 (µs) and the raw loop's mean (µs),
    /// for the 1-writer configuration.
    latency: Option<(f64, f64, f64)>,
    appends_per_fsync: f64,
}

/// Alternates short rounds of highwater, okaywal and (for one writer) the
/// raw loop on logs kept open, so all of them see the same disk and machine
/// load: on a shared machine that load changes by the second.
fn durable(
    root: &Path,
    plan: &Plan,
    threads: usize,
    per_thread: usize,
    size: usize,
) -> Result<Durable> {
    let hw_dir = fresh(root, "highwater")?;
    let ok_dir = fresh(root, "okaywal")?;
    let (wal, _) = Wal::open(&hw_dir, WalConfig::default())?;
    let log = WriteAheadLog::recover(&ok_dir, LogVoid)?;
    let raw = if threads == 1 {
        Some(raw_file(root, plan.rounds * per_thread * size + (1 << 20))?)
    } else {
        None
    };
    let (mut hw, mut ok, mut raw_lat, mut lat_mean, mut lat_p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // One unmeasured warm-up round each.
    highwater_round(&wal, threads, per_thread.min(50), size, 999)?;
    okaywal_round(&log, threads, per_thread.min(50), size, 999)?;
    for round in 0..plan.rounds {
        let (rate, mut lat) = highwater_round(&wal, threads, per_thread, size, round)?;
        hw.push(rate);
        ok.push(okaywal_round(&log, threads, per_thread, size, round)?);
        if let Some((_, file)) = &raw {
            raw_lat.push(raw_round(file, round * per_thread * size, per_thread, size)? / 1e3);
            lat_mean.push(lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1e3);
            lat.sort_unstable();
            lat_p99.push(percentile(&lat, 99.0) as f64 / 1e3);
        }
    }
    let stats = wal.stats();
    wal.close()?;
    drop(wal);
    log.shutdown()?;
    std::fs::remove_dir_all(&hw_dir)?;
    std::fs::remove_dir_all(&ok_dir)?;
    if let Some((dir, file)) = raw {
        drop(file);
        std::fs::remove_dir_all(dir)?;
    }
    Ok(Durable {
        highwater: median(&hw),
        okaywal: median(&ok),
        latency: (!lat_mean.is_empty())
            .then(|| (median(&lat_mean), median(&lat_p99), median(&raw_lat))),
        appends_per_fsync: stats.frames as f64 / stats.syncs.max(1) as f64,
    })
}

/// The same loop appending to a file that grows (no preallocation), for
/// context: each `fdatasync` then also commits the new file size.
fn raw_fdatasync_growing(root: &Path, n: usize, size: usize) -> Result<f64> {
    let dir = fresh(root, "raw-grow")?;
    let mut file = File::create(dir.join("raw.log"))?;
    let (key, value) = record(size, 1);
    let mut buf = key;
    buf.extend_from_slice(&value);
    let start = Instant::now();
    for _ in 0..n {
        file.write_all(&buf)?;
        file.sync_data()?;
    }
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_dir_all(&dir)?;
    Ok(elapsed.as_nanos() as f64 / n as f64)
}

/// Buffered appends through highwater (`Never`, pipelined with `submit`):
/// MB/s of record bytes.
fn highwater_buffered(root: &Path, records: &[(Vec<u8>, Vec<u8>)], size: usize) -> Result<f64> {
    let dir = fresh(root, "highwater-buffered")?;
    let config = WalConfig::default().sync_policy(SyncPolicy::Never);
    let (wal, _) = Wal::open(&dir, config)?;
    let n = records.len();
    let start = Instant::now();
    // One batch, cleared and reused, as the API documents.
    let mut b = WalBatch::with_capacity(size + 16);
    for (key, value) in records {
        b.clear();
        b.put(key, value, None);
        // Fire and forget: `flush` below waits for all of them, and
        // reports any failure.
        drop(wal.submit(&b)?);
    }
    wal.flush()?;
    let elapsed = start.elapsed();
    wal.close()?;
    drop(wal);
    std::fs::remove_dir_all(&dir)?;
    Ok((n * size) as f64 / elapsed.as_secs_f64() / 1e6)
}

/// The same record bytes written sequentially through a 1 MiB buffer.
fn raw_buffered(root: &Path, records: &[(Vec<u8>, Vec<u8>)], size: usize) -> Result<f64> {
    let dir = fresh(root, "raw-buffered")?;
    let n = records.len();
    let start = Instant::now();
    let mut w = BufWriter::with_capacity(1 << 20, File::create(dir.join("raw.log"))?);
    for (key, value) in records {
        w.write_all(key)?;
        w.write_all(value)?;
    }
    w.flush()?;
    let elapsed = start.elapsed();
    drop(w);
    std::fs::remove_dir_all(&dir)?;
    Ok((n * size) as f64 / elapsed.as_secs_f64() / 1e6)
}

/// Runs the suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let plan = Plan::new(ctx.quick);
    let root = data_root();
    std::fs::create_dir_all(&root)?;
    let mut params = Map::new();
    params.insert("quick".into(), json!(plan.quick));
    params.insert("data_dir".into(), json!(root.display().to_string()));
    params.insert(
        "cores".into(),
        json!(std::thread::available_parallelism().map_or(1, |n| n.get())),
    );
    params.insert("durable_rounds".into(), json!(plan.rounds));
    params.insert("appends_per_round_1w".into(), json!(plan.per_round_1w));
    params.insert(
        "appends_per_thread_round_8w".into(),
        json!(plan.per_round_8w),
    );
    params.insert(
        "appends_per_thread_round_64w".into(),
        json!(plan.per_round_64w),
    );
    params.insert("buffered_bytes".into(), json!(plan.buffered_bytes));
    params.insert("buffered_repetitions".into(), json!(plan.buffered_reps));
    params.insert("key_bytes".into(), json!(KEY_BYTES));
    params.insert("okaywal".into(), json!("0.3, default configuration"));
    if let Some(load) = util::loadavg() {
        // The machine may be shared: say how busy it was.
        params.insert("loadavg_1m_at_start".into(), json!(load));
    }

    let mut metrics = Vec::new();
    let configs = [
        ("durable_append_1w_100b", 1, plan.per_round_1w, 100),
        ("durable_append_8w_100b", 8, plan.per_round_8w, 100),
        ("durable_append_64w_1k", 64, plan.per_round_64w, 1024),
    ];
    let mut latency = None;
    for (name, threads, per_thread, size) in configs {
        println!("wal: {name} ({} rounds)", plan.rounds);
        let d = durable(&root, &plan, threads, per_thread, size)?;
        // How well group commit grouped: appends per fdatasync.
        params.insert(
            format!("{name}_appends_per_fsync"),
            json!((d.appends_per_fsync * 100.0).round() / 100.0),
        );
        metrics.push(Metric::versus(
            name,
            d.highwater,
            "records/s",
            "okaywal, same threads and records",
            d.okaywal,
            true,
        ));
        latency = latency.or(d.latency);
    }
    let (mean, p99, raw) = latency.ok_or("no 1-writer latency measured")?;
    metrics.push(Metric::versus(
        "fsync_latency_1w",
        mean,
        "µs",
        "raw pwrite+fdatasync loop, pre-zeroed file",
        raw,
        false,
    ));
    metrics.push(Metric::plain("fsync_latency_1w_p99", p99, "µs", false));
    metrics.push(Metric::plain(
        "raw_fdatasync_growing_file",
        raw_fdatasync_growing(&root, plan.per_round_1w, 100)? / 1e3,
        "µs",
        false,
    ));

    println!(
        "wal: buffered_append_1k ({} repetitions)",
        plan.buffered_reps
    );
    let buffered_records: Vec<_> = (0..(plan.buffered_bytes / 1024) as u64)
        .map(|i| record(1024, i))
        .collect();
    let (mut buf_hw, mut buf_raw) = (Vec::new(), Vec::new());
    for _ in 0..plan.buffered_reps {
        buf_hw.push(highwater_buffered(&root, &buffered_records, 1024)?);
        buf_raw.push(raw_buffered(&root, &buffered_records, 1024)?);
    }
    metrics.push(Metric::versus(
        "buffered_append_1k",
        median(&buf_hw),
        "MB/s",
        "raw sequential write, 1 MiB buffer",
        median(&buf_raw),
        true,
    ));
    let _ = std::fs::remove_dir_all(&root);
    Ok(SuiteResult {
        suite: "wal".into(),
        params,
        metrics,
    })
}
