//! The state manager: what a stream engine embeds. It wires a backend, a
//! store and optionally a write-ahead log into a [`Checkpointer`] (the
//! checkpoint pipeline, in `highwater-merge`) and a [`Recovery`] engine
//! (restores, in `highwater-recovery`), and hands out typed state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use highwater_core::{
    CheckpointId, CheckpointStore, Cipher, Clock, Coordinator, EncryptedStore, Error, KeyProvider,
    KeyedStateContext, Manifest, Result, StateBackend, SystemClock,
};
use highwater_merge::{
    CheckpointConfig, CheckpointHandle, Checkpointer, CheckpointerParts, Idle, MergeStats,
    RetentionReport,
};
use highwater_recovery::{
    ProgressFn, Recovery, RecoveryConfig, RecoveryOutcome, RecoveryPlan, RecoveryScope,
    RecoveryStats, RecoveryTarget,
};
use highwater_wal::LoggedBackend;

use crate::guard::{Guarded, closed_error};
use highwater_merge::cluster::{self, Member, PARTICIPANT_PROPERTY, SUBTASK_PROPERTY};

/// What a restore did: the recovery engine's statistics, plus what the
/// manager adds.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RestoreInfo {
    /// Everything the recovery engine measured: the checkpoint restored
    /// ([`RecoveryStats::checkpoint`], `None` when the state was rebuilt
    /// from the write-ahead log alone), its chain, the entries loaded, the
    /// bytes fetched, the newer checkpoints skipped as unreadable
    /// ([`RecoveryStats::fallbacks`]), the log records replayed and the
    /// time each phase took.
    pub stats: RecoveryStats,
    /// After a point-in-time recovery with a write-ahead log: the full
    /// checkpoint of the recovered state taken before returning, so that a
    /// crash afterwards resumes from it rather than from the abandoned
    /// later history still in the store and the log.
    pub fork_checkpoint: Option<CheckpointId>,
    /// States whose stored schema version was older than the registered
    /// one, migrated during the restore: operator, state, stored and new
    /// version (see docs/savepoints.md, "Schema evolution").
    pub migrated: Vec<(String, String, u32, u32)>,
    /// After a migration: the checkpoint of the migrated state taken
    /// before returning (its manifest records the new versions, and a
    /// crash afterwards never replays old-version log records onto
    /// migrated state). `None` for a participant of global checkpoints,
    /// whose next part records them.
    pub migration_checkpoint: Option<CheckpointId>,
}

