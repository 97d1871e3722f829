//! Where checkpoints and live state go: parsing `--store`, `--dir` and
//! `--backend` into a store and a backend.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use highwater::cloud::{ObjectCheckpointStore, StoreUrl};
use highwater::memory::MemoryBackend;
#[cfg(feature = "redis")]
use highwater::redis::{RedisBackend, RedisCheckpointStore, RedisEndpoint, RedisStoreConfig};
#[cfg(feature = "rocksdb")]
use highwater::rocksdb::RocksDbBackend;
use highwater::{CheckpointStore, EncryptedStore, Error, KeyProvider, Result, StateBackend};

/// The keys of `--key-file`, read once at start.
static KEYS: OnceLock<Option<(PathBuf, Arc<dyn KeyProvider>)>> = OnceLock::new();

/// Reads `--key-file` (or `HIGHWATER_KEY_FILE`); every store this process
/// opens is then encrypted with its keys.
pub fn set_key_file(path: Option<&Path>) -> Result<()> {
    let keys = match path {
        None => None,
        Some(p) => Some((
            p.to_path_buf(),
            Arc::new(highwater::read_key_file(p)?) as Arc<dyn KeyProvider>,
        )),
    };
    // Set once, by main, before anything opens a store.
    let _ = KEYS.set(keys);
    Ok(())
}

/// The keys of `--key-file`, if one was given.
pub fn keys() -> Option<Arc<dyn KeyProvider>> {
    KEYS.get()?.as_ref().map(|(_, k)| k.clone())
}

/// The `--key-file` path, to pass on to child processes.
#[cfg(feature = "raft")]
pub fn key_file() -> Option<&'static Path> {
    KEYS.get()?.as_ref().map(|(p, _)| p.as_path())
}

/// The error for `what` (a backend, store or command) that this build of the
/// CLI leaves out: it names the Cargo feature of `highwater-cli` and the
/// commands that build it.
pub fn not_built(what: &str, feature: &str) -> Error {
    Error::InvalidArgument(format!(
        "{what} is not in this build of highwater (the default build has the memory backend \
         and local directories only); build it with the `{feature}` feature: \
         `cargo xtask demo --features {feature} ...` for the demo, or \
         `cargo build --profile ci -p highwater-cli --features {feature}` \
         (`--features full` builds every backend and store)"
    ))
}

/// True when `spec` names a Redis server rather than a directory.
pub fn is_redis_url(spec: &str) -> bool {
    ["redis://", "rediss://", "redis+cluster://"]
        .iter()
        .any(|p| spec.starts_with(p))
}

/// Opens the checkpoint store named by `spec`: a `redis://…` URL (keys
/// under `namespace`), an `s3://bucket/prefix`, `az://container/prefix`
/// (or `azure://…`) or `gs://bucket/prefix` URL (objects under the URL's
/// prefix; `namespace` does not apply; the client is configured from the
/// usual `AWS_*`, `AZURE_*` and `GOOGLE_*` environment variables), or a
/// local directory (created if `create`).
///
/// With `--key-file`, the store is wrapped in an [`EncryptedStore`].
pub fn open_store(spec: &str, namespace: &str, create: bool) -> Result<Arc<dyn CheckpointStore>> {
    let store = open_plain_store(spec, namespace, create)?;
    Ok(match keys() {
        Some(keys) => Arc::new(EncryptedStore::new(store, keys)),
        None => store,
    })
}

fn open_plain_store(spec: &str, namespace: &str, create: bool) -> Result<Arc<dyn CheckpointStore>> {
    if is_redis_url(spec) {
        #[cfg(feature = "redis")]
        {
            let config =
                RedisStoreConfig::new(RedisEndpoint::parse(spec)?).with_namespace(namespace);
            return Ok(Arc::new(RedisCheckpointStore::new(config)?));
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = namespace;
            return Err(not_built("the redis:// checkpoint store", "redis"));
        }
    }
    if highwater::cloud::is_cloud_url(spec) {
        let service = StoreUrl::parse(spec)?.service;
        if !service.is_enabled() {
            return Err(not_built(
                &format!("the {}:// checkpoint store", service.name()),
                service.feature(),
            ));
        }
        // The bucket or container must exist; nothing is created in it
        // until the first checkpoint.
        return Ok(Arc::new(ObjectCheckpointStore::from_url(
            spec,
            &highwater::cloud::CloudOptions::new(),
        )?));
    }
    let dir = Path::new(spec);
    if create {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    } else if !dir.is_dir() {
        return Err(Error::NotFound(format!(
            "checkpoint directory: {}",
            dir.display()
        )));
    }
    Ok(Arc::new(ObjectCheckpointStore::local(dir)?))
}

/// The live-state backend of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// In-memory (the default).
    Memory,
    /// Redis (needs --redis-url).
    Redis,
    /// RocksDB in a local working directory (--rocksdb-dir, or DIR/rocksdb),
    /// with native checkpoints: SST files uploaded once and shared.
    Rocksdb,
}

/// Opens the backend; Redis keys live under `namespace`; RocksDB works in
/// `rocksdb_dir` (wiped first: live state comes from checkpoints).
pub fn open_backend(
    kind: BackendKind,
    redis_url: Option<&str>,
    namespace: &str,
    rocksdb_dir: Option<&Path>,
) -> Result<Arc<dyn StateBackend>> {
    match kind {
        BackendKind::Memory => Ok(Arc::new(MemoryBackend::new())),
        #[cfg(not(feature = "redis"))]
        BackendKind::Redis => {
            let _ = (redis_url, namespace);
            Err(not_built("the redis backend", "redis"))
        }
        #[cfg(not(feature = "rocksdb"))]
        BackendKind::Rocksdb => {
            let _ = rocksdb_dir;
            Err(not_built("the rocksdb backend", "rocksdb"))
        }
        #[cfg(feature = "redis")]
        BackendKind::Redis => {
            let url = redis_url.ok_or_else(|| {
                Error::InvalidArgument(
                    "--backend redis needs --redis-url redis://HOST:PORT/".into(),
                )
            })?;
            Ok(Arc::new(RedisBackend::open(url, namespace)?))
        }
        #[cfg(feature = "rocksdb")]
        BackendKind::Rocksdb => {
            let dir = rocksdb_dir.ok_or_else(|| {
                Error::InvalidArgument(
                    "--backend rocksdb needs --rocksdb-dir DIR (or --dir)".into(),
                )
            })?;
            Ok(Arc::new(RocksDbBackend::open(dir)?))
        }
    }
}
