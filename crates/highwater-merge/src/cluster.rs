//! Cluster jobs: a checkpointer (and the facade's `StateManager` around
//! it) that is one participant of a job's global checkpoints (see
//! `docs/raft.md`, "Cluster jobs").
//!
//! Every participant checkpoints its own key-group range into its own
//! scope of one shared store (`participants/<id>`), at the barriers its
//! [`Coordinator`] announces, and acknowledges each part once its manifest
//! is committed. A restore reads the coordinator's newest completed
//! checkpoint and loads this participant's key groups from the parts of
//! every participant of it: the job resumes from one cut, on any number of
//! participants.
//!
//! [`LocalCoordinator`] coordinates the subtasks of one process; the
//! Raft-replicated ledger of `highwater-raft` coordinates the nodes of a
//! cluster behind the same trait.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::io::run_io;
use crate::{AfterCheckpoint, CheckpointHandle, Checkpointer};
use bytes::Bytes;
use highwater_core::{
    ArtifactId, BoxFuture, CheckpointId, CheckpointKind, CheckpointStore, Coordinator, Error,
    GlobalCheckpoint, GlobalStatus, KeyGroupRange, Layer, LayerKind, Manifest, PartRef,
    ParticipantId, PutOutcome, Result, StoreCounters, load_manifest, participant_scope,
};

/// Manifest property naming the participant that wrote a part.
pub const PARTICIPANT_PROPERTY: &str = "highwater.cluster.participant";
/// Manifest property: the subtask (`index/parallelism`) that wrote a part.
pub const SUBTASK_PROPERTY: &str = "highwater.cluster.subtask";
/// Prefix of the properties of a [`LocalCoordinator`] ledger record: one
/// per part, `highwater.global.part.<participant>` = `<scope>@<id>`.
const PART_PROPERTY_PREFIX: &str = "highwater.global.part.";
/// The scope of a [`LocalCoordinator`]'s ledger in the shared store.
pub const LOCAL_LEDGER_SCOPE: &str = "ledger";
/// Completed checkpoints a [`LocalCoordinator`] remembers (and keeps in its
/// ledger scope); older ones are pruned.
pub const LOCAL_HISTORY: usize = 64;

/// A participant's membership in a job's global checkpoints: its
/// coordinator, the shared store, and which subtask it is.
pub struct Member {
    coordinator: Arc<dyn Coordinator>,
    /// The shared store (every participant's scope is in it).
    shared: Arc<dyn CheckpointStore>,
    /// This participant's scope in it.
    scope: String,
    parallelism: u16,
    subtask: u16,
    /// Globally completed checkpoints whose parts are retained.
    retained: usize,
    /// The newest barrier this participant took its part of.
    taken: Mutex<Option<CheckpointId>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("coordinator", &self.coordinator)
            .field("shared", &self.shared.name())
            .field("scope", &self.scope)
            .field("subtask", &self.subtask_label())
            .finish_non_exhaustive()
    }
}

impl Member {
    /// Subtask `subtask` of `parallelism` (checked against
    /// `max_parallelism`) of the job whose shared store is `shared`,
    /// keeping the parts of the newest `retained` completed checkpoints;
    /// also returns this participant's scope of `shared`, where its
    /// checkpointer writes.
    pub fn new(
        coordinator: Arc<dyn Coordinator>,
        shared: Arc<dyn CheckpointStore>,
        max_parallelism: u16,
        parallelism: u16,
        subtask: u16,
        retained: usize,
    ) -> Result<(Member, Arc<dyn CheckpointStore>)> {
        KeyGroupRange::for_subtask(max_parallelism, parallelism, subtask)?;
        let scope = participant_scope(coordinator.participant());
        let own = shared.scoped(&scope)?;
        Ok((
            Member {
                coordinator,
                shared,
                scope,
                parallelism,
                subtask,
                retained,
                taken: Mutex::new(None),
            },
            own,
        ))
    }

