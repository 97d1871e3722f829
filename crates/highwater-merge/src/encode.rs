//! Encoding a backend snapshot (all state, or the changes since the last
//! checkpoint) into content-addressed artifacts: one group per operator and
//! key-group range, each cut into content-defined chunks.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use highwater_core::key::{key_group_of, split_operator};
use highwater_core::ttl::is_expired_value;
use highwater_core::{
    ArtifactKind, ArtifactRef, EncodeOptions, EncodedArtifact, Error, KeyForm, KeyGroupRange,
    RecordWriter, Result, SnapshotKind, StateSnapshot,
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

    /// Every record, in the order pushed.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        (0..self.recs.len()).map(|i| self.get(i))
    }
}

/// How many records ahead of the one being written the encoder asks for
/// the next record's memory ([`highwater_core::prefetch`]).
const PREFETCH_AHEAD: usize = 8;

/// Key groups per sort bucket are chosen so that a job has about this many
/// buckets per operator: each is sorted on its own, in parallel.
const SORT_BUCKETS: u16 = 128;

/// How key groups map to sort buckets and artifact groups.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Key groups per sort bucket: a divisor of the key groups per
    /// artifact group, so that no bucket straddles two groups.
    per_bucket: u16,
    /// Sort buckets per operator.
    buckets: usize,
}

impl Layout {
    fn of(params: &EncodeParams) -> Layout {
        let want = params.max_parallelism.div_ceil(SORT_BUCKETS).max(1);
        let kgpa = params.key_groups_per_artifact.max(1);
        let per_bucket = (1..=want.min(kgpa))
            .rev()
            .find(|d| kgpa.is_multiple_of(*d))
            .unwrap_or(1);
        Layout {
            per_bucket,
            buckets: usize::from(params.max_parallelism.div_ceil(per_bucket)),
        }
    }
}

/// A record on its way into an artifact: its key as the snapshot (or a
/// scan's copy) holds it, its value (`None` for a delete), and the number
/// its bucket sorts it by before comparing bytes (see [`sort_number`]).
#[derive(Clone, Copy)]
pub(crate) struct Rec<'a> {
    pub prefix: u128,
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// The part of a key its artifact orders it by after the key group: what
/// follows the operator name in the operator-relative form (`skip` is
/// `1 + operator.len()`), everything after the key group otherwise (`skip`
/// is 0). The stored key is the key group's two bytes and then this tail.
pub(crate) fn tail(key: &[u8], skip: usize) -> &[u8] {
    &key[2 + skip..]
}

/// Length of the common prefix of `a` and `b`.
fn common_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let word = |s: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&s[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let diff = word(a) ^ word(b);
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// The number a bucket sorts a record by before comparing bytes: the
/// sixteen bytes of its key's tail after the prefix `lcp` every tail in the
/// bucket shares (zero-padded), or, when a bucket holds several key groups,
/// the key group and fourteen such bytes. Within a bucket the order of the
/// numbers is the order of the keys wherever they differ, so most
/// comparisons never touch the keys. Sixteen bytes rather than eight: with
/// eight, keys that differ only in a namespace (the windows of one key)
/// tied, and the comparisons that read their keys back took 6 % of a full
/// checkpoint's encoding samples (profile in docs/architecture.md).
fn sort_number(key: &[u8], skip: usize, lcp: usize, several_key_groups: bool) -> u128 {
    let rest = &tail(key, skip)[lcp..];
    let bytes = match rest.first_chunk::<16>() {
        Some(b) => u128::from_be_bytes(*b),
        None => {
            let mut b = [0u8; 16];
            b[..rest.len()].copy_from_slice(rest);
            u128::from_be_bytes(b)
        }
    };
    if several_key_groups {
        (u128::from(u16::from_be_bytes([key[0], key[1]])) << 112) | (bytes >> 16)
    } else {
        bytes
    }
}

/// The records of one operator and sort bucket read from one partition,
/// and the length of the prefix all their tails share.
///
/// Each record's [`sort_number`] is taken as it is added, while its key is
/// in the cache, with the prefix length known then; it only shrinks, and
/// the records before its last change (`stale` of them, usually a few) get
/// their number again when the bucket is sorted, the same way (the piece
/// keeps whether its numbers carry the key group).
#[derive(Default)]
pub(crate) struct Piece<'a> {
    recs: Vec<Rec<'a>>,
    lcp: usize,
    stale: usize,
    several_key_groups: bool,
}

