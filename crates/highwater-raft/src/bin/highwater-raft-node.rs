//! A coordinator node process for the raft crate's own process-level tests
//! and benchmarks (the same as `highwater coordinator`, without the CLI's
//! cloud dependencies). Flags: `--id N --listen ADDR --peers ID=ADDR,…
//! --data DIR --secret-file PATH [--election-ms N] [--heartbeat-ms N]
//! [--interval-ms N] [--checkpoint-timeout-ms N] [--ack-delay-ms N]
//! [--exit-before-complete CODE] [--join]`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use highwater_cloud::ObjectCheckpointStore;
use highwater_core::{Error, Result};
use highwater_raft::{ClusterSecret, DistributedConfig, NodeOptions, parse_peers, run_node};

fn parse(args: &[String]) -> Result<NodeOptions> {
    let mut id = None;
    let mut listen = "127.0.0.1:0".to_string();
    let mut peers = String::new();
    let mut data = None;
    let mut secret_file = None;
    let mut nums = std::collections::BTreeMap::new();
    let mut join = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--join" {
            join = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("flag needs a value: {flag}")))?
            .clone();
        match flag.as_str() {
            "--id" => id = Some(value),
            "--listen" => listen = value,
            "--peers" => peers = value,
            "--data" => data = Some(value),
            "--secret-file" => secret_file = Some(value),
            "--election-ms"
            | "--heartbeat-ms"
            | "--interval-ms"
            | "--checkpoint-timeout-ms"
            | "--ack-delay-ms"
            | "--exit-before-complete" => {
                let n: u64 = value
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("{flag}: {e}")))?;
                nums.insert(flag.clone(), n);
            }
            other => return Err(Error::InvalidArgument(format!("unknown flag: {other}"))),
        }
    }
    let id: u64 = id
        .ok_or_else(|| Error::InvalidArgument("--id is required".into()))?
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("--id: {e}")))?;
    let listen = listen
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("--listen: {e}")))?;
    let data = data.ok_or_else(|| Error::InvalidArgument("--data is required".into()))?;
    let ms = |k: &str| nums.get(k).map(|&n| Duration::from_millis(n));
    let secret = ClusterSecret::from_file(
        secret_file.ok_or_else(|| Error::InvalidArgument("--secret-file is required".into()))?,
    )?;
    let mut config = DistributedConfig::new(id, listen, data).secret(secret);
    config.peers = parse_peers(&peers)?;
    config.join = join;
    // The test clusters' ledgers go on while a node is down.
    config.participants = highwater_raft::Participants::LiveVoters;
    if let Some(d) = ms("--election-ms") {
        config.election_timeout = d;
    }
    if let Some(d) = ms("--heartbeat-ms") {
        config.heartbeat_interval = d;
    }
    config.checkpoint_interval = ms("--interval-ms");
    if let Some(d) = ms("--checkpoint-timeout-ms") {
        config.checkpoint_timeout = d;
    }
    if let Some(&code) = nums.get("--exit-before-complete") {
        config.exit_before_complete = Some(
            i32::try_from(code)
                .map_err(|e| Error::InvalidArgument(format!("--exit-before-complete: {e}")))?,
        );
    }
    Ok(NodeOptions {
        config,
        ack_delay: ms("--ack-delay-ms").unwrap_or_default(),
        exit_on_stdin_eof: true,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse(&args).and_then(|options| {
        let store = ObjectCheckpointStore::local(options.config.data_dir.join("snapshots"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                context: "starting the tokio runtime".into(),
                source: e,
            })?;
        runtime.block_on(run_node(options, Arc::new(store)))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