    /// The coordinator.
    pub fn coordinator(&self) -> &Arc<dyn Coordinator> {
        &self.coordinator
    }

    /// The number of subtasks of the job.
    pub fn parallelism(&self) -> u16 {
        self.parallelism
    }

    /// This participant's subtask index.
    pub fn subtask(&self) -> u16 {
        self.subtask
    }

    /// `index/parallelism`, as recorded in every part's manifest.
    pub fn subtask_label(&self) -> String {
        format!("{}/{}", self.subtask, self.parallelism)
    }

    fn range(&self, max_parallelism: u16) -> Result<KeyGroupRange> {
        KeyGroupRange::for_subtask(max_parallelism, self.parallelism, self.subtask)
    }

    fn taken(&self) -> MutexGuard<'_, Option<CheckpointId>> {
        self.taken.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Which of this participant's local manifests to keep: the parts of
    /// the newest `retained` completed checkpoints, every part newer than
    /// the newest completed one that is not known to be aborted (it may
    /// still complete), and `base`: the part the next incremental part
    /// builds on, whatever its checkpoint became (its chain's artifacts
    /// must outlive it until a newer part references them).
    fn keep_rule(
        &self,
        base: Option<CheckpointId>,
    ) -> Result<impl Fn(CheckpointId) -> bool + Send + 'static> {
        let completed = self.coordinator.completed(self.retained)?;
        let latest = completed.first().map(|g| g.id);
        let mut keep: BTreeSet<CheckpointId> = completed.iter().map(|g| g.id).collect();
        keep.extend(base);
        let coordinator = self.coordinator.clone();
        Ok(move |id: CheckpointId| {
            if keep.contains(&id) {
                return true;
            }
            if latest.is_some_and(|l| id <= l) {
                return false;
            }
            // Newer than the newest completed checkpoint: it may still
            // complete, unless it was aborted or the coordinator never
            // heard of it (a coordinator that restarted meanwhile). A
            // status that cannot be read keeps the part.
            !matches!(
                coordinator.status(id),
                Ok(GlobalStatus::Aborted | GlobalStatus::Unknown)
            )
        })
    }
}

/// What a participant's restore loads.
pub enum GlobalSource {
    /// No globally completed checkpoint.
    Nothing,
    /// This participant's own part of this checkpoint, written for the
    /// same subtask: restored from its scope, and the next incremental
    /// builds on it.
    Own(CheckpointId),
    /// The parts of this checkpoint that hold this subtask's key groups,
    /// as one read-only store (a rescale, or a part written by another
    /// participant).
    View(Arc<dyn CheckpointStore>, CheckpointId),
}

