//! The recovery engine: planning with fallback, concurrent fetching,
//! parallel decode-and-fold per key-group range, streamed loading, and the
//! write-ahead-log replay.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use highwater_core::key::key_group_of;
use highwater_core::ttl::is_expired_value;
use highwater_core::{
    ArtifactId, ArtifactRef, BulkLoader, BulkRestore, CheckpointId, CheckpointStore, DecodeLimits,
    Error, KeyForm, Manifest, NativeCheckpoints, NativeFileRef, NativeFiles, NativeSource,
    RecordBlock, Result, SnapshotKind, StateBackend, decode_checked_where, load_manifest,
    visit_checked,
};
use highwater_merge::io::{NATIVE_BYTES_IN_FLIGHT, fetch_verified, run_io};
use highwater_wal::Wal;
use rayon::prelude::*;

use crate::config::{LoadStrategy, RecoveryConfig, VerificationLevel};
use crate::plan::{
    PlannedArtifact, RangePlan, RecoveryPlan, RecoveryScope, RecoveryTarget, candidate_ids,
    check_manifest, disqualifies, log_only_plan, plan_for,
};
use crate::replay::replay_wal;
use crate::stats::{Fallback, Phase, Progress, ProgressFn, RecoveryStats};

/// The result of a recovery.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecoveryOutcome {
    /// What was done.
    pub stats: RecoveryStats,
    /// The manifest of the checkpoint recovered from (`None`: the log
    /// alone). A checkpointer continues its incremental chain from it.
    pub manifest: Option<Arc<highwater_core::Manifest>>,
}

/// The recovery engine for one checkpoint store.
///
/// Blocking methods ([`plan`](Recovery::plan), [`recover`](Recovery::recover),
/// [`execute`](Recovery::execute)) run their I/O on the tokio runtime whose
/// handle they were given and wait for it on the calling thread; call them
/// from a thread that is not one of that runtime's workers' async tasks
/// (`spawn_blocking` is fine). Decoding runs on a rayon pool: the one
/// given to [`with_pool`](Recovery::with_pool) (a job's manager passes its
/// checkpointer's CPU pool), or else the engine's own of
/// [`RecoveryConfig::max_parallel_threads`] threads, started on first use.
pub struct Recovery {
    store: Arc<dyn CheckpointStore>,
    config: RecoveryConfig,
    io: tokio::runtime::Handle,
    /// Given, or started on first use: planning alone (`plan`) needs no
    /// threads.
    pool: std::sync::OnceLock<Arc<rayon::ThreadPool>>,
    limits: DecodeLimits,
    now_ms: u64,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("store", &self.store.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Recovery {
    /// An engine reading `store`, doing I/O on the runtime of `io`.
    pub fn new(
        store: Arc<dyn CheckpointStore>,
        config: RecoveryConfig,
        io: tokio::runtime::Handle,
    ) -> Result<Self> {
        config.validate()?;
        // Every artifact is fetched through `fetch_verified`, which checks
        // it against its content address unless verification is off.
        let limits = DecodeLimits {
            content_address_checked: config.verification_level != VerificationLevel::None,
            ..DecodeLimits::default()
        };
        Ok(Recovery {
            store,
            config,
            io,
            pool: std::sync::OnceLock::new(),
            limits,
            now_ms: highwater_core::Clock::now_ms(&highwater_core::SystemClock),
        })
    }

    /// The decode pool of [`RecoveryConfig::max_parallel_threads`] threads,
    /// started on first use.
    fn pool(&self) -> Result<&rayon::ThreadPool> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.config.threads())
            .thread_name(|i| format!("highwater-recover-{i}"))
            .build()
            .map_err(|e| Error::unexpected("start the recovery pool", e))?;
        // A concurrent first use may have won; either pool will do.
        Ok(self.pool.get_or_init(|| Arc::new(pool)))
    }

    /// Decodes on `pool` instead of starting a pool of its own; its size
    /// then stands for [`RecoveryConfig::max_parallel_threads`].
    pub fn with_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Self {
        self.pool = std::sync::OnceLock::from(pool);
        self
    }

    /// Sets the time (ms since the Unix epoch) at which TTL expiry is
    /// judged: entries expired then are not loaded. Defaults to the wall
    /// clock when the engine was made.
    pub fn with_now_ms(mut self, now_ms: u64) -> Self {
        self.now_ms = now_ms;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RecoveryConfig {
        &self.config
    }

    /// Runs `fut` on the I/O runtime and waits for it.
    fn run_io<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        run_io(&self.io, fut)
    }

    /// Plans a recovery of `scope` to `target`. With `wal` the plan
    /// includes the log range to replay (none for a
    /// [`RecoveryTarget::Checkpoint`]), and falls back to the log alone
    /// when no checkpoint qualifies and the log reaches back to its first
    /// record. Manifests that cannot be read are skipped (and listed) when
    /// `optimistic_recovery` is on, and an error otherwise.
    pub fn plan(
        &self,
        target: RecoveryTarget,
        scope: &RecoveryScope,
        wal: Option<&Wal>,
    ) -> Result<RecoveryPlan> {
        let store = self.store.clone();
        let ids = self.run_io(async move { store.list_manifests().await })?;
        let ids = candidate_ids(ids, target)?;
        self.plan_from(target, scope, wal, ids, Vec::new())
    }

