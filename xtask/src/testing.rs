//! `cargo xtask test`: everything the tests need, then every test of the
//! workspace in the `ci` profile.
//!
//! Tests and benches share the `ci` profile (it inherits `release`), so the
//! expensive C builds under the `-sys` crates happen once per machine rather
//! than once for a debug build and again for an optimised one.

use crate::services::{self, Env};
use crate::util::{Result, Workspace, run};

/// Runs every test of the workspace with the servers the tests need.
///
/// `extra` is appended to the main test command (a test-name filter,
/// `--no-capture`, or anything else the runner accepts).
pub fn run_all(ws: &Workspace, extra: &[String]) -> Result {
    crate::prereqs::ensure()?;
    with_services(ws, |env| run_tests(ws, env, extra))
}

/// Runs `f` while the servers the tests talk to are up, and stops them
/// afterwards on every path out of `f`, failure included.
///
/// The servers (redis-server, standalone and a cluster; moto's S3 server;
/// azurite's Blob service; all on loopback) start here, before
/// `f`, which receives their environment to pass to the commands it runs.
/// Services already started with `cargo xtask services start` are reused
/// and left running. See [`services`].
pub fn with_services<T>(ws: &Workspace, f: impl FnOnce(&Env) -> Result<T>) -> Result<T> {
    services::with_services(ws, f)
}

/// The features every workspace-wide build, check and test turns on: the
/// CLI's optional backends, stores and commands (its default build has the
/// memory backend and local directories only), so that everything is built
/// and tested.
pub const ALL_FEATURES: [&str; 2] = ["--features", "highwater-cli/full"];

/// The test of the CLI's default build: asking it for what it leaves out
/// names the command that builds it (it only exists without those features).
const DEFAULT_BUILD_TESTS: &str = "default_build";

fn run_tests(ws: &Workspace, env: &Env, extra: &[String]) -> Result {
    if ws.cargo_probe(&["nextest", "--version"]) {
        // nextest runs each test in its own process and in parallel across
        // binaries; it does not run doctests, which follow in the same
        // profile so nothing is compiled twice.
        let mut cmd = ws.cargo(["nextest", "run", "--workspace", "--cargo-profile", "ci"]);
        run(env.apply(cmd.args(ALL_FEATURES)).args(extra))?;
        let mut doc = ws.cargo(["test", "--workspace", "--doc", "--profile", "ci"]);
        run(env.apply(doc.args(ALL_FEATURES)))?;
    } else {
        println!("xtask: cargo-nextest is not installed; running the tests with cargo test");
        // Plain `cargo test` runs the doctests itself.
        let mut cmd = ws.cargo(["test", "--workspace", "--profile", "ci"]);
        run(env.apply(cmd.args(ALL_FEATURES)).args(extra))?;
    }
    if extra.is_empty() {
        // The CLI as `cargo xtask demo` builds it (no RocksDB: cheap).
        let mut cmd = ws.cargo(["test", "--profile", "ci", "-p", "highwater-cli"]);
        run(env.apply(&mut cmd).arg(DEFAULT_BUILD_TESTS))?;
    }
    Ok(())
}
