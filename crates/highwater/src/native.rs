//! Native checkpoints: a backend's own files (RocksDB's SST, MANIFEST,
//! OPTIONS and CURRENT files) uploaded as content-addressed artifacts and
//! restored by opening them, instead of encoding and replaying entries.
//!
//! A native checkpoint's manifest is a full checkpoint with one
//! [`LayerKind::Native`] layer naming every file. SST files are immutable,
//! so consecutive checkpoints share most of them: a file whose content
//! address is already stored is not uploaded again, and retention's
//! reference counting keeps it while any retained manifest names it. What a
//! checkpoint uploads is therefore the SST files written since the previous
//! one: the flushed memtable, plus whatever compaction rewrote.
//!
//! The [`StateManager`](crate::StateManager) takes a native checkpoint when
//! its backend offers one ([`StateBackend::native_snapshot`]) and restores
//! a native manifest through [`StateBackend::restore_native`]. A rescaling
//! restore calls [`restore_native`] with the key-group range the subtask
//! owns.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use highwater_core::{
    ArtifactId, ArtifactRef, CheckpointId, CheckpointKind, CheckpointStore, Codec, Error,
    KeyGroupRange, Layer, LayerKind, Manifest, NativeCheckpoint, PutOutcome, Result, StateBackend,
    StateSnapshot,
};
use tokio::runtime::Handle;

use crate::config::CheckpointConfig;
use crate::manager::{CheckpointInfo, RestoreInfo};
use crate::retention::apply_retention;

/// Native files are large (RocksDB writes SST files of up to 64 MiB), so at
/// most this many are held in memory at once during an upload or a fetch.
const MAX_FILES_IN_FLIGHT: usize = 4;

/// What uploading a native checkpoint's files did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NativeUpload {
    /// One reference per file, in file-name order.
    pub artifacts: Vec<ArtifactRef>,
    /// Files whose content was already stored (not uploaded again).
    pub reused: usize,
    /// Bytes uploaded.
    pub bytes_written: u64,
    /// Bytes of all the checkpoint's files.
    pub total_bytes: u64,
}

/// Uploads the files of `native` to `store`, skipping files already stored,
/// at most [`MAX_FILES_IN_FLIGHT`] at a time. Blocks the calling thread,
/// which must not be a thread of `handle`'s runtime.
pub fn upload_native(
    handle: &Handle,
    store: &Arc<dyn CheckpointStore>,
    native: &NativeCheckpoint,
    max_parallelism: u16,
    concurrency: usize,
) -> Result<NativeUpload> {
    let concurrency = concurrency.clamp(1, MAX_FILES_IN_FLIGHT);
    let mut out = NativeUpload::default();
    let mut in_flight = VecDeque::new();
    let account = |r: std::result::Result<Result<(PutOutcome, u64)>, tokio::task::JoinError>,
                   out: &mut NativeUpload| {
        match r.map_err(|e| Error::Internal(format!("native upload task failed: {e}")))?? {
            (PutOutcome::Written, n) => out.bytes_written += n,
            (PutOutcome::AlreadyPresent, _) => out.reused += 1,
        }
        Ok::<_, Error>(())
    };
    for file in &native.files {
        let path = native.dir.join(&file.name);
        let bytes = Bytes::from(
            std::fs::read(&path)
                .map_err(|e| Error::io(format!("read native file {}", path.display()), e))?,
        );
        let id = ArtifactId::of(&bytes);
        let len = bytes.len() as u64;
        out.total_bytes += len;
        out.artifacts.push(ArtifactRef {
            operator: file.name.clone(),
            key_groups: KeyGroupRange::all(max_parallelism),
            id,
            entries: file.entries,
            logical_bytes: len,
            stored_bytes: len,
            codec: Codec::Raw,
        });
        while in_flight.len() >= concurrency {
            if let Some(h) = in_flight.pop_front() {
                account(handle.block_on(h), &mut out)?;
            }
        }
        let store = store.clone();
        in_flight.push_back(handle.spawn(async move {
            if store.has_artifact(id).await? {
                return Ok((PutOutcome::AlreadyPresent, len));
            }
            Ok((store.put_artifact(id, bytes).await?, len))
        }));
    }
    while let Some(h) = in_flight.pop_front() {
        account(handle.block_on(h), &mut out)?;
    }
    Ok(out)
}

