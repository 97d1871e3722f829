//! Turning a backend snapshot into content-addressed artifacts.
//!
//! Two parallel phases on the encode pool: first every snapshot partition is
//! scanned into its own buckets, one per (operator, key-group chunk),
//! copying the entries into an arena per bucket; then the pieces of each
//! (operator, chunk) are sorted by key (by reference, without moving the
//! data again), written as records, compressed and handed to the uploader. Sorting makes
//! the encoding a function of the content alone, so an unchanged chunk gets
//! the same id as before and is not uploaded again.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use highwater_core::key::{key_group_of, operator_of};
use highwater_core::ttl::is_expired_value;
use highwater_core::{
    ArtifactKind, ArtifactRef, EncodeOptions, Error, KeyGroupRange, RecordWriter, Result,
    SnapshotKind, StateSnapshot,
};
use rayon::prelude::*;

/// Operator name used for keys that are not well-formed state keys.
pub(crate) const RAW_OPERATOR: &str = "_raw";

/// What the encoder needs to know.
#[derive(Debug, Clone)]
pub(crate) struct EncodeParams {
    pub max_parallelism: u16,
    pub key_groups_per_artifact: u16,
    pub options: EncodeOptions,
    pub now_ms: u64,
}

/// One encoded artifact, ready for upload.
#[derive(Debug)]
pub(crate) struct Produced {
    pub reference: ArtifactRef,
    pub bytes: Bytes,
}

/// Totals of one encoding pass.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EncodeTotals {
    pub entries: u64,
    pub expired_dropped: u64,
}

/// Entries of one bucket of one partition: keys and values copied into one
/// arena, so a partition scan allocates a handful of buffers, not one per
/// entry.
#[derive(Default)]
struct Bucket {
    data: Vec<u8>,
    /// (key range, value range or None for a delete) into `data`.
    recs: Vec<(Range<usize>, Option<Range<usize>>)>,
}

impl Bucket {
    fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        let k0 = self.data.len();
        self.data.extend_from_slice(key);
        let k = k0..self.data.len();
        let v = value.map(|v| {
            let v0 = self.data.len();
            self.data.extend_from_slice(v);
            v0..self.data.len()
        });
        self.recs.push((k, v));
    }
}

/// The buckets of one partition: per operator (few, so a linear search
/// beats hashing), one bucket per key-group chunk.
type PartitionBuckets = Vec<(String, Vec<Bucket>)>;

fn scan_partition(
    snapshot: &dyn StateSnapshot,
    partition: usize,
    params: &EncodeParams,
) -> Result<(PartitionBuckets, u64)> {
    let kind = snapshot.kind();
    let chunks = usize::from(
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
        let operator = operator_of(key).unwrap_or(RAW_OPERATOR);
        let chunk = usize::from(kg.0 / params.key_groups_per_artifact);
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
                    (0..chunks).map(|_| Bucket::default()).collect(),
                ));
                buckets.len() - 1
            }
        };
        buckets[at].1[chunk].push(key, value);
        Ok(())
    })?;
    Ok((buckets, dropped))
}

/// Encodes `snapshot` on the current rayon pool, calling `sink` for every
/// artifact as soon as it is ready. Returns the references, sorted by
/// operator and key-group range.
pub(crate) fn encode_snapshot(
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

    // Group the pieces of each (operator, chunk) across partitions; the
    // data is not moved again.
    let mut groups: HashMap<(String, u16), Vec<Bucket>> = HashMap::new();
    for (buckets, _) in scanned {
        for (operator, chunks) in buckets {
            for (chunk, bucket) in chunks.into_iter().enumerate() {
                if !bucket.recs.is_empty() {
                    groups
                        .entry((operator.clone(), chunk as u16))
                        .or_default()
                        .push(bucket);
                }
            }
        }
    }

    // Phase 2: per group, sort references to the records by key, write the
    // record stream, compress and hand the artifact to the uploader.
    let mut refs: Vec<ArtifactRef> = groups
        .into_par_iter()
        .map(|((operator, chunk), pieces)| {
            let n: usize = pieces.iter().map(|b| b.recs.len()).sum();
            let bytes: usize = pieces.iter().map(|b| b.data.len()).sum();
            let mut recs: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(n);
            for b in &pieces {
                recs.extend(
                    b.recs
                        .iter()
                        .map(|(k, v)| (&b.data[k.clone()], v.clone().map(|v| &b.data[v]))),
                );
            }
            recs.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut w = RecordWriter::new(artifact_kind, bytes + n * 4);
            for (k, v) in &recs {
                w.push(k, *v)?;
            }
            drop(recs);
            drop(pieces);
            let enc = w.finish(&params.options)?;
            let start = chunk * params.key_groups_per_artifact;
            let end = start
                .saturating_add(params.key_groups_per_artifact)
                .min(params.max_parallelism);
            let reference = ArtifactRef {
                operator,
                key_groups: KeyGroupRange::new(start, end)?,
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
        .collect::<Result<_>>()?;
    refs.sort_by(|a, b| {
        (a.operator.as_str(), a.key_groups).cmp(&(b.operator.as_str(), b.key_groups))
    });
    let entries = refs.iter().map(|r| r.entries).sum();
    Ok((
        refs,
        EncodeTotals {
            entries,
            expired_dropped: dropped,
        },
    ))
}
