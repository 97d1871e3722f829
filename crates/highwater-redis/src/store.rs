//! The Redis checkpoint store: content-addressed artifacts (chunked when
//! large) and manifests committed atomically by a Lua script. See the crate
//! docs for the key layout and the guarantees.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use highwater_core::{
    ArtifactId, BoxFuture, CheckpointId, CheckpointStore, Error, ErrorKind, PutOutcome, Result,
    StoreCounters,
};
use redis::{RedisError, Value};

use crate::backend::check_namespace;
use crate::conn::{AsyncConn, ConnectOptions, RedisEndpoint, is_transient, needs_reconnect};
use crate::error::op_error;

/// The store's name in errors and metrics.
const NAME: &str = "redis";

/// Magic and version of an artifact header.
const HEADER_MAGIC: &[u8; 4] = b"HWRA";
const HEADER_VERSION: u8 = 1;
const KIND_INLINE: u8 = 0;
const KIND_CHUNKED: u8 = 1;
/// Length of a chunked header: magic, version, kind, total (u64), parts
/// (u32), part size (u32).
const CHUNKED_HEADER_LEN: usize = 4 + 1 + 1 + 8 + 4 + 4;
/// Parts fetched per `MGET`, to bound the size of one reply.
const PARTS_PER_READ: usize = 4;
/// Keys per `UNLINK` or expiry pipeline, so a chunked header (read from
/// the store, so not trusted) never builds one unbounded command.
const KEYS_PER_COMMAND: usize = 1024;
/// The largest part size a header may claim: the largest `chunk_size` a
/// store accepts.
const MAX_PART_SIZE: usize = 256 << 20;

/// Publishes a chunked artifact once its parts are written: creates the
/// header only if absent and makes the parts permanent (or gives them the
/// configured expiry). Refuses when a part is missing (expired before the
/// commit), so a header never points at missing parts.
///
/// KEYS: header, part 0 … part n-1. ARGV: header bytes, expiry in ms (0 for
/// none). Returns 1 when published, 0 when the header already existed, -1
/// when a part is missing.
const PUBLISH_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return -1 end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
for i = 2, #KEYS do
  if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) else redis.call('PERSIST', KEYS[i]) end
end
return 1
";

/// Commits a manifest: create-only, and in the same atomic step adds its
/// id to the index, scored by its expiry (server time) or `+inf`.
///
/// KEYS: manifest, index. ARGV: manifest bytes, index member, expiry in ms
/// (0 for none). Returns 1 when committed, 0 when the manifest existed.
const COMMIT_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[3])
local score = '+inf'
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  local t = redis.call('TIME')
  score = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('ZADD', KEYS[2], score, ARGV[2])
return 1
";

