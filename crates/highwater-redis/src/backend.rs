//! The Redis state backend: live keyed state in Redis, change tracking and
//! consistent snapshots in process. See the crate docs for the key layout,
//! the consistency model and the costs.
//!
//! One module per concern: `config` (the configuration), `layout` (Redis
//! keys and scan patterns), `changes` (the in-process key sets), `pool`
//! (connections and retries), `read` (gets, scans, counts), `write` (puts,
//! deletes and batches) and `snapshot` (the cut and its background read).
//! This file holds the backend itself and its [`StateBackend`]
//! implementation.

mod changes;
mod config;
mod layout;
mod pool;
mod read;
mod snapshot;
mod write;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use highwater_core::{
    BackendStats, Mutation, RecordBlock, Result, SnapshotKind, StateBackend, StateSnapshot,
    WriteBatch,
};
use redis::{RedisError, Value};

use self::changes::KeySet;
pub use self::config::RedisBackendConfig;
pub(crate) use self::config::check_namespace;
use self::layout::Layout;
use self::pool::Pool;
use self::snapshot::Epoch;
use self::write::{STRIPES, Write};
use crate::conn::RedisEndpoint;

/// The backend's name in errors and metrics.
const NAME: &str = "redis";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent before any
    // call that can panic, so a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the backend and its snapshot readers share.
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
    /// now; more on demand). Fails with
    /// [`Error::InvalidArgument`](highwater_core::Error::InvalidArgument)
    /// for a bad namespace or URL and
    /// [`Error::Backend`](highwater_core::Error::Backend) when the server
    /// cannot be reached.
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
        self.shared.snapshot(kind)
    }

    fn restore(&self, blocks: &mut dyn Iterator<Item = Result<RecordBlock>>) -> Result<()> {
        let s = &self.shared;
        let epoch = s.quiesce();
        *lock(&epoch.dirty) = KeySet::default();
        let result = (|| {
            s.delete_all()?;
            let depth = s.config.pipeline_depth.max(1);
            // Writes borrow from the block they come from: each block is
            // sent in pipelines of `depth` writes.
            for block in blocks {
                let block = block?;
                let writes: Vec<Write<'_>> = block
                    .puts()
                    .map(|(key, v)| Write {
                        key,
                        value: Some(v),
                    })
                    .collect();
                for pipeline in writes.chunks(depth) {
                    s.send(pipeline, &[])?;
                }
            }
            Ok(())
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

    /// None: a restore is streamed to the server through
    /// [`restore`](StateBackend::restore).
    fn bulk_restore(&self) -> Option<Box<dyn highwater_core::BulkRestore + '_>> {
        None
    }

    /// None: Redis has no native checkpoint format; checkpoints are encoded
    /// from snapshots.
    fn native(&self) -> Option<&dyn highwater_core::NativeCheckpoints> {
        None
    }

    /// Counts the namespace now: exact (Redis-side expiry included), O(state)
    /// — a `SCAN` and a pipelined `STRLEN` per entry. When the server cannot
    /// be reached, the last successful count is returned.
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
