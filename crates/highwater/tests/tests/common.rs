//! Shared helpers: managers over fresh backends and stores, raw state dumps,
//! a typed workload with its own model, and a store wrapper that can hold
//! or fail requests.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use bytes::Bytes;
use highwater::cloud::ObjectCheckpointStore;
use highwater::cloud::layout::{ARTIFACTS_DIR, MANIFESTS_DIR, artifact_name, manifest_name};
use highwater::core::{ArtifactId, BoxFuture, PutOutcome, StoreCounters};
use highwater::memory::MemoryBackend;
use highwater::{
    CheckpointConfig, CheckpointId, CheckpointStore, Error, ListState, ListStateDescriptor,
    Manifest, MapState, MapStateDescriptor, StateBackend, StateManager, ValueState,
    ValueStateDescriptor,
};
use highwater_testkit::SplitMix64;
use highwater_testkit::model::{Entries, diff_entries};

/// A configuration with the knobs the tests vary. 16 key groups per
/// artifact gives 8 artifacts per operator at the default 128 key groups.
pub fn config(
    incremental: bool,
    max_chain_before_full: usize,
    max_retained: usize,
) -> CheckpointConfig {
    let mut c = CheckpointConfig::default();
    c.incremental = incremental;
    c.max_chain_before_full = max_chain_before_full;
    c.max_retained = max_retained;
    c.key_groups_per_artifact = 16;
    c.encode_threads = 2;
    c
}

/// A manager over a fresh memory backend and `store`.
pub fn manager_with(store: Arc<dyn CheckpointStore>, cfg: CheckpointConfig) -> StateManager {
    StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store)
        .config(cfg)
        .build()
        .expect("build the manager")
}

/// The `u64` value state "n" of operator "counter", keyed by string.
pub fn counter(m: &StateManager) -> ValueState<String, u64> {
    m.keyed_state("counter")
        .unwrap()
        .value_state(&ValueStateDescriptor::new("n"))
        .unwrap()
}

/// A manager over a fresh memory backend and a fresh in-memory store.
pub fn memory_manager(cfg: CheckpointConfig) -> StateManager {
    manager_with(Arc::new(ObjectCheckpointStore::in_memory()), cfg)
}

/// A store in a local directory, with the directory guard.
pub struct LocalStore {
    /// Keeps the directory alive.
    pub _guard: tempfile::TempDir,
    /// The store's root directory.
    pub dir: PathBuf,
    /// The store.
    pub store: Arc<ObjectCheckpointStore>,
}

impl LocalStore {
    pub fn new() -> Self {
        let guard = tempfile::tempdir().expect("temp dir");
        let dir = guard.path().join("checkpoints");
        let store = Arc::new(ObjectCheckpointStore::local(&dir).expect("open local store"));
        LocalStore {
            _guard: guard,
            dir,
            store,
        }
    }

    pub fn dyn_store(&self) -> Arc<dyn CheckpointStore> {
        self.store.clone()
    }

    pub fn artifact_file(&self, id: ArtifactId) -> PathBuf {
        self.dir.join(ARTIFACTS_DIR).join(artifact_name(id))
    }

    pub fn manifest_file(&self, id: CheckpointId) -> PathBuf {
        self.dir.join(MANIFESTS_DIR).join(manifest_name(id))
    }

    /// Names of the files in the artifacts directory.
    pub fn artifact_files(&self) -> BTreeSet<String> {
        files_in(&self.dir.join(ARTIFACTS_DIR))
    }
}

