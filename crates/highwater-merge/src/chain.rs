//! Chain metadata: what a manifest's layers look like, when a chain is due
//! for merging, and how much storage sharing saves.

use std::collections::{HashMap, HashSet};

use highwater_core::{ArtifactId, CheckpointId, Layer, Manifest};
use serde::Serialize;

use crate::config::{MergeStrategy, MergerConfig};

/// Whether the chain `layers` is due for merging under `config`.
pub fn needs_merge(layers: &[Layer], config: &MergerConfig) -> bool {
    if layers.len() < 2 {
        return false;
    }
    if layers.len() >= config.merge_at_chain_length {
        return true;
    }
    match config.merge_strategy {
        MergeStrategy::ChainLength => false,
        MergeStrategy::DeltaRatio(f) => {
            let stored = |l: &Layer| l.artifacts.iter().map(|a| a.stored_bytes).sum::<u64>();
            let base = stored(&layers[0]);
            let deltas: u64 = layers[1..].iter().map(stored).sum();
            deltas as f64 >= f * base.max(1) as f64
        }
    }
}

/// The chain of one checkpoint, as `highwater inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// The checkpoint whose full layer is the base (for a merged base, the
    /// last checkpoint it absorbed).
    pub base: CheckpointId,
    /// Deltas on top of the base.
    pub depth: usize,
    /// Artifact references of all layers.
    pub references: usize,
    /// Distinct artifacts among them.
    pub distinct_artifacts: usize,
    /// Distinct artifacts also referenced by another checkpoint of the set.
    pub shared_artifacts: usize,
    /// Stored bytes of the references, as if every one were its own file.
    pub referenced_bytes: u64,
    /// Stored bytes of its distinct artifacts.
    pub stored_bytes: u64,
    /// Bytes deduplication saves inside this checkpoint (identical chunks
    /// of several operators, or unchanged chunks repeated across layers).
    pub dedup_saved_bytes: u64,
}

/// Storage over a set of checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreSummary {
    /// One chain per checkpoint, in the order given.
    pub chains: Vec<ChainSummary>,
    /// Distinct artifacts referenced by any checkpoint.
    pub distinct_artifacts: usize,
    /// Stored bytes of every reference of every checkpoint.
    pub referenced_bytes: u64,
    /// Stored bytes of the distinct artifacts.
    pub stored_bytes: u64,
    /// `referenced_bytes - stored_bytes`: what content addressing saves
    /// across checkpoints, layers and operators.
    pub dedup_saved_bytes: u64,
}

/// Summarises the chains of `manifests`.
pub fn summarize(manifests: &[Manifest]) -> StoreSummary {
    let mut owners: HashMap<ArtifactId, HashSet<CheckpointId>> = HashMap::new();
    let mut sizes: HashMap<ArtifactId, u64> = HashMap::new();
    for m in manifests {
        for a in m.artifacts() {
            owners.entry(a.id).or_default().insert(m.checkpoint_id);
            sizes.insert(a.id, a.stored_bytes);
        }
    }
    let chains = manifests
        .iter()
        .map(|m| {
            let mut distinct: HashMap<ArtifactId, u64> = HashMap::new();
            let mut referenced = 0u64;
            let mut references = 0usize;
            for a in m.artifacts() {
                references += 1;
                referenced += a.stored_bytes;
                distinct.insert(a.id, a.stored_bytes);
            }
            let stored: u64 = distinct.values().sum();
            ChainSummary {
                checkpoint: m.checkpoint_id,
                base: m
                    .layers
                    .first()
                    .map(|l| l.checkpoint_id)
                    .unwrap_or_default(),
                depth: m.layers.len().saturating_sub(1),
                references,
                distinct_artifacts: distinct.len(),
                shared_artifacts: distinct
                    .keys()
                    .filter(|id| owners.get(id).is_some_and(|o| o.len() > 1))
                    .count(),
                referenced_bytes: referenced,
                stored_bytes: stored,
                dedup_saved_bytes: referenced - stored,
            }
        })
        .collect::<Vec<_>>();
    let referenced_bytes: u64 = chains.iter().map(|c| c.referenced_bytes).sum();
    let stored_bytes: u64 = sizes.values().sum();
    StoreSummary {
        chains,
        distinct_artifacts: sizes.len(),
        referenced_bytes,
        stored_bytes,
        dedup_saved_bytes: referenced_bytes.saturating_sub(stored_bytes),
    }
}

