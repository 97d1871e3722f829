//! # highwater-cloud
//!
//! A [`CheckpointStore`](highwater_core::CheckpointStore) over the
//! [`object_store`] crate: [`ObjectCheckpointStore`]. One implementation
//! serves every place checkpoints can live:
//!
//! - a **local directory** ([`ObjectCheckpointStore::local`]), the embedded
//!   default, with every write fsync'd;
//! - **memory** ([`ObjectCheckpointStore::in_memory`]), for tests;
//! - **S3, Azure Blob Storage, GCS** by URL
//!   ([`ObjectCheckpointStore::from_url`]: `s3://bucket/prefix`,
//!   `az://container/prefix` or `azure://…`, `gs://bucket/prefix`), behind
//!   the features `s3`, `azure` and `gcs`;
//! - **any other object store**, or a wrapper around one, through
//!   [`ObjectCheckpointStore::new`].
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
//!   refuses an id that is not the xxh3-128 of the bytes (bytes sealed by
//!   `highwater_core::EncryptedStore` excepted: it checks the address of
//!   the plaintext), and writes
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
//! ## Cloud stores
//!
//! [`from_url`](ObjectCheckpointStore::from_url) builds `object_store`'s
//! client for the URL's service and reads that service's usual environment
//! variables, so any S3-compatible endpoint works without code:
//!
//! ```text
//! AWS_ENDPOINT=http://127.0.0.1:9000 AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
//! AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… highwater demo --store s3://bucket/job-7
//! ```
//!
//! Azure reads `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY` (or
//! a SAS or a service principal), and `AZURE_STORAGE_USE_EMULATOR=true` with
//! `AZURITE_BLOB_STORAGE_URL` for azurite; GCS reads
//! `GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_SERVICE_ACCOUNT_KEY` or
//! `GOOGLE_APPLICATION_CREDENTIALS`. [`CloudOptions`] adds `object_store`
//! keys that win over the environment, or ignores the environment. The
//! bucket or container must exist; the store never creates one.
//!
//! **Uploads.** An artifact above
//! [`multipart_threshold`](TransferConfig::multipart_threshold) (8 MiB) goes
//! up as a multipart upload of [`part_size`](TransferConfig::part_size)
//! parts (8 MiB; S3 requires 5 MiB for all parts but the last),
//! [`part_concurrency`](TransferConfig::part_concurrency) (4) at a time; a
//! failed upload is aborted so no parts linger. Smaller artifacts are one
//! create-only put. At most [`max_requests`](TransferConfig::max_requests)
//! (64) requests of a store are in flight, across callers and parts; the
//! `StateManager` itself bounds the artifacts in flight (`io_concurrency`).
//! Downloads are one GET per artifact, as many in flight as the caller
//! runs.
//!
//! **Content addressing.** `object_store` 0.14 cannot make a multipart
//! upload create-only, so a large artifact is HEADed first and skipped when
//! present; two writers that both pass the HEAD upload identical bytes to
//! the same name, and the second completion replaces the object with the
//! same content, atomically. Small artifacts are create-only puts:
//! "already exists" means present.
//!
//! **Commits.** A manifest is one create-only put (`If-None-Match: *` on S3,
//! the same on Azure, `ifGenerationMatch=0` on GCS). Of two writers that
//! commit the same id, exactly one succeeds and the other gets
//! [`Error::AlreadyExists`](highwater_core::Error::AlreadyExists). moto's
//! S3 server and azurite both enforce this (and multipart uploads, and
//! `If-Match` etag updates), which the tests check with two independent
//! clients racing. Real S3 may answer a create-only put with 409 Conflict
//! while another conditional write of the key is in flight; that is
//! retried rather than taken as "exists".
//!
//! **Retries.** Two layers: the HTTP client retries a request after a
//! connection error, a 5xx, a 429 or a timeout of a safe request (6 times
//! within 60 s by default, [`CloudOptions::with_http_retries`]); then the
//! store's [`RetryPolicy`] retries the whole operation (for a multipart
//! upload: a fresh upload) after any error [`is_transient`] accepts. HTTP
//! 4xx answers other than 408 and 429 are permanent and not retried.
//!
//! **Request counts.** [`StoreCounters`](highwater_core::StoreCounters)
//! count requests as billed: every part, and the start and completion of a
//! multipart upload, is a put (Azure's start sends nothing and is not
//! counted); an abort is a delete; a listing counts its pages (1 000 keys
//! per page on S3 and GCS, 5 000 on Azure). The HTTP client's own retries
//! of one request are not visible to this crate and not counted.
//!
//! **Listing manifests is a plain LIST.** Measured on moto (the `cloud`
//! bench, medians): a LIST of 3 manifests took 4–13 ms against 2–3.4 ms
//! for a GET of an index object naming them; 100: 20–27 ms against 4 ms;
//! 1 000: 138–160 ms against 3.5–5 ms; 3 000: 470–500 ms and 3 requests
//! against 4–5 ms and 1. In requests — what a user pays for — a LIST is
//! one request per 1 000 manifests, and with retention (3 checkpoints by
//! default) the directory holds a handful, where LIST and GET cost the
//! same request and a few milliseconds. An index object would add a GET
//! and a conditional PUT to every commit (more under contention: a
//! compare-and-swap loop on its etag) and one more on every retention
//! pass, and it could lag behind a commit whose writer died before
//! updating it, so a LIST would still be needed to be correct. It pays off
//! only in latency, only for stores that keep thousands of checkpoints:
//! plain LIST stays. Ids sort by name, so the listing is also ordered.
//!
//! **GCS is not tested against a server.** No GCS emulator installs from
//! the registries this project can reach (crates.io, PyPI, npm, Debian):
//! fake-gcs-server is a Go binary distributed elsewhere, and Google's own
//! emulator ships with the Cloud SDK. The GCS client is `object_store`'s,
//! like S3's and Azure's; this crate's tests cover its URL and option
//! parsing only. S3 runs against moto's server (PyPI `moto[server]`) and
//! Azure against azurite (npm), both started by `cargo xtask services`.
//!
//! ## Dependencies
//!
//! This crate depends on `highwater-core`, `object_store` (with `fs`; the
//! features `s3`, `azure` and `gcs` add its `aws`, `azure` and `gcp`
//! clients, which bring reqwest and rustls), `tokio` (timers for retry
//! backoff, a blocking pool for directory fsync, tasks for parts), `bytes`
//! and `tracing` only. It must not depend on any state backend (memory,
//! RocksDB, Redis), on the WAL, merge or recovery crates, or on the
//! facade: backends and stores never depend on each other.

#![deny(missing_docs)]

#[cfg(feature = "faults")]
pub mod faults;
pub mod layout;
mod retry;
mod store;
mod url;

pub use retry::{RetryPolicy, classify, http_status, is_transient};
pub use store::{DEFAULT_PART_SIZE, ObjectCheckpointStore, StoreConfig, TransferConfig};
pub use url::{CloudOptions, CloudService, StoreUrl, is_cloud_url};
