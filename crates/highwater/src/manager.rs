//! The state manager: what a stream engine embeds.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use highwater_core::{
    ArtifactRef, CheckpointId, CheckpointKind, CheckpointStore, Clock, Error, KeyedStateContext,
    Layer, LayerKind, Manifest, PutOutcome, Result, SnapshotKind, StateBackend, StateSnapshot,
    SystemClock,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::CheckpointConfig;
use crate::logged::LoggedBackend;
use crate::retention::RetentionReport;
use highwater_core::load_manifest;
use highwater_merge::{
    EncodeParams, MergeParams, MergeStats, PinGuard, Pins, Produced, collect_garbage,
    encode_snapshot, merge_into_store, needs_merge, substitute,
};
use highwater_recovery::{
    ProgressFn, Recovery, RecoveryConfig, RecoveryOutcome, RecoveryPlan, RecoveryScope,
    RecoveryStats, RecoveryTarget,
};

/// Statistics of one completed checkpoint.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CheckpointInfo {
    /// The checkpoint's id.
    pub id: CheckpointId,
    /// Full or incremental.
    pub kind: CheckpointKind,
    /// Layers a restore of this checkpoint applies.
    pub chain_length: usize,
    /// Records this checkpoint wrote (its own layer).
    pub entries: u64,
    /// Expired entries dropped (full) or written as deletes (incremental).
    pub expired_dropped: u64,
    /// Record bytes of its own layer before compression.
    pub logical_bytes: u64,
    /// Encoded bytes of its own layer.
    pub encoded_bytes: u64,
    /// Bytes actually written to the store (artifacts already stored are
    /// not written again).
    pub bytes_written: u64,
    /// Artifacts of its own layer.
    pub artifacts: usize,
    /// Artifacts that were already stored and were reused.
    pub artifacts_reused: usize,
    /// How long the processing thread was held for the snapshot.
    pub snapshot_pause: Duration,
    /// From trigger to committed manifest.
    pub duration: Duration,
    /// What retention did after the commit; `None` if it failed (the failure
    /// is logged; the checkpoint itself is committed and valid).
    pub retention: Option<RetentionReport>,
    /// When the chain starts with a merged base instead of its parent's
    /// layers: the last checkpoint the merged base absorbed.
    pub merged_base: Option<CheckpointId>,
}

/// A checkpoint running in the background.
#[derive(Debug)]
pub struct CheckpointHandle {
    id: CheckpointId,
    done: crossbeam_channel::Receiver<Result<CheckpointInfo>>,
}

impl CheckpointHandle {
    /// The id the checkpoint will have once committed.
    pub fn id(&self) -> CheckpointId {
        self.id
    }

    /// Blocks until the checkpoint is committed or has failed.
    pub fn wait(self) -> Result<CheckpointInfo> {
        self.done
            .recv()
            .map_err(|_| Error::Internal("checkpoint worker vanished".into()))?
    }

    /// The outcome if the checkpoint has finished.
    pub fn try_result(&self) -> Option<Result<CheckpointInfo>> {
        self.done.try_recv().ok()
    }
}

/// Statistics of a restore.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RestoreInfo {
    /// The checkpoint restored.
    pub checkpoint_id: CheckpointId,
    /// Layers applied.
    pub chain_length: usize,
    /// Entries loaded into the backend.
    pub entries: u64,
    /// Bytes fetched from the store.
    pub bytes_fetched: u64,
    /// Newer checkpoints skipped because they were unreadable, with why.
    pub fallbacks: Vec<(CheckpointId, String)>,
    /// Write-ahead-log records replayed after the checkpoint.
    pub wal_records_replayed: u64,
    /// The write-ahead-log position the checkpoint covers, if recorded.
    pub wal_position: Option<u64>,
    /// Wall time.
    pub duration: Duration,
    /// After a point-in-time recovery with a write-ahead log: the full
    /// checkpoint of the recovered state taken before returning, so that a
    /// crash afterwards resumes from it rather than from the abandoned
    /// later history still in the store and the log.
    pub fork_checkpoint: Option<CheckpointId>,
    /// Everything the recovery engine measured.
    pub stats: RecoveryStats,
}

impl RestoreInfo {
    fn from_outcome(o: &RecoveryOutcome) -> Self {
        let s = &o.stats;
        RestoreInfo {
            checkpoint_id: s.checkpoint.unwrap_or(CheckpointId(0)),
            chain_length: s.chain_length,
            entries: s.entries_loaded,
            bytes_fetched: s.bytes_fetched,
            fallbacks: s
                .fallbacks
                .iter()
                .map(|f| (f.checkpoint, f.reason.clone()))
                .collect(),
            wal_records_replayed: s.wal_records_replayed,
            wal_position: s.wal_position,
            duration: s.duration,
            fork_checkpoint: None,
            stats: s.clone(),
        }
    }
}

/// One entry of [`StateManager::checkpoint_history`].
#[derive(Debug)]
pub struct HistoryEntry {
    /// The checkpoint id.
    pub id: CheckpointId,
    /// Its manifest, or why it could not be read.
    pub manifest: Result<Manifest>,
}

/// Builder of a [`StateManager`].
pub struct StateManagerBuilder {
    backend: Option<Arc<dyn StateBackend>>,
    store: Option<Arc<dyn CheckpointStore>>,
    config: CheckpointConfig,
    clock: Arc<dyn Clock>,
    properties: BTreeMap<String, String>,
    wal: Option<(std::path::PathBuf, highwater_wal::WalConfig)>,
    recovery: RecoveryConfig,
}

