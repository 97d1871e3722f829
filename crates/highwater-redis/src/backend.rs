//! The Redis state backend: live keyed state in Redis, change tracking and
//! consistent snapshots in process. See the crate docs for the key layout,
//! the consistency model and the costs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use highwater_core::ttl::{Envelope, SystemClock};
use highwater_core::{
    BackendStats, Clock, EntryVisitor, Error, ErrorKind, Mutation, Result, SnapshotKind,
    StateBackend, StateSnapshot, WriteBatch,
};
use redis::{RedisError, Value};

use crate::conn::{
    ConnectOptions, Pipe, RedisEndpoint, ScanTarget, SyncConn, classify, config_error,
    glob_escape_into, is_transient, needs_reconnect,
};
use crate::error::RedisOpError;

/// The backend's name in errors and metrics.
const NAME: &str = "redis";

/// Stripes of the per-key write locks taken while a snapshot is being read
/// (see [`Shared::apply`]).
const STRIPES: usize = 256;

/// Configuration of a [`RedisBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBackendConfig {
    /// The server or cluster.
    pub endpoint: RedisEndpoint,
    /// The namespace of this backend's keys: 1 to 64 bytes of ASCII letters,
    /// digits, `_`, `-`, `.` and `:`. The backend assumes it is the only
    /// writer of its namespace (see the crate docs).
    pub namespace: String,
    /// Timeouts and retries.
    pub connect: ConnectOptions,
    /// Idle connections kept for reuse; more are opened when threads use
    /// the backend concurrently.
    pub max_idle_connections: usize,
    /// Also give Redis the envelope's expiry (`SET … PXAT`), so Redis
    /// reclaims the space of expired entries by itself.
    pub native_ttl: bool,
    /// Added to the envelope expiry before it is handed to Redis, to absorb
    /// clock skew between this process and the server: Redis never drops
    /// an entry that this process's clock still considers alive. Expiries
    /// already in the past (by this process's clock, after the grace) are
    /// not handed to Redis.
    pub native_ttl_grace: Duration,
    /// The `COUNT` hint of `SCAN`.
    pub scan_count: usize,
    /// Commands sent per pipeline round trip.
    pub pipeline_depth: usize,
    /// Partitions of a snapshot (entries are spread by key group).
    pub snapshot_partitions: usize,
}

impl RedisBackendConfig {
    /// Defaults for `endpoint` and `namespace`: 4 idle connections, native
    /// TTL with 1 s of grace, `SCAN COUNT 1000`, pipelines of 512 commands,
    /// 16 snapshot partitions.
    pub fn new(endpoint: RedisEndpoint, namespace: impl Into<String>) -> Self {
        RedisBackendConfig {
            endpoint,
            namespace: namespace.into(),
            connect: ConnectOptions::default(),
            max_idle_connections: 4,
            native_ttl: true,
            native_ttl_grace: Duration::from_secs(1),
            scan_count: 1000,
            pipeline_depth: 512,
            snapshot_partitions: 16,
        }
    }
}

/// Checks a namespace: 1..=64 bytes of `[A-Za-z0-9_.:-]`, so it can never
/// contain a hash-tag brace or a glob metacharacter.
pub(crate) fn check_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "redis namespace must be 1..=64 bytes of [A-Za-z0-9_.:-]: namespace={ns:?}"
        )))
    }
}

/// The key layout of one namespace (see the crate docs).
#[derive(Debug, Clone)]
struct Layout {
    /// `{<ns>:` — what every key starts with.
    head: Vec<u8>,
    /// Length of `{<ns>:XXXX}v`, stripped to get the state key back.
    value_prefix_len: usize,
    cluster: bool,
}

fn hex4(kg: u16, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in [12, 8, 4, 0] {
        out.push(HEX[usize::from((kg >> shift) & 0xf)]);
    }
}

/// The key group a raw key is filed under: its first two bytes, zero-padded
/// for shorter (malformed) keys so every byte string has a place.
fn key_group(raw: &[u8]) -> u16 {
    match raw {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        [a] => u16::from(*a) << 8,
        [] => 0,
    }
}

/// Where the map user key starts in `key`, if `key` is a map entry (a
/// well-formed state key with a non-empty user key): such entries are also
/// listed in their map's index.
fn map_split(key: &[u8]) -> Option<usize> {
    highwater_core::key::split_base(key).filter(|&b| b < key.len())
}

/// The smallest byte string greater than every string starting with
/// `prefix`, if there is one (there is none for `""` or all `0xFF`).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let end = prefix.iter().rposition(|&b| b != 0xFF)?;
    let mut s = prefix[..=end].to_vec();
    s[end] += 1;
    Some(s)
}

impl Layout {
    fn new(ns: &str, cluster: bool) -> Self {
        let mut head = Vec::with_capacity(ns.len() + 2);
        head.push(b'{');
        head.extend_from_slice(ns.as_bytes());
        head.push(b':');
        let value_prefix_len = head.len() + 4 + 2;
        Layout {
            head,
            value_prefix_len,
            cluster,
        }
    }

