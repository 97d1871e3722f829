//! Recovery plans: what a recovery will load, decided before anything is
//! loaded.
//!
//! A [`RecoveryPlan`] names the checkpoint chosen for a [`RecoveryTarget`],
//! its chain of layers, the artifacts to fetch grouped into independent
//! key-group ranges, and the range of the write-ahead log to replay. It
//! prints as text ([`Display`](std::fmt::Display)) and serialises to JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use highwater_core::{
    ArtifactRef, CheckpointId, CheckpointKind, CheckpointStore, Error, ErrorKind, KeyGroupRange,
    Layer, LayerKind, Manifest, Result, load_manifest,
};
use highwater_wal::{Lsn, Wal};
use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::config::VerificationLevel;
use crate::stats::Fallback;

/// What state to recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RecoveryTarget {
    /// The newest usable checkpoint, then the whole write-ahead log after it.
    Latest,
    /// Exactly this checkpoint (older ones only as a fallback, when
    /// `optimistic_recovery` is on); the log is not replayed.
    Checkpoint(CheckpointId),
    /// The state as of this time (ms since the Unix epoch): the newest
    /// checkpoint created at or before it, then the log up to the last
    /// batch whose changes were all made at or before it.
    PointInTime {
        /// The time, in ms since the Unix epoch.
        at_ms: u64,
    },
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("latest"),
            RecoveryTarget::Checkpoint(id) => write!(f, "checkpoint {id}"),
            RecoveryTarget::PointInTime { at_ms } => write!(f, "point in time {at_ms} ms"),
        }
    }
}

/// Which part of the state to recover: key groups (a subtask's range when
/// rescaling) and operators (partial recovery). The default is everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryScope {
    /// Only these key groups; `None` for all.
    pub key_groups: Option<KeyGroupRange>,
    /// Only these operators; `None` for all.
    pub operators: Option<BTreeSet<String>>,
    /// When set, a checkpoint written with another `max_parallelism` is
    /// refused with `InvalidArgument` (key groups would not line up).
    pub max_parallelism: Option<u16>,
}

impl RecoveryScope {
    /// All state.
    pub fn all() -> Self {
        RecoveryScope::default()
    }

    /// The key groups subtask `index` of `parallelism` owns in a job of
    /// `max_parallelism` key groups (the same ranges as
    /// [`KeyGroupRange::for_subtask`]).
    pub fn subtask(max_parallelism: u16, parallelism: u16, index: u16) -> Result<Self> {
        Ok(RecoveryScope {
            key_groups: Some(KeyGroupRange::for_subtask(
                max_parallelism,
                parallelism,
                index,
            )?),
            operators: None,
            max_parallelism: Some(max_parallelism),
        })
    }

    /// Restricts the scope to `range`.
    pub fn with_key_groups(mut self, range: KeyGroupRange) -> Self {
        self.key_groups = Some(range);
        self
    }

    /// Restricts the scope to `operators`.
    pub fn with_operators<S: Into<String>>(
        mut self,
        operators: impl IntoIterator<Item = S>,
    ) -> Self {
        self.operators = Some(operators.into_iter().map(Into::into).collect());
        self
    }

    /// Requires checkpoints of `max_parallelism` key groups.
    pub fn with_max_parallelism(mut self, max_parallelism: u16) -> Self {
        self.max_parallelism = Some(max_parallelism);
        self
    }

    /// True when the scope holds everything.
    pub fn is_everything(&self) -> bool {
        self.key_groups.is_none() && self.operators.is_none()
    }

    /// True when an artifact of `operator` over `range` holds state in scope.
    pub fn wants(&self, operator: &str, range: &KeyGroupRange) -> bool {
        self.operators
            .as_ref()
            .is_none_or(|ops| ops.contains(operator))
            && self
                .key_groups
                .is_none_or(|kg| kg.intersect(range).is_some())
    }
}

/// One layer of the chosen checkpoint's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedLayer {
    /// The checkpoint that wrote the layer.
    pub checkpoint: CheckpointId,
    /// Full state or delta.
    pub kind: LayerKind,
    /// Artifacts of the layer in scope.
    pub artifacts: usize,
    /// Stored bytes of those artifacts.
    pub stored_bytes: u64,
}

