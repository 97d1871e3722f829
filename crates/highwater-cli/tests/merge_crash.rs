//! The merge crash test: `highwater churn` (checkpoints with background
//! merges, on-demand merges and retention passes in a loop over a local
//! store) is SIGKILLed at random moments, ≥ 30 rounds. After every kill:
//! every manifest's artifacts exist, the store verifies clean, and every
//! retained checkpoint restores to exactly the workload's state at the step
//! it recorded. Artifacts orphaned by a kill are gone once the next run has
//! collected garbage, and a final collection leaves only referenced
//! artifacts.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::{ArtifactId, load_manifest};
use highwater::memory::MemoryBackend;
use highwater::{CheckpointStore, StateManager, ValueStateDescriptor};

const BIN: &str = env!("CARGO_BIN_EXE_highwater");
const SEED: u64 = 7;
const KEYS: u64 = 300;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The workload's step `i`, as `src/churn.rs` defines it.
fn step(i: u64) -> (u32, Option<String>) {
    let r = splitmix64(SEED ^ splitmix64(i));
    let key = (r % KEYS) as u32;
    if (r >> 40).is_multiple_of(7) {
        (key, None)
    } else {
        let pad = "x".repeat(((r >> 20) % 64) as usize);
        (key, Some(format!("v{i}-{pad}")))
    }
}

/// The workload's state after `steps` steps.
fn expected(steps: u64) -> BTreeMap<u32, String> {
    let mut m = BTreeMap::new();
    for i in 0..steps {
        match step(i) {
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

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// (stored artifacts, artifacts referenced by a manifest, manifests).
fn census(store: &ObjectCheckpointStore) -> (HashSet<ArtifactId>, HashSet<ArtifactId>, usize) {
    block_on(async {
        let stored: HashSet<_> = store.list_artifacts().await.unwrap().into_iter().collect();
        let mut referenced = HashSet::new();
        let ids = store.list_manifests().await.unwrap();
        for id in &ids {
            let m = load_manifest(store, *id).await.unwrap();
            referenced.extend(m.artifacts().map(|a| a.id));
        }
        (stored, referenced, ids.len())
    })
}

/// Checks every retained checkpoint of `dir`; returns how many.
fn check_store(dir: &Path, round: usize) -> usize {
    let store = Arc::new(ObjectCheckpointStore::local(dir).unwrap());
    let (stored, referenced, _) = census(&store);
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
        let want = expected(steps);
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

fn churn(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("churn")
        .arg("--dir")
        .arg(dir)
        .arg("--seed")
        .arg(SEED.to_string());
    c
}

#[test]
fn sigkill_during_checkpoints_merges_and_gc_leaves_every_retained_checkpoint_restorable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let started = Instant::now();
    #[expect(
        clippy::disallowed_methods,
        reason = "a random seed, not the time of state"
    )]
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill-schedule seed: {seed}");
    let mut rng = seed;
    let (mut kills, mut orphans_seen, mut checked) = (0, 0usize, 0usize);
    let mut orphans: HashSet<ArtifactId> = HashSet::new();
    let mut startup_collected = 0usize;
    for round in 0..32 {
        rng = splitmix64(rng);
        let after = Duration::from_millis(40 + rng % 400);
        let mut child = churn(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn highwater churn");
        std::thread::sleep(after);
        if child.try_wait().unwrap().is_none() {
            // SIGKILL: no destructors, no flush, no chance to finish a write.
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let store = ObjectCheckpointStore::local(&dir).unwrap();
        let (stored, referenced, _) = census(&store);
        // The run's first act is collecting garbage; once it got that far,
        // nothing unreferenced may remain of the previous kill's work.
        if let Some(line) = out.lines().find(|l| l.starts_with("startup gc deleted")) {
            let mut words = line.split_whitespace();
            let deleted: usize = words.nth(3).unwrap().parse().unwrap();
            let leftover: usize = words.nth(1).unwrap().parse().unwrap();
            assert_eq!(leftover, 0, "round {round}: {line}");
            if !orphans.is_empty() {
                assert!(
                    deleted > 0,
                    "round {round}: {} orphans were not collected: {line}",
                    orphans.len()
                );
                startup_collected += deleted;
            }
        }
        orphans = stored.difference(&referenced).copied().collect();
        orphans_seen += orphans.len();
        checked += check_store(&dir, round);
    }
    assert!(kills >= 30, "only {kills} runs were killed");
    // The next run's collection removes every leftover of the killed runs.
    let out = churn(&dir).arg("--gc-only").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = ObjectCheckpointStore::local(&dir).unwrap();
    let (stored, referenced, manifests) = census(&store);
    assert_eq!(
        stored, referenced,
        "unreferenced artifacts after the final collection"
    );
    assert!(manifests > 0);
    check_store(&dir, usize::MAX);
    assert!(
        orphans_seen == 0 || startup_collected > 0,
        "kills orphaned artifacts but no run collected any"
    );
    println!(
        "{kills} kills, {checked} checkpoint restores checked, {orphans_seen} orphaned artifacts seen, {startup_collected} collected by the next run, {:?}",
        started.elapsed()
    );
}

/// `highwater compact` merges the newest chain into a new full checkpoint
/// with the same state, log position and properties plus `compacted_from`;
/// `highwater gc --keep 1` then leaves that checkpoint alone, with every
/// other manifest and every unreferenced artifact gone; `inspect --json`
/// shows the chains.
#[test]
fn compact_then_gc_keeps_the_state_and_drops_everything_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let out = churn(&dir).arg("--until").arg("600").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = ObjectCheckpointStore::local(&dir).unwrap();
    let ids = block_on(store.list_manifests()).unwrap();
    let newest = *ids.last().unwrap();
    let source = block_on(load_manifest(&store, newest)).unwrap();
    assert!(source.layers.len() > 1, "the workload ends on a chain");

    let inspect = Command::new(BIN)
        .arg("inspect")
        .arg(&dir)
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let rows = v["checkpoints"].as_array().unwrap();
    let row = rows.iter().find(|r| r["id"] == newest.0).unwrap();
    assert_eq!(row["depth"], source.layers.len() - 1);
    assert_eq!(row["base"], source.layers[0].checkpoint_id.0);
    // left and right hold identical state: their chunks are stored once.
    assert!(row["dedup_saved_bytes"].as_u64().unwrap() > 0, "{row}");
    assert!(v["storage"]["dedup_saved_bytes"].as_u64().unwrap() > 0);

    let out = Command::new(BIN)
        .arg("compact")
        .arg(&dir)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let compacted = highwater::CheckpointId(v["compact"]["compacted"].as_u64().unwrap());
    assert_eq!(compacted, newest.next());
    assert_eq!(v["compact"]["source"], newest.0);
    let m = block_on(load_manifest(&store, compacted)).unwrap();
    assert_eq!(m.kind, highwater::CheckpointKind::Full);
    assert_eq!(m.layers.len(), 1);
    assert_eq!(m.wal_position, source.wal_position);
    assert_eq!(
        m.properties.get("compacted_from"),
        Some(&newest.0.to_string())
    );

    let out = Command::new(BIN)
        .args(["gc", "--keep", "1", "--json"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gc"]["retained"], serde_json::json!([compacted.0]));
    assert!(v["gc"]["artifacts_deleted"].as_u64().unwrap() > 0);
    let (stored, referenced, manifests) = census(&store);
    assert_eq!((manifests, &stored), (1, &referenced));
    // The compacted checkpoint holds the state of the chain it replaced.
    assert_eq!(check_store(&dir, 0), 1);
}
