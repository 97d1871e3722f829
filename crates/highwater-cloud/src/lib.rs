//! # highwater-cloud
//!
//! A [`CheckpointStore`](highwater_core::CheckpointStore) over the
//! [`object_store`] crate: [`ObjectCheckpointStore`]. One implementation
//! serves every place checkpoints can live:
//!
//! - a **local directory** ([`ObjectCheckpointStore::local`]), the embedded
//!   default, with every write fsync'd;
//! - **memory** ([`ObjectCheckpointStore::in_memory`]), for tests;
//! - **any other object store** — S3, GCS, Azure, or a wrapper around one —
//!   through [`ObjectCheckpointStore::new`].
//!
//! ## Layout
//!
//! Under the store's prefix (empty for [`local`](ObjectCheckpointStore::local)
//! and [`in_memory`](ObjectCheckpointStore::in_memory)):
//!
//! ```text
//! <prefix>/artifacts/<id>          one object per artifact; <id> is the xxh3-128 of
//!                                  the object's bytes as 32 lowercase hex characters
//! <prefix>/manifests/<id>.hwm      one object per committed checkpoint; <id> is the
//!                                  checkpoint id as 20-digit zero-padded decimal,
//!                                  so names sort like ids
//! ```
//!
//! Listing reads only these two flat directories and only names matching
//! exactly these patterns; anything else found there is ignored with a
//! warning. The [`layout`] module builds and parses the names.
//!
//! ## Guarantees
//!
//! - **Visibility only on commit.** A manifest is written with
//!   [`PutMode::Create`](object_store::PutMode::Create): the object store
//!   publishes it atomically (the local store writes a staging file and
//!   hard-links it into place; staging names are never listed), so a
//!   half-written manifest is never visible, and committing an id twice fails
//!   with [`Error::AlreadyExists`](highwater_core::Error::AlreadyExists).
//! - **Content addressing.** [`put_artifact`](highwater_core::CheckpointStore::put_artifact)
//!   refuses an id that is not the xxh3-128 of the bytes, and writes
//!   create-only: an id that is already stored is reported as
//!   [`PutOutcome::AlreadyPresent`](highwater_core::PutOutcome::AlreadyPresent)
//!   and nothing is overwritten.
//! - **Durability means fsync.** The local store is opened with
//!   [`LocalFileSystem::with_fsync(true)`](object_store::local::LocalFileSystem::with_fsync):
//!   each put `fsync`s the data file before publishing it and the directory
//!   that names it after. `object_store` does not fsync on delete, so this
//!   crate fsyncs the directory after every local delete, and fsyncs the store
//!   directories it creates when opening. A future that resolved `Ok` is
//!   durable.
//! - **Errors are typed, never swallowed.** A missing object is
//!   [`Error::NotFound`](highwater_core::Error::NotFound) naming it; any other
//!   failure is [`Error::Store`](highwater_core::Error::Store) carrying the
//!   store name, the operation and the object path. Transient failures are
//!   retried a bounded number of times ([`RetryPolicy`]) before being
//!   returned; nothing is logged and then reported as success.
//! - **Bytes are returned as stored.** The store does not decode or verify
//!   what it reads; the artifact and manifest codecs of `highwater-core` check
//!   their checksums and detect damage.
//!
//! ## Dependencies
//!
//! This crate depends on `highwater-core`, `object_store`, `tokio` (timers
//! for retry backoff, a blocking pool for directory fsync), `bytes` and
//! `tracing` only. It must not depend on any state backend (memory, RocksDB,
//! Redis), on the WAL, merge or recovery crates, or on the facade: backends
//! and stores never depend on each other.

#![deny(missing_docs)]

pub mod layout;
mod retry;
mod store;
mod url;

pub use retry::{RetryPolicy, http_status, is_transient};
pub use store::{DEFAULT_PART_SIZE, ObjectCheckpointStore, StoreConfig, TransferConfig};
pub use url::{CloudOptions, CloudService, StoreUrl, is_cloud_url};
