//! Acceptance tests of the recovery engine, through the engine itself and
//! through the facade's `StateManager`, on real local-directory stores and
//! real write-ahead logs.

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