/// Prepares a participant's restore of global checkpoint `wanted` (the
/// newest completed one when `None`): aborts the pending checkpoints this
/// participant has a part of (they would otherwise complete with state it
/// is about to abandon), deletes its parts that no completed or pending
/// checkpoint needs (but not `base`, the part the checkpointer's next
/// incremental builds on: [`Idle::base`](crate::Idle::base)),
/// and says where its key groups come from.
pub fn prepare_restore(
    checkpointer: &Checkpointer,
    m: &Member,
    base: Option<CheckpointId>,
    wanted: Option<CheckpointId>,
) -> Result<GlobalSource> {
    // A stale view would restore (and keep) a checkpoint the others have
    // moved past, and delete parts of ones it has not heard of yet.
    m.coordinator.sync()?;
    let own = checkpointer.store().clone();
    let own_ids = checkpointer
        .exec()
        .run_io(async move { own.list_manifests().await })?;
    let latest = m.coordinator.latest_completed()?.map(|g| g.id);
    let mut declined = false;
    for id in own_ids {
        if latest.is_none_or(|l| id > l) && m.coordinator.status(id)? == GlobalStatus::Pending {
            m.coordinator
                .decline(id, "a participant restored an earlier checkpoint")?;
            declined = true;
        }
    }
    if declined {
        // The aborts into this view too: retention then deletes those
        // parts, and no barrier of them is taken again (found by the
        // cluster demo's node kills: a restarted node took its part of a
        // checkpoint it had just declined, and its manifest existed).
        m.coordinator.sync()?;
    }
    checkpointer.retain_only(m.keep_rule(base)?)?;
    let g = match wanted {
        None => m.coordinator.latest_completed()?,
        Some(id) => Some(
            m.coordinator
                .completed(usize::MAX)?
                .into_iter()
                .find(|g| g.id == id)
                .ok_or_else(|| Error::NotFound(format!("globally completed checkpoint {id}")))?,
        ),
    };
    let Some(g) = g else {
        return Ok(GlobalSource::Nothing);
    };
    let max_parallelism = checkpointer.config().max_parallelism;
    if let Some(part) = g.parts.get(&m.coordinator.participant())
        && part.scope == m.scope
    {
        let own = checkpointer.store().clone();
        let id = part.checkpoint;
        let manifest = checkpointer
            .exec()
            .run_io(async move { load_manifest(&*own, id).await })?;
        if manifest.properties.get(SUBTASK_PROPERTY) == Some(&m.subtask_label())
            && manifest.max_parallelism == max_parallelism
        {
            return Ok(GlobalSource::Own(g.id));
        }
    }
    let range = m.range(max_parallelism)?;
    let shared = m.shared.clone();
    let id = g.id;
    let view = checkpointer
        .exec()
        .run_io(async move { GlobalView::open(shared, g, range, max_parallelism).await })?;
    Ok(GlobalSource::View(Arc::new(view), id))
}

/// At an event boundary: takes this participant's part of the pending
/// global checkpoint if it has not yet, with the coordinator's id, and
/// acknowledges it (then applies retention) on the checkpoint's worker once
/// its manifest is committed; a failed part is declined.
pub fn take_barrier(
    checkpointer: &Checkpointer,
    m: &Arc<Member>,
) -> Result<Option<CheckpointHandle>> {
    let mut taken = m.taken();
    let Some(id) = m.coordinator.next_barrier(*taken)? else {
        return Ok(None);
    };
    let mut idle = checkpointer.idle();
    *taken = Some(id);
    idle.assign_next_id(id);
    let member = m.clone();
    let pipeline = checkpointer.clone();
    let then: AfterCheckpoint = Box::new(move |outcome| match outcome {
        Ok(info) => {
            let part = PartRef {
                scope: member.scope.clone(),
                checkpoint: info.id,
            };
            if let Err(e) = member.coordinator.acknowledge(info.id, &part) {
                // Aborted meanwhile (a participant was lost, or timed
                // out), or the coordinator is unreachable for now (the
                // checkpoint then times out): this part is garbage that
                // retention removes, not a failure of this participant,
                // which goes on processing (found by the cluster demo's
                // node kills: a node stopped when its acknowledgement got
                // no majority while two of three nodes were restarting).
                // The ledger may have refused it as finished before this
                // view heard of the abort.
                let _ = member.coordinator.sync();
                let aborted =
                    member.coordinator.status(info.id).ok() == Some(GlobalStatus::Aborted);
                if !aborted && !e.is_transient() {
                    return Err(e);
                }
                tracing::warn!(checkpoint = %info.id, error = %e, "this part of a global checkpoint was not acknowledged");
            }
            // This part is the base of the next incremental one (found by
            // the cluster demo's node kills: a part of an aborted checkpoint
            // was deleted while the next part still built on its layers).
            let retained = member
                .keep_rule(Some(info.id))
                .and_then(|keep| pipeline.retain_only(keep));
            if let Err(e) = retained {
                tracing::warn!(checkpoint = %info.id, error = %e, "retention after a global checkpoint's part failed");
            }
            Ok(())
        }
        Err(e) => {
            if let Err(d) = member.coordinator.decline(id, &e.to_string()) {
                tracing::warn!(checkpoint = %id, error = %d, "could not decline a failed part");
            }
            Ok(())
        }
    });
    match idle.trigger_then(then) {
        Ok(handle) => Ok(Some(handle)),
        Err(e) => {
            // The snapshot failed before the worker started.
            let _ = m.coordinator.decline(id, &e.to_string());
            Err(e)
        }
    }
}

