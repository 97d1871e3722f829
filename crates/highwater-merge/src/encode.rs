//! Encoding a backend snapshot (all state, or the changes since the last
//! checkpoint) into content-addressed artifacts: one group per operator and
//! key-group range, each cut into content-defined chunks.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use highwater_core::key::{key_group_of, split_operator};
use highwater_core::ttl::is_expired_value;
use highwater_core::{
    ArtifactKind, ArtifactRef, EncodeOptions, Error, KeyForm, KeyGroupRange, RecordWriter, Result,
    SnapshotKind, StateSnapshot,
};
use rayon::prelude::*;

use crate::config::{ChunkConfig, MergerConfig};

/// Operator name of keys that are not well-formed state keys; their
/// artifacts keep absolute keys.
pub const RAW_OPERATOR: &str = "_raw";

/// What the encoder needs to know.
#[derive(Debug, Clone)]
pub struct EncodeParams {
    /// Key groups of the job.
    pub max_parallelism: u16,
    /// Key groups per artifact group.
    pub key_groups_per_artifact: u16,
    /// Chunking, compression and deduplication settings.
    pub merger: MergerConfig,
    /// Entries expired at this time are dropped (full) or deleted (deltas).
    pub now_ms: u64,
}

/// One encoded artifact, ready for upload.
#[derive(Debug, Clone)]
pub struct Produced {
    /// The manifest's reference to it.
    pub reference: ArtifactRef,
    /// The encoded bytes.
    pub bytes: Bytes,
}

/// Totals of one encoding pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EncodeTotals {
    /// Records written.
    pub entries: u64,
    /// Expired entries dropped (full) or written as deletes (deltas).
    pub expired_dropped: u64,
}

/// The key form artifacts of `operator` use under `merger`.
pub fn key_form_for(operator: &str, merger: &MergerConfig) -> KeyForm {
    if merger.enable_deduplication && operator != RAW_OPERATOR {
        KeyForm::OperatorRelative
    } else {
        KeyForm::Absolute
    }
}

/// Entries of one bucket of one partition: keys (already in stored form)
/// and values copied into one arena, so a partition scan allocates a
/// handful of buffers, not one per entry.
#[derive(Default)]
pub(crate) struct Arena {
    pub data: Vec<u8>,
    /// (key range, value range or None for a delete) into `data`.
    pub recs: Vec<(Range<usize>, Option<Range<usize>>)>,
}

impl Arena {
    pub fn push_parts(&mut self, key_parts: &[&[u8]], value: Option<&[u8]>) {
        let k0 = self.data.len();
        for p in key_parts {
            self.data.extend_from_slice(p);
        }
        let k = k0..self.data.len();
        let v = value.map(|v| {
            let v0 = self.data.len();
            self.data.extend_from_slice(v);
            v0..self.data.len()
        });
        self.recs.push((k, v));
    }

    pub fn get(&self, i: usize) -> (&[u8], Option<&[u8]>) {
        let (k, v) = &self.recs[i];
        (&self.data[k.clone()], v.clone().map(|v| &self.data[v]))
    }
}

/// The buckets of one partition: per operator (few, so a linear search
/// beats hashing), one bucket per key-group group.
type PartitionBuckets = Vec<(String, Vec<Arena>)>;

fn scan_partition(
    snapshot: &dyn StateSnapshot,
    partition: usize,
    params: &EncodeParams,
) -> Result<(PartitionBuckets, u64)> {
    let kind = snapshot.kind();
    let groups = usize::from(
        params
            .max_parallelism
            .div_ceil(params.key_groups_per_artifact),
    );
    let mut buckets: PartitionBuckets = Vec::new();
    let mut dropped = 0u64;
    snapshot.for_each_in_partition(partition, &mut |key, value| {
        let kg = key_group_of(key)?;
        if kg.0 >= params.max_parallelism {
            return Err(Error::InvalidArgument(format!(
                "state key outside the job's key groups: key_group={} max_parallelism={}",
                kg.0, params.max_parallelism
            )));
        }
        // A key without an operator (raw bytes) is stored as it is.
        let (operator, relative) = match split_operator(key) {
            Ok((head, operator, rest)) => (operator, Some([head, rest])),
            Err(_) => (RAW_OPERATOR, None),
        };
        let group = usize::from(kg.0 / params.key_groups_per_artifact);
        let value = match value {
            Some(v) if is_expired_value(v, params.now_ms) => {
                dropped += 1;
                match kind {
                    // Expired entries are dropped from full snapshots …
                    SnapshotKind::Full => return Ok(()),
                    // … and recorded as deletes in deltas, so an older
                    // layer's value cannot resurface on restore.
                    SnapshotKind::Changes => None,
                }
            }
            other => other,
        };
        let at = match buckets.iter().position(|(op, _)| op == operator) {
            Some(at) => at,
            None => {
                buckets.push((
                    operator.to_string(),
                    (0..groups).map(|_| Arena::default()).collect(),
                ));
                buckets.len() - 1
            }
        };
        let arena = &mut buckets[at].1[group];
        match (key_form_for(operator, &params.merger), relative) {
            // Key group, then everything after the operator name.
            (KeyForm::OperatorRelative, Some(parts)) => arena.push_parts(&parts, value),
            _ => arena.push_parts(&[key], value),
        }
        Ok(())
    })?;
    Ok((buckets, dropped))
}

