//! Savepoints: writing a job's state as a canonical, backend-independent
//! savepoint, and reading one back, verified, for any backend, any
//! parallelism and any number of key groups.
//!
//! The format is [`highwater_core::savepoint`]: the ordinary artifact codec
//! (entries only, absolute keys, zstd, xxh3) with one group of artifacts per
//! state, in key order (so in key-group order), and a savepoint manifest of
//! its own kind. See `docs/savepoints.md` for the guarantees.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use highwater_core::key::StateKey;
use highwater_core::keygroup::key_group_for;
use highwater_core::{
    ArtifactId, ArtifactKind, ArtifactRef, CheckpointId, CheckpointStore, DecodeLimits,
    EncodeOptions, Envelope, Error, KeyForm, KeyGroupRange, MigrationPlan, RecordBlock,
    RecordWriter, Result, SavepointManifest, SavepointState, StateSchema, StateSnapshot,
    decode_artifact,
};
use tokio::runtime::Handle;

use rayon::prelude::*;

use crate::encode::{BufferPool, Piece, Rec, artifact_ref, copy_unlent, sort_bucket};
use crate::io::run_io;

/// Artifact uploads of a savepoint in flight at once.
const UPLOADS_IN_FLIGHT: usize = 8;

/// How a savepoint is written.
#[derive(Debug, Clone)]
pub struct SavepointParams {
    /// Number of key groups the keys were written with (the job's).
    pub max_parallelism: u16,
    /// Now, ms since the Unix epoch: entries expired by then are left out.
    pub now_ms: u64,
    /// The checkpoint the state comes from, when written offline from one.
    pub source_checkpoint: Option<CheckpointId>,
    /// Properties to record (the job's manifest properties).
    pub properties: BTreeMap<String, String>,
    /// Codec options (zstd level, compression threshold), as checkpoints.
    pub encode: EncodeOptions,
    /// Record bytes per artifact before a new one starts (4 MiB default).
    pub artifact_bytes: usize,
}

impl SavepointParams {
    /// Parameters for a job of `max_parallelism` key groups at `now_ms`.
    pub fn new(max_parallelism: u16, now_ms: u64) -> Self {
        SavepointParams {
            max_parallelism,
            now_ms,
            source_checkpoint: None,
            properties: BTreeMap::new(),
            encode: EncodeOptions::default(),
            artifact_bytes: 4 << 20,
        }
    }
}

/// What writing a savepoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SavepointInfo {
    /// The id the savepoint is committed under in its store.
    pub id: CheckpointId,
    /// Entries written.
    pub entries: u64,
    /// Expired entries left out.
    pub expired_dropped: u64,
    /// Bytes of records before compression.
    pub logical_bytes: u64,
    /// Bytes stored (artifacts, not counting the manifest).
    pub stored_bytes: u64,
    /// Artifacts written.
    pub artifacts: usize,
}

