//! The object-store checkpoint store.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use highwater_core::{
    ArtifactId, BoxFuture, CheckpointId, CheckpointStore, Error, ErrorKind, PutOutcome, Result,
    StoreCounters,
};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutPayload,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::layout::{
    ARTIFACTS_DIR, MANIFESTS_DIR, artifact_name, manifest_name, parse_artifact_name,
    parse_manifest_name,
};
use crate::retry::{RetryPolicy, classify, http_status, is_transient};

/// Configuration of an [`ObjectCheckpointStore`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// Retries of transient request failures.
    pub retry: RetryPolicy,
    /// Multipart uploads and the bound on requests in flight.
    pub transfer: TransferConfig,
}

/// How artifacts travel: multipart uploads of large artifacts, and how many
/// requests may be in flight.
///
/// Multipart uploads apply to remote stores only: the local store always
/// writes one file per artifact (create-only through a hard link, fsync'd),
/// which is both atomic and as fast as the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferConfig {
    /// Artifacts larger than this many bytes are uploaded in parts; `None`
    /// uploads every artifact with a single request.
    pub multipart_threshold: Option<u64>,
    /// Bytes per part (the last part may be smaller). S3 refuses parts
    /// below 5 MiB other than the last one; Azure and GCS accept any size.
    pub part_size: usize,
    /// Parts of one artifact uploaded at the same time (at least 1).
    pub part_concurrency: usize,
    /// Requests of this store in flight at the same time, across every
    /// caller and every part (at least 1). Callers such as the
    /// `StateManager` bound the artifacts in flight themselves; this bound
    /// keeps `artifacts × parts` from exceeding what a connection pool and
    /// the service's request-rate limits take.
    pub max_requests: usize,
}

/// 8 MiB: the multipart threshold and part size of [`TransferConfig::default`]
/// (the AWS command-line tool's defaults, above S3's 5 MiB minimum).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;

impl Default for TransferConfig {
    /// Multipart above 8 MiB, 8 MiB parts, 4 parts of an artifact and 64
    /// requests of the store in flight.
    fn default() -> Self {
        TransferConfig {
            multipart_threshold: Some(DEFAULT_PART_SIZE as u64),
            part_size: DEFAULT_PART_SIZE,
            part_concurrency: 4,
            max_requests: 64,
        }
    }
}

impl TransferConfig {
    /// One request per artifact, whatever its size.
    pub fn single_request() -> Self {
        TransferConfig {
            multipart_threshold: None,
            ..TransferConfig::default()
        }
    }
}

type Counters = highwater_core::AtomicStoreCounters;

fn bump(counter: &AtomicU64, by: u64) {
    Counters::bump(counter, by);
}

/// A [`CheckpointStore`] over any [`ObjectStore`]: a local directory, memory,
/// S3, GCS, Azure.
///
/// See the [crate documentation](crate) for the object layout and the
/// guarantees. [`StoreCounters`] count requests as sent, retries included;
/// `bytes_written` counts only bytes the store accepted (an artifact that was
/// already present adds nothing) and `bytes_read` the bytes returned.
#[derive(Debug)]
pub struct ObjectCheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    name: &'static str,
    /// Where the store is, for messages: `s3://bucket`, a local directory,
    /// or the object store's own description.
    root: String,
    config: StoreConfig,
    /// Permits for requests in flight ([`TransferConfig::max_requests`]).
    requests: Arc<Semaphore>,
    /// Set for [`ObjectCheckpointStore::local`]: used to fsync directories
    /// after deletes, which `object_store` does not do.
    local: Option<LocalFileSystem>,
    /// Keys a listing request returns at most (1 000 on S3 and GCS, 5 000
    /// on Azure), to count listing requests as the service bills them:
    /// `object_store` follows continuation pages without reporting them.
    /// `None` for stores without pages (local, memory).
    list_page: Option<usize>,
    /// S3 answers a create-only put with 409 Conflict while another
    /// conditional write of the same key is in flight; `object_store` maps
    /// that to `AlreadyExists`, but nothing was decided yet: retry it.
    /// (Azure answers 409 for "the blob exists", so only S3 sets this.)
    conflict_is_transient: bool,
    /// Whether starting and aborting a multipart upload send a request (S3
    /// and GCS; Azure's blocks need none until the block list is committed,
    /// and uncommitted blocks expire by themselves).
    multipart_create_is_request: bool,
    counters: Counters,
}