    /// Plans from `candidates` (newest first), after `fallbacks`.
    fn plan_from(
        &self,
        target: RecoveryTarget,
        scope: &RecoveryScope,
        wal: Option<&Wal>,
        candidates: Vec<CheckpointId>,
        mut fallbacks: Vec<Fallback>,
    ) -> Result<RecoveryPlan> {
        let mut rest = candidates.into_iter();
        while let Some(id) = rest.next() {
            let store = self.store.clone();
            let scope2 = scope.clone();
            let level = self.config.verification_level;
            let loaded = self.run_io(async move {
                let m = load_manifest(&*store, id).await?;
                check_manifest(&*store, &m, &scope2, level).await?;
                Ok(m)
            });
            match loaded {
                Ok(m) => {
                    if let RecoveryTarget::PointInTime { at_ms } = target
                        && m.created_at_ms > at_ms
                    {
                        continue;
                    }
                    return Ok(plan_for(
                        target,
                        scope,
                        Arc::new(m),
                        wal,
                        fallbacks,
                        rest.collect(),
                    ));
                }
                Err(e) if disqualifies(&e) && self.config.optimistic_recovery => {
                    tracing::warn!(checkpoint = %id, error = %e, "checkpoint unusable; falling back to the previous one");
                    fallbacks.push(Fallback {
                        checkpoint: id,
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        if fallbacks.is_empty() {
            if let Some(wal) = wal
                && !matches!(target, RecoveryTarget::Checkpoint(_))
                && wal.first_lsn() == 1
                && wal.written_lsn() >= 1
            {
                return Ok(log_only_plan(target, scope, wal, fallbacks));
            }
            return Err(Error::NotFound(match target {
                RecoveryTarget::PointInTime { at_ms } => format!(
                    "no checkpoint created at or before {at_ms} ms, and no write-ahead log reaching back to its first record"
                ),
                _ => "no checkpoint to recover from".to_string(),
            }));
        }
        Err(Error::corrupt(
            "checkpoints",
            format!(
                "no readable checkpoint; tried: {}",
                fallbacks
                    .iter()
                    .map(|f| format!("{} ({})", f.checkpoint, f.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// Plans and executes a recovery of `scope` to `target` into `backend`
    /// (replacing all of its state), replaying `wal` after the checkpoint.
    pub fn recover(
        &self,
        target: RecoveryTarget,
        scope: &RecoveryScope,
        backend: &dyn StateBackend,
        wal: Option<&Wal>,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RecoveryOutcome> {
        let started = Instant::now();
        let plan = self.plan(target, scope, wal)?;
        let result = self.execute_from(plan, backend, wal, progress, started);
        crate::metrics::recovery_finished(&result);
        result
    }

    /// Executes `plan` into `backend`, replacing all of its state, then
    /// replays `wal` over the plan's log range. If the checkpoint turns out
    /// to be damaged (a corrupt or missing artifact) and
    /// `optimistic_recovery` is on, the next older qualifying checkpoint is
    /// planned and loaded instead; otherwise the error is returned and, for
    /// backends whose `restore` is atomic (memory), the live state is
    /// untouched. Errors of the log replay are returned as they are (an
    /// older checkpoint would need the same log).
    pub fn execute(
        &self,
        plan: RecoveryPlan,
        backend: &dyn StateBackend,
        wal: Option<&Wal>,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<RecoveryOutcome> {
        let result = self.execute_from(plan, backend, wal, progress, Instant::now());
        crate::metrics::recovery_finished(&result);
        result
    }

    fn execute_from(
        &self,
        mut plan: RecoveryPlan,
        backend: &dyn StateBackend,
        wal: Option<&Wal>,
        progress: Option<ProgressFn<'_>>,
        started: Instant,
    ) -> Result<RecoveryOutcome> {
        let deadline = self.config.recovery_timeout.map(|t| started + t);
        let mut stats = RecoveryStats {
            fallbacks: plan.fallbacks.clone(),
            ..RecoveryStats::default()
        };
        // A log that ends before the checkpoint's position has lost records
        // the checkpoint was built on: refuse before touching live state.
        if let (Some(_), Some(wal)) = (plan.wal, wal) {
            check_log_reaches(wal, plan.wal_position)?;
        }
        loop {
            match self.load(&plan, backend, &mut stats, progress, deadline) {
                Ok(()) => break,
                Err(e) if disqualifies(&e) && self.config.optimistic_recovery => {
                    let Some(id) = plan.checkpoint else {
                        return Err(e);
                    };
                    tracing::warn!(checkpoint = %id, error = %e, "checkpoint unusable; falling back to the previous one");
                    stats.fallbacks.push(Fallback {
                        checkpoint: id,
                        reason: e.to_string(),
                    });
                    check_deadline(deadline)?;
                    plan = self.plan_from(
                        plan.target,
                        &plan.scope,
                        wal,
                        std::mem::take(&mut plan.fallback_candidates),
                        stats.fallbacks.clone(),
                    )?;
                }
                Err(e) => return Err(e),
            }
        }
        stats.checkpoint = plan.checkpoint;
        stats.chain_length = plan.chain.len();
        stats.ranges = plan.ranges.len();
        stats.wal_position = plan.wal_position;
        if let (Some(range), Some(wal)) = (plan.wal, wal) {
            check_deadline(deadline)?;
            let t = Instant::now();
            let bytes = stats.bytes_fetched;
            stats.wal_records_replayed = replay_wal(
                wal,
                range,
                plan.wal_position,
                &plan.scope,
                backend,
                &|done, total| {
                    if let Some(p) = progress {
                        p(Progress {
                            checkpoint: plan.checkpoint,
                            phase: Phase::ReplayingWal,
                            done,
                            total,
                            bytes,
                        });
                    }
                },
            )?;
            stats.wal_duration = t.elapsed();
        } else if plan.wal.is_none()
            && wal.is_some()
            && plan.wal_position.is_none()
            && !matches!(plan.target, RecoveryTarget::Checkpoint(_))
        {
            tracing::warn!(checkpoint = ?plan.checkpoint, "checkpoint records no log position; the write-ahead log is not replayed");
        }
        stats.duration = started.elapsed();
        Ok(RecoveryOutcome {
            stats,
            manifest: plan.manifest,
        })
    }

    /// Fetches, decodes, folds and loads the checkpoint of `plan`.
    fn load(
        &self,
        plan: &RecoveryPlan,
        backend: &dyn StateBackend,
        stats: &mut RecoveryStats,
        progress: Option<ProgressFn<'_>>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let Some(checkpoint) = plan.checkpoint else {
            // The log alone: start from nothing.
            return backend.restore(&mut std::iter::empty());
        };
        check_deadline(deadline)?;
        // A native checkpoint (the backend's own files) is opened by the
        // backend rather than decoded and folded; it falls back like any
        // other checkpoint.
        if let Some(manifest) = plan.manifest().filter(|m| m.is_native()) {
            let t = Instant::now();
            let loaded = self.load_native(plan, manifest, backend, stats, deadline);
            stats.load_duration += t.elapsed();
            return loaded;
        }
        // A failing artifact cannot leave a bulk restore or an atomic
        // restore half loaded, so fetching need not finish before loading
        // starts. A bulk restore is loaded by every decoder, whatever the
        // strategy.
        let bulk = backend.bulk_restore();
        if bulk.is_some()
            || (self.config.load_strategy == LoadStrategy::Restore && backend.restore_is_atomic())
        {
            return self.fetch_fold_and_restore(
                plan, checkpoint, backend, bulk, stats, progress, deadline,
            );
        }
        let t = Instant::now();
        let artifacts = self.fetch(plan, checkpoint, stats, progress, deadline)?;
        stats.fetch_duration += t.elapsed();
        check_deadline(deadline)?;
        let t = Instant::now();
        let loaded = self.fold_and_load(
            plan, checkpoint, &artifacts, backend, stats, progress, deadline,
        );
        stats.load_duration += t.elapsed();
        loaded
    }

    /// Hands the files of the native checkpoint `manifest` to the backend's
    /// [`NativeCheckpoints::restore_native`], fetched in order a few at a
    /// time, each verified against its content address whatever the
    /// verification level (a damaged stored file is deleted, as any
    /// artifact is, so the next checkpoint uploads it again). A narrower
    /// key-group scope (checked against the manifest by the plan) is a
    /// rescaling restore.
    fn load_native(
        &self,
        plan: &RecoveryPlan,
        manifest: &Manifest,
        backend: &dyn StateBackend,
        stats: &mut RecoveryStats,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let native: &dyn NativeCheckpoints = backend.native().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "checkpoint {} holds native files; backend {} cannot open them",
                manifest.checkpoint_id,
                backend.name()
            ))
        })?;
        if plan.scope.operators.is_some() {
            return Err(Error::InvalidArgument(format!(
                "checkpoint {} holds native files, which restore every operator; select key groups only",
                manifest.checkpoint_id
            )));
        }
        let refs = manifest.own_artifacts();
        let mut files = NativeFetch {
            io: &self.io,
            store: &self.store,
            checkpoint: manifest.checkpoint_id,
            list: refs.iter().map(NativeFileRef::of_artifact).collect(),
            refs,
            deadline,
            bytes_ahead: u64::from(NATIVE_BYTES_IN_FLIGHT),
            bytes: 0,
            files: 0,
        };
        let t = Instant::now();
        let restored = native.restore_native(&mut files, plan.scope.key_groups);
        stats.fetch_duration += t.elapsed();
        stats.bytes_fetched += files.bytes;
        stats.artifacts_fetched += files.files;
        restored?;
        stats.artifacts_local += refs.len().saturating_sub(files.files);
        stats.bytes_local += refs
            .iter()
            .map(|r| r.stored_bytes)
            .sum::<u64>()
            .saturating_sub(files.bytes);
        stats.entries_loaded += refs.iter().map(|a| a.entries).sum::<u64>();
        stats.logical_bytes += refs.iter().map(|a| a.logical_bytes).sum::<u64>();
        Ok(())
    }

    /// Starts fetching artifact `id` of `checkpoint`, verified at the
    /// configured level ([`fetch_verified`]).
    fn start_fetch(&self, checkpoint: CheckpointId, id: ArtifactId) -> ArtifactFetch {
        let verify = self.config.verification_level != VerificationLevel::None;
        ArtifactFetch::start(
            &self.io,
            fetch_verified(self.store.clone(), checkpoint, id, verify),
        )
    }

    /// Fetches every distinct artifact of the plan, a bounded number at a
    /// time, verifying each at the configured level.
    fn fetch(
        &self,
        plan: &RecoveryPlan,
        checkpoint: CheckpointId,
        stats: &mut RecoveryStats,
        progress: Option<ProgressFn<'_>>,
        deadline: Option<Instant>,
    ) -> Result<HashMap<ArtifactId, Bytes>> {
        let ids = artifact_ids(&plan.ranges);
        let total = ids.len() as u64;
        let mut out = HashMap::with_capacity(total as usize);
        let report = |done: u64, bytes: u64| {
            if let Some(p) = progress {
                p(Progress {
                    checkpoint: Some(checkpoint),
                    phase: Phase::Fetching,
                    done,
                    total,
                    bytes,
                });
            }
        };
        report(0, stats.bytes_fetched);
        let concurrency = self
            .config
            .prefetch_strategy
            .concurrency(self.pool()?.current_num_threads());
        let mut next = ids.into_iter();
        let mut window = VecDeque::new();
        loop {
            while window.len() < concurrency {
                let Some(id) = next.next() else { break };
                window.push_back(self.start_fetch(checkpoint, id));
            }
            let Some(fetch) = window.pop_front() else {
                break;
            };
            let (id, bytes) = fetch.wait(deadline)?;
            stats.bytes_fetched += bytes.len() as u64;
            stats.artifacts_fetched += 1;
            out.insert(id, bytes);
            report(out.len() as u64, stats.bytes_fetched);
        }
        Ok(out)
    }

    /// [`LoadStrategy::Restore`] into a backend whose restore is atomic,
    /// with fetching, decoding and loading overlapped: artifacts are
    /// fetched in the order the ranges name them, a range is decoded and
    /// folded on the pool as soon as its last artifact arrives, and an
    /// artifact is let go once the decoders of every range naming it have
    /// finished, with at most [`RecoveryConfig::fetch_ahead_bytes`] held
    /// at once ([`FetchAhead`]). A damaged or missing artifact fails the
    /// restore, which leaves the backend as it was, and the caller falls
    /// back as it does when the fetch fails before loading.
    /// `fetch_duration` is the time until the last artifact arrived,
    /// `load_duration` the whole call's (the two overlap).
    #[allow(clippy::too_many_arguments)]
    fn fetch_fold_and_restore(
        &self,
        plan: &RecoveryPlan,
        checkpoint: CheckpointId,
        backend: &dyn StateBackend,
        bulk: Option<Box<dyn BulkRestore + '_>>,
        stats: &mut RecoveryStats,
        progress: Option<ProgressFn<'_>>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let started = Instant::now();
        let ids = artifact_ids(&plan.ranges);
        let total_ids = ids.len() as u64;
        let total_ranges = plan.ranges.len() as u64;
        let pool = self.pool()?;
        let concurrency = self
            .config
            .prefetch_strategy
            .concurrency(pool.current_num_threads());
        let budget = self.config.fetch_ahead_bytes;
        let report = |phase: Phase, done: u64, total: u64, bytes: u64| {
            if let Some(p) = progress {
                p(Progress {
                    checkpoint: Some(checkpoint),
                    phase,
                    done,
                    total,
                    bytes,
                });
            }
        };
        // Bytes fetched so far, this attempt's and earlier ones'.
        let bytes_fetched = AtomicU64::new(stats.bytes_fetched);
        report(Phase::Fetching, 0, total_ids, stats.bytes_fetched);
        stats.entries_loaded = 0;
        stats.logical_bytes = 0;
        // Set by a decoder whose range nobody takes any more (the restore
        // ended early): stop fetching.
        let abandoned = AtomicBool::new(false);
        let loaders = bulk.as_deref().map(Loaders::new);
        let (tx, rx) = crossbeam_channel::bounded::<Result<Folded>>(pool.current_num_threads() * 2);
        let loaded = std::thread::scope(|s| {
            let (abandoned, bytes_fetched, loaders) = (&abandoned, &bytes_fetched, &loaders);
            let producer = s.spawn(move || {
                let mut ahead = FetchAhead::new(&plan.ranges, budget);
                let mut window: VecDeque<ArtifactFetch> = VecDeque::new();
                let mut next = ids.iter();
                let (done_tx, done_rx) = crossbeam_channel::unbounded::<usize>();
                let mut count = 0u64;
                let mut took = Duration::ZERO;
                pool.in_place_scope(|scope| {
                    // Hands range `i` (every artifact arrived) to a decoder.
                    let dispatch = |i: usize, ahead: &mut FetchAhead| {
                        let range = &plan.ranges[i];
                        let lease = Lease {
                            range: i,
                            artifacts: ahead.lease(i, range),
                            done: done_tx.clone(),
                        };
                        let tx = tx.clone();
                        scope.spawn(move |_| {
                            if abandoned.load(Relaxed) {
                                return;
                            }
                            let folded = check_deadline(deadline).and_then(|()| {
                                let ctx = FoldCtx {
                                    checkpoint,
                                    artifacts: &lease.artifacts,
                                    limits: &self.limits,
                                    now_ms: self.now_ms,
                                    scope: &plan.scope,
                                };
                                match loaders {
                                    Some(l) => l.with(|loader| load_range(&ctx, range, loader)),
                                    None => fold_range(&ctx, range),
                                }
                            });
                            // The artifacts are let go before the folded
                            // range waits for the loader.
                            drop(lease);
                            if tx.send(folded).is_err() {
                                abandoned.store(true, Relaxed);
                            }
                        });
                    };
                    for i in ahead.ready() {
                        dispatch(i, &mut ahead);
                    }
                    let failed = loop {
                        if abandoned.load(Relaxed) {
                            break None;
                        }
                        for i in done_rx.try_iter() {
                            ahead.finished(&plan.ranges[i]);
                        }
                        while window.len() < concurrency {
                            let Some(&id) = next.as_slice().first() else {
                                break;
                            };
                            if !ahead.may_fetch(id, window.len()) {
                                break;
                            }
                            next.next();
                            ahead.charge(id);
                            window.push_back(self.start_fetch(checkpoint, id));
                        }
                        let arrived = if let Some(fetch) = window.pop_front() {
                            fetch.wait(deadline)
                        } else if !next.as_slice().is_empty() {
                            // The budget is spent: wait for a decoder to
                            // let go of its artifacts.
                            match recv_until(&done_rx, deadline, "a decoder") {
                                Ok(i) => {
                                    ahead.finished(&plan.ranges[i]);
                                    continue;
                                }
                                Err(e) => break Some(e),
                            }
                        } else {
                            break None;
                        };
                        let (id, bytes) = match arrived {
                            Ok(got) => got,
                            Err(e) => break Some(e),
                        };
                        count += 1;
                        took = started.elapsed();
                        let so_far = bytes_fetched.fetch_add(bytes.len() as u64, Relaxed)
                            + bytes.len() as u64;
                        report(Phase::Fetching, count, total_ids, so_far);
                        for i in ahead.arrived(id, bytes) {
                            dispatch(i, &mut ahead);
                        }
                    };
                    // Fetches still under way are stopped.
                    window.clear();
                    if let Some(e) = failed {
                        let _ = tx.send(Err(e));
                    }
                });
                (count, took, ahead.peak)
            });
            let report_loaded = |done: u64| {
                report(
                    Phase::Loading,
                    done,
                    total_ranges,
                    bytes_fetched.load(Relaxed),
                );
            };
            let mut feed = Feed {
                rx,
                current: Vec::new().into_iter(),
                received: 0,
                total: total_ranges,
                finished: false,
                deadline,
                stats,
                report: &report_loaded,
            };
            let loaded = match loaders {
                None => backend.restore(&mut feed),
                // The decoders loaded the ranges: this only counts them
                // and waits for the last.
                Some(_) => feed.try_for_each(|block| {
                    block.and_then(|_| {
                        Err(Error::Internal(
                            "a range of a bulk restore came back as blocks".into(),
                        ))
                    })
                }),
            };
            // Dropping the receiver stops the decoders, and through them
            // the fetches.
            drop(feed);
            let fetched = producer
                .join()
                .map_err(|_| Error::Internal("a decode worker panicked".into()));
            if let Ok((count, took, peak)) = fetched {
                stats.artifacts_fetched += count as usize;
                stats.fetch_duration += took;
                stats.fetch_ahead_peak_bytes = stats.fetch_ahead_peak_bytes.max(peak);
            }
            stats.bytes_fetched = bytes_fetched.load(Relaxed);
            loaded?;
            fetched.map(|_| ())
        });
        // Every loader is let go before the commit (they borrow the bulk
        // restore); a failed restore drops it uncommitted.
        drop(loaders);
        let committed = loaded.and_then(|()| bulk.map_or(Ok(()), |b| b.commit()));
        stats.load_duration += started.elapsed();
        committed
    }

    /// Decodes and folds the plan's ranges in parallel on the pool, and
    /// loads them as the [`LoadStrategy`] says: streamed into
    /// `backend.restore` on this thread, or all folded first and then
    /// loaded from every pool thread.
    #[allow(clippy::too_many_arguments)]
    fn fold_and_load(
        &self,
        plan: &RecoveryPlan,
        checkpoint: CheckpointId,
        artifacts: &HashMap<ArtifactId, Bytes>,
        backend: &dyn StateBackend,
        stats: &mut RecoveryStats,
        progress: Option<ProgressFn<'_>>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let total = plan.ranges.len() as u64;
        let pool = self.pool()?;
        let ctx = FoldCtx {
            checkpoint,
            artifacts,
            limits: &self.limits,
            now_ms: self.now_ms,
            scope: &plan.scope,
        };
        let bytes = stats.bytes_fetched;
        let report = |done: u64| {
            if let Some(p) = progress {
                p(Progress {
                    checkpoint: Some(checkpoint),
                    phase: Phase::Loading,
                    done,
                    total,
                    bytes,
                });
            }
        };
        report(0);
        // What was loaded is this checkpoint's (an attempt that fell back
        // counts in what was decoded, not in what was loaded).
        stats.entries_loaded = 0;
        stats.logical_bytes = 0;
        if self.config.load_strategy == LoadStrategy::Parallel {
            // Every range folded first (in range order), then loaded.
            let folded = pool.install(|| {
                plan.ranges
                    .par_iter()
                    .map(|range| {
                        check_deadline(deadline)?;
                        fold_range(&ctx, range)
                    })
                    .collect::<Result<Vec<Folded>>>()
            })?;
            check_deadline(deadline)?;
            folded.iter().for_each(|f| f.account(stats));
            return load_in_parallel(pool, backend, folded, &report);
        }
        // Streamed: the pool folds ranges and sends them, at most two per
        // thread ahead of `restore`, which loads them as they arrive.
        let (tx, rx) = crossbeam_channel::bounded::<Result<Folded>>(pool.current_num_threads() * 2);
        std::thread::scope(|s| {
            let producer = s.spawn(|| {
                pool.install(|| {
                    // Stop at the first error or once the consumer is gone.
                    let _ = plan.ranges.par_iter().try_for_each_with(tx, |tx, range| {
                        let folded = fold_range(&ctx, range);
                        let failed = folded.is_err();
                        match tx.send(folded) {
                            Ok(()) if !failed => Ok(()),
                            _ => Err(()),
                        }
                    });
                });
            });
            let mut feed = Feed {
                rx,
                current: Vec::new().into_iter(),
                received: 0,
                total,
                finished: false,
                deadline,
                stats,
                report: &report,
            };
            let loaded = backend.restore(&mut feed);
            // Dropping the receiver stops the producers.
            drop(feed);
            let joined = producer.join();
            loaded?;
            joined.map_err(|_| Error::Internal("a decode worker panicked".into()))
        })
    }
}

/// [`LoadStrategy::Parallel`]: with every range folded, clears the backend
/// and loads the ranges from all pool threads at once.
fn load_in_parallel(
    pool: &rayon::ThreadPool,
    backend: &dyn StateBackend,
    folded: Vec<Folded>,
    report: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    // Every range decoded: only now is live state replaced.
    backend.clear()?;
    let done = std::sync::atomic::AtomicU64::new(0);
    pool.install(|| {
        folded.into_par_iter().try_for_each(|f| {
            // Single-key writes: a memory-backend batch locks every shard
            // it touches at once, which would serialise loaders.
            for (k, v) in f.blocks.iter().flat_map(RecordBlock::puts) {
                backend.put(k, v)?;
            }
            report(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            Ok::<_, Error>(())
        })
    })?;
    // The loaded state is the base of the next epoch, not a change.
    drop(backend.snapshot(SnapshotKind::Full)?);
    Ok(())
}

/// Native files are large (RocksDB writes SST files of up to 64 MiB): at
/// most this many are fetched ahead and held in memory, holding at most
/// [`NATIVE_BYTES_IN_FLIGHT`] between them (a larger file is fetched
/// alone).
const NATIVE_FILES_IN_FLIGHT: usize = 4;

/// A native file being fetched: its reference and its fetch.
type InFlight<'a> = (&'a ArtifactRef, ArtifactFetch);

/// The files of a native checkpoint in a store: the backend picks which to
/// fetch ([`NativeSource`]); those are fetched in order a few ahead and
/// verified by [`fetch_verified`] (which also repairs a damaged stored
/// copy).
struct NativeFetch<'a> {
    io: &'a tokio::runtime::Handle,
    store: &'a Arc<dyn CheckpointStore>,
    checkpoint: CheckpointId,
    refs: &'a [ArtifactRef],
    list: Vec<NativeFileRef>,
    deadline: Option<Instant>,
    /// The most bytes fetched ahead of the backend (at least one file).
    bytes_ahead: u64,
    bytes: u64,
    files: usize,
}

impl NativeSource for NativeFetch<'_> {
    fn files(&self) -> &[NativeFileRef] {
        &self.list
    }

    fn fetch(&mut self, wanted: Vec<usize>) -> Box<NativeFiles<'_>> {
        Box::new(NativeFetching {
            wanted: wanted.into_iter(),
            window: VecDeque::new(),
            failed: false,
            source: self,
        })
    }
}

/// The fetches of one [`NativeSource::fetch`] call; aborts what is still in
/// flight when dropped.
struct NativeFetching<'s, 'a> {
    source: &'s mut NativeFetch<'a>,
    wanted: std::vec::IntoIter<usize>,
    window: VecDeque<InFlight<'a>>,
    failed: bool,
}

impl NativeFetching<'_, '_> {
    /// Starts fetches until [`NATIVE_FILES_IN_FLIGHT`] files or
    /// [`NativeFetch::bytes_ahead`] bytes are under way (a file is always
    /// started when none is); an index outside the list is an error.
    fn fill(&mut self) -> Result<()> {
        while self.window.len() < NATIVE_FILES_IN_FLIGHT {
            let Some(&i) = self.wanted.as_slice().first() else {
                break;
            };
            let refs = self.source.refs;
            let r = refs.get(i).ok_or_else(|| {
                Error::Internal(format!(
                    "native file {i} asked for; the checkpoint has {}",
                    refs.len()
                ))
            })?;
            // Lengths come from the manifest: added without overflow.
            let ahead = self
                .window
                .iter()
                .fold(0u64, |sum, (r, _)| sum.saturating_add(r.stored_bytes));
            if !self.window.is_empty()
                && ahead.saturating_add(r.stored_bytes) > self.source.bytes_ahead
            {
                break;
            }
            self.wanted.next();
            let fetch = fetch_verified(
                self.source.store.clone(),
                self.source.checkpoint,
                r.id,
                true,
            );
            self.window
                .push_back((r, ArtifactFetch::start(self.source.io, fetch)));
        }
        Ok(())
    }

    fn next_file(&mut self) -> Option<Result<(String, Bytes)>> {
        if let Err(e) = self.fill() {
            return Some(Err(e));
        }
        let (r, fetch) = self.window.pop_front()?;
        let checkpoint = self.source.checkpoint;
        let checked = fetch
            .wait(self.source.deadline)
            .and_then(|(_, bytes)| {
                if bytes.len() as u64 != r.stored_bytes {
                    return Err(Error::corrupt(
                        "artifact",
                        format!(
                            "native file has the wrong length: checkpoint={checkpoint} file={} artifact={} len={} expected_len={}",
                            r.operator,
                            r.id,
                            bytes.len(),
                            r.stored_bytes
                        ),
                    ));
                }
                Ok(bytes)
            });
        Some(checked.map(|bytes| {
            self.source.bytes += bytes.len() as u64;
            self.source.files += 1;
            (r.operator.clone(), bytes)
        }))
    }
}

impl Iterator for NativeFetching<'_, '_> {
    type Item = Result<(String, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.next_file();
        if matches!(item, Some(Err(_))) {
            self.failed = true;
            // Stops the fetches still under way.
            self.window.clear();
        }
        item
    }
}

/// What a restore that overlaps fetching with decoding holds of the
/// checkpoint: artifacts being fetched, fetched and waiting for the rest of
/// a range, or being decoded. Every artifact is charged its stored size
/// (from the manifest) from the moment its fetch starts until the last
/// decoder holding it has finished; a fetch starts only within the budget
/// ([`RecoveryConfig::fetch_ahead_bytes`]), or when nothing is being
/// fetched or decoded — then nothing else could free any, so one more
/// artifact is always fetched and the restore never waits on itself.
struct FetchAhead {
    budget: u64,
    /// Stored size of each artifact the plan names.
    size: HashMap<ArtifactId, u64>,
    /// Per range: how many of its artifacts have not arrived.
    missing: Vec<usize>,
    /// Per artifact: the ranges not yet handed to a decoder that name it.
    waiting: HashMap<ArtifactId, Vec<usize>>,
    /// Arrived artifacts some range not yet handed to a decoder names.
    held: HashMap<ArtifactId, Bytes>,
    /// Per artifact: the decoders holding it.
    decoding: HashMap<ArtifactId, usize>,
    /// Decoders started and not finished.
    decoders: usize,
    /// Bytes charged now, and the most at any time.
    charged: u64,
    peak: u64,
}

impl FetchAhead {
    fn new(ranges: &[RangePlan], budget: u64) -> Self {
        let mut size = HashMap::new();
        let mut missing = Vec::with_capacity(ranges.len());
        let mut waiting: HashMap<ArtifactId, Vec<usize>> = HashMap::new();
        for (i, range) in ranges.iter().enumerate() {
            let own = distinct_artifacts(range);
            missing.push(own.len());
            for a in own {
                size.insert(a.id, a.stored_bytes);
                waiting.entry(a.id).or_default().push(i);
            }
        }
        FetchAhead {
            budget,
            size,
            missing,
            waiting,
            held: HashMap::new(),
            decoding: HashMap::new(),
            decoders: 0,
            charged: 0,
            peak: 0,
        }
    }

    fn size(&self, id: ArtifactId) -> u64 {
        self.size.get(&id).copied().unwrap_or(0)
    }

    /// Ranges that name no artifact at all (ready at once).
    fn ready(&self) -> Vec<usize> {
        (0..self.missing.len())
            .filter(|&i| self.missing[i] == 0)
            .collect()
    }

    /// Whether `id` may be fetched now, with `fetching` fetches under way.
    fn may_fetch(&self, id: ArtifactId, fetching: usize) -> bool {
        self.charged.saturating_add(self.size(id)) <= self.budget
            || (fetching == 0 && self.decoders == 0)
    }

    /// `id`'s fetch starts.
    fn charge(&mut self, id: ArtifactId) {
        self.charged = self.charged.saturating_add(self.size(id));
        self.peak = self.peak.max(self.charged);
    }

    /// `id` arrived: the ranges that now have all their artifacts.
    fn arrived(&mut self, id: ArtifactId, bytes: Bytes) -> Vec<usize> {
        let ranges = self.waiting.get(&id).cloned().unwrap_or_default();
        if ranges.is_empty() {
            // Named by no range (cannot happen: ids come from the plan).
            self.release(id);
            return Vec::new();
        }
        self.held.insert(id, bytes);
        ranges
            .into_iter()
            .filter(|&i| {
                self.missing[i] -= 1;
                self.missing[i] == 0
            })
            .collect()
    }

    /// Hands range `i` (`range`)'s artifacts to its decoder; an artifact
    /// no other waiting range names leaves the held set (its charge stays
    /// until the decoder has finished).
    fn lease(&mut self, i: usize, range: &RangePlan) -> HashMap<ArtifactId, Bytes> {
        let mut own = HashMap::new();
        for a in distinct_artifacts(range) {
            let id = a.id;
            if let Some(bytes) = self.held.get(&id) {
                own.insert(id, bytes.clone());
            }
            *self.decoding.entry(id).or_default() += 1;
            let still_named = self.waiting.get_mut(&id).is_some_and(|ranges| {
                ranges.retain(|&j| j != i);
                !ranges.is_empty()
            });
            if !still_named {
                self.waiting.remove(&id);
                self.held.remove(&id);
            }
        }
        self.decoders += 1;
        own
    }

    /// The decoder of `range` finished and let go of its artifacts.
    fn finished(&mut self, range: &RangePlan) {
        self.decoders = self.decoders.saturating_sub(1);
        for a in distinct_artifacts(range) {
            let id = a.id;
            if let Some(n) = self.decoding.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    self.decoding.remove(&id);
                    if !self.held.contains_key(&id) {
                        self.release(id);
                    }
                }
            }
        }
    }

    fn release(&mut self, id: ArtifactId) {
        self.charged = self.charged.saturating_sub(self.size(id));
    }
}

/// The distinct artifacts a range names (a layer may name one twice).
fn distinct_artifacts(range: &RangePlan) -> Vec<&ArtifactRef> {
    let mut seen = std::collections::HashSet::new();
    range
        .artifacts
        .iter()
        .map(|a| &a.artifact)
        .filter(|a| seen.insert(a.id))
        .collect()
}

/// A decoder's hold on its range's artifacts: dropping it (when the range
/// is folded, or if the decoder panics) lets them go and tells the fetcher.
struct Lease {
    range: usize,
    artifacts: HashMap<ArtifactId, Bytes>,
    done: crossbeam_channel::Sender<usize>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.artifacts.clear();
        let _ = self.done.send(self.range);
    }
}

/// One artifact being fetched on the I/O runtime; dropping it stops the
/// fetch.
struct ArtifactFetch {
    task: tokio::task::JoinHandle<()>,
    rx: crossbeam_channel::Receiver<Result<(ArtifactId, Bytes)>>,
}

impl ArtifactFetch {
    fn start(
        io: &tokio::runtime::Handle,
        fetch: impl std::future::Future<Output = Result<(ArtifactId, Bytes)>> + Send + 'static,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let task = io.spawn(async move {
            let _ = tx.send(fetch.await);
        });
        ArtifactFetch { task, rx }
    }

