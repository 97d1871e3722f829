//! The synchronous state backend trait: where live keyed state is read and
//! written on the hot path.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::block::RecordBlock;
use crate::error::Result;
use crate::keygroup::KeyGroupRange;
use crate::manifest::{ArtifactId, ArtifactRef};

/// One change in a [`WriteBatch`] or a change snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Set `key` to `value`.
    Put {
        /// Encoded state key.
        key: Vec<u8>,
        /// Stored value (an envelope, see [`crate::ttl`]).
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// Encoded state key.
        key: Vec<u8>,
    },
}

impl Mutation {
    /// The key the mutation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Mutation::Put { key, .. } | Mutation::Delete { key } => key,
        }
    }
}

/// Mutations applied atomically with respect to snapshots: a snapshot sees
/// all of a batch or none of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    mutations: Vec<Mutation>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.mutations.push(Mutation::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.mutations.push(Mutation::Delete { key: key.into() });
        self
    }

    /// Number of mutations.
    pub fn len(&self) -> usize {
        self.mutations.len()
    }

    /// True when the batch holds no mutation.
    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty()
    }

    /// The mutations, in order.
    pub fn mutations(&self) -> &[Mutation] {
        &self.mutations
    }

    /// Consumes the batch.
    pub fn into_mutations(self) -> Vec<Mutation> {
        self.mutations
    }
}

/// What a snapshot contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SnapshotKind {
    /// Every live entry.
    Full,
    /// The entries changed since the previous snapshot: puts with their
    /// current value and deletes.
    Changes,
}

/// The visitor of [`StateSnapshot::for_each_in_partition`]: called with each
/// key and its value (`None` for a delete in a change snapshot).
pub type EntryVisitor<'a> = dyn FnMut(&[u8], Option<&[u8]>) -> Result<()> + 'a;

/// The visitor of [`StateSnapshot::for_each_borrowed`]: like
/// [`EntryVisitor`], with slices that stay valid as long as the snapshot
/// (`'s`) does.
pub type BorrowedEntryVisitor<'s, 'a> = dyn FnMut(&'s [u8], Option<&'s [u8]>) -> Result<()> + 'a;

/// An immutable, consistent view of a backend's state at one moment.
///
/// A snapshot is taken on the processing thread and read later on background
/// threads while processing continues; it must not change afterwards. Entries
/// are split into [`partitions`](StateSnapshot::partitions) that can be read
/// in parallel; together they hold each key exactly once.
pub trait StateSnapshot: Send + Sync {
    /// Full state or changes since the previous snapshot.
    fn kind(&self) -> SnapshotKind;

    /// Number of independently readable partitions.
    fn partitions(&self) -> usize;

    /// Visits every entry of `partition` in unspecified order. For a
    /// [`SnapshotKind::Changes`] snapshot a deleted key is reported with
    /// `None`. Stops early and returns the first error `f` returns.
    fn for_each_in_partition(&self, partition: usize, f: &mut EntryVisitor<'_>) -> Result<()>;

    /// Visits every entry of `partition` as
    /// [`for_each_in_partition`](StateSnapshot::for_each_in_partition) does,
    /// with key and value slices borrowed from the snapshot itself, so that
    /// a reader can keep references to them instead of copying the bytes.
    /// Returns `Ok(false)` without visiting anything when the backend
    /// cannot lend its bytes (the default); callers then use
    /// `for_each_in_partition`.
    fn for_each_borrowed<'s>(
        &'s self,
        partition: usize,
        f: &mut BorrowedEntryVisitor<'s, '_>,
    ) -> Result<bool> {
        let _ = (partition, f);
        Ok(false)
    }

    /// Approximate number of entries, for sizing buffers and progress.
    fn approximate_entries(&self) -> usize;

    /// The backend's own checkpoint files when this snapshot is a native
    /// checkpoint (see [`NativeCheckpoints::native_snapshot`]); `None` for
    /// ordinary snapshots.
    fn native(&self) -> Option<&NativeCheckpoint> {
        None
    }
}

/// One file of a [`NativeCheckpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeFile {
    /// File name inside the checkpoint directory (no directory part).
    pub name: String,
    /// Length in bytes.
    pub len: u64,
    /// Entries the file holds, when the backend knows (SST files); 0
    /// otherwise.
    pub entries: u64,
    /// A name for these exact bytes, when the file is immutable: a file
    /// with the same identity in a later checkpoint of the same backend
    /// holds the same bytes, so the checkpointer takes its artifact from
    /// the previous checkpoint without reading or hashing it again
    /// (RocksDB: the database's identity, the SST file's name, which holds
    /// its number, and its size). `None` for files that are rewritten
    /// (RocksDB's MANIFEST, OPTIONS, CURRENT copies): those are read every
    /// time.
    pub identity: Option<String>,
}