impl ObjectCheckpointStore {
    /// A store over `store`, keeping its objects under `prefix` (`""` for the
    /// root; `/`-separated segments, empty segments ignored). `name` appears
    /// in errors and metrics (`s3`, `gcs`, …).
    ///
    /// The store must support [`PutMode::Create`] (atomic create-only
    /// writes); manifests and artifacts are written only that way.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, name: &'static str) -> Self {
        let config = StoreConfig::default();
        ObjectCheckpointStore {
            root: store.to_string(),
            store,
            prefix: Path::from(prefix),
            name,
            requests: Arc::new(Semaphore::new(config.transfer.max_requests.max(1))),
            config,
            local: None,
            list_page: Some(1000),
            conflict_is_transient: false,
            multipart_create_is_request: true,
            counters: Counters::default(),
        }
    }

    /// Sets how the service pages listings, answers racing conditional
    /// writes and starts multipart uploads; used by
    /// [`from_url`](Self::from_url).
    pub(crate) fn with_service_rules(
        mut self,
        list_page: usize,
        conflict_is_transient: bool,
        multipart_create_is_request: bool,
    ) -> Self {
        self.list_page = Some(list_page);
        self.conflict_is_transient = conflict_is_transient;
        self.multipart_create_is_request = multipart_create_is_request;
        self
    }

    /// A durable store in the local directory `dir`, named `local`.
    ///
    /// Creates `dir`, `dir/artifacts` and `dir/manifests` if needed and
    /// fsyncs them and the directories that name them. Writes go through
    /// [`LocalFileSystem::with_fsync`]`(true)`: data files are fsync'd before
    /// they are published and their directory after; deletes are followed by
    /// an fsync of the directory.
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = std::path::absolute(dir.as_ref()).map_err(|e| {
            Error::io(
                format!("resolve store directory {}", dir.as_ref().display()),
                e,
            )
        })?;
        for sub in [ARTIFACTS_DIR, MANIFESTS_DIR] {
            let sub = dir.join(sub);
            fsync::create_dir_durable(&sub)
                .map_err(|e| Error::io(format!("create store directory {}", sub.display()), e))?;
        }
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| {
                Error::store_with_kind(classify(&e), "local", format!("open {}", dir.display()), e)
            })?
            .with_fsync(true);
        let mut store = ObjectCheckpointStore::new(Arc::new(fs.clone()), "", "local").with_config(
            StoreConfig {
                transfer: TransferConfig::single_request(),
                ..StoreConfig::default()
            },
        );
        store.local = Some(fs);
        store.list_page = None;
        store.root = dir.display().to_string();
        Ok(store)
    }

    /// A store in memory, named `memory`; everything is lost on drop.
    /// Uploads every artifact with a single request.
    pub fn in_memory() -> Self {
        let mut store = ObjectCheckpointStore::new(Arc::new(InMemory::new()), "", "memory")
            .with_config(StoreConfig {
                transfer: TransferConfig::single_request(),
                ..StoreConfig::default()
            });
        store.list_page = None;
        store.root = "memory:".into();
        store
    }

    /// Sets where the store is, as its error messages name it (`s3://bucket`;
    /// [`from_url`](Self::from_url) and [`local`](Self::local) set it).
    pub(crate) fn with_root(mut self, root: String) -> Self {
        self.root = root;
        self
    }

    /// Where `path` is, as error messages name it: the store's root
    /// (`s3://bucket`, the local directory) joined with the object path.
    pub fn location(&self, path: &Path) -> String {
        format!("{}/{path}", self.root.trim_end_matches('/'))
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: StoreConfig) -> Self {
        self.requests = Arc::new(Semaphore::new(config.transfer.max_requests.max(1)));
        self.config = config;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix under which this store keeps its objects.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The object path of an artifact.
    pub fn artifact_path(&self, id: ArtifactId) -> Path {
        self.prefix
            .clone()
            .join(ARTIFACTS_DIR)
            .join(artifact_name(id).as_str())
    }

    /// The object path of a manifest.
    pub fn manifest_path(&self, id: CheckpointId) -> Path {
        self.prefix
            .clone()
            .join(MANIFESTS_DIR)
            .join(manifest_name(id).as_str())
    }

    /// A permit to send one request, waiting while
    /// [`max_requests`](TransferConfig::max_requests) are in flight.
    async fn permit(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed.
        self.requests
            .clone()
            .acquire_owned()
            .await
            .expect("the request semaphore is never closed")
    }

    /// True when `err` is worth another attempt (see [`is_transient`]),
    /// including S3's 409 for a conflicting conditional write in flight.
    fn retryable(&self, err: &object_store::Error) -> bool {
        is_transient(err)
            || (self.conflict_is_transient
                && matches!(err, object_store::Error::AlreadyExists { .. })
                && http_status(err) == Some(409))
    }

    /// Runs `attempt` under the retry policy, counting every attempt in
    /// `counter` (when given; a multi-request attempt counts its own
    /// requests) and holding a request permit for each single-request
    /// attempt. Returns the last result and the number of attempts made.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        path: &Path,
        counter: Option<&AtomicU64>,
        attempt: F,
    ) -> (object_store::Result<T>, u32)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let attempt = &attempt;
        self.config
            .retry
            .retry(
                || async move {
                    match counter {
                        Some(counter) => {
                            let _permit = self.permit().await;
                            bump(counter, 1);
                            attempt().await
                        }
                        None => attempt().await,
                    }
                },
                |e| self.retryable(e),
                |r| {
                    tracing::warn!(
                        store = self.name,
                        op,
                        path = %path,
                        attempt = r.attempt,
                        backoff_ms = r.backoff.as_millis() as u64,
                        error = %r.error,
                        "transient object store error, retrying"
                    );
                },
                tokio::time::sleep,
            )
            .await
    }

    /// Maps an object-store error by [`classify`]: a missing object is
    /// [`Error::NotFound`] naming it; everything else is an
    /// [`Error::Store`] of the classified kind, naming the operation, the
    /// object and where it is (the URL or local path), with the
    /// `object_store` error as its source.
    fn error(&self, op: &str, what: &str, path: &Path, err: object_store::Error) -> Error {
        match classify(&err) {
            ErrorKind::NotFound => {
                Error::NotFound(format!("{what} at {}:{}", self.name, self.location(path)))
            }
            kind => Error::store_with_kind(
                kind,
                self.name,
                format!("{op} {what} at {}", self.location(path)),
                err,
            ),
        }
    }

    async fn get_object(&self, what: &str, path: &Path) -> Result<Bytes> {
        let (result, _) = self
            .run("get", path, Some(&self.counters.gets), || async {
                read_whole(self.store.get_opts(path, GetOptions::default()).await?).await
            })
            .await;
        match result {
            Ok(bytes) => {
                bump(&self.counters.bytes_read, bytes.len() as u64);
                Ok(bytes)
            }
            Err(e) => Err(self.error("get", what, path, e)),
        }
    }

    async fn delete_object(&self, what: &str, path: &Path) -> Result<()> {
        let (result, _) = self
            .run("delete", path, Some(&self.counters.deletes), || {
                self.store.delete(path)
            })
            .await;
        match result {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.error("delete", what, path, e)),
        }
        // object_store does not fsync directories on delete; a delete that
        // resolved must stay deleted after a crash. Also done when the object
        // was already gone: an earlier attempt may have removed it unsynced.
        self.sync_local_dir("delete", what, path).await
    }

    /// For the local store: fsyncs the directory that names `path`, so that
    /// an entry added or removed there is durable. A no-op for other stores
    /// and when the directory does not exist.
    async fn sync_local_dir(&self, op: &str, what: &str, path: &Path) -> Result<()> {
        let Some(fs) = &self.local else {
            return Ok(());
        };
        let file = fs
            .path_to_filesystem(path)
            .map_err(|e| self.error(op, what, path, e))?;
        let Some(dir) = file.parent().map(|d| d.to_path_buf()) else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || match fsync::fsync_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e)),
        })
        .await
        .map_err(|e| {
            Error::unexpected(
                format!(
                    "{op} {what}: fsync the directory of {}",
                    self.location(path)
                ),
                e,
            )
        })?
    }

    /// Names of the objects directly under `<prefix>/<dir>`.
    ///
    /// One `list_with_delimiter` call follows every continuation page; the
    /// `lists` counter adds the pages the service billed (see `list_page`).
    async fn list_names(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.prefix.clone().join(dir);
        let (result, _) = self
            .run("list", &path, None, || async {
                let _permit = self.permit().await;
                let listed = self.store.list_with_delimiter(Some(&path)).await;
                let keys = listed
                    .as_ref()
                    .map_or(0, |l| l.objects.len() + l.common_prefixes.len());
                let pages = match self.list_page {
                    Some(page) => keys.div_ceil(page.max(1)).max(1),
                    None => 1,
                };
                bump(&self.counters.lists, pages as u64);
                listed
            })
            .await;
        let listed = result.map_err(|e| self.error("list", dir, &path, e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_owned))
            .collect())
    }

    /// True when `data` goes up as a multipart upload.
    fn multipart(&self, len: usize) -> bool {
        self.local.is_none()
            && self
                .config
                .transfer
                .multipart_threshold
                .is_some_and(|t| len as u64 > t)
    }

    /// Whether an artifact exists, by HEAD.
    async fn head_artifact(&self, id: ArtifactId, path: &Path) -> Result<bool> {
        self.stored_size(id, path).await.map(|s| s.is_some())
    }

    /// The size of the stored artifact, `None` when there is none.
    async fn stored_size(&self, id: ArtifactId, path: &Path) -> Result<Option<u64>> {
        let (result, _) = self
            .run("head", path, Some(&self.counters.heads), || {
                self.store.head(path)
            })
            .await;
        match result {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("head", &format!("artifact {id}"), path, e)),
        }
    }

    /// Whether an artifact found already stored under `id` (of size
    /// `found`, from a HEAD) may be reused:
    /// the name is a content address, but a store that lost or tore a
    /// write (issue 18's fault tests: half an upload stored and
    /// acknowledged) can hold other bytes under it, and a checkpoint that
    /// deduplicated against them would be unrestorable. One HEAD compares
    /// the size; a damaged copy is replaced by these bytes (the same
    /// content, so replacing is safe whoever else reads it).
    async fn reuse_or_replace(
        &self,
        id: ArtifactId,
        path: &Path,
        data: &Bytes,
        found: Option<u64>,
    ) -> Result<PutOutcome> {
        let len = data.len() as u64;
        match found {
            Some(size) if size == len => Ok(PutOutcome::AlreadyPresent),
            found => {
                tracing::warn!(
                    store = self.name,
                    artifact = %id,
                    stored_size = ?found,
                    expected_size = len,
                    "stored artifact has the wrong size; writing it again"
                );
                let what = format!("artifact {id}");
                let (result, _) = self
                    .run("put", path, Some(&self.counters.puts), || {
                        self.store.put_opts(
                            path,
                            PutPayload::from(data.clone()),
                            PutMode::Overwrite.into(),
                        )
                    })
                    .await;
                result.map_err(|e| self.error("put", &what, path, e))?;
                bump(&self.counters.bytes_written, len);
                Ok(PutOutcome::Written)
            }
        }
    }

    /// A single create-only put of an artifact.
    async fn put_single(&self, id: ArtifactId, path: &Path, data: Bytes) -> Result<PutOutcome> {
        let what = format!("artifact {id}");
        let len = data.len() as u64;
        let (result, attempts) = self
            .run("put", path, Some(&self.counters.puts), || {
                self.store
                    .put_opts(path, PutPayload::from(data.clone()), PutMode::Create.into())
            })
            .await;
        match result {
            Ok(_) => {
                bump(&self.counters.bytes_written, len);
                Ok(PutOutcome::Written)
            }
            // Content addressed: an object with this name holds these bytes.
            Err(e @ object_store::Error::AlreadyExists { .. }) => {
                if self.retryable(&e) {
                    // S3's conflict answer with the retries used up: the
                    // other writer may not have finished. Present only if
                    // it is there now.
                    return if self.head_artifact(id, path).await? {
                        Ok(PutOutcome::AlreadyPresent)
                    } else {
                        Err(self.error("put", &what, path, e))
                    };
                }
                if attempts > 1 {
                    // An earlier attempt may have published the object
                    // and then failed before its directory was synced.
                    self.sync_local_dir("put", &what, path).await?;
                }
                let found = self.stored_size(id, path).await?;
                self.reuse_or_replace(id, path, &data, found).await
            }
            Err(e) => Err(self.error("put", &what, path, e)),
        }
    }

    /// A multipart upload of an artifact, unless a HEAD finds it present.
    ///
    /// `object_store` 0.14 cannot make a multipart upload create-only
    /// (`PutMultipartOptions` has no put mode), so presence is checked
    /// first. Two writers racing past the HEAD both upload the same bytes
    /// under the same content-addressed name; the object is replaced by
    /// identical bytes, atomically, when the second upload completes.
    async fn put_multipart(&self, id: ArtifactId, path: &Path, data: Bytes) -> Result<PutOutcome> {
        if let Some(size) = self.stored_size(id, path).await? {
            return self.reuse_or_replace(id, path, &data, Some(size)).await;
        }
        let (result, _) = self
            .run("put multipart", path, None, || {
                self.multipart_attempt(path, data.clone())
            })
            .await;
        match result {
            Ok(()) => {
                bump(&self.counters.bytes_written, data.len() as u64);
                Ok(PutOutcome::Written)
            }
            Err(e) => Err(self.error("put multipart", &format!("artifact {id}"), path, e)),
        }
    }

    /// One attempt of a multipart upload: create, parts (at most
    /// `part_concurrency` in flight), complete. Every request counts as a
    /// put. On failure the upload is aborted, so its parts do not linger
    /// (and bill) in the bucket; nothing is visible until `complete`.
    async fn multipart_attempt(&self, path: &Path, data: Bytes) -> object_store::Result<()> {
        let transfer = self.config.transfer;
        let mut upload = {
            let _permit = self.permit().await;
            if self.multipart_create_is_request {
                bump(&self.counters.puts, 1);
            }
            self.store
                .put_multipart_opts(path, PutMultipartOptions::default())
                .await?
        };
        let outcome = self.upload_parts(&mut *upload, &data, transfer).await;
        let outcome = match outcome {
            Ok(()) => {
                let _permit = self.permit().await;
                bump(&self.counters.puts, 1);
                upload.complete().await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            let _permit = self.permit().await;
            // Azure has nothing to abort (uncommitted blocks expire).
            if self.multipart_create_is_request {
                bump(&self.counters.deletes, 1);
            }
            if let Err(abort) = upload.abort().await {
                // The upload's error is what the caller must see; a failed
                // abort leaves parts that the bucket's lifecycle rule for
                // incomplete multipart uploads removes.
                tracing::warn!(
                    store = self.name,
                    path = %path,
                    error = %e,
                    abort_error = %abort,
                    "could not abort a failed multipart upload"
                );
            }
        }
        outcome
    }

    /// Sends the parts of `data`, in order, at most `part_concurrency` in
    /// flight; returns the first error.
    async fn upload_parts(
        &self,
        upload: &mut dyn MultipartUpload,
        data: &Bytes,
        transfer: TransferConfig,
    ) -> object_store::Result<()> {
        let part_size = transfer.part_size.max(1);
        let concurrency = transfer.part_concurrency.max(1);
        let mut parts = JoinSet::new();
        let mut offset = 0;
        while offset < data.len() {
            while parts.len() >= concurrency {
                join_part(parts.join_next().await)?;
            }
            let end = (offset + part_size).min(data.len());
            let permit = self.permit().await;
            bump(&self.counters.puts, 1);
            // Parts are numbered in the order `put_part` is called; the
            // returned futures may then finish in any order.
            let part = upload.put_part(PutPayload::from(data.slice(offset..end)));
            parts.spawn(async move {
                let result = part.await;
                drop(permit);
                result
            });
            offset = end;
        }
        while let Some(done) = parts.join_next().await {
            join_part(Some(done))?;
        }
        Ok(())
    }
}