/// One entry of a savepoint: an encoded state key and its stored value (an
/// [`Envelope`]: expiry and payload).
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// Visits every entry of a full snapshot.
pub fn snapshot_entries(snapshot: &dyn StateSnapshot) -> Result<Vec<RawEntry>> {
    let mut out = Vec::with_capacity(snapshot.approximate_entries());
    for p in 0..snapshot.partitions() {
        snapshot.for_each_in_partition(p, &mut |k, v| {
            if let Some(v) = v {
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(())
        })?;
    }
    Ok(out)
}

impl SavepointParams {
    fn check(&self) -> Result<()> {
        if self.max_parallelism == 0 {
            return Err(Error::InvalidArgument("max_parallelism is zero".into()));
        }
        Ok(())
    }
}

/// Writes `entries` (encoded state keys and envelopes, in any order) as a
/// savepoint into `target` and commits its manifest under the id after the
/// newest one in `target`. `schemas` describe the states (a state without
/// one is recorded with none). Every key must be a state key whose key
/// group is right for `params.max_parallelism`; a key given twice is
/// refused.
pub fn write_savepoint(
    entries: impl IntoIterator<Item = Result<RawEntry>>,
    schemas: &[StateSchema],
    params: &SavepointParams,
    target: &Arc<dyn CheckpointStore>,
    io: &Handle,
) -> Result<(SavepointManifest, SavepointInfo)> {
    params.check()?;
    let entries: Vec<RawEntry> = entries.into_iter().collect::<Result<_>>()?;
    let mut groups = Groups::default();
    for (k, v) in &entries {
        groups.add(k, v, params)?;
    }
    write_groups(
        Groups::merge_all(vec![groups])?,
        schemas,
        params,
        target,
        io,
    )
}

/// Writes a full `snapshot` (every entry of a backend) as a savepoint, as
/// [`write_savepoint`] does: its partitions are read, checked and grouped
/// by state and bucket of key groups in parallel (rayon), keeping
/// references to the bytes the snapshot lends (copying them only from
/// backends that do not lend), the buckets sorted in parallel, and
/// artifacts uploaded while the next are encoded.
pub fn write_snapshot_savepoint(
    snapshot: &dyn StateSnapshot,
    schemas: &[StateSchema],
    params: &SavepointParams,
    target: &Arc<dyn CheckpointStore>,
    io: &Handle,
) -> Result<(SavepointManifest, SavepointInfo)> {
    params.check()?;
    let lent: Vec<Option<Groups<'_>>> = (0..snapshot.partitions())
        .into_par_iter()
        .map(|p| {
            let mut groups = Groups::default();
            let lent = snapshot.for_each_borrowed(p, &mut |k, v| match v {
                Some(v) => groups.add(k, v, params),
                None => Ok(()),
            })?;
            Ok(lent.then_some(groups))
        })
        .collect::<Result<_>>()?;
    let copies = copy_unlent(snapshot, &lent)?;
    let copied: Vec<Groups<'_>> = copies
        .par_iter()
        .map(|arena| {
            let mut groups = Groups::default();
            for (k, v) in arena.entries() {
                if let Some(v) = v {
                    groups.add(k, v, params)?;
                }
            }
            Ok(groups)
        })
        .collect::<Result<_>>()?;
    let parts = lent.into_iter().flatten().chain(copied).collect();
    write_groups(Groups::merge_all(parts)?, schemas, params, target, io)
}

/// Buckets of key groups each state's records are kept in: records are
/// sorted bucket by bucket (in parallel), and since a key begins with its
/// key group, the buckets in order are the state's records in key order.
const SORT_BUCKETS: u16 = 128;

/// Per state (operator, state): the length of the names its keys begin
/// with after the key group (see [`tail`](crate::encode::tail)), and one
/// `T` per bucket of key groups.
type PerState<T> = BTreeMap<(String, String), (usize, Vec<T>)>;

/// Entries of a savepoint being written, checked and grouped by state and
/// by bucket of key groups ([`SORT_BUCKETS`]): references to the entries'
/// bytes, which are not copied.
#[derive(Default)]
struct Groups<'a> {
    /// Per state, its pieces per bucket.
    by_state: PerState<Piece<'a>>,
    expired_dropped: u64,
}

/// Key groups per bucket under `max_parallelism`.
fn per_bucket(max_parallelism: u16) -> u16 {
    max_parallelism.div_ceil(SORT_BUCKETS).max(1)
}

/// Entries of a savepoint, checked and sorted: per state, its buckets,
/// each in key order.
struct Sorted<'a> {
    by_state: PerState<Vec<Rec<'a>>>,
    expired_dropped: u64,
}

impl<'a> Groups<'a> {
    /// Adds one entry: a state key in its key group under
    /// `params.max_parallelism`; an expired one is counted and dropped.
    fn add(&mut self, k: &'a [u8], v: &'a [u8], params: &SavepointParams) -> Result<()> {
        let sk = StateKey::decode(k).map_err(|e| {
            Error::InvalidArgument(format!("a savepoint holds state keys only: {e}"))
        })?;
        let want = key_group_for(sk.key, params.max_parallelism);
        if sk.key_group != want {
            return Err(Error::InvalidArgument(format!(
                "key in the wrong key group: operator={} state={} key_group={} expected={} max_parallelism={}",
                sk.operator, sk.state, sk.key_group.0, want.0, params.max_parallelism
            )));
        }
        if Envelope::decode(v)?.is_expired(params.now_ms) {
            self.expired_dropped += 1;
            return Ok(());
        }
        // After the key group, each name after its length byte: the same
        // bytes in every key of the state, so the rest orders the keys.
        let skip = 1 + sk.operator.len() + 1 + sk.state.len();
        let names_ok = k.len() >= 2 + skip
            && k[2] as usize == sk.operator.len()
            && &k[3..3 + sk.operator.len()] == sk.operator.as_bytes()
            && k[3 + sk.operator.len()] as usize == sk.state.len()
            && &k[4 + sk.operator.len()..2 + skip] == sk.state.as_bytes();
        if !names_ok {
            return Err(Error::Internal(format!(
                "a state key does not begin with its names: operator={} state={}",
                sk.operator, sk.state
            )));
        }
        let per = per_bucket(params.max_parallelism);
        let bucket = usize::from(sk.key_group.0 / per);
        // One lookup without allocating when the state is known (almost
        // always: a backend holds few states).
        let known = self
            .by_state
            .iter_mut()
            .find(|((o, st), _)| o == sk.operator && st == sk.state);
        let (_, buckets) = match known {
            Some((_, state)) => state,
            None => {
                let name = (sk.operator.to_string(), sk.state.to_string());
                let n = usize::from(params.max_parallelism.div_ceil(per));
                self.by_state
                    .entry(name)
                    .or_insert_with(|| (skip, (0..n).map(|_| Piece::default()).collect()))
            }
        };
        buckets[bucket].push(k, Some(v), skip, per > 1);
        Ok(())
    }

