//! Merging a chain (base + deltas) into one new base layer.
//!
//! The artifacts of every layer are grouped per operator into *clusters*:
//! maximal sets whose key-group ranges overlap. A key lives in exactly one
//! cluster, so clusters merge independently and in parallel. A cluster no
//! delta touches keeps its base artifacts as they are (nothing is read or
//! written); every other cluster is read, folded and written again as
//! content-defined chunks, so chunks whose records did not change get
//! their old content address back and are not stored twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use highwater_core::ttl::{Envelope, is_expired_value};
use highwater_core::{
    ArtifactKind, ArtifactRef, DecodeLimits, Error, KeyGroupRange, Layer, LayerKind, Result,
    visit_checked,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::config::{ConflictResolution, MergerConfig};
use crate::encode::{Arena, Produced, encode_group, key_form_for, sort_refs};

/// What a merge needs besides its input.
#[derive(Debug, Clone)]
pub struct MergeParams {
    /// Chunking, compression, deduplication and conflict settings.
    pub merger: MergerConfig,
    /// Values expired at this time are dropped from the new base.
    pub now_ms: u64,
    /// Limits of artifact decoding.
    pub limits: DecodeLimits,
}

/// Statistics of one merge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MergeStats {
    /// Layers folded.
    pub layers_in: usize,
    /// Clusters (operator × overlapping key-group ranges).
    pub clusters: usize,
    /// Clusters no delta touched, whose base artifacts were kept.
    pub clusters_reused: usize,
    /// Artifacts read.
    pub artifacts_read: usize,
    /// Artifacts of the new base produced by encoding (some may already be
    /// stored: unchanged chunks).
    pub artifacts_encoded: usize,
    /// Artifacts of the new base taken over from the old base untouched.
    pub artifacts_kept: usize,
    /// Logical (record) bytes of the artifacts read.
    pub logical_bytes_read: u64,
    /// Logical bytes of the new base.
    pub logical_bytes_out: u64,
    /// Stored bytes of the new base.
    pub stored_bytes_out: u64,
    /// Records of the new base.
    pub records_out: u64,
    /// Keys written by more than one delta.
    pub conflicts: u64,
    /// Expired values dropped.
    pub expired_dropped: u64,
}

/// A merged base layer and how it was made.
#[derive(Debug, Clone)]
pub struct MergeOutcome {
    /// The new base: a full layer carrying the checkpoint id of the last
    /// layer it absorbed.
    pub layer: Layer,
    /// Statistics.
    pub stats: MergeStats,
}

struct Cluster<'a> {
    operator: &'a str,
    range: KeyGroupRange,
    /// (layer index, reference), in layer order.
    members: Vec<(usize, &'a ArtifactRef)>,
}

fn clusters(layers: &[Layer]) -> Vec<Cluster<'_>> {
    let mut by_op: HashMap<&str, Vec<(usize, &ArtifactRef)>> = HashMap::new();
    for (i, l) in layers.iter().enumerate() {
        for a in &l.artifacts {
            by_op.entry(a.operator.as_str()).or_default().push((i, a));
        }
    }
    let mut out = Vec::new();
    for (operator, mut refs) in by_op {
        refs.sort_by_key(|(i, a)| (a.key_groups.start, *i));
        let mut current: Option<Cluster<'_>> = None;
        for (i, a) in refs {
            match &mut current {
                Some(c) if a.key_groups.start < c.range.end => {
                    c.range.end = c.range.end.max(a.key_groups.end);
                    c.members.push((i, a));
                }
                _ => {
                    if let Some(c) = current.take() {
                        out.push(c);
                    }
                    current = Some(Cluster {
                        operator,
                        range: a.key_groups,
                        members: vec![(i, a)],
                    });
                }
            }
        }
        out.extend(current);
    }
    for c in &mut out {
        c.members.sort_by_key(|(i, _)| *i);
    }
    out
}

/// Checks that the layers form a chain a merge can fold.
pub fn check_chain(layers: &[Layer]) -> Result<()> {
    let Some(first) = layers.first() else {
        return Err(Error::InvalidArgument(
            "a merge needs at least one layer".into(),
        ));
    };
    if first.kind != LayerKind::Full {
        return Err(Error::InvalidArgument(format!(
            "a chain starts with a full layer: checkpoint={}",
            first.checkpoint_id
        )));
    }
    for (i, l) in layers.iter().enumerate().skip(1) {
        if l.kind != LayerKind::Delta || l.checkpoint_id <= layers[i - 1].checkpoint_id {
            return Err(Error::InvalidArgument(format!(
                "layer {i} of the chain is not a later delta: checkpoint={}",
                l.checkpoint_id
            )));
        }
    }
    Ok(())
}

