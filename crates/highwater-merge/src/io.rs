//! The artifact I/O layer: the one way artifacts go into and come out of a
//! [`CheckpointStore`], shared by the checkpointer (encoded and native
//! producers), the merger and the recovery engine.
//!
//! - **Upload** ([`Uploader`]): producers hand over finished artifacts
//!   through a bounded queue; each is pinned ([`PinGuard`]) before it is
//!   queued, so retention running meanwhile cannot delete it before a
//!   manifest references it, and uploaded with the store's create-only
//!   `put_artifact` (which skips what is already stored). One
//!   [`UploadTotals`] counts written and already-present artifacts.
//! - **Fetch** ([`fetch_verified`]): a fetched artifact is checked against
//!   its content address; a mismatch is read again, and a stored copy that
//!   is itself damaged is deleted so the next checkpoint holding the data
//!   writes it again (encoded chunks and native files alike);
//!   [`fetch_all_verified`] fetches several at once (a merge reads the
//!   inputs of one cluster together).
//! - [`run_io`] waits for a future on the I/O runtime from a plain or pool
//!   thread without entering a runtime there.

use std::sync::Arc;

use bytes::Bytes;
use highwater_core::{ArtifactId, CheckpointId, CheckpointStore, Error, PutOutcome, Result};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::encode::Produced;
use crate::gc::PinGuard;

/// The most bytes of native files (a backend's own files, e.g. RocksDB's
/// SST files of up to 64 MiB) a checkpoint holds in memory between reading
/// them and the end of their upload, and a restore holds fetched ahead of
/// the backend installing them: a bound on what a checkpoint or a restore
/// adds to the process's memory, whatever the files' sizes (a file larger
/// than this is read or fetched alone).
pub const NATIVE_BYTES_IN_FLIGHT: u32 = 192 << 20;

/// Runs `fut` on the runtime of `handle` and waits for it on the calling
/// thread, which may be any thread that is not blocking inside an async
/// task: the caller's own runtime, a rayon pool or a plain thread. (Unlike
/// `Handle::block_on`, it never drives a runtime from the caller's thread.)
pub fn run_io<T: Send + 'static>(
    handle: &Handle,
    fut: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| Error::Closed("the i/o runtime stopped".into()))?
}

/// What an upload did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadTotals {
    /// Artifacts written.
    pub written: usize,
    /// Artifacts the store already held (not written again).
    pub already_present: usize,
    /// Bytes written.
    pub bytes_written: u64,
}

impl UploadTotals {
    fn account(&mut self, outcome: PutOutcome, bytes: u64) {
        match outcome {
            PutOutcome::Written => {
                self.written += 1;
                self.bytes_written += bytes;
            }
            PutOutcome::AlreadyPresent => self.already_present += 1,
        }
    }
}

/// Uploads artifacts as producers hand them over: at most `queue` wait in
/// memory and `concurrency` are in flight, and, when started with
/// [`Uploader::with_bytes_in_flight`], producers that
/// [`reserve`](Uploader::reserve) before reading hold at most that many
/// bytes between the read and the end of the upload.
#[derive(Debug)]
pub struct Uploader {
    tx: mpsc::Sender<(Produced, Option<Reservation>)>,
    done: crossbeam_channel::Receiver<Result<UploadTotals>>,
    handle: Handle,
    bytes: Option<(Arc<Semaphore>, u32)>,
}

/// Room for one artifact's bytes in an [`Uploader`]'s byte budget, held
/// from before the artifact is read until its upload ends (or fails).
#[derive(Debug)]
pub struct Reservation {
    _bytes: OwnedSemaphorePermit,
}

impl Uploader {
    /// Starts the upload driver on the runtime of `handle`.
    pub fn start(
        handle: &Handle,
        store: Arc<dyn CheckpointStore>,
        queue: usize,
        concurrency: usize,
    ) -> Uploader {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        handle.spawn(async move {
            let _ = done_tx.send(upload_all(store, rx, concurrency.max(1)).await);
        });
        Uploader {
            tx,
            done,
            handle: handle.clone(),
            bytes: None,
        }
    }

