//! `cargo xtask torture SUITE [--rounds N]`: the long crash tests that the
//! normal test run only samples.

use crate::util::{Result, Workspace, run};

/// The torture suites: name, default rounds, the rounds variable, the
/// package, its test target, and the test (its exact name in that target)
/// that reads it.
const SUITES: &[(&str, u64, &str, &str, &str, &str)] = &[
    (
        "wal",
        1_000,
        "HIGHWATER_WAL_TORTURE_ROUNDS",
        "highwater-wal",
        // A crash test target (highwater_testkit::crash): its binary is
        // also the child it kills.
        "crash",
        "sigkill_never_loses_an_acknowledged_record",
    ),
    (
        "raft",
        500,
        "HIGHWATER_RAFT_TORTURE_ROUNDS",
        "highwater-raft",
        "tests",
        "faults::randomized_crashes_restarts_and_partitions_keep_the_ledger_invariants",
    ),
];

/// Runs torture suite `name` for `rounds` rounds (its default if `None`).
pub fn run_torture(ws: &Workspace, name: &str, rounds: Option<u64>) -> Result {
    let Some(&(_, default, var, package, target, test)) = SUITES.iter().find(|s| s.0 == name)
    else {
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
        target,
        "--",
        "--exact",
        "--nocapture",
    ]);
    cmd.arg(test).env(var, rounds.to_string());
    println!("xtask: torture {name}: {rounds} rounds");
    run(&mut cmd)
}
