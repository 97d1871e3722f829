//! The RocksDB state backend.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use highwater_core::ttl::Envelope;
use highwater_core::{
    ArtifactId, BackendStats, Error, KeyGroupRange, Mutation, NativeCheckpoint, NativeCheckpoints,
    NativeFile, NativeFileRef, NativeSource, RecordBlock, Result, SnapshotKind, StateBackend,
    StateSnapshot, WriteBatch, valid_native_file_name,
};
use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, DB, Options, ReadOptions, WriteBufferManager, WriteOptions,
};

use crate::changes::{ChangeLog, sorted_unique};
use crate::config::{Compression, RocksDbConfig};
use crate::known::{self, Stamp};
use crate::metrics::{Counters, RocksDbMetrics};
use crate::snapshot::{ChangesSnapshot, FullSnapshot, NativeSnapshot, Snap, take_snapshot};

/// Number of partitions of a full snapshot (key-group ranges read in
/// parallel by the checkpoint encoder).
const FULL_PARTITIONS: usize = 8;
/// Number of partitions of a changes snapshot.
const CHANGES_PARTITIONS: usize = 4;
/// Shards of the changed-key log (fewer lock collisions between writers).
const CHANGE_SHARDS: usize = 16;
/// Entries per write batch during a restore.
const RESTORE_BATCH: usize = 4096;
/// Every key starting with these bytes is above any key group (key groups
/// are below 2^15), so `[.., FAR)` ranges plus a scan from `FAR` reach
/// every byte string.
pub(crate) const FAR: &[u8] = &[0xff, 0xff, 0xff, 0xff];

/// Wraps a RocksDB error with what the backend was doing.
#[derive(Debug)]
pub(crate) struct RocksError {
    op: String,
    source: rocksdb::Error,
}

impl std::fmt::Display for RocksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.source)
    }
}

impl std::error::Error for RocksError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Converts a RocksDB error into a backend error naming the operation, of
/// the kind [`classify`](crate::classify) gives it.
pub(crate) fn rocks(op: impl Into<String>) -> impl FnOnce(rocksdb::Error) -> Error {
    move |source| {
        let op = op.into();
        Error::backend(
            crate::classify(&source),
            "rocksdb",
            op.clone(),
            RocksError { op, source },
        )
    }
}

/// Removes a directory of the backend's working path when dropped, unless
/// told to keep it.
#[derive(Debug)]
pub(crate) struct DirGuard {
    path: PathBuf,
    keep: AtomicBool,
}

impl DirGuard {
    pub(crate) fn new(path: PathBuf) -> DirGuard {
        DirGuard {
            path,
            keep: AtomicBool::new(false),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if self.keep.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove a rocksdb working directory");
        }
    }
}

/// One open database. `clear`, `restore` and `restore_native` open a new
/// generation and swap it in; the old one closes (and its directory is
/// removed) when the last snapshot reading it is dropped.
pub(crate) struct Generation {
    // Field order matters: the database closes before its directory goes.
    pub(crate) db: DB,
    dir: DirGuard,
}

struct Live {
    generation: Arc<Generation>,
}

/// One live SST file of a [`RocksDbBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSst {
    /// File name in the database directory.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// LSM level (0 holds flushed memtables).
    pub level: u32,
}

/// A [`StateBackend`] on RocksDB, for state larger than memory.
///
/// - **Layout**: one column family; keys are highwater's encoded state keys,
///   whose first two bytes are the key group (big-endian), so a key-group
///   range is one contiguous key range (rescaling deletes whole ranges) and
///   one operator's state for a key group is one contiguous prefix.
/// - **Snapshots**: a full snapshot is a RocksDB snapshot (a sequence
///   number; no copy, no flush); a changes snapshot is the set of keys
///   written since the previous snapshot plus a RocksDB snapshot to read
///   their values from. A snapshot keeps its database open and readable
///   after the backend is dropped.
/// - **Native checkpoints**: [`native_snapshot`](NativeCheckpoints::native_snapshot)
///   writes a RocksDB checkpoint (hard links to the immutable SST files and
///   copies of MANIFEST, OPTIONS and CURRENT) for the checkpointer to
///   upload; files already stored are not uploaded again.
/// - **TTL**: a compaction filter drops entries whose envelope has expired.
///
/// Writers hold a shared lock while they write and record the key; a
/// snapshot holds it exclusively only while it swaps the changed-key set and
/// takes the RocksDB snapshot (microseconds), so a snapshot sees each batch
/// entirely or not at all.
pub struct RocksDbBackend {
    config: RocksDbConfig,
    cache: Cache,
    options: Options,
    write_options: WriteOptions,
    live: RwLock<Live>,
    changed: Box<[Mutex<ChangeLog>]>,
    /// A shard's log gave up in this epoch: the epoch's changes are not
    /// known, and a changes snapshot is answered with a full one.
    changes_lost: AtomicBool,
    /// The `stat` stamps of the files of the last native checkpoint, with
    /// the database directory they are in, until the checkpoint commits
    /// and their content addresses are known ([`known`]).
    stamped: Mutex<Option<(PathBuf, HashMap<String, Stamp>)>>,
    next_dir: AtomicU64,
    counters: Counters,
}