impl RestoreInfo {
    fn from_outcome(o: &RecoveryOutcome) -> Self {
        RestoreInfo {
            stats: o.stats.clone(),
            fork_checkpoint: None,
            migrated: Vec::new(),
            migration_checkpoint: None,
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

/// Settings made by the builder's own methods, applied over
/// [`StateManagerBuilder::config`]'s at build, whatever the order of calls.
#[derive(Debug, Default)]
struct Overrides {
    max_parallelism: Option<u16>,
    interval: Option<Duration>,
    max_retained: Option<usize>,
    incremental: Option<bool>,
    background_merge: Option<bool>,
}

impl Overrides {
    fn apply(&self, mut c: CheckpointConfig) -> CheckpointConfig {
        if let Some(n) = self.max_parallelism {
            c.max_parallelism = n;
        }
        if let Some(every) = self.interval {
            c.interval = Some(every);
        }
        if let Some(n) = self.max_retained {
            c.max_retained = n;
        }
        if let Some(on) = self.incremental {
            c.incremental = on;
        }
        if let Some(on) = self.background_merge {
            c.background_merge = on;
        }
        c
    }
}

/// Builder of a [`StateManager`].
///
/// The order of calls does not matter: [`config`](Self::config) sets the
/// whole [`CheckpointConfig`] the manager starts from, and the setters of
/// single settings ([`interval`](Self::interval),
/// [`max_retained`](Self::max_retained), …) take precedence over it whether
/// they come before or after it. (Build a complete configuration with
/// `CheckpointConfig`'s `with_*` methods.)
pub struct StateManagerBuilder {
    backend: Option<Arc<dyn StateBackend>>,
    store: Option<Arc<dyn CheckpointStore>>,
    config: CheckpointConfig,
    overrides: Overrides,
    clock: Arc<dyn Clock>,
    properties: BTreeMap<String, String>,
    wal: Option<(std::path::PathBuf, highwater_wal::WalConfig)>,
    recovery: RecoveryConfig,
    cluster: Option<(Arc<dyn Coordinator>, u16, u16)>,
    keys: Option<Arc<dyn KeyProvider>>,
}

impl std::fmt::Debug for StateManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateManagerBuilder")
            .field("config", &self.config)
            .field("overrides", &self.overrides)
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

    /// The configuration the manager starts from (a second call replaces
    /// the first). Settings made with this builder's other methods are
    /// applied over it, before or after this call alike.
    pub fn config(mut self, config: CheckpointConfig) -> Self {
        self.config = config;
        self
    }

    /// Number of key groups (over [`config`](Self::config)'s).
    pub fn max_parallelism(mut self, n: u16) -> Self {
        self.overrides.max_parallelism = Some(n);
        self
    }

    /// Checkpoint interval for [`StateManager::maybe_checkpoint`] (over
    /// [`config`](Self::config)'s). Without one, `maybe_checkpoint` fails.
    pub fn interval(mut self, every: Duration) -> Self {
        self.overrides.interval = Some(every);
        self
    }

    /// Completed checkpoints to keep (over [`config`](Self::config)'s).
    pub fn max_retained(mut self, n: usize) -> Self {
        self.overrides.max_retained = Some(n);
        self
    }

    /// Incremental checkpoints on or off (over [`config`](Self::config)'s).
    pub fn incremental(mut self, on: bool) -> Self {
        self.overrides.incremental = Some(on);
        self
    }

    /// Background merging of chains on or off (over
    /// [`config`](Self::config)'s; see [`CheckpointConfig::background_merge`]).
    pub fn background_merge(mut self, on: bool) -> Self {
        self.overrides.background_merge = Some(on);
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
    /// crash; with `Interval(d)` it survives a crash of the process, and a
    /// crash of the machine loses at most the changes committed in the last
    /// `d` plus two `fdatasync` times; with `Never` a crash can lose what was
    /// committed since the last sync.
    pub fn wal(
        mut self,
        dir: impl Into<std::path::PathBuf>,
        config: highwater_wal::WalConfig,
    ) -> Self {
        self.wal = Some((dir.into(), config));
        self
    }

    /// Encrypts everything this manager writes at rest with the keys of
    /// `keys` (see `docs/reliability.md`, "At-rest encryption"): the
    /// checkpoint store is wrapped in an [`EncryptedStore`] (artifacts and
    /// manifests, cluster parts and ledger records included), the
    /// write-ahead log seals its frames, and
    /// [`savepoint`](StateManager::savepoint) and
    /// [`restore_savepoint`](StateManager::restore_savepoint) seal and open
    /// savepoints with the same keys. New data is sealed with the
    /// provider's current key; reading needs every key the data names.
    /// Anything stored in the clear, or tampered with, then fails with
    /// [`ErrorKind::Authentication`](highwater_core::ErrorKind::Authentication).
    pub fn encryption(mut self, keys: Arc<dyn KeyProvider>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// How restores run (threads, timeout, verification level, fallback).
    /// `restore(id)` never falls back, whatever `optimistic_recovery` says.
    pub fn recovery(mut self, config: RecoveryConfig) -> Self {
        self.recovery = config;
        self
    }

    /// Makes the manager one participant of a job's global checkpoints:
    /// subtask `subtask` of `parallelism`, owning that subtask's key groups
    /// (see `docs/raft.md`, "Cluster jobs").
    ///
    /// The [`store`](Self::store) is then the job's shared store, and this
    /// manager writes into its scope `participants/<id>` (`id` is
    /// `coordinator.participant()`). It checkpoints at the coordinator's
    /// barriers only: [`StateManager::maybe_checkpoint`] and
    /// [`StateManager::commit`] take this participant's part of a pending
    /// global checkpoint (with the coordinator's id) and acknowledge it
    /// once its manifest is committed; [`StateManager::checkpoint`] is
    /// refused. [`StateManager::restore_latest`] restores the newest
    /// *globally completed* checkpoint, this subtask's key groups gathered
    /// from every part (any earlier parallelism), never a newer local part
    /// on its own, and without replaying the write-ahead log past that
    /// cut. Retention keeps the parts of the newest
    /// [`max_retained`](Self::max_retained) completed checkpoints.
    pub fn cluster(
        mut self,
        coordinator: Arc<dyn Coordinator>,
        parallelism: u16,
        subtask: u16,
    ) -> Self {
        self.cluster = Some((coordinator, parallelism, subtask));
        self
    }

    /// A property written into every manifest (for example the job name).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Builds the manager: opens the write-ahead log if one is configured
    /// and starts the checkpointer (its runtime and pools; new checkpoint
    /// ids continue after the store's newest).
    pub fn build(mut self) -> Result<StateManager> {
        let mut config = self.overrides.apply(self.config);
        config.validate()?;
        self.recovery.validate()?;
        let backend = self
            .backend
            .ok_or_else(|| Error::InvalidArgument("a state backend is required".into()))?;
        let mut store = self
            .store
            .ok_or_else(|| Error::InvalidArgument("a checkpoint store is required".into()))?;
        if let Some(keys) = &self.keys {
            store = Arc::new(EncryptedStore::new(store, keys.clone()));
        }
        let member = match self.cluster {
            None => None,
            Some((coordinator, parallelism, subtask)) => {
                let (member, own) = Member::new(
                    coordinator,
                    store,
                    config.max_parallelism,
                    parallelism,
                    subtask,
                    config.max_retained,
                )?;
                store = own;
                self.properties.insert(
                    PARTICIPANT_PROPERTY.into(),
                    member.coordinator().participant().to_string(),
                );
                self.properties
                    .insert(SUBTASK_PROPERTY.into(), member.subtask_label());
                // Retention follows the coordinator's completed
                // checkpoints (after each acknowledgement), not a count
                // of this participant's parts.
                config.max_retained = usize::MAX;
                Some(Arc::new(member))
            }
        };
        let (backend, logged) = match self.wal {
            Some((dir, mut config)) => {
                if let Some(keys) = &self.keys {
                    config.encryption = Some(Cipher::new(keys.clone()));
                }
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
        let checkpointer = Checkpointer::start(CheckpointerParts {
            backend,
            logged,
            store,
            config,
            clock: self.clock.clone(),
            properties: self.properties,
        })?;
        let closed = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(crate::guard::OpCounts::default());
        let guarded = Arc::new(Guarded {
            inner: checkpointer.backend().clone(),
            closed: closed.clone(),
            ops: ops.clone(),
        });
        Ok(StateManager {
            checkpointer,
            guarded,
            ops,
            closed,
            clock: self.clock,
            recovery: self.recovery,
            member,
            keys: self.keys,
        })
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
    checkpointer: Checkpointer,
    /// The backend as handed out: writes fail once the manager is closed.
    guarded: Arc<dyn StateBackend>,
    /// Operations served through `guarded`.
    ops: Arc<crate::guard::OpCounts>,
    /// Set by [`StateManager::close`]; shared by every clone.
    closed: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
    recovery: RecoveryConfig,
    /// Set for a participant of global checkpoints.
    member: Option<Arc<Member>>,
    /// Set when everything is encrypted at rest.
    keys: Option<Arc<dyn KeyProvider>>,
}

impl std::fmt::Debug for StateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateManager")
            .field("checkpointer", &self.checkpointer)
            .finish()
    }
}

impl StateManager {
    /// Starts building a manager.
    pub fn builder() -> StateManagerBuilder {
        StateManagerBuilder {
            backend: None,
            store: None,
            config: CheckpointConfig::default(),
            overrides: Overrides::default(),
            clock: Arc::new(SystemClock),
            properties: BTreeMap::new(),
            wal: None,
            recovery: RecoveryConfig::default(),
            cluster: None,
            keys: None,
        }
    }

    /// `store` as this manager reads and writes savepoints in it: sealed
    /// with the manager's keys when it encrypts at rest.
    pub(crate) fn sealed(&self, store: Arc<dyn CheckpointStore>) -> Arc<dyn CheckpointStore> {
        match &self.keys {
            Some(keys) => Arc::new(EncryptedStore::new(store, keys.clone())),
            None => store,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CheckpointConfig {
        self.checkpointer.config()
    }

    /// The live state backend (the logged one when a write-ahead log is
    /// on). Its writes fail with [`Error::Closed`] after
    /// [`close`](StateManager::close); reads keep working.
    pub fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.guarded
    }

    /// True once [`close`](StateManager::close) was called (on this
    /// manager or a clone of it).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    /// The checkpoint store.
    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        self.checkpointer.store()
    }

    /// The checkpoint pipeline.
    pub fn checkpointer(&self) -> &Checkpointer {
        &self.checkpointer
    }

    /// A context handing out typed state handles for `operator`.
    pub fn keyed_state(&self, operator: &str) -> Result<KeyedStateContext> {
        KeyedStateContext::with_clock(
            self.backend().clone(),
            operator,
            self.config().max_parallelism,
            self.clock.clone(),
        )
        .map(|c| c.with_schemas(self.checkpointer.schemas().clone()))
    }

    /// Takes a checkpoint now, after waiting for any checkpoint in flight.
    /// The snapshot is taken before this returns; the rest runs in the
    /// background. Call it between events.
    ///
    /// A participant of global checkpoints
    /// ([`StateManagerBuilder::cluster`]) checkpoints at its coordinator's
    /// barriers only, and gets [`Error::InvalidArgument`] here.
    pub fn checkpoint(&self) -> Result<CheckpointHandle> {
        self.check_open()?;
        if self.member.is_some() {
            return Err(Error::InvalidArgument(
                "a cluster participant checkpoints at its coordinator's barriers: call maybe_checkpoint() or commit() between events, and trigger checkpoints on the coordinator".into(),
            ));
        }
        self.checkpointer.checkpoint()
    }

    /// Takes a checkpoint if the configured interval has passed since the
    /// last one and none is in flight. Call it between events.
    ///
    /// Without an interval (neither [`StateManagerBuilder::interval`] nor
    /// [`CheckpointConfig::interval`]) it fails with
    /// [`Error::InvalidArgument`] at once, instead of never checkpointing
    /// in silence: set an interval, or call
    /// [`checkpoint`](StateManager::checkpoint) when you want one.
    ///
    /// A participant of global checkpoints takes its part of the pending
    /// global checkpoint here, if there is one it has not taken yet (the
    /// coordinator's interval applies, not this manager's).
    pub fn maybe_checkpoint(&self) -> Result<Option<CheckpointHandle>> {
        self.check_open()?;
        match &self.member {
            Some(m) => cluster::take_barrier(&self.checkpointer, m),
            None => self.checkpointer.maybe_checkpoint(),
        }
    }

    /// Marks an event boundary: with a write-ahead log, appends the changes
    /// made since the last commit as one atomic batch (durable on return
    /// under `SyncPolicy::Always`, written to the operating system under
    /// `Interval`, queued under `Never`). Without a log it does nothing.
    ///
    /// A participant of global checkpoints also takes its part of a pending
    /// global checkpoint here, as [`maybe_checkpoint`](Self::maybe_checkpoint)
    /// does (its outcome reaches the coordinator, and the log as a warning
    /// on failure).
    pub fn commit(&self) -> Result<()> {
        self.check_open()?;
        if let Some(logged) = self.checkpointer.logged() {
            logged.commit()?;
        }
        if let Some(m) = &self.member {
            cluster::take_barrier(&self.checkpointer, m)?;
        }
        Ok(())
    }

    /// Waits for the checkpoint in flight, stops a background merge still
    /// running (it gives up before its next group of artifacts: what it
    /// uploaded is left to garbage collection and the chain stays as it
    /// was, to be merged by a later run), waits for their threads to end
    /// (so that once the caller drops the manager and its own handles
    /// nothing of theirs holds the backend: a RocksDB directory can be
    /// reopened at once), commits pending changes and
    /// closes the write-ahead log (which makes it durable and releases its
    /// directory). Afterwards every state change (through state handles or
    /// [`backend`](StateManager::backend)), checkpoint, commit and restore
    /// fails with [`Error::Closed`] (an error of kind
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed)), on this manager and
    /// every clone; reads keep working. Closing twice is not an error.
    pub fn close(&self) -> Result<()> {
        // Before anything that waits: a background merge gives up at its
        // next group of artifacts instead of running to its end (and
        // before the flag below, so whoever sees the manager closed sees
        // merging stopped).
        self.checkpointer.stop_merges();
        let idle = self.checkpointer.idle();
        self.checkpointer.join_worker();
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let closed = match self.checkpointer.logged() {
            Some(logged) => logged.commit().and_then(|()| logged.wal().close()),
            None => Ok(()),
        };
        drop(idle);
        // No checkpoint starts once the flag is set, so no merge starts
        // either: wait for one still running to give up, and for its
        // thread.
        self.checkpointer.join_merge();
        closed
    }

    /// Counts the backend ([`StateBackend::stats`]) and sets the backend
    /// size gauges of [`crate::metrics`] (entries, bytes, arena, live and
    /// index bytes, labelled with the backend's name) and the operation
    /// counters of the state handles' calls. Cheap for the memory
    /// backend; a Redis backend counts its namespace (a scan), so call it
    /// at checkpoint pace, not per event.
    pub fn record_backend_metrics(&self) {
        let backend = self.checkpointer.backend();
        crate::metrics::backend_stats(backend.name(), &backend.stats());
        crate::metrics::backend_operations(backend.name(), &self.ops.by_op());
    }

    /// The write-ahead log, if one is configured.
    pub fn wal(&self) -> Option<&Arc<highwater_wal::Wal>> {
        self.checkpointer.logged().map(|l| l.wal())
    }

    /// Blocks until no checkpoint is in flight.
    pub fn wait_idle(&self) {
        drop(self.checkpointer.idle());
    }

    /// Restores the newest readable checkpoint and, with a write-ahead log,
    /// replays the log after it (a state with no checkpoint yet is rebuilt
    /// from the log alone, reported with no checkpoint id). With
    /// `optimistic_recovery` on (the default), a checkpoint whose manifest
    /// or artifacts are corrupt or missing is skipped (with a warning and an
    /// entry in [`RecoveryStats::fallbacks`] of [`RestoreInfo::stats`]) in favour of the previous one.
    /// Returns `Ok(None)` when the store holds no checkpoint and there is
    /// no log to rebuild from.
    ///
    /// A participant of global checkpoints restores the newest globally
    /// completed checkpoint instead (see [`StateManagerBuilder::cluster`]).
    pub fn restore_latest(&self) -> Result<Option<RestoreInfo>> {
        self.check_open()?;
        // Held for the whole restore: no checkpoint may start meanwhile.
        let mut idle = self.checkpointer.idle();
        if let Some(m) = &self.member {
            return self.restore_global(&mut idle, m, None);
        }
        let store = self.store().clone();
        let ids = self
            .checkpointer
            .exec()
            .run_io(async move { store.list_manifests().await })?;
        let log_holds_state = self
            .wal()
            .is_some_and(|w| w.first_lsn() == 1 && w.last_lsn() >= 1);
        if ids.is_empty() && !log_holds_state {
            return Ok(None);
        }
        let info = self.restore_locked(
            &mut idle,
            self.store().clone(),
            RecoveryTarget::Latest,
            &RecoveryScope::all(),
            &self.recovery,
            None,
        )?;
        Self::checkpoint_migrated(idle, info).map(Some)
    }

    /// A participant's restore of global checkpoint `wanted` (the newest
    /// completed one when `None`), without falling back to another cut.
    fn restore_global(
        &self,
        idle: &mut Idle<'_>,
        m: &Member,
        wanted: Option<CheckpointId>,
    ) -> Result<Option<RestoreInfo>> {
        use cluster::GlobalSource;
        let config = self.recovery.clone().optimistic_recovery(false);
        let (store, id, scope) =
            match cluster::prepare_restore(&self.checkpointer, m, idle.base(), wanted)? {
                GlobalSource::Nothing => return Ok(None),
                GlobalSource::Own(id) => (self.store().clone(), id, RecoveryScope::all()),
                GlobalSource::View(view, id) => {
                    let max = self.config().max_parallelism;
                    (
                        view,
                        id,
                        RecoveryScope::subtask(max, m.parallelism(), m.subtask())?,
                    )
                }
            };
        let target = RecoveryTarget::Checkpoint(id);
        self.restore_locked(idle, store, target, &scope, &config, None)
            .map(Some)
    }

    /// Restores checkpoint `id` exactly, replacing all live state (the
    /// write-ahead log is not replayed: the state is the checkpoint's). A
    /// damaged or missing checkpoint is a typed error naming the checkpoint
    /// and the artifact, and leaves live state untouched.
    ///
    /// A participant of global checkpoints restores globally completed
    /// checkpoint `id` this way.
    pub fn restore(&self, id: CheckpointId) -> Result<RestoreInfo> {
        self.check_open()?;
        let mut idle = self.checkpointer.idle();
        if let Some(m) = &self.member {
            return self
                .restore_global(&mut idle, m, Some(id))?
                .ok_or_else(|| Error::NotFound(format!("globally completed checkpoint {id}")));
        }
        let config = self.recovery.clone().optimistic_recovery(false);
        let info = self.restore_locked(
            &mut idle,
            self.store().clone(),
            RecoveryTarget::Checkpoint(id),
            &RecoveryScope::all(),
            &config,
            None,
        )?;
        Self::checkpoint_migrated(idle, info)
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
            &self.recovery,
            None,
        )
    }

    /// The general restore: any target, any scope (a subtask's key groups
    /// after rescaling, selected operators), any configuration, with a
    /// progress callback. All live state is replaced by the scope's state;
    /// a native checkpoint (RocksDB files) restores through the same plan
    /// and fallback, keeping only the scope's key groups.
    ///
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
        self.check_open()?;
        if self.member.is_some() {
            return Err(Error::InvalidArgument(
                "a cluster participant restores global checkpoints only: restore_latest() or restore(id)".into(),
            ));
        }
        let mut idle = self.checkpointer.idle();
        let store = self.store().clone();
        let mut info = self.restore_locked(&mut idle, store, target, scope, config, progress)?;
        if matches!(target, RecoveryTarget::PointInTime { .. }) && self.wal().is_some() {
            idle.forget_base();
            let done = idle.trigger()?.wait()?;
            info.fork_checkpoint = Some(done.id);
            if !info.migrated.is_empty() {
                // The fork's checkpoint holds the migrated state.
                info.migration_checkpoint = info.fork_checkpoint;
            }
            return Ok(info);
        }
        Self::checkpoint_migrated(idle, info)
    }

    /// The plan a restore to `target` of `scope` would follow, without
    /// loading anything (manifests are read; artifacts are not).
    pub fn recovery_plan(
        &self,
        target: RecoveryTarget,
        scope: &RecoveryScope,
    ) -> Result<RecoveryPlan> {
        let engine = self.recovery_engine(&self.recovery, self.store().clone())?;
        engine.plan(target, &self.job_scope(scope), self.wal().map(|w| &**w))
    }

    /// A recovery engine on this job's execution context: its I/O runtime,
    /// and its CPU pool when `config` asks for that many threads.
    fn recovery_engine(
        &self,
        config: &RecoveryConfig,
        store: Arc<dyn CheckpointStore>,
    ) -> Result<Recovery> {
        let exec = self.checkpointer.exec();
        let engine = Recovery::new(store, config.clone(), exec.io().clone())?
            .with_now_ms(self.clock.now_ms());
        Ok(if config.threads() == exec.cpu().current_num_threads() {
            engine.with_pool(exec.cpu().clone())
        } else {
            engine
        })
    }

    /// `scope`, pinned to this job's number of key groups.
    fn job_scope(&self, scope: &RecoveryScope) -> RecoveryScope {
        let mut scope = scope.clone();
        scope
            .max_parallelism
            .get_or_insert(self.config().max_parallelism);
        scope
    }

    /// Runs a recovery while the checkpointer is held idle.
    fn restore_locked(
        &self,
        idle: &mut Idle<'_>,
        source: Arc<dyn CheckpointStore>,
        target: RecoveryTarget,
        scope: &RecoveryScope,
        config: &RecoveryConfig,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RestoreInfo> {
        let engine = self.recovery_engine(config, source)?;
        let scope = self.job_scope(scope);
        // A plan that fails (no such checkpoint, nothing readable) has
        // touched nothing; the chain the next checkpoint builds on stands.
        let plan = engine.plan(target, &scope, self.wal().map(|w| &**w))?;
        // State stored with other types than the handles registered is
        // refused before anything is loaded; an older schema version with
        // registered migrations is migrated once loaded.
        let migrations = match plan.manifest() {
            Some(m) => Some(self.checkpointer.schemas().plan(&m.schemas)?),
            None => None,
        }
        .filter(|p| !p.is_empty());
        let max_parallelism = self.config().max_parallelism;
        let load = |backend: &dyn highwater_core::StateBackend,
                    wal: Option<&highwater_wal::Wal>|
         -> Result<RecoveryOutcome> {
            let outcome = engine.execute(plan, backend, wal, progress)?;
            // Migrated in place, eagerly, before anything reads it; not
            // logged (a crash before the checkpoint below restores and
            // migrates again).
            if let Some(p) = &migrations
                && let Err(e) = p.migrate_backend(backend, max_parallelism)
            {
                if let Err(clear) = backend.clear() {
                    tracing::warn!(error = %clear, "could not clear the backend after a failed migration");
                }
                return Err(e);
            }
            Ok(outcome)
        };
        let result = match self.checkpointer.logged() {
            // What the recovery loads must not be logged again.
            Some(logged) => logged.recover_with(|backend, wal| load(backend, Some(wal))),
            None => load(&**self.checkpointer.backend(), None),
        };
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                if e.is_corruption() || e.kind() == highwater_core::ErrorKind::NotFound {
                    // Artifacts are shared between checkpoints, so the chain
                    // the next incremental would build on may be damaged
                    // too: make the next checkpoint full.
                    idle.forget_base();
                }
                return Err(e);
            }
        };
        // An incremental may build on the checkpoint only if the backend
        // holds all of it (every artifact of which was just verified).
        if let Some(m) = &outcome.manifest {
            self.checkpointer.schemas().set_stored(&m.schemas);
        }
        idle.restored(outcome.manifest.clone(), scope.is_everything());
        let mut info = RestoreInfo::from_outcome(&outcome);
        if let Some(p) = migrations {
            self.checkpointer.schemas().set_stored(&p.schemas);
            info.migrated = p.migrated();
        }
        Ok(info)
    }