    /// The fetched artifact, or why there is none.
    fn wait(self, deadline: Option<Instant>) -> Result<(ArtifactId, Bytes)> {
        recv_until(&self.rx, deadline, "an artifact fetch").and_then(|r| r)
    }
}

impl Drop for ArtifactFetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The artifacts `ranges` read, each once, in the order they name them
/// (so a pipelined restore can start on the first ranges early).
fn artifact_ids(ranges: &[RangePlan]) -> Vec<ArtifactId> {
    let mut seen = std::collections::HashSet::new();
    ranges
        .iter()
        .flat_map(|r| r.artifacts.iter().map(|a| a.artifact.id))
        .filter(|id| seen.insert(*id))
        .collect()
}

/// Receives from `rx`, giving up with the recovery's timeout error at
/// `deadline`; `sender` names what stopped if the channel closes.
fn recv_until<T>(
    rx: &crossbeam_channel::Receiver<T>,
    deadline: Option<Instant>,
    sender: &str,
) -> Result<T> {
    match deadline {
        Some(d) => rx.recv_deadline(d).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => timeout_error(),
            crossbeam_channel::RecvTimeoutError::Disconnected => {
                Error::Internal(format!("{sender} stopped"))
            }
        }),
        None => rx
            .recv()
            .map_err(|_| Error::Closed("the i/o runtime stopped".into())),
    }
}

