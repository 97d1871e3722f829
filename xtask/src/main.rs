//! `cargo xtask`: the project's automation, written in Rust so it runs the
//! same on every machine (see `docs/operations.md`).
//!
//! `cargo xtask` is an alias (in `.cargo/config.toml`) for running this
//! binary. Each subcommand prints every command it runs and exits non-zero
//! on failure:
//!
//! - `test [-- ARGS]`: every test of the workspace in the `ci` profile;
//! - `demo [--resume] [--features F] [ARGS]`: the CLI's demo pipeline into
//!   `<target>/demo-data` (default features unless `--features` says more);
//! - `bench [SUITE] [--quick] [--size BYTES] [--blob-values] [--report]`: benchmarks, and the Markdown report;
//! - `tidy`: source-tree checks (module docs, forbidden markers, manifests,
//!   crate layering, docs that name what exists);
//! - `browser`: the browser test of `highwater report` (headless Chromium,
//!   installed if missing);
//! - `ci`: exactly what CI runs, in order;
//! - `services start|stop|status`: the servers tests and benches talk to;
//! - `fuzz [TARGET] [--minutes N]`: the cargo-fuzz targets of `fuzz/`
//!   with the nightly toolchain (cargo-fuzz installed if missing);
//! - `torture SUITE [--rounds N]`: long crash tests (`wal`: 1,000 SIGKILLs;
//!   `checkpoint`: 1,000 SIGKILLs of checkpoints, merges and retention;
//!   `raft`: 500 rounds of crashes, restarts and partitions of 5 nodes;
//!   `cluster`: 200 SIGKILLs of the cluster demo's node processes).
//!
//! The build output is `$CARGO_TARGET_DIR`, or `target/` in the repository.

mod bench;
mod bench_chart;
mod browser;
mod ci;
mod demo;
mod fuzz;
mod prereqs;
mod services;
mod testing;
mod tidy;
mod torture;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::util::{Result, Workspace};

/// Project automation for highwater.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every test of the workspace (nextest if installed, then doctests),
    /// in the `ci` profile.
    Test {
        /// Passed to the test runner, after `--` (for example a test filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the demo pipeline of the `highwater` CLI into `<target>/demo-data`.
    ///
    /// The CLI is built with its default features (memory backend, local
    /// directories); `--features rocksdb,redis,s3,azure,gcs,raft` or
    /// `--features full` (anywhere among the arguments) builds more.
    Demo {
        /// Keep the data of an earlier run instead of starting fresh.
        #[arg(long)]
        resume: bool,
        /// Passed to `highwater demo`; `--dir` and `--events` replace the
        /// defaults (a relative `--dir` is taken from the repository root).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run benchmark suites into `<target>/bench/` and/or render
    /// `docs/bench/REPORT.md` from the results there.
    Bench {
        /// Suite to run; `all` runs every suite.
        suite: Option<String>,
        /// Shorter runs, for CI and smoke tests.
        #[arg(long)]
        quick: bool,
        /// Render the report; alone, only renders the results already there.
        #[arg(long)]
        report: bool,
        /// Logical bytes of state for suites that take a size (`large`):
        /// e.g. 32G.
        #[arg(long)]
        size: Option<String>,
        /// Keep values in blob files (`RocksDbConfig::blob_values`) in the
        /// suites that open RocksDB with the large suite's configuration
        /// (`large`), on both sides of the comparison.
        #[arg(long)]
        blob_values: bool,
    },
    /// Render a `highwater report` page in headless Chromium (installed
    /// with apt-get if missing) and check the screenshot and the page text.
    Browser,
    /// Run exactly what CI runs, stopping at the first failure.
    Ci,
    /// Check the source tree: module docs, forbidden markers, manifests, the
    /// crate layering, and that the docs name only what exists.
    Tidy,
    /// Fuzz the decoders with cargo-fuzz (nightly): every target of
    /// `fuzz/`, or TARGET, for N minutes each; prints executions per target.
    Fuzz {
        /// One target (manifest, manifest_body, artifact, artifact_body,
        /// wal_segment, raft_frame, raft_snapshot, redis_artifact).
        target: Option<String>,
        /// Minutes per target.
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
    },
    /// Run a long crash test: `wal` SIGKILLs a writing child 1,000 times;
    /// `checkpoint` kills checkpoints, merges and retention 1,000 times;
    /// `raft` runs 500 rounds of crashes, restarts and partitions.
    Torture {
        /// The suite (`wal`, `raft`).
        suite: String,
        /// Rounds instead of the suite's default.
        #[arg(long)]
        rounds: Option<u64>,
    },
    /// Start, stop or inspect the servers the tests and benches talk to
    /// (redis-server standalone and cluster, moto's S3 server, azurite), on
    /// loopback ports.
    Services {
        #[command(subcommand)]
        action: ServicesAction,
    },
}

#[derive(Debug, Subcommand)]
enum ServicesAction {
    /// Install what is missing, start every service and print its
    /// environment variables (also written to `<target>/services/env`).
    Start,
    /// Stop every service by the PIDs in its pid files and remove its data.
    Stop,
    /// Show which services run.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match Workspace::locate().and_then(|ws| dispatch(&ws, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(ws: &Workspace, command: Command) -> Result {
    match command {
        Command::Test { args } => testing::run_all(ws, &args),
        Command::Demo { resume, args } => {
            // `--resume` and `--features` are xtask's own flags wherever
            // they appear.
            let resume = resume || args.iter().any(|a| a == "--resume");
            let mut args: Vec<String> = args.into_iter().filter(|a| a != "--resume").collect();
            let features = demo::take_flag(&mut args, "--features");
            demo::run_demo(ws, resume, features.as_deref(), &args)
        }
        Command::Bench {
            suite,
            quick,
            report,
            size,
            blob_values,
        } => {
            // `--report` alone renders what is there; anything else runs first.
            if suite.is_some() || quick || !report {
                let suite = suite.as_deref().unwrap_or(bench::ALL);
                bench::run_suite(ws, suite, quick, size.as_deref(), blob_values)?;
            }
            if report {
                bench::write_report(ws)?;
            }
            Ok(())
        }
        Command::Browser => browser::run_browser_test(ws),
        Command::Ci => ci::run_ci(ws),
        Command::Tidy => tidy::run_tidy(ws),
        Command::Fuzz { target, minutes } => fuzz::run_fuzz(ws, target.as_deref(), minutes),
        Command::Torture { suite, rounds } => torture::run_torture(ws, &suite, rounds),
        Command::Services { action } => match action {
            ServicesAction::Start => services::start(ws).map(|_| ()),
            ServicesAction::Stop => services::stop(ws),
            ServicesAction::Status => services::status(ws),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_arguments_follow_a_double_dash() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "--no-capture", "codec"]).unwrap();
        let Command::Test { args } = cli.command else {
            panic!("expected test");
        };
        assert_eq!(args, ["--no-capture", "codec"]);
    }

    #[test]
    fn demo_passes_unknown_flags_through() {
        let cli = Cli::try_parse_from(["xtask", "demo", "--resume", "--events", "10"]).unwrap();
        let Command::Demo { resume, args } = cli.command else {
            panic!("expected demo");
        };
        assert!(resume);
        assert_eq!(args, ["--events", "10"]);
    }
}
