//! Integration tests of the in-memory backend, one module per area. The
//! conformance suite every backend passes runs from `highwater-testkit`.

#[path = "tests/model.rs"]
mod model;
