//! At-rest encryption through the manager (`StateManagerBuilder::encryption`):
//! checkpoints (full and incremental), the write-ahead log and savepoints of
//! every backend round-trip sealed, nothing of the state is readable in the
//! files, keys rotate, and a tampered, moved or unsealed object is an
//! authentication error rather than a fallback to older state.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::{ArtifactId, StateBackend};
use highwater::memory::MemoryBackend;
use highwater::wal::{SyncPolicy, WalConfig};
use highwater::{
    CheckpointConfig, CheckpointStore, Compression, DataKey, EncryptedStore, ErrorKind, KeyId,
    KeyProvider, Keyring, StateManager, ValueState, ValueStateDescriptor,
};
use highwater_redis::RedisBackend;
use highwater_rocksdb::{RocksDbBackend, RocksDbConfig};
use highwater_testkit::SplitMix64;
use highwater_testkit::servers::PrivateRedis;

use crate::common::{TypedModel, Workload, config, files_in, manifests, referenced};

/// A value no sealed file may show.
const MARKER: &str = "PLAINTEXT-MARKER";

fn keys(ids: &[KeyId]) -> Arc<dyn KeyProvider> {
    let mut ring = Keyring::new(ids[0], DataKey::new([ids[0] as u8; 32]));
    for id in &ids[1..] {
        ring = ring.with_key(*id, DataKey::new([*id as u8; 32])).unwrap();
    }
    Arc::new(ring)
}

/// Artifacts stored raw, so that a missing seal would show the state.
fn raw_config() -> CheckpointConfig {
    let mut c = config(true, 8, 3);
    c.merger.compression = Compression::None;
    c
}

struct Job {
    manager: StateManager,
    workload: Workload,
    secrets: ValueState<u32, String>,
}

fn job(
    backend: Arc<dyn StateBackend>,
    store: &Path,
    wal: &Path,
    keys: Option<Arc<dyn KeyProvider>>,
) -> Job {
    let mut b = StateManager::builder()
        .backend(backend)
        .store(Arc::new(ObjectCheckpointStore::local(store).unwrap()))
        .config(raw_config())
        .wal(wal, WalConfig::default().sync_policy(SyncPolicy::Always));
    if let Some(k) = keys {
        b = b.encryption(k);
    }
    let manager = b.build().unwrap();
    let workload = Workload::new(&manager);
    let secrets = manager
        .keyed_state("secrets")
        .unwrap()
        .value_state(&ValueStateDescriptor::new("s"))
        .unwrap();
    Job {
        manager,
        workload,
        secrets,
    }
}

impl Job {
    fn work(&self, rng: &mut SplitMix64, model: &mut TypedModel, steps: usize) {
        for _ in 0..steps {
            self.workload.step(rng, model);
        }
        for k in 0..20u32 {
            self.secrets
                .update(&k, &format!("{MARKER}-{k}-{}", rng.below(1000)))
                .unwrap();
        }
        self.manager.commit().unwrap();
    }

    fn secrets(&self) -> Vec<Option<String>> {
        (0..20u32).map(|k| self.secrets.get(&k).unwrap()).collect()
    }

    fn check(&self, model: &TypedModel, secrets: &[Option<String>]) {
        self.workload.check(model).unwrap();
        assert_eq!(self.secrets(), secrets);
    }
}

/// [`job`] over a fresh memory backend, encrypted with `keys`.
fn memory_job(store: &Path, wal: &Path, keys: Arc<dyn KeyProvider>) -> Job {
    job(Arc::new(MemoryBackend::new()), store, wal, Some(keys))
}

/// Files under `dir` (recursively) whose bytes contain the marker.
fn files_showing_marker(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(MARKER.len())
                .any(|w| w == MARKER.as_bytes())
            {
                out.push(p);
            }
        }
    }
    out
}

fn sealed(dir: &Path, keys: Arc<dyn KeyProvider>) -> Arc<dyn CheckpointStore> {
    Arc::new(EncryptedStore::new(
        Arc::new(ObjectCheckpointStore::local(dir).unwrap()),
        keys,
    ))
}

#[test]
fn without_keys_the_state_shows_in_the_files() {
    // The control for the next test: the marker check can fail.
    let d = tempfile::tempdir().unwrap();
    let (store, wal) = (d.path().join("store"), d.path().join("wal"));
    let j = job(Arc::new(MemoryBackend::new()), &store, &wal, None);
    let mut rng = SplitMix64::new(1);
    j.work(&mut rng, &mut TypedModel::default(), 50);
    j.manager.checkpoint().unwrap().wait().unwrap();
    j.manager.close().unwrap();
    assert!(!files_showing_marker(&store).is_empty());
    assert!(!files_showing_marker(&wal).is_empty());
}

