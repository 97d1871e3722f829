//! Two writers — two store objects, each with its own client and
//! connections, as two processes would have — take a checkpoint with the
//! same id at the same moment: exactly one commit wins, the loser gets
//! `Error::AlreadyExists`, and the winner's checkpoint is whole and
//! readable.

use std::sync::Arc;

use bytes::Bytes;
use highwater_cloud::{CloudOptions, ObjectCheckpointStore};
use highwater_core::{
    ArtifactKind, CheckpointId, CheckpointStore, Error, ErrorKind, Manifest, verify_artifact,
};
use highwater_testkit::store::{sample_artifact, sample_manifest};

use super::common::{azure_url, s3_url};

/// Rounds of the race (a fresh checkpoint id each).
const ROUNDS: u64 = 8;

/// One writer's checkpoint: its own artifacts plus one both share, then
/// the commit. Returns the manifest bytes it tried to commit and the
/// outcome of the commit.
async fn checkpoint(
    store: Arc<ObjectCheckpointStore>,
    id: u64,
    writer: u64,
    barrier: Arc<tokio::sync::Barrier>,
) -> (Vec<u8>, highwater_core::Result<()>) {
    let shared = sample_artifact(1_000 + id, ArtifactKind::Entries, 200, 64);
    let own: Vec<_> = (0..3)
        .map(|i| sample_artifact(id * 100 + writer * 10 + i, ArtifactKind::Entries, 200, 64))
        .collect();
    let mut all = own;
    all.push(shared);
    barrier.wait().await;
    for a in &all {
        store
            .put_artifact(a.id(), Bytes::from(a.bytes.clone()))
            .await
            .unwrap_or_else(|e| panic!("writer {writer}: put artifact: {e}"));
    }
    let manifest = sample_manifest(id, &all, writer);
    let outcome = store
        .commit_manifest(CheckpointId(id), Bytes::from(manifest.clone()))
        .await;
    (manifest, outcome)
}

async fn race(url: &str) {
    let open = || {
        Arc::new(
            ObjectCheckpointStore::from_url(url, &CloudOptions::new())
                .unwrap_or_else(|e| panic!("open {url}: {e}")),
        )
    };
    let (a, b) = (open(), open());
    let mut wins = [0u64; 2];
    for id in 1..=ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let ta = tokio::spawn(checkpoint(a.clone(), id, 0, barrier.clone()));
        let tb = tokio::spawn(checkpoint(b.clone(), id, 1, barrier));
        let (ma, ra) = ta.await.expect("writer 0 task");
        let (mb, rb) = tb.await.expect("writer 1 task");
        let (winner, loser_err) = match (ra, rb) {
            (Ok(()), Err(e)) => (0, e),
            (Err(e), Ok(())) => (1, e),
            (ra, rb) => panic!("{url} id={id}: exactly one commit must win: {ra:?} / {rb:?}"),
        };
        wins[winner] += 1;
        assert!(
            matches!(loser_err, Error::AlreadyExists(_)),
            "{url} id={id}: the loser must get AlreadyExists, got {loser_err}"
        );
        assert_eq!(loser_err.kind(), ErrorKind::AlreadyExists);

        // Nothing is corrupted: both writers read the winner's manifest,
        // byte for byte, and every artifact it names verifies.
        let want = if winner == 0 { &ma } else { &mb };
        for reader in [&a, &b] {
            let got = reader
                .get_manifest(CheckpointId(id))
                .await
                .unwrap_or_else(|e| panic!("{url} id={id}: read the manifest: {e}"));
            assert_eq!(
                got.as_ref(),
                want.as_slice(),
                "{url} id={id}: stored manifest"
            );
            let m = Manifest::decode(&got).unwrap_or_else(|e| panic!("{url}: decode: {e}"));
            assert_eq!(m.checkpoint_id, CheckpointId(id));
            for r in m.artifacts() {
                let bytes = reader
                    .get_artifact(r.id)
                    .await
                    .unwrap_or_else(|e| panic!("{url} id={id}: artifact {}: {e}", r.id));
                verify_artifact(&bytes).unwrap_or_else(|e| panic!("{url}: verify: {e}"));
                assert_eq!(bytes.len() as u64, r.stored_bytes);
            }
        }
    }
    let want: Vec<CheckpointId> = (1..=ROUNDS).map(CheckpointId).collect();
    assert_eq!(
        a.list_manifests().await.unwrap(),
        want,
        "{url}: every id once"
    );
    assert_eq!(
        b.list_manifests().await.unwrap(),
        want,
        "{url}: every id once"
    );
    println!("{url}: wins per writer {wins:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_race_on_s3_one_wins() {
    race(&s3_url("race")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_race_on_azure_one_wins() {
    race(&azure_url("race")).await;
}