    /// The partitions' groups as one, each bucket sorted (buckets in
    /// parallel); a key present twice is an error.
    fn merge_all(parts: Vec<Groups<'a>>) -> Result<Sorted<'a>> {
        let mut expired_dropped = 0;
        let mut pieces: PerState<Vec<Piece<'a>>> = BTreeMap::new();
        for part in parts {
            expired_dropped += part.expired_dropped;
            for (name, (skip, buckets)) in part.by_state {
                let (_, by_bucket) = pieces.entry(name).or_insert((skip, Vec::new()));
                if by_bucket.len() < buckets.len() {
                    by_bucket.resize_with(buckets.len(), Vec::new);
                }
                for (b, piece) in buckets.into_iter().enumerate() {
                    if !piece.is_empty() {
                        by_bucket[b].push(piece);
                    }
                }
            }
        }
        let by_state = pieces
            .into_iter()
            .map(|((operator, state), (skip, by_bucket))| {
                let buckets = by_bucket
                    .into_par_iter()
                    .map(|pieces| {
                        let run = sort_bucket(pieces, skip);
                        // Equal keys have equal prefix numbers: most pairs
                        // differ there without reading the keys.
                        if let Some(w) = run
                            .windows(2)
                            .find(|w| w[0].prefix == w[1].prefix && w[0].key == w[1].key)
                        {
                            return Err(Error::InvalidArgument(format!(
                                "a key is given twice: operator={operator} state={state} key_len={}",
                                w[0].key.len()
                            )));
                        }
                        Ok(run)
                    })
                    .collect::<Result<_>>()?;
                Ok(((operator, state), (skip, buckets)))
            })
            .collect::<Result<_>>()?;
        Ok(Sorted {
            by_state,
            expired_dropped,
        })
    }
}

/// The key and value of a savepoint record (entries only: never `None`).
fn rec<'a>(r: &&Rec<'a>) -> (&'a [u8], &'a [u8]) {
    (r.key, r.value.unwrap_or_default())
}

/// Sorts, encodes, uploads and commits grouped entries (see
/// [`write_savepoint`]).
fn write_groups(
    sorted: Sorted<'_>,
    schemas: &[StateSchema],
    params: &SavepointParams,
    target: &Arc<dyn CheckpointStore>,
    io: &Handle,
) -> Result<(SavepointManifest, SavepointInfo)> {
    let Sorted {
        by_state: mut groups,
        expired_dropped,
    } = sorted;
    let by_name: BTreeMap<(&str, &str), &StateSchema> = schemas
        .iter()
        .map(|s| ((s.operator.as_str(), s.state.as_str()), s))
        .collect();
    // States registered but empty are recorded too: their schema matters.
    for s in schemas {
        groups
            .entry((s.operator.clone(), s.state.clone()))
            .or_default();
    }
    let mut states = Vec::with_capacity(groups.len());
    let mut info = SavepointInfo {
        id: CheckpointId(0),
        entries: 0,
        expired_dropped,
        logical_bytes: 0,
        stored_bytes: 0,
        artifacts: 0,
    };
    let buffers = BufferPool::default();
    for ((operator, state), (_, buckets)) in groups {
        // The state's records in key order: each bucket's, bucket by bucket.
        let index: Vec<&Rec<'_>> = buckets.iter().flatten().collect();
        // Cut into artifacts of about `artifact_bytes`, encode them in
        // parallel (rayon), each uploaded (concurrently) as soon as it is
        // encoded.
        let mut cuts = Vec::new();
        let mut start = 0;
        while start < index.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < index.len() && (end == start || bytes < params.artifact_bytes) {
                let (k, v) = rec(&index[end]);
                bytes += k.len() + v.len();
                end += 1;
            }
            cuts.push((start, end, bytes));
            start = end;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(ArtifactId, Bytes)>(UPLOADS_IN_FLIGHT);
        let store = target.clone();
        let uploader = io.spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            while let Some((id, data)) = rx.recv().await {
                while set.len() >= UPLOADS_IN_FLIGHT {
                    if let Some(done) = set.join_next().await {
                        done.map_err(|e| Error::unexpected("a savepoint upload task", e))??;
                    }
                }
                let s = store.clone();
                set.spawn(async move { s.put_artifact(id, data).await });
            }
            while let Some(done) = set.join_next().await {
                done.map_err(|e| Error::unexpected("a savepoint upload task", e))??;
            }
            Ok::<_, Error>(())
        });
        let encoded: Result<Vec<ArtifactRef>> = cuts
            .par_iter()
            .map(|&(start, end, bytes)| {
                let chunk = &index[start..end];
                let mut buf = buffers.take();
                buf.reserve(bytes + 16 * chunk.len());
                let mut w =
                    RecordWriter::with_buffer(ArtifactKind::Entries, KeyForm::Absolute, buf);
                for r in chunk {
                    let (k, v) = rec(r);
                    w.push(k, Some(v))?;
                }
                let (enc, buf) = w.finish_reusing(&params.encode)?;
                buffers.put(buf);
                let first = highwater_core::key::key_group_of(rec(&chunk[0]).0)?;
                let last = highwater_core::key::key_group_of(rec(&chunk[chunk.len() - 1]).0)?;
                let r = artifact_ref(&operator, KeyGroupRange::new(first.0, last.0 + 1)?, &enc);
                // A closed channel: the uploader failed; its error is
                // returned below.
                let _ = tx.blocking_send((r.id, Bytes::from(enc.bytes)));
                Ok(r)
            })
            .collect();
        drop(tx);
        let uploaded = run_io(io, async move {
            uploader
                .await
                .map_err(|e| Error::unexpected("the savepoint uploader", e))?
        });
        let artifacts = encoded?;
        uploaded?;
        info.stored_bytes += artifacts.iter().map(|a| a.stored_bytes).sum::<u64>();
        info.artifacts += artifacts.len();
        let entries = artifacts.iter().map(|a| a.entries).sum::<u64>();
        let logical_bytes = artifacts.iter().map(|a| a.logical_bytes).sum::<u64>();
        info.entries += entries;
        info.logical_bytes += logical_bytes;
        states.push(SavepointState {
            schema: by_name
                .get(&(operator.as_str(), state.as_str()))
                .map(|s| (*s).clone()),
            operator,
            state,
            entries,
            logical_bytes,
            artifacts,
        });
    }
    let store = target.clone();
    let ids = run_io(io, async move { store.list_manifests().await })?;
    let id = ids
        .into_iter()
        .max()
        .map_or(Ok(CheckpointId(1)), CheckpointId::next)?;
    let manifest = SavepointManifest {
        savepoint_id: id,
        created_at_ms: params.now_ms,
        max_parallelism: params.max_parallelism,
        source_checkpoint: params.source_checkpoint,
        states,
        properties: params.properties.clone(),
    };
    manifest.validate()?;
    let bytes = Bytes::from(manifest.encode()?);
    let store = target.clone();
    run_io(io, async move { store.commit_manifest(id, bytes).await })?;
    info.id = id;
    Ok((manifest, info))
}