/// One artifact to fetch and decode, with the layer it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedArtifact {
    /// Index of the layer in the chain (0 = base).
    pub layer: usize,
    /// Kind of that layer.
    pub kind: LayerKind,
    /// The manifest's reference.
    #[serde(serialize_with = "serialize_ref")]
    pub artifact: ArtifactRef,
}

fn serialize_ref<S: serde::Serializer>(
    r: &ArtifactRef,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    let mut st = s.serialize_struct("ArtifactRef", 6)?;
    st.serialize_field("id", &r.id.to_hex())?;
    st.serialize_field("operator", &r.operator)?;
    st.serialize_field("key_groups", &r.key_groups)?;
    st.serialize_field("entries", &r.entries)?;
    st.serialize_field("logical_bytes", &r.logical_bytes)?;
    st.serialize_field("stored_bytes", &r.stored_bytes)?;
    st.end()
}

/// A unit of parallel work: the artifacts of every layer that cover one
/// operator's key-group range, folded base first and then each delta in
/// order. Ranges are disjoint, so they decode and load independently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RangePlan {
    /// The operator.
    pub operator: String,
    /// The key groups the range covers (the union of its artifacts' ranges).
    pub key_groups: KeyGroupRange,
    /// Its artifacts, base layer first, then each delta in chain order.
    pub artifacts: Vec<PlannedArtifact>,
}

/// The part of the write-ahead log a recovery replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WalRange {
    /// First LSN to replay (the checkpoint's position + 1, or 1).
    pub from_lsn: Lsn,
    /// Last LSN in the log when the plan was made.
    pub last_lsn: Lsn,
    /// Stop before the first batch holding a change made after this time.
    pub until_ms: Option<u64>,
}

/// What a recovery will do. Made by [`Recovery::plan`](crate::Recovery::plan).
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryPlan {
    /// What was asked for.
    pub target: RecoveryTarget,
    /// Which part of the state.
    pub scope: RecoveryScope,
    /// The checkpoint chosen; `None` when the write-ahead log alone holds
    /// the state (no checkpoint qualifies and the log reaches back to its
    /// first record).
    pub checkpoint: Option<CheckpointId>,
    /// When that checkpoint was created (ms since the Unix epoch).
    pub created_at_ms: Option<u64>,
    /// The log position that checkpoint covers.
    pub wal_position: Option<u64>,
    /// Key groups of the job that wrote it.
    pub max_parallelism: Option<u16>,
    /// Its chain, base first.
    pub chain: Vec<PlannedLayer>,
    /// Independent key-group ranges to decode and load.
    pub ranges: Vec<RangePlan>,
    /// Distinct artifacts to fetch.
    pub artifacts_to_fetch: usize,
    /// Stored bytes to fetch (each distinct artifact once).
    pub bytes_to_fetch: u64,
    /// Log records to replay, if a log is replayed.
    pub wal: Option<WalRange>,
    /// Newer checkpoints skipped while planning because their manifests
    /// could not be read.
    pub fallbacks: Vec<Fallback>,
    /// Older checkpoints recovery may fall back to, newest first.
    pub fallback_candidates: Vec<CheckpointId>,
    #[serde(skip)]
    pub(crate) manifest: Option<Arc<Manifest>>,
}

impl RecoveryPlan {
    /// The manifest of the chosen checkpoint.
    pub fn manifest(&self) -> Option<&Arc<Manifest>> {
        self.manifest.as_ref()
    }
}