impl<'a> Piece<'a> {
    /// Adds a record whose tail (see [`tail`]) begins after `skip`, in a
    /// bucket of several key groups or not (the same for every record of
    /// the piece).
    pub fn push(
        &mut self,
        key: &'a [u8],
        value: Option<&'a [u8]>,
        skip: usize,
        several_key_groups: bool,
    ) {
        let t = tail(key, skip);
        match self.recs.first() {
            Some(first) => {
                let common = common_len(tail(first.key, skip), t);
                if common < self.lcp {
                    self.lcp = common;
                    self.stale = self.recs.len();
                }
            }
            None => {
                self.lcp = t.len();
                self.several_key_groups = several_key_groups;
            }
        }
        self.recs.push(Rec {
            prefix: sort_number(key, skip, self.lcp, several_key_groups),
            key,
            value,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }
}

/// One operator's records of a partition, by sort bucket.
struct OperatorPieces<'a> {
    operator: &'a str,
    /// See [`tail`].
    skip: usize,
    buckets: Vec<Piece<'a>>,
}

/// What the scan of one partition found.
#[derive(Default)]
struct Scan<'a> {
    operators: Vec<OperatorPieces<'a>>,
    dropped: u64,
}

impl<'a> Scan<'a> {
    /// Files one entry by operator and sort bucket, checking its key group
    /// and dropping (full) or deleting (changes) an expired value.
    fn add(
        &mut self,
        key: &'a [u8],
        value: Option<&'a [u8]>,
        params: &EncodeParams,
        layout: Layout,
        kind: SnapshotKind,
    ) -> Result<()> {
        let kg = key_group_of(key)?;
        if kg.0 >= params.max_parallelism {
            return Err(Error::InvalidArgument(format!(
                "state key outside the job's key groups: key_group={} max_parallelism={}",
                kg.0, params.max_parallelism
            )));
        }
        // The operator's name is compared as bytes with those already
        // seen (one or two, usually) and checked as UTF-8 only when it is
        // new: parsing and checking it per record took 2 % of a full
        // checkpoint's encoding samples.
        let named = key.get(2).and_then(|&len| key.get(3..3 + usize::from(len)));
        let seen = named.and_then(|name| {
            self.operators
                .iter()
                .position(|o| o.operator.as_bytes() == name)
        });
        // A key without an operator (raw bytes) is stored as it is.
        let operator = match seen {
            Some(at) => self.operators[at].operator,
            None => split_operator(key).map_or(RAW_OPERATOR, |(_, operator, _)| operator),
        };
        let value = match value {
            Some(v) if is_expired_value(v, params.now_ms) => {
                self.dropped += 1;
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
        let at = match seen.or_else(|| self.operators.iter().position(|o| o.operator == operator)) {
            Some(at) => at,
            None => {
                let skip = match key_form_for(operator, &params.merger) {
                    KeyForm::OperatorRelative => 1 + operator.len(),
                    KeyForm::Absolute => 0,
                };
                self.operators.push(OperatorPieces {
                    operator,
                    skip,
                    buckets: (0..layout.buckets).map(|_| Piece::default()).collect(),
                });
                self.operators.len() - 1
            }
        };
        let ops = &mut self.operators[at];
        ops.buckets[usize::from(kg.0 / layout.per_bucket)].push(
            key,
            value,
            ops.skip,
            layout.per_bucket > 1,
        );
        Ok(())
    }
}

/// Scans one partition with slices borrowed from the snapshot, or `None`
/// if the backend cannot lend its bytes.
fn scan_borrowed<'s>(
    snapshot: &'s dyn StateSnapshot,
    partition: usize,
    params: &EncodeParams,
    layout: Layout,
) -> Result<Option<Scan<'s>>> {
    let kind = snapshot.kind();
    let mut scan = Scan::default();
    let lent =
        snapshot.for_each_borrowed(partition, &mut |k, v| scan.add(k, v, params, layout, kind))?;
    Ok(lent.then_some(scan))
}