    /// `{<ns>:<kg hex>}v<raw>`.
    fn value_key(&self, raw: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.value_prefix_len + raw.len());
        self.value_key_into(raw, &mut k);
        k
    }

    /// [`value_key`](Self::value_key) into a reused buffer.
    fn value_key_into(&self, raw: &[u8], k: &mut Vec<u8>) {
        k.clear();
        k.extend_from_slice(&self.head);
        hex4(key_group(raw), k);
        k.extend_from_slice(b"}v");
        k.extend_from_slice(raw);
    }

    /// `{<ns>:<kg hex>}i<base>`: the index of the map entries under `base`.
    fn index_key_into(&self, base: &[u8], k: &mut Vec<u8>) {
        k.clear();
        k.extend_from_slice(&self.head);
        hex4(key_group(base), k);
        k.extend_from_slice(b"}i");
        k.extend_from_slice(base);
    }

    /// The state key of a value key, if it is one of this namespace.
    fn raw_of<'a>(&self, key: &'a [u8]) -> Option<&'a [u8]> {
        let rest = key.strip_prefix(self.head.as_slice())?;
        let (tag, raw) = rest.split_at_checked(6)?;
        (tag[4] == b'}' && tag[5] == b'v').then_some(raw)
    }

    /// Every key of the namespace (values and anything added later).
    fn all_pattern(&self) -> Vec<u8> {
        let mut p = self.head.clone();
        p.extend_from_slice(b"????}*");
        p
    }

    /// The value keys whose state key starts with `prefix`, and the node
    /// to scan: one node when the key group is known, all otherwise.
    fn prefix_pattern(&self, prefix: &[u8]) -> (Vec<u8>, Option<ScanTarget>) {
        let mut p = self.head.clone();
        let mut target = None;
        match prefix {
            [] => p.extend_from_slice(b"????"),
            [a] => {
                let mut kg = Vec::new();
                hex4(u16::from(*a) << 8, &mut kg);
                p.extend_from_slice(&kg[..2]);
                p.extend_from_slice(b"??");
            }
            _ => {
                hex4(key_group(prefix), &mut p);
                let mut tag = p.clone();
                tag.push(b'}');
                target = Some(ScanTarget::for_key(self.cluster, &tag));
            }
        }
        p.extend_from_slice(b"}v");
        glob_escape_into(prefix, &mut p);
        p.push(b'*');
        (p, target)
    }
}

/// What a snapshot being read covers.
enum Scope {
    /// Every entry.
    All,
    /// The keys changed in the epoch the snapshot closed.
    Keys(KeySet),
}

impl Scope {
    fn contains(&self, key: &[u8]) -> bool {
        match self {
            Scope::All => true,
            Scope::Keys(keys) => keys.contains(key),
        }
    }
}

type Entry = (Box<[u8]>, Option<Box<[u8]>>);

/// State keys and their values (`None`: absent), as read or recorded.
type EntryMap = HashMap<Box<[u8]>, Option<Box<[u8]>>, XxBuild>;

/// The set of keys changed in an epoch, built on the write path for
/// every changed key, so it avoids an allocation per key: keys are appended
/// to one arena (a `u64` length, then the bytes) and indexed by their
/// xxh3-64. A hash hit is confirmed by comparing the bytes; keys whose hash
/// collides with another key's go to a (practically always empty) overflow
/// list, so a collision can never drop a changed key.
#[derive(Default)]
struct KeySet {
    arena: Vec<u8>,
    index: HashMap<u64, usize, HashIsKey>,
    collided: Vec<usize>,
    len: usize,
}

impl KeySet {
    /// A set with room for `keys` keys of `bytes` bytes in all.
    fn with_capacity(keys: usize, bytes: usize) -> Self {
        KeySet {
            arena: Vec::with_capacity(bytes),
            index: HashMap::with_capacity_and_hasher(keys, HashIsKey),
            collided: Vec::new(),
            len: 0,
        }
    }

    fn key_at(&self, offset: usize) -> &[u8] {
        let mut len = [0u8; 8];
        len.copy_from_slice(&self.arena[offset..offset + 8]);
        let start = offset + 8;
        &self.arena[start..start + u64::from_le_bytes(len) as usize]
    }

    fn find(&self, hash: u64, key: &[u8]) -> bool {
        match self.index.get(&hash) {
            None => false,
            Some(&off) if self.key_at(off) == key => true,
            Some(_) => self.collided.iter().any(|&off| self.key_at(off) == key),
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.find(xxhash_rust::xxh3::xxh3_64(key), key)
    }

    /// Adds `key` unless present.
    fn insert(&mut self, key: &[u8]) {
        self.insert_hashed(xxhash_rust::xxh3::xxh3_64(key), key);
    }

    /// Adds `key`, whose hash is `hash`, unless present.
    fn insert_hashed(&mut self, hash: u64, key: &[u8]) {
        if self.find(hash, key) {
            return;
        }
        let offset = self.arena.len();
        self.arena
            .extend_from_slice(&(key.len() as u64).to_le_bytes());
        self.arena.extend_from_slice(key);
        match self.index.entry(hash) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(offset);
            }
            std::collections::hash_map::Entry::Occupied(_) => self.collided.push(offset),
        }
        self.len += 1;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every key, in insertion order.
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut offset = 0;
        std::iter::from_fn(move || {
            if offset >= self.arena.len() {
                return None;
            }
            let key = self.key_at(offset);
            offset += 8 + key.len();
            Some(key)
        })
    }
}

/// Uses a `u64` that is already a hash as its own hash.
#[derive(Debug, Clone, Copy, Default)]
struct HashIsKey;

impl std::hash::BuildHasher for HashIsKey {
    type Hasher = HashIsKeyHasher;

    fn build_hasher(&self) -> HashIsKeyHasher {
        HashIsKeyHasher(0)
    }
}

/// The hasher of [`HashIsKey`]: passes a `u64` through.
struct HashIsKeyHasher(u64);

