//! Shared fixtures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::{ArtifactId, Clock, StateBackend};
use highwater::memory::MemoryBackend;
use highwater::wal::{SyncPolicy, WalConfig};
use highwater::{CheckpointConfig, CheckpointId, CheckpointStore, StateManager};
use highwater_testkit::model::{Entries, diff_entries};

/// A job's directories: a local checkpoint store and a write-ahead log.
pub struct JobDirs {
    _guard: tempfile::TempDir,
    pub store_dir: PathBuf,
    pub wal_dir: PathBuf,
}

impl JobDirs {
    pub fn new() -> Self {
        let guard = tempfile::tempdir().expect("temp dir");
        let store_dir = guard.path().join("checkpoints");
        let wal_dir = guard.path().join("wal");
        JobDirs {
            _guard: guard,
            store_dir,
            wal_dir,
        }
    }

    pub fn store(&self) -> Arc<dyn CheckpointStore> {
        Arc::new(ObjectCheckpointStore::local(&self.store_dir).expect("open local store"))
    }

    pub fn artifact_file(&self, id: ArtifactId) -> PathBuf {
        self.store_dir.join("artifacts").join(id.to_hex())
    }

    pub fn manifest_file(&self, id: CheckpointId) -> PathBuf {
        self.store_dir
            .join("manifests")
            .join(format!("{:020}.hwm", id.0))
    }

    /// Segment files of the log, oldest first.
    pub fn wal_segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.wal_dir)
            .expect("list wal dir")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        v.sort();
        v
    }
}

/// A checkpoint configuration for tests.
pub fn config(max_retained: usize) -> CheckpointConfig {
    let mut c = CheckpointConfig::default();
    c.max_retained = max_retained;
    c.max_chain_before_full = 16;
    c.key_groups_per_artifact = 8;
    c.encode_threads = 2;
    c.io_concurrency = 4;
    c
}

/// The log configuration of tests: every commit durable, small segments.
pub fn wal_config(segment_size: u64) -> WalConfig {
    WalConfig::default()
        .sync_policy(SyncPolicy::Always)
        .segment_size(segment_size)
}

/// A manager over a fresh memory backend and `dirs`, with a log when
/// `segment_size` is given.
pub fn manager(
    dirs: &JobDirs,
    cfg: CheckpointConfig,
    clock: Arc<dyn Clock>,
    wal_segment_size: Option<u64>,
) -> highwater::Result<StateManager> {
    let mut b = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(dirs.store())
        .config(cfg)
        .clock(clock);
    if let Some(size) = wal_segment_size {
        b = b.wal(&dirs.wal_dir, wal_config(size));
    }
    b.build()
}

/// Every entry of a backend.
pub fn dump(backend: &dyn StateBackend) -> Entries {
    backend
        .scan_prefix(&[])
        .expect("scan the backend")
        .into_iter()
        .collect()
}

/// Panics with a readable diff when the states differ.
pub fn assert_state(expected: &Entries, actual: &Entries, context: &str) {
    if let Err(diff) = diff_entries(expected, actual) {
        panic!("{context}: recovered state differs from the model: {diff}");
    }
}

/// Flips one byte in the middle of a file.
pub fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read file to damage");
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5A;
    std::fs::write(path, bytes).expect("write damaged file");
}

/// Cuts a file to half its length.
pub fn truncate_half(path: &Path) {
    let len = std::fs::metadata(path).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open to truncate");
    f.set_len(len / 2).expect("truncate");
}

/// A runtime for driving the engine directly.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