/// The id of the newest savepoint in `store`; [`Error::NotFound`] when it
/// holds none.
pub fn newest_savepoint(store: &Arc<dyn CheckpointStore>, io: &Handle) -> Result<CheckpointId> {
    let s = store.clone();
    run_io(io, async move { s.list_manifests().await })?
        .into_iter()
        .max()
        .ok_or_else(|| Error::NotFound(format!("no savepoint in store {}", store.name())))
}

/// Reads and validates savepoint `id` of `store` (the newest when `None`).
pub fn load_savepoint(
    store: &Arc<dyn CheckpointStore>,
    io: &Handle,
    id: Option<CheckpointId>,
) -> Result<SavepointManifest> {
    let id = match id {
        Some(id) => id,
        None => newest_savepoint(store, io)?,
    };
    let s = store.clone();
    let bytes = run_io(io, async move { s.get_manifest(id).await })?;
    let m = SavepointManifest::decode(&bytes).map_err(|e| match e {
        Error::Corrupt { detail, .. } => {
            Error::corrupt("savepoint manifest", format!("savepoint={id}: {detail}"))
        }
        other => other,
    })?;
    if m.savepoint_id != id {
        return Err(Error::corrupt(
            "savepoint manifest",
            format!(
                "stored under another id: name={id} content={}",
                m.savepoint_id
            ),
        ));
    }
    Ok(m)
}

/// Fetches and verifies every artifact of `state` and returns its entries
/// in key order. Checks: content address, artifact header and checksums,
/// entry counts, that every key is a state key of this operator and state
/// in the artifact's key groups and the key group of its key, and that keys
/// strictly increase.
pub fn read_state(
    store: &Arc<dyn CheckpointStore>,
    io: &Handle,
    manifest: &SavepointManifest,
    state: &SavepointState,
    limits: &DecodeLimits,
) -> Result<Vec<RawEntry>> {
    // Artifacts are fetched and checked in parallel, then joined in order.
    let parts: Vec<Vec<RawEntry>> = state
        .artifacts
        .par_iter()
        .map(|r| read_artifact(store, io, manifest, state, r, limits))
        .collect::<Result<_>>()?;
    let mut out: Vec<RawEntry> = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        if let (Some(last), Some(first)) = (out.last(), part.first())
            && last.0 >= first.0
        {
            return Err(Error::corrupt(
                "savepoint artifact",
                format!(
                    "savepoint={} operator={} state={}: keys out of order across artifacts",
                    manifest.savepoint_id, state.operator, state.state
                ),
            ));
        }
        out.extend(part);
    }
    Ok(out)
}