/// A checkpoint a backend wrote in its own file format (RocksDB: hard links
/// of its immutable SST files plus copies of its small metadata files).
///
/// The checkpointer uploads the files as content-addressed artifacts, so
/// files already stored by an earlier checkpoint are not uploaded again.
/// The directory belongs to the snapshot that carries it and is removed
/// when that snapshot is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeCheckpoint {
    /// The backend's name ([`StateBackend::name`]); a native checkpoint is
    /// restored only by the same kind of backend.
    pub format: &'static str,
    /// Directory holding the files.
    pub dir: PathBuf,
    /// Every file of the checkpoint.
    pub files: Vec<NativeFile>,
}

/// Fetched files of a native checkpoint being restored: names and
/// contents, each already checked against its content address.
pub type NativeFiles<'a> = dyn Iterator<Item = Result<(String, Bytes)>> + 'a;

/// A file of a native checkpoint being restored, as its manifest records
/// it: enough for a backend to recognise a copy it still holds locally
/// before anything is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeFileRef {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Length in bytes.
    pub len: u64,
    /// Content address of the file's bytes (xxh3-128,
    /// [`ArtifactId::of`]): a local file of the same length and id holds
    /// the same bytes.
    pub id: ArtifactId,
}

impl NativeFileRef {
    /// The file a native checkpoint's artifact stores (a native artifact's
    /// operator is its file name).
    pub fn of_artifact(artifact: &ArtifactRef) -> NativeFileRef {
        NativeFileRef {
            name: artifact.operator.clone(),
            len: artifact.stored_bytes,
            id: artifact.id,
        }
    }
}

/// The files of a native checkpoint being restored: the list the manifest
/// records, and a way to fetch the ones the backend does not already hold.
///
/// The recovery engine implements it over a checkpoint store (a few files
/// fetched ahead, each verified against its content address);
/// [`NativeFilesInMemory`] holds files in memory, for tests and tools.
pub trait NativeSource {
    /// Every file of the checkpoint, in the manifest's order.
    fn files(&self) -> &[NativeFileRef];

    /// Fetches the files at `wanted` (indices into [`files`](Self::files),
    /// ascending), in that order, each verified. The iterator stops after
    /// the first error it yields.
    fn fetch(&mut self, wanted: Vec<usize>) -> Box<NativeFiles<'_>>;
}

/// A native checkpoint's files held in memory, each with its bytes or the
/// error fetching it gives; remembers which files were fetched.
#[derive(Debug, Default)]
pub struct NativeFilesInMemory {
    refs: Vec<NativeFileRef>,
    data: Vec<Option<Result<Bytes>>>,
    fetched: Vec<String>,
}

impl NativeFilesInMemory {
    /// Files by name and bytes; lengths and ids are computed.
    pub fn new(files: impl IntoIterator<Item = (String, Bytes)>) -> NativeFilesInMemory {
        NativeFilesInMemory::with_results(files.into_iter().map(|(name, bytes)| {
            let r = NativeFileRef {
                name,
                len: bytes.len() as u64,
                id: ArtifactId::of(&bytes),
            };
            (r, Ok(bytes))
        }))
    }

    /// Files as listed, each with what fetching it gives (an error stands
    /// for a fetch that fails).
    pub fn with_results(
        files: impl IntoIterator<Item = (NativeFileRef, Result<Bytes>)>,
    ) -> NativeFilesInMemory {
        let (refs, data) = files.into_iter().map(|(r, d)| (r, Some(d))).unzip();
        NativeFilesInMemory {
            refs,
            data,
            fetched: Vec::new(),
        }
    }

    /// Names of the files fetched so far, in order.
    pub fn fetched(&self) -> &[String] {
        &self.fetched
    }
}

impl NativeSource for NativeFilesInMemory {
    fn files(&self) -> &[NativeFileRef] {
        &self.refs
    }

    fn fetch(&mut self, wanted: Vec<usize>) -> Box<NativeFiles<'_>> {
        let NativeFilesInMemory {
            refs,
            data,
            fetched,
        } = self;
        let mut failed = false;
        Box::new(wanted.into_iter().map_while(move |i| {
            if failed {
                return None;
            }
            let item = match (refs.get(i), data.get_mut(i).and_then(Option::take)) {
                (Some(r), Some(d)) => d.map(|bytes| {
                    fetched.push(r.name.clone());
                    (r.name.clone(), bytes)
                }),
                _ => Err(crate::Error::Internal(format!(
                    "native file {i} of {} asked for twice or not listed",
                    refs.len()
                ))),
            };
            failed = item.is_err();
            Some(item)
        }))
    }
}