/// Lists the committed manifests: drops index entries whose manifest has
/// expired (by server time), then returns the members.
///
/// KEYS: index.
const LIST_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Configuration of a [`RedisCheckpointStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// The server or cluster.
    pub endpoint: RedisEndpoint,
    /// The namespace of the store's keys (1 to 64 bytes of
    /// `[A-Za-z0-9_.:-]`); several stores can share a server.
    pub namespace: String,
    /// Timeouts and retries.
    pub connect: ConnectOptions,
    /// Artifacts larger than this are stored in parts of this size.
    pub chunk_size: usize,
    /// Expiry of every artifact and manifest, refreshed when an artifact
    /// is put again. Off by default: retention is reference counting over
    /// manifests (see the crate docs).
    pub expiry: Option<Duration>,
    /// Expiry of the parts of a chunked artifact until its header is
    /// published, so an upload cut short leaves nothing behind for long.
    pub orphan_ttl: Duration,
}

impl RedisStoreConfig {
    /// Defaults for `endpoint`: namespace `highwater`, 4 MiB parts, no
    /// expiry, parts of unfinished uploads expire after an hour.
    pub fn new(endpoint: RedisEndpoint) -> Self {
        RedisStoreConfig {
            endpoint,
            namespace: "highwater".to_owned(),
            connect: ConnectOptions::default(),
            chunk_size: 4 << 20,
            expiry: None,
            orphan_ttl: Duration::from_secs(3600),
        }
    }

    /// Replaces the namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }
}

type Counters = highwater_core::AtomicStoreCounters;

fn bump(counter: &AtomicU64, by: u64) {
    Counters::bump(counter, by);
}

/// The connection, replaced after a failure that broke it. The generation
/// tells a failed request whether the connection it used is still current.
struct Slot {
    conn: Option<(u64, AsyncConn)>,
    next_gen: u64,
}

/// A [`CheckpointStore`] in Redis (standalone or cluster).
///
/// See the [crate documentation](crate) for the key layout and the
/// guarantees. [`StoreCounters`] count requests as sent, retries included;
/// `bytes_written` counts only bytes the store accepted.
pub struct RedisCheckpointStore {
    config: RedisStoreConfig,
    slot: Mutex<Slot>,
    counters: Counters,
    publish: redis::Script,
    commit: redis::Script,
    list: redis::Script,
    /// `{<ns>:m}:`, the prefix of manifests and their index.
    manifest_head: String,
}

impl std::fmt::Debug for RedisCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCheckpointStore")
            .field("endpoint", &self.config.endpoint.redacted())
            .field("namespace", &self.config.namespace)
            .finish()
    }
}

impl RedisCheckpointStore {
    /// Connects to `config.endpoint` now, on the calling runtime. Fails with
    /// [`Error::InvalidArgument`] for a bad namespace, chunk size or URL, and
    /// [`Error::Store`] when the server cannot be reached.
    ///
    /// The connection's I/O runs on the runtime that made it; if that
    /// runtime shuts down, the next request reconnects on its own runtime.
    pub async fn connect(config: RedisStoreConfig) -> Result<Self> {
        let store = Self::new(config)?;
        store.conn().await.map_err(|e| store.err("connect", e))?;
        Ok(store)
    }

    /// A store that connects on its first request, on the runtime that runs
    /// it: for synchronous callers, and for stores handed to a component
    /// that runs them on its own runtime (the `highwater` facade's
    /// `StateManager`). Checks the configuration (not the server) now.
    pub fn new(config: RedisStoreConfig) -> Result<Self> {
        check_namespace(&config.namespace)?;
        if config.chunk_size == 0 || config.chunk_size > 256 << 20 {
            return Err(Error::InvalidArgument(format!(
                "redis store chunk size must be 1 byte to 256 MiB: chunk_size={}",
                config.chunk_size
            )));
        }
        let manifest_head = format!("{{{}:m}}:", config.namespace);
        let store = RedisCheckpointStore {
            config,
            slot: Mutex::new(Slot {
                conn: None,
                next_gen: 0,
            }),
            counters: Counters::default(),
            publish: redis::Script::new(PUBLISH_SCRIPT),
            commit: redis::Script::new(COMMIT_SCRIPT),
            list: redis::Script::new(LIST_SCRIPT),
            manifest_head,
        };
        // Parse the URLs now, so a bad one fails here and not on first use.
        let parsed = match &store.config.endpoint {
            RedisEndpoint::Standalone(u) => redis::Client::open(u.as_str()).map(drop),
            RedisEndpoint::Cluster(us) => {
                redis::cluster::ClusterClient::new(us.iter().map(String::as_str)).map(drop)
            }
        };
        parsed.map_err(|e| store.err("connect", e))?;
        Ok(store)
    }

    /// Connects to `url` (see [`RedisEndpoint::parse`]) with the default
    /// configuration (namespace `highwater`).
    pub async fn open(url: &str) -> Result<Self> {
        Self::connect(RedisStoreConfig::new(RedisEndpoint::parse(url)?)).await
    }

    /// The configuration.
    pub fn config(&self) -> &RedisStoreConfig {
        &self.config
    }

    /// The Redis key of an artifact's header.
    pub fn artifact_key(&self, id: ArtifactId) -> String {
        format!("{{{}:a:{id}}}", self.config.namespace)
    }

    fn part_key(&self, id: ArtifactId, i: usize) -> String {
        format!("{{{}:a:{id}}}:{i}", self.config.namespace)
    }

    /// The Redis key of a manifest.
    pub fn manifest_key(&self, id: CheckpointId) -> String {
        format!("{}{:020}", self.manifest_head, id.0)
    }

    /// The Redis key of the manifest index (a sorted set).
    pub fn index_key(&self) -> String {
        format!("{}index", self.manifest_head)
    }

    fn err(&self, op: &'static str, source: RedisError) -> Error {
        op_error(
            Error::store_with_kind,
            NAME,
            &self.config.endpoint,
            op,
            source,
        )
    }

    /// The current connection, connecting first if there is none.
    async fn conn(&self) -> std::result::Result<(u64, AsyncConn), RedisError> {
        if let Some(c) = &self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conn
        {
            return Ok(c.clone());
        }
        let conn = AsyncConn::connect(&self.config.endpoint, &self.config.connect).await?;
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = &slot.conn {
            // Another task connected meanwhile: use one connection.
            return Ok(c.clone());
        }
        let generation = slot.next_gen;
        slot.next_gen += 1;
        slot.conn = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Forgets connection `generation` so the next request reconnects.
    fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            slot.conn = None;
        }
    }

    /// Runs `attempt` under the retry policy and a per-attempt deadline,
    /// counting every attempt in `counter`. Returns the last result and the
    /// number of attempts made.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        counter: &AtomicU64,
        attempt: F,
    ) -> (std::result::Result<T, RedisError>, u32)
    where
        F: Fn(AsyncConn) -> Fut,
        Fut: Future<Output = std::result::Result<T, RedisError>>,
    {
        let deadline = self.config.connect.connect_timeout + self.config.connect.response_timeout;
        let attempt = &attempt;
        self.config
            .connect
            .retry
            .retry(
                || async move {
                    bump(counter, 1);
                    match self.conn().await {
                        Ok((generation, conn)) => {
                            let r = match tokio::time::timeout(deadline, attempt(conn)).await {
                                Ok(r) => r,
                                Err(_) => Err(RedisError::from(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    format!("no reply within {deadline:?}"),
                                ))),
                            };
                            if let Err(e) = &r
                                && needs_reconnect(e)
                            {
                                self.invalidate(generation);
                            }
                            r
                        }
                        Err(e) => Err(e),
                    }
                },
                is_transient,
                |r| {
                    tracing::warn!(
                        store = NAME,
                        op,
                        attempt = r.attempt,
                        backoff_ms = r.backoff.as_millis() as u64,
                        error = %r.error,
                        "transient redis error, retrying"
                    );
                },
                tokio::time::sleep,
            )
            .await
    }

    fn expiry_ms(&self) -> u64 {
        self.config
            .expiry
            .map_or(0, |d| (d.as_millis() as u64).max(1))
    }

    /// Refreshes the expiry of a stored artifact (when expiry is on).
    async fn refresh_expiry(&self, id: ArtifactId) -> Result<()> {
        let ttl = self.expiry_ms();
        if ttl == 0 {
            return Ok(());
        }
        let header = self.artifact_key(id);
        let (result, _) = self
            .run("refresh artifact expiry", &self.counters.puts, |mut c| {
                let header = &header;
                async move { c.query(&redis::cmd("GET").arg(header).to_owned()).await }
            })
            .await;
        let Some(raw) = string_or_nil(result.map_err(|e| self.err("refresh artifact expiry", e))?)
        else {
            return Ok(());
        };
        let parts = match parse_header(&raw) {
            Ok(Header::Chunked { parts, .. }) => parts,
            _ => 0,
        };
        // The header first, then the parts, a bounded number per pipeline
        // (the header is read from the store, so `parts` is not trusted:
        // a batch of parts none of which exists ends the walk).
        let mut pipe = redis::pipe();
        pipe.cmd("PEXPIRE").arg(&header).arg(ttl).ignore();
        let (result, _) = self
            .run("refresh artifact expiry", &self.counters.puts, |mut c| {
                let pipe = &pipe;
                async move { c.pipeline(pipe).await }
            })
            .await;
        result.map_err(|e| self.err("refresh artifact expiry", e))?;
        for start in (0..parts).step_by(KEYS_PER_COMMAND) {
            let mut pipe = redis::pipe();
            for i in start..(start + KEYS_PER_COMMAND).min(parts) {
                pipe.cmd("PEXPIRE").arg(self.part_key(id, i)).arg(ttl);
            }
            let (result, _) = self
                .run("refresh artifact expiry", &self.counters.puts, |mut c| {
                    let pipe = &pipe;
                    async move { c.pipeline(pipe).await }
                })
                .await;
            let set = result.map_err(|e| self.err("refresh artifact expiry", e))?;
            if set.iter().all(|v| matches!(v, Value::Int(0))) {
                break;
            }
        }
        Ok(())
    }

    async fn put_inline(&self, id: ArtifactId, data: &Bytes) -> Result<PutOutcome> {
        let header = [
            HEADER_MAGIC[0],
            HEADER_MAGIC[1],
            HEADER_MAGIC[2],
            HEADER_MAGIC[3],
            HEADER_VERSION,
            KIND_INLINE,
        ];
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.artifact_key(id))
            .arg(Concat(&header, data))
            .arg("NX");
        let ttl = self.expiry_ms();
        if ttl > 0 {
            cmd.arg("PX").arg(ttl);
        }
        let (result, _) = self
            .run("put artifact", &self.counters.puts, |mut c| {
                let cmd = &cmd;
                async move { c.query(cmd).await }
            })
            .await;
        match result.map_err(|e| self.err("put artifact", e))? {
            Value::Nil => {
                // Created by an earlier put (or an earlier attempt of this
                // one whose reply was lost): the bytes are the same.
                self.refresh_expiry(id).await?;
                Ok(PutOutcome::AlreadyPresent)
            }
            _ => {
                bump(&self.counters.bytes_written, data.len() as u64);
                Ok(PutOutcome::Written)
            }
        }
    }

    async fn put_chunked(&self, id: ArtifactId, data: &Bytes) -> Result<PutOutcome> {
        if self.has(id, &self.counters.heads).await? {
            self.refresh_expiry(id).await?;
            return Ok(PutOutcome::AlreadyPresent);
        }
        let chunk = self.config.chunk_size;
        let parts = data.len().div_ceil(chunk);
        let orphan_ms = (self.config.orphan_ttl.as_millis() as u64).max(1000);
        // Parts first, each with the orphan expiry, a few per round trip;
        // nothing refers to them until the header is published.
        let indices: Vec<usize> = (0..parts).collect();
        for group in indices.chunks(PARTS_PER_READ) {
            let mut pipe = redis::pipe();
            for &i in group {
                let part = data.slice(i * chunk..((i + 1) * chunk).min(data.len()));
                pipe.cmd("SET")
                    .arg(self.part_key(id, i))
                    .arg(part.as_ref())
                    .arg("PX")
                    .arg(orphan_ms)
                    .ignore();
            }
            let (result, _) = self
                .run("put artifact part", &self.counters.puts, |mut c| {
                    let pipe = &pipe;
                    async move { c.pipeline(pipe).await }
                })
                .await;
            result.map_err(|e| self.err("put artifact part", e))?;
        }
        let mut header = Vec::with_capacity(CHUNKED_HEADER_LEN);
        header.extend_from_slice(HEADER_MAGIC);
        header.extend_from_slice(&[HEADER_VERSION, KIND_CHUNKED]);
        header.extend_from_slice(&(data.len() as u64).to_le_bytes());
        header.extend_from_slice(&(parts as u32).to_le_bytes());
        header.extend_from_slice(&(chunk as u32).to_le_bytes());
        let keys: Vec<String> = std::iter::once(self.artifact_key(id))
            .chain((0..parts).map(|i| self.part_key(id, i)))
            .collect();
        let (keys, header, ttl) = (&keys, &header, self.expiry_ms());
        let (result, attempts) = self
            .run(
                "publish artifact",
                &self.counters.puts,
                |mut c| async move {
                    let mut inv = self.publish.prepare_invoke();
                    for k in keys {
                        inv.key(k);
                    }
                    inv.arg(header.as_slice()).arg(ttl);
                    c.script(&inv).await
                },
            )
            .await;
        match result.map_err(|e| self.err("publish artifact", e))? {
            Value::Int(1) => {
                bump(&self.counters.bytes_written, data.len() as u64);
                Ok(PutOutcome::Written)
            }
            Value::Int(0) => {
                if attempts == 1 {
                    self.refresh_expiry(id).await?;
                }
                Ok(PutOutcome::AlreadyPresent)
            }
            Value::Int(-1) => Err(Error::store_with_kind(
                // Putting it again succeeds.
                ErrorKind::Unavailable,
                NAME,
                "publish artifact",
                format!(
                    "a part of artifact {id} expired before its header was published \
                     (orphan_ttl={:?}); put it again",
                    self.config.orphan_ttl
                ),
            )),
            other => Err(self.err(
                "publish artifact",
                unexpected(&format!("publish script returned {other:?}")),
            )),
        }
    }

    async fn has(&self, id: ArtifactId, counter: &AtomicU64) -> Result<bool> {
        let cmd = redis::cmd("EXISTS").arg(self.artifact_key(id)).to_owned();
        let (result, _) = self
            .run("check artifact", counter, |mut c| {
                let cmd = &cmd;
                async move { c.query(cmd).await }
            })
            .await;
        match result.map_err(|e| self.err("check artifact", e))? {
            Value::Int(n) => Ok(n > 0),
            other => Err(self.err(
                "check artifact",
                unexpected(&format!("EXISTS returned {other:?}")),
            )),
        }
    }

    /// Every key matching `pattern` on every node (deduplicated).
    async fn scan(&self, op: &'static str, pattern: &str) -> Result<Vec<Vec<u8>>> {
        let (result, _) = self
            .run(op, &self.counters.lists, |mut c| async move {
                c.scan_targets().await
            })
            .await;
        let targets = result.map_err(|e| self.err(op, e))?;
        let mut keys = std::collections::HashSet::new();
        for t in targets {
            let mut cursor = 0u64;
            loop {
                let (result, _) = self
                    .run(op, &self.counters.lists, |mut c| async move {
                        c.scan_page(t, cursor, pattern.as_bytes(), 1000).await
                    })
                    .await;
                let (next, page) = result.map_err(|e| self.err(op, e))?;
                keys.extend(page);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(keys.into_iter().collect())
    }
}

/// One command argument made of two byte strings, written straight into
/// the command buffer (an artifact's bytes are not copied an extra time to
/// put the header in front).
struct Concat<'a>(&'a [u8], &'a [u8]);

impl redis::ToRedisArgs for Concat<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut w = out.writer_for_next_arg();
        // Writing into the command's in-memory buffer cannot fail.
        let _ = w.write_all(self.0);
        let _ = w.write_all(self.1);
    }
}

impl redis::ToSingleRedisArg for Concat<'_> {}

#[derive(Debug)]
enum Header<'a> {
    Inline(&'a [u8]),
    Chunked {
        total: u64,
        parts: usize,
        part_size: usize,
    },
}

fn parse_header(raw: &[u8]) -> Result<Header<'_>> {
    let corrupt = |detail: String| Error::corrupt("redis artifact header", detail);
    let Some(rest) = raw.strip_prefix(HEADER_MAGIC.as_slice()) else {
        return Err(corrupt(format!("bad magic: len={}", raw.len())));
    };
    match rest {
        [HEADER_VERSION, KIND_INLINE, data @ ..] => Ok(Header::Inline(data)),
        [HEADER_VERSION, KIND_CHUNKED, fields @ ..] if fields.len() == 16 => {
            let total = u64::from_le_bytes(fields[0..8].try_into().unwrap_or_default());
            let parts = u32::from_le_bytes(fields[8..12].try_into().unwrap_or_default()) as usize;
            let part_size =
                u32::from_le_bytes(fields[12..16].try_into().unwrap_or_default()) as usize;
            let expected = (part_size as u64).saturating_mul(parts as u64);
            if part_size == 0
                || part_size > MAX_PART_SIZE
                || parts == 0
                || total > expected
                || total <= expected - part_size as u64
            {
                return Err(corrupt(format!(
                    "inconsistent sizes: total={total} parts={parts} part_size={part_size}"
                )));
            }
            Ok(Header::Chunked {
                total,
                parts,
                part_size,
            })
        }
        [version, ..] if *version != HEADER_VERSION => Err(Error::UnsupportedVersion {
            what: "redis artifact header",
            found: u16::from(*version),
            supported: u16::from(HEADER_VERSION),
        }),
        _ => Err(corrupt(format!(
            "unknown kind or short header: len={}",
            raw.len()
        ))),
    }
}

/// A chunked artifact put together from its parts as they arrive, each
/// checked against the length its header implies.
pub(crate) struct Assembly {
    id: ArtifactId,
    total: u64,
    parts: usize,
    part_size: usize,
    out: BytesMut,
    next: usize,
}

impl Assembly {
    pub(crate) fn new(id: ArtifactId, total: u64, parts: usize, part_size: usize) -> Assembly {
        Assembly {
            id,
            total,
            parts,
            part_size,
            out: BytesMut::new(),
            next: 0,
        }
    }

    /// Appends the next part (`None`: the store has no such key).
    pub(crate) fn push(&mut self, part: Option<&[u8]>) -> Result<()> {
        let (id, i, parts) = (self.id, self.next, self.parts);
        let Some(part) = part else {
            return Err(Error::corrupt(
                "redis artifact",
                format!("part missing: id={id} part={i} parts={parts}"),
            ));
        };
        // `parse_header` guarantees 0 < total - part_size * (parts - 1)
        // <= part_size; checked anyway, the header being untrusted.
        let want = if i + 1 == parts {
            (self.total as usize).checked_sub(self.part_size.saturating_mul(parts - 1))
        } else if i < parts {
            Some(self.part_size)
        } else {
            None
        };
        if want != Some(part.len()) {
            return Err(Error::corrupt(
                "redis artifact",
                format!(
                    "part has the wrong length: id={id} part={i} len={} expected={want:?}",
                    part.len()
                ),
            ));
        }
        self.out.extend_from_slice(part);
        self.next += 1;
        Ok(())
    }

    /// The artifact, once every part arrived.
    pub(crate) fn finish(self) -> Result<Bytes> {
        if self.next != self.parts || self.out.len() as u64 != self.total {
            return Err(Error::corrupt(
                "redis artifact",
                format!(
                    "parts do not add up: id={} total={} parts={} read={} bytes={}",
                    self.id,
                    self.total,
                    self.parts,
                    self.next,
                    self.out.len()
                ),
            ));
        }
        Ok(self.out.freeze())
    }
}

/// Entry points for fuzzing the store's decoding of what it reads (feature
/// `fuzzing`; see `crates/highwater-fuzz`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// Parses `raw` as an artifact's header key and, for a chunked header,
    /// puts the artifact together from `parts` (fewer than the header
    /// claims is a missing part) as `get_artifact` does.
    pub fn artifact(raw: &[u8], parts: &[&[u8]]) -> Result<Bytes> {
        match parse_header(raw)? {
            Header::Inline(data) => Ok(Bytes::copy_from_slice(data)),
            Header::Chunked {
                total,
                parts: n,
                part_size,
            } => {
                let mut a = Assembly::new(ArtifactId(0), total, n, part_size);
                for i in 0..n {
                    a.push(parts.get(i).copied())?;
                }
                a.finish()
            }
        }
    }

    /// The header and parts the store writes for `data` with parts of
    /// `chunk_size` bytes (a real encoding, to seed a corpus).
    pub fn encode(data: &[u8], chunk_size: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut header = HEADER_MAGIC.to_vec();
        if data.len() <= chunk_size {
            header.extend_from_slice(&[HEADER_VERSION, KIND_INLINE]);
            header.extend_from_slice(data);
            return (header, Vec::new());
        }
        let parts: Vec<Vec<u8>> = data.chunks(chunk_size).map(<[u8]>::to_vec).collect();
        header.extend_from_slice(&[HEADER_VERSION, KIND_CHUNKED]);
        header.extend_from_slice(&(data.len() as u64).to_le_bytes());
        header.extend_from_slice(&(parts.len() as u32).to_le_bytes());
        header.extend_from_slice(&(chunk_size as u32).to_le_bytes());
        (header, parts)
    }
}

fn unexpected(what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        what.to_owned(),
    ))
}

fn string_or_nil(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// Parses `{<ns>:a:<32 hex>}` into an artifact id.
fn parse_artifact_key(ns: &str, key: &[u8]) -> Option<ArtifactId> {
    let s = std::str::from_utf8(key).ok()?;
    let hex = s
        .strip_prefix('{')?
        .strip_prefix(ns)?
        .strip_prefix(":a:")?
        .strip_suffix('}')?;
    if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().map(ArtifactId)
}

impl CheckpointStore for RedisCheckpointStore {
    fn name(&self) -> &'static str {
        NAME
    }

    fn put_artifact(&self, id: ArtifactId, data: Bytes) -> BoxFuture<'_, Result<PutOutcome>> {
        Box::pin(async move {
            highwater_core::crypto::check_content_address(id, &data)?;
            if data.len() <= self.config.chunk_size {
                self.put_inline(id, &data).await
            } else {
                self.put_chunked(id, &data).await
            }
        })
    }

    fn get_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            let key = self.artifact_key(id);
            let cmd = redis::cmd("GET").arg(&key).to_owned();
            let (result, _) = self
                .run("get artifact", &self.counters.gets, |mut c| {
                    let cmd = &cmd;
                    async move { c.query(cmd).await }
                })
                .await;
            let Some(raw) = string_or_nil(result.map_err(|e| self.err("get artifact", e))?) else {
                return Err(Error::NotFound(format!("artifact {id} at redis:{key}")));
            };
            let (total, parts, part_size) = match parse_header(&raw)? {
                Header::Inline(data) => {
                    let len = data.len();
                    bump(&self.counters.bytes_read, len as u64);
                    // The bytes follow the header: no copy.
                    let raw = Bytes::from(raw);
                    return Ok(raw.slice(raw.len() - len..));
                }
                Header::Chunked {
                    total,
                    parts,
                    part_size,
                } => (total, parts, part_size),
            };
            // The header is not trusted: memory grows with the parts that
            // arrive (each checked against its expected length), never
            // with the total the header claims.
            let mut out = Assembly::new(id, total, parts, part_size);
            for start in (0..parts).step_by(PARTS_PER_READ) {
                let group = start..(start + PARTS_PER_READ).min(parts);
                let mut cmd = redis::cmd("MGET");
                for i in group.clone() {
                    cmd.arg(self.part_key(id, i));
                }
                let (result, _) = self
                    .run("get artifact part", &self.counters.gets, |mut c| {
                        let cmd = &cmd;
                        async move { c.query(cmd).await }
                    })
                    .await;
                let Value::Array(values) = result.map_err(|e| self.err("get artifact part", e))?
                else {
                    return Err(self.err("get artifact part", unexpected("MGET reply")));
                };
                if values.len() != group.len() {
                    return Err(self.err("get artifact part", unexpected("MGET reply length")));
                }
                for v in values {
                    out.push(string_or_nil(v).as_deref())?;
                }
            }
            let out = out.finish()?;
            bump(&self.counters.bytes_read, total);
            Ok(out)
        })
    }

    fn has_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move { self.has(id, &self.counters.heads).await })
    }

    fn list_artifacts(&self) -> BoxFuture<'_, Result<Vec<ArtifactId>>> {
        Box::pin(async move {
            let ns = &self.config.namespace;
            let pattern = format!("{{{ns}:a:{}}}", "?".repeat(32));
            let mut ids: Vec<ArtifactId> = self
                .scan("list artifacts", &pattern)
                .await?
                .iter()
                .filter_map(|k| parse_artifact_key(ns, k))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            Ok(ids)
        })
    }

    fn delete_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let header = self.artifact_key(id);
            let get = redis::cmd("GET").arg(&header).to_owned();
            let (result, _) = self
                .run("delete artifact", &self.counters.deletes, |mut c| {
                    let get = &get;
                    async move { c.query(get).await }
                })
                .await;
            let Some(raw) = string_or_nil(result.map_err(|e| self.err("delete artifact", e))?)
            else {
                return Ok(());
            };
            // The header goes first, in the same command as the parts when
            // they fit in one (the usual case: up to 1023 parts), so a
            // reader never finds a header whose parts are gone. More parts
            // are deleted in further commands of bounded size after the
            // header; a crash between them leaves parts no header names.
            // A damaged header is deleted alone (its parts, if any, keep
            // only what the orphan or store expiry gives them).
            let parts = match parse_header(&raw) {
                Ok(Header::Chunked { parts, .. }) => parts,
                _ => 0,
            };
            // A batch of parts none of which existed ends the walk: the
            // parts of a published artifact are 0..parts, so only a forged
            // or damaged header claims parts beyond them.
            let mut next = 0;
            let mut first = true;
            while first || next < parts {
                let end = if first {
                    parts.min(KEYS_PER_COMMAND - 1)
                } else {
                    parts.min(next + KEYS_PER_COMMAND)
                };
                let mut unlink = redis::cmd("UNLINK");
                if first {
                    unlink.arg(&header);
                }
                for i in next..end {
                    unlink.arg(self.part_key(id, i));
                }
                let (result, _) = self
                    .run("delete artifact", &self.counters.deletes, |mut c| {
                        let unlink = &unlink;
                        async move { c.query(unlink).await }
                    })
                    .await;
                let removed = result.map_err(|e| self.err("delete artifact", e))?;
                if !first && matches!(removed, Value::Int(0)) {
                    break;
                }
                first = false;
                next = end;
            }
            Ok(())
        })
    }

    fn commit_manifest(&self, id: CheckpointId, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let key = self.manifest_key(id);
            let (key_ref, index, member, data_ref, ttl) = (
                &key,
                &self.index_key(),
                &format!("{:020}", id.0),
                &data,
                self.expiry_ms(),
            );
            let (result, attempts) = self
                .run("commit manifest", &self.counters.puts, |mut c| async move {
                    let mut inv = self.commit.prepare_invoke();
                    inv.key(key_ref)
                        .key(index)
                        .arg(data_ref.as_ref())
                        .arg(member)
                        .arg(ttl);
                    c.script(&inv).await
                })
                .await;
            match result.map_err(|e| self.err("commit manifest", e))? {
                Value::Int(1) => {
                    bump(&self.counters.bytes_written, data.len() as u64);
                    Ok(())
                }
                Value::Int(0) => {
                    // After a retry, an earlier attempt may have committed
                    // with its reply lost: if the stored manifest is ours
                    // byte for byte, the commit did happen.
                    if attempts > 1 && self.get_manifest(id).await.ok().as_ref() == Some(&data) {
                        bump(&self.counters.bytes_written, data.len() as u64);
                        return Ok(());
                    }
                    Err(Error::AlreadyExists(format!(
                        "manifest {id} at redis:{key}"
                    )))
                }
                other => Err(self.err(
                    "commit manifest",
                    unexpected(&format!("commit script returned {other:?}")),
                )),
            }
        })
    }

    fn get_manifest(&self, id: CheckpointId) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            let key = self.manifest_key(id);
            let cmd = redis::cmd("GET").arg(&key).to_owned();
            let (result, _) = self
                .run("get manifest", &self.counters.gets, |mut c| {
                    let cmd = &cmd;
                    async move { c.query(cmd).await }
                })
                .await;
            match string_or_nil(result.map_err(|e| self.err("get manifest", e))?) {
                Some(b) => {
                    bump(&self.counters.bytes_read, b.len() as u64);
                    Ok(Bytes::from(b))
                }
                None => Err(Error::NotFound(format!("manifest {id} at redis:{key}"))),
            }
        })
    }

    fn list_manifests(&self) -> BoxFuture<'_, Result<Vec<CheckpointId>>> {
        Box::pin(async move {
            let index = &self.index_key();
            let (result, _) = self
                .run("list manifests", &self.counters.lists, |mut c| async move {
                    let mut inv = self.list.prepare_invoke();
                    inv.key(index);
                    c.script(&inv).await
                })
                .await;
            let Value::Array(members) = result.map_err(|e| self.err("list manifests", e))? else {
                return Err(self.err("list manifests", unexpected("index reply")));
            };
            let mut ids = Vec::with_capacity(members.len());
            for m in members {
                let parsed = string_or_nil(m)
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                match parsed {
                    Some(id) => ids.push(CheckpointId(id)),
                    None => tracing::warn!(
                        store = NAME,
                        index = self.index_key(),
                        "ignoring a manifest index entry that is not a checkpoint id"
                    ),
                }
            }
            ids.sort_unstable();
            Ok(ids)
        })
    }

    fn delete_manifest(&self, id: CheckpointId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // Both in one transaction on one slot: the index never lists a
            // deleted manifest.
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("UNLINK")
                .arg(self.manifest_key(id))
                .ignore()
                .cmd("ZREM")
                .arg(self.index_key())
                .arg(format!("{:020}", id.0))
                .ignore();
            let (result, _) = self
                .run("delete manifest", &self.counters.deletes, |mut c| {
                    let pipe = &pipe;
                    async move { c.pipeline(pipe).await }
                })
                .await;
            result
                .map(|_| ())
                .map_err(|e| self.err("delete manifest", e))
        })
    }

    fn counters(&self) -> StoreCounters {
        self.counters.snapshot()
    }

    /// The same server under the namespace `<namespace>:<scope>` (each `/`
    /// of the scope becomes `:`; scopes hold no `:`, so two scopes never
    /// share keys), with the same settings, a connection and counters of
    /// its own.
    fn scoped(&self, scope: &str) -> Result<std::sync::Arc<dyn CheckpointStore>> {
        if !highwater_core::valid_scope(scope) {
            return Err(Error::InvalidArgument(format!(
                "not a valid store scope: {:?}",
                scope.chars().take(64).collect::<String>()
            )));
        }
        let namespace = format!("{}:{}", self.config.namespace, scope.replace('/', ":"));
        let config = self.config.clone().with_namespace(namespace);
        Ok(std::sync::Arc::new(RedisCheckpointStore::new(config)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_reject_damage() {
        let mut inline = HEADER_MAGIC.to_vec();
        inline.extend_from_slice(&[HEADER_VERSION, KIND_INLINE, 1, 2, 3]);
        assert!(matches!(
            parse_header(&inline),
            Ok(Header::Inline(&[1, 2, 3]))
        ));
        let mut chunked = HEADER_MAGIC.to_vec();
        chunked.extend_from_slice(&[HEADER_VERSION, KIND_CHUNKED]);
        chunked.extend_from_slice(&10u64.to_le_bytes());
        chunked.extend_from_slice(&3u32.to_le_bytes());
        chunked.extend_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            parse_header(&chunked),
            Ok(Header::Chunked {
                total: 10,
                parts: 3,
                part_size: 4
            })
        ));
        let mut bad = chunked.clone();
        bad[6..14].copy_from_slice(&13u64.to_le_bytes());
        assert!(parse_header(&bad).unwrap_err().is_corruption());
        let mut v2 = inline.clone();
        v2[4] = 2;
        assert!(matches!(
            parse_header(&v2),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        assert!(parse_header(b"HWR").unwrap_err().is_corruption());
        // Issue 18: a part size above the largest chunk size is refused.
        let mut huge = HEADER_MAGIC.to_vec();
        huge.extend_from_slice(&[HEADER_VERSION, KIND_CHUNKED]);
        huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
        huge.extend_from_slice(&2048u32.to_le_bytes());
        huge.extend_from_slice(&(1u32 << 29).to_le_bytes());
        assert!(parse_header(&huge).unwrap_err().is_corruption());
        assert!(parse_header(&chunked[..20]).unwrap_err().is_corruption());
    }

    #[test]
    fn artifact_keys_parse() {
        let id = ArtifactId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let key = format!("{{ns:a:{id}}}");
        assert_eq!(parse_artifact_key("ns", key.as_bytes()), Some(id));
        assert_eq!(parse_artifact_key("other", key.as_bytes()), None);
        assert_eq!(parse_artifact_key("ns", b"{ns:a:xyz}"), None);
    }
}