/// Fetches and verifies one artifact of `state` (see [`read_state`]).
fn read_artifact(
    store: &Arc<dyn CheckpointStore>,
    io: &Handle,
    manifest: &SavepointManifest,
    state: &SavepointState,
    r: &ArtifactRef,
    limits: &DecodeLimits,
) -> Result<Vec<RawEntry>> {
    let mut out = Vec::with_capacity(usize::try_from(r.entries).unwrap_or(0).min(1 << 20));
    visit_artifact(store, io, manifest, state, r, limits, &mut |_, k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    Ok(out)
}

/// The first and last key of an artifact.
type KeyBounds = Option<(Vec<u8>, Vec<u8>)>;

/// Called with each record of an artifact: its key decoded, its key and
/// its value.
type RecordVisitor<'a> = dyn FnMut(&StateKey<'_>, &[u8], &[u8]) -> Result<()> + 'a;

/// Fetches and verifies one artifact of `state` (see [`read_state`]),
/// calling `f` with each record in key order; returns its first and last
/// key.
fn visit_artifact(
    store: &Arc<dyn CheckpointStore>,
    io: &Handle,
    manifest: &SavepointManifest,
    state: &SavepointState,
    r: &ArtifactRef,
    limits: &DecodeLimits,
    f: &mut RecordVisitor<'_>,
) -> Result<KeyBounds> {
    {
        let s = store.clone();
        let id = r.id;
        let bytes = run_io(io, async move { s.get_artifact(id).await }).map_err(|e| match e {
            Error::NotFound(what) => Error::NotFound(format!(
                "artifact {id} of savepoint {} ({}/{}): {what}",
                manifest.savepoint_id, state.operator, state.state
            )),
            other => other,
        })?;
        let bad = |detail: String| {
            Error::corrupt(
                "savepoint artifact",
                format!(
                    "savepoint={} operator={} state={} artifact={id}: {detail}",
                    manifest.savepoint_id, state.operator, state.state
                ),
            )
        };
        if ArtifactId::of(&bytes) != id {
            return Err(bad("content does not match its address".into()));
        }
        let decoded = decode_artifact(&bytes, limits).map_err(|e| bad(e.to_string()))?;
        if decoded.header.entries != r.entries {
            return Err(bad(format!(
                "entry count: reference={} artifact={}",
                r.entries, decoded.header.entries
            )));
        }
        let (mut first, mut last): (Option<&[u8]>, Option<&[u8]>) = (None, None);
        for rec in decoded.records() {
            let (k, v) = rec.map_err(|e| bad(e.to_string()))?;
            let v = v.ok_or_else(|| bad("a delete in a savepoint".into()))?;
            let sk = StateKey::decode(k).map_err(|e| bad(e.to_string()))?;
            if sk.operator != state.operator || sk.state != state.state {
                return Err(bad(format!(
                    "record of another state: operator={} state={}",
                    sk.operator, sk.state
                )));
            }
            if !r.key_groups.contains(sk.key_group)
                || sk.key_group != key_group_for(sk.key, manifest.max_parallelism)
            {
                return Err(bad(format!(
                    "record in the wrong key group: key_group={}",
                    sk.key_group.0
                )));
            }
            if last.is_some_and(|last| last >= k) {
                return Err(bad("keys out of order".into()));
            }
            first.get_or_insert(k);
            last = Some(k);
            f(&sk, k, v)?;
        }
        Ok(first.zip(last).map(|(a, b)| (a.to_vec(), b.to_vec())))
    }
}

/// What [`load_blocks`] loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadedSavepoint {
    /// Entries kept.
    pub entries: u64,
    /// Bytes of keys and values kept.
    pub logical_bytes: u64,
    /// Whether keys were re-hashed (the target number of key groups differs
    /// from the savepoint's).
    pub rehashed: bool,
}

/// How [`load_blocks`] prepares a savepoint's entries.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Number of key groups of the backend loaded (0: the savepoint's).
    pub max_parallelism: u16,
    /// Key groups kept (of `max_parallelism`); all when `None`.
    pub keep: Option<KeyGroupRange>,
    /// Stored `(operator, state)` to the name it is loaded under.
    pub renames: BTreeMap<(String, String), (String, String)>,
    /// Stored `(operator, state)`s left out.
    pub dropped: std::collections::BTreeSet<(String, String)>,
    /// Migrations applied to every entry of the states they name (by the
    /// name the state is loaded under).
    pub migrations: MigrationPlan,
    /// Bounds of the artifact decoder.
    pub limits: DecodeLimits,
}

/// How the entries of one state are prepared.
struct StatePrep<'a> {
    /// The name it is loaded under, when renamed.
    renamed: Option<(&'a str, &'a str)>,
    /// Whether its entries are migrated.
    migrated: bool,
}

