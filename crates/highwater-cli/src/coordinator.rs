//! `highwater coordinator`: run one node of a Raft checkpoint-coordination
//! cluster (see docs/raft.md for starting a cluster by hand).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use highwater::Result;

/// Arguments of `highwater coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long)]
    id: u64,
    /// Address to listen on for Raft and client traffic.
    #[arg(long)]
    listen: SocketAddr,
    /// The other initial members: `ID=HOST:PORT,ID=HOST:PORT,…`.
    #[arg(long, default_value = "")]
    peers: String,
    /// Data directory (Raft log, snapshots); reuse it to restart the node.
    #[arg(long)]
    data: PathBuf,
    /// File holding the cluster's shared secret (at least 16 bytes; trailing
    /// whitespace ignored). Every node and tool of the cluster uses the same
    /// one; connections without it are refused (docs/raft.md, "Trust
    /// model").
    #[arg(long)]
    secret_file: PathBuf,
    /// Shortest election timeout in ms (the timeout is drawn from [N, 2N)).
    #[arg(long, default_value_t = 300)]
    election_ms: u64,
    /// Heartbeat interval in ms (at most half the election timeout).
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// The leader triggers a checkpoint every N ms (none if absent).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Abort a checkpoint not fully acknowledged after N ms.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_timeout_ms: u64,
    /// Take a Raft snapshot (of the ledger) every N applied log entries.
    #[arg(long, default_value_t = 1000)]
    snapshot_every: u64,
    /// Acknowledge each barrier after N ms.
    #[arg(long, default_value_t = 0)]
    ack_delay_ms: u64,
    /// Join an existing cluster instead of initializing one (the leader
    /// must add this node).
    #[arg(long)]
    join: bool,
    /// Exit when standard input closes (for supervisors and tests).
    #[arg(long)]
    exit_on_stdin_eof: bool,
    /// Serve metrics (the ledger's completed and aborted checkpoints, …) in
    /// Prometheus' text format on this address; see docs/metrics.md.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

/// Without the `raft` feature: the error naming the build that has it.
#[cfg(not(feature = "raft"))]
pub fn run(args: CoordinatorArgs) -> Result<ExitCode> {
    let _ = args;
    Err(crate::target::not_built("`highwater coordinator`", "raft"))
}

/// Runs the node until it is killed.
#[cfg(feature = "raft")]
pub fn run(args: CoordinatorArgs) -> Result<ExitCode> {
    use std::sync::Arc;
    use std::time::Duration;

    use highwater::cloud::ObjectCheckpointStore;
    use highwater::raft::{ClusterSecret, DistributedConfig, NodeOptions, parse_peers, run_node};

    if let Some(addr) = args.metrics_addr {
        crate::prometheus::serve(addr)?;
    }
    let secret = ClusterSecret::from_file(&args.secret_file)?;
    let mut config = DistributedConfig::new(args.id, args.listen, &args.data).secret(secret);
    config.peers = parse_peers(&args.peers)?;
    config.election_timeout = Duration::from_millis(args.election_ms);
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    config.checkpoint_interval = args.interval_ms.map(Duration::from_millis);
    config.checkpoint_timeout = Duration::from_millis(args.checkpoint_timeout_ms);
    config.join = args.join;
    // The coordinator acknowledges with labels, not parts of one job's
    // state: checkpoints go on while a node is down.
    config.participants = highwater::raft::Participants::LiveVoters;
    config.snapshot_every = args.snapshot_every;
    let store = ObjectCheckpointStore::local(args.data.join("snapshots"))?;
    let options = NodeOptions {
        config,
        ack_delay: Duration::from_millis(args.ack_delay_ms),
        exit_on_stdin_eof: args.exit_on_stdin_eof,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| highwater::Error::Io {
            context: "starting the tokio runtime".into(),
            source: e,
        })?;
    runtime.block_on(run_node(options, Arc::new(store)))?;
    Ok(ExitCode::SUCCESS)
}