    /// Bounds the bytes of reserved artifacts ([`Uploader::reserve`]) from
    /// their read to the end of their upload by `budget` (a larger
    /// artifact waits until it is alone).
    pub fn with_bytes_in_flight(mut self, budget: u32) -> Uploader {
        let budget = budget.max(1);
        self.bytes = Some((Arc::new(Semaphore::new(budget as usize)), budget));
        self
    }

    /// Waits for room for `len` bytes in the byte budget (none set: at
    /// once). Call it from a plain or pool thread before reading an
    /// artifact's bytes, and hand the reservation to
    /// [`send_reserved`](Uploader::send_reserved).
    pub fn reserve(&self, len: u64) -> Result<Option<Reservation>> {
        let Some((budget, max)) = &self.bytes else {
            return Ok(None);
        };
        let need = u32::try_from(len).unwrap_or(u32::MAX).clamp(1, *max);
        let budget = budget.clone();
        run_io(&self.handle, async move {
            budget
                .acquire_many_owned(need)
                .await
                .map(|p| Some(Reservation { _bytes: p }))
                .map_err(|_| Error::Closed("the uploader stopped".into()))
        })
    }

    /// Pins `artifact` with `pins` and queues it, waiting while the queue
    /// is full. Call it from a plain or pool thread, not an async task.
    pub fn send(&self, artifact: Produced, pins: &PinGuard) -> Result<()> {
        self.send_reserved(artifact, None, pins)
    }

    /// [`send`](Uploader::send) with the artifact's [`Reservation`], given
    /// back when its upload ends.
    pub fn send_reserved(
        &self,
        artifact: Produced,
        reservation: Option<Reservation>,
        pins: &PinGuard,
    ) -> Result<()> {
        pins.add(artifact.reference.id);
        self.tx
            .blocking_send((artifact, reservation))
            .map_err(|_| Error::Closed("the uploader stopped".into()))
    }

    /// Waits until everything queued is stored. `produced` is the
    /// producers' outcome: an upload error is reported before it, since a
    /// failed upload is what makes a producer fail with "the uploader
    /// stopped".
    pub fn finish<T>(self, produced: Result<T>) -> Result<(T, UploadTotals)> {
        drop(self.tx);
        let uploaded = self
            .done
            .recv()
            .map_err(|_| Error::Closed("the i/o runtime stopped".into()))?;
        let totals = uploaded?;
        Ok((produced?, totals))
    }
}

async fn upload_all(
    store: Arc<dyn CheckpointStore>,
    mut rx: mpsc::Receiver<(Produced, Option<Reservation>)>,
    concurrency: usize,
) -> Result<UploadTotals> {
    let mut set = JoinSet::new();
    let mut totals = UploadTotals::default();
    let joined = |r: std::result::Result<Result<(PutOutcome, u64)>, tokio::task::JoinError>| {
        r.map_err(|e| Error::unexpected("an upload task", e))?
    };
    // An early return drops the queue and aborts the uploads in flight,
    // which gives their reservations back: a producer waiting in
    // `reserve` then finds the queue closed.
    while let Some((p, reservation)) = rx.recv().await {
        while set.len() >= concurrency {
            if let Some(r) = set.join_next().await {
                let (outcome, n) = joined(r)?;
                totals.account(outcome, n);
            }
        }
        let store = store.clone();
        set.spawn(async move {
            let n = p.bytes.len() as u64;
            let outcome = store.put_artifact(p.reference.id, p.bytes).await?;
            drop(reservation);
            Ok((outcome, n))
        });
    }
    while let Some(r) = set.join_next().await {
        let (outcome, n) = joined(r)?;
        totals.account(outcome, n);
    }
    Ok(totals)
}