impl Drop for RocksDbBackend {
    /// With local recovery the live database's directory stays, for the
    /// next open to take files from.
    fn drop(&mut self) {
        if self.config.local_recovery {
            self.read()
                .generation
                .dir
                .keep
                .store(true, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for RocksDbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbBackend")
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl RocksDbBackend {
    /// Opens a backend with the default configuration in `path`, which is
    /// wiped first (see [`RocksDbConfig::path`]).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::with_config(RocksDbConfig::new(path))
    }

    /// Opens a backend with `config`. Anything under `config.path` is
    /// removed first: live state comes from checkpoints.
    pub fn with_config(config: RocksDbConfig) -> Result<Self> {
        config.validate()?;
        let root = &config.path;
        prepare_working_dir(root, config.local_recovery)?;
        let cache = Cache::new_lru_cache(config.block_cache_capacity());
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(!config.rocksdb_wal);
        let options = db_options(&config, &cache);
        let generation = open_generation(root.join("db-000000"), &options)?;
        let backend = RocksDbBackend {
            cache,
            options,
            write_options,
            live: RwLock::new(Live {
                generation: Arc::new(generation),
            }),
            changed: (0..CHANGE_SHARDS)
                .map(|_| Mutex::new(ChangeLog::new(config.change_tracking_bytes / CHANGE_SHARDS)))
                .collect(),
            changes_lost: AtomicBool::new(false),
            stamped: Mutex::new(None),
            next_dir: AtomicU64::new(1),
            counters: Counters::default(),
            config,
        };
        tracing::info!(path = %backend.config.path.display(), "rocksdb backend opened");
        Ok(backend)
    }

    /// The configuration.
    pub fn config(&self) -> &RocksDbConfig {
        &self.config
    }

    fn fresh_dir(&self, prefix: &str) -> PathBuf {
        let n = self.next_dir.fetch_add(1, Ordering::Relaxed);
        self.config.path.join(format!("{prefix}-{n:06}"))
    }

    /// Opens an empty database in a new directory.
    fn new_generation(&self) -> Result<Generation> {
        open_generation(self.fresh_dir("db"), &self.options)
    }

    fn read(&self) -> RwLockReadGuard<'_, Live> {
        // A panic while holding the lock cannot leave a half-swapped
        // generation: the swap is one assignment.
        self.live.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, ChangeLog> {
        let i = (xxhash_rust::xxh3::xxh3_64(key) as usize) % CHANGE_SHARDS;
        self.changed[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `key` changed, unless this epoch's changes are already
    /// lost. Called with the live lock held shared, so no snapshot starts a
    /// new epoch meanwhile.
    fn mark(&self, key: &[u8]) {
        if self.changes_lost.load(Ordering::Relaxed) {
            return;
        }
        if !self.shard(key).push(key) {
            self.changes_lost.store(true, Ordering::Relaxed);
            tracing::debug!(
                cap = self.config.change_tracking_bytes,
                "rocksdb change tracking gave up for this epoch; the next changes snapshot is full"
            );
            // The other shards' logs are of no use in this epoch either.
            self.forget_logs();
        }
    }

    /// Takes every shard's log of changed keys, starting a new epoch; `None`
    /// when the epoch's changes were lost. Called with the live lock held
    /// exclusively; O(shards).
    fn take_changes(&self) -> Option<Vec<Vec<u8>>> {
        let logs = self
            .changed
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).take())
            .collect();
        (!self.changes_lost.swap(false, Ordering::Relaxed)).then_some(logs)
    }

    fn forget_logs(&self) {
        for shard in self.changed.iter() {
            shard.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
    }

    fn full_snapshot(&self, snap: Snap) -> Arc<dyn StateSnapshot> {
        Arc::new(FullSnapshot::new(
            snap,
            self.config.max_parallelism,
            FULL_PARTITIONS,
        ))
    }

    /// Swaps in `generation` and starts a new epoch; the old generation
    /// closes when its last snapshot goes.
    fn install(&self, generation: Generation) {
        let mut live = self.write();
        live.generation = Arc::new(generation);
        // A new epoch: changes count from the restored state.
        drop(self.take_changes());
        drop(live);
        // The state now comes from elsewhere: what local recovery set
        // aside is of no further use (a restore linked what it took).
        let local = self.config.path.join(LOCAL_DIR);
        if let Err(e) = std::fs::remove_dir_all(&local)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %local.display(), error = %e, "could not remove the files set aside for local recovery");
        }
    }

    /// The SST and blob files local recovery set aside, by name (a name
    /// may appear in several earlier generations), each with what its
    /// directory's list records for it.
    fn local_files(&self) -> HashMap<String, Vec<Candidate>> {
        let mut found: HashMap<String, Vec<Candidate>> = HashMap::new();
        let Ok(generations) = std::fs::read_dir(self.config.path.join(LOCAL_DIR)) else {
            return found;
        };
        for generation in generations.flatten() {
            let dir = generation.path();
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut recorded = known::load(&dir);
            for file in files.flatten() {
                if let Ok(name) = file.file_name().into_string()
                    && immutable_file(&name)
                {
                    let recorded = recorded.remove(&name);
                    found.entry(name).or_default().push(Candidate {
                        path: file.path(),
                        recorded,
                    });
                }
            }
        }
        found
    }

    /// Hard-links into `dir` the listed files that a set-aside file holds
    /// with the same length and content address (recorded for an unchanged
    /// file, or else read and hashed); the indices of the files still to
    /// fetch, and the number and bytes of those linked.
    fn link_local_files(&self, dir: &Path, listed: &[NativeFileRef]) -> (Vec<usize>, usize, u64) {
        let local = if self.config.local_recovery {
            self.local_files()
        } else {
            HashMap::new()
        };
        // Hashing reads every candidate without a record: one thread per core.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let verified: Vec<Option<&PathBuf>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let local = &local;
                    let counters = &self.counters;
                    scope.spawn(move || {
                        listed
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| i % threads == t)
                            .map(|(i, f)| {
                                let found = local.get(&f.name).and_then(|candidates| {
                                    candidates.iter().find_map(|c| c.holds(f, counters))
                                });
                                (i, found)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut verified = vec![None; listed.len()];
            for w in workers {
                // A worker that panicked found nothing: its files are fetched.
                for (i, found) in w.join().unwrap_or_default() {
                    verified[i] = found;
                }
            }
            verified
        });
        let (mut wanted, mut linked, mut bytes) = (Vec::new(), 0, 0);
        for (i, (f, found)) in listed.iter().zip(verified).enumerate() {
            match found.map(|src| (src, std::fs::hard_link(src, dir.join(&f.name)))) {
                Some((_, Ok(()))) => {
                    linked += 1;
                    bytes += f.len;
                }
                Some((src, Err(e))) => {
                    tracing::warn!(file = %src.display(), error = %e, "could not link a local file; fetching it");
                    wanted.push(i);
                }
                None => wanted.push(i),
            }
        }
        (wanted, linked, bytes)
    }

    /// Stamps the default TTL on a plain-envelope value, if configured.
    fn stamp<'v>(&self, value: &'v [u8], buf: &'v mut Vec<u8>) -> &'v [u8] {
        let Some(ttl) = self.config.ttl.default_ttl else {
            return value;
        };
        match Envelope::decode(value) {
            Ok(e) if e.expires_at_ms.is_none() => {
                let at = self
                    .config
                    .clock
                    .now_ms()
                    .saturating_add(ttl.as_millis() as u64);
                buf.clear();
                Envelope::encode_into(Some(at), e.payload, buf);
                buf
            }
            _ => value,
        }
    }

    fn scan(&self, lower: &[u8], upper: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.counters.scans.fetch_add(1, Ordering::Relaxed);
        let live = self.read();
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        if let Some(u) = upper {
            ro.set_iterate_upper_bound(u.to_vec());
        }
        let mut it = live.generation.db.raw_iterator_opt(ro);
        it.seek(lower);
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status().map_err(rocks("scan"))?;
        Ok(out)
    }

    /// Operation counters and RocksDB's properties (estimated keys, memtable
    /// sizes, block cache usage, SST sizes), also logged at debug level
    /// through `tracing`.
    pub fn metrics(&self) -> RocksDbMetrics {
        let live = self.read();
        let db = &live.generation.db;
        let prop = |name: &rocksdb::properties::PropName| {
            db.property_int_value(name)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        use rocksdb::properties as p;
        let mut m = RocksDbMetrics {
            counters: self.counters.snapshot(),
            estimate_num_keys: prop(p::ESTIMATE_NUM_KEYS),
            active_memtable_bytes: prop(p::CUR_SIZE_ACTIVE_MEM_TABLE),
            all_memtables_bytes: prop(p::SIZE_ALL_MEM_TABLES),
            block_cache_usage: self.cache.get_usage() as u64,
            block_cache_pinned_usage: self.cache.get_pinned_usage() as u64,
            table_readers_bytes: prop(p::ESTIMATE_TABLE_READERS_MEM),
            memory_bytes: 0,
            live_sst_bytes: prop(p::LIVE_SST_FILES_SIZE),
            estimate_live_data_bytes: prop(p::ESTIMATE_LIVE_DATA_SIZE),
            pending_compaction_bytes: prop(p::ESTIMATE_PENDING_COMPACTION_BYTES),
            running_compactions: prop(p::NUM_RUNNING_COMPACTIONS),
            snapshots: prop(p::NUM_SNAPSHOTS),
        };
        // With a budget the memtables are charged to the cache already.
        let memtables = if self.config.memory_budget.is_some() {
            0
        } else {
            m.all_memtables_bytes
        };
        m.memory_bytes = m.block_cache_usage + m.table_readers_bytes + memtables;
        tracing::debug!(
            memory = m.memory_bytes,
            gets = m.counters.gets,
            puts = m.counters.puts,
            deletes = m.counters.deletes,
            estimate_num_keys = m.estimate_num_keys,
            memtables = m.all_memtables_bytes,
            block_cache = m.block_cache_usage,
            live_sst = m.live_sst_bytes,
            "rocksdb metrics"
        );
        m
    }

    /// RocksDB's statistics dump (tickers such as
    /// `rocksdb.block.cache.miss` and histograms), when
    /// [`RocksDbConfig::statistics`] is on.
    pub fn statistics(&self) -> Option<String> {
        if !self.config.statistics {
            return None;
        }
        self.options.get_statistics()
    }

    /// Compacts the whole database now: merges SST files and runs the TTL
    /// compaction filter over every entry. RocksDB compacts on its own;
    /// this is for tests, benchmarks and maintenance windows.
    pub fn compact(&self) -> Result<()> {
        let generation = self.read().generation.clone();
        generation
            .db
            .flush()
            .map_err(rocks("flush before compaction"))?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        generation
            .db
            .compact_range_opt(None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }

    /// Flushes the memtables to SST files.
    pub fn flush(&self) -> Result<()> {
        let generation = self.read().generation.clone();
        generation.db.flush().map_err(rocks("flush"))
    }

    /// The directory of the live database. With
    /// [`local_recovery`](RocksDbConfig::local_recovery) on it stays when
    /// the backend is dropped (for the next open to take files from), and
    /// another program may then open the database in it.
    pub fn db_dir(&self) -> PathBuf {
        self.read().generation.dir.path().to_path_buf()
    }

    /// The live SST files: name, size and level (for tests, tools and
    /// benchmarks that ask where compaction put the bytes).
    pub fn live_sst_files(&self) -> Result<Vec<LiveSst>> {
        let generation = self.read().generation.clone();
        let files = generation
            .db
            .live_files()
            .map_err(rocks("list live files"))?;
        Ok(files
            .into_iter()
            .map(|f| LiveSst {
                name: f.name.trim_start_matches('/').to_string(),
                size: f.size as u64,
                level: u32::try_from(f.level).unwrap_or(0),
            })
            .collect())
    }

    /// Writes the files at `wanted` (indices into `listed`), fetched from
    /// `files`, into `dir`, each fsynced; their bytes. A second thread
    /// fsyncs each file while the next one is fetched and written, so the
    /// device writes one file back while the next arrives.
    fn write_fetched(
        dir: &Path,
        listed: &[NativeFileRef],
        wanted: Vec<usize>,
        files: &mut dyn NativeSource,
    ) -> Result<u64> {
        let expected: Vec<&str> = wanted.iter().map(|&i| listed[i].name.as_str()).collect();
        let (to_sync, synced) = std::sync::mpsc::channel::<(PathBuf, std::fs::File)>();
        std::thread::scope(|scope| {
            let syncer = scope.spawn(move || {
                for (path, file) in synced {
                    file.sync_all()
                        .map_err(|e| Error::io(format!("fsync {}", path.display()), e))?;
                }
                Ok::<_, Error>(())
            });
            let written = (|| {
                let mut fetched = files.fetch(wanted);
                let mut bytes = 0u64;
                for want in expected {
                    let (name, data) = fetched.next().unwrap_or_else(|| {
                        Err(Error::corrupt(
                            "native checkpoint",
                            format!("the source of files stopped before {want}"),
                        ))
                    })?;
                    if name != want {
                        return Err(Error::corrupt(
                            "native checkpoint",
                            format!(
                                "the source of files gave {name:?} where {want:?} was asked for"
                            ),
                        ));
                    }
                    let path = dir.join(&name);
                    let file = write_unsynced(&path, &data)?;
                    bytes += data.len() as u64;
                    if to_sync.send((path, file)).is_err() {
                        // The syncer stopped at an error, reported below.
                        break;
                    }
                }
                Ok(bytes)
            })();
            drop(to_sync);
            let synced = syncer
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the fsync thread panicked".into())));
            let bytes = written?;
            synced?;
            Ok(bytes)
        })
    }
}

/// SST and blob files: immutable once written, the ones local recovery
/// reuses.
pub(crate) fn immutable_file(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

/// A set-aside file local recovery may take, with what its directory's
/// list records for it.
struct Candidate {
    path: PathBuf,
    recorded: Option<(Stamp, ArtifactId)>,
}

impl Candidate {
    /// The path, when the file holds `f`'s bytes: by its record if the
    /// file is unchanged since, else by reading and hashing it.
    fn holds(&self, f: &NativeFileRef, counters: &Counters) -> Option<&PathBuf> {
        if known::vouches(self.recorded.as_ref(), &self.path, f) {
            counters
                .local_files_recorded
                .fetch_add(1, Ordering::Relaxed);
            return Some(&self.path);
        }
        let same_len = std::fs::metadata(&self.path).is_ok_and(|m| m.len() == f.len);
        let same = same_len
            && std::fs::File::open(&self.path)
                .and_then(ArtifactId::of_reader)
                .is_ok_and(|id| id == f.id);
        if same {
            counters.local_files_hashed.fetch_add(1, Ordering::Relaxed);
        } else if same_len {
            tracing::warn!(file = %self.path.display(), "a local file differs from the checkpoint's; fetching it");
        }
        same.then_some(&self.path)
    }
}

/// Checks the names a native checkpoint lists before anything is written:
/// plain file names, each once, CURRENT among them.
fn check_listing(listed: &[NativeFileRef]) -> Result<()> {
    let mut names = HashSet::new();
    for f in listed {
        if !valid_native_file_name(&f.name) {
            return Err(Error::corrupt(
                "native checkpoint",
                format!("file name is not a plain file name: {:?}", f.name),
            ));
        }
        if !names.insert(f.name.as_str()) {
            return Err(Error::corrupt(
                "native checkpoint",
                format!("file given twice: {}", f.name),
            ));
        }
    }
    if !names.contains("CURRENT") {
        return Err(Error::corrupt(
            "native checkpoint",
            "no CURRENT file among the checkpoint's files",
        ));
    }
    Ok(())
}

/// The RocksDB options [`RocksDbBackend`] opens every database with for
/// `c`, sharing the block cache `cache`. Public so a comparison against raw
/// RocksDB (the `rocksdb` bench suite) runs with exactly the same options.
pub fn db_options(c: &RocksDbConfig, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_block_size(c.block_size);
    if c.bloom_bits_per_key > 0.0 {
        table.set_bloom_filter(c.bloom_bits_per_key, false);
    }
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(c.write_buffer_size);
    if c.memory_budget.is_some() {
        // Memtables charged to the block cache: one bound for both. A
        // write stalls (rather than fails) while memtables are over their
        // third of the cache and being flushed.
        let manager = WriteBufferManager::new_write_buffer_manager_with_cache(
            c.block_cache_capacity() / 3,
            true,
            cache.clone(),
        );
        opts.set_write_buffer_manager(&manager);
    }
    opts.set_max_write_buffer_number(c.max_write_buffer_number);
    opts.set_max_open_files(c.max_open_files);
    opts.increase_parallelism(c.background_threads);
    opts.set_max_background_jobs(c.background_threads);
    opts.set_level_compaction_dynamic_level_bytes(true);
    opts.set_target_file_size_base(c.target_file_size);
    opts.set_max_bytes_for_level_base(c.level_base_size);
    opts.set_level_zero_file_num_compaction_trigger(c.level0_compaction_trigger);
    let compression = match c.compression {
        Compression::None => rocksdb::DBCompressionType::None,
        Compression::Lz4 => rocksdb::DBCompressionType::Lz4,
        Compression::Zstd => rocksdb::DBCompressionType::Zstd,
    };
    opts.set_compression_type(compression);
    opts.set_bottommost_compression_type(compression);
    if let Some(b) = c.blob_values {
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(b.min_value_size);
        opts.set_blob_file_size(b.file_size);
        opts.set_blob_compression_type(compression);
        opts.set_enable_blob_gc(b.gc_age_cutoff > 0.0);
        opts.set_blob_gc_age_cutoff(b.gc_age_cutoff);
        // Values read back are cached in the block cache, under its bound.
        opts.set_blob_cache(cache);
    }
    if c.statistics {
        opts.enable_statistics();
    }
    if c.ttl.compaction_filter {
        let clock = c.clock.clone();
        opts.set_compaction_filter(
            "highwater-ttl",
            move |_level: u32, _key: &[u8], value: &[u8]| {
                if highwater_core::ttl::is_expired_value(value, clock.now_ms()) {
                    rocksdb::compaction_filter::Decision::Remove
                } else {
                    rocksdb::compaction_filter::Decision::Keep
                }
            },
        );
    }
    opts
}

/// The file that marks a directory as a backend's working directory, which
/// `open` may wipe. A non-empty directory without it is refused, so a
/// mistyped path never deletes someone's files.
const MARKER: &str = "HIGHWATER-ROCKSDB-WORKDIR";

/// Where local recovery sets aside the previous process's database
/// directories, under the working directory.
const LOCAL_DIR: &str = "local-recovery";

/// Sets of directories local recovery keeps: those of the last two opens
/// (an open that crashed before its restore finished still leaves the
/// files it linked, and the set before it, to the next).
const LOCAL_SETS_KEPT: u64 = 2;

/// Removes a directory entry, file or directory.
fn remove_entry(entry: &std::fs::DirEntry) -> std::io::Result<()> {
    match entry.file_type() {
        Ok(t) if t.is_dir() => std::fs::remove_dir_all(entry.path()),
        _ => std::fs::remove_file(entry.path()),
    }
}

/// Moves the directories under `root` into `local` as the next set
/// (`{set:06}-{name}`), and drops sets older than [`LOCAL_SETS_KEPT`].
fn set_aside(root: &Path, local: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(local)?;
    let set_of = |name: &std::ffi::OsStr| {
        name.to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(set, _)| set.parse::<u64>().ok())
    };
    let mut kept = Vec::new();
    for entry in std::fs::read_dir(local)? {
        let entry = entry?;
        match set_of(&entry.file_name()) {
            Some(set) => kept.push((set, entry.path())),
            None => remove_entry(&entry)?,
        }
    }
    let next = kept.iter().map(|(set, _)| set + 1).max().unwrap_or(0);
    for (set, path) in kept {
        if set + LOCAL_SETS_KEPT <= next {
            std::fs::remove_dir_all(path)?;
        }
    }
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == MARKER || name == LOCAL_DIR {
            continue;
        }
        if entry.file_type()?.is_dir() {
            let mut to = std::ffi::OsString::from(format!("{next:06}-"));
            to.push(&name);
            std::fs::rename(entry.path(), local.join(to))?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Empties (or creates) the working directory `root`; with `local_recovery`
/// its database and checkpoint directories are set aside under
/// [`LOCAL_DIR`] instead of deleted ([`set_aside`]).
fn prepare_working_dir(root: &Path, local_recovery: bool) -> Result<()> {
    let io = |what: &str, e| {
        Error::io(
            format!("{what} the rocksdb working directory {}", root.display()),
            e,
        )
    };
    match std::fs::read_dir(root) {
        Ok(mut entries) => {
            if root.join(MARKER).exists() {
                // Everything but the marker goes first, the marker never:
                // a wipe cut short (a kill, a file that cannot be removed)
                // leaves a directory the next open still recognises and
                // wipes, instead of one it must refuse.
                if local_recovery {
                    drop(entries);
                    set_aside(root, &root.join(LOCAL_DIR))
                        .map_err(|e| io("set aside the files of", e))?;
                }
                for entry in std::fs::read_dir(root).map_err(|e| io("list", e))? {
                    let entry = entry.map_err(|e| io("list", e))?;
                    if entry.file_name() == MARKER
                        || (local_recovery && entry.file_name() == LOCAL_DIR)
                    {
                        continue;
                    }
                    remove_entry(&entry).map_err(|e| io("wipe", e))?;
                }
            } else if entries.next().is_some() {
                return Err(Error::InvalidArgument(format!(
                    "rocksdb working directory {} is not empty and was not created by this backend (no {MARKER} file); refusing to wipe it",
                    root.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", e)),
    }
    std::fs::create_dir_all(root).map_err(|e| io("create", e))?;
    std::fs::write(
        root.join(MARKER),
        b"scratch directory of a highwater RocksDB backend; wiped when the backend opens\n",
    )
    .map_err(|e| io("mark", e))
}

/// Opens an empty database in the new directory `dir`.
fn open_generation(dir: PathBuf, opts: &Options) -> Result<Generation> {
    std::fs::create_dir(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let guard = DirGuard::new(dir);
    let db =
        DB::open(opts, guard.path()).map_err(rocks(format!("open {}", guard.path().display())))?;
    Ok(Generation { db, dir: guard })
}

/// Writes a new file; the caller fsyncs it.
fn write_unsynced(path: &Path, data: &[u8]) -> Result<std::fs::File> {
    use std::io::Write;
    let mut f = std::fs::File::create_new(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    f.write_all(data)
        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    Ok(f)
}

/// Fsyncs a directory, making the names it holds durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

/// The smallest key greater than every key starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Deletes every key outside `keep`: two range deletes, plus point deletes
/// of any key at or above [`FAR`] (none in practice: state keys start with
/// a key group below 2^15).
fn delete_outside(db: &DB, keep: KeyGroupRange) -> Result<()> {
    let mut batch = rocksdb::WriteBatch::default();
    let start = keep.start.to_be_bytes();
    let end = keep.end.to_be_bytes();
    // Whole files outside go at once (no compaction needed to reclaim
    // their space); the range deletes cover what shares a file with kept
    // keys. RocksDB's file ranges include their end: below `keep`, that
    // end is `start` itself, a kept key if it exists.
    if db.get_pinned(start).map_err(rocks("get"))?.is_none() {
        db.delete_file_in_range(&[][..], &start[..])
            .map_err(rocks("delete files of key groups not owned"))?;
    }
    db.delete_file_in_range(&end[..], FAR)
        .map_err(rocks("delete files of key groups not owned"))?;
    batch.delete_range(&[][..], &start[..]);
    batch.delete_range(&end[..], FAR);
    let mut it = db.raw_iterator();
    it.seek(FAR);
    while let Some(k) = it.key() {
        batch.delete(k);
        it.next();
    }
    it.status().map_err(rocks("scan above the key groups"))?;
    db.write(batch)
        .map_err(rocks("delete key groups not owned"))
}

impl StateBackend for RocksDbBackend {
    fn name(&self) -> &'static str {
        "rocksdb"
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        let live = self.read();
        let v = live.generation.db.get_pinned(key).map_err(rocks("get"))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        let mut buf = Vec::new();
        let value = self.stamp(value, &mut buf);
        let live = self.read();
        live.generation
            .db
            .put_opt(key, value, &self.write_options)
            .map_err(rocks("put"))?;
        self.mark(key);
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
        let live = self.read();
        live.generation
            .db
            .delete_opt(key, &self.write_options)
            .map_err(rocks("delete"))?;
        self.mark(key);
        Ok(())
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .batch_mutations
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut wb = rocksdb::WriteBatch::default();
        let mut buf = Vec::new();
        for m in batch.mutations() {
            match m {
                Mutation::Put { key, value } => wb.put(key, self.stamp(value, &mut buf)),
                Mutation::Delete { key } => wb.delete(key),
            }
        }
        let live = self.read();
        live.generation
            .db
            .write_opt(wb, &self.write_options)
            .map_err(rocks("write batch"))?;
        for m in batch.mutations() {
            self.mark(m.key());
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let end = prefix_end(prefix);
        self.scan(prefix, end.as_deref())
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.scan(start, Some(end))
    }

    fn snapshot(&self, kind: SnapshotKind) -> Result<Arc<dyn StateSnapshot>> {
        self.counters.snapshots.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let live = self.write();
        let changes = self.take_changes();
        let snap: Snap = take_snapshot(live.generation.clone());
        drop(live);
        let pause = started.elapsed();
        let out: Arc<dyn StateSnapshot> = match (kind, changes) {
            (SnapshotKind::Changes, Some(logs)) => Arc::new(ChangesSnapshot::new(
                snap,
                sorted_unique(&logs),
                CHANGES_PARTITIONS,
            )),
            (SnapshotKind::Changes, None) => {
                tracing::info!(
                    cap = self.config.change_tracking_bytes,
                    "the keys changed since the last snapshot passed change_tracking_bytes: \
                     answering a changes snapshot with a full one"
                );
                self.full_snapshot(snap)
            }
            (SnapshotKind::Full, _) => self.full_snapshot(snap),
        };
        tracing::debug!(
            ?kind,
            pause_us = pause.as_micros() as u64,
            "rocksdb snapshot"
        );
        Ok(out)
    }

    fn restore(&self, blocks: &mut dyn Iterator<Item = Result<RecordBlock>>) -> Result<()> {
        let generation = self.new_generation()?;
        let mut batch = rocksdb::WriteBatch::default();
        let mut n = 0usize;
        for block in blocks {
            for (k, v) in block?.puts() {
                batch.put(k, v);
                n += 1;
                if n.is_multiple_of(RESTORE_BATCH) {
                    generation
                        .db
                        .write_opt(std::mem::take(&mut batch), &self.write_options)
                        .map_err(rocks("restore"))?;
                }
            }
        }
        generation
            .db
            .write_opt(batch, &self.write_options)
            .map_err(rocks("restore"))?;
        self.install(generation);
        tracing::info!(entries = n, "rocksdb backend restored from entries");
        Ok(())
    }

    /// True: entries go into a new database generation, installed only
    /// when the source ended without error.
    fn restore_is_atomic(&self) -> bool {
        true
    }

    fn clear(&self) -> Result<()> {
        let generation = self.new_generation()?;
        self.install(generation);
        Ok(())
    }

    fn stats(&self) -> BackendStats {
        // Exact counts need a scan: RocksDB only estimates its key count
        // (see `metrics`), and counting on every write would cost a read
        // per put.
        let live = self.read();
        let snap = take_snapshot(live.generation.clone());
        drop(live);
        let mut stats = BackendStats::default();
        let s = snap.get();
        let mut it = s.0.raw_iterator();
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            stats.entries += 1;
            stats.bytes += (k.len() + v.len()) as u64;
            it.next();
        }
        if let Err(e) = it.status() {
            tracing::warn!(error = %e, "rocksdb stats scan failed");
        }
        stats
    }

    /// None: a restore writes through RocksDB's own batches, on the thread
    /// that streams blocks into [`restore`](StateBackend::restore).
    fn bulk_restore(&self) -> Option<Box<dyn highwater_core::BulkRestore + '_>> {
        None
    }

    fn native(&self) -> Option<&dyn NativeCheckpoints> {
        self.config
            .native_checkpoints
            .then_some(self as &dyn NativeCheckpoints)
    }
}

impl NativeCheckpoints for RocksDbBackend {
    fn format(&self) -> &'static str {
        "rocksdb"
    }

    fn native_snapshot(&self) -> Result<Arc<dyn StateSnapshot>> {
        self.counters
            .native_checkpoints
            .fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        // Flush first without holding writers: the flush under the lock
        // below then only writes what arrived meanwhile.
        let generation = self.read().generation.clone();
        generation
            .db
            .flush()
            .map_err(rocks("flush before checkpoint"))?;
        drop(generation);
        let dir = DirGuard::new(self.fresh_dir("checkpoint"));
        let live = self.write();
        let keys = self.take_changes();
        let checkpoint = Checkpoint::new(&live.generation.db)
            .and_then(|c| c.create_checkpoint(dir.path()))
            .map_err(rocks(format!("create checkpoint {}", dir.path().display())));
        let snap = take_snapshot(live.generation.clone());
        drop(live);
        drop(keys);
        checkpoint?;
        let pause = started.elapsed();
        let sst_entries: std::collections::HashMap<String, u64> = snap
            .backing_cart()
            .db
            .live_files()
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.name.trim_start_matches('/').to_string(), f.num_entries))
            .collect();
        // SST and blob files are immutable and numbered once per database:
        // with the database's identity (new for every restored generation),
        // name and size they name their bytes.
        // The generation's directory is named once per backend: with it a
        // restored database that kept its source's identity (and numbers
        // files from where the source's checkpoint left off) never names
        // another file the same.
        let generation = snap.backing_cart();
        let db_identity = generation
            .db
            .get_db_identity()
            .ok()
            .and_then(|id| String::from_utf8(id).ok())
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
            .zip(generation.dir.path().file_name().and_then(|n| n.to_str()))
            .map(|(id, dir)| format!("{id}/{dir}"));
        let mut files = Vec::new();
        let listing = std::fs::read_dir(dir.path())
            .map_err(|e| Error::io(format!("list {}", dir.path().display()), e))?;
        for entry in listing {
            let entry =
                entry.map_err(|e| Error::io(format!("list {}", dir.path().display()), e))?;
            let name = entry.file_name().into_string().map_err(|n| {
                Error::Internal(format!(
                    "rocksdb wrote a file name that is not utf-8: {n:?}"
                ))
            })?;
            let len = entry
                .metadata()
                .map_err(|e| Error::io(format!("stat {name}"), e))?
                .len();
            if !valid_native_file_name(&name) {
                return Err(Error::Internal(format!(
                    "rocksdb wrote a file name a manifest cannot hold: {name:?}"
                )));
            }
            let entries = sst_entries.get(&name).copied().unwrap_or(0);
            let identity = db_identity
                .as_deref()
                .filter(|_| name.ends_with(".sst") || name.ends_with(".blob"))
                .map(|db| format!("{db}/{name}/{len}"));
            files.push(NativeFile {
                name,
                len,
                entries,
                identity,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        // The checkpoint's SST files are hard links of the live ones: their
        // stamps are the live files', recorded once the upload commits.
        let stamps = known::stamps(dir.path(), files.iter().map(|f| f.name.as_str()));
        *self.stamped.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((generation.dir.path().to_path_buf(), stamps));
        tracing::debug!(
            files = files.len(),
            bytes = files.iter().map(|f| f.len).sum::<u64>(),
            pause_us = pause.as_micros() as u64,
            "rocksdb native checkpoint"
        );
        let native = NativeCheckpoint {
            format: "rocksdb",
            dir: dir.path().to_path_buf(),
            files,
        };
        Ok(Arc::new(NativeSnapshot::new(
            FullSnapshot::new(snap, self.config.max_parallelism, FULL_PARTITIONS),
            native,
            dir,
        )))
    }

    /// Records the committed files' content addresses in the live
    /// database's directory, when the checkpoint was taken of it.
    fn native_stored(&self, files: &[NativeFileRef]) {
        let Some((dir, stamps)) = self
            .stamped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        // (A restore that replaces the database meanwhile moves or removes
        // the directory: the record then fails or goes with it, harmlessly.)
        let current = self.read().generation.dir.path() == dir;
        if current {
            known::record(&dir, files, &stamps);
        }
    }

    fn restore_native(
        &self,
        files: &mut dyn NativeSource,
        keep: Option<KeyGroupRange>,
    ) -> Result<()> {
        let started = Instant::now();
        let listed = files.files().to_vec();
        check_listing(&listed)?;
        let dir = self.fresh_dir("db");
        std::fs::create_dir(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let guard = DirGuard::new(dir);
        let (wanted, local_files, local_bytes) = self.link_local_files(guard.path(), &listed);
        let bytes = Self::write_fetched(guard.path(), &listed, wanted, files)?;
        // Every file now holds what the listing names: a later restart's
        // local recovery takes them without reading them.
        let stamps = known::stamps(guard.path(), listed.iter().map(|f| f.name.as_str()));
        known::record(guard.path(), &listed, &stamps);
        sync_dir(guard.path())?;
        let mut opts = self.options.clone();
        opts.create_if_missing(false);
        let db = DB::open(&opts, guard.path()).map_err(|e| {
            // RocksDB reports damaged files (bad checksums, truncation) as
            // corruption: keep that classification for the caller's fallback.
            let msg = e.to_string();
            if msg.contains("Corruption") || msg.contains("corrupt") {
                Error::corrupt(
                    "native checkpoint",
                    format!("rocksdb cannot open it: {msg}"),
                )
            } else {
                rocks(format!(
                    "open restored checkpoint {}",
                    guard.path().display()
                ))(e)
            }
        })?;
        if let Some(keep) = keep {
            delete_outside(&db, keep)?;
        }
        self.install(Generation { db, dir: guard });
        tracing::info!(
            bytes,
            local_files,
            local_bytes,
            ?keep,
            ms = started.elapsed().as_millis() as u64,
            "rocksdb backend restored from a native checkpoint"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