pub fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("list directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Runs a store future on a throwaway runtime (test threads only; never
/// from inside a tokio runtime).
pub fn block_on<T>(fut: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
        .block_on(fut)
}

/// Every entry of the backend, raw.
pub fn dump(backend: &dyn StateBackend) -> Entries {
    backend
        .scan_range(&[], &[0xFF; 4])
        .expect("scan the backend")
        .into_iter()
        .collect()
}

/// Panics with a readable diff when `actual` differs from `expected`.
pub fn assert_entries(expected: &Entries, actual: &Entries, context: &str) {
    if let Err(diff) = diff_entries(expected, actual) {
        panic!("{context}: restored state differs from the state at the checkpoint: {diff}");
    }
}

/// The readable manifests of the store, by id.
pub fn manifests(store: &dyn CheckpointStore) -> BTreeMap<CheckpointId, Manifest> {
    block_on(async {
        let mut out = BTreeMap::new();
        for id in store.list_manifests().await.expect("list manifests") {
            if let Ok(bytes) = store.get_manifest(id).await
                && let Ok(m) = Manifest::decode(&bytes)
            {
                out.insert(id, m);
            }
        }
        out
    })
}

pub fn manifest_ids(store: &dyn CheckpointStore) -> Vec<CheckpointId> {
    block_on(store.list_manifests()).expect("list manifests")
}

/// Every artifact the given manifests reference.
pub fn referenced<'a>(ms: impl IntoIterator<Item = &'a Manifest>) -> BTreeSet<ArtifactId> {
    ms.into_iter()
        .flat_map(|m| m.artifacts().map(|a| a.id))
        .collect()
}

pub fn stored_artifacts(store: &dyn CheckpointStore) -> BTreeSet<ArtifactId> {
    block_on(store.list_artifacts())
        .expect("list artifacts")
        .into_iter()
        .collect()
}

/// The store holds exactly the artifacts its readable manifests reference:
/// none missing, none orphaned.
pub fn assert_no_orphans(store: &dyn CheckpointStore, context: &str) {
    let ms = manifests(store);
    let referenced = referenced(ms.values());
    let stored = stored_artifacts(store);
    let orphans: Vec<_> = stored.difference(&referenced).collect();
    let missing: Vec<_> = referenced.difference(&stored).collect();
    assert!(
        orphans.is_empty() && missing.is_empty(),
        "{context}: store artifacts differ from those referenced by manifests {:?}: orphans={orphans:?} missing={missing:?}",
        ms.keys().collect::<Vec<_>>()
    );
}

/// Seeds for random tests: `HIGHWATER_TEST_SEED` if set, else `default`.
pub fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("HIGHWATER_TEST_SEED") {
        Ok(s) => vec![s.parse().expect("HIGHWATER_TEST_SEED must be a u64")],
        Err(_) => default.to_vec(),
    }
}

// ---------------------------------------------------------------------------
// Typed workload.

/// Operators of the workload.
pub const OPERATORS: [&str; 3] = ["orders", "users", "sessions"];
/// Keys per operator.
pub const KEYS: u32 = 24;
const MAP_KEYS: [&str; 5] = ["a", "b", "c", "dd", "eee"];

struct Operator {
    value: ValueState<u32, u64>,
    map: MapState<u32, String, u32>,
    list: ListState<u32, u16>,
}

/// What the typed state should hold, maintained independently of the
/// backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypedModel {
    values: BTreeMap<(usize, u32), u64>,
    maps: BTreeMap<(usize, u32), BTreeMap<String, u32>>,
    lists: BTreeMap<(usize, u32), Vec<u16>>,
}

/// Value, map and list state in each of [`OPERATORS`].
pub struct Workload {
    ops: Vec<Operator>,
}

impl Workload {
    pub fn new(manager: &StateManager) -> Self {
        let ops = OPERATORS
            .iter()
            .map(|name| {
                let ctx = manager.keyed_state(name).expect("keyed state");
                Operator {
                    value: ctx
                        .value_state(&ValueStateDescriptor::new("total"))
                        .expect("value state"),
                    map: ctx
                        .map_state(&MapStateDescriptor::new("by-item"))
                        .expect("map state"),
                    list: ctx
                        .list_state(&ListStateDescriptor::new("recent"))
                        .expect("list state"),
                }
            })
            .collect();
        Workload { ops }
    }

