//! Savepoints of a [`StateManager`]: taking one, and restoring one into
//! any backend at any parallelism and number of key groups. The format and
//! the reading and writing are in `highwater-merge`'s
//! [`savepoint`](highwater_merge::savepoint) module; this is the wiring.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use highwater_core::{
    CheckpointId, CheckpointStore, DecodeLimits, Error, KeyGroupRange, RecordBlock, Result,
    SnapshotKind, StateSchema,
};
use highwater_merge::savepoint::{
    LoadOptions, SavepointInfo, SavepointParams, load_blocks, load_savepoint,
    write_snapshot_savepoint,
};

use crate::StateManager;
use crate::guard::closed_error;

/// A savepoint being written in the background: see
/// [`StateManager::savepoint`].
#[derive(Debug)]
pub struct SavepointHandle {
    snapshot_pause: Duration,
    done: crossbeam_channel::Receiver<Result<SavepointInfo>>,
}

impl SavepointHandle {
    /// How long the calling thread was held while the snapshot was taken
    /// (the same snapshot a full checkpoint takes).
    pub fn snapshot_pause(&self) -> Duration {
        self.snapshot_pause
    }

    /// Waits until the savepoint is committed (or failed).
    pub fn wait(self) -> Result<SavepointInfo> {
        self.done
            .recv()
            .map_err(|_| Error::Internal("the savepoint worker ended without a result".into()))?
    }
}

/// How [`StateManager::restore_savepoint_with`] restores.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SavepointRestoreOptions {
    /// The savepoint to restore (the newest in the store when `None`).
    pub savepoint: Option<CheckpointId>,
    /// Only these key groups (of the manager's `max_parallelism`), for one
    /// subtask of a rescaled job; all when `None`.
    pub key_groups: Option<KeyGroupRange>,
    /// States loaded under another name: stored `(operator, state)` to new
    /// `(operator, state)`.
    pub renames: BTreeMap<(String, String), (String, String)>,
    /// Stored states (operator, state) left out of the restore.
    pub dropped: BTreeSet<(String, String)>,
    /// Leaves out every state of the savepoint this job has not registered
    /// (created a handle for) before the restore. Off by default: such
    /// states are loaded, and checked when a handle is created.
    pub allow_dropped_state: bool,
    /// Skips the full checkpoint a restore ends with. Then a crash before
    /// the next checkpoint resumes from the checkpoints (and log) of before
    /// the restore: only for restores that are redone after a crash anyway
    /// (tools, benchmarks, tests).
    pub skip_checkpoint: bool,
    /// Bounds of the artifact decoder.
    pub limits: DecodeLimits,
}

impl SavepointRestoreOptions {
    /// Leaves the stored state `(operator, state)` out of the restore.
    pub fn drop_state(mut self, operator: &str, state: &str) -> Self {
        self.dropped
            .insert((operator.to_string(), state.to_string()));
        self
    }

    /// Leaves out every stored state this job has not registered before
    /// the restore (see [`allow_dropped_state`](Self::allow_dropped_state)).
    pub fn allow_dropped_state(mut self, on: bool) -> Self {
        self.allow_dropped_state = on;
        self
    }

    /// Restores savepoint `id` instead of the newest.
    pub fn savepoint(mut self, id: CheckpointId) -> Self {
        self.savepoint = Some(id);
        self
    }

    /// Restores only `range` of the manager's key groups.
    pub fn key_groups(mut self, range: KeyGroupRange) -> Self {
        self.key_groups = Some(range);
        self
    }

    /// Loads the stored state `from` (operator, state) as `to`.
    pub fn rename(mut self, from: (&str, &str), to: (&str, &str)) -> Self {
        self.renames.insert(
            (from.0.to_string(), from.1.to_string()),
            (to.0.to_string(), to.1.to_string()),
        );
        self
    }
}

/// What [`StateManager::restore_savepoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SavepointRestoreInfo {
    /// The savepoint restored.
    pub savepoint: CheckpointId,
    /// Entries loaded.
    pub entries: u64,
    /// Bytes of keys and values loaded.
    pub logical_bytes: u64,
    /// True when keys were re-hashed into a different number of key groups.
    pub rehashed: bool,
    /// States migrated: operator, state, stored and new schema version.
    pub migrated: Vec<(String, String, u32, u32)>,
    /// Stored states left out (operator, state).
    pub dropped: Vec<(String, String)>,
    /// The full checkpoint of the restored state taken before returning
    /// (`None` with [`SavepointRestoreOptions::skip_checkpoint`]).
    pub checkpoint: Option<CheckpointId>,
    /// Time taken, checkpoint included.
    pub duration: Duration,
}

impl StateManager {
    /// Takes a savepoint into `target` (a store of its own, such as
    /// `ObjectCheckpointStore::local(dir)`): a canonical, backend-independent
    /// copy of all state with each state's schema, committed under the id
    /// after the newest in `target`.
    ///
    /// Like [`checkpoint`](StateManager::checkpoint), it waits for a
    /// checkpoint in flight, then takes a full snapshot on the calling
    /// thread (the pause a full checkpoint has, [`SavepointHandle::snapshot_pause`])
    /// and writes the savepoint in the background. The next checkpoint is
    /// full: the snapshot started a new change-tracking epoch. Call it
    /// between events.
    pub fn savepoint(&self, target: Arc<dyn CheckpointStore>) -> Result<SavepointHandle> {
        if self.is_closed() {
            return Err(closed_error());
        }
        let target = self.sealed(target);
        let cp = self.checkpointer();
        let mut idle = cp.idle();
        let started = Instant::now();
        let snapshot = match cp.logged() {
            Some(logged) => logged.snapshot_at(SnapshotKind::Full)?.0,
            None => cp.backend().snapshot(SnapshotKind::Full)?,
        };
        idle.forget_base();
        drop(idle);
        let snapshot_pause = started.elapsed();
        let schemas = cp.schemas().schemas();
        let mut params = SavepointParams::new(self.config().max_parallelism, cp.clock().now_ms());
        params.properties = cp.properties().clone();
        let worker = cp.clone();
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("highwater-savepoint".into())
            .spawn(move || {
                let io = worker.exec().io().clone();
                let result = write_snapshot_savepoint(&*snapshot, &schemas, &params, &target, &io);
                drop(snapshot);
                let _ = tx.send(result.map(|(_, info)| info));
            })
            .map_err(|e| Error::io("spawn the savepoint worker", e))?;
        Ok(SavepointHandle {
            snapshot_pause,
            done: rx,
        })
    }

