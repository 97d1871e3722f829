//! `cargo xtask torture SUITE [--rounds N]`: the long crash tests that the
//! normal test run only samples.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{Result, Workspace, io_context, run};

/// The torture suites: name, default rounds, the rounds variable, the
/// package, its test target, the test (its exact name in that target)
/// that reads it, and the features it needs.
const SUITES: &[(&str, u64, &str, &str, &str, &str, &str)] = &[
    (
        "wal",
        1_000,
        "HIGHWATER_WAL_TORTURE_ROUNDS",
        "highwater-wal",
        // A crash test target (highwater_testkit::crash): its binary is
        // also the child it kills.
        "crash",
        "sigkill_never_loses_an_acknowledged_record",
        "",
    ),
    (
        "checkpoint",
        1_000,
        "HIGHWATER_CHECKPOINT_TORTURE_ROUNDS",
        "highwater",
        // The churn workload (checkpoints, merges, retention) killed at
        // random moments; every retained checkpoint checked against the
        // workload's model.
        "crash",
        "merge::sigkill_during_checkpoints_merges_and_gc_leaves_every_retained_checkpoint_restorable",
        "",
    ),
    (
        "raft",
        500,
        "HIGHWATER_RAFT_TORTURE_ROUNDS",
        "highwater-raft",
        "tests",
        "faults::randomized_crashes_restarts_and_partitions_keep_the_ledger_invariants",
        "",
    ),
    (
        "cluster",
        200,
        "HIGHWATER_CLUSTER_TORTURE_ROUNDS",
        "highwater-cli",
        // The cluster demo (3 node processes, Raft) whose nodes are
        // SIGKILLed and restarted: the rounds are node kills, 20 per run
        // of the job, each run's digest checked.
        "tests",
        "a_raft_cluster_whose_nodes_are_killed_and_restarted_gives_the_single_process_digest",
        "highwater-cli/full",
    ),
];

/// Runs torture suite `name` for `rounds` rounds (its default if `None`).
pub fn run_torture(ws: &Workspace, name: &str, rounds: Option<u64>) -> Result {
    let Some(&(_, default, var, package, target, test, features)) =
        SUITES.iter().find(|s| s.0 == name)
    else {
        let known: Vec<&str> = SUITES.iter().map(|s| s.0).collect();
        return Err(format!(
            "unknown torture suite {name:?}; known: {}",
            known.join(", ")
        )
        .into());
    };
    let rounds = rounds.unwrap_or(default);
    // Build the test binary, then run a private copy of it: a torture run
    // takes many minutes, and a crash test spawns its own executable as
    // the child, so a rebuild of the same target meanwhile (another
    // command on this target directory) would pull the binary from under
    // it.
    let mut build = ws.cargo([
        "test",
        "--profile",
        "ci",
        "-p",
        package,
        "--test",
        target,
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    if !features.is_empty() {
        build.args(["--features", features]);
    }
    let shown = crate::util::render(&build);
    println!("$ {shown}");
    let out = build
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{shown}` failed").into());
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == target && v["profile"]["test"] == true)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("`{shown}` named no test executable for {target}"))?;
    let dir = ws.target_dir.join("torture");
    std::fs::create_dir_all(&dir).map_err(io_context("creating", &dir))?;
    let copy = dir.join(format!("{name}-{}", std::process::id()));
    std::fs::copy(&exe, &copy).map_err(io_context("copying the test binary to", &copy))?;
    let mut cmd = Command::new(&copy);
    // Where cargo would run it: the package's directory.
    let package_dir = ws.root.join("crates").join(package);
    cmd.current_dir(&package_dir)
        .env("CARGO_MANIFEST_DIR", &package_dir)
        .args(["--exact", "--nocapture", test])
        .env(var, rounds.to_string());
    println!("xtask: torture {name}: {rounds} rounds");
    let result = run(&mut cmd);
    let _ = std::fs::remove_file(&copy);
    result
}
