//! # highwater-core
//!
//! The traits and types every highwater crate shares:
//!
//! - [key groups](keygroup): how keys are partitioned and rescaled;
//! - [typed keyed state](state): descriptors and handles for value, list,
//!   map, reducing and aggregating state, with optional TTL, and the
//!   [schemas](schema) that keep a state from being read as another type;
//! - the synchronous [`StateBackend`] (live state on the hot path) and the
//!   asynchronous [`CheckpointStore`] (durable checkpoint artifacts);
//! - the checkpoint [`Manifest`], the [`SavepointManifest`] and the
//!   [artifact codec](codec), with their byte layouts, checksums and bounds
//!   checks;
//! - [global checkpoints](cluster) of a job split over several
//!   participants: the [`Coordinator`] trait;
//! - [at-rest encryption](crypto): a [`KeyProvider`], the [`Cipher`] and
//!   the [`EncryptedStore`] wrapper;
//! - the [`Error`] type.
//!
//! Architecture invariant: this crate performs no I/O and depends on no
//! backend (RocksDB, Redis, object_store) and on no async runtime (it
//! reads the operating system's random generator for keys and nonces). Decoding
//! never panics and never allocates from a length it has not checked.

#![deny(missing_docs)]

pub mod backend;
pub mod block;
pub mod cluster;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod filebuf;
pub mod key;
pub mod keygroup;
pub mod manifest;
pub mod prefetch;
pub mod read;
pub mod retry;
pub mod savepoint;
pub mod schema;
pub mod state;
pub mod store;
pub mod ttl;

pub use backend::{
    BackendStats, BorrowedEntryVisitor, BulkCommit, BulkLoader, BulkRestore, BulkThrough,
    EntryVisitor, Mutation, NativeCheckpoint, NativeCheckpoints, NativeFile, NativeFileRef,
    NativeFiles, NativeFilesInMemory, NativeSource, SnapshotKind, StateBackend, StateSnapshot,
    WriteBatch,
};
pub use block::RecordBlock;
pub use cluster::{
    Coordinator, GlobalCheckpoint, GlobalStatus, PartRef, ParticipantId, participant_scope,
    participant_store, valid_scope,
};
pub use codec::{
    ArtifactKind, Codec, DecodeLimits, DecodedArtifact, EncodeOptions, EncodedArtifact, KeyForm,
    RecordWriter, decode_artifact, verify_artifact,
};
pub use crypto::{Cipher, DataKey, EncryptedStore, KeyId, KeyProvider, Keyring};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use key::StateKey;
pub use keygroup::{DEFAULT_MAX_PARALLELISM, KeyGroup, KeyGroupRange, key_group_for};
pub use manifest::{
    ArtifactId, ArtifactRef, CheckpointId, CheckpointKind, Layer, LayerKind, MAX_ARTIFACT_BYTES,
    Manifest, valid_native_file_name,
};
pub use read::{RecordVisitor, decode_checked, decode_checked_where, load_manifest, visit_checked};
pub use retry::{RetryPolicy, Retrying};
pub use savepoint::{SavepointManifest, SavepointState};
pub use schema::{Migration, MigrationPlan, SchemaRegistry, StateKind, StateSchema};
pub use state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, KeyedStateContext, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    ValueState, ValueStateDescriptor,
};
pub use store::{AtomicStoreCounters, BoxFuture, CheckpointStore, PutOutcome, StoreCounters};
pub use ttl::{Clock, Envelope, ManualClock, SystemClock, TtlConfig, TtlUpdate};