    /// Restores the newest savepoint of `source` into this manager's
    /// backend, whatever backend wrote it, re-hashing keys when this job
    /// has another `max_parallelism`; see
    /// [`restore_savepoint_with`](StateManager::restore_savepoint_with).
    pub fn restore_savepoint(
        &self,
        source: Arc<dyn CheckpointStore>,
    ) -> Result<SavepointRestoreInfo> {
        self.restore_savepoint_with(source, &SavepointRestoreOptions::default())
    }

    /// Restores a savepoint of `source`, replacing all live state.
    ///
    /// In order: the savepoint manifest is read and validated; its schemas
    /// are checked against the states this job registered
    /// ([`Error::SchemaMismatch`] otherwise); every artifact is fetched and
    /// verified, keys are re-hashed for this job's key groups and values
    /// migrated, and the backend replaced; a damaged, incomplete or
    /// mismatched savepoint leaves the live state untouched. A backend whose
    /// restore is atomic ([`StateBackend::restore_is_atomic`](highwater_core::StateBackend::restore_is_atomic): memory,
    /// RocksDB) loads each artifact as soon as it is verified; any other
    /// gets the entries once the whole savepoint is verified, and is
    /// cleared should it fail while loading. Finally a full checkpoint
    /// of the restored state is taken (so that a crash afterwards resumes
    /// from it, not from older checkpoints or log records).
    pub fn restore_savepoint_with(
        &self,
        source: Arc<dyn CheckpointStore>,
        options: &SavepointRestoreOptions,
    ) -> Result<SavepointRestoreInfo> {
        if self.is_closed() {
            return Err(closed_error());
        }
        let started = Instant::now();
        let source = self.sealed(source);
        let cp = self.checkpointer();
        let mut idle = cp.idle();
        let io = cp.exec().io().clone();
        let manifest = load_savepoint(&source, &io, options.savepoint)?;
        let registry = cp.schemas();
        let mut dropped = options.dropped.clone();
        if options.allow_dropped_state {
            for s in &manifest.states {
                let (o, st) = options
                    .renames
                    .get(&(s.operator.clone(), s.state.clone()))
                    .cloned()
                    .unwrap_or_else(|| (s.operator.clone(), s.state.clone()));
                if registry.get(&o, &st).is_none() {
                    dropped.insert((s.operator.clone(), s.state.clone()));
                }
            }
        }
        let schemas: Vec<StateSchema> = manifest
            .schemas()
            .into_iter()
            .filter(|s| !dropped.contains(&(s.operator.clone(), s.state.clone())))
            .map(|mut s| {
                if let Some((o, st)) = options.renames.get(&(s.operator.clone(), s.state.clone())) {
                    s.operator.clone_from(o);
                    s.state.clone_from(st);
                }
                s
            })
            .collect();
        // Schema conflicts and missing migrations are found here, before
        // any artifact is read.
        let migrations = registry.plan(&schemas)?;
        let migrated = migrations.migrated();
        let stored_schemas = migrations.schemas.clone();
        let load = LoadOptions {
            max_parallelism: self.config().max_parallelism,
            keep: options.key_groups,
            renames: options.renames.clone(),
            dropped: dropped.clone(),
            migrations,
            limits: options.limits,
        };
        // A backend whose restore is atomic loads the blocks while the
        // savepoint is read; any other gets them once the whole savepoint
        // is verified, so a damaged one never replaces its live state.
        let backend = cp.backend();
        let atomic = backend.restore_is_atomic();
        let mut touched = false;
        let loaded = load_blocks(&source, &io, &manifest, &load, |blocks| {
            let mut whole;
            let blocks: &mut dyn Iterator<Item = Result<RecordBlock>> = if atomic {
                blocks
            } else {
                whole = blocks.collect::<Result<Vec<_>>>()?.into_iter().map(Ok);
                &mut whole
            };
            touched = true;
            match cp.logged() {
                Some(logged) => logged.recover_with(|backend, _| backend.restore(blocks)),
                None => backend.restore(blocks),
            }
        });
        if touched {
            idle.forget_base();
        }
        let loaded = match loaded {
            Ok(((), loaded)) => loaded,
            Err(e) => {
                // A backend whose restore is not atomic may hold part of
                // the entries: leave it empty rather than half restored.
                if touched
                    && !atomic
                    && let Err(clear) = backend.clear()
                {
                    tracing::warn!(error = %clear, "could not clear the backend after a failed savepoint restore");
                }
                return Err(e);
            }
        };
        registry.set_stored(&stored_schemas);
        let checkpoint = if options.skip_checkpoint {
            None
        } else {
            Some(idle.trigger()?.wait()?.id)
        };
        Ok(SavepointRestoreInfo {
            savepoint: manifest.savepoint_id,
            entries: loaded.entries,
            logical_bytes: loaded.logical_bytes,
            rehashed: loaded.rehashed,
            migrated,
            dropped: dropped.into_iter().collect(),
            checkpoint,
            duration: started.elapsed(),
        })
    }
}
