//! Shared helpers: the servers' URLs from the environment, unique
//! prefixes, stores on them, and real artifacts.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use highwater_cloud::{CloudOptions, ObjectCheckpointStore};
use highwater_core::{
    ArtifactId, ArtifactKind, CheckpointId, CheckpointStore, EncodeOptions, RecordWriter,
};

/// The variable naming the S3 bucket URL (moto's server).
pub const S3_URL_VAR: &str = "HIGHWATER_S3_URL";
/// The variable naming the Azure container URL (azurite).
pub const AZURE_URL_VAR: &str = "HIGHWATER_AZURE_URL";

fn var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the tests through `cargo xtask test`, or start the \
             servers with `cargo xtask services start` and export what it prints"
        ),
    }
}

/// A prefix no other test (or earlier run) uses.
pub fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    #[expect(
        clippy::disallowed_methods,
        reason = "a unique name, not the time of state"
    )]
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "{name}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `base` (a bucket URL such as `s3://highwater/`) joined with `prefix`.
pub fn join(base: &str, prefix: &str) -> String {
    format!("{}/{prefix}", base.trim_end_matches('/'))
}

/// The S3 URL of a fresh prefix on the shared moto server.
pub fn s3_url(name: &str) -> String {
    join(&var(S3_URL_VAR), &unique(name))
}

/// The Azure URL of a fresh prefix on the shared azurite.
pub fn azure_url(name: &str) -> String {
    join(&var(AZURE_URL_VAR), &unique(name))
}

/// A store on the shared moto server under a fresh prefix.
pub fn s3_store(name: &str) -> ObjectCheckpointStore {
    let url = s3_url(name);
    ObjectCheckpointStore::from_url(&url, &CloudOptions::new())
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// A store on the shared azurite under a fresh prefix.
pub fn azure_store(name: &str) -> ObjectCheckpointStore {
    let url = azure_url(name);
    ObjectCheckpointStore::from_url(&url, &CloudOptions::new())
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// A real encoded artifact of about `bytes` bytes whose records carry
/// seeded pseudo-random (incompressible) values.
pub fn big_artifact(seed: u64, bytes: usize) -> Bytes {
    let mut w = RecordWriter::new(ArtifactKind::Entries, bytes);
    let mut x = seed;
    let mut written = 0;
    let mut i = 0u64;
    while written < bytes {
        let key = format!("key-{i:010}");
        let value: Vec<u8> = (0..512)
            .map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            })
            .collect();
        w.push(key.as_bytes(), Some(&value)).expect("push a record");
        written += key.len() + value.len();
        i += 1;
    }
    Bytes::from(
        w.finish(&EncodeOptions::default())
            .expect("encode an artifact")
            .bytes,
    )
}

/// A checkpoint as the `StateManager` takes one: every artifact, then the
/// manifest, which is committed only when every upload succeeded.
pub async fn checkpoint(
    store: &ObjectCheckpointStore,
    id: u64,
    artifacts: &[Bytes],
) -> highwater_core::Result<()> {
    for a in artifacts {
        store.put_artifact(ArtifactId::of(a), a.clone()).await?;
    }
    let ids: Vec<String> = artifacts
        .iter()
        .map(|a| ArtifactId::of(a).to_hex())
        .collect();
    store
        .commit_manifest(CheckpointId(id), Bytes::from(ids.join("\n")))
        .await
}
