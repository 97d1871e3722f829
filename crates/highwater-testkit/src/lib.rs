//! # highwater-testkit
//!
//! Conformance suites that every [`StateBackend`](highwater_core::StateBackend)
//! and every [`CheckpointStore`](highwater_core::CheckpointStore)
//! implementation must pass, written once and run by each implementation
//! (in the spirit of TiKV's `engine_traits_tests` and openraft's `Suite`).
//! An implementation is "done" when its suite passes.
//!
//! - [`backend`]: the backend cases and [`backend_conformance!`], which turns
//!   each case into its own `#[test]`.
//! - [`store`]: the store cases and [`store_conformance!`].
//! - [`model`]: the reference model (a `BTreeMap` with change tracking) and
//!   snapshot readers, reusable by other crates' tests.
//! - [`keys`]: generators of valid encoded state keys and envelope values.
//! - [`rng`]: the explicitly seeded generator behind every random choice.
//! - [`mounts`]: small real file systems (a full or read-only tmpfs) for
//!   tests of permanent I/O failures.
//! - [`crash`]: the one mechanism of crash tests: children reached by
//!   running the test binary again, killed with SIGKILL at a random
//!   moment, their whole output lines collected.
//! - [`faultfs`]: `fdatasync` and read failures injected into a child
//!   process at the system-call boundary (`LD_PRELOAD`).
//! - [`fixture`]: what a factory may return (an implementation, or a guard
//!   and an implementation) and the [`Guards`] that outlive a case.
//!
//! A backend crate lists this crate as a dev-dependency and writes, in one
//! integration test file:
//!
//! ```text
//! highwater_testkit::backend_conformance!(|| std::sync::Arc::new(MyBackend::new()));
//! ```
//!
//! Every case is also a public function taking a factory, for callers that
//! want to run a case by hand; [`backend::run_all`] runs them all.
//!
//! Random cases are reproducible: they draw from [`SplitMix64`] with
//! explicit seeds, and a failure message names its seed. The environment
//! variables `HIGHWATER_TESTKIT_SEED` (run one seed) and
//! `HIGHWATER_TESTKIT_SEEDS` (run that many seeds) steer the model-based
//! case.
//!
//! Architecture invariant: this crate depends on `highwater-core` only (plus
//! proptest, tokio, bytes and libtest-mimic), never on a backend or a store, and contains no
//! implementation of either: the suites are run against the real ones.

#![deny(missing_docs)]

pub mod backend;
pub mod crash;
pub mod faultfs;
pub mod fixture;
pub mod keys;
mod macros;
pub mod model;
pub mod mounts;
pub mod net;
pub mod rng;
pub mod servers;
pub mod store;

pub use fixture::{Guards, IntoBackend, IntoStore};
pub use rng::SplitMix64;
