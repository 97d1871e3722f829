//! `highwater`: run the demo pipeline, inspect, verify, compact and
//! garbage-collect checkpoints, and take, export, import and compare
//! savepoints.
//!
//! Exit codes (docs/operations.md): 0 success, 1 failure (including
//! `verify` finding a damaged checkpoint), 2 usage (clap's own errors, an
//! invalid argument, or a backend, store or command this build leaves
//! out), 141 standard output closed early (`| head`). An error is one line
//! on stderr: `error: ` and the error with its cause chain.

/// `println!` for every command: when standard output is closed
/// (`highwater inspect … | head`), the process ends quietly with status
/// 141, as a Unix tool that SIGPIPE ends does, instead of panicking (Rust
/// ignores SIGPIPE, so the write fails, and std's `println!` panics on a
/// failed write).
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(&e)
        }
    }};
}

/// `print!`, as [`println!`].
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(&e)
        }
    }};
}

#[cfg(feature = "raft")]
mod cluster_demo;
mod compact;
mod coordinator;
mod demo;
mod global;
mod inspect;
mod progress;
mod prometheus;
mod recover;
mod report;
mod savepoint;
mod target;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The highwater command-line tool.
#[derive(Debug, Parser)]
#[command(
    name = "highwater",
    version,
    about,
    after_help = "Exit codes: 0 success, 1 failure, 2 usage (see docs/operations.md).\n\n\
                  Example:\n  highwater demo --dir /tmp/hw && highwater report /tmp/hw -o report.html"
)]
struct Cli {
    /// Encrypt what is written and open what is read with the keys in
    /// FILE (at-rest encryption; one `<id> <64 hex digits>` line per key,
    /// the highest id current; mode 600). Applies to every store and to the
    /// demo's write-ahead log. Also read from HIGHWATER_KEY_FILE.
    #[arg(long, global = true, env = "HIGHWATER_KEY_FILE", value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
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
    #[command(
        after_help = "Examples:\n  highwater demo --dir /tmp/hw --events 1000000\n  highwater demo --dir /tmp/hw --resume --wal"
    )]
    Demo(demo::DemoArgs),
    /// Run one node of a Raft checkpoint-coordination cluster.
    #[command(
        after_help = "Example (a one-node cluster):\n  highwater coordinator --id 1 --listen 127.0.0.1:7001 --data /tmp/node-1 --secret-file cluster.secret --interval-ms 1000"
    )]
    Coordinator(coordinator::CoordinatorArgs),
    /// List the checkpoints in STORE (a directory, or a redis://, s3://,
    /// az:// or gs:// URL); for a cluster job's shared store also each
    /// participant's local manifests and the global checkpoints its ledger
    /// records (completed, aborted, pending).
    #[command(
        after_help = "Examples:\n  highwater inspect /tmp/hw\n  highwater inspect s3://bucket/jobs/orders --json\n  highwater inspect /tmp/cluster --ledger 127.0.0.1:7001 --secret cluster.secret"
    )]
    Inspect {
        /// Checkpoint directory, or a redis://, s3://, az:// or gs:// URL.
        store: String,
        /// Key namespace of a Redis store.
        #[arg(long, default_value = "highwater")]
        namespace: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ledger: global::LedgerArgs,
    },
    /// Plan (--plan) or run a recovery of STORE into memory: the newest
    /// checkpoint, a checkpoint (--checkpoint ID) or a point in time
    /// (--to TIME), plus the write-ahead log; rescaled (--parallelism P
    /// --subtask I) or partial (--operator OP).
    #[command(
        after_help = "Examples:\n  highwater recover /tmp/hw --plan\n  highwater recover /tmp/hw --to 2026-11-18T11:06:40Z --parallelism 4 --subtask 0"
    )]
    Recover(recover::RecoverArgs),
    /// Write one self-contained HTML page (inline SVG charts, no network,
    /// no JavaScript) about STORE's retained checkpoints: sizes, durations,
    /// chain depth, dedup, the current chain, recovery plans and a
    /// coordinator's ledger (--ledger DIR).
    #[command(after_help = "Example:\n  highwater report /tmp/hw -o report.html")]
    Report(report::ReportArgs),
    /// Check every manifest and artifact checksum in STORE (a directory, or
    /// a redis://, s3://, az:// or gs:// URL), and for a cluster job that
    /// every globally completed checkpoint its ledger knows is restorable;
    /// exit 1 if any is bad.
    #[command(after_help = "Example:\n  highwater verify /tmp/hw || echo damaged")]
    Verify {
        /// Checkpoint directory, or a redis://, s3://, az:// or gs:// URL.
        store: String,
        /// Key namespace of a Redis store.
        #[arg(long, default_value = "highwater")]
        namespace: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ledger: global::LedgerArgs,
    },
    /// Merge the chain of the newest checkpoint in STORE into a new full
    /// checkpoint (same log position and properties, plus `compacted_from`).
    /// Do not run it while a job writes to the same store.
    #[command(after_help = "Example:\n  highwater compact /tmp/hw --zstd-level 3")]
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
    #[command(after_help = "Example:\n  highwater gc /tmp/hw --keep 2")]
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
    /// Write a savepoint of STORE's newest checkpoint (or --id) to TARGET
    /// (a directory or URL), offline. See docs/savepoints.md.
    #[command(after_help = "Example:\n  highwater savepoint /tmp/hw --to /tmp/hw-savepoints")]
    Savepoint {
        /// Checkpoint directory, or a redis://, s3://, az:// or gs:// URL.
        store: String,
        #[command(flatten)]
        source: savepoint::SourceArgs,
        /// Where the savepoint goes (created if a directory).
        #[arg(long)]
        to: String,
        /// Key namespace of a Redis target.
        #[arg(long, default_value = "highwater")]
        to_namespace: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print every entry of SOURCE's newest checkpoint or savepoint (or
    /// --id): operator, state, key, namespace, map key, expiry and value,
    /// each in base64 and, for types the tool knows, decoded.
    #[command(
        after_help = "Examples:\n  highwater export /tmp/hw-savepoints --state count > state.jsonl\n  highwater export /tmp/hw --format csv -o state.csv"
    )]
    Export {
        /// A store of checkpoints or savepoints (directory or URL).
        source: String,
        #[command(flatten)]
        args: savepoint::SourceArgs,
        /// Only this operator.
        #[arg(long)]
        operator: Option<String>,
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = savepoint::Format::Jsonl)]
        format: savepoint::Format,
        /// Write to FILE instead of standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<std::path::PathBuf>,
    },
    /// Write a savepoint to TARGET from FILE, JSON lines as `export`
    /// writes them (bootstrapping state).
    #[command(after_help = "Example:\n  highwater import state.jsonl --to /tmp/bootstrap")]
    Import {
        /// The JSON lines file.
        file: std::path::PathBuf,
        /// Where the savepoint goes (created if a directory).
        #[arg(long)]
        to: String,
        /// Key namespace of a Redis target.
        #[arg(long, default_value = "highwater")]
        to_namespace: String,
        /// Key groups of the savepoint (default: the file's header, else 128).
        #[arg(long)]
        max_parallelism: Option<u16>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare the newest checkpoints or savepoints of A and B: per
    /// operator and state, the entries added, removed and changed. Exit 1
    /// when they differ.
    #[command(after_help = "Example:\n  highwater diff /tmp/hw /tmp/hw-savepoints --json")]
    Diff {
        /// A store of checkpoints or savepoints (directory or URL).
        a: String,
        /// Another one.
        b: String,
        /// Key namespace of Redis stores.
        #[arg(long, default_value = "highwater")]
        namespace: String,
        /// Compare A's checkpoint or savepoint with this id.
        #[arg(long)]
        a_id: Option<u64>,
        /// Compare B's checkpoint or savepoint with this id.
        #[arg(long)]
        b_id: Option<u64>,
        /// List the keys, not only their counts.
        #[arg(long)]
        keys: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match target::set_key_file(cli.key_file.as_deref()) {
        Err(e) => Err(e),
        Ok(()) => run(cli.command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            exit_code(&e)
        }
    }
}

fn run(command: Command) -> highwater::Result<ExitCode> {
    match command {
        Command::Demo(args) => demo::run(args),
        Command::Coordinator(args) => coordinator::run(args),
        Command::Inspect {
            store,
            namespace,
            json,
            ledger,
        } => inspect::inspect(&store, &namespace, json, &ledger),
        Command::Recover(args) => recover::run(args),
        Command::Report(args) => report::run(args),
        Command::Verify {
            store,
            namespace,
            json,
            ledger,
        } => inspect::verify(&store, &namespace, json, &ledger),
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
        Command::Savepoint {
            store,
            source,
            to,
            to_namespace,
            json,
        } => savepoint::savepoint(&store, &source, &to, &to_namespace, json),
        Command::Export {
            source,
            args,
            operator,
            state,
            format,
            output,
        } => savepoint::export(
            &source,
            &args,
            operator.as_deref(),
            state.as_deref(),
            format,
            output.as_deref(),
        ),
        Command::Import {
            file,
            to,
            to_namespace,
            max_parallelism,
            json,
        } => savepoint::import(&file, &to, &to_namespace, max_parallelism, json),
        Command::Diff {
            a,
            b,
            namespace,
            a_id,
            b_id,
            keys,
            json,
        } => {
            let side = |id| savepoint::SourceArgs {
                namespace: namespace.clone(),
                id,
            };
            savepoint::diff(&a, &side(a_id), &b, &side(b_id), json, keys)
        }
    }
}

/// Ends the process after a failed write to standard output: quietly with
/// status 141 (128 + SIGPIPE) when the reader is gone, else with the error
/// on stderr and status 1.
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1)
}

/// 2 for a usage error (an invalid argument, or something this build
/// leaves out), 1 for every other failure.
fn exit_code(e: &highwater::Error) -> ExitCode {
    match e {
        highwater::Error::InvalidArgument(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// The error and its cause chain on one line: each cause not already part
/// of the text is appended after `: `, and line breaks become spaces.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_every_command_has_an_example() {
        Cli::command().debug_assert();
        for sub in Cli::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("Example") && help.contains(&format!("highwater {}", sub.get_name())),
                "`highwater {} --help` has no example",
                sub.get_name()
            );
        }
    }

    #[test]
    fn an_error_is_one_line_with_its_causes() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("reading the manifest\nof checkpoint 7")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(
            one_line(&e),
            "reading the manifest of checkpoint 7: disk on fire"
        );
        // A cause the message already includes is not repeated.
        let e = highwater::Error::io("open x", std::io::Error::other("denied"));
        assert_eq!(
            one_line(&e).matches("denied").count(),
            1,
            "{}",
            one_line(&e)
        );
    }
}
