//! Seed corpora: real files written by the library, one set per target.

use std::path::Path;
use std::sync::Arc;

use highwater::cloud::ObjectCheckpointStore;
use highwater::memory::MemoryBackend;
use highwater::{CheckpointConfig, StateManager, ValueStateDescriptor};
use highwater_wal::{SyncPolicy, Wal, WalBatch, WalConfig};

use crate::Target;

/// The log configuration of the WAL target and its seeds: small segments,
/// no fsync (the harness is about decoding).
pub fn wal_config() -> WalConfig {
    WalConfig::default()
        .sync_policy(SyncPolicy::Never)
        .segment_size(64 << 10)
}

/// The keys of the [`Target::Sealed`] harness and its seeds.
pub fn fuzz_keys() -> Arc<dyn highwater_core::KeyProvider> {
    Arc::new(highwater_core::Keyring::new(
        1,
        highwater_core::DataKey::new([0x5a; 32]),
    ))
}

/// The context object envelopes of the [`Target::Sealed`] harness are
/// sealed for.
pub const SEALED_CONTEXT: &[u8] = b"fuzz";

/// [`wal_config`] with encryption under [`fuzz_keys`].
pub fn sealed_wal_config() -> WalConfig {
    wal_config().encryption(highwater_core::Cipher::new(fuzz_keys()))
}

/// The seed inputs of `target`, made fresh by the library.
pub fn seeds(target: Target) -> Vec<Vec<u8>> {
    match target {
        Target::Manifest | Target::ManifestBody => checkpoint_files().0,
        Target::Artifact | Target::ArtifactBody => checkpoint_files().1,
        Target::WalSegment => wal_files().into_iter().map(|(_, b)| b).collect(),
        Target::RaftFrame => highwater_raft::fuzzing::sample_frame_bodies(),
        Target::RaftSnapshot => {
            let snapshot = highwater_raft::fuzzing::sample_snapshot();
            let mut raw = vec![0u8];
            raw.extend_from_slice(&snapshot);
            let mut payload = vec![1u8];
            payload.extend_from_slice(snapshot.get(18..).unwrap_or_default());
            vec![raw, payload]
        }
        Target::RedisArtifact => redis_artifacts(),
        Target::Savepoint => savepoint_manifests()
            .into_iter()
            .flat_map(|m| {
                let mut raw = vec![0u8];
                raw.extend_from_slice(&m);
                let mut fitted = vec![1u8];
                fitted.extend_from_slice(&m);
                [raw, fitted]
            })
            .collect(),
        Target::Sealed => {
            let cipher = highwater_core::Cipher::new(fuzz_keys());
            let mut out = Vec::new();
            for object in checkpoint_files().0.into_iter().take(2) {
                let mut input = vec![0u8];
                input.extend(cipher.seal(SEALED_CONTEXT, &object).expect("seal a seed"));
                out.push(input);
            }
            for (_, segment) in wal_files_with(sealed_wal_config()) {
                let mut input = vec![1u8];
                input.extend(segment);
                out.push(input);
            }
            out
        }
    }
}

/// The manifests of real savepoints: of a job with value, list (with a
/// TTL) and map state, and of an empty one.
fn savepoint_manifests() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entries in [300u32, 0] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let m = StateManager::builder()
            .backend(Arc::new(MemoryBackend::new()))
            .store(Arc::new(
                ObjectCheckpointStore::local(dir.path().join("job")).expect("a local store"),
            ))
            .build()
            .expect("a state manager");
        let ctx = m.keyed_state("orders").expect("an operator");
        let v = ctx
            .value_state::<u32, String>(&ValueStateDescriptor::new("v"))
            .expect("a value state");
        let l = ctx
            .list_state::<u32, u64>(&highwater::ListStateDescriptor::new("l").with_ttl(
                highwater::TtlConfig::new(std::time::Duration::from_secs(60)),
            ))
            .expect("a list state");
        let mp = ctx
            .map_state::<u32, u8, u16>(&highwater::MapStateDescriptor::new("m"))
            .expect("a map state");
        for k in 0..entries {
            v.update(&k, &format!("value {k}")).expect("an update");
            l.add_all(&k, &[u64::from(k), 7]).expect("an append");
            mp.put(&k, &(k as u8), &(k as u16)).expect("a put");
        }
        let sp = dir.path().join("sp");
        m.savepoint(Arc::new(
            ObjectCheckpointStore::local(&sp).expect("a local store"),
        ))
        .expect("a savepoint")
        .wait()
        .expect("a written savepoint");
        m.close().expect("close the manager");
        let manifests = sp.join(highwater::cloud::layout::MANIFESTS_DIR);
        for e in std::fs::read_dir(manifests).expect("the savepoint's manifests") {
            out.push(std::fs::read(e.expect("an entry").path()).expect("a manifest"));
        }
    }
    out
}