/// The result of one finished part task.
fn join_part(
    done: Option<std::result::Result<object_store::Result<()>, tokio::task::JoinError>>,
) -> object_store::Result<()> {
    match done {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(join)) => Err(object_store::Error::JoinError { source: join }),
    }
}

/// The whole of a fetched object, in one buffer of the length it was
/// announced with; a large one is a memory map of its own
/// ([`highwater_core::filebuf`]), given back to the system when the last
/// reference to it goes (a native checkpoint's files are fetched whole, up
/// to 64 MiB each). A local file is read with one blocking read, not in the
/// 8 KiB parts of object_store's stream. A length the body does not match
/// is an error.
async fn read_whole(result: object_store::GetResult) -> object_store::Result<Bytes> {
    use futures::StreamExt;
    let io = |e: std::io::Error| object_store::Error::Generic {
        store: "highwater",
        source: Box::new(e),
    };
    let len = usize::try_from(result.range.end.saturating_sub(result.range.start))
        .map_err(|e| io(std::io::Error::other(e)))?;
    if len < highwater_core::filebuf::MAPPED_MIN {
        return result.bytes().await;
    }
    match result.payload {
        object_store::GetResultPayload::File(mut file, _) => {
            let start = result.range.start;
            tokio::task::spawn_blocking(move || {
                use std::io::{Read, Seek};
                file.seek(std::io::SeekFrom::Start(start))?;
                highwater_core::filebuf::filled(len, |buf| file.read_exact(buf))
            })
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)
        }
        object_store::GetResultPayload::Stream(mut parts) => {
            let mut filler = highwater_core::filebuf::Filler::new(len).map_err(io)?;
            while let Some(part) = parts.next().await {
                filler.extend(&part?).map_err(io)?;
            }
            filler.finish().map_err(io)
        }
    }
}

