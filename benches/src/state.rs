//! Suite `state`: the in-memory backend and checkpoints of in-memory state.
//!
//! Metrics (each baseline is measured in the same run, on the same data):
//!
//! - `memory_put`, `memory_get` (1 thread) and `memory_put_2t`,
//!   `memory_get_2t` (2 threads, each on its own half of the keys): raw
//!   [`StateBackend::put`]/[`StateBackend::get`] on a [`MemoryBackend`]
//!   against a plain `RwLock<HashMap<Vec<u8>, Vec<u8>>>` (std hasher, one
//!   lock). Keys are encoded [`StateKey`]s (~38 bytes), values 100 bytes;
//!   every operation overwrites or reads an existing key, in a shuffled
//!   order. Median of several rounds, ops/s.
//! - `snapshot_pause_p99_ms`: a writer thread puts continuously to random
//!   existing keys of a backend holding `state_bytes` of keys and values,
//!   timing every put, while the main thread takes full snapshots and holds
//!   each for a while. The p99 of the puts that overlapped a snapshot
//!   window is the pause a processing thread sees; `_p999_ms` and `_max_ms`
//!   show the tail (the puts that pay for a copy — of an index page and
//!   of the segment they append to — are well under 1% of all). `snapshot_call_max_ms` is the longest `snapshot()` call itself
//!   (every shard is locked meanwhile), `snapshot_call_after_bulk_load_ms`
//!   the first one after the state was loaded (every key changed),
//!   `snapshot_call_after_idle_ms` one after the state sat untouched for a
//!   checkpoint interval (15 s; 2 s in quick mode: whatever the call
//!   touches is then cold, and on a virtual machine the first touch of a
//!   page not touched for a while can cost microseconds), and
//!   `writer_put_p99_outside_snapshots_ms` the writer's p99 without one.
//!   `checkpoint_writer_pause_p99_ms`/`_max_ms` are the same for the puts
//!   made while a real full checkpoint runs (and 500 ms after its commit):
//!   the writer then copies the index page and segment it touches, and the
//!   checkpoint frees the old copies when it drops its snapshot.
//! - `checkpoint_full_throughput`: logical record bytes of a full checkpoint
//!   of that state per second from `checkpoint()` to committed manifest,
//!   into an in-memory store (so encoding and compression are measured, not
//!   a disk), against single-threaded zstd level 1 over the very same record
//!   bytes in 4 MiB chunks, times the number of cores. `_local` is the same
//!   into a local directory store (fsync'd), for information. `_fast` is
//!   the same checkpoint with the artifacts' zstd level set to
//!   [`ZSTD_FAST_LEVEL`] (`MergerConfig::compression`), against that level
//!   over the same records, times the cores. `_encrypted` is the same
//!   checkpoint with at-rest encryption on (`StateManagerBuilder::encryption`,
//!   XChaCha20-Poly1305), against plain full checkpoints taken alternately
//!   with the encrypted ones (medians of each).
//! - `flink_*`: the workload issue 14 compared with Apache Flink, see
//!   [`crate::state_flink`].
//! - `logged_put` and `checkpoint_latency_small`: the write-ahead log's
//!   cost on the put path and the latency of a small checkpoint, see
//!   [`crate::state_pipeline`].
//! - `memory_bytes_per_state_byte`: resident memory a fresh process grows
//!   by when it loads `state_bytes` of the state below into a
//!   [`MemoryBackend`] (and takes the first snapshot, which ends the load's
//!   change-tracking epoch), per byte of keys and values, against a
//!   `HashMap<Vec<u8>, Vec<u8>>` holding the same entries. Each side runs
//!   in its own child process (this binary with `--memory-probe`), so
//!   neither reuses memory the other freed.
//! - `checkpoint_incremental_1pct` and `checkpoint_incremental_bytes_1pct`:
//!   after a full checkpoint, 1% of the keys (random) are rewritten and the
//!   next (incremental) checkpoint is timed and sized against the full one.
//!
//! The state is two operators of a typical pipeline: keyed running
//! aggregates (~26-byte values) and window buffers (lists of 4–14 sensor
//! readings, ~100–400 bytes, compressible about 2.5×).
//!
//! The machine may be shared (CI runners, other jobs): the parameters
//! record the load average at the start and, per phase, the share of the
//! machine's CPU time that other processes used
//! (`other_processes_cpu_pct_*`) and the CPU time a hypervisor took from
//! the machine (`hypervisor_steal_ms_*`: a virtual machine's CPUs all stop
//! then, the measuring threads included, so one stall of tens of
//! milliseconds lands in a pause maximum), so a disturbed run can be
//! recognised.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, PoisonError, RwLock};
use std::time::{Duration, Instant};

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::codec::ARTIFACT_HEADER_LEN;
use highwater::core::key::{key_group_of, split_operator};
use highwater::core::{
    ArtifactKind, CheckpointStore, EncodeOptions, KeyGroup, RecordWriter, SnapshotKind, StateKey,
    key_group_for,
};
use highwater::memory::MemoryBackend;
use highwater::{CheckpointInfo, CheckpointKind, StateBackend, StateManager};
use highwater_testkit::model::visit_snapshot;
use serde_json::{Map, Value, json};

use crate::util::{self, Rng, median, median_duration, ms, percentile, push_str, push_varint};
use crate::{Ctx, Metric, Result, SuiteResult};

/// Key groups of the benchmark job (the library default).
const MAX_PARALLELISM: u16 = highwater::core::DEFAULT_MAX_PARALLELISM;

/// Chunk size of the zstd baseline.
const BASELINE_CHUNK: usize = 4 << 20;

/// zstd level of the baseline (and of highwater's default encoding).
const ZSTD_LEVEL: i32 = 1;

/// The fast zstd level of `checkpoint_full_throughput_fast` (one of zstd's
/// negative levels, set through `MergerConfig::compression`).
const ZSTD_FAST_LEVEL: i32 = -5;

/// Value size of the put/get benchmark.
const OPS_VALUE_BYTES: usize = 100;

