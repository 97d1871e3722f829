//! # highwater-memory
//!
//! A concurrent in-memory [`StateBackend`] for hot state.
//!
//! ## Design
//!
//! State is split into shards (a power of two, 256 by default) by the
//! xxh3 hash of each key's *base* (everything but a map entry's user key),
//! so all entries of one map state for one key live in one shard and a
//! prefix scan of that map is a lookup plus an ordered walk. Each shard is a
//! `RwLock` around an `Arc`'d hash map:
//!
//! - **Snapshots are copy-on-write.** Taking a snapshot locks every shard in
//!   index order (so the cut is consistent: a [`WriteBatch`] is seen whole or
//!   not at all), clones each shard's `Arc` and swaps out its change set:
//!   O(shards) work, microseconds, whatever the state size. The first write
//!   to a shard while a snapshot still holds it copies that one shard
//!   (`Arc::make_mut`), so a writer waits at most for one shard copy, and
//!   once the snapshot is dropped writes go back to mutating in place.
//! - **Change tracking.** Every shard keeps the set of keys written since
//!   the last snapshot. A [`SnapshotKind::Changes`] snapshot reads only those
//!   keys from the frozen maps, so it costs O(changes), not O(state).
//!
//! Architecture invariant: no I/O, no dependency on other backends.

#![deny(missing_docs)]

mod arena;
mod backend;

pub use backend::{MemoryBackend, MemoryConfig};