/// Everything [`run_checkpoint`] needs from the manager.
pub(crate) struct NativeJob<'a> {
    pub(crate) handle: &'a Handle,
    pub(crate) store: &'a Arc<dyn CheckpointStore>,
    pub(crate) config: &'a CheckpointConfig,
    pub(crate) properties: &'a BTreeMap<String, String>,
    pub(crate) id: CheckpointId,
    pub(crate) created_at_ms: u64,
    pub(crate) wal_position: Option<u64>,
    pub(crate) started: Instant,
    pub(crate) snapshot_pause: Duration,
}

/// Uploads a native snapshot's files, commits a full manifest naming them
/// and applies retention. Runs on the checkpoint worker thread.
pub(crate) fn run_checkpoint(
    job: NativeJob<'_>,
    snapshot: Arc<dyn StateSnapshot>,
) -> Result<(Arc<Manifest>, CheckpointInfo)> {
    let native = snapshot.native().ok_or_else(|| {
        Error::Internal("native checkpoint of a snapshot without native files".into())
    })?;
    let upload = upload_native(
        job.handle,
        job.store,
        native,
        job.config.max_parallelism,
        job.config.io_concurrency,
    )?;
    // The hard links go as soon as the files are stored.
    drop(snapshot);
    let manifest = Manifest {
        checkpoint_id: job.id,
        parent: None,
        kind: CheckpointKind::Full,
        created_at_ms: job.created_at_ms,
        wal_position: job.wal_position,
        max_parallelism: job.config.max_parallelism,
        layers: vec![Layer {
            checkpoint_id: job.id,
            kind: LayerKind::Native,
            artifacts: upload.artifacts.clone(),
        }],
        properties: job.properties.clone(),
    };
    manifest.validate()?;
    let encoded = Bytes::from(manifest.encode()?);
    let store = job.store.clone();
    let keep = job.config.max_retained;
    let id = job.id;
    let retention = job.handle.block_on(async move {
        store.commit_manifest(id, encoded).await?;
        // After the commit, so the files this checkpoint reuses are
        // referenced before retention counts references.
        Ok::<_, Error>(match apply_retention(&*store, keep).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(checkpoint = %id, error = %e, "retention failed after a committed checkpoint");
                None
            }
        })
    })?;
    let info = CheckpointInfo {
        id,
        kind: CheckpointKind::Full,
        chain_length: 1,
        entries: upload.artifacts.iter().map(|a| a.entries).sum(),
        expired_dropped: 0,
        logical_bytes: upload.total_bytes,
        encoded_bytes: upload.total_bytes,
        bytes_written: upload.bytes_written,
        artifacts: upload.artifacts.len(),
        artifacts_reused: upload.reused,
        snapshot_pause: job.snapshot_pause,
        duration: job.started.elapsed(),
        retention,
        merged_base: None,
    };
    tracing::debug!(
        checkpoint = %id,
        files = info.artifacts,
        reused = info.artifacts_reused,
        bytes_written = info.bytes_written,
        total_bytes = upload.total_bytes,
        "native checkpoint committed"
    );
    Ok((Arc::new(manifest), info))
}

/// Fetches the files of a native manifest in order, a few ahead, each
/// checked against its content address and length.
struct Fetcher<'a> {
    handle: &'a Handle,
    store: &'a Arc<dyn CheckpointStore>,
    checkpoint: CheckpointId,
    refs: std::slice::Iter<'a, ArtifactRef>,
    window: VecDeque<(&'a ArtifactRef, tokio::task::JoinHandle<Result<Bytes>>)>,
    concurrency: usize,
    bytes: u64,
    failed: bool,
}