#[test]
fn every_backend_round_trips_sealed_checkpoints_log_and_savepoints() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("redis")).unwrap();
    let server = PrivateRedis::start(&d.path().join("redis"));
    let backend = |name: &str, n: u32| -> Arc<dyn StateBackend> {
        match name {
            "memory" => Arc::new(MemoryBackend::new()),
            "rocksdb" => Arc::new(
                RocksDbBackend::with_config(RocksDbConfig::new(
                    d.path().join(format!("rocks-{n}")),
                ))
                .unwrap(),
            ),
            _ => Arc::new(RedisBackend::open(&server.url(), &format!("enc-{n}")).unwrap()),
        }
    };
    for name in ["memory", "rocksdb", "redis"] {
        let root = d.path().join(name);
        let (store, wal, sp) = (root.join("store"), root.join("wal"), root.join("sp"));
        let k = keys(&[1]);
        let j = job(backend(name, 0), &store, &wal, Some(k.clone()));
        let mut rng = SplitMix64::new(7);
        let mut model = TypedModel::default();
        j.work(&mut rng, &mut model, 200);
        j.manager.checkpoint().unwrap().wait().unwrap();
        j.work(&mut rng, &mut model, 100);
        j.manager.checkpoint().unwrap().wait().unwrap();
        // Changes after the last checkpoint live only in the log.
        j.work(&mut rng, &mut model, 50);
        let secrets = j.secrets();
        std::fs::create_dir_all(&sp).unwrap();
        j.manager
            .savepoint(Arc::new(ObjectCheckpointStore::local(&sp).unwrap()))
            .unwrap()
            .wait()
            .unwrap();
        j.manager.close().unwrap();
        drop(j);
        for dir in [&store, &wal, &sp] {
            assert_eq!(
                files_showing_marker(dir),
                Vec::<PathBuf>::new(),
                "{name}: state readable at rest"
            );
        }
        // The checkpoints and the log restore with the keys.
        let j = job(backend(name, 1), &store, &wal, Some(k.clone()));
        assert!(j.manager.restore_latest().unwrap().is_some(), "{name}");
        j.check(&model, &secrets);
        j.manager.close().unwrap();
        drop(j);
        // The savepoint restores into a fresh job with the keys.
        let fresh = root.join("fresh");
        let j = job(
            backend(name, 2),
            &fresh.join("store"),
            &fresh.join("wal"),
            Some(k),
        );
        j.manager
            .restore_savepoint(Arc::new(ObjectCheckpointStore::local(&sp).unwrap()))
            .unwrap();
        j.check(&model, &secrets);
        j.manager.close().unwrap();
    }
}

#[test]
fn keys_rotate_old_data_needs_its_key_and_new_data_uses_the_newest() {
    let d = tempfile::tempdir().unwrap();
    let (store, wal) = (d.path().join("store"), d.path().join("wal"));
    let mut rng = SplitMix64::new(3);
    let mut model = TypedModel::default();
    let j = memory_job(&store, &wal, keys(&[1]));
    j.work(&mut rng, &mut model, 200);
    j.manager.checkpoint().unwrap().wait().unwrap();
    j.manager.close().unwrap();
    drop(j);

    // Rotated: key 2 is added and becomes current.
    let j = memory_job(&store, &wal, keys(&[1, 2]));
    j.manager.restore_latest().unwrap().unwrap();
    j.work(&mut rng, &mut model, 100);
    let info = j.manager.checkpoint().unwrap().wait().unwrap();
    let secrets = j.secrets();
    j.manager.close().unwrap();
    drop(j);
    let newest = std::fs::read(
        store
            .join(highwater::cloud::layout::MANIFESTS_DIR)
            .join(highwater::cloud::layout::manifest_name(info.id)),
    )
    .unwrap();
    assert_eq!(&newest[..4], b"HWEN");
    assert_eq!(
        newest[8..12],
        2u32.to_le_bytes(),
        "sealed with the newest key"
    );

    // Without key 1 the older artifacts (and log frames) do not open: a
    // typed authentication error, not an older state.
    let j = memory_job(&store, &wal, keys(&[2]));
    let err = j.manager.restore_latest().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("key 1"), "{err}");
    j.manager.close().unwrap();
    drop(j);

    let j = memory_job(&store, &wal, keys(&[2, 1]));
    j.manager.restore_latest().unwrap().unwrap();
    j.check(&model, &secrets);
    j.manager.close().unwrap();
}

