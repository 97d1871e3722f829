//! Integration tests of `highwater-wal`: one test binary, one module per
//! area (the crash test is its own target, `tests/crash.rs`, because its
//! binary is also its child process).
//!
//! - `basics`: appends, batches, concurrency, policies, compression,
//!   rotation, truncation and retention, closing and locking;
//! - `replay`: the replay iterator and its bounds;
//! - `corruption`: torn tails, zeros, flipped bytes, missing segments, bad
//!   headers — repaired or refused with a typed error naming the place;
//! - `encryption`: sealed frames round-trip, rotate keys, and a tampered,
//!   moved, unsealed or unkeyed frame is an authentication error;
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
#[path = "tests/encryption.rs"]
mod encryption;
#[path = "tests/fixtures.rs"]
mod fixtures;
#[path = "tests/full_disk.rs"]
mod full_disk;
#[path = "tests/model.rs"]
mod model;
#[path = "tests/replay.rs"]
mod replay;