/// The coordinator of the subtasks of one process: the same global
/// checkpoint semantics as the Raft ledger, without a network.
///
/// Open one per job over the job's shared store, hand
/// [`participant(i)`](LocalCoordinator::participant) to subtask `i`'s
/// `StateManager` (the `highwater` facade) through
/// `StateManagerBuilder::cluster`,
/// and every subtask takes its part of a checkpoint at its next event
/// boundary after the barrier ([`trigger`](LocalCoordinator::trigger), or
/// every `interval`). A checkpoint completes when every subtask has
/// acknowledged; the completion is then written, checksummed and create-only,
/// into the store's `ledger` scope, which is what a restarted process reads.
/// At most one checkpoint is pending at a time.
#[derive(Debug, Clone)]
pub struct LocalCoordinator {
    inner: Arc<LocalInner>,
}

struct LocalInner {
    ledger: Arc<dyn CheckpointStore>,
    participants: BTreeSet<ParticipantId>,
    interval: Option<Duration>,
    runtime: tokio::runtime::Runtime,
    state: Mutex<LocalState>,
}

impl std::fmt::Debug for LocalInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalInner")
            .field("participants", &self.participants)
            .field("interval", &self.interval)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct LocalState {
    next_id: CheckpointId,
    pending: Option<(CheckpointId, BTreeMap<ParticipantId, PartRef>)>,
    requested: bool,
    last_trigger: Instant,
    /// Newest last.
    completed: VecDeque<GlobalCheckpoint>,
    aborted: BTreeSet<CheckpointId>,
}

