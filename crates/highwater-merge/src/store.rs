//! Merging against a checkpoint store: fetch inputs, upload outputs (pinned
//! until committed), and offline compaction of a store's newest chain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use highwater_core::{
    ArtifactId, ArtifactRef, CheckpointId, CheckpointKind, CheckpointStore, DecodeLimits, Error,
    Layer, Manifest, Result, load_manifest,
};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::config::MergerConfig;
use crate::gc::PinGuard;
use crate::io::{Uploader, fetch_all_verified, run_io};
use crate::merge::{MergeOutcome, MergeParams, merge_layers};

/// A merge whose output is stored but not yet in a committed manifest. Its
/// artifacts stay pinned until it is dropped: commit a manifest using
/// `outcome.layer` first.
#[derive(Debug)]
pub struct StoredMerge {
    /// The merged layer and statistics.
    pub outcome: MergeOutcome,
    /// Bytes written to the store (new artifacts only).
    pub bytes_written: u64,
    /// Artifacts that were already stored (unchanged chunks).
    pub artifacts_already_stored: usize,
    /// Pins of the input and output artifacts.
    pub pins: PinGuard,
}

/// Folds `layers` and uploads the new base to `store`.
///
/// Runs the CPU work on the current rayon pool; store requests run on the
/// runtime of `handle` through the artifact I/O layer ([`crate::io`]):
/// inputs are fetched and verified (a damaged stored input is deleted so
/// the next checkpoint rewrites it), outputs go through one bounded
/// [`Uploader`]. Call it from a pool thread or a plain thread, never from
/// an async task. Every input artifact is pinned before it is read and
/// every output artifact before it is queued for upload.
///
/// Gives up once `stop` is set: before it fetches the inputs of the next
/// group of overlapping artifacts and before it uploads the next output,
/// it fails with [`Error::Closed`] if `stop` is set. What it uploaded
/// until then is named by no manifest and unpinned when the error is
/// returned, so the next garbage collection removes it; the chain stays
/// as it was.
pub fn merge_into_store(
    store: &Arc<dyn CheckpointStore>,
    handle: &Handle,
    layers: &[Layer],
    params: &MergeParams,
    pins: PinGuard,
    progress: &(dyn Fn(u64) + Sync),
    stop: &AtomicBool,
) -> Result<StoredMerge> {
    let stopped = || {
        if stop.load(Ordering::Acquire) {
            Err(Error::Closed("the merge was stopped".into()))
        } else {
            Ok(())
        }
    };
    pins.add_all(layers.iter().flat_map(|l| l.artifacts.iter().map(|a| a.id)));
    let checkpoint = layers.last().map_or(CheckpointId(0), |l| l.checkpoint_id);
    let fetch = |refs: &[&ArtifactRef]| -> Result<Vec<Bytes>> {
        stopped()?;
        let ids: Vec<ArtifactId> = refs.iter().map(|r| r.id).collect();
        run_io(handle, fetch_all_verified(store.clone(), checkpoint, ids))
    };
    // Every input is fetched checked against its content address.
    let params = &MergeParams {
        limits: DecodeLimits {
            content_address_checked: true,
            ..params.limits
        },
        ..params.clone()
    };
    let threads = rayon::current_num_threads();
    let uploader = Uploader::start(handle, store.clone(), threads * 2, threads * 2);
    let sink = |p: crate::encode::Produced| -> Result<()> {
        stopped()?;
        uploader.send(p, &pins)
    };
    let merged = merge_layers(layers, params, &fetch, &sink, progress);
    let (outcome, totals) = uploader.finish(merged)?;
    Ok(StoredMerge {
        outcome,
        bytes_written: totals.bytes_written,
        artifacts_already_stored: totals.already_present,
        pins,
    })
}