impl fmt::Display for RecoveryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "recovery plan: target {}", self.target)?;
        if let Some(kg) = self.scope.key_groups {
            writeln!(f, "  key groups: {kg}")?;
        }
        if let Some(ops) = &self.scope.operators {
            let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
            writeln!(f, "  operators: {}", ops.join(", "))?;
        }
        for fb in &self.fallbacks {
            writeln!(f, "  skipped checkpoint {}: {}", fb.checkpoint, fb.reason)?;
        }
        match self.checkpoint {
            Some(id) => {
                writeln!(
                    f,
                    "  checkpoint {id} (created at {} ms, max_parallelism {}, wal position {})",
                    self.created_at_ms.unwrap_or(0),
                    self.max_parallelism.unwrap_or(0),
                    self.wal_position
                        .map_or_else(|| "none".to_string(), |p| p.to_string()),
                )?;
                writeln!(f, "  chain of {} layers:", self.chain.len())?;
                for (i, l) in self.chain.iter().enumerate() {
                    writeln!(
                        f,
                        "    {i}: {:?} layer of checkpoint {}: {} artifacts, {} bytes",
                        l.kind, l.checkpoint, l.artifacts, l.stored_bytes
                    )?;
                }
                writeln!(
                    f,
                    "  {} key-group ranges, {} artifacts to fetch, {} bytes",
                    self.ranges.len(),
                    self.artifacts_to_fetch,
                    self.bytes_to_fetch
                )?;
            }
            None => writeln!(f, "  no checkpoint: the write-ahead log alone")?,
        }
        match &self.wal {
            Some(w) if w.from_lsn > w.last_lsn => {
                writeln!(f, "  wal: nothing after lsn {} to replay", w.last_lsn)?
            }
            Some(w) => {
                write!(f, "  wal: replay lsn {}..={}", w.from_lsn, w.last_lsn)?;
                match w.until_ms {
                    Some(t) => writeln!(f, " up to changes made at or before {t} ms")?,
                    None => writeln!(f)?,
                }
            }
            None => writeln!(f, "  wal: none replayed")?,
        }
        if !self.fallback_candidates.is_empty() {
            let ids: Vec<String> = self
                .fallback_candidates
                .iter()
                .map(ToString::to_string)
                .collect();
            writeln!(f, "  fallback order: {}", ids.join(", "))?;
        }
        Ok(())
    }
}

/// True for errors that make a checkpoint unusable (and so allow a
/// fallback): damaged or missing data.
pub(crate) fn disqualifies(e: &Error) -> bool {
    e.is_corruption() || e.kind() == ErrorKind::NotFound
}

/// Candidate ids for `target`, newest first (time is checked later, on the
/// manifests).
pub(crate) fn candidate_ids(
    mut ids: Vec<CheckpointId>,
    target: RecoveryTarget,
) -> Result<Vec<CheckpointId>> {
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.dedup();
    if let RecoveryTarget::Checkpoint(id) = target {
        if !ids.contains(&id) {
            return Err(Error::NotFound(format!(
                "manifest {id}: no such checkpoint"
            )));
        }
        ids.retain(|c| *c <= id);
    }
    Ok(ids)
}