fn check_log_reaches(wal: &Wal, covered: Option<u64>) -> Result<()> {
    let last = wal.written_lsn();
    match covered {
        Some(p) if last < p => Err(Error::corrupt(
            "wal",
            format!(
                "the log ends before the checkpoint's position: last_lsn={last} checkpoint_position={p} dir={}",
                wal.dir().display()
            ),
        )),
        _ => Ok(()),
    }
}

fn timeout_error() -> Error {
    Error::io(
        "recovery",
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "recovery_timeout elapsed before the recovery finished",
        ),
    )
}

fn check_deadline(deadline: Option<Instant>) -> Result<()> {
    match deadline {
        Some(d) if Instant::now() >= d => Err(timeout_error()),
        _ => Ok(()),
    }
}

struct FoldCtx<'a> {
    checkpoint: CheckpointId,
    artifacts: &'a HashMap<ArtifactId, Bytes>,
    limits: &'a DecodeLimits,
    now_ms: u64,
    scope: &'a RecoveryScope,
}

impl FoldCtx<'_> {
    /// The fetched bytes of `r`.
    fn bytes_of(&self, r: &ArtifactRef) -> Result<&Bytes> {
        self.artifacts.get(&r.id).ok_or_else(|| {
            Error::NotFound(format!(
                "artifact of checkpoint {}: artifact={}",
                self.checkpoint, r.id
            ))
        })
    }

    /// Decodes `pa` into a block of the records [`keep`](Self::keep)
    /// keeps, and counts the records decoded.
    fn decode(
        &self,
        pa: &PlannedArtifact,
        first_layer: bool,
        filtered: &mut u64,
    ) -> Result<(RecordBlock, u64)> {
        let r = &pa.artifact;
        let bytes = self.bytes_of(r)?;
        let mut keep = self.keep(r, first_layer, filtered);
        decode_checked_where(self.checkpoint, pa.kind, r, bytes, self.limits, &mut keep)
    }

    /// Which records of `r` a fold keeps as they decode: those of the
    /// scope's key groups (the others are counted into `filtered`), and
    /// of the first layer of a range (`first_layer`) only live puts — no
    /// older record of the range stands behind its expired entries and
    /// deletes. A later layer's must stay until the chain is folded, to
    /// hide the older records of their keys.
    fn keep<'f>(
        &'f self,
        r: &ArtifactRef,
        first_layer: bool,
        filtered: &'f mut u64,
    ) -> impl FnMut(&[u8], Option<&[u8]>) -> bool + 'f {
        // Artifacts wholly inside the scope's key groups need no per-record
        // filter (decoding verifies every key's key group).
        let scope = self
            .scope
            .key_groups
            .filter(|kg| kg.intersect(&r.key_groups) != Some(r.key_groups));
        move |k, v| {
            if let Some(kg) = scope
                && !key_group_of(k).is_ok_and(|g| kg.contains(g))
            {
                *filtered += 1;
                return false;
            }
            !first_layer || v.is_some_and(|v| !is_expired_value(v, self.now_ms))
        }
    }
}

