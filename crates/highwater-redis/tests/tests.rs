//! Integration tests of highwater-redis against real Redis servers: the
//! testkit conformance suites on a standalone server and on a cluster, and
//! fault tests with a private server stopped and restarted by PID, and
//! permanent failures (out of memory, ACL refusals, a wrong password) on a
//! private server.
//!
//! The shared servers come from `cargo xtask services start` (or `cargo
//! xtask test`, which starts them): their URLs are read from
//! `HIGHWATER_REDIS_URL` and `HIGHWATER_REDIS_CLUSTER`, and a test fails
//! loudly when they are missing. Every test works in its own random
//! namespace, so tests run in parallel against the same servers.

mod tests {
    pub mod common;

    mod backend;
    mod fault;
    mod permanent;
    mod store;
}