impl CheckpointStore for ObjectCheckpointStore {
    fn name(&self) -> &'static str {
        self.name
    }

    fn put_artifact(&self, id: ArtifactId, data: Bytes) -> BoxFuture<'_, Result<PutOutcome>> {
        Box::pin(async move {
            highwater_core::crypto::check_content_address(id, &data)?;
            let path = self.artifact_path(id);
            if self.multipart(data.len()) {
                self.put_multipart(id, &path, data).await
            } else {
                self.put_single(id, &path, data).await
            }
        })
    }

    fn get_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            self.get_object(&format!("artifact {id}"), &self.artifact_path(id))
                .await
        })
    }

    fn has_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move { self.head_artifact(id, &self.artifact_path(id)).await })
    }

    fn list_artifacts(&self) -> BoxFuture<'_, Result<Vec<ArtifactId>>> {
        Box::pin(async move {
            let mut ids = Vec::new();
            for name in self.list_names(ARTIFACTS_DIR).await? {
                match parse_artifact_name(&name) {
                    Some(id) => ids.push(id),
                    None => tracing::warn!(
                        store = self.name,
                        dir = ARTIFACTS_DIR,
                        name,
                        "ignoring object that is not named like an artifact"
                    ),
                }
            }
            ids.sort_unstable();
            Ok(ids)
        })
    }

    fn delete_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.delete_object(&format!("artifact {id}"), &self.artifact_path(id))
                .await
        })
    }

    fn commit_manifest(&self, id: CheckpointId, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let path = self.manifest_path(id);
            let what = format!("manifest {id}");
            let len = data.len() as u64;
            let (result, attempts) = self
                .run("commit", &path, Some(&self.counters.puts), || {
                    self.store.put_opts(
                        &path,
                        PutPayload::from(data.clone()),
                        PutMode::Create.into(),
                    )
                })
                .await;
            match result {
                Ok(_) => {
                    bump(&self.counters.bytes_written, len);
                    Ok(())
                }
                Err(e @ object_store::Error::AlreadyExists { .. }) => {
                    if self.retryable(&e) {
                        // S3's conflict answer with the retries used up:
                        // another conditional write was in flight. Decided
                        // only if a manifest is there now.
                        return match self.get_object(&what, &path).await {
                            Ok(stored) if stored == data => {
                                bump(&self.counters.bytes_written, len);
                                Ok(())
                            }
                            Ok(_) => Err(Error::AlreadyExists(format!(
                                "{what} at {}:{}",
                                self.name,
                                self.location(&path)
                            ))),
                            Err(Error::NotFound(_)) => Err(self.error("commit", &what, &path, e)),
                            Err(other) => Err(other),
                        };
                    }
                    // After a retry, an earlier attempt may have succeeded
                    // with its response lost: if the stored manifest is ours
                    // byte for byte, the commit did happen.
                    // Its directory may not have been synced: sync it.
                    if attempts > 1 && self.get_object(&what, &path).await? == data {
                        self.sync_local_dir("commit", &what, &path).await?;
                        bump(&self.counters.bytes_written, len);
                        return Ok(());
                    }
                    Err(Error::AlreadyExists(format!(
                        "{what} at {}:{}",
                        self.name,
                        self.location(&path)
                    )))
                }
                Err(e) => Err(self.error("commit", &what, &path, e)),
            }
        })
    }

    fn get_manifest(&self, id: CheckpointId) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            self.get_object(&format!("manifest {id}"), &self.manifest_path(id))
                .await
        })
    }

    fn list_manifests(&self) -> BoxFuture<'_, Result<Vec<CheckpointId>>> {
        Box::pin(async move {
            let mut ids = Vec::new();
            for name in self.list_names(MANIFESTS_DIR).await? {
                match parse_manifest_name(&name) {
                    Some(id) => ids.push(id),
                    None => tracing::warn!(
                        store = self.name,
                        dir = MANIFESTS_DIR,
                        name,
                        "ignoring object that is not named like a manifest"
                    ),
                }
            }
            ids.sort_unstable();
            Ok(ids)
        })
    }

    fn delete_manifest(&self, id: CheckpointId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.delete_object(&format!("manifest {id}"), &self.manifest_path(id))
                .await
        })
    }

    fn counters(&self) -> StoreCounters {
        self.counters.snapshot()
    }

    /// The same object store under `<prefix>/<scope>`, sharing this store's
    /// bound on requests in flight and its configuration, with counters of
    /// its own. For a local directory the scope's `artifacts` and
    /// `manifests` directories are created and fsync'd (with the
    /// directories that name them) first.
    fn scoped(&self, scope: &str) -> Result<Arc<dyn CheckpointStore>> {
        if !highwater_core::valid_scope(scope) {
            return Err(Error::InvalidArgument(format!(
                "not a valid store scope: {:?}",
                scope.chars().take(64).collect::<String>()
            )));
        }
        let prefix = if self.prefix.as_ref().is_empty() {
            Path::from(scope)
        } else {
            Path::from(format!("{}/{scope}", self.prefix))
        };
        if self.local.is_some() {
            let dir = std::path::Path::new(&self.root).join(prefix.as_ref());
            for sub in [ARTIFACTS_DIR, MANIFESTS_DIR] {
                let sub = dir.join(sub);
                fsync::create_dir_durable(&sub).map_err(|e| {
                    Error::io(format!("create store directory {}", sub.display()), e)
                })?;
            }
        }
        Ok(Arc::new(ObjectCheckpointStore {
            store: self.store.clone(),
            prefix,
            name: self.name,
            root: self.root.clone(),
            config: self.config.clone(),
            requests: self.requests.clone(),
            local: self.local.clone(),
            list_page: self.list_page,
            conflict_is_transient: self.conflict_is_transient,
            multipart_create_is_request: self.multipart_create_is_request,
            counters: Counters::default(),
        }))
    }
}

/// Directory fsync for the local store.
mod fsync {
    use std::io;
    use std::path::Path;

    /// Fsyncs `dir` so that changes to its entries are durable. A no-op on
    /// platforms where directories cannot be opened and synced.
    pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::fs::File::open(dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            let _ = dir;
            Ok(())
        }
    }

    /// Creates `dir` (an absolute path) and its missing ancestors, then
    /// fsyncs `dir` and every ancestor up to and including the deepest one
    /// that already existed, so every new directory entry is durable.
    pub(super) fn create_dir_durable(dir: &Path) -> io::Result<()> {
        let mut existing = dir;
        while !existing.exists() {
            match existing.parent() {
                Some(parent) => existing = parent,
                None => break,
            }
        }
        std::fs::create_dir_all(dir)?;
        let mut current = dir;
        loop {
            fsync_dir(current)?;
            if current == existing {
                return Ok(());
            }
            match current.parent() {
                Some(parent) => current = parent,
                None => return Ok(()),
            }
        }
    }
}
