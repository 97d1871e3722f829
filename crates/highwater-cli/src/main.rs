//! `highwater`: run the demo pipeline, inspect, verify, compact and
//! garbage-collect checkpoints.

mod compact;
mod coordinator;
mod demo;
mod inspect;
mod prometheus;
mod recover;
mod report;
mod target;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The highwater command-line tool.
#[derive(Debug, Parser)]
#[command(name = "highwater", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a deterministic stateful pipeline that checkpoints into DIR.
    ///
    /// Its last line is `digest: <hex>`, a hash of the final state. A run
    /// killed at any moment and resumed with --resume (any number of times)
    /// ends with the same digest as an uninterrupted run.
    Demo(demo::DemoArgs),
    /// Run one node of a Raft checkpoint-coordination cluster.
    Coordinator(coordinator::CoordinatorArgs),
    /// List the checkpoints in STORE (a directory, or a redis://, s3://,
    /// az:// or gs:// URL).
    Inspect {
        /// Checkpoint directory, or a redis://, s3://, az:// or gs:// URL.
        store: String,
        /// Key namespace of a Redis store.
        #[arg(long, default_value = "highwater")]
        namespace: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Plan (--plan) or run a recovery of STORE into memory: the newest
    /// checkpoint, a checkpoint (--checkpoint ID) or a point in time
    /// (--to TIME), plus the write-ahead log; rescaled (--parallelism P
    /// --subtask I) or partial (--operator OP).
    Recover(recover::RecoverArgs),
    /// Write one self-contained HTML page (inline SVG charts, no network,
    /// no JavaScript) about STORE's retained checkpoints: sizes, durations,
    /// chain depth, dedup, the current chain, recovery plans and a
    /// coordinator's ledger (--ledger DIR).
    Report(report::ReportArgs),
    /// Check every manifest and artifact checksum in STORE (a directory, or
    /// a redis://, s3://, az:// or gs:// URL); exit 1 if any is bad.
    Verify {
        /// Checkpoint directory, or a redis://, s3://, az:// or gs:// URL.
        store: String,
        /// Key namespace of a Redis store.
        #[arg(long, default_value = "highwater")]
        namespace: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Merge the chain of the newest checkpoint in STORE into a new full
    /// checkpoint (same log position and properties, plus `compacted_from`).
    /// Do not run it while a job writes to the same store.
    Compact {
        /// Checkpoint directory, or a redis://, s3://, az:// or gs:// URL.
        store: String,
        /// Key namespace of a Redis store.
        #[arg(long, default_value = "highwater")]
        namespace: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Merge threads (0 = number of cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// zstd level of the new base's artifacts (-7..=22).
        #[arg(long, default_value_t = 1, conflicts_with = "no_compression")]
        zstd_level: i32,
        /// Store the new base's artifacts uncompressed.
        #[arg(long)]
        no_compression: bool,
    },
    /// Apply retention to STORE: keep the newest --keep checkpoints, delete
    /// older manifests and every artifact no kept manifest references
    /// (including what crashed writers left). Do not run it while a job
    /// writes to the same store.
    Gc {
        /// Checkpoint directory, or a redis://, s3://, az:// or gs:// URL.
        store: String,
        /// Key namespace of a Redis store.
        #[arg(long, default_value = "highwater")]
        namespace: String,
        /// Checkpoints to keep.
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Coordinator(args) => coordinator::run(args),
        Command::Inspect {
            store,
            namespace,
            json,
        } => inspect::inspect(&store, &namespace, json),
        Command::Recover(args) => recover::run(args),
        Command::Report(args) => report::run(args),
        Command::Verify {
            store,
            namespace,
            json,
        } => inspect::verify(&store, &namespace, json),
        Command::Compact {
            store,
            namespace,
            json,
            threads,
            zstd_level,
            no_compression,
        } => compact::compact(
            &store,
            &namespace,
            json,
            threads,
            (!no_compression).then_some(zstd_level),
        ),
        Command::Gc {
            store,
            namespace,
            keep,
            json,
        } => compact::gc(&store, &namespace, json, keep),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
