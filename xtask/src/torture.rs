//! `cargo xtask torture SUITE [--rounds N]`: the long crash tests that the
//! normal test run only samples.

use crate::util::{Result, Workspace, run};

/// The torture suites: name, default rounds, the rounds variable, the
/// package, and the test (module path in the package's single test binary)
/// that reads it.
const SUITES: &[(&str, u64, &str, &str, &str)] = &[
    (
        "wal",
        1_000,
        "HIGHWATER_WAL_TORTURE_ROUNDS",
        "highwater-wal",
        "crash::sigkill_never_loses_an_acknowledged_record",
    ),
    (
        "raft",
        500,
        "HIGHWATER_RAFT_TORTURE_ROUNDS",
        "highwater-raft",
        "faults::randomized_crashes_restarts_and_partitions_keep_the_ledger_invariants",
    ),
];

/// Runs torture suite `name` for `rounds` rounds (its default if `None`).
pub fn run_torture(ws: &Workspace, name: &str, rounds: Option<u64>) -> Result {
    let Some(&(_, default, var, package, test)) = SUITES.iter().find(|s| s.0 == name) else {
        let known: Vec<&str> = SUITES.iter().map(|s| s.0).collect();
        return Err(format!(
            "unknown torture suite {name:?}; known: {}",
            known.join(", ")
        )
        .into());
    };
    let rounds = rounds.unwrap_or(default);
    let mut cmd = ws.cargo([
        "test",
        "--profile",
        "ci",
        "-p",
        package,
        "--test",
        "tests",
        "--",
        "--exact",
        "--nocapture",
    ]);
    // The test lives in a module of the single test binary.
    cmd.arg(test).env(var, rounds.to_string());
    println!("xtask: torture {name}: {rounds} rounds");
    run(&mut cmd)
}