impl std::hash::Hasher for HashIsKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64s are hashed; fold anything else in, to stay correct.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Hashes byte-string keys with xxh3 (much cheaper than SipHash on the
/// write path). Unseeded: the maps never leave the process, and callers
/// cannot choose keys more adversarially than they can write state.
#[derive(Debug, Clone, Copy, Default)]
struct XxBuild;

impl std::hash::BuildHasher for XxBuild {
    type Hasher = XxHasher;

    fn build_hasher(&self) -> XxHasher {
        XxHasher(0)
    }
}

/// xxh3-64 over the bytes written; length prefixes are ignored because
/// slices are hashed whole.
struct XxHasher(u64);

impl std::hash::Hasher for XxHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_usize(&mut self, _len: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The frozen content of a finished snapshot, by partition.
struct Content {
    partitions: Vec<Vec<Entry>>,
}

enum Progress {
    Reading,
    Done(Arc<Content>),
    /// Shared by every reader of the snapshot.
    Failed(Arc<Error>),
}

/// A snapshot whose content is being read from Redis in the background.
///
/// Writers that change a key in scope before the read finishes record the
/// key's value at the cut (the old value `SET … GET`/`GETDEL` returns) in
/// `undo`, first write wins; the reader overrides what it read with it.
struct Materialization {
    kind: SnapshotKind,
    scope: Scope,
    undo: Mutex<EntryMap>,
    /// Set when a write in scope failed with an unknown outcome: its old
    /// value is unknown, so this snapshot cannot be trusted.
    poisoned: AtomicBool,
    progress: Mutex<Progress>,
    done: Condvar,
    partitions: usize,
    approx: usize,
}

impl Materialization {
    fn wait(&self) -> std::result::Result<Arc<Content>, Arc<Error>> {
        let mut g = lock(&self.progress);
        loop {
            match &*g {
                Progress::Reading => {
                    g = self.done.wait(g).unwrap_or_else(PoisonError::into_inner);
                }
                Progress::Done(c) => return Ok(c.clone()),
                Progress::Failed(e) => return Err(e.clone()),
            }
        }
    }

    fn finish(&self, outcome: Result<Content>) {
        *lock(&self.progress) = match outcome {
            Ok(c) => Progress::Done(Arc::new(c)),
            Err(e) => Progress::Failed(Arc::new(e)),
        };
        self.done.notify_all();
    }
}

/// What changes at a snapshot, restore or clear.
#[derive(Default)]
struct Epoch {
    /// Keys written since the last snapshot.
    dirty: Mutex<KeySet>,
    /// Snapshots still being read.
    pending: Vec<Arc<Materialization>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent before any
    // call that can panic, so a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Idle connections, reused across calls and threads.
struct Pool {
    endpoint: RedisEndpoint,
    opts: ConnectOptions,
    idle: Mutex<Vec<SyncConn>>,
    max_idle: usize,
}

impl Pool {
    fn take(&self) -> std::result::Result<SyncConn, RedisError> {
        if let Some(c) = lock(&self.idle).pop() {
            return Ok(c);
        }
        SyncConn::connect(&self.endpoint, &self.opts)
    }

    fn give(&self, conn: SyncConn) {
        if !conn.is_open() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Drops every idle connection (after a failure that may have broken
    /// them all, such as a server restart).
    fn reset(&self) {
        lock(&self.idle).clear();
    }
}

/// One step of a write: a put (`value` set) or a delete.
struct Write<'a> {
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

struct Shared {
    config: RedisBackendConfig,
    layout: Layout,
    pool: Pool,
    epoch: RwLock<Epoch>,
    stripes: Box<[Mutex<()>]>,
    /// Entries found by the last full snapshot or count: the size hint of
    /// the next full snapshot.
    entries_hint: AtomicU64,
    /// The last successful count, returned by `stats` while the server is
    /// unreachable.
    last_stats: Mutex<BackendStats>,
    clock: SystemClock,
}

/// A [`StateBackend`] keeping live state in Redis (standalone or cluster).
///
/// See the [crate documentation](crate) for the key layout, the consistency
/// model and the cost of each operation.
pub struct RedisBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("endpoint", &self.shared.config.endpoint.redacted())
            .field("namespace", &self.shared.config.namespace)
            .finish()
    }
}

impl RedisBackend {
    /// Connects to `config.endpoint` (one connection is opened and checked
    /// now; more on demand). Fails with [`Error::InvalidArgument`] for a bad
    /// namespace or URL and [`Error::Backend`] when the server cannot be
    /// reached.
    pub fn connect(config: RedisBackendConfig) -> Result<Self> {
        check_namespace(&config.namespace)?;
        let layout = Layout::new(&config.namespace, config.endpoint.is_cluster());
        let pool = Pool {
            endpoint: config.endpoint.clone(),
            opts: config.connect.clone(),
            idle: Mutex::new(Vec::new()),
            max_idle: config.max_idle_connections.max(1),
        };
        let shared = Shared {
            layout,
            pool,
            epoch: RwLock::new(Epoch::default()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            entries_hint: AtomicU64::new(0),
            last_stats: Mutex::new(BackendStats::default()),
            clock: SystemClock,
            config,
        };
        // Connect now so configuration errors surface here.
        shared.run("connect", |c| c.query(&redis::cmd("PING")))?;
        Ok(RedisBackend {
            shared: Arc::new(shared),
        })
    }

    /// Connects to `url` (see [`RedisEndpoint::parse`]) with the default
    /// configuration and `namespace`.
    pub fn open(url: &str, namespace: &str) -> Result<Self> {
        Self::connect(RedisBackendConfig::new(
            RedisEndpoint::parse(url)?,
            namespace,
        ))
    }

    /// The configuration.
    pub fn config(&self) -> &RedisBackendConfig {
        &self.shared.config
    }

    /// Reads many values in pipelined round trips (`MGET` on a standalone
    /// server, pipelined `GET`s split by node on a cluster), in the order of
    /// `keys`.
    pub fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let layout = &self.shared.layout;
        self.shared
            .fetch_with(keys, |k, buf| layout.value_key_into(k, buf))
    }

    /// Removes every key of this backend's namespace from Redis, like
    /// [`clear`](StateBackend::clear). For tests and tools.
    pub fn destroy(self) -> Result<()> {
        self.clear()
    }
}

impl Shared {
    fn err(&self, op: &'static str, source: RedisError) -> Error {
        if let Some(e) = config_error(&self.config.endpoint, &source) {
            return e;
        }
        let endpoint = self.config.endpoint.redacted();
        Error::backend(
            classify(&source),
            NAME,
            format!("{op} at {endpoint}"),
            RedisOpError {
                op,
                endpoint,
                source,
            },
        )
    }

    /// Runs `f` on a pooled connection under the retry policy. Returns the
    /// result and whether an attempt failed after sending (an unknown
    /// outcome, for writes).
    fn run_tracked<T>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&mut SyncConn) -> std::result::Result<T, RedisError>,
    ) -> (Result<T>, bool) {
        let policy = self.config.connect.retry;
        let mut sent_and_failed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.pool.take() {
                Ok(mut conn) => match f(&mut conn) {
                    Ok(v) => {
                        self.pool.give(conn);
                        Ok(v)
                    }
                    Err(e) => {
                        sent_and_failed = true;
                        if needs_reconnect(&e) {
                            // The server may have restarted: every idle
                            // connection is suspect.
                            self.pool.reset();
                        } else {
                            self.pool.give(conn);
                        }
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return (Ok(v), sent_and_failed),
                Err(e) if attempt < policy.attempts() && is_transient(&e) => {
                    let backoff = policy.backoff(attempt);
                    tracing::warn!(
                        backend = NAME,
                        op,
                        attempt,
                        backoff_ms = backoff.as_millis() as u64,
                        error = %e,
                        "transient redis error, retrying"
                    );
                    std::thread::sleep(backoff);
                }
                Err(e) => return (Err(self.err(op, e)), sent_and_failed),
            }
        }
    }

    fn run<T>(
        &self,
        op: &'static str,
        f: impl FnMut(&mut SyncConn) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        self.run_tracked(op, f).0
    }

    /// Values of `vkeys` (full Redis keys), in order.
    fn fetch(&self, vkeys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.fetch_with(vkeys, |k, buf| buf.extend_from_slice(k))
    }

    /// Values of `keys`, in order; `redis_key` writes the Redis key of a
    /// key into an empty buffer. One `MGET` per chunk on a standalone
    /// server; pipelined `GET`s split by node on a cluster (keys of a chunk
    /// span slots).
    fn fetch_with<K>(
        &self,
        keys: &[K],
        redis_key: impl Fn(&K, &mut Vec<u8>),
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut buf = Vec::with_capacity(64);
        for chunk in keys.chunks(self.config.pipeline_depth.max(1)) {
            let mut key = |k: &K| {
                buf.clear();
                redis_key(k, &mut buf);
                buf.clone()
            };
            let values = if self.layout.cluster {
                let pipe = Pipe::new(
                    true,
                    chunk
                        .iter()
                        .map(|k| redis::cmd("GET").arg(key(k)).to_owned()),
                );
                self.run("read", |c| c.pipeline(&pipe))?
            } else {
                let mut cmd = redis::Cmd::with_capacity(chunk.len() + 1, 8 + 64 * chunk.len());
                cmd.arg("MGET");
                for k in chunk {
                    buf.clear();
                    redis_key(k, &mut buf);
                    cmd.arg(buf.as_slice());
                }
                match self.run("read", |c| c.query(&cmd))? {
                    Value::Array(vs) => vs,
                    _ => return Err(self.err("read", unexpected("MGET"))),
                }
            };
            if values.len() != chunk.len() {
                return Err(self.err("read", unexpected("GET")));
            }
            for v in values {
                out.push(bytes_of(v).map_err(|e| self.err("read", e))?);
            }
        }
        Ok(out)
    }

    /// Every key matching `pattern` on `targets` (all nodes when `None`),
    /// deduplicated (`SCAN` may return a key twice).
    fn scan(&self, pattern: &[u8], target: Option<ScanTarget>) -> Result<Vec<Vec<u8>>> {
        let count = self.config.scan_count.max(1);
        let targets = match target {
            Some(t) => vec![t],
            None => self.run("scan", |c| c.scan_targets())?,
        };
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        for t in targets {
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self.run("scan", |c| c.scan_page(t, cursor, pattern, count))?;
                seen.extend(keys);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(seen.into_iter().collect())
    }

    /// Entries whose state key starts with `prefix` and passes `keep`,
    /// sorted by key.
    fn scan_entries(
        &self,
        prefix: &[u8],
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if let Some(b) = highwater_core::key::split_base(prefix) {
            // Every key with this prefix has this base (the fields are
            // length-prefixed): the base's own value and its map entries,
            // which the map's index lists.
            return self.scan_map(&prefix[..b], &prefix[b..], keep);
        }
        let (pattern, target) = self.layout.prefix_pattern(prefix);
        let mut vkeys: Vec<Vec<u8>> = self
            .scan(&pattern, target)?
            .into_iter()
            .filter(|k| {
                self.layout
                    .raw_of(k)
                    .is_some_and(|raw| raw.starts_with(prefix) && keep(raw))
            })
            .collect();
        vkeys.sort_unstable();
        let values = self.fetch(&vkeys)?;
        let strip = self.layout.value_prefix_len;
        Ok(vkeys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k[strip..].to_vec(), v)))
            .collect())
    }

    /// The entries of the map under `base` whose user key starts with
    /// `uk_prefix` (and `base`'s own value when `uk_prefix` is empty), sorted:
    /// a `ZRANGEBYLEX` of the map's index and one read, on one node.
    /// Index members whose value is gone (expired by Redis) are skipped and
    /// removed from the index.
    fn scan_map(
        &self,
        base: &[u8],
        uk_prefix: &[u8],
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut idx = Vec::new();
        self.layout.index_key_into(base, &mut idx);
        let mut min = b"[".to_vec();
        min.extend_from_slice(uk_prefix);
        let max = match prefix_successor(uk_prefix) {
            Some(succ) => [b"(".as_slice(), &succ].concat(),
            None => b"+".to_vec(),
        };
        let cmd = redis::cmd("ZRANGEBYLEX")
            .arg(idx.as_slice())
            .arg(min)
            .arg(max)
            .to_owned();
        let members = match self.run("scan map", |c| c.query(&cmd))? {
            Value::Array(ms) => ms,
            _ => return Err(self.err("scan map", unexpected("ZRANGEBYLEX"))),
        };
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(members.len() + 1);
        if uk_prefix.is_empty() {
            keys.push(base.to_vec());
        }
        for m in members {
            let Some(uk) = bytes_of(m).map_err(|e| self.err("scan map", e))? else {
                continue;
            };
            keys.push([base, uk.as_slice()].concat());
        }
        keys.retain(|k| keep(k));
        let values = self.fetch_with(&keys, |k, buf| self.layout.value_key_into(k, buf))?;
        let mut out = Vec::with_capacity(keys.len());
        for (k, v) in keys.into_iter().zip(values) {
            match v {
                Some(v) => out.push((k, v)),
                None if k.len() > base.len() => self.drop_stale_member(&idx, &k, base.len()),
                None => {}
            }
        }
        // Members come in byte order and all share the base: sorted.
        Ok(out)
    }

    /// Removes `key`'s member from the map index `idx` if its value is
    /// still absent, holding the key's write-order stripe so a concurrent
    /// put of the key (index first, then value) cannot be undone. Best
    /// effort: a failure leaves a member that readers skip.
    fn drop_stale_member(&self, idx: &[u8], key: &[u8], base_len: usize) {
        let _stripe = lock(&self.stripes[stripe_of(key)]);
        let vkey = self.layout.value_key(key);
        let mut script = redis::cmd("EVAL");
        script
            .arg(
                "if redis.call('EXISTS', KEYS[1]) == 0 then \
                 return redis.call('ZREM', KEYS[2], ARGV[1]) end return 0",
            )
            .arg(2)
            .arg(vkey)
            .arg(idx)
            .arg(&key[base_len..]);
        if let Err(e) = self.run("clean map index", |c| c.query(&script)) {
            tracing::debug!(backend = NAME, error = %e, "cannot clean a map index entry");
        }
    }

    /// Counts the entries and bytes of the namespace: a `SCAN` and a
    /// pipelined `STRLEN` per key.
    fn count(&self) -> Result<BackendStats> {
        let (pattern, _) = self.layout.prefix_pattern(&[]);
        let vkeys = self.scan(&pattern, None)?;
        let strip = self.layout.value_prefix_len as u64;
        let mut stats = BackendStats::default();
        for chunk in vkeys.chunks(self.config.pipeline_depth.max(1)) {
            let pipe = Pipe::new(
                self.layout.cluster,
                chunk
                    .iter()
                    .map(|k| redis::cmd("STRLEN").arg(k.as_slice()).to_owned()),
            );
            let lens = self.run("count", |c| c.pipeline(&pipe))?;
            for (k, len) in chunk.iter().zip(lens) {
                // A key that vanished between SCAN and STRLEN reads as 0
                // bytes; values are never empty (an envelope has a tag).
                if let Value::Int(len) = len
                    && len > 0
                {
                    stats.entries += 1;
                    stats.bytes += k.len() as u64 - strip + len as u64;
                }
            }
        }
        Ok(stats)
    }

    /// Deletes every key of the namespace.
    fn delete_all(&self) -> Result<()> {
        let keys = self.scan(&self.layout.all_pattern(), None)?;
        for chunk in keys.chunks(self.config.pipeline_depth.max(1)) {
            let pipe = Pipe::new(
                self.layout.cluster,
                chunk
                    .iter()
                    .map(|k| redis::cmd("UNLINK").arg(k.as_slice()).to_owned()),
            );
            self.run("delete", |c| c.pipeline(&pipe))?;
        }
        Ok(())
    }

    /// The native expiry to hand Redis for `value`, if any.
    fn native_expiry(&self, value: &[u8], now_ms: u64) -> Option<u64> {
        if !self.config.native_ttl {
            return None;
        }
        let at = Envelope::decode(value).ok()?.expires_at_ms?;
        let at = at.saturating_add(self.config.native_ttl_grace.as_millis() as u64);
        (at > now_ms).then_some(at)
    }

    /// Sends `writes` in pipelined chunks. While snapshots are being read
    /// (`pending` not empty), each write also returns the key's previous
    /// value (`SET … GET`, `GETDEL`), recorded in the undo logs of the
    /// snapshots that cover the key; otherwise plain `SET` and `DEL`, the
    /// cheapest commands. The caller holds the epoch lock (shared, or
    /// exclusive for restore).
    fn send(&self, writes: &[Write<'_>], pending: &[Arc<Materialization>]) -> Result<()> {
        let with_old = !pending.is_empty();
        for chunk in writes.chunks(self.config.pipeline_depth.max(1)) {
            let now_ms = self.clock.now_ms();
            let mut buf = Vec::with_capacity(64);
            let mut cmds = Vec::with_capacity(chunk.len() + 8);
            // Where each write's SET/DEL reply is among the replies.
            let mut at = Vec::with_capacity(chunk.len());
            for w in chunk {
                let split = map_split(w.key);
                // A map entry is added to its index before it is written and
                // removed after it is deleted (same slot, same connection,
                // in order), so the index always lists every entry: it may
                // list more (an entry Redis expired), never fewer.
                if let (Some(b), Some(_)) = (split, w.value) {
                    self.layout.index_key_into(&w.key[..b], &mut buf);
                    cmds.push(
                        redis::cmd("ZADD")
                            .arg(buf.as_slice())
                            .arg(0)
                            .arg(&w.key[b..])
                            .to_owned(),
                    );
                }
                self.layout.value_key_into(w.key, &mut buf);
                at.push(cmds.len());
                cmds.push(match w.value {
                    Some(v) => {
                        // Sized up front: no regrowth while the arguments
                        // are appended (SET key value [PXAT ms] [GET]).
                        let mut cmd = redis::Cmd::with_capacity(6, 32 + buf.len() + v.len());
                        cmd.arg("SET").arg(buf.as_slice()).arg(v);
                        if let Some(at) = self.native_expiry(v, now_ms) {
                            cmd.arg("PXAT").arg(at);
                        }
                        if with_old {
                            cmd.arg("GET");
                        }
                        cmd
                    }
                    None => redis::cmd(if with_old { "GETDEL" } else { "DEL" })
                        .arg(buf.as_slice())
                        .to_owned(),
                });
                if let (Some(b), None) = (split, w.value) {
                    self.layout.index_key_into(&w.key[..b], &mut buf);
                    cmds.push(
                        redis::cmd("ZREM")
                            .arg(buf.as_slice())
                            .arg(&w.key[b..])
                            .to_owned(),
                    );
                }
            }
            let n_cmds = cmds.len();
            let pipe = Pipe::new(self.layout.cluster, cmds.into_iter());
            let (result, unknown) = self.run_tracked("write", |c| {
                if with_old {
                    c.pipeline(&pipe)
                } else {
                    c.pipeline_exec(&pipe).map(|()| Vec::new())
                }
            });
            if unknown {
                // Some attempt may have been applied: the old values seen
                // by a retry may be our own, so the undo logs are no longer
                // exact.
                for m in pending {
                    m.poisoned.store(true, Ordering::Relaxed);
                }
            }
            let replies = result?;
            if !with_old {
                continue;
            }
            if replies.len() != n_cmds {
                for m in pending {
                    m.poisoned.store(true, Ordering::Relaxed);
                }
                return Err(self.err("write", unexpected("SET/GETDEL")));
            }
            let mut replies: Vec<Option<Value>> = replies.into_iter().map(Some).collect();
            for (w, &i) in chunk.iter().zip(&at) {
                let reply = replies[i].take().unwrap_or(Value::Nil);
                let old = bytes_of(reply).map_err(|e| self.err("write", e))?;
                for m in pending {
                    if m.scope.contains(w.key) {
                        lock(&m.undo)
                            .entry(w.key.into())
                            .or_insert_with(|| old.as_deref().map(Into::into));
                    }
                }
            }
        }
        Ok(())
    }

    /// The write path of put, delete and write_batch.
    fn apply(&self, writes: &[Write<'_>]) -> Result<()> {
        let epoch = self.epoch.read().unwrap_or_else(PoisonError::into_inner);
        {
            // Marked before sending: a write that fails with an unknown
            // outcome is still reported by the next changes snapshot.
            let mut dirty = lock(&epoch.dirty);
            for w in writes {
                dirty.insert(w.key);
            }
        }
        // Writes to one key reach Redis in the order this process issues
        // them: writers of the same key are serialized by a striped lock,
        // held for the round trip. This (1) makes concurrent batches that
        // share keys serializable, as with an in-memory map, (2) keeps a
        // map entry's index update and value write from interleaving with
        // another writer's, and (3) while a snapshot is being read, makes
        // the first recorded old value of a key its value at the cut.
        // Stripes are taken in ascending order, so writers never deadlock.
        let mut idx: Vec<usize> = writes.iter().map(|w| stripe_of(w.key)).collect();
        idx.sort_unstable();
        idx.dedup();
        let _stripes: Vec<MutexGuard<'_, ()>> =
            idx.into_iter().map(|i| lock(&self.stripes[i])).collect();
        self.send(writes, &epoch.pending)
    }

    /// Takes the epoch lock exclusively once no snapshot is being read
    /// (restore and clear replace everything, which no undo log covers).
    fn quiesce(&self) -> RwLockWriteGuard<'_, Epoch> {
        loop {
            let epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
            if epoch.pending.is_empty() {
                return epoch;
            }
            let pending = epoch.pending.clone();
            drop(epoch);
            for m in pending {
                let _ = m.wait();
            }
        }
    }

    /// Reads the content of `m` and finishes it (run on its own thread).
    fn materialize(self: &Arc<Self>, m: &Arc<Materialization>) {
        let read = match &m.scope {
            Scope::All => self.read_all(),
            Scope::Keys(keys) => self.read_keys(keys),
        };
        // Detach from the writers: after this no write records into `undo`,
        // and every write that changed a key after the cut has recorded.
        let undo = {
            let mut epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
            epoch.pending.retain(|p| !Arc::ptr_eq(p, m));
            std::mem::take(&mut *lock(&m.undo))
        };
        if m.poisoned.load(Ordering::Relaxed) {
            m.finish(Err(Error::backend(
                // Another snapshot succeeds.
                ErrorKind::Unavailable,
                NAME,
                "read the snapshot",
                "a write with an unknown outcome (a failed request) happened while the snapshot \
                 was being read; take another snapshot",
            )));
            return;
        }
        let mut map = match read {
            Ok(map) => map,
            Err(e) => {
                m.finish(Err(e));
                return;
            }
        };
        for (k, old) in undo {
            match (m.kind, old) {
                (SnapshotKind::Full, None) => {
                    map.remove(&k);
                }
                (_, old) => {
                    map.insert(k, old);
                }
            }
        }
        if m.kind == SnapshotKind::Full {
            self.entries_hint.store(map.len() as u64, Ordering::Relaxed);
        }
        let parts = m.partitions;
        let mut partitions: Vec<Vec<Entry>> = (0..parts).map(|_| Vec::new()).collect();
        for (k, v) in map {
            let p = usize::from(key_group(&k)) % parts;
            partitions[p].push((k, v));
        }
        m.finish(Ok(Content { partitions }));
    }

    fn read_all(&self) -> Result<EntryMap> {
        let (pattern, _) = self.layout.prefix_pattern(&[]);
        let vkeys = self.scan(&pattern, None)?;
        let values = self.fetch(&vkeys)?;
        let strip = self.layout.value_prefix_len;
        Ok(vkeys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k[strip..].into(), Some(v.into()))))
            .collect())
    }

    fn read_keys(&self, keys: &KeySet) -> Result<EntryMap> {
        let keys: Vec<&[u8]> = keys.iter().collect();
        let values = self.fetch_with(&keys, |k, buf| self.layout.value_key_into(k, buf))?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| (k.into(), v.map(Into::into)))
            .collect())
    }
}

