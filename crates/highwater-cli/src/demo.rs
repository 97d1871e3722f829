//! `highwater demo`: a deterministic stateful pipeline with checkpoints.
//!
//! The source is a generated event stream: event `i` is a pure function of
//! the seed and `i`. Three operators keep keyed state:
//!
//! - `source`: the source offset (the next event to read), so a restore
//!   resumes exactly after the last event the checkpointed state includes;
//! - `aggregates`: per user, a running count/sum/max (value state) and a
//!   running maximum amount (reducing state);
//! - `windows`: per user, tumbling one-second event-time windows counting
//!   events (map state: window start → count); a window fires when a later
//!   event of the same user passes its end, folding its count into a
//!   per-user aggregate of fired windows (aggregating state).
//!
//! Checkpoints are taken between events, so each one is a consistent cut.
//! The final digest hashes every entry of the backend in key order.

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
    events: u64,
    /// Checkpoint interval in milliseconds (wall clock).
    #[arg(long, default_value_t = 200)]
    checkpoint_every: u64,
    /// Restore the newest checkpoint in DIR and continue from its offset.
    #[arg(long)]
    resume: bool,
    /// Number of distinct users (keys).
    #[arg(long, default_value_t = 1_000)]
    keys: u64,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Take full checkpoints only.
    #[arg(long)]
    full_only: bool,
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
        builder = builder.wal(dir, WalConfig::default().sync_policy(policy));
    }
    let manager = builder
        .backend(backend)
        .store(open_store(&store_spec, &args.namespace, true)?)
        .interval(Duration::from_millis(args.checkpoint_every.max(1)))
        .incremental(!args.full_only)
        .max_retained(3)
        .property("job", "highwater-demo")
        .build()?;

    let source = manager
        .keyed_state("source")?
        .value_state::<(), u64>(&ValueStateDescriptor::new("offset"))?;
    let aggregates = manager.keyed_state("aggregates")?;
    let running = aggregates.value_state::<u32, Running>(&ValueStateDescriptor::new("running"))?;
    let max_amount = aggregates
        .reducing_state::<u32, u64>(&ReducingStateDescriptor::new("max-amount", u64::max))?;
    let windows = manager.keyed_state("windows")?;
    let open = windows.map_state::<u32, u64, u64>(&MapStateDescriptor::new("open"))?;
    let fired = windows.aggregating_state::<u32, u64, FiredWindows>(
        &AggregatingStateDescriptor::new("fired", FiredWindows),
    )?;

    let mut offset = 0;
    // A Redis backend outlives the process: start from empty state unless a
    // checkpoint is restored (restore replaces the namespace itself).
    manager.backend().clear()?;
    if args.resume {
        match manager.restore_latest()? {
            Some(info) => {
                offset = source.get(&())?.unwrap_or(0);
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
                    "resumed from {from} and {} logged changes at offset {offset}",
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
            }
            None => println!("no checkpoint in {store_spec}; starting at offset 0"),
        }
    }

    let started = Instant::now();
    let mut checkpoints = 0u64;
    let first = offset;
    while offset < args.events {
        let e = event(args.seed, args.keys, offset);
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

        offset += 1;
        source.update(&(), &offset)?;
        // One event's changes form one atomic log batch.
        manager.commit()?;
        // Between events: the state holds exactly events [0, offset).
        if manager.maybe_checkpoint()?.is_some() {
            checkpoints += 1;
            if args.metrics_addr.is_some() {
                manager.record_backend_metrics();
            }
        }
    }
    let elapsed = started.elapsed();
    // A final checkpoint, so a resume after completion has nothing to redo.
    let last = manager.checkpoint()?.wait()?;
    checkpoints += 1;
    manager.close()?;

    let processed = offset - first;
    println!(
        "processed {processed} events in {:.2?} ({:.0} events/s), {checkpoints} checkpoints, last {} ({}, {} entries)",
        elapsed,
        processed as f64 / elapsed.as_secs_f64().max(1e-9),
        last.id,
        last.kind,
        last.entries,
    );
    println!("checkpoints in {store_spec}");
    println!("digest: {}", digest(&manager)?);
    Ok(ExitCode::SUCCESS)
}

/// xxh3-128 over every (key, value) of the backend in key order, each
/// length-prefixed so that different splits cannot collide.
fn digest(manager: &StateManager) -> Result<String> {
    // Encoded keys start with a big-endian key group below 2^15.
    let entries = manager.backend().scan_range(&[], &[0xff])?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, v) in &entries {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    Ok(format!("{:032x}", h.digest128()))
}