/// What [`compact_newest`] did.
#[derive(Debug, Clone, Serialize)]
pub struct CompactReport {
    /// The checkpoint whose chain was merged.
    pub source: CheckpointId,
    /// Layers of its chain.
    pub source_chain_length: usize,
    /// The new full checkpoint, or `None` when the newest checkpoint was
    /// already a single full layer (nothing to do).
    pub compacted: Option<CheckpointId>,
    /// Merge statistics (default when nothing was done).
    pub stats: crate::merge::MergeStats,
    /// Bytes written to the store.
    pub bytes_written: u64,
}

/// Merges the chain of the newest readable checkpoint of `store` and
/// commits the result as a new full checkpoint (next id, same write-ahead
/// log position, parallelism and properties, plus `compacted_from`).
///
/// Waits for store requests on `handle`'s runtime; call it from a plain
/// thread. The work runs on
/// `pool`. One writer per store: do not run it while a job checkpoints into
/// the same store (its new id could collide; the commit would then fail
/// with `AlreadyExists` and nothing is lost, the next GC removes the
/// uploaded artifacts).
pub fn compact_newest(
    store: &Arc<dyn CheckpointStore>,
    handle: &Handle,
    pool: &rayon::ThreadPool,
    merger: &MergerConfig,
    now_ms: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<CompactReport> {
    merger.validate()?;
    let newest = {
        let store = store.clone();
        run_io(handle, async move {
            let mut ids = store.list_manifests().await?;
            ids.sort_unstable_by(|a, b| b.cmp(a));
            for id in ids {
                match load_manifest(&*store, id).await {
                    Ok(m) => return Ok(Some(m)),
                    Err(e) if e.is_corruption() => {
                        tracing::warn!(checkpoint = %id, error = %e, "skipping an unreadable manifest");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, Error>(None)
        })?
    };
    let Some(m) = newest else {
        return Err(Error::NotFound("no readable checkpoint to compact".into()));
    };
    if m.layers.len() == 1 {
        return Ok(CompactReport {
            source: m.checkpoint_id,
            source_chain_length: 1,
            compacted: None,
            stats: Default::default(),
            bytes_written: 0,
        });
    }
    let total: u64 = m.artifacts().map(|a| a.logical_bytes).sum();
    let done = std::sync::atomic::AtomicU64::new(0);
    let params = MergeParams {
        merger: merger.clone(),
        now_ms,
        limits: DecodeLimits::default(),
    };
    // Nothing else runs against the store here, so the pins only document
    // the protocol; they are released when the manifest is committed.
    let pins = crate::gc::Pins::new();
    let stored = pool.install(|| {
        merge_into_store(
            store,
            handle,
            &m.layers,
            &params,
            pins.guard(),
            &|n| {
                let d = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                progress(d, total);
            },
            &AtomicBool::new(false),
        )
    })?;
    let id = m.checkpoint_id.next()?;
    let mut properties = m.properties.clone();
    // The source's run record describes its checkpoint, not this merge.
    crate::recorded::RunRecord::strip(&mut properties);
    properties.insert("compacted_from".into(), m.checkpoint_id.to_string());
    let mut layer = stored.outcome.layer.clone();
    layer.checkpoint_id = id;
    let manifest = Manifest {
        checkpoint_id: id,
        parent: Some(m.checkpoint_id),
        kind: CheckpointKind::Full,
        created_at_ms: now_ms,
        wal_position: m.wal_position,
        max_parallelism: m.max_parallelism,
        layers: vec![layer],
        properties,
        schemas: m.schemas.clone(),
    };
    manifest.validate()?;
    let bytes = Bytes::from(manifest.encode()?);
    {
        let store = store.clone();
        run_io(
            handle,
            async move { store.commit_manifest(id, bytes).await },
        )?;
    }
    drop(stored.pins);
    Ok(CompactReport {
        source: m.checkpoint_id,
        source_chain_length: m.layers.len(),
        compacted: Some(id),
        stats: stored.outcome.stats,
        bytes_written: stored.bytes_written,
    })
}