/// The write-order stripe of a key.
fn stripe_of(key: &[u8]) -> usize {
    (xxhash_rust::xxh3::xxh3_64(key) as usize) % STRIPES
}

fn unexpected(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

/// A bulk string or nil reply.
fn bytes_of(v: Value) -> std::result::Result<Option<Vec<u8>>, RedisError> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        Value::Okay => Ok(Some(b"OK".to_vec())),
        _ => Err(unexpected("a string or nil reply")),
    }
}

impl StateBackend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let s = &self.shared;
        let cmd = redis::cmd("GET").arg(s.layout.value_key(key)).to_owned();
        let v = s.run("get", |c| c.query(&cmd))?;
        bytes_of(v).map_err(|e| s.err("get", e))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.shared.apply(&[Write {
            key,
            value: Some(value),
        }])
    }

    fn delete(&self, key: &[u8]) -> Result<()> {
        self.shared.apply(&[Write { key, value: None }])
    }

    fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        let writes: Vec<Write<'_>> = batch
            .mutations()
            .iter()
            .map(|m| match m {
                Mutation::Put { key, value } => Write {
                    key,
                    value: Some(value),
                },
                Mutation::Delete { key } => Write { key, value: None },
            })
            .collect();
        if writes.is_empty() {
            return Ok(());
        }
        self.shared.apply(&writes)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.shared.scan_entries(prefix, &|_| true)
    }

    fn scan_range(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        // Every key in [start, end) starts with their common prefix.
        let common = start.iter().zip(end).take_while(|(a, b)| a == b).count();
        self.shared
            .scan_entries(&start[..common], &|k| k >= start && k < end)
    }

    fn snapshot(&self, kind: SnapshotKind) -> Result<Arc<dyn StateSnapshot>> {
        let s = &self.shared;
        let parts = s.config.snapshot_partitions.max(1);
        let mut epoch = s.epoch.write().unwrap_or_else(PoisonError::into_inner);
        // The next epoch's set starts at this epoch's size (capped): in a
        // steady state it never has to grow and rehash on the write path.
        let dirty = {
            let mut d = lock(&epoch.dirty);
            let next = KeySet::with_capacity(d.len().min(1 << 20), d.arena.len().min(64 << 20));
            std::mem::replace(&mut *d, next)
        };
        let (scope, approx) = match kind {
            SnapshotKind::Full => (Scope::All, s.entries_hint.load(Ordering::Relaxed) as usize),
            SnapshotKind::Changes => {
                if dirty.is_empty() {
                    let m = Materialization {
                        kind,
                        scope: Scope::Keys(KeySet::default()),
                        undo: Mutex::new(EntryMap::default()),
                        poisoned: AtomicBool::new(false),
                        progress: Mutex::new(Progress::Done(Arc::new(Content {
                            partitions: (0..parts).map(|_| Vec::new()).collect(),
                        }))),
                        done: Condvar::new(),
                        partitions: parts,
                        approx: 0,
                    };
                    return Ok(Arc::new(RedisSnapshot { m: Arc::new(m) }));
                }
                let n = dirty.len();
                (Scope::Keys(dirty), n)
            }
        };
        let m = Arc::new(Materialization {
            kind,
            scope,
            undo: Mutex::new(EntryMap::default()),
            poisoned: AtomicBool::new(false),
            progress: Mutex::new(Progress::Reading),
            done: Condvar::new(),
            partitions: parts,
            approx,
        });
        epoch.pending.push(m.clone());
        drop(epoch);
        let (shared, mm) = (self.shared.clone(), m.clone());
        let spawned = std::thread::Builder::new()
            .name("highwater-redis-snapshot".into())
            .spawn(move || shared.materialize(&mm));
        if let Err(e) = spawned {
            let mut epoch = s.epoch.write().unwrap_or_else(PoisonError::into_inner);
            epoch.pending.retain(|p| !Arc::ptr_eq(p, &m));
            drop(epoch);
            // Nobody reads this snapshot: the error below is returned.
            m.finish(Err(Error::Internal(
                "the snapshot reader thread did not start".into(),
            )));
            return Err(Error::io("start the redis snapshot reader thread", e));
        }
        Ok(Arc::new(RedisSnapshot { m }))
    }

    fn restore(&self, entries: &mut dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>) -> Result<()> {
        let s = &self.shared;
        let epoch = s.quiesce();
        *lock(&epoch.dirty) = KeySet::default();
        let result = (|| {
            s.delete_all()?;
            let depth = s.config.pipeline_depth.max(1);
            let mut buf: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(depth);
            let flush = |buf: &mut Vec<(Vec<u8>, Vec<u8>)>| -> Result<()> {
                let writes: Vec<Write<'_>> = buf
                    .iter()
                    .map(|(k, v)| Write {
                        key: k,
                        value: Some(v),
                    })
                    .collect();
                s.send(&writes, &[])?;
                buf.clear();
                Ok(())
            };
            for e in entries {
                buf.push(e?);
                if buf.len() == depth {
                    flush(&mut buf)?;
                }
            }
            flush(&mut buf)
        })();
        drop(epoch);
        result
    }

    fn clear(&self) -> Result<()> {
        let s = &self.shared;
        let epoch = s.quiesce();
        *lock(&epoch.dirty) = KeySet::default();
        s.delete_all()
    }

    /// Counts the namespace now: exact (Redis-side expiry included), O(state)
    /// — a `SCAN` and a pipelined `STRLEN` per entry. When the server cannot
    /// be reached, the last successful count is returned.
    fn native(&self) -> Option<&dyn highwater_core::NativeCheckpoints> {
        None
    }

    fn stats(&self) -> BackendStats {
        let s = &self.shared;
        match s.count() {
            Ok(stats) => {
                s.entries_hint.store(stats.entries, Ordering::Relaxed);
                *lock(&s.last_stats) = stats;
                stats
            }
            Err(e) => {
                tracing::warn!(backend = NAME, error = %e, "cannot count the backend's entries");
                *lock(&s.last_stats)
            }
        }
    }
}

