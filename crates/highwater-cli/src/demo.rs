//! `highwater demo`: a deterministic stateful pipeline with checkpoints.
//!
//! The source is a generated event stream: event `i` is a pure function of
//! the seed and `i`. Three operators keep keyed state:
//!
//! - `source`: the stream is partitioned by the key group of the event's
//!   user; per partition, the offset after its last event processed (kept
//!   under a key of that key group, so it moves with the partition's users
//!   when the job rescales), so a restore resumes each partition exactly
//!   after the last event the checkpointed state includes;
//! - `aggregates`: per user, a running count/sum/max (value state) and a
//!   running maximum amount (reducing state);
//! - `windows`: per user, tumbling one-second event-time windows counting
//!   events (map state: window start → count); a window fires when a later
//!   event of the same user passes its end, folding its count into a
//!   per-user aggregate of fired windows (aggregating state).
//!
//! Checkpoints are taken between events, so each one is a consistent cut.
//! The final digest hashes every entry of the backend in key order.
//!
//! With `--parallelism N` the job runs as N subtasks (threads) of one
//! process, each owning its key groups' partitions and state, checkpointing
//! together through a `LocalCoordinator` into one store; the digest over
//! every subtask's state equals the single-process digest, also after a
//! kill and a `--resume` at another parallelism.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use highwater::{
    AggregateFunction, AggregatingStateDescriptor, MapStateDescriptor, ReducingStateDescriptor,
    Result, StateManager, ValueStateDescriptor,
};
use serde::{Deserialize, Serialize};

use crate::target::{BackendKind, open_backend, open_store};
use highwater::wal::{SyncPolicy, WalConfig};

/// Arguments of `highwater demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Checkpoint directory (created if missing); shorthand for --store DIR.
    #[arg(long, required_unless_present = "store", conflicts_with = "store")]
    dir: Option<PathBuf>,
    /// Checkpoint store: a directory, a redis://HOST:PORT/ URL, or an
    /// s3://BUCKET/PREFIX, az://CONTAINER/PREFIX or gs://BUCKET/PREFIX URL
    /// (credentials and endpoints from the usual environment variables).
    #[arg(long)]
    store: Option<String>,
    /// Where live state is kept.
    #[arg(long, value_enum, default_value_t = BackendKind::Memory)]
    backend: BackendKind,
    /// Redis server of `--backend redis`.
    #[arg(long)]
    redis_url: Option<String>,
    /// Working directory of `--backend rocksdb` (default DIR/rocksdb);
    /// wiped at start, live state comes from checkpoints.
    #[arg(long)]
    rocksdb_dir: Option<PathBuf>,
    /// Key namespace in Redis (state and checkpoints); object-store URLs use
    /// their prefix instead.
    #[arg(long, default_value = "highwater")]
    namespace: String,
    /// Number of events in the stream.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) events: u64,
    /// Checkpoint interval in milliseconds (wall clock).
    #[arg(long, default_value_t = 200)]
    pub(crate) checkpoint_every: u64,
    /// Restore the newest checkpoint in DIR and continue from its offset.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Number of distinct users (keys).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) keys: u64,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Take full checkpoints only.
    #[arg(long)]
    pub(crate) full_only: bool,
    /// Log every event's state changes to a write-ahead log (in DIR/wal,
    /// or --wal-dir), replayed after the checkpoint on --resume.
    #[arg(long)]
    wal: bool,
    /// Directory of the write-ahead log (implies --wal).
    #[arg(long)]
    wal_dir: Option<PathBuf>,
    /// When the log is made durable: always (every event), interval (every
    /// 10 ms) or never (on checkpoints and exit).
    #[arg(long, value_enum, default_value_t = WalSync::Interval)]
    wal_sync: WalSync,
    /// Serve metrics in Prometheus' text format on this address (for
    /// example 127.0.0.1:9464) while the demo runs; see docs/metrics.md.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Run as this many subtasks of one process (threads), each owning its
    /// share of the key groups, checkpointing together (global
    /// checkpoints through a local coordinator; memory backend). A
    /// `--resume` may use another parallelism.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=128))]
    parallelism: u16,
    /// Run as this many node processes on loopback, children of this one,
    /// coordinated by the Raft checkpoint ledger (feature `raft`; needs
    /// --dir, the memory backend). The digest is the single-process one.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=128), conflicts_with = "parallelism")]
    cluster: Option<u16>,
    /// With --cluster: SIGKILL a random node (the leader in every third
    /// kill) this many times while the job runs, at random moments
    /// up to 300 ms apart, and restart it with --resume each time. The
    /// digest stays the single-process one.
    #[arg(long, default_value_t = 0, requires = "cluster")]
    pub(crate) chaos_kills: u32,
    /// Seed of the --chaos-kills schedule (default: random, printed).
    #[arg(long, requires = "cluster")]
    pub(crate) chaos_seed: Option<u64>,
    /// (Internal) run as node ID of --cluster N.
    #[arg(long, hide = true, requires = "cluster")]
    node: Option<u16>,
}

