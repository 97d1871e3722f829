//! Integration tests of `highwater-wal`: one test binary, one module per
//! area.
//!
//! - `basics`: appends, batches, concurrency, policies, compression,
//!   rotation, truncation and retention, closing and locking;
//! - `replay`: the replay iterator and its bounds;
//! - `corruption`: torn tails, zeros, flipped bytes, missing segments, bad
//!   headers — repaired or refused with a typed error naming the place;
//! - `crash`: a child process appending with `SyncPolicy::Always` is killed
//!   with SIGKILL at random moments (`HIGHWATER_WAL_TORTURE_ROUNDS` rounds,
//!   default 50) and every acknowledged record must survive;
//! - `fixtures`: a log written by format version 1 still replays;
//! - `full_disk`: a log on a full (1 MiB tmpfs) disk fails with
//!   `StorageFull` naming the place, and stays failed;
//! - `model`: random interleavings of appends, truncations and reopenings
//!   against a model (proptest).

#[path = "tests/common.rs"]
mod common;

#[path = "tests/basics.rs"]
mod basics;
#[path = "tests/corruption.rs"]
mod corruption;
#[path = "tests/crash.rs"]
mod crash;
#[path = "tests/fixtures.rs"]
mod fixtures;
#[path = "tests/full_disk.rs"]
mod full_disk;
#[path = "tests/model.rs"]
mod model;
#[path = "tests/replay.rs"]
mod replay;