/// Fetches artifact `id` of `checkpoint` and, when `verify`, checks it
/// against its content address: a mismatch is read again (a damaged
/// transfer is not damaged storage), and a stored copy that is itself
/// damaged is deleted so the next checkpoint holding the data writes it
/// again. A missing artifact is `NotFound` naming the checkpoint.
pub async fn fetch_verified(
    store: Arc<dyn CheckpointStore>,
    checkpoint: CheckpointId,
    id: ArtifactId,
    verify: bool,
) -> Result<(ArtifactId, Bytes)> {
    let get = async || {
        store.get_artifact(id).await.map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "artifact of checkpoint {checkpoint}: artifact={id}"
            )),
            other => other,
        })
    };
    let bytes = get().await?;
    if !verify || ArtifactId::of(&bytes) == id {
        return Ok((id, bytes));
    }
    if ArtifactId::of(&get().await?) != id {
        tracing::warn!(checkpoint = %checkpoint, artifact = %id, "deleting a corrupt artifact so the next checkpoint rewrites it");
        store.delete_artifact(id).await?;
    }
    Err(Error::corrupt(
        "artifact",
        format!("content does not match its id (xxh3-128): checkpoint={checkpoint} artifact={id}"),
    ))
}

/// Fetches and verifies ([`fetch_verified`]) every artifact of `ids`
/// concurrently; their bytes in the order of `ids`, or the first error in
/// that order.
pub async fn fetch_all_verified(
    store: Arc<dyn CheckpointStore>,
    checkpoint: CheckpointId,
    ids: Vec<ArtifactId>,
) -> Result<Vec<Bytes>> {
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| tokio::spawn(fetch_verified(store.clone(), checkpoint, id, true)))
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (_, bytes) = task
            .await
            .map_err(|e| Error::unexpected("an artifact fetch task", e))??;
        out.push(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use highwater_core::{ArtifactRef, Codec, KeyGroupRange};

    use super::*;
    use crate::gc::Pins;

    fn produced(fill: u8, len: usize) -> Produced {
        let bytes = Bytes::from(vec![fill; len]);
        Produced {
            reference: ArtifactRef {
                operator: format!("{fill}.sst"),
                key_groups: KeyGroupRange::all(128),
                id: ArtifactId::of(&bytes),
                entries: 0,
                logical_bytes: len as u64,
                stored_bytes: len as u64,
                codec: Codec::Raw,
            },
            bytes,
        }
    }

    /// A reservation holds its bytes from before the read until the upload
    /// ends: a producer asking for more than is left waits for that, and
    /// an artifact larger than the whole budget still goes, alone.
    #[test]
    fn reservations_bound_the_bytes_between_read_and_upload() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store: Arc<dyn CheckpointStore> =
            Arc::new(highwater_cloud::ObjectCheckpointStore::in_memory());
        let pins = Pins::new();
        let guard = pins.guard();
        let uploader = Uploader::start(rt.handle(), store.clone(), 4, 4).with_bytes_in_flight(1000);
        let first = uploader.reserve(600).unwrap();
        assert!(first.is_some());
        std::thread::scope(|scope| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let uploader = &uploader;
            scope.spawn(move || {
                let r = uploader.reserve(600).unwrap();
                tx.send(()).unwrap();
                r
            });
            // 600 of 1000 are held: the second waits while the first is
            // neither sent nor uploaded.
            assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
            uploader
                .send_reserved(produced(1, 600), first, &guard)
                .unwrap();
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the first upload's end gives its bytes back");
        });
        // Larger than the budget: waits for nothing else, then goes.
        let big = uploader.reserve(5000).unwrap();
        uploader
            .send_reserved(produced(2, 5000), big, &guard)
            .unwrap();
        let ((), totals) = uploader.finish(Ok(())).unwrap();
        assert_eq!(totals.written, 2);
        assert_eq!(totals.bytes_written, 5600);
        // Without a budget nothing is reserved.
        let unbounded = Uploader::start(rt.handle(), store, 4, 4);
        assert!(unbounded.reserve(1 << 40).unwrap().is_none());
    }
}