/// The `--wal-sync` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WalSync {
    /// fdatasync before every event is acknowledged.
    Always,
    /// fdatasync at least every 10 ms.
    Interval,
    /// fdatasync only when the log is closed.
    Never,
}

/// One generated event.
#[derive(Debug, Clone, Copy)]
struct Event {
    user: u32,
    amount: u64,
    time_ms: u64,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn event(seed: u64, keys: u64, i: u64) -> Event {
    let r = splitmix64(seed ^ splitmix64(i));
    Event {
        user: (r % keys) as u32,
        amount: (r >> 32) % 1000,
        // A fixed epoch keeps every run identical; three ms per event.
        time_ms: 1_700_000_000_000 + i * 3,
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Running {
    count: u64,
    sum: u64,
    max: u64,
}

/// Aggregates fired windows: how many, total events, largest window.
struct FiredWindows;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct FiredAcc {
    windows: u64,
    events: u64,
    largest: u64,
}

impl AggregateFunction<u64> for FiredWindows {
    type Acc = FiredAcc;
    type Out = FiredAcc;

    fn create_accumulator(&self) -> FiredAcc {
        FiredAcc::default()
    }

    fn add(&self, count: &u64, mut acc: FiredAcc) -> FiredAcc {
        acc.windows += 1;
        acc.events += count;
        acc.largest = acc.largest.max(*count);
        acc
    }

    fn result(&self, acc: &FiredAcc) -> FiredAcc {
        *acc
    }
}

const WINDOW_MS: u64 = 1_000;

/// The key-group count of the demo job.
pub(crate) const MAX_PARALLELISM: u16 = highwater::core::DEFAULT_MAX_PARALLELISM;

/// For each key group, the smallest `u32` whose encoded form falls in it:
/// the key under which that partition's offset is kept.
fn partition_keys(ctx: &highwater::KeyedStateContext) -> Result<Vec<u32>> {
    let mut keys = vec![None; usize::from(MAX_PARALLELISM)];
    let mut missing = keys.len();
    let mut x = 0u32;
    while missing > 0 {
        let kg = usize::from(ctx.key_group(&x)?.0);
        if keys[kg].is_none() {
            keys[kg] = Some(x);
            missing -= 1;
        }
        x += 1;
    }
    Ok(keys.into_iter().flatten().collect())
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.keys == 0 || args.keys > u64::from(u32::MAX) {
        return Err(highwater::Error::InvalidArgument(
            "--keys must be in 1..=4294967295".into(),
        ));
    }
    let store_spec = match (&args.store, &args.dir) {
        (Some(s), _) => s.clone(),
        (None, Some(d)) => d.display().to_string(),
        (None, None) => {
            return Err(highwater::Error::InvalidArgument(
                "give --dir DIR or --store STORE".into(),
            ));
        }
    };
    if let Some(addr) = args.metrics_addr {
        crate::prometheus::serve(addr)?;
    }
    if args.parallelism > 1 {
        return run_parallel(&args, &store_spec);
    }
    if let Some(nodes) = args.cluster {
        return run_cluster(&args, nodes);
    }
    let rocksdb_dir =
        (args.rocksdb_dir.clone()).or_else(|| args.dir.as_ref().map(|d| d.join("rocksdb")));
    let backend = open_backend(
        args.backend,
        args.redis_url.as_deref(),
        &args.namespace,
        rocksdb_dir.as_deref(),
    )?;
    let wal_dir = match (&args.wal_dir, args.wal, &args.dir) {
        (Some(d), _, _) => Some(d.clone()),
        (None, true, Some(dir)) => Some(dir.join("wal")),
        (None, true, None) => {
            return Err(highwater::Error::InvalidArgument(
                "--wal with --store needs --wal-dir DIR".into(),
            ));
        }
        (None, false, _) => None,
    };
    let mut builder = StateManager::builder();
    if let Some(dir) = &wal_dir
        && !args.resume
        && dir.exists()
    {
        // A fresh run starts a fresh log: records of an earlier run must
        // not be replayed into this one.
        std::fs::remove_dir_all(dir)
            .map_err(|e| highwater::Error::io(format!("remove {}", dir.display()), e))?;
    }
    if let Some(dir) = &wal_dir {
        let policy = match args.wal_sync {
            WalSync::Always => SyncPolicy::Always,
            WalSync::Interval => SyncPolicy::Interval(Duration::from_millis(10)),
            WalSync::Never => SyncPolicy::Never,
        };
        let mut config = WalConfig::default().sync_policy(policy);
        // The store is already sealed by `open_store`; the log is sealed here.
        config.encryption = crate::target::keys().map(highwater::core::Cipher::new);
        builder = builder.wal(dir, config);
    }
    let manager = builder
        .backend(backend)
        .store(open_store(&store_spec, &args.namespace, true)?)
        .interval(Duration::from_millis(args.checkpoint_every.max(1)))
        .incremental(!args.full_only)
        .max_retained(3)
        .max_parallelism(MAX_PARALLELISM)
        .property("job", "highwater-demo")
        .build()?;
    // A Redis backend outlives the process: start from empty state unless a
    // checkpoint is restored (restore replaces the namespace itself).
    // (Not before a restore, which replaces it anyway: a clear would also
    // discard the files RocksDB's local recovery keeps for it.)
    let restored = if args.resume {
        manager.restore_latest()?
    } else {
        None
    };
    match restored {
        Some(info) => report_restore(&info),
        None => {
            manager.backend().clear()?;
            if args.resume {
                println!("no checkpoint in {store_spec}; starting at offset 0");
            }
        }
    }
    let done = process(
        &args,
        &manager,
        highwater::KeyGroupRange::all(MAX_PARALLELISM),
    )?;
    // A final checkpoint, so a resume after completion has nothing to redo.
    let last = manager.checkpoint()?.wait()?;
    manager.close()?;
    println!(
        "processed {} events in {:.2?} ({:.0} events/s), {} checkpoints, last {} ({}, {} entries)",
        done.processed,
        done.elapsed,
        done.processed as f64 / done.elapsed.as_secs_f64().max(1e-9),
        done.checkpoints + 1,
        last.id,
        last.kind,
        last.entries,
    );
    println!("checkpoints in {store_spec}");
    println!("digest: {}", digest(&[&manager])?);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn report_restore(info: &highwater::RestoreInfo) {
    let s = &info.stats;
    for f in &s.fallbacks {
        println!(
            "skipped unreadable checkpoint {}: {}",
            f.checkpoint, f.reason
        );
    }
    let from = match s.checkpoint {
        Some(id) => format!(
            "checkpoint {id} (chain of {}, {} entries)",
            s.chain_length, s.entries_loaded
        ),
        None => "the write-ahead log alone".to_string(),
    };
    println!(
        "resumed from {from} and {} logged changes",
        s.wal_records_replayed
    );
    println!(
        "recovery: {} artifacts ({} bytes) fetched, {} ranges decoded in parallel, {:.3}s ({:.1} MB/s)",
        s.artifacts_fetched,
        s.bytes_fetched,
        s.ranges,
        s.duration.as_secs_f64(),
        s.throughput_mb_s()
    );
    if s.artifacts_local > 0 {
        println!(
            "local recovery: {} files ({} bytes) taken from the local directory",
            s.artifacts_local, s.bytes_local
        );
    }
}

/// What one subtask's run did.
pub(crate) struct Processed {
    pub(crate) processed: u64,
    pub(crate) checkpoints: u64,
    pub(crate) elapsed: Duration,
}

/// Processes the events of the partitions (key groups) in `range` that the
/// state has not seen yet, in stream order, checkpointing between events.
pub(crate) fn process(
    args: &DemoArgs,
    manager: &StateManager,
    range: highwater::KeyGroupRange,
) -> Result<Processed> {
    let sources = manager.keyed_state("source")?;
    let source = sources.value_state::<u32, u64>(&ValueStateDescriptor::new("offset"))?;
    let aggregates = manager.keyed_state("aggregates")?;
    let running = aggregates.value_state::<u32, Running>(&ValueStateDescriptor::new("running"))?;
    let max_amount = aggregates
        .reducing_state::<u32, u64>(&ReducingStateDescriptor::new("max-amount", u64::max))?;
    let windows = manager.keyed_state("windows")?;
    let open = windows.map_state::<u32, u64, u64>(&MapStateDescriptor::new("open"))?;
    let fired = windows.aggregating_state::<u32, u64, FiredWindows>(
        &AggregatingStateDescriptor::new("fired", FiredWindows),
    )?;
    let partition_key = partition_keys(&sources)?;
    // Per partition of this subtask: the offset after its last event seen.
    let mut offsets = vec![0u64; usize::from(MAX_PARALLELISM)];
    for kg in range.iter() {
        offsets[usize::from(kg.0)] = source.get(&partition_key[usize::from(kg.0)])?.unwrap_or(0);
    }
    let first = range
        .iter()
        .map(|kg| offsets[usize::from(kg.0)])
        .min()
        .unwrap_or(args.events);
    let started = Instant::now();
    let mut done = Processed {
        processed: 0,
        checkpoints: 0,
        elapsed: Duration::ZERO,
    };
    for i in first..args.events {
        let e = event(args.seed, args.keys, i);
        let kg = usize::from(sources.key_group(&e.user)?.0);
        if !range.contains(highwater::KeyGroup(kg as u16)) || i < offsets[kg] {
            continue;
        }
        let mut r = running.get(&e.user)?.unwrap_or_default();
        r.count += 1;
        r.sum += e.amount;
        r.max = r.max.max(e.amount);
        running.update(&e.user, &r)?;
        max_amount.add(&e.user, e.amount)?;

        let window = e.time_ms - e.time_ms % WINDOW_MS;
        let n = open.get(&e.user, &window)?.unwrap_or(0);
        open.put(&e.user, &window, &(n + 1))?;
        for (start, count) in open.entries(&e.user)? {
            if start + WINDOW_MS <= e.time_ms {
                fired.add(&e.user, &count)?;
                open.remove(&e.user, &start)?;
            }
        }

        offsets[kg] = i + 1;
        source.update(&partition_key[kg], &offsets[kg])?;
        done.processed += 1;
        // One event's changes form one atomic log batch.
        manager.commit()?;
        // Between events: the state holds exactly each partition's events
        // before its offset.
        if manager.maybe_checkpoint()?.is_some() {
            done.checkpoints += 1;
            if args.metrics_addr.is_some() {
                manager.record_backend_metrics();
            }
        }
    }
    done.elapsed = started.elapsed();
    Ok(done)
}

/// `--cluster N`: the demo on N node processes (see `cluster_demo.rs`).
fn run_cluster(args: &DemoArgs, nodes: u16) -> Result<ExitCode> {
    let Some(dir) = &args.dir else {
        return Err(highwater::Error::InvalidArgument(
            "--cluster needs --dir DIR (the shared store, the nodes' data)".into(),
        ));
    };
    if args.backend != BackendKind::Memory || args.wal || args.wal_dir.is_some() {
        return Err(highwater::Error::InvalidArgument(
            "--cluster runs on the memory backend without a write-ahead log".into(),
        ));
    }
    #[cfg(feature = "raft")]
    {
        match args.node {
            Some(id) if (1..=nodes).contains(&id) => {
                crate::cluster_demo::run_node(args, dir, nodes, id)
            }
            Some(id) => Err(highwater::Error::InvalidArgument(format!(
                "--node {id} is not in 1..={nodes}"
            ))),
            None => crate::cluster_demo::run(args, dir, nodes),
        }
    }
    #[cfg(not(feature = "raft"))]
    {
        let _ = (dir, nodes);
        Err(crate::target::not_built(
            "`highwater demo --cluster`",
            "raft",
        ))
    }
}

/// `--parallelism N`: N subtasks of one process, one thread and one memory
/// backend each, checkpointing together into one store.
fn run_parallel(args: &DemoArgs, store_spec: &str) -> Result<ExitCode> {
    if args.backend != BackendKind::Memory || args.wal || args.wal_dir.is_some() {
        return Err(highwater::Error::InvalidArgument(
            "--parallelism above 1 runs on the memory backend without a write-ahead log".into(),
        ));
    }
    let p = args.parallelism;
    let store = open_store(store_spec, &args.namespace, true)?;
    let coordinator = highwater::LocalCoordinator::open(
        store.clone(),
        p,
        Some(Duration::from_millis(args.checkpoint_every.max(1))),
    )?;
    let mut managers = Vec::new();
    for i in 0..p {
        let m = StateManager::builder()
            .backend(std::sync::Arc::new(highwater::memory::MemoryBackend::new()))
            .store(store.clone())
            .incremental(!args.full_only)
            .max_retained(3)
            .max_parallelism(MAX_PARALLELISM)
            .property("job", "highwater-demo")
            .cluster(coordinator.participant(i)?, p, i)
            .build()?;
        if args.resume {
            match m.restore_latest()? {
                Some(info) if i == 0 => report_restore(&info),
                None if i == 0 => {
                    println!("no global checkpoint in {store_spec}; starting at offset 0")
                }
                _ => {}
            }
        }
        managers.push(m);
    }
    let ready = std::sync::Barrier::new(usize::from(p));
    let results: Vec<Result<Processed>> = std::thread::scope(|s| {
        let workers: Vec<_> = managers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (coordinator, ready) = (&coordinator, &ready);
                s.spawn(move || {
                    let range =
                        highwater::KeyGroupRange::for_subtask(MAX_PARALLELISM, p, i as u16)?;
                    let done = process(args, m, range)?;
                    // A final global checkpoint once every subtask is done.
                    ready.wait();
                    if i == 0 {
                        coordinator.trigger();
                    }
                    loop {
                        if let Some(h) = m.maybe_checkpoint()? {
                            h.wait()?;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(highwater::Error::Internal("a subtask panicked".into()))
                })
            })
            .collect()
    });
    let mut processed = 0;
    let mut elapsed = Duration::ZERO;
    for r in results {
        let r = r?;
        processed += r.processed;
        elapsed = elapsed.max(r.elapsed);
    }
    let last = coordinator.completed(1);
    println!(
        "processed {processed} events in {elapsed:.2?} on {p} subtasks, last global checkpoint {}",
        last.first().map_or("none".into(), |g| g.id.to_string())
    );
    println!("checkpoints in {store_spec}");
    let refs: Vec<&StateManager> = managers.iter().collect();
    println!("digest: {}", digest(&refs)?);
    for m in &managers {
        m.close()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// xxh3-128 over every (key, value) of the backends in key order, each
/// length-prefixed so that different splits cannot collide. Subtasks hold
/// disjoint keys, so the digest of N subtasks' state is the digest of the
/// same state in one backend.
pub(crate) fn digest(managers: &[&StateManager]) -> Result<String> {
    // Encoded keys start with a big-endian key group below 2^15.
    let mut entries = Vec::new();
    for m in managers {
        entries.extend(m.backend().scan_range(&[], &[0xff])?);
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, v) in &entries {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    Ok(format!("{:032x}", h.digest128()))
}