/// One artifact, verified and prepared.
struct Prepared {
    state: usize,
    artifact: usize,
    block: RecordBlock,
    entries: u64,
    bytes: u64,
    bounds: KeyBounds,
}

/// Reads, verifies and prepares the whole of `manifest` as `options` say
/// (re-hashing keys into another number of key groups, keeping some key
/// groups, renaming, dropping and migrating states) and hands the prepared
/// blocks, one per artifact, to `load` as they are ready: artifacts are
/// fetched, verified and prepared on every core (rayon), at most two per
/// thread ahead of `load`, so a restore runs while the savepoint is read.
///
/// A damaged artifact, a failed migration, or keys out of order across the
/// artifacts of a state (checked once every artifact was read) arrive as an
/// error item, after which the iterator ends; the savepoint is verified
/// whole only when the iterator is read to its end, which `load` must do
/// when it succeeds (an internal error otherwise). A caller that must not
/// load any part of a damaged savepoint collects the blocks first (or loads
/// them into a backend whose restore is atomic,
/// [`StateBackend::restore_is_atomic`](highwater_core::StateBackend::restore_is_atomic)).
/// A key kept under its stored name, key group and schema is loaded as it
/// is stored, without being decoded again.
pub fn load_blocks<R>(
    store: &Arc<dyn CheckpointStore>,
    io: &Handle,
    manifest: &SavepointManifest,
    options: &LoadOptions,
    load: impl FnOnce(&mut dyn Iterator<Item = Result<RecordBlock>>) -> Result<R>,
) -> Result<(R, LoadedSavepoint)> {
    let max_parallelism = match options.max_parallelism {
        0 => manifest.max_parallelism,
        n => n,
    };
    let rehashed = max_parallelism != manifest.max_parallelism;
    let preps: Vec<Option<StatePrep<'_>>> = manifest
        .states
        .iter()
        .map(|s| {
            let name = (s.operator.clone(), s.state.clone());
            if options.dropped.contains(&name) {
                return None;
            }
            let renamed = options
                .renames
                .get(&name)
                .map(|(o, st)| (o.as_str(), st.as_str()));
            let (o, st) = renamed.unwrap_or((&s.operator, &s.state));
            Some(StatePrep {
                renamed,
                migrated: options.migrations.migrates(o, st),
            })
        })
        .collect();
    let jobs: Vec<(usize, usize)> = manifest
        .states
        .iter()
        .enumerate()
        .filter(|(i, _)| preps[*i].is_some())
        .flat_map(|(i, s)| (0..s.artifacts.len()).map(move |j| (i, j)))
        .collect();
    let prepare = |(i, j): (usize, usize)| -> Result<Prepared> {
        let state = &manifest.states[i];
        let prep = preps[i]
            .as_ref()
            .ok_or_else(|| Error::Internal("a dropped state was scheduled".into()))?;
        let r = &state.artifacts[j];
        // Capacities from the manifest are hints, bounded.
        let mut block = RecordBlock::with_capacity(
            usize::try_from(r.entries).unwrap_or(0).min(1 << 20),
            usize::try_from(r.logical_bytes).unwrap_or(0).min(64 << 20),
        );
        let (mut entries, mut bytes) = (0u64, 0u64);
        let as_stored = !rehashed && prep.renamed.is_none() && !prep.migrated;
        let mut key = Vec::new();
        let bounds = visit_artifact(
            store,
            io,
            manifest,
            state,
            r,
            &options.limits,
            &mut |sk, k, v| {
                let kg = if rehashed {
                    key_group_for(sk.key, max_parallelism)
                } else {
                    sk.key_group
                };
                if options.keep.is_some_and(|r| !r.contains(kg)) {
                    return Ok(());
                }
                if as_stored {
                    entries += 1;
                    bytes += (k.len() + v.len()) as u64;
                    return block.push(k, Some(v));
                }
                let (operator, st) = prep.renamed.unwrap_or((sk.operator, sk.state));
                let to = StateKey {
                    key_group: kg,
                    operator,
                    state: st,
                    ..*sk
                };
                key.clear();
                to.encode_into(&mut key)?;
                let migrated = if prep.migrated {
                    options.migrations.migrate(&to, v)?
                } else {
                    None
                };
                let v = migrated.as_deref().unwrap_or(v);
                entries += 1;
                bytes += (key.len() + v.len()) as u64;
                block.push(&key, Some(v))
            },
        )?;
        Ok(Prepared {
            state: i,
            artifact: j,
            block,
            entries,
            bytes,
            bounds,
        })
    };

    let (tx, rx) =
        std::sync::mpsc::sync_channel::<Result<Prepared>>(rayon::current_num_threads().max(1) * 2);
    std::thread::scope(|scope| {
        let jobs = &jobs;
        let prepare = &prepare;
        let producer = scope.spawn(move || {
            // Stops at the first error or once the consumer is gone.
            let _ = jobs.par_iter().try_for_each_with(tx, |tx, &job| {
                let prepared = prepare(job);
                let failed = prepared.is_err();
                match tx.send(prepared) {
                    Ok(()) if !failed => Ok(()),
                    _ => Err(()),
                }
            });
        });
        let mut feed = Feed {
            rx,
            manifest,
            bounds: manifest
                .states
                .iter()
                .map(|s| vec![None; s.artifacts.len()])
                .collect(),
            expected: jobs.len(),
            received: 0,
            finished: false,
            failed: false,
            loaded: LoadedSavepoint {
                rehashed,
                ..LoadedSavepoint::default()
            },
        };
        let result = load(&mut feed);
        let (finished, loaded) = (feed.finished, feed.loaded);
        // Dropping the receiver stops the workers.
        drop(feed);
        let joined = producer.join();
        let r = result?;
        joined.map_err(|_| Error::Internal("a savepoint decode worker panicked".into()))?;
        if !finished {
            return Err(Error::Internal(
                "the savepoint loader succeeded without reading the savepoint to its end".into(),
            ));
        }
        Ok((r, loaded))
    })
}