/// Distinct values the put benchmark cycles through (a power of two).
const OPS_VALUE_POOL: usize = 1024;

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    cores: usize,
    /// Keys of the put/get benchmark.
    ops_keys: usize,
    /// Timed rounds of each put/get variant (after one warm-up round).
    ops_rounds: usize,
    /// Bytes of keys and values of the snapshot and checkpoint state.
    state_bytes: u64,
    /// Snapshots taken while the writer runs.
    snapshots: usize,
    /// How long each snapshot is held.
    hold: Duration,
    /// Pause between snapshots.
    gap: Duration,
    /// How long the state sits untouched before `snapshot_call_after_idle_ms`.
    idle: Duration,
    /// Full checkpoints timed (each into a fresh store).
    full_reps: usize,
    /// Incremental checkpoints timed (each after a fresh 1% change).
    incremental_reps: usize,
    /// Passes of the zstd baseline.
    baseline_reps: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if quick {
            Plan {
                quick,
                cores,
                ops_keys: 200_000,
                ops_rounds: 5,
                state_bytes: 64 << 20,
                snapshots: 10,
                hold: Duration::from_millis(100),
                gap: Duration::from_millis(50),
                idle: Duration::from_secs(2),
                full_reps: 3,
                incremental_reps: 3,
                baseline_reps: 3,
            }
        } else {
            Plan {
                quick,
                cores,
                ops_keys: 1_000_000,
                ops_rounds: 5,
                state_bytes: 1 << 30,
                snapshots: 10,
                hold: Duration::from_millis(200),
                gap: Duration::from_millis(200),
                idle: Duration::from_secs(15),
                full_reps: 3,
                incremental_reps: 3,
                baseline_reps: 3,
            }
        }
    }
}

/// Runs the suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let plan = Plan::new(ctx.quick);
    let mut params = Map::new();
    params.insert("quick".into(), json!(plan.quick));
    params.insert("cores".into(), json!(plan.cores));
    params.insert("threads".into(), json!(2));
    if let Some(load) = util::loadavg() {
        // The machine may be shared (CI): say how busy it was.
        params.insert("loadavg_1m_at_start".into(), json!(load));
    }
    let mut metrics = Vec::new();

    let mut phases = Phases::default();
    phases.run("ops", || ops_bench(&plan, &mut params, &mut metrics))?;
    phases.run("pipeline", || {
        crate::state_pipeline::run(plan.quick, &mut metrics)
    })?;
    phases.run("flink", || {
        crate::state_flink::run(plan.quick, &ctx.out, &mut params, &mut metrics)
    })?;

    let model = StateModel::sized(plan.state_bytes);
    phases.run("memory", || memory_bench(&model, &mut params, &mut metrics))?;
    println!(
        "state: filling a memory backend with {:.0} MiB of keys and values ({} entries) …",
        util::mib(plan.state_bytes),
        model.entries
    );
    let backend = Arc::new(MemoryBackend::new());
    let t = Instant::now();
    let (key_bytes, value_bytes) = model.fill(&*backend)?;
    println!("state: filled in {:.1} s", t.elapsed().as_secs_f64());
    let stats = backend.stats();
    params.insert("state_bytes".into(), json!(plan.state_bytes));
    params.insert("state_entries".into(), json!(stats.entries));
    params.insert("state_bytes_actual".into(), json!(stats.bytes));
    params.insert(
        "state_avg_key_bytes".into(),
        json!(round2(key_bytes as f64 / model.entries as f64)),
    );
    params.insert(
        "state_avg_value_bytes".into(),
        json!(round2(value_bytes as f64 / model.entries as f64)),
    );

    // The bulk load marked every key as changed; the first snapshot starts a
    // clean epoch (as the first checkpoint after a load would).
    let t = Instant::now();
    drop(backend.snapshot(SnapshotKind::Full)?);
    let after_load = t.elapsed();
    metrics.push(Metric::plain(
        "snapshot_call_after_bulk_load_ms",
        ms(after_load),
        "ms",
        false,
    ));

    // A checkpoint interval without a checkpoint: nothing touches the
    // snapshot's bookkeeping meanwhile, so the next call finds it cold.
    println!(
        "state: a snapshot call after {} s idle …",
        plan.idle.as_secs()
    );
    std::thread::sleep(plan.idle);
    let t = Instant::now();
    drop(backend.snapshot(SnapshotKind::Full)?);
    metrics.push(Metric::plain(
        "snapshot_call_after_idle_ms",
        ms(t.elapsed()),
        "ms",
        false,
    ));

    phases.run("snapshot", || {
        snapshot_bench(&plan, &model, &backend, &mut params, &mut metrics)
    })?;
    phases.run("checkpoint", || {
        checkpoint_bench(ctx, &plan, &model, &backend, &mut params, &mut metrics)
    })?;
    phases.run("checkpoint_pause", || {
        checkpoint_pause_bench(&plan, &model, &backend, &mut params, &mut metrics)
    })?;
    for (phase, pct) in phases.others {
        params.insert(
            format!("other_processes_cpu_pct_{phase}"),
            json!(round2(pct)),
        );
    }
    for (phase, steal) in phases.steal_ms {
        params.insert(format!("hypervisor_steal_ms_{phase}"), json!(steal));
    }

    Ok(SuiteResult {
        suite: "state".into(),
        params,
        metrics,
    })
}