/// Copies the partitions of `snapshot` that were not lent (`None` in
/// `lent`, one per partition) into arenas, in parallel: the bytes of
/// backends that cannot lend them.
pub(crate) fn copy_unlent<T>(
    snapshot: &dyn StateSnapshot,
    lent: &[Option<T>],
) -> Result<Vec<Arena>> {
    let unlent: Vec<usize> = (0..lent.len()).filter(|&p| lent[p].is_none()).collect();
    unlent
        .into_par_iter()
        .map(|p| {
            let mut arena = Arena::default();
            snapshot.for_each_in_partition(p, &mut |k, v| {
                arena.push_parts(&[k], v);
                Ok(())
            })?;
            Ok(arena)
        })
        .collect()
}

/// Sorts the pieces of one operator and bucket into one run in stored-key
/// order, by [`sort_number`] and then, where numbers tie, by the bytes of
/// the tails after the prefix they all share.
pub(crate) fn sort_bucket<'a>(pieces: Vec<Piece<'a>>, skip: usize) -> Vec<Rec<'a>> {
    let Some(first) = pieces
        .first()
        .and_then(|p| p.recs.first())
        .map(|r| tail(r.key, skip))
    else {
        return Vec::new();
    };
    let lcp = pieces
        .iter()
        .filter_map(|p| {
            p.recs
                .first()
                .map(|r| p.lcp.min(common_len(first, tail(r.key, skip))))
        })
        .min()
        .unwrap_or(0);
    // Numbers taken with a longer shared prefix than the bucket's are
    // taken again.
    let renumber = |p: &mut Piece<'a>| {
        let stale = if p.lcp == lcp { p.stale } else { p.recs.len() };
        for r in &mut p.recs[..stale] {
            r.prefix = sort_number(r.key, skip, lcp, p.several_key_groups);
        }
    };
    // A bucket read from one partition (a backend whose partitions hold
    // whole key groups) is sorted where it is.
    let mut recs = if pieces.len() == 1 {
        let mut p = pieces.into_iter().next().unwrap_or_default();
        renumber(&mut p);
        p.recs
    } else {
        let mut recs = Vec::with_capacity(pieces.iter().map(|p| p.recs.len()).sum());
        for mut p in pieces {
            renumber(&mut p);
            recs.extend(p.recs);
        }
        recs
    };
    recs.sort_unstable_by(|a, b| {
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| tail(a.key, skip)[lcp..].cmp(&tail(b.key, skip)[lcp..]))
    });
    recs
}

/// The sorted records of one operator and artifact group.
struct Unit<'a> {
    operator: &'a str,
    skip: usize,
    range: KeyGroupRange,
    /// The group's sort buckets in key-group order.
    runs: Vec<Vec<Rec<'a>>>,
}

/// What the writers of one encoding share.
struct Output<'p> {
    kind: ArtifactKind,
    options: EncodeOptions,
    merger: &'p MergerConfig,
    sink: &'p (dyn Fn(Produced) -> Result<()> + Sync),
    buffers: BufferPool,
    refs: Mutex<Vec<ArtifactRef>>,
    /// The first error a compression task met.
    failed: Mutex<Option<Error>>,
    /// Compression tasks spawned and not yet finished.
    in_flight: AtomicUsize,
    max_in_flight: usize,
}

/// Record buffers kept for reuse from one artifact to the next, shared by
/// the threads encoding them.
#[derive(Default)]
pub(crate) struct BufferPool(Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    /// A kept buffer (empty), or a new one.
    pub fn take(&self) -> Vec<u8> {
        let mut buf = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        buf.clear();
        buf
    }

    /// Keeps `buf` for a later [`take`](BufferPool::take).
    pub fn put(&self, buf: Vec<u8>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buf);
    }
}