/// The blocks [`load_blocks`] hands to its loader, as they arrive.
struct Feed<'a> {
    rx: std::sync::mpsc::Receiver<Result<Prepared>>,
    manifest: &'a SavepointManifest,
    /// Per state, per artifact: its first and last key once read.
    bounds: Vec<Vec<KeyBounds>>,
    expected: usize,
    received: usize,
    /// Every artifact arrived and the savepoint checked out.
    finished: bool,
    /// An error was handed out: nothing follows it.
    failed: bool,
    loaded: LoadedSavepoint,
}

impl Feed<'_> {
    /// Checks, once every artifact was read, that the artifacts of each
    /// state hold ascending, disjoint key ranges in their stored order.
    fn check(&self) -> Result<()> {
        if self.received != self.expected {
            return Err(Error::Internal(format!(
                "the savepoint decode workers stopped after {} of {} artifacts",
                self.received, self.expected
            )));
        }
        for (state, bounds) in self.manifest.states.iter().zip(&self.bounds) {
            let bounds: Vec<&(Vec<u8>, Vec<u8>)> = bounds.iter().flatten().collect();
            if !bounds.windows(2).all(|w| w[0].1 < w[1].0) {
                return Err(Error::corrupt(
                    "savepoint artifact",
                    format!(
                        "savepoint={} operator={} state={}: keys out of order across artifacts",
                        self.manifest.savepoint_id, state.operator, state.state
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Iterator for Feed<'_> {
    type Item = Result<RecordBlock>;

    fn next(&mut self) -> Option<Result<RecordBlock>> {
        if self.finished || self.failed {
            return None;
        }
        match self.rx.recv() {
            Ok(Ok(p)) => {
                self.received += 1;
                self.loaded.entries += p.entries;
                self.loaded.logical_bytes += p.bytes;
                if let Some(slot) = self
                    .bounds
                    .get_mut(p.state)
                    .and_then(|s| s.get_mut(p.artifact))
                {
                    *slot = p.bounds;
                }
                Some(Ok(p.block))
            }
            Ok(Err(e)) => {
                self.failed = true;
                Some(Err(e))
            }
            Err(_) => match self.check() {
                // Every worker is done.
                Ok(()) => {
                    self.finished = true;
                    None
                }
                Err(e) => {
                    self.failed = true;
                    Some(Err(e))
                }
            },
        }
    }
}

/// One entry of a savepoint with its key split into its parts: the library
/// view of a savepoint, for tools that read, transform or bootstrap state
/// (see [`SavepointReader`] and [`SavepointEntry::to_raw`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SavepointEntry {
    /// Operator owning the state.
    pub operator: String,
    /// State name.
    pub state: String,
    /// The postcard encoding of the user's key.
    pub key: Vec<u8>,
    /// The postcard encoding of the namespace; empty when none is used.
    pub namespace: Vec<u8>,
    /// Map state only: the postcard encoding of the map key.
    pub user_key: Option<Vec<u8>>,
    /// Expiry, ms since the Unix epoch, when the state has a TTL (for a
    /// list whose elements expire one by one, the latest of theirs).
    pub expires_at_ms: Option<u64>,
    /// The postcard encoding of the value (for a list, its elements one
    /// after the other; with `element_expiry`, each element prefixed by its
    /// expiry and length, as in the stored value envelope's tag 2).
    pub value: Vec<u8>,
    /// True for a list state with a TTL, whose elements expire one by one.
    pub element_expiry: bool,
}

/// The marker byte in front of a map state's user key (see `MapState`).
const MAP_KEY_MARKER: u8 = 0;

fn strict<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    let (v, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| Error::serialization(format!("decode {what}"), e))?;
    if !rest.is_empty() {
        return Err(Error::serialization(
            format!("decode {what}"),
            format!("trailing bytes after the value: len={}", rest.len()),
        ));
    }
    Ok(v)
}

impl SavepointEntry {
    /// Splits a stored entry (encoded state key, envelope).
    pub fn from_raw(key: &[u8], value: &[u8]) -> Result<SavepointEntry> {
        let sk = StateKey::decode(key)?;
        let user_key = match sk.user_key.split_first() {
            None => None,
            Some((&MAP_KEY_MARKER, uk)) => Some(uk.to_vec()),
            Some((m, _)) => {
                return Err(Error::corrupt(
                    "state key",
                    format!("map key marker is {m}, not {MAP_KEY_MARKER}"),
                ));
            }
        };
        let env = Envelope::decode(value)?;
        Ok(SavepointEntry {
            operator: sk.operator.to_string(),
            state: sk.state.to_string(),
            key: sk.key.to_vec(),
            namespace: sk.namespace.to_vec(),
            user_key,
            expires_at_ms: env.expires_at_ms,
            value: env.payload.to_vec(),
            element_expiry: env.elements,
        })
    }

    /// The stored form (encoded state key, envelope), with the key group
    /// of the key under `max_parallelism`.
    pub fn to_raw(&self, max_parallelism: u16) -> Result<RawEntry> {
        if max_parallelism == 0 {
            return Err(Error::InvalidArgument("max_parallelism is zero".into()));
        }
        let mut user_key = Vec::new();
        if let Some(uk) = &self.user_key {
            user_key.push(MAP_KEY_MARKER);
            user_key.extend_from_slice(uk);
        }
        let key = StateKey {
            key_group: key_group_for(&self.key, max_parallelism),
            operator: &self.operator,
            state: &self.state,
            key: &self.key,
            namespace: &self.namespace,
            user_key: &user_key,
        }
        .encode()?;
        let mut value = Vec::with_capacity(self.value.len() + 9);
        if self.element_expiry {
            let env = Envelope {
                expires_at_ms: self.expires_at_ms,
                payload: &self.value,
                elements: true,
            };
            let elements = env.iter_elements().collect::<Result<Vec<_>>>()?;
            Envelope::encode_elements_into(elements, &mut value)?;
        } else {
            Envelope::encode_into(self.expires_at_ms, &self.value, &mut value);
        }
        Ok((key, value))
    }

    /// The key as a `K` (every byte must be used).
    pub fn decode_key<K: serde::de::DeserializeOwned>(&self) -> Result<K> {
        strict("savepoint key", &self.key)
    }

    /// The value as a `V` (every byte must be used).
    pub fn decode_value<V: serde::de::DeserializeOwned>(&self) -> Result<V> {
        strict("savepoint value", &self.value)
    }

    /// A list state's value as its elements.
    pub fn decode_list<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut rest: &[u8] = &self.value;
        while !rest.is_empty() {
            let (item, tail) = postcard::take_from_bytes::<T>(rest)
                .map_err(|e| Error::serialization("decode savepoint list element", e))?;
            out.push(item);
            rest = tail;
        }
        Ok(out)
    }
}

/// Reads a savepoint entry by entry, verified: the library API behind
/// `highwater export` and `diff`.
pub struct SavepointReader {
    store: Arc<dyn CheckpointStore>,
    io: Handle,
    manifest: SavepointManifest,
    limits: DecodeLimits,
}

impl std::fmt::Debug for SavepointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavepointReader")
            .field("store", &self.store.name())
            .field("savepoint", &self.manifest.savepoint_id)
            .finish_non_exhaustive()
    }
}

