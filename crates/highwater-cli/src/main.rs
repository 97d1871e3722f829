//! `highwater`: run the demo pipeline, inspect and verify checkpoints.

mod demo;
mod inspect;

use std::path::PathBuf;
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
    /// List the checkpoints in DIR.
    Inspect {
        /// Checkpoint directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every manifest and artifact checksum in DIR; exit 1 if any is bad.
    Verify {
        /// Checkpoint directory.
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Inspect { dir, json } => inspect::inspect(&dir, json),
        Command::Verify { dir, json } => inspect::verify(&dir, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