impl LocalCoordinator {
    /// Opens the coordinator of `participants` subtasks (ids `0..n`) over
    /// the job's shared `store`: reads the completed checkpoints from its
    /// ledger scope, and continues ids after every id already used there or
    /// in a participant's scope. With `interval`, a checkpoint is triggered
    /// at the first barrier query once `interval` has passed since the
    /// previous trigger (or since opening).
    pub fn open(
        store: Arc<dyn CheckpointStore>,
        participants: u16,
        interval: Option<Duration>,
    ) -> Result<LocalCoordinator> {
        if participants == 0 {
            return Err(Error::InvalidArgument(
                "a local coordinator needs at least one participant".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("highwater-coordinator")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the coordinator's runtime", e))?;
        let ledger = store.scoped(LOCAL_LEDGER_SCOPE)?;
        let participants: BTreeSet<ParticipantId> = (0..u64::from(participants)).collect();
        let scopes = participants
            .iter()
            .map(|&p| store.scoped(&participant_scope(p)))
            .collect::<Result<Vec<_>>>()?;
        let ledger2 = ledger.clone();
        let (completed, newest) = run_io(runtime.handle(), async move {
            let ids = ledger2.list_manifests().await?;
            let mut newest = ids.last().copied().unwrap_or(CheckpointId(0));
            let mut completed = VecDeque::new();
            for &id in ids.iter().rev().take(LOCAL_HISTORY) {
                completed.push_front(read_record(&*ledger2, id).await?);
            }
            for s in scopes {
                if let Some(&last) = s.list_manifests().await?.last() {
                    newest = newest.max(last);
                }
            }
            Ok((completed, newest))
        })?;
        Ok(LocalCoordinator {
            inner: Arc::new(LocalInner {
                ledger,
                participants,
                interval,
                runtime,
                state: Mutex::new(LocalState {
                    next_id: newest.next()?,
                    pending: None,
                    requested: false,
                    last_trigger: Instant::now(),
                    completed,
                    aborted: BTreeSet::new(),
                }),
            }),
        })
    }

    /// Subtask `index`'s view, for its manager's
    /// `StateManagerBuilder::cluster`.
    pub fn participant(&self, index: u16) -> Result<Arc<dyn Coordinator>> {
        let id = u64::from(index);
        if !self.inner.participants.contains(&id) {
            return Err(Error::InvalidArgument(format!(
                "no participant {index}: the coordinator has {}",
                self.inner.participants.len()
            )));
        }
        Ok(Arc::new(LocalParticipant {
            coordinator: self.clone(),
            id,
        }))
    }

    /// Asks for a checkpoint: the next barrier query of any participant
    /// starts one (unless one is pending).
    pub fn trigger(&self) {
        self.lock().requested = true;
    }

    /// The newest completed checkpoints, newest first.
    pub fn completed(&self, limit: usize) -> Vec<GlobalCheckpoint> {
        self.lock()
            .completed
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// The pending checkpoint, if one is.
    pub fn pending(&self) -> Option<CheckpointId> {
        self.lock().pending.as_ref().map(|(id, _)| *id)
    }

    fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn next_barrier(&self, p: ParticipantId, after: Option<CheckpointId>) -> Option<CheckpointId> {
        let mut s = self.lock();
        let due = s.requested
            || self
                .inner
                .interval
                .is_some_and(|every| s.last_trigger.elapsed() >= every);
        // An id without a successor (only a forged store holds one) starts
        // no checkpoint.
        if s.pending.is_none()
            && due
            && let Ok(following) = s.next_id.next()
        {
            let id = s.next_id;
            s.next_id = following;
            s.pending = Some((id, BTreeMap::new()));
            s.requested = false;
            s.last_trigger = Instant::now();
        }
        match &s.pending {
            Some((id, acks)) if after.is_none_or(|a| *id > a) && !acks.contains_key(&p) => {
                Some(*id)
            }
            _ => None,
        }
    }

    fn acknowledge(&self, p: ParticipantId, id: CheckpointId, part: &PartRef) -> Result<()> {
        let mut s = self.lock();
        let complete = match &mut s.pending {
            Some((pending, acks)) if *pending == id => {
                acks.insert(p, part.clone());
                self.inner.participants.iter().all(|q| acks.contains_key(q))
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint {id} is not pending (aborted, or never triggered)"
                )));
            }
        };
        if !complete {
            return Ok(());
        }
        let (_, acks) = s.pending.take().expect("pending checked above");
        let global = GlobalCheckpoint { id, parts: acks };
        // Durable before it counts: a restarted process reads this record.
        let record = Bytes::from(record_manifest(&global)?.encode()?);
        let ledger = self.inner.ledger.clone();
        let prune: Vec<CheckpointId> = s
            .completed
            .iter()
            .rev()
            .skip(LOCAL_HISTORY - 1)
            .map(|g| g.id)
            .collect();
        let written = run_io(self.inner.runtime.handle(), async move {
            ledger.commit_manifest(id, record).await?;
            for old in prune {
                ledger.delete_manifest(old).await?;
            }
            Ok(())
        });
        if let Err(e) = written {
            s.aborted.insert(id);
            return Err(e);
        }
        s.completed.push_back(global);
        while s.completed.len() > LOCAL_HISTORY {
            s.completed.pop_front();
        }
        Ok(())
    }

    fn decline(&self, id: CheckpointId) {
        let mut s = self.lock();
        if s.pending.as_ref().is_some_and(|(p, _)| *p == id) {
            s.pending = None;
            s.aborted.insert(id);
        }
    }

    fn status(&self, id: CheckpointId) -> GlobalStatus {
        let s = self.lock();
        if s.pending.as_ref().is_some_and(|(p, _)| *p == id) {
            GlobalStatus::Pending
        } else if s.completed.iter().any(|g| g.id == id) {
            GlobalStatus::Completed
        } else if s.aborted.contains(&id) {
            GlobalStatus::Aborted
        } else {
            GlobalStatus::Unknown
        }
    }
}

/// One subtask's view of a [`LocalCoordinator`].
#[derive(Debug)]
struct LocalParticipant {
    coordinator: LocalCoordinator,
    id: ParticipantId,
}

impl Coordinator for LocalParticipant {
    fn participant(&self) -> ParticipantId {
        self.id
    }