/// Encodes `snapshot` on the current rayon pool, calling `sink` for every
/// artifact as soon as it is ready. Returns the references, sorted by
/// operator, key-group range and key.
pub fn encode_snapshot(
    snapshot: &dyn StateSnapshot,
    params: &EncodeParams,
    sink: &(dyn Fn(Produced) -> Result<()> + Sync),
) -> Result<(Vec<ArtifactRef>, EncodeTotals)> {
    let artifact_kind = match snapshot.kind() {
        SnapshotKind::Full => ArtifactKind::Entries,
        SnapshotKind::Changes => ArtifactKind::Delta,
    };
    // Phase 1: scan every partition into its own buckets, in parallel.
    let scanned: Vec<(PartitionBuckets, u64)> = (0..snapshot.partitions())
        .into_par_iter()
        .map(|p| scan_partition(snapshot, p, params))
        .collect::<Result<_>>()?;
    let dropped = scanned.iter().map(|(_, d)| d).sum();

    // Group the pieces of each (operator, group) across partitions; the
    // data is not moved again.
    let mut groups: HashMap<(String, u16), Vec<Arena>> = HashMap::new();
    for (buckets, _) in scanned {
        for (operator, arenas) in buckets {
            for (group, arena) in arenas.into_iter().enumerate() {
                if !arena.recs.is_empty() {
                    groups
                        .entry((operator.clone(), group as u16))
                        .or_default()
                        .push(arena);
                }
            }
        }
    }

    // Phase 2: per group, sort references to the records by key, cut them
    // into chunks and encode each chunk.
    let per_group: Vec<Vec<ArtifactRef>> = groups
        .into_par_iter()
        .map(|((operator, group), pieces)| {
            let n: usize = pieces.iter().map(|b| b.recs.len()).sum();
            let mut recs: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(n);
            for b in &pieces {
                recs.extend((0..b.recs.len()).map(|i| b.get(i)));
            }
            recs.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let start = group * params.key_groups_per_artifact;
            let end = start
                .saturating_add(params.key_groups_per_artifact)
                .min(params.max_parallelism);
            let range = KeyGroupRange::new(start, end)?;
            encode_group(&operator, range, artifact_kind, &recs, &params.merger, sink)
        })
        .collect::<Result<_>>()?;
    let mut refs: Vec<ArtifactRef> = per_group.into_iter().flatten().collect();
    sort_refs(&mut refs);
    let entries = refs.iter().map(|r| r.entries).sum();
    Ok((
        refs,
        EncodeTotals {
            entries,
            expired_dropped: dropped,
        },
    ))
}

/// Sorts references the way manifests list them: by operator, key-group
/// range, then (chunks of one group) by content address, which is stable.
pub(crate) fn sort_refs(refs: &mut [ArtifactRef]) {
    refs.sort_by(|a, b| {
        (a.operator.as_str(), a.key_groups, a.id).cmp(&(b.operator.as_str(), b.key_groups, b.id))
    });
}

/// Where the content-defined chunker cuts `recs` (record bytes as the
/// writer will store them): the end index of every chunk.
pub fn chunk_ends(recs: &[(&[u8], Option<&[u8]>)], chunking: &ChunkConfig) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut size = 0usize;
    let target = chunking.target_bytes.max(1) as u64;
    for (i, (k, v)) in recs.iter().enumerate() {
        // Key, value and about three bytes of framing.
        let len = k.len() + v.map_or(0, <[u8]>::len) + 3;
        size += len;
        let cut = size >= chunking.max_bytes
            || (size >= chunking.min_bytes && xxhash_rust::xxh3::xxh3_64(k) % target < len as u64);
        if cut {
            ends.push(i + 1);
            size = 0;
        }
    }
    if ends.last() != Some(&recs.len()) && !recs.is_empty() {
        ends.push(recs.len());
    }
    ends
}

