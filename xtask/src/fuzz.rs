//! `cargo xtask fuzz [TARGET] [--minutes N]`: runs the cargo-fuzz targets
//! of `fuzz/` (issue 18), each for `N` minutes (default 1), with the
//! nightly toolchain.
//!
//! Before fuzzing it installs cargo-fuzz into `<target>/tools/cargo-fuzz`
//! when it is not on `PATH` there already, and writes the seed corpus (real
//! files made by the library, `highwater-fuzz-seeds`) into
//! `<target>/fuzz-corpus/seeds`. Each target's growing corpus is kept in
//! `<target>/fuzz-corpus/<target>` across runs; crashes are written to
//! `<target>/fuzz-corpus/findings/<target>/`, and a crash fails the run.
//! The nightly build uses its own target directory (`<target>/fuzz`), so
//! it never disturbs the stable `ci` build. At the end it prints each
//! target's executions.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Result, Workspace, io_context, run};

/// The targets, in `fuzz/Cargo.toml` and `highwater_fuzz::Target` order.
pub const TARGETS: [&str; 10] = [
    "manifest",
    "manifest_body",
    "artifact",
    "artifact_body",
    "wal_segment",
    "raft_frame",
    "raft_snapshot",
    "redis_artifact",
    "sealed",
    "savepoint",
];

/// The cargo-fuzz release `cargo xtask fuzz` installs.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Runs `target` (every target when `None`) for `minutes` each.
pub fn run_fuzz(ws: &Workspace, target: Option<&str>, minutes: f64) -> Result {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => {
            return Err(format!("unknown fuzz target {t:?}; known: {}", TARGETS.join(", ")).into());
        }
        None => TARGETS.to_vec(),
    };
    if minutes.is_nan() || minutes <= 0.0 {
        return Err(format!("--minutes must be positive: {minutes}").into());
    }
    let cargo_fuzz_bin = ensure_cargo_fuzz(ws)?;
    let corpus_root = ws.target_dir.join("fuzz-corpus");
    let seeds = corpus_root.join("seeds");
    let mut cmd = ws.cargo([
        "run",
        "--profile",
        "ci",
        "-p",
        "highwater-fuzz",
        "--bin",
        "highwater-fuzz-seeds",
        "--",
    ]);
    run(cmd.arg(&seeds))?;
    let seconds = (minutes * 60.0).round().max(1.0) as u64;
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for t in targets {
        let corpus = corpus_root.join(t);
        let findings = corpus_root.join("findings").join(t);
        for dir in [&corpus, &findings] {
            std::fs::create_dir_all(dir).map_err(io_context("creating", dir))?;
        }
        let log = corpus_root.join(format!("{t}.log"));
        let mut cmd = fuzz_command(ws, &cargo_fuzz_bin);
        cmd.args(["run", "--fuzz-dir", "fuzz", t])
            .arg(&corpus)
            .arg(seeds.join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", findings.display()))
            .args([
                "-rss_limit_mb=2048",
                "-malloc_limit_mb=256",
                "-timeout=20",
                "-print_final_stats=1",
            ]);
        println!(
            "xtask: fuzz {t}: {seconds} s (log: {})",
            ws.display_path(&log)
        );
        let file = std::fs::File::create(&log).map_err(io_context("creating", &log))?;
        let status = cmd
            .stderr(file)
            .status()
            .map_err(|e| format!("cannot start cargo fuzz: {e}"))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let execs = final_stat(&text, "stat::number_of_executed_units").unwrap_or(0);
        let rate = final_stat(&text, "stat::average_exec_per_sec").unwrap_or(0);
        let found = !status.success();
        summary.push(format!(
            "{t}: {execs} executions ({rate}/s), corpus {} inputs{}",
            count_files(&corpus),
            if found { ", FINDING (see the log)" } else { "" }
        ));
        if found {
            failed.push(t);
        }
    }
    println!("xtask: fuzz summary ({minutes} min per target):");
    for line in &summary {
        println!("  {line}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzzing found crashes in {}; inputs in {}",
            failed.join(", "),
            ws.display_path(&corpus_root.join("findings"))
        )
        .into())
    }
}

/// `cargo +nightly fuzz` with the nightly build's own target directory.
fn fuzz_command(ws: &Workspace, cargo_fuzz_bin: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![cargo_fuzz_bin.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    cmd.arg("+nightly")
        .arg("fuzz")
        .current_dir(&ws.root)
        .env("CARGO_TARGET_DIR", ws.target_dir.join("fuzz"))
        .env("PATH", std::env::join_paths(dirs).unwrap_or(path));
    cmd
}

/// The directory holding a `cargo-fuzz` binary, installed there if absent.
fn ensure_cargo_fuzz(ws: &Workspace) -> Result<PathBuf> {
    let root = ws.target_dir.join("tools").join("cargo-fuzz");
    let bin = root.join("bin");
    if !bin.join("cargo-fuzz").is_file() {
        println!(
            "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
            root.display()
        );
        let mut cmd = Command::new("cargo");
        cmd.args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
            "--root",
        ])
        .arg(&root)
        .current_dir(std::env::temp_dir());
        run(&mut cmd)?;
    }
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        return Err(
            "the nightly toolchain is needed for cargo fuzz: rustup toolchain install nightly"
                .into(),
        );
    }
    Ok(bin)
}

/// The value of libFuzzer's final statistic `name` in `log`.
fn final_stat(log: &str, name: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        l.strip_prefix(name)?
            .trim_start_matches(':')
            .trim()
            .parse()
            .ok()
    })
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read_from_the_log() {
        let log = "#1024 pulse\nstat::number_of_executed_units: 123456\nstat::average_exec_per_sec:     2057\n";
        assert_eq!(
            final_stat(log, "stat::number_of_executed_units"),
            Some(123456)
        );
        assert_eq!(final_stat(log, "stat::average_exec_per_sec"), Some(2057));
        assert_eq!(final_stat(log, "stat::new_units_added"), None);
    }

    #[test]
    fn the_targets_are_the_fuzz_crates_bins() {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml"),
        )
        .unwrap();
        for t in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t}");
        }
        let bins = manifest.matches("[[bin]]").count();
        assert_eq!(bins, TARGETS.len());
    }
}