    /// One random operation, applied to the state and to `model`.
    pub fn step(&self, rng: &mut SplitMix64, model: &mut TypedModel) {
        let o = rng.index(self.ops.len());
        let op = &self.ops[o];
        let key = rng.below(u64::from(KEYS)) as u32;
        let mk = (*rng.pick(&MAP_KEYS)).to_string();
        match rng.below(100) {
            0..25 => {
                let v = rng.below(1_000_000);
                op.value.update(&key, &v).unwrap();
                model.values.insert((o, key), v);
            }
            25..35 => {
                op.value.clear(&key).unwrap();
                model.values.remove(&(o, key));
            }
            35..60 => {
                let v = rng.below(1000) as u32;
                op.map.put(&key, &mk, &v).unwrap();
                model.maps.entry((o, key)).or_default().insert(mk, v);
            }
            60..70 => {
                op.map.remove(&key, &mk).unwrap();
                if let Some(m) = model.maps.get_mut(&(o, key)) {
                    m.remove(&mk);
                    if m.is_empty() {
                        model.maps.remove(&(o, key));
                    }
                }
            }
            70..74 => {
                op.map.clear(&key).unwrap();
                model.maps.remove(&(o, key));
            }
            74..90 => {
                let item = rng.below(500) as u16;
                op.list.add(&key, &item).unwrap();
                model.lists.entry((o, key)).or_default().push(item);
            }
            90..95 => {
                let items: Vec<u16> = (0..rng.below(4)).map(|_| rng.below(500) as u16).collect();
                op.list.update(&key, &items).unwrap();
                if items.is_empty() {
                    model.lists.remove(&(o, key));
                } else {
                    model.lists.insert((o, key), items);
                }
            }
            _ => {
                op.list.clear(&key).unwrap();
                model.lists.remove(&(o, key));
            }
        }
    }

    /// Reads every key through the typed handles and compares with `model`.
    pub fn check(&self, model: &TypedModel) -> Result<(), String> {
        let mut problems = Vec::new();
        for (o, op) in self.ops.iter().enumerate() {
            for key in 0..KEYS {
                let v = op.value.get(&key).map_err(|e| e.to_string())?;
                if v != model.values.get(&(o, key)).copied() {
                    problems.push(format!(
                        "{}/total[{key}] = {v:?}, expected {:?}",
                        OPERATORS[o],
                        model.values.get(&(o, key))
                    ));
                }
                let m: BTreeMap<String, u32> = op
                    .map
                    .entries(&key)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .collect();
                let want = model.maps.get(&(o, key)).cloned().unwrap_or_default();
                if m != want {
                    problems.push(format!(
                        "{}/by-item[{key}] = {m:?}, expected {want:?}",
                        OPERATORS[o]
                    ));
                }
                let l = op.list.get(&key).map_err(|e| e.to_string())?;
                let want = model.lists.get(&(o, key)).cloned().unwrap_or_default();
                if l != want {
                    problems.push(format!(
                        "{}/recent[{key}] = {l:?}, expected {want:?}",
                        OPERATORS[o]
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} typed reads differ: {}",
                problems.len(),
                problems.into_iter().take(10).collect::<Vec<_>>().join("; ")
            ))
        }
    }
}

// ---------------------------------------------------------------------------
// A store whose requests the test controls.

/// A real store (in memory unless another is wrapped) that can hold
/// manifest commits or artifact reads until released and fail artifact
/// uploads after a number of successful ones.
pub struct ControlledStore {
    inner: Arc<dyn CheckpointStore>,
    gated: AtomicBool,
    gate: tokio::sync::Semaphore,
    /// False while artifact reads are held.
    gets_open: tokio::sync::watch::Sender<bool>,
    /// Artifact reads that reached the store (held or not).
    gets: std::sync::atomic::AtomicU64,
    /// Artifact puts that still succeed; negative means unlimited.
    puts_left: AtomicI64,
}

impl ControlledStore {
    pub fn new() -> Self {
        Self::wrapping(Arc::new(ObjectCheckpointStore::in_memory()))
    }