/// One delta write kept while folding: value (None = delete) and layer.
type Write = (Option<Vec<u8>>, usize);

fn timestamp(v: &Option<Vec<u8>>) -> Option<u64> {
    v.as_deref()
        .and_then(|v| Envelope::decode(v).ok())
        .and_then(|e| e.expires_at_ms)
}

/// Whether `new` (from a later layer than `old`) replaces `old`.
fn replaces(rule: ConflictResolution, old: &Write, new: &Write) -> bool {
    match rule {
        ConflictResolution::LastWriteWins => true,
        ConflictResolution::FirstWriteWins => false,
        ConflictResolution::TimestampPriority => {
            // Option orders None below every Some; ties go to the later layer.
            timestamp(&new.0) >= timestamp(&old.0)
        }
    }
}

/// Folds `layers` (a full base, then deltas in order) into one full layer.
///
/// `fetch` returns the stored bytes of the artifacts it is given, in that
/// order: the inputs of one cluster at a time, so a store can serve them
/// concurrently. Checking them against their content addresses is the
/// fetcher's ([`merge_into_store`](crate::merge_into_store) fetches through
/// [`io::fetch_all_verified`](crate::io::fetch_all_verified), which also
/// repairs a damaged stored copy); decoding here checks every artifact's
/// own header and payload checksums. `sink` receives every artifact of the new base that
/// was encoded (it may already be stored: the caller's put decides);
/// `progress` is called with the logical bytes of each finished cluster.
/// Runs on the current rayon pool, one cluster per task.
pub fn merge_layers(
    layers: &[Layer],
    params: &MergeParams,
    fetch: &Fetch<'_>,
    sink: &(dyn Fn(Produced) -> Result<()> + Sync),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<MergeOutcome> {
    check_chain(layers)?;
    let clusters = clusters(layers);
    let conflicts = AtomicU64::new(0);
    let expired = AtomicU64::new(0);
    let read = AtomicU64::new(0);
    let read_bytes = AtomicU64::new(0);
    let results: Vec<(Vec<ArtifactRef>, bool)> = clusters
        .par_iter()
        .map(|c| {
            let logical: u64 = c.members.iter().map(|(_, a)| a.logical_bytes).sum();
            if c.members.iter().all(|(i, _)| *i == 0) {
                progress(logical);
                return Ok((c.members.iter().map(|(_, a)| (*a).clone()).collect(), true));
            }
            let refs = merge_cluster(layers, c, params, fetch, sink, &conflicts, &expired)?;
            read.fetch_add(c.members.len() as u64, Ordering::Relaxed);
            read_bytes.fetch_add(logical, Ordering::Relaxed);
            progress(logical);
            Ok((refs, false))
        })
        .collect::<Result<_>>()?;
    let mut stats = MergeStats {
        layers_in: layers.len(),
        clusters: clusters.len(),
        artifacts_read: read.into_inner() as usize,
        logical_bytes_read: read_bytes.into_inner(),
        conflicts: conflicts.into_inner(),
        expired_dropped: expired.into_inner(),
        ..MergeStats::default()
    };
    let mut artifacts = Vec::new();
    for (refs, reused) in results {
        if reused {
            stats.clusters_reused += 1;
            stats.artifacts_kept += refs.len();
        } else {
            stats.artifacts_encoded += refs.len();
        }
        artifacts.extend(refs);
    }
    sort_refs(&mut artifacts);
    stats.logical_bytes_out = artifacts.iter().map(|a| a.logical_bytes).sum();
    stats.stored_bytes_out = artifacts.iter().map(|a| a.stored_bytes).sum();
    stats.records_out = artifacts.iter().map(|a| a.entries).sum();
    let last = layers.last().map(|l| l.checkpoint_id).unwrap_or_default();
    Ok(MergeOutcome {
        layer: Layer {
            checkpoint_id: last,
            kind: LayerKind::Full,
            artifacts,
        },
        stats,
    })
}

/// How [`merge_layers`] reads its inputs: the stored bytes of each
/// artifact given, in order.
pub type Fetch<'a> = dyn Fn(&[&ArtifactRef]) -> Result<Vec<Bytes>> + Sync + 'a;

fn merge_cluster(
    layers: &[Layer],
    c: &Cluster<'_>,
    params: &MergeParams,
    fetch: &Fetch<'_>,
    sink: &(dyn Fn(Produced) -> Result<()> + Sync),
    conflicts: &AtomicU64,
    expired: &AtomicU64,
) -> Result<Vec<ArtifactRef>> {
    let form = key_form_for(c.operator, &params.merger);
    let rule = params.merger.conflict_resolution;
    let mut base = Arena::default();
    let mut deltas: HashMap<Vec<u8>, Write> = HashMap::new();
    let mut n_conflicts = 0u64;
    // Each base artifact is a sorted run of records; the chunks of one
    // range partition its key space, so the runs ordered by first key are
    // the whole base in key order.
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    let refs: Vec<&ArtifactRef> = c.members.iter().map(|(_, r)| *r).collect();
    let inputs = fetch(&refs)?;
    if inputs.len() != refs.len() {
        return Err(Error::Internal(format!(
            "merge fetch returned {} artifacts for {} asked",
            inputs.len(),
            refs.len()
        )));
    }
    for (&(i, r), bytes) in c.members.iter().zip(inputs) {
        let layer = &layers[i];
        if i == 0 {
            base.data.reserve(r.logical_bytes as usize);
            let first = base.recs.len();
            visit_checked(
                layer.checkpoint_id,
                layer.kind,
                r,
                &bytes,
                &params.limits,
                form,
                &mut |k, v| {
                    base.push_parts(&[k], v);
                    Ok(())
                },
            )?;
            runs.push(first..base.recs.len());
        } else {
            visit_checked(
                layer.checkpoint_id,
                layer.kind,
                r,
                &bytes,
                &params.limits,
                form,
                &mut |k, v| {
                    let new: Write = (v.map(<[u8]>::to_vec), i);
                    match deltas.get_mut(k) {
                        Some(old) => {
                            // Several artifacts of one layer never hold the
                            // same key; a repeat is a conflict between layers.
                            if old.1 != i {
                                n_conflicts += 1;
                            }
                            if replaces(rule, old, &new) {
                                *old = new;
                            }
                        }
                        None => {
                            deltas.insert(k.to_vec(), new);
                        }
                    }
                    Ok(())
                },
            )?;
        }
    }
    conflicts.fetch_add(n_conflicts, Ordering::Relaxed);
    runs.retain(|r| !r.is_empty());
    runs.sort_by(|a, b| base.get(a.start).0.cmp(base.get(b.start).0));
    let mut order: Vec<usize> = runs.into_iter().flatten().collect();
    // Sort only if the runs overlap (artifacts chunked by another writer);
    // strictly increasing keys are the normal case.
    if !order
        .windows(2)
        .all(|w| base.get(w[0]).0 < base.get(w[1]).0)
    {
        order.sort_unstable_by(|a, b| base.get(*a).0.cmp(base.get(*b).0));
    }
    let mut delta: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
        deltas.iter().map(|(k, (v, _))| (k, v)).collect();
    delta.sort_unstable_by(|a, b| a.0.cmp(b.0));

    // Two-pointer merge of the sorted base with the sorted folded deltas.
    let now = params.now_ms;
    let mut out: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(order.len() + delta.len());
    let mut dropped = 0u64;
    fn keep<'a>(
        out: &mut Vec<(&'a [u8], Option<&'a [u8]>)>,
        dropped: &mut u64,
        now: u64,
        k: &'a [u8],
        v: &'a [u8],
    ) {
        if is_expired_value(v, now) {
            *dropped += 1;
        } else {
            out.push((k, Some(v)));
        }
    }
    let (mut bi, mut di) = (0, 0);
    while bi < order.len() || di < delta.len() {
        let b = order.get(bi).map(|&i| base.get(i));
        let d = delta.get(di);
        match (b, d) {
            (Some((bk, bv)), Some((dk, dv))) => match bk.cmp(dk.as_slice()) {
                std::cmp::Ordering::Less => {
                    keep(&mut out, &mut dropped, now, bk, bv.unwrap_or_default());
                    bi += 1;
                }
                std::cmp::Ordering::Greater => {
                    if let Some(v) = dv {
                        keep(&mut out, &mut dropped, now, dk, v);
                    }
                    di += 1;
                }
                std::cmp::Ordering::Equal => {
                    if let Some(v) = dv {
                        keep(&mut out, &mut dropped, now, dk, v);
                    }
                    bi += 1;
                    di += 1;
                }
            },
            (Some((bk, bv)), None) => {
                keep(&mut out, &mut dropped, now, bk, bv.unwrap_or_default());
                bi += 1;
            }
            (None, Some((dk, dv))) => {
                if let Some(v) = dv {
                    keep(&mut out, &mut dropped, now, dk, v);
                }
                di += 1;
            }
            (None, None) => break,
        }
    }
    expired.fetch_add(dropped, Ordering::Relaxed);
    encode_group(
        c.operator,
        c.range,
        ArtifactKind::Entries,
        &out,
        &params.merger,
        sink,
    )
}
