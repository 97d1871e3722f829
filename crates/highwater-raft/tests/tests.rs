//! Integration tests of `highwater-raft`: one test binary, one module per
//! area. Every cluster test runs each node as a separate OS process
//! (`highwater-raft-node`) talking real TCP on 127.0.0.1 through
//! fault-injecting proxies owned by the test.
//!
//! - `cluster`: 3 and 5 nodes elect a leader, complete checkpoints, agree;
//! - `faults`: SIGKILL of the leader mid-checkpoint, a partitioned minority,
//!   and randomized rounds of crashes, restarts and partitions
//!   (`HIGHWATER_RAFT_TORTURE_ROUNDS`, default 20) with the ledger
//!   invariants checked every round;
//! - `membership`: `add_node` and `remove_node`, and what they do to
//!   checkpoints' participants;
//! - `network`: oversized and garbage frames are refused harmlessly;
//! - `storage`: openraft's own storage test suite against the WAL log and
//!   the ledger state machine; reopening keeps the log, vote and purge
//!   point; a damaged record is refused.

#[path = "tests/common.rs"]
mod common;

#[path = "tests/cluster.rs"]
mod cluster;
#[path = "tests/faults.rs"]
mod faults;
#[path = "tests/membership.rs"]
mod membership;
#[path = "tests/network.rs"]
mod network;
#[path = "tests/storage.rs"]
mod storage;
