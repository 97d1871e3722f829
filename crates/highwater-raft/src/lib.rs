//! # highwater-raft
//!
//! Raft-coordinated distributed checkpoints. When a job runs on several
//! nodes, a checkpoint is complete only when every node's part is durable,
//! and every node must agree on the latest complete checkpoint across
//! crashes and partitions. This crate keeps that agreement in a replicated
//! **checkpoint ledger** on [openraft](https://docs.rs/openraft) (no
//! home-made consensus):
//!
//! - [`Ledger`] is the state machine: triggered, acknowledged by each
//!   participant, completed (exactly once, only with every acknowledgement),
//!   aborted (timeout, participant lost);
//! - the Raft log and vote are durable on `highwater-wal` (fdatasync before
//!   acknowledging), snapshots of the ledger go to a
//!   [`CheckpointStore`](highwater_core::CheckpointStore);
//! - nodes talk over TCP with length-prefixed postcard frames, bounded in
//!   size, with per-request deadlines; every connection is authenticated
//!   with the cluster's [`ClusterSecret`] (HMAC-SHA256 challenge–response,
//!   then a tag on every frame), and what a peer sends is checked before
//!   openraft sees it (terms and indices, snapshot chunks, who may
//!   acknowledge);
//! - [`CheckpointCoordinator`] is the API an engine uses: barriers arrive
//!   as [`LedgerEvent`]s, acknowledgements go in through
//!   [`CheckpointCoordinator::report_completion`];
//! - [`RaftParticipant`] is a node's ledger as the
//!   [`Coordinator`](highwater_core::Coordinator) of a `StateManager` that
//!   takes part in global checkpoints (the facade's `cluster` builder
//!   option): barriers, acknowledgements and restores then go through the
//!   ledger without engine code;
//! - [`read_ledger`] rebuilds a stopped node's ledger from its data
//!   directory (snapshot plus committed log), for tools.
//!
//! It depends on `highwater-core` and `highwater-wal` only, never on a
//! state backend; the node process ([`run_node`]) takes any checkpoint store.
//! See `docs/raft.md` for the architecture and failure semantics.

#![deny(missing_docs)]

mod auth;
mod coordinator;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(test)]
mod hostile_tests;
mod ledger;
mod log_store;
pub mod metrics;
mod network;
mod node;
mod offline;
mod participant;
mod state_machine;

pub use auth::{ClusterSecret, TOOL_IDENTITY};
pub use coordinator::{
    CheckpointCoordinator, ClusterHealth, DistributedConfig, MAX_PEER_TERM_OR_INDEX, NodeStatus,
    Participants,
};
pub use ledger::{
    AbortReason, CheckpointRecord, CheckpointState, Command, CompletedCheckpoint, FINISHED_HISTORY,
    Ledger, MAX_MANIFEST_REF_LEN, ManifestRef, NodeId, Outcome, decide,
};
pub use log_store::WalLogStore;
pub use network::{MAX_FRAME_BYTES, query_status, request_checkpoint};
pub use node::{NodeOptions, parse_peers, run_node};
pub use offline::{StoredLedger, read_ledger};
pub use participant::{PARTICIPANT_REQUEST_TIMEOUT, RaftParticipant};
pub use state_machine::{LedgerEvent, LedgerStateMachine, MAX_SNAPSHOT_BYTES};

openraft::declare_raft_types!(
    /// openraft's type configuration for the ledger: commands in, outcomes
    /// out, `u64` node ids, snapshots as bytes.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);