    /// Controls requests to `inner`.
    pub fn wrapping(inner: Arc<dyn CheckpointStore>) -> Self {
        ControlledStore {
            inner,
            gated: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(0),
            gets_open: tokio::sync::watch::Sender::new(true),
            gets: std::sync::atomic::AtomicU64::new(0),
            puts_left: AtomicI64::new(-1),
        }
    }

    /// From now on every manifest commit waits for a [`release`](Self::release).
    pub fn hold_commits(&self) {
        self.gated.store(true, Ordering::SeqCst);
    }

    /// Lets `n` held commits through.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Stops holding commits (commits already waiting still need a release).
    pub fn open(&self) {
        self.gated.store(false, Ordering::SeqCst);
    }

    /// From now on every artifact read waits until [`open_gets`](Self::open_gets).
    pub fn hold_gets(&self) {
        self.gets_open.send_replace(false);
    }

    /// Lets every held artifact read through, and the later ones.
    pub fn open_gets(&self) {
        self.gets_open.send_replace(true);
    }

    /// Artifact reads that reached the store so far (held ones included).
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    /// After `n` more successful artifact puts, every put fails.
    pub fn fail_puts_after(&self, n: i64) {
        self.puts_left.store(n, Ordering::SeqCst);
    }

    /// Artifact puts never fail.
    pub fn heal(&self) {
        self.puts_left.store(-1, Ordering::SeqCst);
    }
}

impl CheckpointStore for ControlledStore {
    fn name(&self) -> &'static str {
        "controlled"
    }

    fn put_artifact(
        &self,
        id: ArtifactId,
        data: Bytes,
    ) -> BoxFuture<'_, highwater::Result<PutOutcome>> {
        Box::pin(async move {
            let left = self
                .puts_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n > 0).then(|| n - 1)
                });
            if left == Err(0) {
                return Err(Error::store(
                    "controlled",
                    format!("put artifact {id}"),
                    std::io::Error::other("injected failure"),
                ));
            }
            self.inner.put_artifact(id, data).await
        })
    }

    fn get_artifact(&self, id: ArtifactId) -> BoxFuture<'_, highwater::Result<Bytes>> {
        Box::pin(async move {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.gets_open
                .subscribe()
                .wait_for(|open| *open)
                .await
                .map_err(|e| Error::Closed(e.to_string()))?;
            self.inner.get_artifact(id).await
        })
    }

    fn has_artifact(&self, id: ArtifactId) -> BoxFuture<'_, highwater::Result<bool>> {
        self.inner.has_artifact(id)
    }

    fn list_artifacts(&self) -> BoxFuture<'_, highwater::Result<Vec<ArtifactId>>> {
        self.inner.list_artifacts()
    }

    fn delete_artifact(&self, id: ArtifactId) -> BoxFuture<'_, highwater::Result<()>> {
        self.inner.delete_artifact(id)
    }

    fn commit_manifest(
        &self,
        id: CheckpointId,
        data: Bytes,
    ) -> BoxFuture<'_, highwater::Result<()>> {
        Box::pin(async move {
            if self.gated.load(Ordering::SeqCst) {
                self.gate
                    .acquire()
                    .await
                    .map_err(|e| Error::Closed(e.to_string()))?
                    .forget();
            }
            self.inner.commit_manifest(id, data).await
        })
    }

    fn get_manifest(&self, id: CheckpointId) -> BoxFuture<'_, highwater::Result<Bytes>> {
        self.inner.get_manifest(id)
    }

    fn list_manifests(&self) -> BoxFuture<'_, highwater::Result<Vec<CheckpointId>>> {
        self.inner.list_manifests()
    }

    fn delete_manifest(&self, id: CheckpointId) -> BoxFuture<'_, highwater::Result<()>> {
        self.inner.delete_manifest(id)
    }

    fn counters(&self) -> StoreCounters {
        self.inner.counters()
    }
}