impl Fetcher<'_> {
    fn fill(&mut self) {
        while self.window.len() < self.concurrency {
            let Some(r) = self.refs.next() else { break };
            let store = self.store.clone();
            let id = r.id;
            let checkpoint = self.checkpoint;
            let h = self.handle.spawn(async move {
                store.get_artifact(id).await.map_err(|e| match e {
                    Error::NotFound(_) => Error::NotFound(format!(
                        "native file of checkpoint {checkpoint}: artifact={id}"
                    )),
                    other => other,
                })
            });
            self.window.push_back((r, h));
        }
    }

    fn next_file(&mut self) -> Option<Result<(String, Bytes)>> {
        if self.failed {
            return None;
        }
        self.fill();
        let (r, h) = self.window.pop_front()?;
        // The join handle is awaited from this (non-runtime) thread through
        // a channel, like StateManager::run_io, so a caller inside another
        // runtime does not nest runtimes.
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.handle.spawn(async move {
            let _ = tx.send(h.await);
        });
        let got = rx
            .recv()
            .map_err(|_| Error::Closed("the i/o runtime stopped".into()))
            .and_then(|r| r.map_err(|e| Error::Internal(format!("native fetch task failed: {e}"))))
            .and_then(|r| r);
        let checked = got.and_then(|bytes| {
            if bytes.len() as u64 != r.stored_bytes || ArtifactId::of(&bytes) != r.id {
                return Err(Error::corrupt(
                    "artifact",
                    format!(
                        "native file does not match its reference: checkpoint={} file={} artifact={} len={} expected_len={}",
                        self.checkpoint,
                        r.operator,
                        r.id,
                        bytes.len(),
                        r.stored_bytes
                    ),
                ));
            }
            self.bytes += bytes.len() as u64;
            Ok((r.operator.clone(), bytes))
        });
        if checked.is_err() {
            self.failed = true;
            for (_, h) in self.window.drain(..) {
                h.abort();
            }
        }
        Some(checked)
    }
}

impl Iterator for Fetcher<'_> {
    type Item = Result<(String, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_file()
    }
}

/// What [`restore_native`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeRestore {
    /// Files fetched.
    pub files: usize,
    /// Bytes fetched.
    pub bytes: u64,
    /// Entries in the restored SST files, as RocksDB counted them when it
    /// wrote them (overwritten and deleted keys included until compaction).
    pub entries: u64,
}

/// Restores the native checkpoint `manifest` into `backend`, keeping only
/// the key groups in `keep` (all when `None`; a narrower range is a
/// rescaling restore: the backend opens every file and deletes the ranges
/// it does not own). Blocks the calling thread, which must not be a thread
/// of `handle`'s runtime.
pub fn restore_native(
    handle: &Handle,
    store: &Arc<dyn CheckpointStore>,
    backend: &dyn StateBackend,
    manifest: &Manifest,
    keep: Option<KeyGroupRange>,
    concurrency: usize,
) -> Result<NativeRestore> {
    if !manifest.is_native() {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {} is not a native checkpoint",
            manifest.checkpoint_id
        )));
    }
    if let Some(k) = keep
        && (k.start > k.end || k.end > manifest.max_parallelism)
    {
        return Err(Error::InvalidArgument(format!(
            "key groups to keep out of range: range={k} max_parallelism={}",
            manifest.max_parallelism
        )));
    }
    let refs = manifest.own_artifacts();
    let mut fetcher = Fetcher {
        handle,
        store,
        checkpoint: manifest.checkpoint_id,
        refs: refs.iter(),
        window: VecDeque::new(),
        concurrency: concurrency.clamp(1, MAX_FILES_IN_FLIGHT),
        bytes: 0,
        failed: false,
    };
    backend.restore_native(&mut fetcher, keep)?;
    Ok(NativeRestore {
        files: refs.len(),
        bytes: fetcher.bytes,
        entries: refs.iter().map(|a| a.entries).sum(),
    })
}

/// The manager's restore of a native manifest (all key groups).
pub(crate) fn restore_for_manager(
    handle: &Handle,
    store: &Arc<dyn CheckpointStore>,
    backend: &dyn StateBackend,
    manifest: &Manifest,
    concurrency: usize,
    started: Instant,
) -> Result<RestoreInfo> {
    let r = restore_native(handle, store, backend, manifest, None, concurrency)?;
    let mut stats = highwater_recovery::RecoveryStats::default();
    stats.checkpoint = Some(manifest.checkpoint_id);
    stats.chain_length = 1;
    stats.artifacts_fetched = manifest.artifacts().count();
    stats.bytes_fetched = r.bytes;
    stats.entries_loaded = r.entries;
    stats.wal_position = manifest.wal_position;
    stats.fetch_duration = started.elapsed();
    stats.duration = started.elapsed();
    Ok(RestoreInfo {
        checkpoint_id: manifest.checkpoint_id,
        chain_length: 1,
        entries: r.entries,
        bytes_fetched: r.bytes,
        fallbacks: Vec::new(),
        wal_records_replayed: 0,
        wal_position: manifest.wal_position,
        duration: started.elapsed(),
        fork_checkpoint: None,
        stats,
    })
}