/// The layers a new manifest on top of `parent` should carry when a merge
/// produced `merged` (a full layer carrying the id of the last layer it
/// absorbed): the merged layer, then the parent's layers after it. `None`
/// when the merge does not apply to this chain (its last absorbed layer is
/// not in the chain, or the chain was rebased since).
pub fn substitute(parent: &[Layer], merged: &Layer) -> Option<Vec<Layer>> {
    let at = parent
        .iter()
        .position(|l| l.checkpoint_id == merged.checkpoint_id)?;
    let mut out = Vec::with_capacity(parent.len() - at);
    out.push(merged.clone());
    out.extend(parent[at + 1..].iter().cloned());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use highwater_core::{ArtifactId, ArtifactRef, Codec, KeyGroupRange, LayerKind};

    fn layer(id: u64, kind: LayerKind, stored: &[u64]) -> Layer {
        Layer {
            checkpoint_id: CheckpointId(id),
            kind,
            artifacts: stored
                .iter()
                .enumerate()
                .map(|(i, s)| ArtifactRef {
                    operator: "op".into(),
                    key_groups: KeyGroupRange { start: 0, end: 8 },
                    id: ArtifactId(u128::from(id) << 32 | i as u128),
                    entries: 1,
                    logical_bytes: *s,
                    stored_bytes: *s,
                    codec: Codec::Raw,
                })
                .collect(),
        }
    }

    #[test]
    fn chain_length_and_delta_ratio_strategies_decide_when_to_merge() {
        let base = layer(1, LayerKind::Full, &[1000]);
        let d = |id, s| layer(id, LayerKind::Delta, &[s]);
        let by_length = MergerConfig {
            merge_at_chain_length: 3,
            ..MergerConfig::default()
        };
        assert!(!needs_merge(std::slice::from_ref(&base), &by_length));
        assert!(!needs_merge(&[base.clone(), d(2, 900)], &by_length));
        assert!(needs_merge(&[base.clone(), d(2, 1), d(3, 1)], &by_length));
        let by_ratio = MergerConfig {
            merge_at_chain_length: 8,
            merge_strategy: MergeStrategy::DeltaRatio(0.5),
            ..MergerConfig::default()
        };
        assert!(!needs_merge(
            &[base.clone(), d(2, 200), d(3, 200)],
            &by_ratio
        ));
        assert!(needs_merge(
            &[base.clone(), d(2, 300), d(3, 200)],
            &by_ratio
        ));
        // The chain bound holds under the ratio strategy too.
        let long: Vec<Layer> = std::iter::once(base.clone())
            .chain((2..9).map(|i| d(i, 1)))
            .collect();
        assert!(needs_merge(&long, &by_ratio));
    }

    #[test]
    fn a_merged_layer_replaces_the_head_of_the_chain_it_absorbed() {
        let chain = vec![
            layer(1, LayerKind::Full, &[10]),
            layer(2, LayerKind::Delta, &[1]),
            layer(3, LayerKind::Delta, &[1]),
            layer(4, LayerKind::Delta, &[1]),
        ];
        let merged = layer(3, LayerKind::Full, &[11]);
        let out = substitute(&chain, &merged).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], merged);
        assert_eq!(out[1].checkpoint_id, CheckpointId(4));
        // Another chain (rebased on a full checkpoint 5) does not take it.
        assert!(substitute(&[layer(5, LayerKind::Full, &[10])], &merged).is_none());
    }

    #[test]
    fn summaries_count_shared_artifacts_and_dedup_savings() {
        let mk = |id: u64, layers: Vec<Layer>| Manifest {
            checkpoint_id: CheckpointId(id),
            parent: None,
            kind: if layers.len() == 1 {
                highwater_core::CheckpointKind::Full
            } else {
                highwater_core::CheckpointKind::Incremental
            },
            created_at_ms: 0,
            wal_position: None,
            max_parallelism: 128,
            layers,
            properties: Default::default(),
            schemas: Vec::new(),
        };
        let base = layer(1, LayerKind::Full, &[100, 50]);
        let mut twin = base.artifacts[0].clone();
        twin.operator = "other".into();
        let mut with_twin = base.clone();
        with_twin.artifacts.push(twin);
        let m1 = mk(1, vec![with_twin.clone()]);
        let m2 = mk(2, vec![with_twin, layer(2, LayerKind::Delta, &[7])]);
        let s = summarize(&[m1, m2]);
        assert_eq!(
            s.chains[0].dedup_saved_bytes, 100,
            "the twin is stored once"
        );
        assert_eq!(s.chains[0].shared_artifacts, 2);
        assert_eq!(s.chains[1].depth, 1);
        assert_eq!(s.distinct_artifacts, 3);
        assert_eq!(s.stored_bytes, 157);
        assert_eq!(s.referenced_bytes, 250 + 257);
        assert_eq!(s.dedup_saved_bytes, 250 + 257 - 157);
    }
}
