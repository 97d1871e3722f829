//! Turning a backend snapshot into content-addressed artifacts.
//!
//! Two parallel phases on the encode pool: first every snapshot partition is
//! scanned into buckets, one per (operator, key-group chunk), copying the
//! entries into one arena per bucket; then every bucket is sorted by key,
//! written as records, compressed and handed to the uploader. Sorting makes
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

/// Entries of one bucket: keys and values copied into one arena.
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

    fn append(&mut self, mut other: Bucket) {
        let shift = self.data.len();
        self.data.append(&mut other.data);
        let moved = |r: Range<usize>| r.start + shift..r.end + shift;
        self.recs.extend(
            other
                .recs
                .into_iter()
                .map(|(k, v)| (moved(k), v.map(moved))),
        );
    }
}

/// Buckets by operator, then by key-group chunk. Two levels so a lookup by
/// `&str` needs no allocation per entry.
type Buckets = HashMap<String, HashMap<u16, Bucket>>;

fn merge(mut a: Buckets, b: Buckets) -> Buckets {
    for (op, chunks) in b {
        let into = a.entry(op).or_default();
        for (chunk, v) in chunks {
            match into.get_mut(&chunk) {
                Some(existing) => existing.append(v),
                None => {
                    into.insert(chunk, v);
                }
            }
        }
    }
    a
}

fn scan_partition(
    snapshot: &dyn StateSnapshot,
    partition: usize,
    params: &EncodeParams,
    buckets: &mut Buckets,
    dropped: &mut u64,
) -> Result<()> {
    let kind = snapshot.kind();
    snapshot.for_each_in_partition(partition, &mut |key, value| {
        let kg = key_group_of(key)?;
        if kg.0 >= params.max_parallelism {
            return Err(Error::InvalidArgument(format!(
                "state key outside the job's key groups: key_group={} max_parallelism={}",
                kg.0, params.max_parallelism
            )));
        }
        let operator = operator_of(key).unwrap_or(RAW_OPERATOR);
        let chunk = kg.0 / params.key_groups_per_artifact;
        let value = match value {
            Some(v) if is_expired_value(v, params.now_ms) => {
                *dropped += 1;
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
        let chunks = match buckets.get_mut(operator) {
            Some(c) => c,
            None => buckets.entry(operator.to_string()).or_default(),
        };
        chunks.entry(chunk).or_default().push(key, value);
        Ok(())
    })
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
    let (buckets, dropped) = (0..snapshot.partitions())
        .into_par_iter()
        .try_fold(
            || (Buckets::new(), 0u64),
            |(mut buckets, mut dropped), p| {
                scan_partition(snapshot, p, params, &mut buckets, &mut dropped)?;
                Ok::<_, Error>((buckets, dropped))
            },
        )
        .try_reduce(
            || (Buckets::new(), 0u64),
            |a, b| Ok((merge(a.0, b.0), a.1 + b.1)),
        )?;

    let buckets: Vec<((String, u16), Bucket)> = buckets
        .into_iter()
        .flat_map(|(op, chunks)| chunks.into_iter().map(move |(c, b)| ((op.clone(), c), b)))
        .collect();
    let mut refs: Vec<ArtifactRef> = buckets
        .into_par_iter()
        .map(|((operator, chunk), mut bucket)| {
            let data = &bucket.data;
            bucket
                .recs
                .sort_unstable_by(|a, b| data[a.0.clone()].cmp(&data[b.0.clone()]));
            let mut w = RecordWriter::new(artifact_kind, data.len() + bucket.recs.len() * 4);
            for (k, v) in &bucket.recs {
                w.push(&data[k.clone()], v.clone().map(|v| &data[v]))?;
            }
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