/// A snapshot of a [`RedisBackend`]: read from Redis in the background
/// right after the cut; reading it waits for that to finish.
struct RedisSnapshot {
    m: Arc<Materialization>,
}

impl StateSnapshot for RedisSnapshot {
    fn kind(&self) -> SnapshotKind {
        self.m.kind
    }

    fn partitions(&self) -> usize {
        self.m.partitions
    }

    fn for_each_in_partition(&self, partition: usize, f: &mut EntryVisitor<'_>) -> Result<()> {
        if partition >= self.m.partitions {
            return Err(Error::InvalidArgument(format!(
                "snapshot partition out of range: partition={partition} partitions={}",
                self.m.partitions
            )));
        }
        let content = self
            .m
            .wait()
            .map_err(|e| Error::backend(e.kind(), NAME, "read the snapshot", e))?;
        for (k, v) in &content.partitions[partition] {
            f(k, v.as_deref())?;
        }
        Ok(())
    }

    fn approximate_entries(&self) -> usize {
        self.m.approx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_and_patterns_match_their_keys() {
        let l = Layout::new("ns:x", false);
        for raw in [&b""[..], b"\x01", b"\x01\x02", b"\x01\x02rest*?[]"] {
            let k = l.value_key(raw);
            assert_eq!(l.raw_of(&k), Some(raw));
        }
        assert_eq!(l.value_key(b"\x01\x02z"), b"{ns:x:0102}v\x01\x02z");
        assert_eq!(l.value_key(b"\xab"), b"{ns:x:ab00}v\xab");
        assert_eq!(l.prefix_pattern(b"").0, b"{ns:x:????}v*");
        assert_eq!(l.prefix_pattern(b"\xab").0, b"{ns:x:ab??}v\xab*");
        assert_eq!(
            l.prefix_pattern(b"\x00\x01*").0,
            b"{ns:x:0001}v\x00\x01\\**"
        );
        assert_eq!(l.raw_of(b"{ns:x:0102}i\x01\x02"), None);
        assert_eq!(l.raw_of(b"{ns:y:0102}v\x01\x02"), None);
    }

    #[test]
    fn key_sets_survive_hash_collisions() {
        let mut set = KeySet::default();
        set.insert_hashed(7, b"a");
        set.insert_hashed(7, b"b");
        set.insert_hashed(7, b"a");
        set.insert_hashed(7, b"b");
        set.insert_hashed(9, b"");
        assert!(set.find(7, b"a") && set.find(7, b"b") && set.find(9, b""));
        assert!(!set.find(7, b"c") && !set.find(8, b"a"));
        assert_eq!(set.len(), 3);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"b", b""]);
        let mut real = KeySet::with_capacity(10, 100);
        for k in [&b"x"[..], b"yy", b"x", b"\0\0\xff"] {
            real.insert(k);
        }
        assert!(real.contains(b"yy") && !real.contains(b"y"));
        assert_eq!(real.len(), 3);
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(check_namespace("hw-test_1.a:b").is_ok());
        for bad in ["", "a{b", "a}b", "a*b", "a b", &"x".repeat(65)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
