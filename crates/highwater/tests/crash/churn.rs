//! The churn workload: a deterministic checkpoint, merge and
//! garbage-collection workload over a local store, and the checks of what
//! it leaves behind.
//!
//! Step `i` of the workload is a pure function of the seed and `i` (see
//! `step`): it puts or deletes one key of the value states `left.v` and
//! `right.v` (the two operators hold identical state, so their chunks are
//! stored once) and records the next step in `source.offset`. A run
//! restores the newest checkpoint, collects garbage (removing what a killed
//! run left behind), then loops: some steps, a checkpoint (background merges
//! on, chains merged at three layers), now and then an on-demand merge and a
//! retention pass, printing a line per event.
//!
//! It is the child `churn` of the merge crash test (`merge.rs` beside this
//! file), which kills it at random moments. The CLI's compact test
//! (`crates/highwater-cli/tests/compact.rs`) includes this file to build a
//! store with chains and deduplicated chunks in-process, and checks it with
//! `check_store`.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::{ArtifactId, load_manifest};
use highwater::memory::MemoryBackend;
use highwater::merge::ChunkConfig;
use highwater::{CheckpointConfig, CheckpointStore, Result, StateManager, ValueStateDescriptor};

/// The child's name (`highwater_testkit::crash::child`).
pub const CHILD: &str = "churn";
/// The workload's default seed.
pub const SEED: u64 = 7;
/// Keys of the workload.
pub const KEYS: u64 = 300;
/// Steps between checkpoints.
pub const STEPS_PER_CHECKPOINT: u64 = 25;

/// SplitMix64's finaliser: the workload's pseudo-random function.
pub fn splitmix64(mut x: u64) -> u64 {
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

/// The workload's state after `steps` steps.
pub fn expected(seed: u64, steps: u64) -> BTreeMap<u32, String> {
    let mut m = BTreeMap::new();
    for i in 0..steps {
        match step(seed, i) {
            (k, Some(v)) => {
                m.insert(k, v);
            }
            (k, None) => {
                m.remove(&k);
            }
        }
    }
    m
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

/// What one run of the workload does.
#[derive(Debug, Clone)]
pub struct Churn {
    /// Checkpoint directory.
    pub dir: PathBuf,
    /// Seed of the workload.
    pub seed: u64,
    /// Stop after this step (the run then collects garbage and returns).
    pub until: u64,
    /// Only collect garbage (keeping 3 checkpoints) and return.
    pub gc_only: bool,
}

impl Churn {
    /// A run over `dir` with the default seed, until it is killed.
    pub fn new(dir: &Path) -> Churn {
        Churn {
            dir: dir.to_path_buf(),
            seed: SEED,
            until: u64::MAX,
            gc_only: false,
        }
    }

    /// The child's arguments for this run.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            self.dir.display().to_string(),
            self.seed.to_string(),
            self.until.to_string(),
        ];
        if self.gc_only {
            a.push("gc-only".into());
        }
        a
    }

    /// Parses [`Churn::args`].
    pub fn parse(args: &[String]) -> Option<Churn> {
        let gc_only = match args.get(3).map(String::as_str) {
            None => false,
            Some("gc-only") => true,
            Some(_) => return None,
        };
        Some(Churn {
            dir: PathBuf::from(args.first()?),
            seed: args.get(1)?.parse().ok()?,
            until: args.get(2)?.parse().ok()?,
            gc_only,
        })
    }
}

/// The child `churn`: arguments as [`Churn::args`] writes them.
pub fn child(args: &[String]) -> ExitCode {
    let Some(churn) = Churn::parse(args) else {
        eprintln!("usage: {CHILD} <dir> <seed> <until> [gc-only]; got {args:?}");
        return ExitCode::from(2);
    };
    match run(&churn) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{CHILD}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs `f` on a current-thread runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

/// Stored artifacts, artifacts referenced by a manifest, and manifests.
pub fn census(
    store: &ObjectCheckpointStore,
) -> Result<(HashSet<ArtifactId>, HashSet<ArtifactId>, usize)> {
    block_on(async {
        let stored: HashSet<_> = store.list_artifacts().await?.into_iter().collect();
        let mut referenced = HashSet::new();
        let ids = store.list_manifests().await?;
        for id in &ids {
            let m = load_manifest(store, *id).await?;
            referenced.extend(m.artifacts().map(|a| a.id));
        }
        Ok((stored, referenced, ids.len()))
    })
}

/// Runs the workload.
pub fn run(args: &Churn) -> Result<()> {
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
        return Ok(());
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
    let (stored, referenced, _) = census(&store)?;
    let leftover = stored.difference(&referenced).count();
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
    Ok(())
}

/// Checks every retained checkpoint of the workload (`seed`) in `dir`: no
/// manifest points at a missing artifact, the store verifies, and every
/// checkpoint restores to exactly the workload's state at the step it
/// recorded. Returns how many checkpoints were checked.
pub fn check_store(dir: &Path, seed: u64, round: usize) -> usize {
    let store = Arc::new(ObjectCheckpointStore::local(dir).unwrap());
    let (stored, referenced, _) = census(&store).unwrap();
    let missing: Vec<_> = referenced.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "round {round}: manifests point at missing artifacts: {missing:?}"
    );
    for v in block_on(highwater::verify_store(&*store)).unwrap() {
        assert!(
            v.is_sound(),
            "round {round}: checkpoint {} unsound: {:?}",
            v.checkpoint,
            v.problems
        );
    }
    let manager = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store.clone())
        .build()
        .unwrap();
    let desc = ValueStateDescriptor::new("v");
    let left = manager
        .keyed_state("left")
        .unwrap()
        .value_state::<u32, String>(&desc)
        .unwrap();
    let right = manager
        .keyed_state("right")
        .unwrap()
        .value_state::<u32, String>(&desc)
        .unwrap();
    let offset = manager
        .keyed_state("source")
        .unwrap()
        .value_state::<u8, u64>(&ValueStateDescriptor::new("offset"))
        .unwrap();
    let ids = block_on(store.list_manifests()).unwrap();
    for id in &ids {
        manager
            .restore(*id)
            .unwrap_or_else(|e| panic!("round {round}: restore {id}: {e}"));
        let steps = offset
            .get(&0)
            .unwrap()
            .expect("every checkpoint records its step");
        let want = expected(seed, steps);
        for k in 0..KEYS as u32 {
            let w = want.get(&k).cloned();
            assert_eq!(
                left.get(&k).unwrap(),
                w,
                "round {round}: checkpoint {id} step {steps} left key {k}"
            );
            assert_eq!(
                right.get(&k).unwrap(),
                w,
                "round {round}: checkpoint {id} step {steps} right key {k}"
            );
        }
    }
    ids.len()
}
