//! Acceptance tests of the recovery engine (`highwater::recovery`), through
//! the engine itself and through the facade's `StateManager`, on real
//! local-directory stores and real write-ahead logs.
//!
//! They live with the facade because they take their checkpoints through
//! `StateManager`: the recovery crate sits below the facade and does not
//! depend on it, not even for tests (`docs/architecture.md`, "Layering").

#[path = "recovery/common.rs"]
mod common;
#[path = "recovery/corruption_matrix.rs"]
mod corruption_matrix;
#[path = "recovery/engine.rs"]
mod engine;
#[path = "recovery/point_in_time.rs"]
mod point_in_time;
#[path = "recovery/rescale.rs"]
mod rescale;
