//! `highwater compact`: merge the newest checkpoint's chain into a new full
//! checkpoint, and `highwater gc`: apply retention.

use std::process::ExitCode;
use std::sync::Arc;

use highwater::core::{Clock, SystemClock};
use highwater::merge::{Compression, MergerConfig, collect_garbage, compact_newest};
use highwater::{Error, Result};
use indicatif::ProgressBar;

use crate::inspect::{human, runtime};
use crate::target::open_store;

/// Work at least this large gets a progress bar (smaller work finishes
/// before a bar would be readable).
const BAR_BYTES: u64 = 64 << 20;
const BAR_ARTIFACTS: u64 = 2_000;

fn bar(total: u64, json: bool, bytes: bool) -> ProgressBar {
    let big = if bytes {
        total >= BAR_BYTES
    } else {
        total >= BAR_ARTIFACTS
    };
    crate::progress::bar(total, json || !big, bytes)
}

/// `highwater compact STORE`.
pub fn compact(
    spec: &str,
    namespace: &str,
    json: bool,
    threads: usize,
    zstd_level: Option<i32>,
) -> Result<ExitCode> {
    let store = open_store(spec, namespace, false)?;
    let rt = runtime()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("compact-{i}"))
        .build()
        .map_err(|e| Error::unexpected("start the merge pool", e))?;
    let mut merger = MergerConfig::default();
    merger.compression = match zstd_level {
        Some(level) => Compression::Zstd { level },
        None => Compression::None,
    };
    merger.parallel_threads = threads;
    let progress: Arc<std::sync::Mutex<Option<ProgressBar>>> = Arc::default();
    let report = compact_newest(
        &store,
        rt.handle(),
        &pool,
        &merger,
        SystemClock.now_ms(),
        &|done, total| {
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            let pb = p.get_or_insert_with(|| {
                let pb = bar(total, json, true);
                pb.set_message("merging");
                pb
            });
            pb.set_position(done);
        },
    )?;
    if let Some(pb) = progress.lock().unwrap_or_else(|e| e.into_inner()).take() {
        pb.finish_and_clear();
    }
    if json {
        let out = serde_json::json!({ "dir": spec, "compact": report });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    match report.compacted {
        None => println!(
            "checkpoint {} is already a single full layer; nothing to compact",
            report.source
        ),
        Some(id) => {
            let s = &report.stats;
            println!(
                "compacted checkpoint {} ({} layers) into full checkpoint {id}",
                report.source, report.source_chain_length
            );
            println!(
                "clusters: {} ({} untouched, kept as they were); artifacts: {} read, {} encoded, {} kept",
                s.clusters,
                s.clusters_reused,
                s.artifacts_read,
                s.artifacts_encoded,
                s.artifacts_kept
            );
            println!(
                "records: {} ({} conflicts resolved, {} expired dropped); logical {} -> stored {}; written {}",
                s.records_out,
                s.conflicts,
                s.expired_dropped,
                human(s.logical_bytes_out),
                human(s.stored_bytes_out),
                human(report.bytes_written)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `highwater gc STORE`.
pub fn gc(spec: &str, namespace: &str, json: bool, keep: usize) -> Result<ExitCode> {
    if keep == 0 {
        return Err(Error::InvalidArgument("--keep must be at least 1".into()));
    }
    let store = open_store(spec, namespace, false)?;
    let rt = runtime()?;
    let progress: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);
    let report = rt.block_on(collect_garbage(&*store, keep, None, &|done, total| {
        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
        let pb = p.get_or_insert_with(|| {
            let pb = bar(total, json, false);
            pb.set_message("collecting");
            pb
        });
        pb.set_position(done);
    }))?;
    if let Some(pb) = progress.lock().unwrap_or_else(|e| e.into_inner()).take() {
        pb.finish_and_clear();
    }
    if json {
        let out = serde_json::json!({ "dir": spec, "gc": report });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let ids = |v: &[highwater::CheckpointId]| {
        v.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("retained checkpoints: {}", ids(&report.retained));
    println!(
        "deleted: {} manifest(s) [{}], {} artifact(s)",
        report.manifests_deleted.len(),
        ids(&report.manifests_deleted),
        report.artifacts_deleted
    );
    if !report.unreadable.is_empty() {
        println!(
            "unreadable manifests kept for inspection: {}",
            ids(&report.unreadable)
        );
    }
    Ok(ExitCode::SUCCESS)
}
