//! `cargo xtask ci`: exactly what CI runs, in order, stopping at the first
//! failure.
//!
//! Cheap checks come first so a formatting slip fails in seconds, not after
//! the build. Clippy uses the `ci` profile like the tests and benches, so
//! the three share one build of the dependencies.

use std::time::{Duration, Instant};

use crate::util::{Result, Workspace, bail, run};
use crate::{bench, testing, tidy};

/// How a step ended.
enum Outcome {
    Passed,
    Skipped(&'static str),
}

/// Runs every CI step; fails with the name of the first step that failed.
pub fn run_ci(ws: &Workspace) -> Result {
    type Step = (&'static str, fn(&Workspace) -> Result<Outcome>);
    let steps: [Step; 7] = [
        ("fmt", fmt),
        ("tidy", |ws| tidy::run_tidy(ws).map(|()| Outcome::Passed)),
        ("clippy", clippy),
        ("test", |ws| {
            testing::run_all(ws, &[]).map(|()| Outcome::Passed)
        }),
        ("deny", deny),
        ("bench", |ws| {
            bench::run_suite(ws, bench::ALL, true).map(|()| Outcome::Passed)
        }),
        ("report", |ws| {
            bench::write_report(ws).map(|_| Outcome::Passed)
        }),
    ];
    // libclang for librocksdb-sys, before the first step that builds.
    crate::prereqs::ensure()?;
    let total = Instant::now();
    let mut timings: Vec<(&str, Duration, String)> = Vec::new();
    for (i, (name, step)) in steps.iter().enumerate() {
        println!("\n==> ci [{}/{}] {name}", i + 1, steps.len());
        let start = Instant::now();
        let result = step(ws);
        let took = start.elapsed();
        match result {
            Ok(Outcome::Passed) => {
                println!("==> ci: {name} passed in {}", secs(took));
                timings.push((name, took, "passed".into()));
            }
            Ok(Outcome::Skipped(why)) => {
                println!("==> ci: {name} skipped ({why})");
                timings.push((name, took, format!("skipped: {why}")));
            }
            Err(e) => {
                timings.push((name, took, "FAILED".into()));
                print_summary(&timings, total.elapsed());
                bail!("ci failed at step `{name}`: {e}");
            }
        }
    }
    print_summary(&timings, total.elapsed());
    println!("==> ci: all steps passed");
    Ok(())
}

fn print_summary(timings: &[(&str, Duration, String)], total: Duration) {
    println!("\n==> ci: step times");
    for (name, took, how) in timings {
        println!("    {name:<8} {:>9}  {how}", secs(*took));
    }
    println!("    {:<8} {:>9}", "total", secs(total));
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn fmt(ws: &Workspace) -> Result<Outcome> {
    run(&mut ws.cargo(["fmt", "--all", "--", "--check"]))?;
    Ok(Outcome::Passed)
}

fn clippy(ws: &Workspace) -> Result<Outcome> {
    run(&mut ws.cargo([
        "clippy",
        "--workspace",
        "--all-targets",
        "--profile",
        "ci",
        "--",
        "-D",
        "warnings",
    ]))?;
    Ok(Outcome::Passed)
}

fn deny(ws: &Workspace) -> Result<Outcome> {
    if !ws.cargo_probe(&["deny", "--version"]) {
        println!(
            "xtask: cargo-deny is not installed; skipping the license, ban and source checks \
             (install with `cargo install cargo-deny --locked`)"
        );
        return Ok(Outcome::Skipped("cargo-deny not installed"));
    }
    // advisories needs the network; the three offline checks are named.
    run(&mut ws.cargo(["deny", "check", "bans", "licenses", "sources"]))?;
    Ok(Outcome::Passed)
}