#[test]
fn a_tampered_moved_or_unsealed_object_fails_authentication_without_falling_back() {
    let d = tempfile::tempdir().unwrap();
    let (store, wal) = (d.path().join("store"), d.path().join("wal"));
    let k = keys(&[1]);
    let mut rng = SplitMix64::new(5);
    let mut model = TypedModel::default();
    let j = memory_job(&store, &wal, k.clone());
    j.work(&mut rng, &mut model, 200);
    j.manager.checkpoint().unwrap().wait().unwrap();
    j.work(&mut rng, &mut model, 200);
    let newest = j.manager.checkpoint().unwrap().wait().unwrap();
    j.manager.close().unwrap();
    drop(j);

    let layout = |id: ArtifactId| {
        store
            .join(highwater::cloud::layout::ARTIFACTS_DIR)
            .join(highwater::cloud::layout::artifact_name(id))
    };
    let ms = manifests(&*sealed(&store, k.clone()));
    let older: BTreeSet<ArtifactId> = referenced(
        ms.iter()
            .filter(|(id, _)| **id != newest.id)
            .map(|(_, m)| m),
    );
    let only_newest: Vec<ArtifactId> = referenced(ms.get(&newest.id))
        .difference(&older)
        .copied()
        .collect();
    assert!(only_newest.len() >= 2, "{only_newest:?}");
    let (a, b) = (layout(only_newest[0]), layout(only_newest[1]));
    let (bytes_a, bytes_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let plain = plain_of(&store, k.clone(), only_newest[0], &bytes_a);

    let restore = |what: &str| {
        let j = memory_job(&store, &wal, k.clone());
        let err = j.manager.restore_latest().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Authentication, "{what}: {err}");
        j.manager.close().unwrap();
    };
    // One flipped byte inside an artifact's ciphertext.
    let mut bad = bytes_a.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x04;
    std::fs::write(&a, &bad).unwrap();
    restore("flipped artifact byte");
    // An artifact's sealed bytes stored under another artifact's name.
    std::fs::write(&a, &bytes_b).unwrap();
    restore("artifact moved to another name");
    // The plaintext under its own name (what an attacker could compute).
    std::fs::write(&a, &plain).unwrap();
    restore("unsealed artifact");
    std::fs::write(&a, &bytes_a).unwrap();
    // A flipped byte in the newest manifest.
    let mpath = store
        .join(highwater::cloud::layout::MANIFESTS_DIR)
        .join(highwater::cloud::layout::manifest_name(newest.id));
    let m = std::fs::read(&mpath).unwrap();
    let mut bad = m.clone();
    bad[40] ^= 0x01;
    std::fs::write(&mpath, &bad).unwrap();
    restore("flipped manifest byte");
    std::fs::write(&mpath, &m).unwrap();

    // Untouched again, it restores; the untouched older files are in place.
    let j = memory_job(&store, &wal, k);
    j.manager.restore_latest().unwrap().unwrap();
    j.workload.check(&model).unwrap();
    j.manager.close().unwrap();
    assert!(files_in(&store.join(highwater::cloud::layout::ARTIFACTS_DIR)).len() > 2);
}

/// The plaintext of a sealed artifact, read through the keys.
fn plain_of(
    store: &Path,
    keys: Arc<dyn KeyProvider>,
    id: ArtifactId,
    sealed_bytes: &[u8],
) -> Vec<u8> {
    assert_eq!(&sealed_bytes[..4], b"HWEN");
    let plain = crate::common::block_on(sealed(store, keys).get_artifact(id)).unwrap();
    assert_eq!(ArtifactId::of(&plain), id);
    plain.to_vec()
}

#[test]
fn a_store_written_in_the_clear_is_refused_under_encryption() {
    let d = tempfile::tempdir().unwrap();
    let (store, wal) = (d.path().join("store"), d.path().join("wal"));
    let j = job(Arc::new(MemoryBackend::new()), &store, &wal, None);
    j.work(&mut SplitMix64::new(9), &mut TypedModel::default(), 50);
    j.manager.checkpoint().unwrap().wait().unwrap();
    j.manager.close().unwrap();
    drop(j);
    let j = memory_job(&store, &wal, keys(&[1]));
    let err = j.manager.restore_latest().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("not encrypted"), "{err}");
    j.manager.close().unwrap();
}
