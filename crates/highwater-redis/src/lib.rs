//! # highwater-redis
//!
//! Redis as a highwater [`StateBackend`](highwater_core::StateBackend)
//! ([`RedisBackend`], live keyed state) and as a
//! [`CheckpointStore`](highwater_core::CheckpointStore)
//! ([`RedisCheckpointStore`], checkpoint artifacts and manifests), on a
//! standalone server or a Redis Cluster ([`RedisEndpoint`]).
//!
//! ```text
//! let backend = RedisBackend::open("redis://127.0.0.1:6379/", "job-7")?;
//! let store = RedisCheckpointStore::open("redis+cluster://10.0.0.1:7000/").await?;
//! ```
//!
//! Endpoints: `redis://[user:pass@]host:port[/db]` is a standalone server;
//! `redis+cluster://host:port/` or several comma-separated URLs is a
//! cluster (the client discovers the topology and follows `MOVED`/`ASK`).
//! AUTH travels in the URL. `rediss://` (TLS) needs one of the redis
//! crate's TLS features (for example `tokio-rustls-comp`) enabled in the
//! final binary; without it the URL is refused with
//! [`Error::InvalidArgument`](highwater_core::Error::InvalidArgument).
//!
//! ## Key layout
//!
//! Braces are Redis Cluster hash tags: everything with the same tag lives in
//! one slot, on one node.
//!
//! ```text
//! backend, namespace <ns>:
//!   {<ns>:<kg>}v<state key>     one string per entry; <kg> is the entry's key
//!                               group as 4 lowercase hex digits, <state key>
//!                               the encoded StateKey bytes as they are
//!                               (binary); the value is the envelope as is
//!   {<ns>:<kg>}i<base>          the index of one map (map state of one key and
//!                               namespace): a sorted set, all scores 0, whose
//!                               members are the map's user keys, so
//!                               ZRANGEBYLEX lists them in byte order
//! store, namespace <ns> (default "highwater"):
//!   {<ns>:a:<id>}               artifact header: "HWRA", version 1, then either
//!                               kind 0 + the bytes (artifacts up to chunk_size,
//!                               4 MiB by default) or kind 1 + total length,
//!                               part count and part size (u64/u32/u32 LE)
//!   {<ns>:a:<id>}:<i>           part i of a chunked artifact (same slot)
//!   {<ns>:m}:<checkpoint id>    a committed manifest; the id is 20 zero-padded
//!                               decimal digits
//!   {<ns>:m}:index              sorted set of committed manifest ids (same slot
//!                               as every manifest), scored by expiry or +inf
//! ```
//!
//! `<id>` is the artifact's xxh3-128 as 32 lowercase hex digits. Namespaces
//! are 1–64 bytes of `[A-Za-z0-9_.:-]`, so they can contain neither a brace
//! nor a glob character, and `SCAN MATCH {<ns>:????}v*` finds exactly one
//! backend's entries. Because a key group is one slot, a prefix or range
//! scan inside a key group visits one cluster node.
//!
//! ## The backend: consistency model
//!
//! - **One writer per namespace.** A [`RedisBackend`] assumes it is the only
//!   writer of its namespace (one subtask's state). Other processes may read
//!   the keys; writing them behind the backend's back breaks change tracking
//!   and snapshots. Several backends share a server through namespaces.
//! - **Change tracking is in process**: every write marks its key in a dirty
//!   set *before* it is sent (so a write that fails with an unknown outcome
//!   is still reported by the next changes snapshot). A
//!   [`SnapshotKind::Changes`](highwater_core::SnapshotKind::Changes)
//!   snapshot covers exactly the dirty set: O(changes).
//! - **Snapshots are a cut taken in process, read in the background.**
//!   Writers hold a read lock for the duration of their round trip;
//!   `snapshot()` takes the write lock only to swap the dirty set and
//!   register the snapshot — O(1), microseconds, whatever the state size —
//!   then a thread reads the content (`SCAN` + `MGET` for a full snapshot,
//!   `MGET` of the dirty keys for a changes snapshot) while processing
//!   continues. Writes never wait for that read. While a snapshot is being
//!   read, writes are sent as `SET … GET` and `GETDEL`, which return the
//!   key's previous value, and the first previous value of each key the
//!   snapshot covers is recorded in its undo log; the rest of the time they
//!   are plain `SET` and `DEL`. Writers of the same key are ordered by a
//!   striped lock held for their round trip, so the first recorded value
//!   is the value at the cut, and concurrent batches that share keys apply
//!   in some serial order, as with an in-memory map. The reader overrides what it read
//!   with the undo log, which gives exactly the state at the cut: a
//!   [`WriteBatch`](highwater_core::WriteBatch) is seen whole or not at all,
//!   and the snapshot never changes afterwards (its content is held in
//!   memory, so it outlives clears, restores and the backend itself).
//!   Reading a snapshot waits for the background read; if it failed (server
//!   gone) the read returns a typed error. A write that fails with an
//!   unknown outcome while a snapshot is being read invalidates that
//!   snapshot (its undo log may be wrong) — take another one.
//! - **Batches are pipelined, not transactions.** A batch is sent as
//!   pipelines of `SET`/`DEL` (split by node on a cluster). It is atomic
//!   with respect to this backend's snapshots, but not on the server: a
//!   crash or a server failure in the middle can leave part of a batch
//!   applied, which the write-ahead log and recovery (replay from the last
//!   checkpoint) repair. Cross-slot `MULTI` does not exist on a cluster, and
//!   a per-slot transaction would cost a round trip per slot.
//! - **TTL.** Values carry highwater's envelope expiry; the backend also
//!   hands it to Redis (`SET … PXAT expiry+grace`, 1 s of grace for clock
//!   skew), so Redis reclaims expired entries by itself. Expiries already
//!   past by the backend's clock ([`RedisBackendConfig::clock`], the system
//!   clock unless another is injected) are not handed over (the handles
//!   delete such entries when they read them). A key Redis expired is not reported as a
//!   delete by change snapshots: checkpoints keep it, and restore and reads
//!   drop it as expired, which is the same outcome.
//! - **Failures.** Requests have connect and response timeouts and are
//!   retried a bounded number of times with exponential backoff on
//!   transient errors (I/O, refused connections, `TRYAGAIN`, `CLUSTERDOWN`,
//!   `MASTERDOWN`, `LOADING`, `READONLY`); then the call fails with
//!   [`Error::Backend`](highwater_core::Error::Backend) of kind
//!   `Unavailable`. Permanent errors are not retried and carry the kind
//!   [`classify`] gives them: `NOAUTH`/`WRONGPASS`/`NOPERM` are
//!   `PermissionDenied`, `OOM` is `StorageFull`, `MISCONF` is
//!   `Misconfigured`. The message names the operation and the endpoint
//!   (password redacted); the redis crate's error is the typed source.
//!   Broken connections are dropped and the next call reconnects, so the
//!   same backend works again once the server is back.
//!
//! ## The backend: costs
//!
//! | operation | round trips | server work |
//! | --- | --- | --- |
//! | `get` | 1 | O(1) |
//! | [`get_many`](RedisBackend::get_many) | 1 per 512 keys (`MGET`; pipelined `GET`s by node on a cluster) | O(n) |
//! | `put`, `delete` | 1 | O(1) |
//! | `write_batch` of n | 1 per 512 mutations | O(n) |
//! | `snapshot` (the call) | 0 | none: O(1) in process |
//! | reading a changes snapshot | 1 per 512 changed keys | O(changes) |
//! | reading a full snapshot | `SCAN` of every node + 1 per 512 keys | O(keys on the server) + O(state) transfer; the content is held in memory |
//! | `put`/`delete` of a map entry | 1 (`ZADD` + `SET`, `DEL` + `ZREM`, pipelined) | O(log map size) |
//! | `scan_prefix`/`scan_range` inside one map (the prefix, or the range's common prefix, covers a whole base) | 2 (`ZRANGEBYLEX` + `MGET`), one node | O(log map size + matches) |
//! | other `scan_prefix`, `scan_range` | `SCAN MATCH` + reads; one node when the key group is known (prefix of ≥ 2 bytes) | O(keys on the node) + O(matches), sorted client-side |
//! | `restore`, `clear` | `SCAN` + `UNLINK` of the namespace, pipelined `SET`s | O(state); wait for snapshots still being read |
//! | `stats` | `SCAN` of every node + 1 `STRLEN` pipeline per 512 entries | O(keys on the server): exact, Redis-side expiry included |
//!
//! Map state (`MapState::entries`, `is_empty`, `clear`) reads through
//! `scan_prefix` of a map's base, which the map index answers without a
//! `SCAN`. A map entry is added to its index before its value is written
//! and removed after its value is deleted, in one pipeline on one node, and
//! writers of the same key are ordered in process, so the index lists every
//! entry; it may also list entries Redis expired, which readers skip and
//! remove. The index costs one sorted-set member per map entry. Wider scans
//! (a key group, an operator) use `SCAN` and cost O(keys on the node); in
//! highwater today only tools (the CLI's demo) and tests make them.
//!
//! `stats` counts the namespace when called (it is for diagnostics, not
//! the hot path): exact, and entries Redis already expired are not
//! counted. Keeping exact counters in process instead would need every
//! write to return the previous value (`SET … GET`), which cost 20–30% of
//! write throughput in the `redis` benchmark; writes pay for that only
//! while a snapshot is being read. When the server cannot be reached,
//! `stats` returns the last count.
//!
//! Change tracking costs no allocation per write: the changed keys of an
//! epoch are appended to one buffer and indexed by their xxh3-64, every
//! hash hit confirmed byte for byte (collisions are kept apart, never
//! merged), so a changes snapshot never misses a key.
//!
//! ## The store: guarantees
//!
//! - **Content addressing.** `put_artifact` refuses an id that is not the
//!   xxh3-128 of the bytes. Small artifacts are one `SET … NX` (already
//!   present → [`PutOutcome::AlreadyPresent`](highwater_core::PutOutcome));
//!   large ones write their parts first (each with a one-hour orphan
//!   expiry), then a Lua script publishes the header create-only and makes
//!   the parts permanent in one atomic step — refusing if a part is missing.
//!   A reader therefore finds a header only when every part is there; an
//!   upload cut short leaves parts that expire by themselves.
//! - **Atomic, create-only commit.** `commit_manifest` is one Lua script:
//!   if the manifest key exists it fails with
//!   [`Error::AlreadyExists`](highwater_core::Error::AlreadyExists);
//!   otherwise it writes the manifest and adds its id to the index. Both
//!   keys share one hash tag, so the script runs on one node and the index
//!   and the manifests never diverge: `list_manifests` reads the index, and
//!   a half-written checkpoint is never listed. A retried commit whose
//!   first reply was lost is recognised by comparing the stored bytes.
//! - **Durability is the server's.** A commit that returned is in Redis
//!   memory; it survives a server crash only with AOF (`appendfsync
//!   always` or `everysec`) or replicas. Use a store that fsyncs
//!   (`highwater-cloud`) when that is not configured.
//! - **Expiry (off by default).** [`RedisStoreConfig::expiry`] gives every
//!   artifact and manifest a TTL (the reference documents use 24 h),
//!   refreshed when an artifact is put again; expired manifests leave the
//!   index. It is off by default because highwater's retention is
//!   reference counting over manifests: artifacts are deduplicated across
//!   checkpoints, so an old artifact may be needed by the newest
//!   checkpoint, and a checkpoint that stays the latest for longer than the
//!   TTL would lose its data. Turn it on only for throw-away deployments.
//! - **Errors.** Missing artifacts and manifests are
//!   [`Error::NotFound`](highwater_core::Error::NotFound); a header whose
//!   parts are missing or of the wrong length is
//!   [`Error::Corrupt`](highwater_core::Error::Corrupt); server failures
//!   are [`Error::Store`](highwater_core::Error::Store) of the kind
//!   [`classify`] gives them — transient ones (kind `Unavailable`) after
//!   bounded retries with backoff, permanent ones at once.
//!   The connection is rebuilt on the next call after it broke.
//! - **Costs.** `list_artifacts` is a `SCAN` of every node (retention
//!   only); everything else is O(1) round trips per artifact (one per four
//!   4-MiB parts).
//!
//! ## Dependencies
//!
//! `highwater-core`, `redis` (sync, tokio, cluster), `tokio`, `bytes`,
//! `tracing`, `xxhash-rust`. Architecture invariant: no other backend or
//! store, and no WAL, merge, recovery or facade crate.

#![deny(missing_docs)]

mod backend;
mod conn;
mod error;
mod store;

pub use backend::{RedisBackend, RedisBackendConfig};
pub use conn::{ConnectOptions, RedisEndpoint, RetryPolicy, classify, is_transient};
#[cfg(feature = "fuzzing")]
pub use store::fuzzing;
pub use store::{RedisCheckpointStore, RedisStoreConfig};