/// How much of the machine other processes used during each phase.
#[derive(Default)]
struct Phases {
    others: Vec<(&'static str, f64)>,
    steal_ms: Vec<(&'static str, u64)>,
}

impl Phases {
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let before = util::CpuReading::now();
        let out = f()?;
        if let (Some(b), Some(a)) = (before, util::CpuReading::now())
            && let Some(pct) = a.others_since(&b)
        {
            let steal = a.steal_ms_since(&b).unwrap_or(0);
            println!(
                "state: other processes used {pct:.0}% of the machine during `{name}`; \
                 hypervisor steal {steal} ms"
            );
            self.others.push((name, pct));
            self.steal_ms.push((name, steal));
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Resident memory per byte of state, measured in child processes.

/// The hidden first argument that makes this binary a memory probe.
pub const MEMORY_PROBE_ARG: &str = "--memory-probe";

/// The child side: `--memory-probe <memory|hashmap> <entries>` loads the
/// model's first `entries` entries into one container and prints
/// `rss_growth=<bytes> logical=<bytes>`.
pub fn memory_probe_main(args: &[String]) -> std::process::ExitCode {
    match memory_probe(args) {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("memory probe: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn memory_probe(args: &[String]) -> Result<String> {
    let [which, entries] = args else {
        return Err("usage: --memory-probe <memory|hashmap> <entries>".into());
    };
    let model = StateModel {
        entries: entries.parse()?,
    };
    let before = util::rss_bytes().ok_or("no /proc/self/status")?;
    let mut rng = Rng::new(0x5eed_0002);
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let mut logical = 0u64;
    let after = match which.as_str() {
        "memory" => {
            let backend = MemoryBackend::new();
            let (kb, vb) = model.fill(&backend)?;
            logical = kb + vb;
            // A change snapshot ends the load's epoch like the first
            // checkpoint would, and dropping it here frees the load's
            // change set on this thread before RSS is read (a full
            // snapshot hands a large one to a helper thread).
            drop(backend.snapshot(SnapshotKind::Changes)?);
            let after = util::rss_bytes();
            drop(backend);
            after
        }
        "hashmap" => {
            let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for i in 0..model.entries {
                model.key(i, &mut k);
                model.value(i, &mut rng, &mut v);
                logical += (k.len() + v.len()) as u64;
                map.insert(k.clone(), v.clone());
            }
            let after = util::rss_bytes();
            drop(map);
            after
        }
        other => return Err(format!("unknown memory probe {other:?}").into()),
    };
    let after = after.ok_or("no /proc/self/status")?;
    Ok(format!(
        "rss_growth={} logical={logical}",
        after.saturating_sub(before)
    ))
}

/// Runs one probe in a child process; returns (RSS growth, logical bytes).
fn run_probe(which: &str, entries: u64) -> Result<(u64, u64)> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args([MEMORY_PROBE_ARG, which, &entries.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "memory probe {which} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let field = |name: &str| -> Result<u64> {
        let at = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .ok_or_else(|| format!("memory probe {which} printed no {name}: {text}"))?;
        Ok(at.parse()?)
    };
    Ok((field("rss_growth=")?, field("logical=")?))
}

fn memory_bench(
    model: &StateModel,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    if util::rss_bytes().is_none() {
        println!("state: no /proc/self/status; memory_bytes_per_state_byte skipped");
        return Ok(());
    }
    println!(
        "state: resident memory of {} entries, memory backend vs HashMap (child processes) …",
        model.entries
    );
    let (ours, logical) = run_probe("memory", model.entries)?;
    let (theirs, logical_b) = run_probe("hashmap", model.entries)?;
    if logical != logical_b {
        return Err(
            format!("memory probes loaded different data: {logical} vs {logical_b}").into(),
        );
    }
    let per = |rss: u64| (rss as f64 / logical as f64 * 1000.0).round() / 1000.0;
    println!(
        "state:   memory backend {:.0} MiB, HashMap {:.0} MiB, for {:.0} MiB of keys and values",
        util::mib(ours),
        util::mib(theirs),
        util::mib(logical)
    );
    params.insert("memory_probe_logical_bytes".into(), json!(logical));
    metrics.push(Metric::versus(
        "memory_bytes_per_state_byte",
        per(ours),
        "bytes/byte",
        "HashMap<Vec<u8>, Vec<u8>>",
        per(theirs),
        false,
    ));
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------
// Put/get throughput against a plain RwLock<HashMap>.

/// What the put/get loops need from a map.
trait Kv: Sync {
    fn put(&self, key: &[u8], value: &[u8]);
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
}

impl Kv for MemoryBackend {
    fn put(&self, key: &[u8], value: &[u8]) {
        // The memory backend's put and get cannot fail.
        StateBackend::put(self, key, value).expect("memory backend put");
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        StateBackend::get(self, key).expect("memory backend get")
    }
}

/// The baseline: one `RwLock` around a std `HashMap` (SipHash), written the
/// way a careful plain implementation would be (overwrites reuse the value's
/// allocation; reads copy the value out, like the backend API).
#[derive(Default)]
struct LockedMap(RwLock<HashMap<Vec<u8>, Vec<u8>>>);

impl Kv for LockedMap {
    fn put(&self, key: &[u8], value: &[u8]) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        match map.get_mut(key) {
            Some(old) => {
                old.clear();
                old.extend_from_slice(value);
            }
            None => {
                map.insert(key.to_vec(), value.to_vec());
            }
        }
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).cloned()
    }
}

/// Keys, values and access orders of the put/get benchmark.
struct OpsData {
    keys: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    /// One shuffled order for a single thread over all keys.
    all: Vec<u32>,
    /// Per thread of the 2-thread runs: a shuffled order over its own keys.
    halves: [Vec<u32>; 2],
}

impl OpsData {
    fn new(n: usize) -> OpsData {
        let mut rng = Rng::new(0x5eed_0001);
        let mut user = Vec::new();
        let keys: Vec<Vec<u8>> = (0..n as u64)
            .map(|i| {
                user.clear();
                push_str_id(&mut user, "user", i);
                encode_key("counter", "value", &user, b"")
            })
            .collect();
        let pool = (0..OPS_VALUE_POOL)
            .map(|_| {
                let mut v = vec![0u8]; // plain envelope
                while v.len() < OPS_VALUE_BYTES {
                    v.push(rng.next_u64() as u8);
                }
                v
            })
            .collect();
        let mut all: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut all);
        let halves = [0u32, 1].map(|t| {
            let mut h: Vec<u32> = (t..n as u32).step_by(2).collect();
            rng.shuffle(&mut h);
            h
        });
        OpsData {
            keys,
            pool,
            all,
            halves,
        }
    }

    fn value(&self, n: usize) -> &[u8] {
        &self.pool[n & (OPS_VALUE_POOL - 1)]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

/// One pass of `op` over `order`; returns a checksum so nothing is elided.
fn pass<K: Kv>(kv: &K, data: &OpsData, order: &[u32], op: Op, salt: usize) -> usize {
    let mut sum = 0usize;
    match op {
        Op::Put => {
            for (n, &i) in order.iter().enumerate() {
                kv.put(black_box(&data.keys[i as usize]), data.value(n + salt));
            }
        }
        Op::Get => {
            for &i in order {
                if let Some(v) = black_box(kv.get(black_box(&data.keys[i as usize]))) {
                    sum += v.len();
                }
            }
        }
    }
    sum
}

/// Wall time of one round of `op` on `threads` threads.
fn round<K: Kv>(kv: &K, data: &OpsData, threads: usize, op: Op, salt: usize) -> Duration {
    if threads == 1 {
        let t = Instant::now();
        black_box(pass(kv, data, &data.all, op, salt));
        return t.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = data.halves[..threads]
            .iter()
            .map(|order| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    black_box(pass(kv, data, order, op, salt))
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        for w in workers {
            black_box(w.join().expect("a benchmark thread panicked"));
        }
        t.elapsed()
    })
}

fn ops_bench(plan: &Plan, params: &mut Map<String, Value>, metrics: &mut Vec<Metric>) -> Result {
    let n = plan.ops_keys;
    println!("state: put/get over {n} keys, {} rounds …", plan.ops_rounds);
    let data = OpsData::new(n);
    let backend = MemoryBackend::new();
    let baseline = LockedMap::default();
    for (i, key) in data.keys.iter().enumerate() {
        Kv::put(&backend, key, data.value(i));
        baseline.put(key, data.value(i));
    }
    // Start from a fresh change-tracking epoch, as right after a checkpoint.
    drop(backend.snapshot(SnapshotKind::Full)?);
    let avg_key = data.keys.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    params.insert("ops_keys".into(), json!(n));
    params.insert("ops_key_bytes".into(), json!(round2(avg_key)));
    params.insert("ops_value_bytes".into(), json!(OPS_VALUE_BYTES));
    params.insert("ops_rounds".into(), json!(plan.ops_rounds));

    for (op, op_name) in [(Op::Put, "put"), (Op::Get, "get")] {
        for threads in [1usize, 2] {
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for r in 0..=plan.ops_rounds {
                // Alternate who goes first; round 0 is a warm-up.
                let (a, b) = if r % 2 == 0 {
                    let a = round(&backend, &data, threads, op, r);
                    (a, round(&baseline, &data, threads, op, r))
                } else {
                    let b = round(&baseline, &data, threads, op, r);
                    (round(&backend, &data, threads, op, r), b)
                };
                if r > 0 {
                    ours.push(n as f64 / a.as_secs_f64());
                    theirs.push(n as f64 / b.as_secs_f64());
                }
            }
            let name = if threads == 1 {
                format!("memory_{op_name}")
            } else {
                format!("memory_{op_name}_{threads}t")
            };
            let base = format!("RwLock<HashMap> (std hasher), {threads} thread(s)");
            let m = Metric::versus(&name, median(&ours), "ops/s", &base, median(&theirs), true);
            println!(
                "state: {name}: {} ops/s vs {} ops/s",
                util::human(m.value),
                util::human(median(&theirs))
            );
            metrics.push(m);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The realistic state: keyed aggregates and window buffers.

/// Appends the postcard encoding of the string `"{prefix}-{id:08}"`.
fn push_str_id(out: &mut Vec<u8>, prefix: &str, id: u64) {
    let digits = 8.max(id.checked_ilog10().unwrap_or(0) as usize + 1);
    out.push((prefix.len() + 1 + digits) as u8); // < 128: one varint byte
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'-');
    let mut buf = [b'0'; 20];
    let mut x = id;
    for d in buf[..digits].iter_mut().rev() {
        *d = b'0' + (x % 10) as u8;
        x /= 10;
    }
    out.extend_from_slice(&buf[..digits]);
}

/// An encoded state key, in the key group of `user_key` as the typed API
/// computes it.
fn encode_key(operator: &str, state: &str, user_key: &[u8], namespace: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    push_key(&mut out, operator, state, user_key, namespace);
    out
}

fn push_key(out: &mut Vec<u8>, operator: &str, state: &str, user_key: &[u8], namespace: &[u8]) {
    StateKey {
        key_group: key_group_for(user_key, MAX_PARALLELISM),
        operator,
        state,
        key: user_key,
        namespace,
        user_key: b"",
    }
    .encode_into(out)
    .expect("benchmark names are valid");
}

/// Milliseconds of the first open window (2025-01-01T00:00Z).
const WINDOW_BASE_MS: u64 = 1_735_689_600_000;
/// Open windows per sensor.
const WINDOWS_PER_SENSOR: u64 = 4;
const STATUSES: [&str; 6] = ["ok", "ok", "ok", "ok", "warn", "calibrating"];

/// A deterministic state of `entries` entries. Entry `i` is, by `i % 5`:
/// 0–1 a running aggregate of one user (operator `agg`), 2–4 the buffer of
/// one open window of one sensor (operator `window`).
#[derive(Debug, Clone, Copy)]
struct StateModel {
    entries: u64,
}

/// What entry `i` is.
enum Entry {
    Agg { user: u64 },
    Window { sensor: u64, window: u64 },
}

impl StateModel {
    /// A model whose keys and values add up to about `bytes`.
    fn sized(bytes: u64) -> StateModel {
        // Measure the average entry size on a sample.
        let probe = StateModel { entries: 100_000 };
        let mut rng = Rng::new(7);
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut total = 0u64;
        for i in 0..probe.entries {
            probe.key(i, &mut k);
            probe.value(i, &mut rng, &mut v);
            total += (k.len() + v.len()) as u64;
        }
        let avg = total as f64 / probe.entries as f64;
        StateModel {
            entries: (bytes as f64 / avg).round() as u64,
        }
    }

    fn entry(i: u64) -> Entry {
        let (block, r) = (i / 5, i % 5);
        if r < 2 {
            Entry::Agg {
                user: block * 2 + r,
            }
        } else {
            let slot = block * 3 + (r - 2);
            Entry::Window {
                sensor: slot / WINDOWS_PER_SENSOR,
                window: slot % WINDOWS_PER_SENSOR,
            }
        }
    }

    /// The key of entry `i`, into `out` (cleared first).
    fn key(&self, i: u64, out: &mut Vec<u8>) {
        out.clear();
        let mut user_key = Vec::with_capacity(32);
        match Self::entry(i) {
            Entry::Agg { user: u } => {
                push_str_id(&mut user_key, "user", u);
                push_key(out, "agg", "sum", &user_key, b"");
            }
            Entry::Window { sensor, window } => {
                push_str_id(&mut user_key, "sensor", sensor);
                let mut ns = Vec::with_capacity(10);
                push_varint(&mut ns, WINDOW_BASE_MS + window * 60_000);
                push_key(out, "window", "buf", &user_key, &ns);
            }
        }
    }

    /// A value for entry `i`, into `out` (cleared first). Values are drawn
    /// from `rng`, so rewriting an entry changes it.
    fn value(&self, i: u64, rng: &mut Rng, out: &mut Vec<u8>) {
        out.clear();
        out.push(0); // plain envelope, no TTL
        match Self::entry(i) {
            Entry::Agg { .. } => {
                // (count: u64, sum: f64, min: f32, max: f32, last_ts: u64)
                let count = rng.range(1, 50_000);
                let avg = rng.range(100, 99_999) as f64 / 100.0;
                push_varint(out, count);
                out.extend_from_slice(&(avg * count as f64).to_le_bytes());
                out.extend_from_slice(&((avg * 0.5) as f32).to_le_bytes());
                out.extend_from_slice(&((avg * 1.5) as f32).to_le_bytes());
                push_varint(out, WINDOW_BASE_MS + rng.below(3_600_000));
            }
            Entry::Window { sensor, window } => {
                // A list of readings (ts: u64, temperature: f32, humidity: u8,
                // status: String, site: String), concatenated postcard.
                let site = format!("site-{:02}", sensor % 40);
                let mut ts = WINDOW_BASE_MS + window * 60_000;
                let base_temp = 15.0 + (sensor % 150) as f32 / 10.0;
                for _ in 0..rng.range(4, 14) {
                    ts += rng.range(100, 30_000);
                    push_varint(out, ts);
                    let temp = base_temp + rng.below(1_000) as f32 / 100.0;
                    out.extend_from_slice(&temp.to_le_bytes());
                    push_varint(out, rng.range(0, 100));
                    push_str(out, STATUSES[rng.below(STATUSES.len() as u64) as usize]);
                    push_str(out, &site);
                }
            }
        }
    }

    /// Puts every entry; returns the bytes of keys and of values.
    fn fill(&self, backend: &dyn StateBackend) -> Result<(u64, u64)> {
        let mut rng = Rng::new(0x5eed_0002);
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let (mut kb, mut vb) = (0u64, 0u64);
        for i in 0..self.entries {
            self.key(i, &mut k);
            self.value(i, &mut rng, &mut v);
            kb += k.len() as u64;
            vb += v.len() as u64;
            backend.put(&k, &v)?;
        }
        Ok((kb, vb))
    }

    /// Rewrites about `percent`% of the entries (chosen at random) with new
    /// values; returns how many.
    fn touch(&self, backend: &dyn StateBackend, percent: u64, seed: u64) -> Result<u64> {
        let mut rng = Rng::new(seed);
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut n = 0;
        for i in 0..self.entries {
            if rng.below(100) < percent {
                self.key(i, &mut k);
                self.value(i, &mut rng, &mut v);
                backend.put(&k, &v)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// Writer pauses around snapshots.

/// Latencies the writer recorded, in nanoseconds.
#[derive(Default)]
struct WriterLog {
    inside: Vec<u64>,
    outside: Vec<u64>,
}

/// Runs `driver` on this thread while a writer thread puts fresh values to
/// random existing keys as fast as it can, timing every put. Puts that
/// overlap a moment when `driver` has set the flag it is given are logged
/// as inside.
fn with_writer<R>(
    model: &StateModel,
    backend: &MemoryBackend,
    seed: u64,
    driver: impl FnOnce(&AtomicBool) -> Result<R>,
) -> Result<(R, WriterLog)> {
    let in_window = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| -> Result<WriterLog> {
            let mut rng = Rng::new(seed);
            let mut log = WriterLog::default();
            let (mut key, mut value) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                // A fresh value, so the state stays as compressible as
                // generated for the checkpoints that follow.
                let i = rng.below(model.entries);
                model.key(i, &mut key);
                model.value(i, &mut rng, &mut value);
                let during = in_window.load(Ordering::Relaxed);
                let t = Instant::now();
                StateBackend::put(backend, &key, &value)?;
                let lat = t.elapsed().as_nanos() as u64;
                if during || in_window.load(Ordering::Relaxed) {
                    log.inside.push(lat);
                } else {
                    log.outside.push(lat);
                }
            }
            Ok(log)
        });
        let result = driver(&in_window);
        stop.store(true, Ordering::SeqCst);
        let log = writer.join().map_err(|_| "the writer thread panicked")??;
        Ok((result?, log))
    })
}

fn snapshot_bench(
    plan: &Plan,
    model: &StateModel,
    backend: &Arc<MemoryBackend>,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    println!(
        "state: {} snapshots held {} ms each while a writer puts …",
        plan.snapshots,
        plan.hold.as_millis()
    );
    let mut calls = Vec::new();
    let ((), log) = with_writer(model, backend, 0x5eed_0004, |in_window| {
        std::thread::sleep(plan.gap);
        for _ in 0..plan.snapshots {
            in_window.store(true, Ordering::SeqCst);
            let t = Instant::now();
            let snap = backend.snapshot(SnapshotKind::Full)?;
            calls.push(t.elapsed());
            std::thread::sleep(plan.hold);
            drop(snap);
            in_window.store(false, Ordering::SeqCst);
            std::thread::sleep(plan.gap);
        }
        Ok(())
    })?;
    let WriterLog {
        mut inside,
        mut outside,
    } = log;
    if inside.is_empty() || outside.is_empty() {
        return Err("the writer recorded no puts".into());
    }
    inside.sort_unstable();
    outside.sort_unstable();
    let p99 = util::ns_to_ms(percentile(&inside, 99.0));
    let p999 = util::ns_to_ms(percentile(&inside, 99.9));
    let max = util::ns_to_ms(*inside.last().unwrap_or(&0));
    let call_max = calls.iter().map(|d| ms(*d)).fold(0.0, f64::max);
    let slow = inside.iter().filter(|&&ns| ns >= 1_000_000).count();
    let slow10 = inside.iter().filter(|&&ns| ns >= 10_000_000).count();
    let worst: Vec<String> = inside
        .iter()
        .rev()
        .take(5)
        .map(|&ns| format!("{:.1}", util::ns_to_ms(ns)))
        .collect();
    let calls_ms: Vec<String> = calls.iter().map(|d| format!("{:.1}", ms(*d))).collect();
    println!(
        "state: {} puts during snapshots (p50 {:.3} ms, p99 {p99:.3} ms, max {max:.3} ms, \
         {slow} ≥ 1 ms, {slow10} ≥ 10 ms, worst {} ms); {} outside (p99 {:.4} ms); \
         snapshot() calls {} ms",
        inside.len(),
        util::ns_to_ms(percentile(&inside, 50.0)),
        worst.join(", "),
        outside.len(),
        util::ns_to_ms(percentile(&outside, 99.0)),
        calls_ms.join(", "),
    );
    params.insert("snapshots".into(), json!(plan.snapshots));
    params.insert(
        "snapshot_hold_ms".into(),
        json!(plan.hold.as_millis() as u64),
    );
    params.insert("snapshot_writer_puts_inside".into(), json!(inside.len()));
    params.insert("snapshot_writer_puts_slow_1ms".into(), json!(slow));
    params.insert("snapshot_writer_puts_slow_10ms".into(), json!(slow10));
    metrics.push(Metric::plain("snapshot_pause_p99_ms", p99, "ms", false));
    metrics.push(Metric::plain("snapshot_pause_p999_ms", p999, "ms", false));
    metrics.push(Metric::plain("snapshot_pause_max_ms", max, "ms", false));
    metrics.push(Metric::plain("snapshot_call_max_ms", call_max, "ms", false));
    metrics.push(Metric::plain(
        "writer_put_p99_outside_snapshots_ms",
        util::ns_to_ms(percentile(&outside, 99.0)),
        "ms",
        false,
    ));
    Ok(())
}

/// The writer's view of a real full checkpoint: puts while
/// `StateManager::checkpoint()` snapshots, encodes and commits in the
/// background (the writer copies the index pages and segments it touches
/// while the checkpoint holds the snapshot, and the old copies are freed
/// when the checkpoint drops it), and for a while after the commit.
fn checkpoint_pause_bench(
    plan: &Plan,
    model: &StateModel,
    backend: &Arc<MemoryBackend>,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    println!("state: a full checkpoint while a writer puts …");
    let after = Duration::from_millis(500);
    let (info, log) = with_writer(model, backend, 0x5eed_0005, |in_window| {
        let m = manager(backend, ObjectCheckpointStore::in_memory())?;
        std::thread::sleep(plan.gap);
        in_window.store(true, Ordering::SeqCst);
        let info = checkpoint(&m, CheckpointKind::Full)?;
        std::thread::sleep(after);
        in_window.store(false, Ordering::SeqCst);
        std::thread::sleep(plan.gap);
        Ok(info)
    })?;
    let mut inside = log.inside;
    if inside.is_empty() {
        return Err("the writer recorded no puts during the checkpoint".into());
    }
    inside.sort_unstable();
    let p99 = util::ns_to_ms(percentile(&inside, 99.0));
    let max = util::ns_to_ms(*inside.last().unwrap_or(&0));
    let slow = inside.iter().filter(|&&ns| ns >= 1_000_000).count();
    let slow10 = inside.iter().filter(|&&ns| ns >= 10_000_000).count();
    let worst: Vec<String> = inside
        .iter()
        .rev()
        .take(5)
        .map(|&ns| format!("{:.1}", util::ns_to_ms(ns)))
        .collect();
    println!(
        "state: checkpoint took {:.0} ms; {} puts from trigger to {} ms after commit \
         (p99 {p99:.3} ms, {slow} ≥ 1 ms, {slow10} ≥ 10 ms, worst {} ms)",
        ms(info.duration),
        inside.len(),
        after.as_millis(),
        worst.join(", ")
    );
    params.insert(
        "checkpoint_with_writer_ms".into(),
        json!(round2(ms(info.duration))),
    );
    params.insert("checkpoint_writer_puts".into(), json!(inside.len()));
    params.insert("checkpoint_writer_puts_slow_1ms".into(), json!(slow));
    params.insert("checkpoint_writer_puts_slow_10ms".into(), json!(slow10));
    metrics.push(Metric::plain(
        "checkpoint_writer_pause_p99_ms",
        p99,
        "ms",
        false,
    ));
    metrics.push(Metric::plain(
        "checkpoint_writer_pause_max_ms",
        max,
        "ms",
        false,
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// Checkpoints.

fn manager(backend: &Arc<MemoryBackend>, store: ObjectCheckpointStore) -> Result<StateManager> {
    manager_with(backend, store, highwater::CheckpointConfig::default())
}

fn manager_with(
    backend: &Arc<MemoryBackend>,
    store: ObjectCheckpointStore,
    config: highwater::CheckpointConfig,
) -> Result<StateManager> {
    let backend: Arc<dyn StateBackend> = backend.clone();
    let store: Arc<dyn CheckpointStore> = Arc::new(store);
    Ok(StateManager::builder()
        .backend(backend)
        .store(store)
        .config(config)
        .build()?)
}

fn checkpoint(m: &StateManager, want: CheckpointKind) -> Result<CheckpointInfo> {
    let info = m.checkpoint()?.wait()?;
    if info.kind != want {
        return Err(format!("expected a {want} checkpoint, got {}", info.kind).into());
    }
    Ok(info)
}

/// Logical bytes per second, in MB/s (10^6 bytes).
fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The record streams a full checkpoint of `backend` encodes, built the way
/// the encoder builds them (one stream per operator and key-group chunk,
/// records sorted by key), concatenated.
fn record_streams(backend: &MemoryBackend, key_groups_per_artifact: u16) -> Result<Vec<u8>> {
    type Bucket = (Vec<u8>, Vec<(usize, usize, usize)>);
    let snapshot = backend.snapshot(SnapshotKind::Full)?;
    let mut buckets: HashMap<(String, u16), Bucket> = HashMap::new();
    visit_snapshot(&*snapshot, |_, k, v| {
        let Some(v) = v else { return Ok(()) };
        let KeyGroup(kg) = key_group_of(k)?;
        let chunk = kg / key_groups_per_artifact;
        // Stored as checkpoints store them: without the operator name
        // (format v2's operator-relative keys; the artifact names it).
        let (head, op, tail) = split_operator(k)?;
        let (data, recs) = buckets.entry((op.to_owned(), chunk)).or_default();
        let at = data.len();
        data.extend_from_slice(head);
        data.extend_from_slice(tail);
        data.extend_from_slice(v);
        recs.push((at, head.len() + tail.len(), v.len()));
        Ok(())
    })?;
    drop(snapshot);
    let mut keys: Vec<(String, u16)> = buckets.keys().cloned().collect();
    keys.sort();
    let raw = EncodeOptions {
        compression_threshold: usize::MAX,
        ..EncodeOptions::default()
    };
    let mut out = Vec::new();
    for key in keys {
        let Some((data, mut recs)) = buckets.remove(&key) else {
            continue;
        };
        recs.sort_unstable_by(|a, b| data[a.0..a.0 + a.1].cmp(&data[b.0..b.0 + b.1]));
        let mut w = RecordWriter::new(ArtifactKind::Entries, data.len() + recs.len() * 4);
        for &(at, kl, vl) in &recs {
            w.push(&data[at..at + kl], Some(&data[at + kl..at + kl + vl]))?;
        }
        let enc = w.finish(&raw)?;
        out.extend_from_slice(&enc.bytes[ARTIFACT_HEADER_LEN..]);
    }
    Ok(out)
}

/// One single-threaded pass of zstd at `level` over `buf` in [`BASELINE_CHUNK`]s:
/// the time and the compressed size.
fn zstd_pass(buf: &[u8], level: i32) -> Result<(Duration, u64)> {
    let t = Instant::now();
    let mut compressed = 0u64;
    for chunk in buf.chunks(BASELINE_CHUNK) {
        compressed += black_box(zstd::bulk::compress(chunk, level)?).len() as u64;
    }
    Ok((t.elapsed(), compressed))
}

/// The same compression on `threads` threads at once (chunks handed out in
/// order): what the cores deliver together, which the baseline's
/// "one core × cores" assumes to be perfect scaling.
fn zstd_parallel_pass(buf: &[u8], threads: usize) -> Result<Duration> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let chunks: Vec<&[u8]> = buf.chunks(BASELINE_CHUNK).collect();
    let t = Instant::now();
    std::thread::scope(|s| -> Result {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else {
                            return Ok(());
                        };
                        black_box(zstd::bulk::compress(chunk, ZSTD_LEVEL)?);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a zstd thread panicked")??;
        }
        Ok(())
    })?;
    Ok(t.elapsed())
}

fn checkpoint_bench(
    ctx: &Ctx,
    plan: &Plan,
    model: &StateModel,
    backend: &Arc<MemoryBackend>,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    let kgpa = highwater::CheckpointConfig::default().key_groups_per_artifact;

    // The baseline first: reading the records takes a snapshot, which
    // starts a new change epoch, so it must come before the checkpoints
    // whose changes are tracked.
    println!("state: zstd baseline …");
    let records = record_streams(backend, kgpa)?;
    let mut passes = Vec::new();
    let mut baseline_compressed = 0;
    for _ in 0..plan.baseline_reps {
        let (d, c) = zstd_pass(&records, ZSTD_LEVEL)?;
        passes.push(mb_per_s(records.len() as u64, d));
        baseline_compressed = c;
    }
    let one_core = median(&passes);
    let baseline = one_core * plan.cores as f64;
    let mut parallel = Vec::new();
    for _ in 0..plan.baseline_reps {
        let d = zstd_parallel_pass(&records, plan.cores)?;
        parallel.push(mb_per_s(records.len() as u64, d));
    }
    let all_cores = median(&parallel);
    let mut fast_passes = Vec::new();
    for _ in 0..plan.baseline_reps {
        let (d, _) = zstd_pass(&records, ZSTD_FAST_LEVEL)?;
        fast_passes.push(mb_per_s(records.len() as u64, d));
    }
    let fast_baseline = median(&fast_passes) * plan.cores as f64;
    let records_len = records.len() as u64;
    drop(records);
    println!(
        "state: zstd-1 one core {one_core:.1} MB/s × {} cores = {baseline:.1} MB/s \
         (measured on all cores at once: {all_cores:.1} MB/s)",
        plan.cores
    );

    println!(
        "state: {} full checkpoints (in-memory store) …",
        plan.full_reps
    );
    let mut fulls = Vec::new();
    let mut last = None;
    for _ in 0..plan.full_reps {
        drop(last.take()); // free the previous store first
        let m = manager(backend, ObjectCheckpointStore::in_memory())?;
        let info = checkpoint(&m, CheckpointKind::Full)?;
        println!(
            "state:   full: {:.0} ms, {:.1} MB/s, {} artifacts, pause {:.3} ms",
            ms(info.duration),
            mb_per_s(info.logical_bytes, info.duration),
            info.artifacts,
            ms(info.snapshot_pause)
        );
        fulls.push(info);
        last = Some(m);
    }
    let m = last.ok_or("no full checkpoint was taken")?;
    let full = fulls.last().ok_or("no full checkpoint was taken")?.clone();
    if full.logical_bytes != records_len {
        return Err(format!(
            "the baseline's record bytes ({records_len}) differ from the checkpoint's \
             logical bytes ({}): the baseline would not compress the same data",
            full.logical_bytes
        )
        .into());
    }
    let full_time = median_duration(&fulls.iter().map(|i| i.duration).collect::<Vec<_>>());
    let full_mbps = mb_per_s(full.logical_bytes, full_time);
    metrics.push(Metric::versus(
        "checkpoint_full_throughput",
        full_mbps,
        "MB/s",
        "zstd-1 x cores",
        baseline,
        true,
    ));

    println!(
        "state: {} incremental checkpoints after 1% changes …",
        plan.incremental_reps
    );
    let mut incs = Vec::new();
    for r in 0..plan.incremental_reps {
        let touched = model.touch(&**backend, 1, 0x5eed_1000 + r as u64)?;
        let info = checkpoint(&m, CheckpointKind::Incremental)?;
        println!(
            "state:   incremental: {touched} keys, {:.1} ms, {} bytes written",
            ms(info.duration),
            info.bytes_written
        );
        incs.push(info);
    }
    drop(m);
    let inc_time = median_duration(&incs.iter().map(|i| i.duration).collect::<Vec<_>>());
    let mut inc_bytes: Vec<f64> = incs.iter().map(|i| i.bytes_written as f64).collect();
    inc_bytes.sort_by(f64::total_cmp);
    metrics.push(Metric::versus(
        "checkpoint_incremental_1pct",
        ms(inc_time),
        "ms",
        "full checkpoint",
        ms(full_time),
        false,
    ));
    metrics.push(Metric::versus(
        "checkpoint_incremental_bytes_1pct",
        median(&inc_bytes),
        "bytes",
        "full checkpoint",
        full.bytes_written as f64,
        false,
    ));

    println!("state: full checkpoints at zstd level {ZSTD_FAST_LEVEL} (in-memory store) …");
    let mut fast = highwater::CheckpointConfig::default();
    fast.merger.compression = highwater::Compression::Zstd {
        level: ZSTD_FAST_LEVEL,
    };
    let mut fast_times = Vec::new();
    let mut fast_info = None;
    for _ in 0..plan.full_reps {
        drop(fast_info.take());
        let fm = manager_with(backend, ObjectCheckpointStore::in_memory(), fast.clone())?;
        let info = checkpoint(&fm, CheckpointKind::Full)?;
        fast_times.push(info.duration);
        fast_info = Some((fm, info));
    }
    let (fm, fast_full) = fast_info.ok_or("no fast full checkpoint was taken")?;
    drop(fm);
    let fast_mbps = mb_per_s(fast_full.logical_bytes, median_duration(&fast_times));
    println!(
        "state:   fast: {fast_mbps:.1} MB/s of logical state (zstd {ZSTD_FAST_LEVEL} x cores: {fast_baseline:.1} MB/s), compression {:.2}x",
        fast_full.logical_bytes as f64 / fast_full.encoded_bytes as f64
    );
    metrics.push(Metric::versus(
        "checkpoint_full_throughput_fast",
        fast_mbps,
        "MB/s",
        &format!("zstd{ZSTD_FAST_LEVEL} x cores"),
        fast_baseline,
        true,
    ));
    params.insert(
        "checkpoint_fast_compression_ratio".into(),
        json!(round2(
            fast_full.logical_bytes as f64 / fast_full.encoded_bytes as f64
        )),
    );

    // Encrypted and plain full checkpoints alternate, so that both see the
    // same machine; each ratio compares medians of the pairs.
    println!("state: full checkpoints encrypted at rest and plain, alternating …");
    let keys: Arc<dyn highwater::KeyProvider> =
        Arc::new(highwater::Keyring::new(1, highwater::DataKey::generate()?));
    let (mut sealed_times, mut plain_times) = (Vec::new(), Vec::new());
    let mut logical = 0;
    for _ in 0..plan.full_reps {
        for sealed in [true, false] {
            let backend: Arc<dyn StateBackend> = backend.clone();
            let mut b = StateManager::builder()
                .backend(backend)
                .store(Arc::new(ObjectCheckpointStore::in_memory()));
            if sealed {
                b = b.encryption(keys.clone());
            }
            let sm = b.build()?;
            let info = checkpoint(&sm, CheckpointKind::Full)?;
            drop(sm);
            logical = info.logical_bytes;
            if sealed {
                sealed_times.push(info.duration);
            } else {
                plain_times.push(info.duration);
            }
        }
    }
    let sealed_mbps = mb_per_s(logical, median_duration(&sealed_times));
    let plain_mbps = mb_per_s(logical, median_duration(&plain_times));
    println!("state:   encrypted: {sealed_mbps:.1} MB/s, plain: {plain_mbps:.1} MB/s");
    metrics.push(Metric::versus(
        "checkpoint_full_throughput_encrypted",
        sealed_mbps,
        "MB/s",
        "unencrypted full checkpoint",
        plain_mbps,
        true,
    ));

    println!("state: full checkpoint into a local directory store …");
    let dir = tempfile::Builder::new()
        .prefix("state-local-store-")
        .tempdir_in(&ctx.out)?;
    let m = manager(backend, ObjectCheckpointStore::local(dir.path())?)?;
    let local = checkpoint(&m, CheckpointKind::Full)?;
    drop(m);
    drop(dir);
    metrics.push(Metric::versus(
        "checkpoint_full_throughput_local",
        mb_per_s(local.logical_bytes, local.duration),
        "MB/s",
        "zstd-1 x cores",
        baseline,
        true,
    ));

    params.insert("checkpoint_logical_bytes".into(), json!(full.logical_bytes));
    params.insert("checkpoint_encoded_bytes".into(), json!(full.encoded_bytes));
    params.insert("checkpoint_artifacts".into(), json!(full.artifacts));
    params.insert(
        "checkpoint_compression_ratio".into(),
        json!(round2(
            full.logical_bytes as f64 / full.encoded_bytes as f64
        )),
    );
    params.insert(
        "baseline_compression_ratio".into(),
        json!(round2(records_len as f64 / baseline_compressed as f64)),
    );
    params.insert(
        "baseline_zstd_one_core_mb_s".into(),
        json!(round2(one_core)),
    );
    params.insert(
        "baseline_zstd_all_cores_measured_mb_s".into(),
        json!(round2(all_cores)),
    );
    params.insert("baseline_chunk_bytes".into(), json!(BASELINE_CHUNK));
    params.insert("zstd_level".into(), json!(ZSTD_LEVEL));
    params.insert("max_parallelism".into(), json!(MAX_PARALLELISM));
    params.insert("key_groups_per_artifact".into(), json!(kgpa));
    params.insert(
        "checkpoint_full_snapshot_pause_ms".into(),
        json!(round2(ms(full.snapshot_pause))),
    );
    params.insert("incremental_entries".into(), json!(incs[0].entries));
    Ok(())
}