/// Builds the plan for `manifest`, chosen for `target`.
pub(crate) fn plan_for(
    target: RecoveryTarget,
    scope: &RecoveryScope,
    manifest: Arc<Manifest>,
    wal: Option<&Wal>,
    fallbacks: Vec<Fallback>,
    fallback_candidates: Vec<CheckpointId>,
) -> RecoveryPlan {
    let mut chain = Vec::with_capacity(manifest.layers.len());
    // Per operator: artifacts in scope, to be grouped into disjoint ranges.
    let mut per_op: BTreeMap<&str, Vec<PlannedArtifact>> = BTreeMap::new();
    let mut distinct = BTreeMap::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let mut n = 0;
        let mut bytes = 0;
        for r in &layer.artifacts {
            if !scope.wants(&r.operator, &r.key_groups) {
                continue;
            }
            n += 1;
            bytes = u64::saturating_add(bytes, r.stored_bytes);
            distinct.insert(r.id, r.stored_bytes);
            per_op
                .entry(&r.operator)
                .or_default()
                .push(PlannedArtifact {
                    layer: i,
                    kind: layer.kind,
                    artifact: r.clone(),
                });
        }
        chain.push(PlannedLayer {
            checkpoint: layer.checkpoint_id,
            kind: layer.kind,
            artifacts: n,
            stored_bytes: bytes,
        });
    }
    let mut ranges = Vec::new();
    for (op, mut arts) in per_op {
        // Merge overlapping key-group ranges (the same chunking in every
        // layer gives one range per chunk; different chunkings merge).
        arts.sort_by_key(|a| (a.artifact.key_groups.start, a.layer));
        let mut current: Option<RangePlan> = None;
        for a in arts {
            let kg = a.artifact.key_groups;
            match &mut current {
                Some(c) if kg.start < c.key_groups.end || kg.is_empty() => {
                    c.key_groups.end = c.key_groups.end.max(kg.end);
                    c.artifacts.push(a);
                }
                _ => {
                    if let Some(c) = current.take() {
                        ranges.push(c);
                    }
                    current = Some(RangePlan {
                        operator: op.to_string(),
                        key_groups: kg,
                        artifacts: vec![a],
                    });
                }
            }
        }
        ranges.extend(current);
    }
    for r in &mut ranges {
        // Stable: within a layer the key-group order is kept.
        r.artifacts.sort_by_key(|a| a.layer);
    }
    // Largest first, so the longest folds start early and the tail of the
    // parallel phase is short.
    ranges.sort_by_key(|r| {
        std::cmp::Reverse(
            r.artifacts
                .iter()
                .fold(0u64, |n, a| n.saturating_add(a.artifact.logical_bytes)),
        )
    });
    let until_ms = match target {
        RecoveryTarget::PointInTime { at_ms } => Some(at_ms),
        _ => None,
    };
    let wal_range = match (target, wal, manifest.wal_position) {
        (RecoveryTarget::Checkpoint(_), _, _) => None,
        (_, Some(wal), Some(p)) => Some(WalRange {
            // `Manifest::validate` refuses `u64::MAX`; saturating anyway.
            from_lsn: p.saturating_add(1),
            last_lsn: wal.written_lsn(),
            until_ms,
        }),
        _ => None,
    };
    RecoveryPlan {
        target,
        scope: scope.clone(),
        checkpoint: Some(manifest.checkpoint_id),
        created_at_ms: Some(manifest.created_at_ms),
        wal_position: manifest.wal_position,
        max_parallelism: Some(manifest.max_parallelism),
        chain,
        ranges,
        artifacts_to_fetch: distinct.len(),
        bytes_to_fetch: distinct.values().fold(0, |n, b| u64::saturating_add(n, *b)),
        wal: wal_range,
        fallbacks,
        fallback_candidates,
        manifest: Some(manifest),
    }
}

/// The plan that rebuilds the state from the log alone.
pub(crate) fn log_only_plan(
    target: RecoveryTarget,
    scope: &RecoveryScope,
    wal: &Wal,
    fallbacks: Vec<Fallback>,
) -> RecoveryPlan {
    RecoveryPlan {
        target,
        scope: scope.clone(),
        checkpoint: None,
        created_at_ms: None,
        wal_position: None,
        max_parallelism: None,
        chain: Vec::new(),
        ranges: Vec::new(),
        artifacts_to_fetch: 0,
        bytes_to_fetch: 0,
        wal: Some(WalRange {
            from_lsn: 1,
            last_lsn: wal.written_lsn(),
            until_ms: match target {
                RecoveryTarget::PointInTime { at_ms } => Some(at_ms),
                _ => None,
            },
        }),
        fallbacks,
        fallback_candidates: Vec::new(),
        manifest: None,
    }
}

/// Cross-checks `manifest` at `level` beyond the structure decoding already
/// checked: with [`VerificationLevel::Full`], its chain against its parent
/// manifest (when still stored) and its artifact references. Lower levels
/// check nothing more. Used by recovery and by store verification.
pub async fn verify_manifest(
    store: &dyn CheckpointStore,
    manifest: &Manifest,
    level: VerificationLevel,
) -> Result<()> {
    check_manifest(store, manifest, &RecoveryScope::all(), level).await
}

