//! A coordinator node as a process: what `highwater coordinator` runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use highwater_core::{CheckpointStore, Error, Result};
use tokio::io::AsyncReadExt;

use crate::coordinator::{CheckpointCoordinator, DistributedConfig};
use crate::ledger::{ManifestRef, NodeId};
use crate::state_machine::LedgerEvent;

/// How a node process behaves besides its [`DistributedConfig`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The node's configuration.
    pub config: DistributedConfig,
    /// Acknowledge each barrier after this delay (the time a real engine
    /// takes to write its part).
    pub ack_delay: Duration,
    /// Exit when standard input reaches its end (so a supervising process
    /// that dies takes its nodes with it).
    pub exit_on_stdin_eof: bool,
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!("peer must be ID=HOST:PORT: peer={part}"))
        })?;
        let id: NodeId = id.trim().parse().map_err(|e| {
            Error::InvalidArgument(format!("peer id is not a number: {e} peer={part}"))
        })?;
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(Error::InvalidArgument(format!(
                "peer listed twice: id={id}"
            )));
        }
    }
    Ok(out)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout only loses the progress lines, never ledger state.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs a node until it is killed (or, with `exit_on_stdin_eof`, until its
/// standard input closes). Prints `listening ADDR` once it accepts
/// connections, then one line per ledger event (`barrier`, `acked`,
/// `completed checkpoint=C index=I`, `aborted`). Each barrier is
/// acknowledged by this node with manifest `node-N/checkpoint-C` after
/// `ack_delay`.
pub async fn run_node(options: NodeOptions, store: Arc<dyn CheckpointStore>) -> Result<()> {
    let id = options.config.node_id;
    let coordinator = Arc::new(CheckpointCoordinator::start(options.config.clone(), store).await?);
    let mut events = coordinator.events();
    say(&format!("listening {}", coordinator.local_addr()));
    let stdin_closed = async {
        if options.exit_on_stdin_eof {
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    let handle = |event: LedgerEvent| match event {
        LedgerEvent::Barrier { checkpoint, .. } => {
            say(&format!("barrier checkpoint={}", checkpoint.0));
            let c = coordinator.clone();
            let delay = options.ack_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let manifest = ManifestRef(format!("node-{id}/checkpoint-{}", checkpoint.0));
                match c.report_completion(checkpoint, id, manifest).await {
                    Ok(o) => say(&format!("acked checkpoint={} outcome={o:?}", checkpoint.0)),
                    Err(e) => say(&format!("ack failed checkpoint={} error={e}", checkpoint.0)),
                }
            });
        }
        LedgerEvent::Completed {
            checkpoint,
            log_index,
        } => {
            say(&format!(
                "completed checkpoint={} index={log_index}",
                checkpoint.0
            ));
        }
        LedgerEvent::Aborted { checkpoint, reason } => {
            say(&format!(
                "aborted checkpoint={} reason={reason}",
                checkpoint.0
            ));
        }
    };
    // Checkpoints triggered before the subscription (before a restart, or
    // applied while starting) are acknowledged too; acknowledging twice
    // with the same manifest is accepted as a duplicate.
    for b in coordinator.pending_barriers() {
        handle(b);
    }
    let work = async {
        loop {
            match events.recv().await {
                Ok(e) => handle(e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    say(&format!("lagged {n}"))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = work => {}
    }
    match Arc::try_unwrap(coordinator) {
        Ok(c) => c.shutdown().await,
        Err(_) => Ok(()),
    }
}