impl Output<'_> {
    /// Compresses, frames and hands one chunk to the sink.
    fn finish(&self, operator: &str, range: KeyGroupRange, w: RecordWriter) -> Result<()> {
        let (enc, buf) = w.finish_reusing(&self.options)?;
        self.buffers.put(buf);
        let reference = artifact_ref(operator, range, &enc);
        (self.sink)(Produced {
            reference: reference.clone(),
            bytes: Bytes::from(enc.bytes),
        })?;
        self.refs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reference);
        Ok(())
    }

    fn fail(&self, e: Error) {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(e);
    }

    /// Writes one unit's records into content-defined chunks (the cuts
    /// [`chunk_ends`] makes), each compressed on another rayon task while
    /// the next is written, or on this thread when enough are already
    /// waiting (so at most a few chunks are held at once).
    fn write_unit<'s>(&'s self, unit: &'s Unit<'_>, scope: &rayon::Scope<'s>) -> Result<()> {
        let form = key_form_for(unit.operator, self.merger);
        let mut chunker = Chunker::new(&self.merger.chunking);
        let mut w = RecordWriter::with_buffer(self.kind, form, self.buffers.take());
        let recs = || unit.runs.iter().flatten();
        // Records lie wherever the backend keeps them, not in key order:
        // each is asked for a few records before it is copied.
        let mut ahead = recs().skip(PREFETCH_AHEAD);
        for r in recs() {
            if let Some(next) = ahead.next() {
                highwater_core::prefetch::read(next.key);
                highwater_core::prefetch::read_ends(next.value.unwrap_or_default());
            }
            // The key as stored, written once into the record stream and
            // hashed by the chunker from there.
            let stored = if unit.skip == 0 {
                w.push_key_parts(&[r.key], r.value)?
            } else {
                w.push_key_parts(&[&r.key[..2], tail(r.key, unit.skip)], r.value)?
            };
            if chunker.cut_after(stored, r.value) {
                let full = std::mem::replace(
                    &mut w,
                    RecordWriter::with_buffer(self.kind, form, self.buffers.take()),
                );
                self.dispatch(unit, full, scope)?;
            }
        }
        if w.entries() > 0 {
            self.dispatch(unit, w, scope)?;
        }
        Ok(())
    }

    fn dispatch<'s>(
        &'s self,
        unit: &'s Unit<'_>,
        w: RecordWriter,
        scope: &rayon::Scope<'s>,
    ) -> Result<()> {
        if self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            // A chunk failed (its sink, say): the encoding is lost, stop
            // writing; the error is returned when the tasks are done.
            return Err(Error::Internal("an earlier chunk failed".into()));
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return self.finish(unit.operator, unit.range, w);
        }
        scope.spawn(move |_| {
            if let Err(e) = self.finish(unit.operator, unit.range, w) {
                self.fail(e);
            }
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }
}

