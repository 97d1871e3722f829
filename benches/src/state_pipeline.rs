//! Suite `state`, the pipeline's own costs (each against a baseline in the
//! same run):
//!
//! - `logged_put`: puts through the write-ahead log's `LoggedBackend` over a
//!   `MemoryBackend`, one `commit()` per event of [`PUTS_PER_EVENT`] puts,
//!   with the log's buffered `SyncPolicy::Never` (what the log costs the
//!   processing thread, not the disk), against the same puts on the bare
//!   backend. Median of several rounds, ops/s.
//! - `logged_put_event_work`: the same, with [`EVENT_WORK`] steps of
//!   register-only arithmetic before each put on both sides (about 20 ns,
//!   far less than decoding a real event). It shows what the tight loop
//!   hides: the bare backend's throughput there comes from the CPU
//!   overlapping one put's cache misses with the next put; any work between
//!   puts, the log's included, takes that overlap away. The work itself
//!   costs the logged path only its own nanoseconds, and the bare backend
//!   several times more.
//! - `checkpoint_latency_small`: a checkpoint of about 1 MB of state with
//!   1 % of its keys changed, into a local directory store (fsync'd), from
//!   `checkpoint()` until the manifest is durable, against writing the same
//!   number of files of the same sizes (the artifacts the checkpoint wrote
//!   plus its manifest) with an `fdatasync` each and a directory `fsync`
//!   after each, directly. Median of several checkpoints, ms.

use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::{CheckpointStore, StateBackend, SystemClock, load_manifest};
use highwater::memory::MemoryBackend;
use highwater::wal::{LoggedBackend, SyncPolicy, Wal, WalConfig};
use highwater::{CheckpointConfig, CheckpointKind, StateManager};

use crate::util::{self, Rng, median};
use crate::{Metric, Result};

/// State changes one event makes in the `logged_put` measurement.
pub const PUTS_PER_EVENT: usize = 8;

/// Steps of [`event_work`] before each put in `logged_put_event_work`.
pub const EVENT_WORK: u32 = 40;

/// Keys of the small state of `checkpoint_latency_small`: about 1 MB with
/// 100-byte values.
const SMALL_KEYS: u64 = 8_000;

/// Runs both measurements and appends their metrics.
pub fn run(quick: bool, metrics: &mut Vec<Metric>) -> Result {
    let n = if quick { 200_000 } else { 1_000_000 };
    logged_put(n, 5, 0, metrics)?;
    logged_put(n, 5, EVENT_WORK, metrics)?;
    checkpoint_latency_small(if quick { 10 } else { 30 }, metrics)
}

fn key(i: u64) -> Vec<u8> {
    let user = format!("user-{i:08}");
    highwater::core::StateKey {
        key_group: highwater::core::key_group_for(user.as_bytes(), 128),
        operator: "bench",
        state: "count",
        key: user.as_bytes(),
        namespace: b"",
        user_key: b"",
    }
    .encode()
    .expect("a valid state key")
}

/// `steps` multiply-rotate steps on a register: CPU work that touches no
/// memory, standing in for what an engine does between two state changes.
fn event_work(seed: u64, steps: u32) -> u64 {
    let mut x = seed;
    for _ in 0..steps {
        x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(7));
    }
    x
}

/// Puts every key once per round, with `work` steps of [`event_work`]
/// before each put, committing after each event, and returns ops/s.
fn put_round(
    b: &dyn StateBackend,
    keys: &[Vec<u8>],
    value: &[u8],
    work: u32,
    commit: &dyn Fn(),
) -> f64 {
    let t = Instant::now();
    for (n, k) in keys.iter().enumerate() {
        if work > 0 {
            black_box(event_work(n as u64, work));
        }
        b.put(black_box(k), value).expect("memory backend put");
        if (n + 1) % PUTS_PER_EVENT == 0 {
            commit();
        }
    }
    commit();
    keys.len() as f64 / t.elapsed().as_secs_f64()
}

