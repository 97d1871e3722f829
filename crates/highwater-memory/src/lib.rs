//! # highwater-memory
//!
//! A concurrent in-memory [`StateBackend`](highwater_core::StateBackend) for hot state.
//!
//! ## Design
//!
//! State is split into shards (a power of two, 256 by default) by key
//! group: with at least as many key groups as shards
//! ([`MemoryConfig::max_parallelism`]) each shard holds a contiguous range
//! of them, with fewer each key group has its own shards and a key picks
//! one by the xxh3 hash of its *base* (everything but a map entry's user
//! key); keys outside the key groups are hashed over all shards. All
//! entries of one map state for one key live in one shard, and one key
//! group's records sit in a few shards' segments, which is what a
//! checkpoint reads them from in key order. Snapshot partitions are the
//! groups of shards holding the same key groups. Each shard is a `RwLock`
//! around:
//!
//! - **Arenas.** Keys and values are appended as records
//!   (`[key_len u32][value_len u32][key][value]`) to fixed-size segments
//!   (1 MiB by default, [`MemoryConfig::segment_bytes`]); a record larger
//!   than a segment gets a segment of its own. There is no allocation per
//!   entry, and a scan reads contiguous memory.
//! - **A paged index.** A hash table of 12-byte slots (segment id, offset,
//!   change-tracking epoch), split into 4 pages by hash, whose buckets are
//!   one cache line holding four slots and their one-byte hash tags, so a
//!   lookup misses the cache once in the index and once in the arena.
//!   Lookups compare the key in the arena. Map-state entries also sit in an ordered directory per base
//!   key, so a prefix scan of a map is a binary search and a walk.
//! - **Snapshots at segment granularity.** Segments and index pages are
//!   `Arc`s inside one store per shard. Taking a snapshot locks every
//!   shard in index order (so the cut is consistent: a [`WriteBatch`] is
//!   seen whole or not at all) and leaves each shard a slot: O(shards),
//!   microseconds. Whoever locks the shard next fills the slot with the
//!   store as it was (the two short vectors of `Arc`s) — a writer before
//!   its first change, or the snapshot's reader — and a dropped snapshot
//!   takes its slots back, so the counts go while they are warm. A writer
//!   that touches a shard the snapshot holds then copies at most the one
//!   index page and the one segment it writes to — never the shard. A value
//!   rewritten with the same length is overwritten in place when no
//!   snapshot holds its segment.
//! - **Compaction.** Replaced and deleted records stay in their segment as
//!   dead bytes. When they reach a third of a shard's arena, every write
//!   moves the live records among the next few of its own size of the
//!   deadest segment no snapshot holds, and the emptied segment is released:
//!   bounded work per write, observable through `tracing` (debug events).
//!   [`MemoryBackend::compact`] reclaims everything at once.
//! - **Change tracking.** Every shard keeps the keys written since the last
//!   snapshot in one buffer with a hash table of spans. Each index slot
//!   carries the epoch that last marked its key, so rewriting a key already
//!   marked costs nothing more, and a snapshot starts the next epoch by
//!   incrementing a counter. A
//!   [`SnapshotKind::Changes`] snapshot reads only those keys from the frozen
//!   stores, so it costs O(changes), not O(state).
//!   A shard's change set is bounded: past twice the keys the shard had
//!   when the epoch began (64 at least) — which only new keys reach: a
//!   bulk load, or a shard that more than doubled — it is given up for the
//!   epoch, and the next changes snapshot is a full one (its `kind()` says
//!   so), which costs little more than those changes would.
//! - **Bulk restore** ([`StateBackend::bulk_restore`]). Entries are
//!   copied once into their shard's arena as they arrive, each key hashed
//!   once and the hash kept, by as many loaders (threads) as the caller
//!   runs, each filling shards of its own; then each shard's parts are
//!   merged and every shard is indexed from those hashes, on every core.
//!   The segments' pages are mapped 64 KiB at a time ahead of the records
//!   (`madvise(MADV_POPULATE_WRITE)`), not faulted one by one.
//!   The live state is replaced only at the commit, once the source was
//!   read to the end.
//!
//! [`StateBackend::bulk_restore`]: highwater_core::StateBackend::bulk_restore
//!
//! Architecture invariant: no I/O, no dependency on other backends.
//!
//! [`StateBackend`]: highwater_core::StateBackend
//! [`WriteBatch`]: highwater_core::WriteBatch
//! [`SnapshotKind::Changes`]: highwater_core::SnapshotKind::Changes

#![deny(missing_docs)]

mod arena;
mod backend;
mod index;

pub use backend::{MemoryBackend, MemoryConfig};