/// Encodes `snapshot` on the current rayon pool, calling `sink` for every
/// artifact as soon as it is ready. Returns the references, sorted by
/// operator, key-group range and key.
///
/// Partitions are scanned in parallel, keeping references to the bytes the
/// snapshot lends (copying them only from backends that cannot lend), filed
/// by operator and sort bucket of key groups; buckets are sorted in
/// parallel by a number made of the eight bytes after the prefix all their
/// keys share; then every operator and group of `key_groups_per_artifact`
/// key groups is written into content-defined chunks in key order, each
/// compressed on its own task.
pub fn encode_snapshot(
    snapshot: &dyn StateSnapshot,
    params: &EncodeParams,
    sink: &(dyn Fn(Produced) -> Result<()> + Sync),
) -> Result<(Vec<ArtifactRef>, EncodeTotals)> {
    let kind = snapshot.kind();
    let artifact_kind = match kind {
        SnapshotKind::Full => ArtifactKind::Entries,
        SnapshotKind::Changes => ArtifactKind::Delta,
    };
    let layout = Layout::of(params);
    // Phase 1: scan every partition, in parallel.
    let lent: Vec<Option<Scan<'_>>> = (0..snapshot.partitions())
        .into_par_iter()
        .map(|p| scan_borrowed(snapshot, p, params, layout))
        .collect::<Result<_>>()?;
    let copies = copy_unlent(snapshot, &lent)?;
    let copied: Vec<Scan<'_>> = copies
        .par_iter()
        .map(|arena| {
            let mut scan = Scan::default();
            for (k, v) in arena.entries() {
                scan.add(k, v, params, layout, kind)?;
            }
            Ok(scan)
        })
        .collect::<Result<_>>()?;
    let scans: Vec<Scan<'_>> = lent.into_iter().flatten().chain(copied).collect();
    let dropped = scans.iter().map(|s| s.dropped).sum();

    // Gather each operator's pieces per bucket across partitions.
    let mut by_operator: Vec<(&str, usize, Vec<Vec<Piece<'_>>>)> = Vec::new();
    for scan in scans {
        for ops in scan.operators {
            let at = match by_operator.iter().position(|o| o.0 == ops.operator) {
                Some(at) => at,
                None => {
                    let buckets = (0..layout.buckets).map(|_| Vec::new()).collect();
                    by_operator.push((ops.operator, ops.skip, buckets));
                    by_operator.len() - 1
                }
            };
            for (b, piece) in ops.buckets.into_iter().enumerate() {
                if !piece.recs.is_empty() {
                    by_operator[at].2[b].push(piece);
                }
            }
        }
    }
    by_operator.sort_by(|a, b| a.0.cmp(b.0));

    // Phase 2: sort every bucket, in parallel.
    let sorted: Vec<(&str, usize, Vec<Vec<Rec<'_>>>)> = by_operator
        .into_iter()
        .map(|(operator, skip, buckets)| {
            let runs = buckets
                .into_par_iter()
                .map(|pieces| sort_bucket(pieces, skip))
                .collect();
            (operator, skip, runs)
        })
        .collect();

    // Phase 3: write and compress every (operator, artifact group).
    let per_group = usize::from(params.key_groups_per_artifact.max(1) / layout.per_bucket);
    let mut units = Vec::new();
    for (operator, skip, runs) in sorted {
        let mut runs = runs.into_iter();
        let mut group = 0u16;
        loop {
            let group_runs: Vec<Vec<Rec<'_>>> = runs.by_ref().take(per_group).collect();
            if group_runs.is_empty() {
                break;
            }
            if group_runs.iter().any(|r| !r.is_empty()) {
                let start = group * params.key_groups_per_artifact;
                let end = start
                    .saturating_add(params.key_groups_per_artifact)
                    .min(params.max_parallelism);
                units.push(Unit {
                    operator,
                    skip,
                    range: KeyGroupRange::new(start, end)?,
                    runs: group_runs,
                });
            }
            group += 1;
        }
    }
    let out = Output {
        kind: artifact_kind,
        options: match artifact_kind {
            ArtifactKind::Entries => params.merger.base_options(),
            ArtifactKind::Delta => params.merger.delta_options(),
        },
        merger: &params.merger,
        sink,
        buffers: BufferPool::default(),
        refs: Mutex::new(Vec::new()),
        failed: Mutex::new(None),
        in_flight: AtomicUsize::new(0),
        max_in_flight: 2 * rayon::current_num_threads(),
    };
    let written = rayon::scope(|scope| {
        units
            .par_iter()
            .try_for_each(|unit| out.write_unit(unit, scope))
    });
    // A compression task's error first: a writer that stopped because of
    // it reports only that it stopped.
    if let Some(e) = out
        .failed
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        return Err(e);
    }
    written?;
    let mut refs = out
        .refs
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
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

/// The manifest's reference to `enc`, an artifact of `operator` over
/// `range`.
pub(crate) fn artifact_ref(
    operator: &str,
    range: KeyGroupRange,
    enc: &EncodedArtifact,
) -> ArtifactRef {
    ArtifactRef {
        operator: operator.to_string(),
        key_groups: range,
        id: enc.id(),
        entries: enc.entries,
        logical_bytes: enc.raw_len,
        stored_bytes: enc.bytes.len() as u64,
        codec: enc.codec,
    }
}

/// Sorts references the way manifests list them: by operator, key-group
/// range, then (chunks of one group) by content address, which is stable.
pub(crate) fn sort_refs(refs: &mut [ArtifactRef]) {
    refs.sort_by(|a, b| {
        (a.operator.as_str(), a.key_groups, a.id).cmp(&(b.operator.as_str(), b.key_groups, b.id))
    });
}

/// The content-defined chunker's cut rule, record by record: a chunk ends
/// after a record once it holds `max_bytes`, or `min_bytes` and the
/// record's key hashes below its share of `target_bytes`. Content
/// addressing depends on every encoder cutting alike, so this is the one
/// place the rule is written.
struct Chunker<'c> {
    chunking: &'c ChunkConfig,
    target: u64,
    size: usize,
}

impl<'c> Chunker<'c> {
    fn new(chunking: &'c ChunkConfig) -> Self {
        Chunker {
            chunking,
            target: chunking.target_bytes.max(1) as u64,
            size: 0,
        }
    }

    /// Counts a record (its key as stored) and says whether the chunk
    /// ends after it.
    fn cut_after(&mut self, key: &[u8], value: Option<&[u8]>) -> bool {
        // Key, value and about three bytes of framing.
        let len = key.len() + value.map_or(0, <[u8]>::len) + 3;
        self.size += len;
        let cut = self.size >= self.chunking.max_bytes
            || (self.size >= self.chunking.min_bytes
                && xxhash_rust::xxh3::xxh3_64(key) % self.target < len as u64);
        if cut {
            self.size = 0;
        }
        cut
    }
}

/// Where the content-defined chunker cuts `recs` (record bytes as the
/// writer will store them): the end index of every chunk.
pub fn chunk_ends(recs: &[(&[u8], Option<&[u8]>)], chunking: &ChunkConfig) -> Vec<usize> {
    let mut chunker = Chunker::new(chunking);
    let mut ends: Vec<usize> = (0..recs.len())
        .filter(|&i| chunker.cut_after(recs[i].0, recs[i].1))
        .map(|i| i + 1)
        .collect();
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
            let reference = artifact_ref(operator, range, &enc);
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

/// The streaming encoder against the plain one it replaced: every record
/// gathered per operator and artifact group, comparison-sorted by its
/// stored key and cut by [`encode_group`]. Both must produce the very same
/// artifacts, for full and change snapshots, from a backend that lends its
/// bytes and from one that does not.
#[cfg(test)]
mod differential {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use highwater_core::{Envelope, StateBackend, StateKey, key_group_for};
    use highwater_memory::MemoryBackend;
    use proptest::prelude::*;

    use super::*;

    /// A real snapshot whose bytes are not lent, as the RocksDB and Redis
    /// backends' snapshots are not: the encoder must copy them.
    struct NotLending(Arc<dyn StateSnapshot>);

    impl StateSnapshot for NotLending {
        fn kind(&self) -> SnapshotKind {
            self.0.kind()
        }
        fn partitions(&self) -> usize {
            self.0.partitions()
        }
        fn for_each_in_partition(
            &self,
            partition: usize,
            f: &mut highwater_core::EntryVisitor<'_>,
        ) -> Result<()> {
            self.0.for_each_in_partition(partition, f)
        }
        fn approximate_entries(&self) -> usize {
            self.0.approximate_entries()
        }
    }

    /// A stored key and its value (`None`: a delete).
    type Owned = (Vec<u8>, Option<Vec<u8>>);

    fn reference(snapshot: &dyn StateSnapshot, params: &EncodeParams) -> Vec<ArtifactRef> {
        let kind = match snapshot.kind() {
            SnapshotKind::Full => ArtifactKind::Entries,
            SnapshotKind::Changes => ArtifactKind::Delta,
        };
        let mut groups: BTreeMap<(String, u16), Vec<Owned>> = BTreeMap::new();
        for p in 0..snapshot.partitions() {
            snapshot
                .for_each_in_partition(p, &mut |k, v| {
                    let kg = key_group_of(k)?;
                    let (operator, stored) = match split_operator(k) {
                        Ok((head, op, rest))
                            if key_form_for(op, &params.merger) == KeyForm::OperatorRelative =>
                        {
                            (op, [head, rest].concat())
                        }
                        Ok((_, op, _)) => (op, k.to_vec()),
                        Err(_) => (RAW_OPERATOR, k.to_vec()),
                    };
                    let v = match v {
                        Some(v) if is_expired_value(v, params.now_ms) => match kind {
                            ArtifactKind::Entries => return Ok(()),
                            ArtifactKind::Delta => None,
                        },
                        other => other.map(<[u8]>::to_vec),
                    };
                    groups
                        .entry((operator.to_string(), kg.0 / params.key_groups_per_artifact))
                        .or_default()
                        .push((stored, v));
                    Ok(())
                })
                .unwrap();
        }
        let mut refs = Vec::new();
        for ((operator, group), mut recs) in groups {
            recs.sort();
            let recs: Vec<(&[u8], Option<&[u8]>)> = recs
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            let start = group * params.key_groups_per_artifact;
            let end = (start + params.key_groups_per_artifact).min(params.max_parallelism);
            let range = KeyGroupRange::new(start, end).unwrap();
            refs.extend(
                encode_group(&operator, range, kind, &recs, &params.merger, &|_| Ok(())).unwrap(),
            );
        }
        sort_refs(&mut refs);
        refs
    }

    /// One entry to write: operator (or a raw key), state, user key,
    /// namespace, value, expired.
    type Op = (u8, u8, Vec<u8>, u8, Vec<u8>, bool);

    fn key_of(op: &Op, max_parallelism: u16) -> Vec<u8> {
        let (operator, state, key, ns, _, _) = op;
        if *operator == 3 {
            // A raw key: a key group and bytes that are no state key.
            let kg = key_group_for(key, max_parallelism);
            let mut k = kg.0.to_be_bytes().to_vec();
            k.extend_from_slice(key);
            return k;
        }
        StateKey {
            key_group: key_group_for(key, max_parallelism),
            operator: ["a", "op", "window"][usize::from(*operator)],
            state: ["s", "st"][usize::from(*state % 2)],
            key,
            namespace: &[*ns % 3],
            user_key: b"",
        }
        .encode()
        .unwrap()
    }

    fn value_of(op: &Op) -> Vec<u8> {
        let mut v = Vec::new();
        Envelope::encode_into(op.5.then_some(5), &op.4, &mut v);
        v
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            (
                0u8..4,
                0u8..2,
                // Short keys with long common prefixes, so that many sort
                // by their bytes after the prefix number.
                prop::collection::vec(prop::sample::select(vec![0u8, 1, b'k']), 0..14),
                any::<u8>(),
                prop::collection::vec(any::<u8>(), 0..60),
                prop::bool::weighted(0.1),
            ),
            0..400,
        )
    }

    /// A sink that fails (an upload, say) stops the encoding: its error is
    /// the one returned, and the rest of the snapshot is not encoded.
    #[test]
    fn a_failing_sink_stops_the_encoding_with_its_error() {
        let backend = MemoryBackend::new();
        for i in 0..20_000u32 {
            let op = (0, 0, i.to_be_bytes().to_vec(), 0, vec![7; 40], false);
            backend.put(&key_of(&op, 128), &value_of(&op)).unwrap();
        }
        let params = EncodeParams {
            max_parallelism: 128,
            key_groups_per_artifact: 8,
            merger: MergerConfig {
                chunking: ChunkConfig {
                    min_bytes: 100,
                    target_bytes: 400,
                    max_bytes: 3_000,
                },
                ..MergerConfig::default()
            },
            now_ms: 0,
        };
        let snapshot = backend.snapshot(SnapshotKind::Full).unwrap();
        let (all, _) = encode_snapshot(&*snapshot, &params, &|_| Ok(())).unwrap();
        let calls = AtomicUsize::new(0);
        let err = encode_snapshot(&*snapshot, &params, &|_| {
            if calls.fetch_add(1, Ordering::Relaxed) == 3 {
                return Err(Error::InvalidArgument("sink refused".into()));
            }
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m == "sink refused"),
            "{err}"
        );
        let calls = calls.into_inner();
        assert!(
            calls < all.len() / 2,
            "the encoding stopped: {calls} of {} artifacts reached the sink",
            all.len()
        );
    }

    proptest! {
        /// `sort_bucket` orders any keys as their stored bytes order, over
        /// one piece or several, one key group or several per bucket: keys
        /// whose shared prefix shrinks as they arrive (numbers taken again),
        /// and keys equal in the sixteen bytes after it (ties read the keys).
        #[test]
        fn a_bucket_sorts_by_stored_key(
            keys in prop::collection::btree_set(
                (0u16..3, prop::collection::vec(prop::sample::select(vec![0u8, 7, 255]), 0..40)),
                0..200,
            ),
            shared in prop::collection::vec(any::<u8>(), 0..20),
            pieces in 1usize..4,
            skip in 0usize..3,
            several in any::<bool>(),
        ) {
            // Key group, `skip` bytes the tail starts after, then a prefix
            // every key shares and the key's own bytes.
            let keys: Vec<Vec<u8>> = keys
                .iter()
                .map(|(kg, rest)| {
                    let kg = if several { *kg } else { 1 };
                    let mut k = kg.to_be_bytes().to_vec();
                    k.extend(std::iter::repeat_n(9u8, skip));
                    k.extend_from_slice(&shared);
                    k.extend_from_slice(rest);
                    k
                })
                .collect();
            let mut split: Vec<Piece<'_>> = (0..pieces).map(|_| Piece::default()).collect();
            for (i, k) in keys.iter().enumerate() {
                split[i % pieces].push(k, Some(b"v"), skip, several);
            }
            let sorted: Vec<&[u8]> = sort_bucket(split, skip)
                .iter()
                .map(|r| r.key)
                .collect();
            let stored = |k: &[u8]| [&k[..2], tail(k, skip)].concat();
            let mut want: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            want.sort_by_key(|k| stored(k));
            prop_assert_eq!(sorted, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn streaming_encoder_writes_what_the_plain_one_wrote(
            first in ops(),
            then in ops(),
            deletes in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
            max_parallelism in prop::sample::select(vec![1u16, 8, 128, 300, 1000]),
            kgpa in prop::sample::select(vec![1u16, 3, 8, 128]),
            dedup in any::<bool>(),
        ) {
            let backend = MemoryBackend::new();
            for op in &first {
                backend.put(&key_of(op, max_parallelism), &value_of(op)).unwrap();
            }
            let merger = MergerConfig {
                enable_deduplication: dedup,
                chunking: ChunkConfig { min_bytes: 100, target_bytes: 400, max_bytes: 3_000 },
                ..MergerConfig::default()
            };
            let params = EncodeParams {
                max_parallelism,
                key_groups_per_artifact: kgpa,
                merger,
                now_ms: 10,
            };
            let full = backend.snapshot(SnapshotKind::Full).unwrap();
            for op in &then {
                backend.put(&key_of(op, max_parallelism), &value_of(op)).unwrap();
            }
            for d in &deletes {
                if !first.is_empty() {
                    backend.delete(&key_of(d.get(&first), max_parallelism)).unwrap();
                }
            }
            let changes = backend.snapshot(SnapshotKind::Changes).unwrap();
            for snapshot in [full, changes] {
                let want = reference(&*snapshot, &params);
                let not_lending = NotLending(snapshot.clone());
                for s in [&*snapshot, &not_lending as &dyn StateSnapshot] {
                    let (got, totals) = encode_snapshot(s, &params, &|_| Ok(())).unwrap();
                    prop_assert_eq!(&got, &want);
                    prop_assert_eq!(totals.entries, want.iter().map(|r| r.entries).sum::<u64>());
                }
            }
        }
    }
}