impl SavepointReader {
    /// Opens savepoint `id` of `store` (the newest when `None`); I/O runs
    /// on `io`.
    pub fn open(
        store: Arc<dyn CheckpointStore>,
        io: Handle,
        id: Option<CheckpointId>,
    ) -> Result<SavepointReader> {
        let manifest = load_savepoint(&store, &io, id)?;
        Ok(SavepointReader {
            store,
            io,
            manifest,
            limits: DecodeLimits::default(),
        })
    }

    /// The savepoint's manifest.
    pub fn manifest(&self) -> &SavepointManifest {
        &self.manifest
    }

    /// The verified entries of one state, in key order.
    pub fn state_entries(&self, state: &SavepointState) -> Result<Vec<SavepointEntry>> {
        read_state(&self.store, &self.io, &self.manifest, state, &self.limits)?
            .iter()
            .map(|(k, v)| SavepointEntry::from_raw(k, v))
            .collect()
    }

    /// Every entry, state by state (sorted by operator and state), each
    /// state read and verified when the iterator reaches it.
    pub fn entries(&self) -> impl Iterator<Item = Result<SavepointEntry>> + '_ {
        self.manifest.states.iter().flat_map(move |s| {
            let batch: Vec<Result<SavepointEntry>> = match self.state_entries(s) {
                Ok(v) => v.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            batch
        })
    }
}
