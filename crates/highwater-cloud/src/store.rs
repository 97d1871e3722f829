//! The object-store checkpoint store.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use highwater_core::{
    ArtifactId, BoxFuture, CheckpointId, CheckpointStore, Error, PutOutcome, Result, StoreCounters,
};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use crate::layout::{
    ARTIFACTS_DIR, MANIFESTS_DIR, artifact_name, manifest_name, parse_artifact_name,
    parse_manifest_name,
};
use crate::retry::{RetryPolicy, is_transient};

/// Configuration of an [`ObjectCheckpointStore`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// Retries of transient request failures.
    pub retry: RetryPolicy,
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
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
    config: StoreConfig,
    /// Set for [`ObjectCheckpointStore::local`]: used to fsync directories
    /// after deletes, which `object_store` does not do.
    local: Option<LocalFileSystem>,
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
        ObjectCheckpointStore {
            store,
            prefix: Path::from(prefix),
            name,
            config: StoreConfig::default(),
            local: None,
            counters: Counters::default(),
        }
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
            .map_err(|e| Error::store("local", format!("open {}", dir.display()), e))?
            .with_fsync(true);
        let mut store = ObjectCheckpointStore::new(Arc::new(fs.clone()), "", "local");
        store.local = Some(fs);
        Ok(store)
    }

    /// A store in memory, named `memory`; everything is lost on drop.
    pub fn in_memory() -> Self {
        ObjectCheckpointStore::new(Arc::new(InMemory::new()), "", "memory")
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: StoreConfig) -> Self {
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

    /// Runs `attempt` under the retry policy, counting every attempt in
    /// `counter`. Returns the last result and the number of attempts made.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        path: &Path,
        counter: &AtomicU64,
        mut attempt: F,
    ) -> (object_store::Result<T>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let policy = self.config.retry;
        let mut made = 0;
        loop {
            made += 1;
            bump(counter, 1);
            match attempt().await {
                Err(e) if made < policy.attempts() && is_transient(&e) => {
                    let backoff = policy.backoff(made);
                    tracing::warn!(
                        store = self.name,
                        op,
                        path = %path,
                        attempt = made,
                        backoff_ms = backoff.as_millis() as u64,
                        error = %e,
                        "transient object store error, retrying"
                    );
                    tokio::time::sleep(backoff).await;
                }
                result => return (result, made),
            }
        }
    }

    /// Maps an object-store error: not found names the object, everything
    /// else is a store error with the operation and path.
    fn error(&self, op: &str, what: &str, path: &Path, err: object_store::Error) -> Error {
        match err {
            object_store::Error::NotFound { .. } => {
                Error::NotFound(format!("{what} at {}:{path}", self.name))
            }
            other => Error::store(self.name, format!("{op} {path}"), other),
        }
    }

    async fn get_object(&self, what: &str, path: &Path) -> Result<Bytes> {
        let (result, _) = self
            .run("get", path, &self.counters.gets, || async {
                self.store
                    .get_opts(path, GetOptions::default())
                    .await?
                    .bytes()
                    .await
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
            .run("delete", path, &self.counters.deletes, || {
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
        .map_err(|e| Error::store(self.name, format!("{op} {path}"), e))?
    }

    /// Names of the objects directly under `<prefix>/<dir>`.
    async fn list_names(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.prefix.clone().join(dir);
        let (result, _) = self
            .run("list", &path, &self.counters.lists, || {
                self.store.list_with_delimiter(Some(&path))
            })
            .await;
        let listed = result.map_err(|e| self.error("list", dir, &path, e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_owned))
            .collect())
    }
}

impl CheckpointStore for ObjectCheckpointStore {
    fn name(&self) -> &'static str {
        self.name
    }

    fn put_artifact(&self, id: ArtifactId, data: Bytes) -> BoxFuture<'_, Result<PutOutcome>> {
        Box::pin(async move {
            let actual = ArtifactId::of(&data);
            if actual != id {
                return Err(Error::InvalidArgument(format!(
                    "artifact id is not the xxh3-128 of its bytes: id={id} actual={actual} len={}",
                    data.len()
                )));
            }
            let path = self.artifact_path(id);
            let len = data.len() as u64;
            let (result, attempts) = self
                .run("put", &path, &self.counters.puts, || {
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
                    Ok(PutOutcome::Written)
                }
                // Content addressed: an object with this name holds these bytes.
                Err(object_store::Error::AlreadyExists { .. }) => {
                    if attempts > 1 {
                        // An earlier attempt may have published the object
                        // and then failed before its directory was synced.
                        self.sync_local_dir("put", &format!("artifact {id}"), &path)
                            .await?;
                    }
                    Ok(PutOutcome::AlreadyPresent)
                }
                Err(e) => Err(self.error("put", &format!("artifact {id}"), &path, e)),
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
        Box::pin(async move {
            let path = self.artifact_path(id);
            let (result, _) = self
                .run("head", &path, &self.counters.heads, || {
                    self.store.head(&path)
                })
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.error("head", &format!("artifact {id}"), &path, e)),
            }
        })
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
                .run("commit", &path, &self.counters.puts, || {
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
                Err(object_store::Error::AlreadyExists { .. }) => {
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
                        "{what} at {}:{path}",
                        self.name
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
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreCounters {
            puts: load(&c.puts),
            gets: load(&c.gets),
            heads: load(&c.heads),
            lists: load(&c.lists),
            deletes: load(&c.deletes),
            bytes_written: load(&c.bytes_written),
            bytes_read: load(&c.bytes_read),
        }
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