impl std::fmt::Debug for StateManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateManagerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl StateManagerBuilder {
    /// The state backend holding live state.
    pub fn backend(mut self, backend: Arc<dyn StateBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The store checkpoints go to.
    pub fn store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: CheckpointConfig) -> Self {
        self.config = config;
        self
    }

    /// Number of key groups.
    pub fn max_parallelism(mut self, n: u16) -> Self {
        self.config.max_parallelism = n;
        self
    }

    /// Checkpoint interval for [`StateManager::maybe_checkpoint`].
    pub fn interval(mut self, every: Duration) -> Self {
        self.config.interval = Some(every);
        self
    }

    /// Completed checkpoints to keep.
    pub fn max_retained(mut self, n: usize) -> Self {
        self.config.max_retained = n;
        self
    }

    /// Incremental checkpoints on or off.
    pub fn incremental(mut self, on: bool) -> Self {
        self.config.incremental = on;
        self
    }

    /// The clock used for TTL and timestamps (tests inject a manual clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Logs every state change to a write-ahead log in `dir`.
    ///
    /// Changes are appended as one atomic batch per
    /// [`StateManager::commit`] (call it at event boundaries; checkpoints
    /// commit too), every checkpoint records the log position it covers,
    /// the log before the oldest retained checkpoint is released, and
    /// [`StateManager::restore_latest`] replays the log after the restored
    /// checkpoint. With `SyncPolicy::Always` a committed change survives any
    /// crash; with `Interval` or `Never`, at most the last interval's.
    pub fn wal(
        mut self,
        dir: impl Into<std::path::PathBuf>,
        config: highwater_wal::WalConfig,
    ) -> Self {
        self.wal = Some((dir.into(), config));
        self
    }

    /// How restores run (threads, timeout, verification level, fallback).
    /// `restore(id)` never falls back, whatever `optimistic_recovery` says.
    pub fn recovery(mut self, config: RecoveryConfig) -> Self {
        self.recovery = config;
        self
    }

    /// A property written into every manifest (for example the job name).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Builds the manager: starts its I/O runtime and encode pool and reads
    /// the store's existing checkpoint ids (new ids continue after them).
    pub fn build(self) -> Result<StateManager> {
        self.config.validate()?;
        self.recovery.validate()?;
        let backend = self
            .backend
            .ok_or_else(|| Error::InvalidArgument("a state backend is required".into()))?;
        let store = self
            .store
            .ok_or_else(|| Error::InvalidArgument("a checkpoint store is required".into()))?;
        let (backend, logged) = match self.wal {
            Some((dir, config)) => {
                let (wal, report) = highwater_wal::Wal::open(&dir, config)?;
                if let Some(torn) = &report.torn_tail {
                    tracing::warn!(dir = %dir.display(), ?torn, "cut the torn tail of the write-ahead log");
                }
                let logged = Arc::new(LoggedBackend::new(
                    backend,
                    Arc::new(wal),
                    self.clock.clone(),
                ));
                (logged.clone() as Arc<dyn StateBackend>, Some(logged))
            }
            None => (backend, None),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("highwater-io")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the i/o runtime", e))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.config.encode_threads)
            .thread_name(|i| format!("highwater-encode-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("start the encode pool: {e}")))?;
        let merge_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.config.merger.parallel_threads)
            .thread_name(|i| format!("highwater-merge-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("start the merge pool: {e}")))?;
        let inner = Arc::new(Inner {
            backend,
            logged,
            store,
            config: self.config,
            clock: self.clock,
            recovery: self.recovery,
            properties: self.properties,
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            pool,
            merge_pool,
            pins: Pins::new(),
            tracking: Mutex::new(Tracking {
                next_id: CheckpointId(1),
                base: None,
                in_flight: false,
                last_trigger: Instant::now(),
                merged: None,
                merging: false,
            }),
            idle: Condvar::new(),
            merge_done: Condvar::new(),
        });
        let ids = inner.run_io({
            let store = inner.store.clone();
            async move { store.list_manifests().await }
        })?;
        if let Some(last) = ids.iter().max() {
            inner.lock().next_id = last.next();
        }
        Ok(StateManager { inner })
    }
}

/// Keyed state plus checkpoints: the object a stream engine embeds.
///
/// The processing thread reads and writes state through handles from
/// [`keyed_state`](StateManager::keyed_state) and calls
/// [`maybe_checkpoint`](StateManager::maybe_checkpoint) between events (or
/// [`checkpoint`](StateManager::checkpoint) on a barrier). A checkpoint takes
/// a snapshot on the calling thread — microseconds for the memory backend —
/// and encodes, compresses, uploads and commits it in the background.
/// Checkpoints are triggered between events, never by a timer thread, so
/// every checkpoint is a consistent cut of the engine's progress.
///
/// At most one checkpoint is in flight; `checkpoint()` waits for the
/// previous one first, `maybe_checkpoint()` skips while one is running.
///
/// One manager writes to a store at a time: retention deletes artifacts
/// that no committed manifest references, which would include another
/// writer's uploads in flight. (Fencing several writers is the job of the
/// Raft-coordinated checkpoint ledger.) If a checkpoint id turns out to be
/// taken, the checkpoint fails with `AlreadyExists` and the next one
/// continues after the newest id in the store.
///
/// ```
/// use std::sync::Arc;
/// use highwater::{StateManager, ValueStateDescriptor};
/// use highwater::memory::MemoryBackend;
/// use highwater::cloud::ObjectCheckpointStore;
///
/// # fn main() -> highwater::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let manager = StateManager::builder()
///     .backend(Arc::new(MemoryBackend::new()))
///     .store(Arc::new(ObjectCheckpointStore::local(dir.path())?))
///     .build()?;
/// let counts = manager
///     .keyed_state("counter")?
///     .value_state::<String, u64>(&ValueStateDescriptor::new("count"))?;
/// counts.update(&"a".to_string(), &1)?;
/// let info = manager.checkpoint()?.wait()?;
/// counts.update(&"a".to_string(), &2)?;
/// manager.restore(info.id)?;
/// assert_eq!(counts.get(&"a".to_string())?, Some(1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StateManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateManager")
            .field("backend", &self.inner.backend.name())
            .field("store", &self.inner.store.name())
            .field("config", &self.inner.config)
            .finish()
    }
}

struct Tracking {
    next_id: CheckpointId,
    /// The committed checkpoint whose snapshot started the backend's current
    /// change-tracking epoch: the only valid parent of an incremental.
    base: Option<Arc<Manifest>>,
    in_flight: bool,
    last_trigger: Instant,
    /// A merged base stored but not yet used by a committed manifest; its
    /// pins keep its artifacts from retention until then.
    merged: Option<PendingMerge>,
    /// A background merge is running.
    merging: bool,
}

/// A merged base waiting for the next checkpoint to build on it.
struct PendingMerge {
    layer: Layer,
    /// Held for its `Drop`: unpins the merged artifacts.
    _pins: PinGuard,
}

struct Inner {
    backend: Arc<dyn StateBackend>,
    /// The same backend as `backend` when a write-ahead log is on.
    logged: Option<Arc<LoggedBackend>>,
    store: Arc<dyn CheckpointStore>,
    config: CheckpointConfig,
    clock: Arc<dyn Clock>,
    recovery: RecoveryConfig,
    properties: BTreeMap<String, String>,
    handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    pool: rayon::ThreadPool,
    /// Runs merges, so they never take the encode pool from checkpoints.
    merge_pool: rayon::ThreadPool,
    /// Artifacts of in-flight checkpoints and merges (see `highwater_merge::Pins`).
    pins: Arc<Pins>,
    tracking: Mutex<Tracking>,
    idle: Condvar,
    /// Signalled when a background merge ends.
    merge_done: Condvar,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never block here: the last reference may be dropped on a thread
        // of the caller's own async runtime.
        if let Some(rt) = self
            .runtime
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            rt.shutdown_background();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Tracking> {
        self.tracking.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a future on the manager's runtime and waits for it without
    /// entering a runtime on the calling thread (which may belong to the
    /// caller's own runtime).
    fn run_io<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| Error::Closed("the i/o runtime stopped".into()))?
    }

    fn wait_idle(&self) -> MutexGuard<'_, Tracking> {
        let mut t = self.lock();
        while t.in_flight {
            t = self.idle.wait(t).unwrap_or_else(PoisonError::into_inner);
        }
        t
    }
}

