//! `highwater inspect` and `highwater verify`, and the inventory of a
//! store's checkpoints that `inspect` prints and `report` draws.

use std::process::ExitCode;

use highwater::core::Manifest;
use highwater::merge::StoreSummary;
use highwater::merge::recorded::RunRecord;
use highwater::{Error, Result};
use serde::Serialize;

use crate::global::{self, LedgerArgs};
use crate::target::open_store;

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start a runtime", e))
}

/// One checkpoint row of `inspect` (and of `report`'s table and charts).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Row {
    pub id: u64,
    pub kind: Option<String>,
    pub parent: Option<u64>,
    pub created_at_ms: Option<u64>,
    pub created_at: Option<String>,
    pub chain_length: Option<usize>,
    pub logical_bytes: Option<u64>,
    /// Stored bytes of the whole chain (what a restore reads).
    pub stored_bytes: Option<u64>,
    /// Stored bytes of the checkpoint's own layer (its incremental size).
    pub own_stored_bytes: Option<u64>,
    pub compression_ratio: Option<f64>,
    pub artifacts: Option<usize>,
    pub own_artifacts: Option<usize>,
    /// The checkpoint whose full layer the chain starts with.
    pub base: Option<u64>,
    /// Deltas on top of the base.
    pub depth: Option<usize>,
    /// Distinct artifacts also referenced by another checkpoint.
    pub shared_artifacts: Option<usize>,
    /// Stored bytes saved inside this checkpoint by content addressing
    /// (identical chunks of several operators or layers stored once).
    pub dedup_saved_bytes: Option<u64>,
    /// The checkpoint holds the backend's own files (RocksDB SST files).
    pub native: Option<bool>,
    /// The write-ahead-log position the checkpoint covers.
    pub wal_position: Option<u64>,
    /// Trigger to artifacts stored, in ms, when the manifest records it
    /// (highwater::merge::recorded).
    pub duration_ms: Option<f64>,
    /// The snapshot pause in ms, when recorded.
    pub snapshot_pause_ms: Option<f64>,
    /// Bytes the checkpoint uploaded, when recorded.
    pub bytes_written: Option<u64>,
    /// The zstd level of the checkpoint's own artifacts, when recorded
    /// (none for raw or native ones).
    pub zstd_level: Option<i32>,
    /// The manifest could not be read or decoded.
    pub error: Option<String>,
}

impl Row {
    fn from_manifest(m: &Manifest) -> Row {
        let logical = m.logical_bytes();
        let stored = m.stored_bytes();
        let run = RunRecord::of(m);
        Row {
            id: m.checkpoint_id.0,
            kind: Some(m.kind.to_string()),
            parent: m.parent.map(|p| p.0),
            created_at_ms: Some(m.created_at_ms),
            created_at: Some(format_utc(m.created_at_ms)),
            chain_length: Some(m.chain_length()),
            logical_bytes: Some(logical),
            stored_bytes: Some(stored),
            own_stored_bytes: Some(m.own_artifacts().iter().map(|a| a.stored_bytes).sum()),
            compression_ratio: (stored > 0).then(|| logical as f64 / stored as f64),
            artifacts: Some(m.artifacts().count()),
            own_artifacts: Some(m.own_artifacts().len()),
            base: None,
            depth: None,
            shared_artifacts: None,
            dedup_saved_bytes: None,
            native: Some(m.is_native()),
            wal_position: m.wal_position,
            duration_ms: run.map(|r| r.duration.as_secs_f64() * 1e3),
            snapshot_pause_ms: run.map(|r| r.snapshot_pause.as_secs_f64() * 1e3),
            bytes_written: run.map(|r| r.bytes_written),
            zstd_level: run.and_then(|r| r.zstd_level),
            error: None,
        }
    }
}

/// Every checkpoint of a store: one row each (readable or not), the
/// readable manifests, and the chains and sharing across them.
pub(crate) struct Inventory {
    pub rows: Vec<Row>,
    pub manifests: Vec<Manifest>,
    pub summary: StoreSummary,
}