/// The live entries of one range.
#[derive(Default)]
struct Folded {
    /// The range's entries: one block per artifact, puts only, each key
    /// once across the blocks.
    blocks: Vec<RecordBlock>,
    decoded: u64,
    filtered: u64,
    /// Entries (and their key and value bytes) already put into a bulk
    /// restore's loader rather than held in `blocks` ([`load_range`]).
    entries: u64,
    bytes: u64,
}

/// The loaders of a bulk restore, shared by the decode workers: a worker
/// takes an idle one (or a new one, so there are never more than workers
/// running at once) for a range and puts it back after.
struct Loaders<'b> {
    bulk: &'b dyn BulkRestore,
    idle: std::sync::Mutex<Vec<Box<dyn BulkLoader + 'b>>>,
}

impl<'b> Loaders<'b> {
    fn new(bulk: &'b dyn BulkRestore) -> Loaders<'b> {
        Loaders {
            bulk,
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` with a loader of its own.
    fn with<R>(&self, f: impl FnOnce(&mut dyn BulkLoader) -> R) -> R {
        let idle = || {
            self.idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let taken = idle().pop();
        let mut loader = taken.unwrap_or_else(|| self.bulk.loader());
        let out = f(&mut *loader);
        idle().push(loader);
        out
    }
}

/// Decodes a range's artifacts and folds them: base first, then each delta
/// in order; the newest record of a key wins and a delete removes it.
/// Expired entries and entries outside the scope's key groups are dropped.
///
/// Each artifact decodes into one [`RecordBlock`] and stays there: folding
/// only removes records from blocks, so no record is copied or allocated
/// on its own, and a chain of one layer (whose artifacts hold distinct
/// keys) is not compared key by key at all.
fn fold_range(ctx: &FoldCtx<'_>, range: &RangePlan) -> Result<Folded> {
    let mut layers: Vec<(usize, RecordBlock)> = Vec::with_capacity(range.artifacts.len());
    let mut decoded = 0u64;
    let mut filtered = 0u64;
    let base = range.artifacts.first().map(|pa| pa.layer);
    for pa in &range.artifacts {
        let (block, n) = ctx.decode(pa, Some(pa.layer) == base, &mut filtered)?;
        decoded += n;
        layers.push((pa.layer, block));
    }
    drop_overwritten(&mut layers);
    let blocks = layers
        .into_iter()
        .filter_map(|(layer, mut block)| {
            if Some(layer) != base {
                block.retain(|_, _, v| v.is_some_and(|v| !is_expired_value(v, ctx.now_ms)));
            }
            (!block.is_empty()).then_some(block)
        })
        .collect();
    Ok(Folded {
        blocks,
        decoded,
        filtered,
        ..Folded::default()
    })
}

/// Decodes and folds a range as [`fold_range`] does, putting its entries
/// into `loader` (a bulk restore's) instead of returning them.
///
/// The layers after the first (deltas: usually the small part of a range,
/// the keys that changed) are decoded into blocks and folded among
/// themselves, and their keys indexed; then the first layer goes straight
/// from the decompressed artifacts into the loader, with no block in
/// between, skipping the keys a later layer holds; then the later layers'
/// live records follow. A range of one layer (a full checkpoint's) is
/// streamed whole.
fn load_range(ctx: &FoldCtx<'_>, range: &RangePlan, loader: &mut dyn BulkLoader) -> Result<Folded> {
    let mut out = Folded::default();
    let base = range.artifacts.first().map(|pa| pa.layer);
    let mut newer: Vec<RecordBlock> = Vec::new();
    for pa in range.artifacts.iter().filter(|pa| Some(pa.layer) != base) {
        // Deletes and expired entries stay: they hide the first layer's
        // records of their keys.
        let (block, n) = ctx.decode(pa, false, &mut out.filtered)?;
        out.decoded += n;
        newer.push(block);
    }
    // One table both folds the later layers and hides the first layer's
    // records of their keys.
    let newest = Newest::index(newer.iter().collect());
    for pa in range.artifacts.iter().filter(|pa| Some(pa.layer) == base) {
        let r = &pa.artifact;
        let bytes = ctx.bytes_of(r)?;
        let mut keep = ctx.keep(r, true, &mut out.filtered);
        out.decoded += visit_checked(
            ctx.checkpoint,
            pa.kind,
            r,
            bytes,
            ctx.limits,
            KeyForm::Absolute,
            &mut |k, v| match v {
                // The first layer keeps no deletes: a record kept has a
                // value.
                Some(v) if keep(k, Some(v)) && !newest.holds(k) => {
                    out.entries += 1;
                    out.bytes += (k.len() + v.len()) as u64;
                    loader.put(k, v)
                }
                // Still offered to the filter, which counts what the
                // scope leaves out.
                None => {
                    keep(k, None);
                    Ok(())
                }
                Some(_) => Ok(()),
            },
        )?;
    }
    // In block order (key order within each), which is the order the
    // arenas fill best in.
    for (block, mut dead) in newer.iter().zip(newest.replaced) {
        dead.sort_unstable();
        let mut dead = dead.into_iter().peekable();
        for (i, (k, v)) in block.iter().enumerate() {
            if dead.next_if_eq(&i).is_some() {
                continue;
            }
            if let Some(v) = v
                && !is_expired_value(v, ctx.now_ms)
            {
                out.entries += 1;
                out.bytes += (k.len() + v.len()) as u64;
                loader.put(k, v)?;
            }
        }
    }
    Ok(out)
}

/// Removes every record that a later one of the same key replaces: the
/// blocks are in chain order (layer, then artifact), so the last record of
/// a key wins.
///
/// Only keys of the layers after the first are indexed (a delta holds the
/// keys that changed, usually a small part of the state); the first layer's
/// records are each looked up once. A first layer alone is left as it is:
/// its artifacts hold distinct keys.
fn drop_overwritten(layers: &mut [(usize, RecordBlock)]) {
    let Some(&(base, _)) = layers.first() else {
        return;
    };
    let split = layers
        .iter()
        .position(|(l, _)| *l != base)
        .unwrap_or(layers.len());
    if split == layers.len() {
        return;
    }
    let (older, newer) = layers.split_at_mut(split);
    let newest = Newest::index(newer.iter().map(|(_, block)| block).collect());
    let dead_older: Vec<Vec<bool>> = older
        .iter()
        .map(|(_, block)| block.iter().map(|(k, _)| newest.holds(k)).collect())
        .collect();
    let dead_newer = newest.replaced;
    for ((_, block), dead) in older.iter_mut().zip(dead_older) {
        block.retain(|i, _, _| !dead[i]);
    }
    for ((_, block), mut dead) in newer.iter_mut().zip(dead_newer) {
        dead.sort_unstable();
        block.retain(|i, _, _| dead.binary_search(&i).is_err());
    }
}

/// The records of a range's later layers (blocks in chain order: layer,
/// then artifact) indexed by key: the newest record of each key, by
/// (block, record), in a table by key hash.
struct Newest<'a> {
    blocks: Vec<&'a RecordBlock>,
    last: hashbrown::HashTable<(usize, usize)>,
    /// Per block, the records a newer one of the same key replaces.
    replaced: Vec<Vec<usize>>,
}

impl<'a> Newest<'a> {
    fn index(blocks: Vec<&'a RecordBlock>) -> Newest<'a> {
        let mut last = hashbrown::HashTable::with_capacity(blocks.iter().map(|b| b.len()).sum());
        let mut replaced: Vec<Vec<usize>> = vec![Vec::new(); blocks.len()];
        let key = |(b, i): (usize, usize)| blocks[b].key(i);
        for (b, block) in blocks.iter().enumerate() {
            for i in 0..block.len() {
                let k = block.key(i);
                let h = key_hash(k);
                match last.find_mut(h, |&at| key(at) == k) {
                    Some(at) => {
                        replaced[at.0].push(at.1);
                        *at = (b, i);
                    }
                    None => {
                        last.insert_unique(h, (b, i), |&at| key_hash(key(at)));
                    }
                }
            }
        }
        Newest {
            blocks,
            last,
            replaced,
        }
    }

    /// Whether a later layer has a record of `k`.
    fn holds(&self, k: &[u8]) -> bool {
        !self.last.is_empty()
            && self
                .last
                .find(key_hash(k), |&(b, i)| self.blocks[b].key(i) == k)
                .is_some()
    }
}

fn key_hash(k: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(k)
}

impl Folded {
    /// Counts this range's decoding into a recovery's statistics.
    fn account_decoding(&self, stats: &mut RecoveryStats) {
        stats.records_decoded += self.decoded;
        stats.records_filtered += self.filtered;
        stats.entries_loaded += self.entries;
        stats.logical_bytes += self.bytes;
    }

    /// Counts this range into a recovery's statistics, entries included.
    fn account(&self, stats: &mut RecoveryStats) {
        self.account_decoding(stats);
        for block in &self.blocks {
            account_block(stats, block);
        }
    }
}

/// Counts one loaded block of entries.
fn account_block(stats: &mut RecoveryStats, block: &RecordBlock) {
    stats.entries_loaded += block.len() as u64;
    stats.logical_bytes += block.logical_bytes();
}

/// The iterator `backend.restore` consumes ([`LoadStrategy::Restore`]):
/// the blocks of folded ranges as the decode workers finish them, each
/// block counted into the statistics as it is handed over and each range
/// reported as it arrives; an error
/// (a damaged artifact, the deadline, workers gone early) ends it.
struct Feed<'a> {
    rx: crossbeam_channel::Receiver<Result<Folded>>,
    current: std::vec::IntoIter<RecordBlock>,
    received: u64,
    total: u64,
    finished: bool,
    deadline: Option<Instant>,
    stats: &'a mut RecoveryStats,
    report: &'a dyn Fn(u64),
}

impl Feed<'_> {
    /// The next folded range, or the error that ends the stream.
    fn next_range(&mut self) -> Option<Result<Folded>> {
        if self.finished || self.received == self.total {
            return None;
        }
        let next = match self.deadline {
            Some(d) => match self.rx.recv_deadline(d) {
                Ok(x) => Ok(x),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(timeout_error()),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(workers_gone()),
            },
            None => self.rx.recv().map_err(|_| workers_gone()),
        };
        let next = next.and_then(|folded| folded);
        self.finished = next.is_err();
        Some(next)
    }
}

impl Iterator for Feed<'_> {
    type Item = Result<RecordBlock>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(block) = self.current.next() {
                // Counted as it is handed over: no extra pass over a range.
                account_block(self.stats, &block);
                return Some(Ok(block));
            }
            match self.next_range()? {
                Ok(f) => {
                    self.received += 1;
                    f.account_decoding(self.stats);
                    self.current = f.blocks.into_iter();
                    (self.report)(self.received);
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

fn workers_gone() -> Error {
    Error::Internal("decode workers stopped before every range was loaded".into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use highwater_core::{Codec, EncodeOptions, Envelope, KeyGroupRange, LayerKind, RecordWriter};

    use proptest::prelude::*;

    use super::*;

    /// Native files are fetched ahead by bytes as well as by count: never
    /// more than the byte bound between them, though always one, and every
    /// file arrives in order with its bytes.
    #[test]
    fn native_fetches_ahead_stay_within_the_byte_bound() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store: Arc<dyn CheckpointStore> =
            Arc::new(highwater_cloud::ObjectCheckpointStore::in_memory());
        let files: Vec<(String, Bytes)> = (0..6u8)
            .map(|i| {
                (
                    format!("{i:06}.sst"),
                    Bytes::from(vec![i; 1000 + usize::from(i)]),
                )
            })
            .collect();
        let refs: Vec<ArtifactRef> = files
            .iter()
            .map(|(name, bytes)| ArtifactRef {
                operator: name.clone(),
                key_groups: KeyGroupRange::all(128),
                id: ArtifactId::of(bytes),
                entries: 0,
                logical_bytes: bytes.len() as u64,
                stored_bytes: bytes.len() as u64,
                codec: Codec::Raw,
            })
            .collect();
        for (r, (_, bytes)) in refs.iter().zip(&files) {
            rt.block_on(store.put_artifact(r.id, bytes.clone()))
                .unwrap();
        }
        for (bytes_ahead, most_ahead) in [(2_100, 2), (3_500, 3), (100, 1), (1 << 20, 4)] {
            let mut source = NativeFetch {
                io: rt.handle(),
                store: &store,
                checkpoint: CheckpointId(1),
                list: refs.iter().map(NativeFileRef::of_artifact).collect(),
                refs: &refs,
                deadline: None,
                bytes_ahead,
                bytes: 0,
                files: 0,
            };
            let mut fetching = NativeFetching {
                wanted: (0..refs.len()).collect::<Vec<_>>().into_iter(),
                window: VecDeque::new(),
                failed: false,
                source: &mut source,
            };
            let mut got = Vec::new();
            loop {
                fetching.fill().unwrap();
                let ahead: u64 = fetching.window.iter().map(|(r, _)| r.stored_bytes).sum();
                assert!(
                    fetching.window.len() <= 1 || ahead <= bytes_ahead,
                    "{ahead} bytes ahead with a bound of {bytes_ahead}"
                );
                // As many as fit are under way, not fewer.
                assert_eq!(
                    fetching.window.len(),
                    most_ahead.min(refs.len() - got.len()),
                    "bound {bytes_ahead}"
                );
                let Some(file) = fetching.next() else { break };
                got.push(file.unwrap());
            }
            drop(fetching);
            assert_eq!(got, files);
            assert_eq!(source.files, files.len());
        }
    }

    proptest! {
        /// The fetch-ahead accounting against a model, under any order in
        /// which decoders finish: every range is handed to a decoder once,
        /// with all its artifacts; the restore never waits with nothing
        /// fetching or decoding; the bytes charged are always those of the
        /// artifacts being fetched, held for a waiting range or leased to
        /// a decoder; a fetch exceeds the budget only when nothing else is
        /// under way; and everything is let go at the end.
        #[test]
        fn fetch_ahead_stays_within_its_budget_and_always_finishes(
            sizes in proptest::collection::vec(1u64..100, 1..8),
            named in proptest::collection::vec(proptest::collection::vec(0usize..8, 1..5), 1..7),
            budget in 1u64..300,
            concurrency in 1usize..4,
            schedule in proptest::collection::vec(0usize..16, 0..64),
        ) {
            let refs: Vec<ArtifactRef> = sizes
                .iter()
                .enumerate()
                .map(|(i, &stored)| ArtifactRef {
                    operator: "op".into(),
                    key_groups: KeyGroupRange::all(128),
                    id: ArtifactId::of(&[i as u8]),
                    entries: 0,
                    logical_bytes: 0,
                    stored_bytes: stored,
                    codec: Codec::Raw,
                })
                .collect();
            let ranges: Vec<RangePlan> = named
                .iter()
                .map(|artifacts| RangePlan {
                    operator: "op".into(),
                    key_groups: KeyGroupRange::all(128),
                    artifacts: artifacts
                        .iter()
                        .enumerate()
                        .map(|(layer, &a)| PlannedArtifact {
                            layer,
                            kind: LayerKind::Full,
                            artifact: refs[a % refs.len()].clone(),
                        })
                        .collect(),
                })
                .collect();
            let size = |id: ArtifactId| refs.iter().find(|r| r.id == id).unwrap().stored_bytes;
            let distinct = |i: usize| -> Vec<ArtifactId> {
                distinct_artifacts(&ranges[i]).iter().map(|a| a.id).collect()
            };
            let ids = artifact_ids(&ranges);
            let mut ahead = FetchAhead::new(&ranges, budget);
            let mut schedule = schedule.into_iter();
            let mut next = 0;
            let mut window: VecDeque<ArtifactId> = VecDeque::new();
            let mut arrived: Vec<ArtifactId> = Vec::new();
            let mut dispatched: Vec<usize> = Vec::new();
            let mut decoding: Vec<usize> = Vec::new();
            // What the model says is charged: fetching, or arrived and
            // named by a range not yet dispatched, or leased.
            let model_charged = |window: &VecDeque<ArtifactId>, arrived: &[ArtifactId],
                                 dispatched: &[usize], decoding: &[usize]| -> u64 {
                ids.iter()
                    .filter(|&&id| {
                        window.contains(&id)
                            || (arrived.contains(&id)
                                && (0..ranges.len()).any(|i| {
                                    !dispatched.contains(&i) && distinct(i).contains(&id)
                                }))
                            || decoding.iter().any(|&i| distinct(i).contains(&id))
                    })
                    .map(|&id| size(id))
                    .sum()
            };
            let lease = |i: usize, ahead: &mut FetchAhead, dispatched: &mut Vec<usize>,
                             decoding: &mut Vec<usize>| {
                prop_assert!(!dispatched.contains(&i), "range {} dispatched twice", i);
                let own = ahead.lease(i, &ranges[i]);
                let mut got: Vec<ArtifactId> = own.keys().copied().collect();
                let mut want = distinct(i);
                got.sort_unstable();
                want.sort_unstable();
                prop_assert_eq!(got, want, "range {} leased without all its artifacts", i);
                dispatched.push(i);
                decoding.push(i);
                Ok(())
            };
            for i in ahead.ready() {
                lease(i, &mut ahead, &mut dispatched, &mut decoding)?;
            }
            loop {
                // Some decoders finish (the schedule says which).
                while !decoding.is_empty() {
                    let pick = schedule.next().unwrap_or(0);
                    if pick >= 8 {
                        break;
                    }
                    let i = decoding.remove(pick % decoding.len());
                    ahead.finished(&ranges[i]);
                }
                while window.len() < concurrency && next < ids.len()
                    && ahead.may_fetch(ids[next], window.len())
                {
                    let id = ids[next];
                    let within = ahead.charged + size(id) <= budget;
                    prop_assert!(within || (window.is_empty() && decoding.is_empty()),
                        "over budget with work under way");
                    ahead.charge(id);
                    window.push_back(id);
                    next += 1;
                }
                prop_assert_eq!(ahead.charged,
                    model_charged(&window, &arrived, &dispatched, &decoding));
                if let Some(id) = window.pop_front() {
                    arrived.push(id);
                    for i in ahead.arrived(id, Bytes::new()) {
                        lease(i, &mut ahead, &mut dispatched, &mut decoding)?;
                    }
                } else if next < ids.len() {
                    prop_assert!(!decoding.is_empty(), "waiting with nothing fetching or decoding");
                    let pick = schedule.next().unwrap_or(0);
                    let i = decoding.remove(pick % decoding.len());
                    ahead.finished(&ranges[i]);
                } else {
                    break;
                }
                prop_assert_eq!(ahead.charged,
                    model_charged(&window, &arrived, &dispatched, &decoding));
            }
            for i in std::mem::take(&mut decoding) {
                ahead.finished(&ranges[i]);
            }
            prop_assert_eq!(dispatched.len(), ranges.len());
            prop_assert_eq!(ahead.charged, 0);
            prop_assert!(ahead.held.is_empty() && ahead.decoding.is_empty());
            prop_assert!(ahead.peak >= *sizes.iter().min().unwrap());
        }

        /// Folding layers of blocks keeps exactly the newest record of each
        /// key (later blocks win), as a map applied in order would.
        #[test]
        fn drop_overwritten_keeps_the_last_record_of_each_key(
            layers in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::collection::vec((0u8..24, proptest::option::of(0u8..4)), 0..12),
                    1..4),
                1..5),
        ) {
            let mut blocks: Vec<(usize, RecordBlock)> = Vec::new();
            let mut model: BTreeMap<u8, Option<u8>> = BTreeMap::new();
            for (layer, artifacts) in layers.iter().enumerate() {
                for recs in artifacts {
                    // Within a layer a key appears once (as the encoder writes).
                    let mut block = RecordBlock::new();
                    for (k, v) in recs {
                        if layer == 0 && model.contains_key(k) {
                            continue;
                        }
                        block.push(&[*k], v.as_ref().map(std::slice::from_ref)).unwrap();
                        model.insert(*k, *v);
                    }
                    blocks.push((layer, block));
                }
            }
            drop_overwritten(&mut blocks);
            let mut got: BTreeMap<u8, Option<u8>> = BTreeMap::new();
            for (_, block) in &blocks {
                for (k, v) in block.iter() {
                    prop_assert!(got.insert(k[0], v.map(|v| v[0])).is_none(), "key {} twice", k[0]);
                }
            }
            prop_assert_eq!(got, model);
        }

        /// Folding a range's artifacts (decoded, filtered by the scope's
        /// key groups and by expiry, and folded) leaves what applying the
        /// layers in order to a map and then dropping expired values and
        /// deletes leaves: in particular, an expired record of a later
        /// layer still hides the older records of its key, and a first
        /// layer that is a delta contributes no deletes. Loading the range
        /// into a bulk restore ([`load_range`]) leaves the same state.
        #[test]
        fn a_folded_range_holds_the_live_newest_record_of_each_key(
            first_is_delta in any::<bool>(),
            layers in proptest::collection::vec(
                proptest::collection::vec(
                    // key group, key, value: None = delete, else (expired, byte)
                    (0u16..4, 0u8..16, proptest::option::of((any::<bool>(), any::<u8>()))),
                    0..16),
                1..5),
            scope_end in proptest::option::of(1u16..4),
        ) {
            const NOW: u64 = 1_000;
            let value = |expired: bool, b: u8| {
                let mut out = Vec::new();
                Envelope::encode_into(Some(if expired { NOW } else { NOW + 1 }), &[b], &mut out);
                out
            };
            let mut artifacts: HashMap<ArtifactId, Bytes> = HashMap::new();
            let mut planned = Vec::new();
            let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            for (layer, recs) in layers.iter().enumerate() {
                let kind = if layer == 0 && !first_is_delta {
                    LayerKind::Full
                } else {
                    LayerKind::Delta
                };
                let artifact_kind = match kind {
                    LayerKind::Full => highwater_core::ArtifactKind::Entries,
                    _ => highwater_core::ArtifactKind::Delta,
                };
                // One record per key and layer, in key order, as the
                // encoder writes them; an entries artifact has no deletes.
                let mut sorted: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
                for (kg, k, v) in recs {
                    let v = match (v, kind) {
                        (None, LayerKind::Full) => Some(value(false, *k)),
                        (None, _) => None,
                        (Some((expired, b)), _) => Some(value(*expired, *b)),
                    };
                    let mut key = kg.to_be_bytes().to_vec();
                    key.push(*k);
                    sorted.insert(key, v);
                }
                let mut w = RecordWriter::new(artifact_kind, 0);
                for (k, v) in &sorted {
                    w.push(k, v.as_deref()).unwrap();
                    model.insert(k.clone(), v.clone());
                }
                let enc = w.finish(&EncodeOptions::default()).unwrap();
                let r = ArtifactRef {
                    operator: "op".into(),
                    key_groups: KeyGroupRange::new(0, 4).unwrap(),
                    id: enc.id(),
                    entries: enc.entries,
                    logical_bytes: enc.raw_len,
                    stored_bytes: enc.bytes.len() as u64,
                    codec: enc.codec,
                };
                artifacts.insert(r.id, Bytes::from(enc.bytes));
                planned.push(PlannedArtifact { layer, kind, artifact: r });
            }
            let scope = RecoveryScope {
                key_groups: scope_end.map(|end| KeyGroupRange::new(0, end).unwrap()),
                ..RecoveryScope::all()
            };
            let ctx = FoldCtx {
                checkpoint: CheckpointId(1),
                artifacts: &artifacts,
                limits: &DecodeLimits::default(),
                now_ms: NOW,
                scope: &scope,
            };
            let range = RangePlan {
                operator: "op".into(),
                key_groups: KeyGroupRange::new(0, 4).unwrap(),
                artifacts: planned,
            };
            let folded = fold_range(&ctx, &range).unwrap();
            let mut got: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for block in &folded.blocks {
                prop_assert_eq!(block.len(), block.puts().count(), "a delete reached the backend");
                for (k, v) in block.puts() {
                    prop_assert!(got.insert(k.to_vec(), v.to_vec()).is_none(), "key {:?} twice", k);
                }
            }
            let want: BTreeMap<Vec<u8>, Vec<u8>> = model
                .into_iter()
                .filter(|(k, _)| scope_end.is_none_or(|end| u16::from_be_bytes([k[0], k[1]]) < end))
                .filter_map(|(k, v)| v.filter(|v| !is_expired_value(v, NOW)).map(|v| (k, v)))
                .collect();
            prop_assert_eq!(&got, &want);
            // Loaded through a bulk restore instead (the first layer
            // streamed past the later layers' keys), the backend holds
            // the same, and the counts agree with the fold's.
            let backend = highwater_memory::MemoryBackend::new();
            let bulk = backend.bulk_restore().unwrap();
            let loaded = {
                let mut loader = bulk.loader();
                load_range(&ctx, &range, &mut *loader).unwrap()
            };
            bulk.commit().unwrap();
            let held: BTreeMap<Vec<u8>, Vec<u8>> =
                backend.scan_range(&[], &[0xff; 4]).unwrap().into_iter().collect();
            prop_assert_eq!(&held, &want);
            prop_assert_eq!(loaded.entries, want.len() as u64);
            let bytes: usize = want.iter().map(|(k, v)| k.len() + v.len()).sum();
            prop_assert_eq!(loaded.bytes, bytes as u64);
            prop_assert_eq!((loaded.decoded, loaded.filtered), (folded.decoded, folded.filtered));
        }
    }
}
