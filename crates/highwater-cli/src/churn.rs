//! `highwater churn` (hidden): a deterministic checkpoint, merge and
//! garbage-collection workload over a local store, the child process of the
//! merge crash test (`tests/merge_crash.rs`), which kills it at random
//! moments.
//!
//! Step `i` of the workload is a pure function of the seed and `i` (see
//! [`step`]): it puts or deletes one key of the value states `left.v` and
//! `right.v` (the two operators hold identical state, so their chunks are
//! stored once) and records the next step in `source.offset`. A run restores
//! the newest checkpoint, collects garbage (removing what a killed run left
//! behind), then loops: some steps, a checkpoint (background merges on,
//! chains merged at three layers), now and then an on-demand merge and a
//! retention pass, printing a line per event.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use highwater::cloud::ObjectCheckpointStore;
use highwater::memory::MemoryBackend;
use highwater::merge::ChunkConfig;
use highwater::{CheckpointConfig, Result, StateManager, ValueStateDescriptor};

/// Arguments of `highwater churn`.
#[derive(Debug, Args)]
pub struct ChurnArgs {
    /// Checkpoint directory.
    #[arg(long)]
    dir: PathBuf,
    /// Seed of the workload.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Stop after this step (the run then collects garbage and exits).
    #[arg(long, default_value_t = u64::MAX)]
    until: u64,
    /// Only collect garbage (keeping 3 checkpoints) and exit.
    #[arg(long)]
    gc_only: bool,
}

/// Keys of the workload.
pub const KEYS: u64 = 300;
/// Steps between checkpoints.
pub const STEPS_PER_CHECKPOINT: u64 = 25;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Step `i`: the key it writes and its new value (`None` = deleted).
pub fn step(seed: u64, i: u64) -> (u32, Option<String>) {
    let r = splitmix64(seed ^ splitmix64(i));
    let key = (r % KEYS) as u32;
    if (r >> 40).is_multiple_of(7) {
        (key, None)
    } else {
        let pad = "x".repeat(((r >> 20) % 64) as usize);
        (key, Some(format!("v{i}-{pad}")))
    }
}

/// The configuration of the workload's manager: small chunks (so chunking
/// and chunk reuse are exercised on little state) and merges at 3 layers.
pub fn config() -> CheckpointConfig {
    let mut c = CheckpointConfig::default();
    c.max_retained = 3;
    c.max_chain_before_full = 6;
    c.key_groups_per_artifact = 32;
    c.encode_threads = 2;
    c.background_merge = true;
    c.merger.merge_at_chain_length = 3;
    c.merger.parallel_threads = 2;
    c.merger.chunking = ChunkConfig {
        min_bytes: 256,
        target_bytes: 1024,
        max_bytes: 4096,
    };
    c
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Stored artifacts no manifest references.
fn unreferenced(store: &ObjectCheckpointStore) -> Result<usize> {
    let rt = crate::inspect::runtime()?;
    rt.block_on(async {
        use highwater::CheckpointStore;
        let mut referenced = std::collections::HashSet::new();
        for id in store.list_manifests().await? {
            let m = highwater::core::load_manifest(store, id).await?;
            referenced.extend(m.artifacts().map(|a| a.id));
        }
        Ok(store
            .list_artifacts()
            .await?
            .into_iter()
            .filter(|id| !referenced.contains(id))
            .count())
    })
}

/// Runs the workload.
pub fn run(args: ChurnArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| highwater::Error::io("create the churn directory", e))?;
    let store = Arc::new(ObjectCheckpointStore::local(&args.dir)?);
    let manager = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store.clone())
        .config(config())
        .build()?;
    if args.gc_only {
        let r = manager.apply_retention()?;
        say(format_args!("gc deleted {}", r.artifacts_deleted));
        return Ok(ExitCode::SUCCESS);
    }
    let desc = ValueStateDescriptor::new("v");
    let left = manager
        .keyed_state("left")?
        .value_state::<u32, String>(&desc)?;
    let right = manager
        .keyed_state("right")?
        .value_state::<u32, String>(&desc)?;
    let offset = manager
        .keyed_state("source")?
        .value_state::<u8, u64>(&ValueStateDescriptor::new("offset"))?;
    let restored = manager.restore_latest()?;
    let mut next = offset.get(&0)?.unwrap_or(0);
    say(format_args!(
        "start checkpoint={} step={next}",
        restored.and_then(|r| r.stats.checkpoint).map_or(0, |c| c.0)
    ));
    // Collect what a killed run left, then count what is still unreferenced
    // (nothing is in flight now, so it must be nothing).
    let r = manager.apply_retention()?;
    let leftover = unreferenced(&store)?;
    say(format_args!(
        "startup gc deleted {} leftover {leftover}",
        r.artifacts_deleted
    ));
    let mut checkpoints = 0u64;
    while next < args.until {
        for _ in 0..STEPS_PER_CHECKPOINT {
            let (key, value) = step(args.seed, next);
            match &value {
                Some(v) => {
                    left.update(&key, v)?;
                    right.update(&key, v)?;
                }
                None => {
                    left.clear(&key)?;
                    right.clear(&key)?;
                }
            }
            next += 1;
        }
        offset.update(&0, &next)?;
        let info = manager.checkpoint()?.wait()?;
        checkpoints += 1;
        say(format_args!(
            "checkpoint {} step={next} kind={} chain={} merged_base={:?}",
            info.id, info.kind, info.chain_length, info.merged_base
        ));
        if checkpoints.is_multiple_of(5) {
            let stats = manager.compact()?;
            say(format_args!(
                "compacted {:?}",
                stats.map(|s| s.layers_in).unwrap_or(0)
            ));
        }
        if checkpoints.is_multiple_of(7) {
            let r = manager.apply_retention()?;
            say(format_args!("gc deleted {}", r.artifacts_deleted));
        }
    }
    manager.wait_merges();
    let r = manager.apply_retention()?;
    say(format_args!(
        "done step={next} gc deleted {}",
        r.artifacts_deleted
    ));
    Ok(ExitCode::SUCCESS)
}