/// Reads every manifest of `store` into an [`Inventory`].
pub(crate) async fn inventory(store: &dyn highwater::CheckpointStore) -> Result<Inventory> {
    let mut rows = Vec::new();
    let mut manifests = Vec::new();
    for id in store.list_manifests().await? {
        let row = match store
            .get_manifest(id)
            .await
            .and_then(|b| Manifest::decode(&b))
        {
            Ok(m) => {
                let row = Row::from_manifest(&m);
                manifests.push(m);
                row
            }
            Err(e) => Row {
                id: id.0,
                error: Some(e.to_string()),
                ..Row::default()
            },
        };
        rows.push(row);
    }
    // Chains and sharing across every readable checkpoint.
    let summary = highwater::merge::summarize(&manifests);
    for c in &summary.chains {
        if let Some(r) = rows.iter_mut().find(|r| r.id == c.checkpoint.0) {
            r.base = Some(c.base.0);
            r.depth = Some(c.depth);
            r.shared_artifacts = Some(c.shared_artifacts);
            r.dedup_saved_bytes = Some(c.dedup_saved_bytes);
        }
    }
    Ok(Inventory {
        rows,
        manifests,
        summary,
    })
}

/// Formats ms since the epoch as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
pub(crate) fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60,
        ms % 1000
    )
}

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn inspect(spec: &str, namespace: &str, json: bool, ledger: &LedgerArgs) -> Result<ExitCode> {
    let store = open_store(spec, namespace, false)?;
    let rt = runtime()?;
    let Inventory { rows, summary, .. } = rt.block_on(inventory(&*store))?;
    // A cluster job's store: its participants' scopes and global
    // checkpoints, next to the store's own checkpoints.
    let cluster = global::cluster(spec, &store, &rt, ledger)?;
    let totals = serde_json::json!({
        "distinct_artifacts": summary.distinct_artifacts,
        "referenced_bytes": summary.referenced_bytes,
        "stored_bytes": summary.stored_bytes,
        "dedup_saved_bytes": summary.dedup_saved_bytes,
    });
    if json {
        let mut out = serde_json::json!({ "dir": spec, "checkpoints": rows, "storage": totals });
        if let Some(c) = &cluster {
            out["participants"] = serde_json::json!(c.participants);
            out["global_checkpoints"] = serde_json::json!(c.global);
            out["ledger"] = serde_json::json!(c.found.ledger.as_ref().map(|l| &l.source));
            out["ledger_notes"] = serde_json::json!(c.found.notes);
        }
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    println!("checkpoints in {spec}: {}", rows.len());
    println!(
        "{:>6}  {:<11}  {:>6}  {:<27}  {:>5}  {:>10}  {:>10}  {:>6}  {:<16}  {:>5}  {:>5}  {:>6}  {:>10}  {:>9}  {:>4}",
        "id",
        "kind",
        "parent",
        "created at",
        "chain",
        "logical",
        "stored",
        "ratio",
        "artifacts",
        "base",
        "depth",
        "shared",
        "dedup",
        "took",
        "zstd",
    );
    for r in &rows {
        if let Some(e) = &r.error {
            println!("{:>6}  UNREADABLE: {e}", r.id);
            continue;
        }
        println!(
            "{:>6}  {:<11}  {:>6}  {:<27}  {:>5}  {:>10}  {:>10}  {:>6}  {:<16}  {:>5}  {:>5}  {:>6}  {:>10}  {:>9}  {:>4}",
            r.id,
            r.kind.as_deref().unwrap_or("?"),
            r.parent
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            r.created_at.as_deref().unwrap_or("?"),
            r.chain_length.unwrap_or(0),
            human(r.logical_bytes.unwrap_or(0)),
            human(r.stored_bytes.unwrap_or(0)),
            r.compression_ratio
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            format!(
                "{} ({} own)",
                r.artifacts.unwrap_or(0),
                r.own_artifacts.unwrap_or(0)
            ),
            r.base.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            r.depth.unwrap_or(0),
            r.shared_artifacts.unwrap_or(0),
            human(r.dedup_saved_bytes.unwrap_or(0)),
            r.duration_ms
                .map(|d| format!("{d:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            r.zstd_level
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    println!(
        "storage: {} distinct artifacts, {} stored for {} referenced (dedup saves {})",
        summary.distinct_artifacts,
        human(summary.stored_bytes),
        human(summary.referenced_bytes),
        human(summary.dedup_saved_bytes)
    );
    if let Some(c) = &cluster {
        global::print(c);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(spec: &str, namespace: &str, json: bool, ledger: &LedgerArgs) -> Result<ExitCode> {
    let store = open_store(spec, namespace, false)?;
    let rt = runtime()?;
    let results = rt.block_on(highwater::verify_store(&*store))?;
    // Every globally completed checkpoint the job's ledger still knows.
    let found = global::find_ledger(spec, &store, &rt, ledger)?;
    let global = match &found.ledger {
        Some(l) => global::verify(&store, &rt, l)?,
        None => Vec::new(),
    };
    let mut bad: Vec<_> = results
        .iter()
        .flat_map(|r| r.problems.iter().map(|p| p.message.clone()))
        .collect();
    for g in global.iter().filter(|g| g.failed()) {
        bad.extend(
            g.problems
                .iter()
                .map(|p| format!("global checkpoint {}: {p}", g.checkpoint)),
        );
    }
    if found.ledger.is_none() && !found.notes.is_empty() {
        // The job has a ledger, but none of it could be read: its global
        // checkpoints cannot be checked.
        bad.extend(
            found
                .notes
                .iter()
                .map(|n| format!("no ledger could be read: {n}")),
        );
    }
    if json {
        let out = serde_json::json!({
            "dir": spec,
            "sound": bad.is_empty(),
            "checkpoints": results,
            "global_checkpoints": global,
            "ledger": found.ledger.as_ref().map(|l| &l.source),
            "ledger_notes": found.notes,
            "problems": bad,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for r in &results {
            if r.is_sound() {
                println!(
                    "checkpoint {}: ok ({} artifacts, {} records)",
                    r.checkpoint, r.artifacts_checked, r.records_checked
                );
            }
            for p in &r.problems {
                match &p.artifact {
                    Some(a) => println!(
                        "checkpoint {}: BAD artifact {a}: {}",
                        p.checkpoint, p.message
                    ),
                    None => println!("checkpoint {}: BAD {}", p.checkpoint, p.message),
                }
            }
        }
        if let Some(l) = &found.ledger {
            println!(
                "ledger: {} {}{}",
                l.source.kind,
                l.source.location,
                l.source
                    .applied_index
                    .map(|i| format!(" (log index {i})"))
                    .unwrap_or_default()
            );
        }
        for n in &found.notes {
            println!("ledger note: {n}");
        }
        for g in &global {
            let newest = if g.newest { " (newest)" } else { "" };
            match g.state {
                "restorable" => {
                    println!("global checkpoint {}: ok ({} parts)", g.checkpoint, g.parts)
                }
                "retired" => println!(
                    "global checkpoint {}: retired ({} of {} parts kept)",
                    g.checkpoint, g.sound_parts, g.parts
                ),
                _ => {
                    for p in &g.problems {
                        println!("global checkpoint {}{newest}: BAD {p}", g.checkpoint);
                    }
                }
            }
        }
        if found.ledger.is_none() {
            for n in &found.notes {
                println!("BAD no ledger could be read: {n}");
            }
        }
        if bad.is_empty() && !global.is_empty() {
            println!(
                "all {} checkpoints and every kept global checkpoint sound",
                results.len()
            );
        } else if bad.is_empty() {
            println!("all {} checkpoints sound", results.len());
        } else {
            println!(
                "{} problem(s) in {} checkpoint(s) and {} global checkpoint(s)",
                bad.len(),
                results.iter().filter(|r| !r.is_sound()).count(),
                global.iter().filter(|g| g.failed()).count()
            );
        }
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(format_utc(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(format_utc(1_795_000_000_000), "2026-11-18 11:06:40.000 UTC");
    }
}