/// The manifests and artifacts of a real job: a full checkpoint, then
/// incrementals with updates and deletes, in a local directory store.
fn checkpoint_files() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(ObjectCheckpointStore::local(dir.path()).expect("a local store"));
    let mut config = CheckpointConfig::default();
    config.key_groups_per_artifact = 32;
    let m = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(store)
        .config(config)
        .build()
        .expect("a state manager");
    let state = m.keyed_state("orders").expect("an operator");
    let v = state
        .value_state::<u32, String>(&ValueStateDescriptor::new("v"))
        .expect("a value state");
    for round in 0..3u32 {
        for k in 0..(if round == 0 { 400 } else { 40 }) {
            v.update(&(k * (round + 1)), &format!("value {k} of round {round}"))
                .expect("an update");
        }
        for k in 0..5 {
            v.clear(&(k * 7 + round)).expect("a delete");
        }
        m.checkpoint()
            .expect("a checkpoint")
            .wait()
            .expect("a committed checkpoint");
    }
    m.close().expect("close the manager");
    let read = |sub: &str| -> Vec<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(dir.path().join(sub))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter_map(|p| std::fs::read(p).ok())
            .collect()
    };
    (
        read(highwater::cloud::layout::MANIFESTS_DIR),
        read(highwater::cloud::layout::ARTIFACTS_DIR),
    )
}

/// The first (and only) segment of real, closed logs (name and bytes):
/// batches of puts and deletes with and without event time, compressed
/// and not.
pub fn wal_files() -> Vec<(String, Vec<u8>)> {
    wal_files_with(wal_config())
}

/// [`wal_files`] written with `base` (compression added where the seed
/// compresses).
fn wal_files_with(base: WalConfig) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (batches, value_len, compress) in [(20u32, 100usize, false), (3, 9000, true), (1, 0, false)]
    {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = if compress {
            base.clone().compression(1024)
        } else {
            base.clone()
        };
        let (wal, _) = Wal::open(dir.path(), config).expect("a fresh log");
        for i in 0..batches {
            let mut batch = WalBatch::new();
            batch.put(
                format!("key-{i}").as_bytes(),
                &vec![i as u8; value_len],
                None,
            );
            batch.put(format!("k{i}").as_bytes(), b"v", Some(u64::from(i) * 1000));
            if i % 3 == 0 {
                batch.delete(format!("key-{}", i / 2).as_bytes(), None);
            }
            wal.append_batch(&batch).expect("an append");
        }
        wal.close().expect("close the log");
        let mut segments = segment_files(dir.path());
        assert_eq!(segments.len(), 1, "a seed log fits one segment");
        out.append(&mut segments);
    }
    out
}

fn segment_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let bytes = std::fs::read(e.path()).ok()?;
                    Some((name, bytes))
                })
                .collect()
        })
        .unwrap_or_default();
    // Segments only: the DURABLE file is not a segment.
    files.retain(|(name, bytes)| name != "DURABLE" && !bytes.is_empty());
    files.sort();
    files
}

/// A small inline artifact and a chunked one, in the harness's input
/// form (header, then `u16`-length-prefixed parts).
fn redis_artifacts() -> Vec<Vec<u8>> {
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    [(&data[..40], 64), (&data[..], 64), (&data[..], 100)]
        .into_iter()
        .map(|(d, chunk)| {
            let (header, parts) = highwater_redis::fuzzing::encode(d, chunk);
            let mut input = header;
            for p in parts {
                input.extend_from_slice(&(p.len() as u16).to_le_bytes());
                input.extend_from_slice(&p);
            }
            input
        })
        .collect()
}