    fn next_barrier(&self, after: Option<CheckpointId>) -> Result<Option<CheckpointId>> {
        Ok(self.coordinator.next_barrier(self.id, after))
    }

    fn acknowledge(&self, checkpoint: CheckpointId, part: &PartRef) -> Result<()> {
        self.coordinator.acknowledge(self.id, checkpoint, part)
    }

    fn decline(&self, checkpoint: CheckpointId, _reason: &str) -> Result<()> {
        self.coordinator.decline(checkpoint);
        Ok(())
    }

    fn completed(&self, limit: usize) -> Result<Vec<GlobalCheckpoint>> {
        Ok(self.coordinator.completed(limit))
    }

    fn status(&self, checkpoint: CheckpointId) -> Result<GlobalStatus> {
        Ok(self.coordinator.status(checkpoint))
    }
}

/// A ledger record as a manifest (checksummed, versioned, create-only like
/// every manifest): no artifacts, one property per part.
fn record_manifest(g: &GlobalCheckpoint) -> Result<Manifest> {
    Ok(Manifest {
        checkpoint_id: g.id,
        parent: None,
        kind: CheckpointKind::Full,
        created_at_ms: 0,
        wal_position: None,
        max_parallelism: 1,
        layers: vec![Layer {
            checkpoint_id: g.id,
            kind: LayerKind::Full,
            artifacts: Vec::new(),
        }],
        properties: g
            .parts
            .iter()
            .map(|(p, part)| (format!("{PART_PROPERTY_PREFIX}{p}"), part.to_string()))
            .collect(),
        schemas: Vec::new(),
    })
}

async fn read_record(ledger: &dyn CheckpointStore, id: CheckpointId) -> Result<GlobalCheckpoint> {
    let m = load_manifest(ledger, id).await?;
    let mut parts = BTreeMap::new();
    for (k, v) in &m.properties {
        let Some(p) = k.strip_prefix(PART_PROPERTY_PREFIX) else {
            continue;
        };
        let p: ParticipantId = p.parse().map_err(|_| {
            Error::corrupt("global checkpoint record", format!("bad participant {p:?}"))
        })?;
        parts.insert(p, PartRef::parse(v)?);
    }
    if parts.is_empty() {
        return Err(Error::corrupt(
            "global checkpoint record",
            format!("checkpoint {id} names no part"),
        ));
    }
    Ok(GlobalCheckpoint { id, parts })
}

/// One global checkpoint's parts seen as one read-only store holding one
/// manifest (`id`): the parts' chains laid side by side, layer by layer.
/// Participants own disjoint key groups, so laying their layers together
/// changes no fold; the recovery engine plans, verifies, fetches and loads
/// it like any checkpoint.
struct GlobalView {
    id: CheckpointId,
    manifest: Bytes,
    stores: Vec<Arc<dyn CheckpointStore>>,
    owner: HashMap<ArtifactId, usize>,
}

impl GlobalView {
    /// Reads the part manifests of `g` from `shared`. Parts whose
    /// key groups miss `range` are left out; `None` when no part holds any
    /// state in `range`.
    async fn open(
        shared: Arc<dyn CheckpointStore>,
        g: GlobalCheckpoint,
        range: KeyGroupRange,
        max_parallelism: u16,
    ) -> Result<GlobalView> {
        let mut stores = Vec::new();
        let mut manifests = Vec::new();
        let mut owner = HashMap::new();
        let mut owned = Vec::new();
        for part in g.parts.values() {
            let store = shared.scoped(&part.scope)?;
            let m = load_manifest(&*store, part.checkpoint).await?;
            if m.checkpoint_id != g.id {
                return Err(Error::corrupt(
                    "global checkpoint",
                    format!("part {part} holds checkpoint {}", m.checkpoint_id),
                ));
            }
            owned.push(part_key_groups(part, &m)?);
            if !m
                .artifacts()
                .any(|a| a.key_groups.intersect(&range).is_some())
            {
                continue;
            }
            for a in m.artifacts() {
                owner.insert(a.id, stores.len());
            }
            stores.push(store);
            manifests.push(m);
        }
        // A cut without some subtask's part (a checkpoint completed while
        // that subtask was not taking part) is not the job's state: its key
        // groups would restore empty.
        if let Some(kg) = range
            .iter()
            .find(|kg| !owned.iter().any(|r| r.contains(*kg)))
        {
            return Err(Error::corrupt(
                "global checkpoint",
                format!(
                    "checkpoint {} has no part holding key group {} (its parts cover {owned:?}); it is not a complete cut of this job",
                    g.id, kg.0
                ),
            ));
        }
        let manifest = Bytes::from(side_by_side(g.id, &manifests, max_parallelism)?.encode()?);
        Ok(GlobalView {
            id: g.id,
            manifest,
            stores,
            owner,
        })
    }
}

/// The key groups `part` (manifest `m`) owns: those of the subtask its
/// manifest names in [`SUBTASK_PROPERTY`] (`<subtask>/<parallelism>`) of
/// its `max_parallelism`. A part without a valid subtask is
/// [`Error::Corrupt`] naming it. `highwater verify` checks with it that a
/// completed checkpoint's parts cover every key group.
pub fn part_key_groups(part: &PartRef, m: &Manifest) -> Result<KeyGroupRange> {
    let bad = |why: &str| {
        Error::corrupt(
            "global checkpoint",
            format!(
                "part {part}: {why} ({SUBTASK_PROPERTY}={:?})",
                m.properties.get(SUBTASK_PROPERTY)
            ),
        )
    };
    let label = m
        .properties
        .get(SUBTASK_PROPERTY)
        .ok_or_else(|| bad("no subtask recorded"))?;
    let (i, n) = label
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<u16>().ok()?, n.parse::<u16>().ok()?)))
        .ok_or_else(|| bad("not <subtask>/<parallelism>"))?;
    KeyGroupRange::for_subtask(m.max_parallelism, n, i).map_err(|_| bad("out of range"))
}