/// Size statistics of a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Number of live entries (may include expired entries not yet reclaimed).
    pub entries: u64,
    /// Bytes of keys and values held.
    pub bytes: u64,
    /// Bytes of the backend's own storage areas (arenas, blocks) in use,
    /// dead records included; 0 when the backend does not report it.
    pub arena_bytes: u64,
    /// Bytes of [`arena_bytes`](Self::arena_bytes) that hold live records;
    /// the rest is reclaimable by compaction. 0 when not reported.
    pub live_bytes: u64,
    /// Bytes of the backend's in-memory indexes; 0 when not reported.
    pub index_bytes: u64,
}

/// Where live keyed state is read and written.
///
/// Keys are encoded [`StateKey`](crate::StateKey)s and values are
/// [`Envelope`](crate::Envelope)s; typed access goes through the handles in
/// [`crate::state`]. All methods are synchronous: they are called on the
/// processing thread for every event.
///
/// Implementations must track which keys changed since the last snapshot so
/// that a [`SnapshotKind::Changes`] snapshot costs O(changes).
pub trait StateBackend: Send + Sync + 'static {
    /// A short name for errors and metrics (`memory`, `rocksdb`, …).
    fn name(&self) -> &'static str;

    /// Reads a value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Writes a value.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Deletes a value; deleting a missing key is not an error.
    fn delete(&self, key: &[u8]) -> Result<()>;

    /// Applies a batch atomically with respect to snapshots.
    fn write_batch(&self, batch: WriteBatch) -> Result<()>;

    /// All entries whose key starts with `prefix`, sorted by key.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// All entries with `start <= key < end`, sorted by key.
    fn scan_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Takes a consistent snapshot and starts a new change-tracking epoch:
    /// the next [`SnapshotKind::Changes`] snapshot reports changes made after
    /// this call, whatever the kind of this one.
    ///
    /// A backend that no longer knows what changed (its change tracking is
    /// bounded and the epoch passed the bound) may answer a `Changes`
    /// request with a full snapshot; callers read the answer's
    /// [`kind`](StateSnapshot::kind), never assume it.
    ///
    /// This runs on the processing thread; it must not block writers for
    /// longer than a few milliseconds whatever the state size.
    fn snapshot(&self, kind: SnapshotKind) -> Result<Arc<dyn StateSnapshot>>;

    /// Replaces all state with the puts of `blocks` (a later put of a key
    /// replaces an earlier one; deletes are ignored) and starts a new change-tracking
    /// epoch. On error the backend may hold part of the entries; the caller
    /// retries with another source or clears the backend.
    ///
    /// Blocks keep many records in one buffer ([`RecordBlock`]), so a
    /// restore of millions of entries allocates per block, not per entry.
    fn restore(&self, blocks: &mut dyn Iterator<Item = Result<RecordBlock>>) -> Result<()>;

    /// Whether [`restore`](Self::restore) replaces the live state only once
    /// it has read its source to the end without error, so that a failing
    /// source (a damaged checkpoint or savepoint) leaves the live state as
    /// it was. A caller that must not lose live state to a damaged source
    /// reads the source whole before restoring into a backend that answers
    /// `false` (the default: the safe answer for a backend, or a wrapper,
    /// that does not say).
    fn restore_is_atomic(&self) -> bool {
        false
    }

    /// A restore that several threads feed at once ([`BulkRestore`]), if
    /// the backend takes one (the memory backend does), else `None`. The
    /// recovery engine then has every decoding thread load what it
    /// decodes, where otherwise one thread streams blocks into
    /// [`restore`](Self::restore).
    ///
    /// Required, like [`native`](Self::native), so that a wrapper says what
    /// it does with the capability of the backend it wraps.
    fn bulk_restore(&self) -> Option<Box<dyn BulkRestore + '_>>;

    /// Removes all state and starts a new change-tracking epoch.
    fn clear(&self) -> Result<()>;

    /// Size statistics.
    fn stats(&self) -> BackendStats;

    /// The backend's native checkpoints, if it writes them (RocksDB: its
    /// own SST files), else `None`.
    ///
    /// Required, so that a wrapper around another backend (the write-ahead
    /// log's `LoggedBackend`, a test's fault injector) must say what it
    /// does with the capability of the backend it wraps rather than lose
    /// it silently through a default.
    fn native(&self) -> Option<&dyn NativeCheckpoints>;
}