/// Everything the background worker needs for one checkpoint.
struct Job {
    id: CheckpointId,
    kind: CheckpointKind,
    parent: Option<Arc<Manifest>>,
    /// The layers this checkpoint's own layer goes on top of: the parent's,
    /// or a merged base and the parent's layers after it.
    parent_layers: Vec<Layer>,
    /// Set when `parent_layers` starts with a merged base: the last
    /// checkpoint it absorbed. The merged base stays in `Tracking::merged`
    /// (pinned) until the worker sees this checkpoint committed. (A failed
    /// checkpoint clears the base, so the next one is full and drops it.)
    merged_base: Option<CheckpointId>,
    snapshot: Arc<dyn StateSnapshot>,
    started: Instant,
    snapshot_pause: Duration,
    created_at_ms: u64,
    wal_position: Option<u64>,
}

impl StateManager {
    /// Starts building a manager.
    pub fn builder() -> StateManagerBuilder {
        StateManagerBuilder {
            backend: None,
            store: None,
            config: CheckpointConfig::default(),
            clock: Arc::new(SystemClock),
            properties: BTreeMap::new(),
            wal: None,
            recovery: RecoveryConfig::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CheckpointConfig {
        &self.inner.config
    }

    /// The live state backend.
    pub fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.inner.backend
    }

    /// The checkpoint store.
    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        &self.inner.store
    }

    /// A context handing out typed state handles for `operator`.
    pub fn keyed_state(&self, operator: &str) -> Result<KeyedStateContext> {
        KeyedStateContext::with_clock(
            self.inner.backend.clone(),
            operator,
            self.inner.config.max_parallelism,
            self.inner.clock.clone(),
        )
    }

    /// Takes a checkpoint now, after waiting for any checkpoint in flight.
    /// The snapshot is taken before this returns; the rest runs in the
    /// background. Call it between events.
    pub fn checkpoint(&self) -> Result<CheckpointHandle> {
        let t = self.inner.wait_idle();
        self.trigger(t)
    }