/// Encodes the sorted records of one (operator, key-group range) group,
/// keys already in the stored form for `operator`, as content-defined
/// chunks in parallel; `sink` gets each artifact. Returns the references
/// in key order.
pub fn encode_group(
    operator: &str,
    range: KeyGroupRange,
    kind: ArtifactKind,
    recs: &[(&[u8], Option<&[u8]>)],
    merger: &MergerConfig,
    sink: &(dyn Fn(Produced) -> Result<()> + Sync),
) -> Result<Vec<ArtifactRef>> {
    let ends = chunk_ends(recs, &merger.chunking);
    let options: EncodeOptions = match kind {
        ArtifactKind::Entries => merger.base_options(),
        ArtifactKind::Delta => merger.delta_options(),
    };
    let form = key_form_for(operator, merger);
    ends.par_iter()
        .enumerate()
        .map(|(i, &end)| {
            let begin = if i == 0 { 0 } else { ends[i - 1] };
            let chunk = &recs[begin..end];
            let bytes: usize = chunk
                .iter()
                .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + 8)
                .sum();
            let mut w = RecordWriter::with_form(kind, form, bytes);
            for (k, v) in chunk {
                w.push(k, *v)?;
            }
            let enc = w.finish(&options)?;
            let reference = ArtifactRef {
                operator: operator.to_string(),
                key_groups: range,
                id: enc.id(),
                entries: enc.entries,
                logical_bytes: enc.raw_len,
                stored_bytes: enc.bytes.len() as u64,
                codec: enc.codec,
            };
            sink(Produced {
                reference: reference.clone(),
                bytes: Bytes::from(enc.bytes),
            })?;
            Ok(reference)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize, value_len: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| {
                (
                    format!("\x00\x01key-{i:08}").into_bytes(),
                    vec![(i % 251) as u8; value_len],
                )
            })
            .collect()
    }

    fn ends_of(recs: &[(Vec<u8>, Vec<u8>)], c: &ChunkConfig) -> Vec<usize> {
        let r: Vec<(&[u8], Option<&[u8]>)> = recs
            .iter()
            .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
            .collect();
        chunk_ends(&r, c)
    }

    #[test]
    fn chunks_respect_min_and_max_sizes() {
        let c = ChunkConfig {
            min_bytes: 4_000,
            target_bytes: 8_000,
            max_bytes: 20_000,
        };
        let recs = records(5_000, 100);
        let ends = ends_of(&recs, &c);
        assert!(ends.len() > 10, "{} chunks", ends.len());
        let mut begin = 0;
        for (i, &end) in ends.iter().enumerate() {
            let size: usize = recs[begin..end]
                .iter()
                .map(|(k, v)| k.len() + v.len() + 3)
                .sum();
            assert!(size <= c.max_bytes + 200, "chunk {i}: {size}");
            if i + 1 < ends.len() {
                assert!(size >= c.min_bytes, "chunk {i}: {size}");
            }
            begin = end;
        }
    }

    #[test]
    fn an_insertion_moves_only_nearby_chunk_boundaries() {
        let c = ChunkConfig {
            min_bytes: 2_000,
            target_bytes: 6_000,
            max_bytes: 50_000,
        };
        let recs = records(10_000, 60);
        let before = ends_of(&recs, &c);
        let mut inserted = recs.clone();
        inserted.insert(100, (b"\x00\x01key-00000099x".to_vec(), vec![9; 60]));
        let after = ends_of(&inserted, &c);
        // Boundaries are identified by the key that ends the chunk.
        let keys = |r: &[(Vec<u8>, Vec<u8>)], e: &[usize]| -> std::collections::BTreeSet<Vec<u8>> {
            e.iter().map(|&i| r[i - 1].0.clone()).collect()
        };
        let kb = keys(&recs, &before);
        let ka = keys(&inserted, &after);
        let common = kb.intersection(&ka).count();
        assert!(
            common + 2 >= kb.len(),
            "only boundaries near the insertion may move: before={} common={common}",
            kb.len()
        );
    }
}
