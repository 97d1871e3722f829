//! # highwater-rocksdb
//!
//! A [`StateBackend`](highwater_core::StateBackend) on RocksDB, for keyed
//! state larger than memory, with native incremental checkpoints.
//!
//! - Keys are highwater's encoded state keys, key group first (big-endian):
//!   one column family holds all state and a key-group range is one
//!   contiguous key range, so a rescaling restore deletes two ranges.
//! - [`RocksDbConfig`] tunes memtables, block cache, bloom filters,
//!   compression, statistics and TTL.
//! - Entries whose TTL envelope ([`highwater_core::ttl`]) expired are
//!   dropped by a compaction filter; the typed state handles never return
//!   them before that.
//! - [`NativeCheckpoints::native_snapshot`](highwater_core::NativeCheckpoints::native_snapshot)
//!   takes a RocksDB checkpoint (hard links to immutable SST files); the
//!   checkpointer (`highwater_merge::Checkpointer`) uploads only the files
//!   the store does not hold yet, and a restore (the recovery engine,
//!   `highwater_recovery::Recovery`) fetches the files and opens them
//!   instead of replaying every key.
//! - [`RocksDbBackend::metrics`] reports operation counters and RocksDB
//!   properties (estimated keys, memtable sizes, block cache usage).
//! - Failures are [`Error::Backend`](highwater_core::Error::Backend)
//!   naming the operation and the path, with RocksDB's error as the source
//!   and the kind [`classify`] reads from its status: a full disk is
//!   `StorageFull`, a read-only or forbidden directory `PermissionDenied`,
//!   a busy or timed-out operation `Unavailable`. File I/O the backend does
//!   itself is classified by the core's `ErrorKind::of_io`.
//!
//! See `docs/rocksdb.md` for the design and the measured costs.

#![deny(missing_docs)]

mod backend;
mod changes;
mod config;
mod error;
mod known;
mod metrics;
mod snapshot;

pub use backend::{LiveSst, RocksDbBackend, db_options};
pub use config::{BUDGET_CACHE_SHARE, BlobValues, Compression, RocksDbConfig, TtlOptions};
pub use error::classify;
pub use metrics::{OpCounters, RocksDbMetrics};