    /// Takes a checkpoint if the configured interval has passed since the
    /// last one and none is in flight. Call it between events.
    pub fn maybe_checkpoint(&self) -> Result<Option<CheckpointHandle>> {
        let Some(interval) = self.inner.config.interval else {
            return Ok(None);
        };
        let t = self.inner.lock();
        if t.in_flight || t.last_trigger.elapsed() < interval {
            return Ok(None);
        }
        self.trigger(t).map(Some)
    }

    /// Marks an event boundary: with a write-ahead log, appends the changes
    /// made since the last commit as one atomic batch (durable on return
    /// under `SyncPolicy::Always`). Without a log it does nothing.
    pub fn commit(&self) -> Result<()> {
        match &self.inner.logged {
            Some(logged) => logged.commit(),
            None => Ok(()),
        }
    }

    /// Waits for the checkpoint in flight, commits pending changes and
    /// closes the write-ahead log (which makes it durable and releases its
    /// directory). Later state changes fail. Without a log it only waits.
    pub fn close(&self) -> Result<()> {
        let _idle = self.inner.wait_idle();
        match &self.inner.logged {
            Some(logged) => {
                logged.commit()?;
                logged.wal().close()
            }
            None => Ok(()),
        }
    }

    /// The write-ahead log, if one is configured.
    pub fn wal(&self) -> Option<&Arc<highwater_wal::Wal>> {
        self.inner.logged.as_ref().map(|l| l.wal())
    }

    /// Blocks until no checkpoint is in flight.
    pub fn wait_idle(&self) {
        drop(self.inner.wait_idle());
    }