/// A restore fed from several threads at once
/// ([`StateBackend::bulk_restore`]): each thread takes a [`BulkLoader`] and
/// puts entries into it, then [`commit`](Self::commit) replaces the
/// backend's whole state with every entry put and starts a new
/// change-tracking epoch, as [`StateBackend::restore`] does.
///
/// Nothing changes before `commit`: a bulk restore dropped uncommitted (a
/// damaged source, a timeout) leaves the live state as it was.
///
/// Keys put through different loaders must be distinct (the recovery
/// engine loads each key-group range, folded, through one loader); within
/// one loader a later put of a key replaces an earlier one. A key put
/// through two loaders ends with one of the two values (which one is not
/// specified), never both.
pub trait BulkRestore: Sync {
    /// A loader for one thread. What it took is handed to this restore
    /// when it is dropped.
    fn loader(&self) -> Box<dyn BulkLoader + '_>;

    /// Replaces the live state with what the loaders took. The loaders
    /// borrow this restore, so all of them are gone by now.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Puts entries into a [`BulkRestore`], from one thread.
pub trait BulkLoader: Send {
    /// Adds an entry (a later put of the same key through this loader
    /// replaces it). An entry the backend cannot hold is an error; the
    /// caller then drops the restore uncommitted.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
}

/// The bulk restore of a wrapper around another backend: loaders are the
/// wrapped backend's, and the commit runs the wrapper's `commit` around
/// the wrapped one (a check before it, bookkeeping after it).
pub struct BulkThrough<'a> {
    inner: Box<dyn BulkRestore + 'a>,
    commit: BulkCommit<'a>,
}

/// What a [`BulkThrough`] does to commit: given the wrapped restore.
pub type BulkCommit<'a> =
    Box<dyn FnOnce(Box<dyn BulkRestore + 'a>) -> Result<()> + Send + Sync + 'a>;

impl<'a> BulkThrough<'a> {
    /// Wraps `inner`, committed through `commit`.
    pub fn new(inner: Box<dyn BulkRestore + 'a>, commit: BulkCommit<'a>) -> BulkThrough<'a> {
        BulkThrough { inner, commit }
    }
}

impl BulkRestore for BulkThrough<'_> {
    fn loader(&self) -> Box<dyn BulkLoader + '_> {
        self.inner.loader()
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let BulkThrough { inner, commit } = *self;
        commit(inner)
    }
}

/// The capability of a backend that checkpoints in its own file format:
/// reached through [`StateBackend::native`].
///
/// The checkpointer uploads a native checkpoint's files as content-addressed
/// artifacts (a file already stored is not uploaded again) and commits a
/// manifest with one [`LayerKind::Native`](crate::LayerKind::Native) layer;
/// the recovery engine fetches and verifies the files and hands them to
/// [`restore_native`](Self::restore_native) of the same kind of backend.
pub trait NativeCheckpoints: Send + Sync {
    /// The format name recorded with the checkpoint
    /// ([`NativeCheckpoint::format`]); only a backend with the same format
    /// restores it.
    fn format(&self) -> &'static str;

    /// Takes a native checkpoint. Like [`StateBackend::snapshot`] with
    /// [`SnapshotKind::Full`] it is a consistent cut and starts a new
    /// change-tracking epoch; the returned snapshot answers
    /// [`StateSnapshot::native`] with its files (and can still be read
    /// entry by entry).
    fn native_snapshot(&self) -> Result<Arc<dyn StateSnapshot>>;

    /// Replaces all state with the native checkpoint whose files `files`
    /// lists, keeping only the key groups in `keep` (all when `None`; a
    /// narrower range is a rescaling restore), and starts a new
    /// change-tracking epoch. A backend fetches only the files it does not
    /// hold locally with the same length and content address (RocksDB's
    /// local recovery). On error the live state is unchanged.
    fn restore_native(
        &self,
        files: &mut dyn NativeSource,
        keep: Option<KeyGroupRange>,
    ) -> Result<()>;

    /// Told after a native checkpoint committed: the content address of
    /// each file it lists (the snapshot's names). A backend may remember
    /// them for its local files, so that a later restart's local recovery
    /// takes those files without reading them. Nothing by default.
    fn native_stored(&self, files: &[NativeFileRef]) {
        let _ = files;
    }
}