    /// After a restore that migrated state (outside a cluster): the
    /// checkpoint of the migrated state, before anything else may write
    /// ([`RestoreInfo::migration_checkpoint`]).
    fn checkpoint_migrated(idle: Idle<'_>, mut info: RestoreInfo) -> Result<RestoreInfo> {
        if !info.migrated.is_empty() {
            info.migration_checkpoint = Some(idle.trigger()?.wait()?.id);
        }
        Ok(info)
    }

    /// Every committed checkpoint, oldest first, with its manifest or the
    /// reason it cannot be read.
    pub fn checkpoint_history(&self) -> Result<Vec<HistoryEntry>> {
        Ok(self
            .checkpointer
            .history()?
            .into_iter()
            .map(|(id, manifest)| HistoryEntry { id, manifest })
            .collect())
    }

    /// The newest committed checkpoint this manager wrote or restored, if
    /// the backend's changes are tracked relative to it.
    pub fn last_checkpoint(&self) -> Option<CheckpointId> {
        self.checkpointer.last_checkpoint()
    }

    /// Applies retention now (it also runs after every checkpoint). Merged
    /// bases not yet used by a checkpoint are pinned and kept.
    pub fn apply_retention(&self) -> Result<RetentionReport> {
        self.checkpointer.apply_retention()
    }

    /// Merges the chain of the newest checkpoint now, on the calling
    /// thread (using the merge pool), after any background merge finishes.
    /// The next checkpoint builds on the merged base. Returns `None` when
    /// there is nothing to merge (no checkpoint yet, or a single layer).
    pub fn compact(&self) -> Result<Option<MergeStats>> {
        self.checkpointer.compact()
    }

    /// Blocks until no background merge is running.
    pub fn wait_merges(&self) {
        self.checkpointer.wait_merges()
    }

    /// The checkpoint id up to which a merged base is waiting to be used by
    /// the next checkpoint, if any.
    pub fn pending_merge(&self) -> Option<CheckpointId> {
        self.checkpointer.pending_merge()
    }
}