    fn trigger(&self, mut t: MutexGuard<'_, Tracking>) -> Result<CheckpointHandle> {
        let cfg = &self.inner.config;
        // A merged base replaces the head of the parent's chain when it
        // absorbed a layer of it; a stale one (another chain) is dropped.
        let mut merged_base = None;
        let mut parent_layers = Vec::new();
        if let Some(b) = &t.base {
            match t
                .merged
                .as_ref()
                .and_then(|m| substitute(&b.layers, &m.layer).map(|l| (l, m.layer.checkpoint_id)))
            {
                Some((layers, through)) => {
                    parent_layers = layers;
                    merged_base = Some(through);
                }
                None => parent_layers = b.layers.clone(),
            }
        }
        if merged_base.is_none() {
            // Stale: the chain no longer holds the layer the merge absorbed
            // (a full checkpoint or a restore rebased it). Its pins go.
            t.merged = None;
        }
        let parent = t
            .base
            .clone()
            .filter(|_| cfg.incremental && parent_layers.len() < cfg.max_chain_length);
        if parent.is_none() {
            // A full checkpoint needs no merged base; its pins go.
            t.merged = None;
            merged_base = None;
            parent_layers.clear();
        }
        let (kind, snapshot_kind) = match parent {
            Some(_) => (CheckpointKind::Incremental, SnapshotKind::Changes),
            None => (CheckpointKind::Full, SnapshotKind::Full),
        };
        // The backend's change epoch starts at this snapshot (even if taking
        // it fails part-way): until this checkpoint commits there is no valid
        // parent for an incremental.
        t.base = None;
        let started = Instant::now();
        let (snapshot, wal_position) = match &self.inner.logged {
            Some(logged) => {
                let (s, lsn) = logged.snapshot_at(snapshot_kind)?;
                (s, Some(lsn))
            }
            // A backend with native checkpoints (RocksDB) hands over its
            // own files instead; they become a full manifest (native.rs).
            None => match self.inner.backend.native_snapshot()? {
                Some(native) => (native, None),
                None => (self.inner.backend.snapshot(snapshot_kind)?, None),
            },
        };
        let snapshot_pause = started.elapsed();
        let id = t.next_id;
        t.next_id = id.next();
        t.in_flight = true;
        t.last_trigger = started;
        drop(t);

        let job = Job {
            id,
            kind,
            parent,
            parent_layers,
            merged_base,
            snapshot,
            started,
            snapshot_pause,
            created_at_ms: self.inner.clock.now_ms(),
            wal_position,
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("highwater-checkpoint-{id}"))
            .spawn(move || {
                let result = run_checkpoint(&inner, job);
                // Another writer committed this id: continue after the
                // newest id in the store instead of colliding again.
                let newest = match &result {
                    Err(Error::AlreadyExists(_)) => {
                        let store = inner.store.clone();
                        inner
                            .handle
                            .block_on(async move { store.list_manifests().await })
                            .ok()
                            .and_then(|ids| ids.into_iter().max())
                    }
                    _ => None,
                };
                let mut t = inner.lock();
                if let Some(newest) = newest
                    && t.next_id <= newest
                {
                    t.next_id = newest.next();
                }
                match &result {
                    Ok((manifest, info)) => {
                        t.base = Some(manifest.clone());
                        // The committed manifest references the merged base
                        // it used: the pins can go (a newer merge that
                        // finished meanwhile absorbed more and stays).
                        if info.merged_base.is_some()
                            && t.merged.as_ref().map(|m| m.layer.checkpoint_id)
                                == info.merged_base
                        {
                            t.merged = None;
                        }
                        if inner.config.background_merge
                            && !t.merging
                            && needs_merge(&manifest.layers, &inner.config.merger)
                        {
                            t.merging = true;
                            spawn_merge(&inner, manifest.clone());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(checkpoint = %id, error = %e, "checkpoint failed; the next one will be full");
                        t.base = None;
                    }
                }
                t.in_flight = false;
                drop(t);
                inner.idle.notify_all();
                let _ = tx.send(result.map(|(_, info)| info));
            });
        if let Err(e) = spawned {
            self.inner.lock().in_flight = false;
            self.inner.idle.notify_all();
            return Err(Error::io("spawn the checkpoint worker", e));
        }
        Ok(CheckpointHandle { id, done: rx })
    }

    /// Restores the newest readable checkpoint and, with a write-ahead log,
    /// replays the log after it (a state with no checkpoint yet is rebuilt
    /// from the log alone, reported as checkpoint id 0). With
    /// `optimistic_recovery` on (the default), a checkpoint whose manifest
    /// or artifacts are corrupt or missing is skipped (with a warning and an
    /// entry in [`RestoreInfo::fallbacks`]) in favour of the previous one.
    /// Returns `Ok(None)` when the store holds no checkpoint and there is
    /// no log to rebuild from.
    pub fn restore_latest(&self) -> Result<Option<RestoreInfo>> {
        // Held for the whole restore: no checkpoint may start meanwhile.
        let mut t = self.inner.wait_idle();
        let store = self.inner.store.clone();
        let ids = self
            .inner
            .run_io(async move { store.list_manifests().await })?;
        let log_holds_state = self
            .inner
            .logged
            .as_ref()
            .is_some_and(|l| l.wal().first_lsn() == 1 && l.wal().last_lsn() >= 1);
        if ids.is_empty() && !log_holds_state {
            return Ok(None);
        }
        let config = self.inner.recovery.clone();
        self.restore_locked(
            &mut t,
            RecoveryTarget::Latest,
            &RecoveryScope::all(),
            &config,
            None,
        )
        .map(Some)
    }

    /// Restores checkpoint `id` exactly, replacing all live state (the
    /// write-ahead log is not replayed: the state is the checkpoint's). A
    /// damaged or missing checkpoint is a typed error naming the checkpoint
    /// and the artifact, and leaves live state untouched.
    pub fn restore(&self, id: CheckpointId) -> Result<RestoreInfo> {
        let mut t = self.inner.wait_idle();
        let config = self.inner.recovery.clone().optimistic_recovery(false);
        self.restore_locked(
            &mut t,
            RecoveryTarget::Checkpoint(id),
            &RecoveryScope::all(),
            &config,
            None,
        )
    }

    /// Restores the state as of `at_ms` (ms since the Unix epoch, on the
    /// manager's clock): the newest checkpoint created at or before it and,
    /// with a write-ahead log, the log after that checkpoint up to the last
    /// batch whose changes were all made at or before `at_ms`. Without a
    /// log the granularity is the checkpoint.
    ///
    /// With a log, the recovered state is then checkpointed (a full
    /// checkpoint, [`RestoreInfo::fork_checkpoint`]) before this returns:
    /// the store and the log still hold the later history, and a crash
    /// must resume from the recovered state, not from that history.
    pub fn restore_at(&self, at_ms: u64) -> Result<RestoreInfo> {
        self.restore_with(
            RecoveryTarget::PointInTime { at_ms },
            &RecoveryScope::all(),
            &self.inner.recovery.clone(),
            None,
        )
    }

    /// The general restore: any target, any scope (a subtask's key groups
    /// after rescaling, selected operators), any configuration, with a
    /// progress callback. All live state is replaced by the scope's state.
    /// A [`RecoveryTarget::PointInTime`] with a log ends with a full
    /// checkpoint, as [`restore_at`](StateManager::restore_at) explains. After a restore
    /// of part of the state the next checkpoint is full.
    pub fn restore_with(
        &self,
        target: RecoveryTarget,
        scope: &RecoveryScope,
        config: &RecoveryConfig,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RestoreInfo> {
        let mut t = self.inner.wait_idle();
        let mut info = self.restore_locked(&mut t, target, scope, config, progress)?;
        if matches!(target, RecoveryTarget::PointInTime { .. }) && self.inner.logged.is_some() {
            t.base = None;
            let done = self.trigger(t)?.wait()?;
            info.fork_checkpoint = Some(done.id);
        }
        Ok(info)
    }

    /// The plan a restore to `target` of `scope` would follow, without
    /// loading anything (manifests are read; artifacts are not).
    pub fn recovery_plan(
        &self,
        target: RecoveryTarget,
        scope: &RecoveryScope,
    ) -> Result<RecoveryPlan> {
        let engine = self.recovery_engine(&self.inner.recovery)?;
        let scope = self.job_scope(scope);
        engine.plan(
            target,
            &scope,
            self.inner.logged.as_ref().map(|l| &**l.wal()),
        )
    }

    fn recovery_engine(&self, config: &RecoveryConfig) -> Result<Recovery> {
        Ok(Recovery::new(
            self.inner.store.clone(),
            config.clone(),
            self.inner.handle.clone(),
        )?
        .with_now_ms(self.inner.clock.now_ms()))
    }

    /// `scope`, pinned to this job's number of key groups.
    fn job_scope(&self, scope: &RecoveryScope) -> RecoveryScope {
        let mut scope = scope.clone();
        scope
            .max_parallelism
            .get_or_insert(self.inner.config.max_parallelism);
        scope
    }

    /// Runs a recovery while the caller holds the tracking lock `t` (taken
    /// by `wait_idle`); it must not lock again (std mutexes are not
    /// reentrant).
    fn restore_locked(
        &self,
        t: &mut Tracking,
        target: RecoveryTarget,
        scope: &RecoveryScope,
        config: &RecoveryConfig,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RestoreInfo> {
        let engine = self.recovery_engine(config)?;
        let scope = self.job_scope(scope);
        let wal = self.inner.logged.as_ref().map(|l| &**l.wal());
        // A plan that fails (no such checkpoint, nothing readable) has
        // touched nothing; the chain the next checkpoint builds on stands.
        let plan = engine.plan(target, &scope, wal)?;
        // Native checkpoints (RocksDB files) are opened by the backend, not
        // decoded and folded (native.rs).
        if plan.manifest().is_some_and(|m| m.is_native()) {
            return self.restore_native_locked(t, &plan, &scope, config);
        }
        let result = match &self.inner.logged {
            Some(logged) => logged
                .recover_with(|backend, wal| engine.execute(plan, backend, Some(wal), progress)),
            None => engine.execute(plan, &*self.inner.backend, None, progress),
        };
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                if e.is_corruption() || e.kind() == highwater_core::ErrorKind::NotFound {
                    // Artifacts are shared between checkpoints, so the chain
                    // the next incremental would build on may be damaged
                    // too: make the next checkpoint full.
                    t.base = None;
                }
                return Err(e);
            }
        };
        if let Some(id) = outcome.stats.checkpoint
            && t.next_id <= id
        {
            t.next_id = id.next();
        }
        // The backend's change epoch starts at the restored state; an
        // incremental may build on the checkpoint only if the backend holds
        // all of it (every artifact of which was just fetched and verified).
        t.base = if scope.is_everything() {
            outcome.manifest.clone()
        } else {
            None
        };
        Ok(RestoreInfo::from_outcome(&outcome))
    }

    /// Restores the native checkpoint `plan` chose, falling back (with
    /// `optimistic_recovery`) to the older checkpoints the plan lists: a
    /// native one is opened by the backend, an encoded one goes through
    /// the recovery engine. A native checkpoint restores whole; rescaled
    /// subtasks use [`native::restore_native`](crate::native::restore_native).
    fn restore_native_locked(
        &self,
        t: &mut Tracking,
        plan: &RecoveryPlan,
        scope: &RecoveryScope,
        config: &RecoveryConfig,
    ) -> Result<RestoreInfo> {
        let started = Instant::now();
        if !scope.is_everything() {
            return Err(Error::InvalidArgument(
                "a native checkpoint restores whole: rescale with highwater::native::restore_native"
                    .into(),
            ));
        }
        let mut candidates: Vec<CheckpointId> = plan.checkpoint.into_iter().collect();
        if config.optimistic_recovery {
            candidates.extend(plan.fallback_candidates.iter().copied());
        }
        let mut fallbacks: Vec<(CheckpointId, String)> = Vec::new();
        for (i, id) in candidates.into_iter().enumerate() {
            let manifest = match plan.manifest().filter(|_| i == 0) {
                Some(m) => Ok(m.clone()),
                None => {
                    let store = self.inner.store.clone();
                    self.inner
                        .run_io(async move { load_manifest(&*store, id).await })
                        .map(Arc::new)
                }
            };
            let result = manifest.and_then(|manifest| {
                if !manifest.is_native() {
                    return Ok(Err(manifest));
                }
                crate::native::restore_for_manager(
                    &self.inner.handle,
                    &self.inner.store,
                    &*self.inner.backend,
                    &manifest,
                    self.inner.config.io_concurrency,
                    started,
                )
                .map(|info| Ok((info, manifest)))
            });
            match result {
                Ok(Ok((mut info, manifest))) => {
                    if t.next_id <= id {
                        t.next_id = id.next();
                    }
                    t.base = Some(manifest);
                    info.stats.fallbacks = fallbacks
                        .iter()
                        .map(|(checkpoint, reason)| highwater_recovery::Fallback {
                            checkpoint: *checkpoint,
                            reason: reason.clone(),
                        })
                        .collect();
                    info.fallbacks = fallbacks;
                    return Ok(info);
                }
                // An older encoded checkpoint: the recovery engine takes over.
                Ok(Err(_)) => {
                    let mut info = self.restore_locked(
                        t,
                        RecoveryTarget::Checkpoint(id),
                        scope,
                        config,
                        None,
                    )?;
                    fallbacks.append(&mut info.fallbacks);
                    info.fallbacks = fallbacks;
                    return Ok(info);
                }
                Err(e) if e.is_corruption() || e.kind() == highwater_core::ErrorKind::NotFound => {
                    // Files are shared between checkpoints: the next
                    // checkpoint must not build on what may be damaged.
                    t.base = None;
                    if !config.optimistic_recovery {
                        return Err(e);
                    }
                    tracing::warn!(checkpoint = %id, error = %e, "native checkpoint unusable; falling back to the previous one");
                    fallbacks.push((id, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::corrupt(
            "checkpoints",
            format!(
                "no readable checkpoint; tried: {}",
                fallbacks
                    .iter()
                    .map(|(id, e)| format!("{id} ({e})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// Every committed checkpoint, oldest first, with its manifest or the
    /// reason it cannot be read.
    pub fn checkpoint_history(&self) -> Result<Vec<HistoryEntry>> {
        let store = self.inner.store.clone();
        self.inner.run_io(async move {
            let mut out = Vec::new();
            for id in store.list_manifests().await? {
                out.push(HistoryEntry {
                    id,
                    manifest: load_manifest(&*store, id).await,
                });
            }
            Ok(out)
        })
    }

    /// The newest committed checkpoint this manager wrote or restored, if
    /// the backend's changes are tracked relative to it.
    pub fn last_checkpoint(&self) -> Option<CheckpointId> {
        self.inner.lock().base.as_ref().map(|m| m.checkpoint_id)
    }

    /// Applies retention now (it also runs after every checkpoint). Merged
    /// bases not yet used by a checkpoint are pinned and kept.
    pub fn apply_retention(&self) -> Result<RetentionReport> {
        let _idle = self.inner.wait_idle();
        let store = self.inner.store.clone();
        let keep = self.inner.config.max_retained;
        let pins = self.inner.pins.clone();
        self.inner
            .run_io(async move { collect_garbage(&*store, keep, Some(&pins), &|_, _| {}).await })
    }

    /// Merges the chain of the newest checkpoint now, on the calling
    /// thread (using the merge pool), after any background merge finishes.
    /// The next checkpoint builds on the merged base. Returns `None` when
    /// there is nothing to merge (no checkpoint yet, or a single layer).
    pub fn compact(&self) -> Result<Option<MergeStats>> {
        let base = {
            let mut t = self.merges_done();
            match t.base.clone() {
                Some(b) if b.layers.len() > 1 => {
                    t.merging = true;
                    b
                }
                _ => return Ok(None),
            }
        };
        let result = merge_manifest(&self.inner, &base);
        let mut t = self.inner.lock();
        t.merging = false;
        let out = result.map(|(merged, stats)| {
            t.merged = Some(merged);
            Some(stats)
        });
        drop(t);
        self.inner.merge_done.notify_all();
        out
    }

    /// Blocks until no background merge is running.
    pub fn wait_merges(&self) {
        drop(self.merges_done());
    }

    /// The tracking lock, taken once no merge is running.
    fn merges_done(&self) -> MutexGuard<'_, Tracking> {
        let mut t = self.inner.lock();
        while t.merging {
            t = self
                .inner
                .merge_done
                .wait(t)
                .unwrap_or_else(PoisonError::into_inner);
        }
        t
    }

    /// The checkpoint id up to which a merged base is waiting to be used by
    /// the next checkpoint, if any.
    pub fn pending_merge(&self) -> Option<CheckpointId> {
        self.inner
            .lock()
            .merged
            .as_ref()
            .map(|m| m.layer.checkpoint_id)
    }
}

/// Folds the chain of `base` into a new base in the store (pinned).
fn merge_manifest(inner: &Inner, base: &Manifest) -> Result<(PendingMerge, MergeStats)> {
    let params = MergeParams {
        merger: inner.config.merger.clone(),
        now_ms: inner.clock.now_ms(),
        limits: highwater_core::DecodeLimits::default(),
    };
    let stored = inner.merge_pool.install(|| {
        merge_into_store(
            &inner.store,
            &inner.handle,
            &base.layers,
            &params,
            inner.pins.guard(),
            &|_| {},
        )
    })?;
    tracing::debug!(
        through = %stored.outcome.layer.checkpoint_id,
        bytes_written = stored.bytes_written,
        "chain merged"
    );
    let stats = stored.outcome.stats.clone();
    Ok((
        PendingMerge {
            layer: stored.outcome.layer,
            _pins: stored.pins,
        },
        stats,
    ))
}

/// Runs a merge of `base`'s chain on its own thread; the result waits in
/// `Tracking::merged` for the next checkpoint. New checkpoints continue
/// meanwhile.
fn spawn_merge(inner: &Arc<Inner>, base: Arc<Manifest>) {
    let worker = inner.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("highwater-merge-{}", base.checkpoint_id))
        .spawn(move || {
            let result = merge_manifest(&worker, &base);
            let mut t = worker.lock();
            t.merging = false;
            match result {
                Ok((pending, _)) => t.merged = Some(pending),
                Err(e) => {
                    tracing::warn!(checkpoint = %base.checkpoint_id, error = %e, "background merge failed; the chain stays as it is");
                }
            }
            drop(t);
            worker.merge_done.notify_all();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start a background merge");
        inner.lock().merging = false;
        inner.merge_done.notify_all();
    }
}

/// Encode, upload, commit, then apply retention. Runs on the checkpoint
/// worker thread (never on a runtime thread, so blocking here is fine).
fn run_checkpoint(inner: &Inner, job: Job) -> Result<(Arc<Manifest>, CheckpointInfo)> {
    let cfg = &inner.config;
    // Native snapshots upload the backend's files instead of encoding
    // entries (native.rs).
    if job.snapshot.native().is_some() {
        let native = crate::native::NativeJob {
            handle: &inner.handle,
            store: &inner.store,
            config: cfg,
            properties: &inner.properties,
            id: job.id,
            created_at_ms: job.created_at_ms,
            wal_position: job.wal_position,
            started: job.started,
            snapshot_pause: job.snapshot_pause,
        };
        return crate::native::run_checkpoint(native, job.snapshot);
    }
    let params = EncodeParams {
        max_parallelism: cfg.max_parallelism,
        key_groups_per_artifact: cfg.key_groups_per_artifact,
        merger: cfg.merger.clone(),
        now_ms: inner.clock.now_ms(),
    };
    // Every artifact this checkpoint writes or reuses is pinned before it is
    // handed to the uploader, so a concurrent retention pass (after a merge,
    // or a manual one) cannot delete it before the manifest commits.
    let pins = inner.pins.guard();
    // Encoding feeds the uploader through a bounded queue, so at most a few
    // artifacts wait in memory while uploads run.
    let (tx, rx) = mpsc::channel::<Produced>(cfg.io_concurrency * 2);
    let uploader = inner
        .handle
        .spawn(upload_all(inner.store.clone(), rx, cfg.io_concurrency));
    let encoded = inner.pool.install(|| {
        encode_snapshot(&*job.snapshot, &params, &|p| {
            pins.add(p.reference.id);
            tx.blocking_send(p)
                .map_err(|_| Error::Closed("the uploader stopped".into()))
        })
    });
    drop(tx);
    drop(job.snapshot);
    let uploaded = inner
        .handle
        .block_on(uploader)
        .map_err(|e| Error::Internal(format!("upload task failed: {e}")))?;
    // An upload error explains an encoder "uploader stopped" error: report it first.
    let (artifacts_reused, bytes_written) = uploaded?;
    let (refs, totals) = encoded?;

    let own = Layer {
        checkpoint_id: job.id,
        kind: match job.kind {
            CheckpointKind::Full => LayerKind::Full,
            CheckpointKind::Incremental => LayerKind::Delta,
        },
        artifacts: refs,
    };
    let merged_base = job.merged_base;
    let mut layers = job.parent_layers;
    layers.push(own);
    let manifest = Manifest {
        checkpoint_id: job.id,
        parent: job.parent.as_ref().map(|p| p.checkpoint_id),
        kind: job.kind,
        created_at_ms: job.created_at_ms,
        wal_position: job.wal_position,
        max_parallelism: cfg.max_parallelism,
        layers,
        properties: inner.properties.clone(),
    };
    manifest.validate()?;
    // The manifest claims the state up to its log position; under the
    // Interval and Never policies that part of the log may not be durable
    // yet. Make it so first, or a crash could lose records the checkpoint
    // says come before the tail to replay (and new appends would reuse
    // their LSNs). Under Always this finds nothing to do.
    if let Some(logged) = &inner.logged {
        logged.wal().sync()?;
    }
    let encoded_manifest = Bytes::from(manifest.encode()?);
    let store = inner.store.clone();
    let keep = cfg.max_retained;
    let id = job.id;
    let all_pins = inner.pins.clone();
    let retention = inner.handle.block_on(async move {
        store.commit_manifest(id, encoded_manifest).await?;
        // The committed manifest references everything this checkpoint
        // wrote: its pins can go. Pins of other work (a merged base, which
        // the worker releases once it sees this commit, or a background
        // merge) stay and protect it from this pass.
        drop(pins);
        Ok::<_, Error>(match collect_garbage(&*store, keep, Some(&all_pins), &|_, _| {}).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(checkpoint = %id, error = %e, "retention failed after a committed checkpoint");
                None
            }
        })
    })?;
    // The log before the oldest retained checkpoint is no longer needed by
    // any restore (restore_latest may fall back to any retained one).
    if let (Some(logged), Some(pos)) = (
        &inner.logged,
        retention.as_ref().and_then(|r| r.oldest_wal_position),
    ) && let Err(e) = logged.wal().truncate_before(pos + 1)
    {
        tracing::warn!(checkpoint = %id, error = %e, "could not release write-ahead-log segments");
    }
    let own: &[ArtifactRef] = manifest.own_artifacts();
    let info = CheckpointInfo {
        id: job.id,
        kind: job.kind,
        chain_length: manifest.chain_length(),
        entries: totals.entries,
        expired_dropped: totals.expired_dropped,
        logical_bytes: own.iter().map(|a| a.logical_bytes).sum(),
        encoded_bytes: own.iter().map(|a| a.stored_bytes).sum(),
        bytes_written,
        artifacts: own.len(),
        artifacts_reused,
        snapshot_pause: job.snapshot_pause,
        duration: job.started.elapsed(),
        retention,
        merged_base,
    };
    tracing::debug!(checkpoint = %info.id, kind = %info.kind, entries = info.entries, "checkpoint committed");
    Ok((Arc::new(manifest), info))
}

/// Uploads artifacts as they arrive, `concurrency` at a time. Returns the
/// number of artifacts that were already stored and the bytes written.
async fn upload_all(
    store: Arc<dyn CheckpointStore>,
    mut rx: mpsc::Receiver<Produced>,
    concurrency: usize,
) -> Result<(usize, u64)> {
    let mut set = JoinSet::new();
    let mut reused = 0usize;
    let mut written = 0u64;
    let mut account =
        |r: std::result::Result<Result<(PutOutcome, u64)>, tokio::task::JoinError>| {
            match r.map_err(|e| Error::Internal(format!("upload task failed: {e}")))?? {
                (PutOutcome::Written, n) => written += n,
                (PutOutcome::AlreadyPresent, _) => reused += 1,
            }
            Ok::<_, Error>(())
        };
    while let Some(p) = rx.recv().await {
        while set.len() >= concurrency {
            if let Some(r) = set.join_next().await {
                account(r)?;
            }
        }
        let store = store.clone();
        set.spawn(async move {
            let n = p.bytes.len() as u64;
            let outcome = store.put_artifact(p.reference.id, p.bytes).await?;
            Ok((outcome, n))
        });
    }
    while let Some(r) = set.join_next().await {
        account(r)?;
    }
    Ok((reused, written))
}