/// Checks a manifest beyond its own structure (which decoding checked):
/// scope compatibility always, and with [`VerificationLevel::Full`] the
/// chain against the parent manifest and the artifact references.
pub(crate) async fn check_manifest(
    store: &dyn CheckpointStore,
    manifest: &Manifest,
    scope: &RecoveryScope,
    level: VerificationLevel,
) -> Result<()> {
    let id = manifest.checkpoint_id;
    if let Some(mp) = scope.max_parallelism
        && mp != manifest.max_parallelism
    {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {id} was written with max_parallelism={} but this job uses {mp}",
            manifest.max_parallelism
        )));
    }
    if let Some(kg) = scope.key_groups
        && kg.end > manifest.max_parallelism
    {
        return Err(Error::InvalidArgument(format!(
            "key groups {kg} lie outside checkpoint {id}'s max_parallelism={}",
            manifest.max_parallelism
        )));
    }
    if level != VerificationLevel::Full {
        return Ok(());
    }
    let bad = |detail: String| {
        Err(Error::corrupt(
            "manifest",
            format!("checkpoint={id}: {detail}"),
        ))
    };
    match manifest.layers.last() {
        Some(l) if l.checkpoint_id == id => {}
        _ => return bad("the last layer is not the checkpoint's own".into()),
    }
    if manifest.kind == CheckpointKind::Incremental && manifest.parent.is_none() {
        return bad("incremental without a parent".into());
    }
    for (i, layer) in manifest.layers.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for r in &layer.artifacts {
            // A range may hold several chunks (content-defined cuts), but
            // never the same chunk twice.
            if !seen.insert((
                r.operator.as_str(),
                r.key_groups.start,
                r.key_groups.end,
                r.id,
            )) {
                return bad(format!(
                    "layer {i} names artifact {} of operator {} range {} twice",
                    r.id, r.operator, r.key_groups
                ));
            }
            // Every encoded artifact has at least its header; a native file
            // (an empty RocksDB log, say) may be empty.
            if r.stored_bytes == 0 && layer.kind != LayerKind::Native {
                return bad(format!("artifact {} has no stored bytes", r.id));
            }
        }
    }
    if let (CheckpointKind::Incremental, Some(parent)) = (manifest.kind, manifest.parent) {
        // Retention may have removed the parent; a manifest is
        // self-contained, so that is not a fault. A damaged parent is
        // reported by its own recovery, not this one's.
        if let Ok(p) = load_manifest(store, parent).await {
            let n = manifest.layers.len() - 1;
            if !extends_chain(&p.layers, &manifest.layers[..n]) {
                return bad(format!(
                    "its chain does not extend its parent's: parent={parent}"
                ));
            }
        }
    }
    Ok(())
}

/// True when `prefix` (a checkpoint's layers before its own) continues the
/// chain of its parent, whose layers are `parent`: either the same layers,
/// or a merged base that stands for a prefix of the parent's chain (it
/// carries the id of the last layer it absorbed) followed by the rest of
/// the parent's layers.
fn extends_chain(parent: &[Layer], prefix: &[Layer]) -> bool {
    if parent == prefix {
        return true;
    }
    let Some((base, rest)) = prefix.split_first() else {
        return false;
    };
    if base.kind != LayerKind::Full || rest.len() >= parent.len() {
        return false;
    }
    let cut = parent.len() - rest.len();
    parent[cut..] == *rest && parent[cut - 1].checkpoint_id == base.checkpoint_id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(id: u64, kind: LayerKind) -> Layer {
        Layer {
            checkpoint_id: CheckpointId(id),
            kind,
            artifacts: Vec::new(),
        }
    }

    #[test]
    fn a_chain_extends_its_parent_directly_or_through_a_merged_base() {
        let full = |id| layer(id, LayerKind::Full);
        let delta = |id| layer(id, LayerKind::Delta);
        let parent = [full(1), delta(2), delta(3), delta(4)];
        // The same layers.
        assert!(extends_chain(&parent, &parent));
        // A base merged through checkpoint 3, then the parent's delta 4.
        assert!(extends_chain(&parent, &[full(3), delta(4)]));
        // A base merged through the parent itself.
        assert!(extends_chain(&parent, &[full(4)]));
        // A merged base that stands for no layer of the parent.
        assert!(!extends_chain(&parent, &[full(2), delta(4)]));
        // A merged "base" that is a delta.
        assert!(!extends_chain(&parent, &[delta(3), delta(4)]));
        // Layers the parent does not end with.
        assert!(!extends_chain(&parent, &[full(3), delta(5)]));
        assert!(!extends_chain(&parent, &[]));
        assert!(!extends_chain(
            &parent,
            &[full(0), delta(1), delta(2), delta(3), delta(4)]
        ));
    }
}