/// The parts' chains as one manifest: layer `i` holds every part's layer
/// `i` (no part: one empty layer, an empty state). Native parts (a
/// backend's own files) cannot be laid together.
fn side_by_side(id: CheckpointId, parts: &[Manifest], max_parallelism: u16) -> Result<Manifest> {
    if let Some(m) = parts.iter().find(|m| m.max_parallelism != max_parallelism) {
        return Err(Error::InvalidArgument(format!(
            "global checkpoint {id}: a part was written with max_parallelism {}, this job has {max_parallelism}",
            m.max_parallelism
        )));
    }
    if parts.len() > 1 && parts.iter().any(Manifest::is_native) {
        return Err(Error::InvalidArgument(format!(
            "global checkpoint {id} holds native (RocksDB file) parts, which restore one part into one backend; several parts cover these key groups (a rescale): take full checkpoints in the portable format to rescale"
        )));
    }
    if parts.len() == 1 {
        return Ok(parts[0].clone());
    }
    // Every part's chain has distinct, increasing layer ids up to `id`,
    // so no chain is longer than `id` and these ids are valid.
    let depth = parts.iter().map(|m| m.layers.len()).max().unwrap_or(1);
    let layers = (0..depth)
        .map(|i| {
            let mut artifacts: Vec<_> = parts
                .iter()
                .filter_map(|m| m.layers.get(i))
                .flat_map(|l| l.artifacts.iter().cloned())
                .collect();
            artifacts.sort_by(|a, b| {
                (&a.operator, a.key_groups.start).cmp(&(&b.operator, b.key_groups.start))
            });
            Layer {
                checkpoint_id: CheckpointId(id.0 - (depth - 1 - i) as u64),
                kind: if i == 0 {
                    LayerKind::Full
                } else {
                    LayerKind::Delta
                },
                artifacts,
            }
        })
        .collect();
    Ok(Manifest {
        checkpoint_id: id,
        parent: None,
        kind: if depth > 1 {
            CheckpointKind::Incremental
        } else {
            CheckpointKind::Full
        },
        created_at_ms: parts.iter().map(|m| m.created_at_ms).max().unwrap_or(0),
        wal_position: None,
        max_parallelism,
        layers,
        properties: BTreeMap::new(),
        // Every part records the job's schemas; the view lists each state
        // once.
        schemas: parts
            .iter()
            .flat_map(|m| m.schemas.iter())
            .map(|s| ((s.operator.clone(), s.state.clone()), s.clone()))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect(),
    })
}

