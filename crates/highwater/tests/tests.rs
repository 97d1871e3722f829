//! Integration tests of the `highwater` facade: the [`StateManager`] over the
//! in-memory backend and the object-store checkpoint store (in memory and in
//! a local directory).
//!
//! One test binary, one module per area. Random tests draw from the
//! testkit's seeded generator; a failure names its seed, and
//! `HIGHWATER_TEST_SEED=<n>` replays one seed.
//!
//! [`StateManager`]: highwater::StateManager

#[path = "tests/common.rs"]
mod common;

#[path = "tests/chains.rs"]
mod chains;
#[path = "tests/cluster.rs"]
mod cluster;
#[path = "tests/concurrency.rs"]
mod concurrency;
#[path = "tests/corruption.rs"]
mod corruption;
#[path = "tests/dedup.rs"]
mod dedup;
#[path = "tests/embedding.rs"]
mod embedding;
#[path = "tests/encryption.rs"]
mod encryption;
#[path = "tests/failures.rs"]
mod failures;
#[path = "tests/keys.rs"]
mod keys;
#[path = "tests/lifecycle.rs"]
mod lifecycle;
#[path = "tests/manager_model.rs"]
mod manager_model;
#[path = "tests/metrics.rs"]
mod metrics;
#[path = "tests/model_based.rs"]
mod model_based;
#[path = "tests/permanent.rs"]
mod permanent;
#[path = "tests/redis.rs"]
mod redis;
#[path = "tests/retention.rs"]
mod retention;
#[path = "tests/runtime.rs"]
mod runtime;
#[path = "tests/schema.rs"]
mod schema;
#[path = "tests/store_faults.rs"]
mod store_faults;
#[path = "tests/ttl.rs"]
mod ttl;
#[path = "tests/wal.rs"]
mod wal;