fn logged_put(n: u64, rounds: usize, work: u32, metrics: &mut Vec<Metric>) -> Result {
    let name = if work == 0 {
        "logged_put"
    } else {
        "logged_put_event_work"
    };
    println!("state: {name} over {n} keys, {rounds} rounds …");
    let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
    let value = [7u8; 100];
    let dir = tempfile::tempdir()?;
    let config = WalConfig {
        sync_policy: SyncPolicy::Never,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), config)?;
    let logged = LoggedBackend::new(
        Arc::new(MemoryBackend::new()),
        Arc::new(wal),
        Arc::new(SystemClock),
    );
    let bare = MemoryBackend::new();
    let commit_logged = || logged.commit().expect("wal commit");
    let nothing = || {};
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for r in 0..=rounds {
        // Alternate who goes first; round 0 is a warm-up.
        let (a, b) = if r % 2 == 0 {
            let a = put_round(&logged, &keys, &value, work, &commit_logged);
            (a, put_round(&bare, &keys, &value, work, &nothing))
        } else {
            let b = put_round(&bare, &keys, &value, work, &nothing);
            (put_round(&logged, &keys, &value, work, &commit_logged), b)
        };
        if r > 0 {
            ours.push(a);
            theirs.push(b);
        }
        // Keep the log from growing without bound between rounds.
        logged.wal().sync()?;
        let last = logged.wal().last_lsn();
        logged.wal().truncate_before(last)?;
    }
    let work_note = if work == 0 {
        String::new()
    } else {
        format!(", {work} steps of register work before each put on both sides")
    };
    let m = Metric::versus(
        name,
        median(&ours),
        "ops/s",
        &format!(
            "the bare MemoryBackend, same puts ({PUTS_PER_EVENT} per committed event, SyncPolicy::Never{work_note})"
        ),
        median(&theirs),
        true,
    );
    println!(
        "state: {name}: {} ops/s vs {} ops/s bare",
        util::human(m.value),
        util::human(median(&theirs))
    );
    if work > 0 {
        let t = Instant::now();
        for i in 0..n {
            black_box(event_work(i, work));
        }
        println!(
            "state: {name}: the work alone takes {:.1} ns per put",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
    metrics.push(m);
    Ok(())
}

fn checkpoint_latency_small(reps: usize, metrics: &mut Vec<Metric>) -> Result {
    println!("state: small checkpoints (≈1 MB of state, 1% changed), {reps} checkpoints …");
    let tmp = tempfile::tempdir()?;
    let store_dir = tmp.path().join("store");
    let store: Arc<dyn CheckpointStore> = Arc::new(ObjectCheckpointStore::local(&store_dir)?);
    let backend = Arc::new(MemoryBackend::new());
    let mut config = CheckpointConfig::default();
    config.max_chain_before_full = reps + 2;
    let m = StateManager::builder()
        .backend(backend.clone())
        .store(store.clone())
        .config(config)
        .build()?;
    let keys: Vec<Vec<u8>> = (0..SMALL_KEYS).map(key).collect();
    let mut rng = Rng::new(0x5eed_0002);
    let mut value = [0u8; 100];
    for k in &keys {
        value[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        backend.put(k, &value)?;
    }
    m.checkpoint()?.wait()?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let baseline_dir = tmp.path().join("baseline");
    std::fs::create_dir_all(&baseline_dir)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut files_per_checkpoint = Vec::new();
    for rep in 0..reps {
        for _ in 0..SMALL_KEYS / 100 {
            let k = &keys[rng.below(SMALL_KEYS) as usize];
            value[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            backend.put(k, &value)?;
        }
        let t = Instant::now();
        let info = m.checkpoint()?.wait()?;
        ours.push(t.elapsed());
        if info.kind != CheckpointKind::Incremental {
            return Err(format!("expected an incremental checkpoint, got {}", info.kind).into());
        }
        // The same writes, directly: every artifact the checkpoint wrote
        // and its manifest, each synced with its directory.
        let manifest = rt.block_on(load_manifest(&*store, info.id))?;
        let mut sizes: Vec<u64> = manifest
            .own_artifacts()
            .iter()
            .map(|a| a.stored_bytes)
            .take(info.artifacts - info.artifacts_reused)
            .collect();
        sizes.push(manifest.encode()?.len() as u64);
        files_per_checkpoint.push(sizes.len() as f64);
        theirs.push(synced_writes(&baseline_dir, rep, &sizes)?);
    }
    let ours_ms: Vec<f64> = ours.iter().map(|d| util::ms(*d)).collect();
    let theirs_ms: Vec<f64> = theirs.iter().map(|d| util::ms(*d)).collect();
    let m = Metric::versus(
        "checkpoint_latency_small",
        median(&ours_ms),
        "ms",
        &format!(
            "the same {} files written with fdatasync and a directory fsync each",
            median(&files_per_checkpoint)
        ),
        median(&theirs_ms),
        false,
    );
    println!(
        "state: checkpoint_latency_small: {:.2} ms vs {:.2} ms for the same synced writes",
        m.value,
        median(&theirs_ms)
    );
    metrics.push(m);
    Ok(())
}

/// Writes one file per size into `dir`, each synced and followed by a sync
/// of the directory; returns the wall time.
fn synced_writes(dir: &Path, rep: usize, sizes: &[u64]) -> Result<Duration> {
    let data = vec![0x5au8; sizes.iter().copied().max().unwrap_or(0) as usize];
    let t = Instant::now();
    for (i, &size) in sizes.iter().enumerate() {
        let path = dir.join(format!("{rep}-{i}"));
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&data[..size as usize])?;
        f.sync_data()?;
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(t.elapsed())
}