fn read_only<T>(what: &str) -> BoxFuture<'static, Result<T>> {
    let e = Error::InvalidArgument(format!(
        "a global checkpoint's view is read-only (asked to {what})"
    ));
    Box::pin(async move { Err(e) })
}

impl CheckpointStore for GlobalView {
    fn name(&self) -> &'static str {
        "global"
    }

    fn put_artifact(&self, _: ArtifactId, _: Bytes) -> BoxFuture<'_, Result<PutOutcome>> {
        read_only("put an artifact")
    }

    fn get_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            match self.owner.get(&id) {
                Some(&i) => self.stores[i].get_artifact(id).await,
                None => Err(Error::NotFound(format!("artifact {id}"))),
            }
        })
    }

    fn has_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            match self.owner.get(&id) {
                Some(&i) => self.stores[i].has_artifact(id).await,
                None => Ok(false),
            }
        })
    }

    fn list_artifacts(&self) -> BoxFuture<'_, Result<Vec<ArtifactId>>> {
        let ids = self.owner.keys().copied().collect();
        Box::pin(async move { Ok(ids) })
    }

    /// Deletes a damaged artifact from the part that holds it (the
    /// recovery engine repairs this way, so the next checkpoint of that
    /// part writes it again).
    fn delete_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.owner.get(&id) {
                Some(&i) => self.stores[i].delete_artifact(id).await,
                None => Ok(()),
            }
        })
    }

    fn commit_manifest(&self, _: CheckpointId, _: Bytes) -> BoxFuture<'_, Result<()>> {
        read_only("commit a manifest")
    }

    fn get_manifest(&self, id: CheckpointId) -> BoxFuture<'_, Result<Bytes>> {
        let found = (id == self.id).then(|| self.manifest.clone());
        Box::pin(async move { found.ok_or_else(|| Error::NotFound(format!("manifest {id}"))) })
    }

    fn list_manifests(&self) -> BoxFuture<'_, Result<Vec<CheckpointId>>> {
        let id = self.id;
        Box::pin(async move { Ok(vec![id]) })
    }

    fn delete_manifest(&self, _: CheckpointId) -> BoxFuture<'_, Result<()>> {
        read_only("delete a manifest")
    }

    fn counters(&self) -> StoreCounters {
        let mut total = StoreCounters::default();
        for s in &self.stores {
            let c = s.counters();
            total.puts += c.puts;
            total.gets += c.gets;
            total.heads += c.heads;
            total.lists += c.lists;
            total.deletes += c.deletes;
            total.bytes_written += c.bytes_written;
            total.bytes_read += c.bytes_read;
        }
        total
    }
}
