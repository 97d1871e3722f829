//! The conformance suite of [`CheckpointStore`] implementations.
//!
//! Every case is a public `async fn` taking a factory that returns a future
//! of a fresh, empty store. [`store_conformance!`](crate::store_conformance)
//! turns each case into its own `#[test]`, with its own multi-threaded tokio
//! runtime. Artifacts are real encodings built with
//! [`RecordWriter`] and manifests real
//! [`Manifest`] encodings.
//!
//! | case | what must hold |
//! | --- | --- |
//! | [`artifact_round_trip`] | put → `Written`; get returns identical bytes that decode; has and list agree |
//! | [`artifact_dedup`] | a second put of an id → `AlreadyPresent`, no bytes written, listed once |
//! | [`artifact_id_mismatch_refused`] | data whose xxh3-128 is not the id is refused and not stored |
//! | [`missing_is_not_found`] | get of a missing artifact or manifest → `Error::NotFound` |
//! | [`delete_is_idempotent`] | deletes of missing objects succeed; deleted objects are gone and can be put again |
//! | [`manifest_commit_is_create_only`] | a second commit of an id → `Error::AlreadyExists`; the first stays |
//! | [`list_manifests_ascending_and_committed_only`] | numeric ascending order; deleted and refused ones absent |
//! | [`concurrent_commits_single_winner`] | 8 tasks commit one id: exactly one succeeds, its bytes are stored |
//! | [`large_artifact_round_trip`] | a 12 MiB artifact round-trips byte for byte |
//! | [`corruption_is_detected_after_get`] | stored bytes are returned unchanged, so any flipped bit is caught by the decoder |
//! | [`counters_increase`] | each request kind moves its counter; no counter ever decreases |
//! | [`scopes_are_isolated`] | a scope's artifacts and manifests are invisible to the root and to other scopes; unsafe scope names are refused (or the store refuses every scope) |

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use highwater_core::{
    ArtifactId, ArtifactKind, ArtifactRef, BoxFuture, CheckpointId, CheckpointKind,
    CheckpointStore, DecodeLimits, EncodeOptions, EncodedArtifact, Error, ErrorKind, KeyGroupRange,
    Layer, LayerKind, Manifest, PutOutcome, RecordWriter, StoreCounters, decode_artifact,
};

use crate::fixture::{Guards, IntoStore};
use crate::keys::{encode_key, plain_value};
use crate::rng::SplitMix64;

/// A factory of fresh, empty stores.
pub type StoreFactory<'a> = &'a dyn Fn() -> BoxFuture<'static, Arc<dyn CheckpointStore>>;

/// The names of every case, in the order the macro emits them.
pub const CASE_NAMES: &[&str] = crate::__store_cases!(__case_names {});

/// Runs every case in order, stopping at the first failure. Prefer
/// [`store_conformance!`](crate::store_conformance), which reports each
/// case as its own test.
pub async fn run_all(factory: StoreFactory<'_>) {
    crate::__store_cases!(__store_run_all { factory })
}

/// The runtime each store test runs on: multi-threaded with two workers,
/// so that concurrent cases really run in parallel, with every driver the
/// build enables.
///
/// # Panics
///
/// Panics when the runtime cannot be built.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build the test runtime: {e}"))
}

/// Drops `guards` inside `runtime` (guards such as test servers may need
/// it), then shuts the runtime down. Used by the macro.
pub fn finish(runtime: tokio::runtime::Runtime, guards: Guards) {
    {
        let _entered = runtime.enter();
        drop(guards);
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
}

/// Adapts a synchronous user factory (see [`IntoStore`]) to a
/// [`StoreFactory`]. The factory is called when the case asks for a store,
/// inside the runtime. Used by the macro.
pub fn sync_factory<'a, F, R>(
    build: &'a F,
    guards: &'a Guards,
) -> impl Fn() -> BoxFuture<'static, Arc<dyn CheckpointStore>> + 'a
where
    F: Fn() -> R,
    R: IntoStore,
{
    move || {
        let store = build().into_store(guards);
        Box::pin(async move { store })
    }
}

/// Adapts an asynchronous user factory to a [`StoreFactory`]. Used by the
/// macro.
pub fn async_factory<'a, F, Fut, R>(
    build: &'a F,
    guards: &'a Guards,
) -> impl Fn() -> BoxFuture<'static, Arc<dyn CheckpointStore>> + 'a
where
    F: Fn() -> Fut,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoStore,
{
    move || {
        let fut = build();
        let guards = guards.clone();
        Box::pin(async move { fut.await.into_store(&guards) })
    }
}

// ---------------------------------------------------------------------------
// Fixtures: real artifacts and manifests.

/// Builds a real encoded artifact of `records` sorted records whose values
/// carry `value_len` bytes of seeded random payload. Random payloads do not
/// compress, so large artifacts stay large; small `value_len` with many
/// records exercises the zstd path through the record framing.
pub fn sample_artifact(
    seed: u64,
    kind: ArtifactKind,
    records: usize,
    value_len: usize,
) -> EncodedArtifact {
    let mut rng = SplitMix64::new(seed);
    let mut keys: Vec<Vec<u8>> = (0..records)
        .map(|i| {
            encode_key(
                (i % 128) as u16,
                "store-suite",
                "s",
                &(i as u64).to_be_bytes(),
                &[],
                &[],
            )
        })
        .collect();
    keys.sort();
    let mut w = RecordWriter::new(kind, records * (value_len + 32));
    for (i, k) in keys.iter().enumerate() {
        if kind == ArtifactKind::Delta && i % 5 == 4 {
            must(w.push(k, None), "RecordWriter::push");
        } else {
            let v = plain_value(&rng.bytes(value_len));
            must(w.push(k, Some(&v)), "RecordWriter::push");
        }
    }
    must(w.finish(&EncodeOptions::default()), "RecordWriter::finish")
}

/// A compressible artifact (repetitive values), so the stored payload is a
/// zstd frame.
fn compressible_artifact(seed: u64, records: usize) -> EncodedArtifact {
    let mut w = RecordWriter::new(ArtifactKind::Entries, records * 64);
    for i in 0..records {
        let k = encode_key(
            7,
            "store-suite",
            "zstd",
            &(i as u64).to_be_bytes(),
            &[],
            &[],
        );
        let v = plain_value(format!("value-{seed}-{:04}", i % 10).repeat(4).as_bytes());
        must(w.push(&k, Some(&v)), "RecordWriter::push");
    }
    must(w.finish(&EncodeOptions::default()), "RecordWriter::finish")
}

/// A valid encoded manifest of checkpoint `id` referencing `artifacts`;
/// `salt` goes into its properties so that equal ids can carry different
/// bytes.
pub fn sample_manifest(id: u64, artifacts: &[EncodedArtifact], salt: u64) -> Vec<u8> {
    let refs = artifacts
        .iter()
        .map(|a| ArtifactRef {
            operator: "store-suite".into(),
            key_groups: KeyGroupRange { start: 0, end: 128 },
            id: a.id(),
            entries: a.entries,
            logical_bytes: a.raw_len,
            stored_bytes: a.bytes.len() as u64,
            codec: a.codec,
        })
        .collect();
    let manifest = Manifest {
        checkpoint_id: CheckpointId(id),
        parent: id.checked_sub(1).map(CheckpointId),
        kind: CheckpointKind::Full,
        created_at_ms: 1_700_000_000_000 + id,
        wal_position: Some(id * 10),
        max_parallelism: 128,
        layers: vec![Layer {
            checkpoint_id: CheckpointId(id),
            kind: LayerKind::Full,
            artifacts: refs,
        }],
        properties: [("salt".to_string(), salt.to_string())].into(),
        schemas: Vec::new(),
    };
    must(manifest.encode(), "Manifest::encode")
}

fn must<T>(r: highwater_core::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error: {e} (kind={:?})", e.kind()))
}

fn ctx(store: &dyn CheckpointStore, case: &str) -> String {
    format!("store={} case={case}", store.name())
}

async fn put(store: &dyn CheckpointStore, a: &EncodedArtifact, ctx: &str) -> PutOutcome {
    must(
        store
            .put_artifact(a.id(), Bytes::from(a.bytes.clone()))
            .await,
        &format!("{ctx}: put_artifact {}", a.id()),
    )
}

async fn get(store: &dyn CheckpointStore, id: ArtifactId, ctx: &str) -> Bytes {
    must(
        store.get_artifact(id).await,
        &format!("{ctx}: get_artifact {id}"),
    )
}

/// Checks `got` is byte-identical to `want` without dumping megabytes.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: bytes differ: got_len={} want_len={} first_difference_at={first}",
            got.len(),
            want.len()
        );
    }
}

/// Decodes an artifact and returns its records.
fn decode_records(bytes: &[u8], what: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let d = must(decode_artifact(bytes, &DecodeLimits::default()), what);
    d.records()
        .map(|r| must(r, what))
        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
        .collect()
}

// ---------------------------------------------------------------------------
// Cases.

/// Entries, delta, raw and zstd artifacts: `put_artifact` reports
/// `Written`, `get_artifact` returns byte-identical data that decodes to
/// the records written, `has_artifact` is true for them and false for an
/// unknown id, and `list_artifacts` holds exactly the stored ids.
pub async fn artifact_round_trip(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "artifact_round_trip");
    let artifacts = [
        sample_artifact(1, ArtifactKind::Entries, 3, 8),
        sample_artifact(2, ArtifactKind::Delta, 50, 40),
        sample_artifact(3, ArtifactKind::Entries, 0, 0),
        compressible_artifact(4, 500),
    ];
    assert!(
        artifacts
            .iter()
            .any(|a| a.codec == highwater_core::Codec::Zstd),
        "{ctx}: fixture should include a compressed artifact"
    );
    assert!(
        must(s.list_artifacts().await, &ctx).is_empty(),
        "{ctx}: a fresh store lists artifacts"
    );
    for a in &artifacts {
        assert!(
            !must(s.has_artifact(a.id()).await, &ctx),
            "{ctx}: has before put"
        );
        assert_eq!(
            put(s, a, &ctx).await,
            PutOutcome::Written,
            "{ctx}: first put"
        );
    }
    for a in &artifacts {
        let got = get(s, a.id(), &ctx).await;
        assert_same_bytes(&got, &a.bytes, &format!("{ctx}: get {}", a.id()));
        let what = format!("{ctx}: decode {}", a.id());
        assert_eq!(
            decode_records(&got, &what),
            decode_records(&a.bytes, &what),
            "{what}: records"
        );
        assert!(
            must(s.has_artifact(a.id()).await, &ctx),
            "{ctx}: has after put"
        );
    }
    let listed: BTreeSet<ArtifactId> = must(s.list_artifacts().await, &ctx).into_iter().collect();
    let want: BTreeSet<ArtifactId> = artifacts.iter().map(EncodedArtifact::id).collect();
    assert_eq!(listed, want, "{ctx}: list_artifacts");
    let unknown = sample_artifact(99, ArtifactKind::Entries, 2, 2).id();
    assert!(
        !must(s.has_artifact(unknown).await, &ctx),
        "{ctx}: has of an unknown id"
    );
    assert!(
        must(s.list_manifests().await, &ctx).is_empty(),
        "{ctx}: artifacts must not appear as manifests"
    );
}

/// A second put of a stored id reports `AlreadyPresent`, writes no bytes
/// (content addressing: unchanged data is never uploaded twice), leaves the
/// stored bytes as they were, and the id is listed once.
pub async fn artifact_dedup(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "artifact_dedup");
    let a = sample_artifact(10, ArtifactKind::Entries, 20, 100);
    assert_eq!(
        put(s, &a, &ctx).await,
        PutOutcome::Written,
        "{ctx}: first put"
    );
    let before = s.counters();
    assert_eq!(
        put(s, &a, &ctx).await,
        PutOutcome::AlreadyPresent,
        "{ctx}: second put"
    );
    assert_eq!(
        put(s, &a, &ctx).await,
        PutOutcome::AlreadyPresent,
        "{ctx}: third put"
    );
    let after = s.counters();
    assert_eq!(
        after.bytes_written, before.bytes_written,
        "{ctx}: a put of an already stored artifact wrote bytes"
    );
    let listed = must(s.list_artifacts().await, &ctx);
    assert_eq!(listed, vec![a.id()], "{ctx}: list after repeated puts");
    assert_same_bytes(&get(s, a.id(), &ctx).await, &a.bytes, &ctx);
    // Two concurrent puts of one new artifact: at least one writes it (both
    // may, with identical bytes), and the result is stored once.
    let b = sample_artifact(11, ArtifactKind::Entries, 20, 100);
    let (r1, r2) = tokio::join!(
        s.put_artifact(b.id(), Bytes::from(b.bytes.clone())),
        s.put_artifact(b.id(), Bytes::from(b.bytes.clone()))
    );
    let outcomes = [must(r1, &ctx), must(r2, &ctx)];
    assert!(
        outcomes.contains(&PutOutcome::Written),
        "{ctx}: concurrent puts of one new artifact: {outcomes:?}"
    );
    assert_same_bytes(&get(s, b.id(), &ctx).await, &b.bytes, &ctx);
    assert_eq!(
        must(s.list_artifacts().await, &ctx).len(),
        2,
        "{ctx}: list after concurrent puts"
    );
}

/// Data whose xxh3-128 is not the given id is refused with an `Invalid` or
/// `Corruption` error, and nothing is stored under that id.
pub async fn artifact_id_mismatch_refused(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "artifact_id_mismatch_refused");
    let a = sample_artifact(20, ArtifactKind::Entries, 5, 10);
    let b = sample_artifact(21, ArtifactKind::Entries, 5, 10);
    for (id, data) in [
        (a.id(), b.bytes.clone()),
        (ArtifactId(a.id().0 ^ 1), a.bytes.clone()),
        (a.id(), a.bytes[..a.bytes.len() - 1].to_vec()),
    ] {
        let r = s.put_artifact(id, Bytes::from(data)).await;
        match r {
            Err(e) if matches!(e.kind(), ErrorKind::Invalid | ErrorKind::Corruption) => {}
            Err(e) => panic!(
                "{ctx}: a mismatched id must be refused as invalid or corrupt, got kind={:?}: {e}",
                e.kind()
            ),
            Ok(outcome) => panic!("{ctx}: a mismatched id was accepted: {outcome:?}"),
        }
        assert!(
            !must(s.has_artifact(id).await, &ctx),
            "{ctx}: refused artifact is stored"
        );
        assert!(
            matches!(s.get_artifact(id).await, Err(Error::NotFound(_))),
            "{ctx}: refused artifact is readable"
        );
    }
    assert!(
        must(s.list_artifacts().await, &ctx).is_empty(),
        "{ctx}: refused artifacts are listed"
    );
    // The real data can still be stored under its real id afterwards.
    assert_eq!(
        put(s, &a, &ctx).await,
        PutOutcome::Written,
        "{ctx}: put after refusal"
    );
}

/// Reading a missing artifact or manifest fails with `Error::NotFound`
/// (kind `NotFound`), on a fresh store and after other objects exist.
pub async fn missing_is_not_found(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "missing_is_not_found");
    let check = |r: highwater_core::Result<Bytes>, what: &str| match r {
        Err(Error::NotFound(_)) => {}
        Err(e) => panic!(
            "{ctx}: {what}: expected Error::NotFound, got kind={:?}: {e}",
            e.kind()
        ),
        Ok(b) => panic!("{ctx}: {what}: returned {} bytes", b.len()),
    };
    let a = sample_artifact(30, ArtifactKind::Entries, 5, 10);
    check(s.get_artifact(a.id()).await, "artifact in a fresh store");
    check(
        s.get_manifest(CheckpointId(1)).await,
        "manifest in a fresh store",
    );
    put(s, &a, &ctx).await;
    must(
        s.commit_manifest(
            CheckpointId(1),
            Bytes::from(sample_manifest(1, std::slice::from_ref(&a), 0)),
        )
        .await,
        &ctx,
    );
    let other = sample_artifact(31, ArtifactKind::Entries, 5, 10);
    check(s.get_artifact(other.id()).await, "another artifact");
    check(s.get_manifest(CheckpointId(2)).await, "another manifest");
    check(
        s.get_manifest(CheckpointId(u64::MAX)).await,
        "manifest u64::MAX",
    );
    let err = s
        .get_artifact(ArtifactId(0))
        .await
        .expect_err("id 0 is not stored");
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "{ctx}: kind of a missing artifact"
    );
}

/// Deleting a missing artifact or manifest succeeds; a deleted object is
/// gone from has, get and list; deleting twice succeeds; a deleted artifact
/// can be put again (`Written`, not a stale `AlreadyPresent`) and a deleted
/// manifest id committed again.
pub async fn delete_is_idempotent(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "delete_is_idempotent");
    let a = sample_artifact(40, ArtifactKind::Entries, 5, 10);
    let keep = sample_artifact(41, ArtifactKind::Entries, 5, 10);
    must(
        s.delete_artifact(a.id()).await,
        &format!("{ctx}: delete missing artifact"),
    );
    must(
        s.delete_manifest(CheckpointId(5)).await,
        &format!("{ctx}: delete missing manifest"),
    );
    put(s, &a, &ctx).await;
    put(s, &keep, &ctx).await;
    must(s.delete_artifact(a.id()).await, &ctx);
    assert!(
        !must(s.has_artifact(a.id()).await, &ctx),
        "{ctx}: has after delete"
    );
    assert!(
        matches!(s.get_artifact(a.id()).await, Err(Error::NotFound(_))),
        "{ctx}: get after delete must be NotFound"
    );
    assert_eq!(
        must(s.list_artifacts().await, &ctx),
        vec![keep.id()],
        "{ctx}: list after delete"
    );
    must(
        s.delete_artifact(a.id()).await,
        &format!("{ctx}: second delete"),
    );
    assert_eq!(
        put(s, &a, &ctx).await,
        PutOutcome::Written,
        "{ctx}: put after delete must write again"
    );
    assert_same_bytes(&get(s, a.id(), &ctx).await, &a.bytes, &ctx);
    assert_same_bytes(&get(s, keep.id(), &ctx).await, &keep.bytes, &ctx);

    let m1 = sample_manifest(5, std::slice::from_ref(&a), 1);
    let m2 = sample_manifest(5, std::slice::from_ref(&a), 2);
    must(
        s.commit_manifest(CheckpointId(5), Bytes::from(m1)).await,
        &ctx,
    );
    must(s.delete_manifest(CheckpointId(5)).await, &ctx);
    assert!(
        matches!(
            s.get_manifest(CheckpointId(5)).await,
            Err(Error::NotFound(_))
        ),
        "{ctx}: get of a deleted manifest must be NotFound"
    );
    assert!(
        must(s.list_manifests().await, &ctx).is_empty(),
        "{ctx}: deleted manifest listed"
    );
    must(
        s.delete_manifest(CheckpointId(5)).await,
        &format!("{ctx}: second manifest delete"),
    );
    must(
        s.commit_manifest(CheckpointId(5), Bytes::from(m2.clone()))
            .await,
        &format!("{ctx}: commit after delete"),
    );
    assert_same_bytes(
        &must(s.get_manifest(CheckpointId(5)).await, &ctx),
        &m2,
        &format!("{ctx}: manifest committed after delete"),
    );
}

/// A committed manifest reads back byte-identical and decodes; a second
/// commit of the same id fails with `Error::AlreadyExists` (kind
/// `AlreadyExists`) whatever its bytes, and the first manifest stays.
pub async fn manifest_commit_is_create_only(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "manifest_commit_is_create_only");
    let a = sample_artifact(50, ArtifactKind::Entries, 5, 10);
    put(s, &a, &ctx).await;
    let first = sample_manifest(3, std::slice::from_ref(&a), 1);
    must(
        s.commit_manifest(CheckpointId(3), Bytes::from(first.clone()))
            .await,
        &ctx,
    );
    let got = must(s.get_manifest(CheckpointId(3)).await, &ctx);
    assert_same_bytes(&got, &first, &format!("{ctx}: get_manifest"));
    let decoded = must(
        Manifest::decode(&got),
        &format!("{ctx}: decode stored manifest"),
    );
    assert_eq!(decoded.checkpoint_id, CheckpointId(3), "{ctx}: decoded id");
    for (what, bytes) in [
        (
            "different bytes",
            sample_manifest(3, std::slice::from_ref(&a), 2),
        ),
        ("identical bytes", first.clone()),
    ] {
        match s.commit_manifest(CheckpointId(3), Bytes::from(bytes)).await {
            Err(e @ Error::AlreadyExists(_)) => {
                assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{ctx}: kind");
            }
            Err(e) => panic!(
                "{ctx}: second commit ({what}) must fail with AlreadyExists, got kind={:?}: {e}",
                e.kind()
            ),
            Ok(()) => panic!("{ctx}: second commit ({what}) of manifest 3 succeeded"),
        }
        assert_same_bytes(
            &must(s.get_manifest(CheckpointId(3)).await, &ctx),
            &first,
            &format!("{ctx}: manifest after a refused commit ({what})"),
        );
    }
    assert_eq!(
        must(s.list_manifests().await, &ctx),
        vec![CheckpointId(3)],
        "{ctx}: list after refused commits"
    );
    assert_eq!(
        must(s.list_artifacts().await, &ctx),
        vec![a.id()],
        "{ctx}: manifests must not appear as artifacts"
    );
}

/// `list_manifests` returns committed ids in numeric ascending order (ids
/// chosen so that a lexicographic order of their decimal or unpadded forms
/// would differ), without deleted ones and without duplicates.
pub async fn list_manifests_ascending_and_committed_only(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "list_manifests_ascending_and_committed_only");
    let ids: [u64; 10] = [10, 2, 100, 9, 1, 1 << 40, 255, 256, 65_536, 0];
    for id in ids {
        let m = sample_manifest(id, &[], id);
        must(
            s.commit_manifest(CheckpointId(id), Bytes::from(m)).await,
            &format!("{ctx}: commit {id}"),
        );
    }
    let mut want: Vec<CheckpointId> = ids.iter().copied().map(CheckpointId).collect();
    want.sort();
    assert_eq!(
        must(s.list_manifests().await, &ctx),
        want,
        "{ctx}: ascending order"
    );
    must(s.delete_manifest(CheckpointId(9)).await, &ctx);
    must(s.delete_manifest(CheckpointId(1 << 40)).await, &ctx);
    want.retain(|id| id.0 != 9 && id.0 != 1 << 40);
    let dup = s
        .commit_manifest(CheckpointId(2), Bytes::from(sample_manifest(2, &[], 77)))
        .await;
    assert!(dup.is_err(), "{ctx}: duplicate commit succeeded");
    assert_eq!(
        must(s.list_manifests().await, &ctx),
        want,
        "{ctx}: after deletes and a refused commit"
    );
    for id in &want {
        let got = must(s.get_manifest(*id).await, &ctx);
        let m = must(
            Manifest::decode(&got),
            &format!("{ctx}: decode manifest {id}"),
        );
        assert_eq!(
            m.checkpoint_id, *id,
            "{ctx}: manifest content under id {id}"
        );
    }
}

/// Eight tasks commit the same id at once (released together by a
/// barrier), with different bytes: exactly one succeeds, the others fail
/// with `AlreadyExists`, and the stored manifest is the winner's. Repeated
/// for several ids.
pub async fn concurrent_commits_single_winner(factory: StoreFactory<'_>) {
    const TASKS: u64 = 8;
    let store = factory().await;
    let ctx = ctx(&*store, "concurrent_commits_single_winner");
    for id in 1..=6u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS as usize));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (store, barrier) = (store.clone(), barrier.clone());
            let bytes = sample_manifest(id, &[], t);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = store
                    .commit_manifest(CheckpointId(id), Bytes::from(bytes.clone()))
                    .await;
                (t, bytes, r)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (t, bytes, r) = task
                .await
                .unwrap_or_else(|e| panic!("{ctx}: commit task failed: {e}"));
            match r {
                Ok(()) => winners.push((t, bytes)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => panic!(
                    "{ctx}: id={id} task={t}: a losing commit must fail with AlreadyExists, got kind={:?}: {e}",
                    e.kind()
                ),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "{ctx}: id={id}: {} of {TASKS} concurrent commits succeeded (tasks {:?})",
            winners.len(),
            winners.iter().map(|w| w.0).collect::<Vec<_>>()
        );
        let got = must(store.get_manifest(CheckpointId(id)).await, &ctx);
        assert_same_bytes(
            &got,
            &winners[0].1,
            &format!("{ctx}: id={id}: stored manifest is the winner's"),
        );
    }
    let want: Vec<CheckpointId> = (1..=6).map(CheckpointId).collect();
    assert_eq!(
        must(store.list_manifests().await, &ctx),
        want,
        "{ctx}: list"
    );
}

/// A 12 MiB artifact of incompressible records round-trips byte for byte
/// and decodes; it is listed and deduplicated like any other.
pub async fn large_artifact_round_trip(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "large_artifact_round_trip");
    let a = sample_artifact(60, ArtifactKind::Entries, 12, 1 << 20);
    assert!(
        a.bytes.len() >= 12 << 20,
        "{ctx}: fixture is {} bytes",
        a.bytes.len()
    );
    assert_eq!(put(s, &a, &ctx).await, PutOutcome::Written, "{ctx}: put");
    let got = get(s, a.id(), &ctx).await;
    assert_same_bytes(&got, &a.bytes, &format!("{ctx}: get"));
    assert_eq!(
        ArtifactId::of(&got),
        a.id(),
        "{ctx}: content address of the read bytes"
    );
    let records = decode_records(&got, &format!("{ctx}: decode"));
    assert_eq!(records.len(), 12, "{ctx}: records");
    assert_eq!(
        put(s, &a, &ctx).await,
        PutOutcome::AlreadyPresent,
        "{ctx}: second put"
    );
    assert_eq!(
        must(s.list_artifacts().await, &ctx),
        vec![a.id()],
        "{ctx}: list"
    );
}

/// A store cannot be corrupted from outside generically, so this case
/// checks the two halves of end-to-end detection: the store returns
/// exactly the bytes it was given (artifacts and manifests), and a copy of
/// those bytes with any one bit flipped or cut short is refused by
/// [`decode_artifact`] / [`Manifest::decode`] with a corruption error and
/// no longer matches its content address.
pub async fn corruption_is_detected_after_get(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "corruption_is_detected_after_get");
    let artifacts = [
        sample_artifact(70, ArtifactKind::Entries, 40, 64),
        compressible_artifact(71, 400),
    ];
    let mut rng = SplitMix64::new(0xBAD);
    for a in &artifacts {
        put(s, a, &ctx).await;
        let got = get(s, a.id(), &ctx).await;
        assert_same_bytes(&got, &a.bytes, &format!("{ctx}: get"));
        let len = got.len();
        let mut positions: Vec<usize> =
            vec![0, 4, 6, 7, 8, 16, 24, 32, 40, 47, 48, len / 2, len - 1];
        positions.extend((0..32).map(|_| rng.index(len)));
        for pos in positions {
            let mut bad = got.to_vec();
            bad[pos] ^= 1 << rng.below(8);
            assert_ne!(
                ArtifactId::of(&bad),
                a.id(),
                "{ctx}: flipped copy keeps its id"
            );
            match decode_artifact(&bad, &DecodeLimits::default()) {
                Err(e) if e.is_corruption() => {}
                Err(e) => panic!("{ctx}: flipped byte {pos}: not a corruption error: {e}"),
                Ok(_) => panic!("{ctx}: flipped byte {pos} of {len} was not detected"),
            }
        }
        for cut in [0, 1, 47, 48, len / 2, len - 1] {
            match decode_artifact(&got[..cut], &DecodeLimits::default()) {
                Err(e) if e.is_corruption() => {}
                other => panic!("{ctx}: truncation to {cut} of {len} not detected: {other:?}"),
            }
        }
    }
    let m = sample_manifest(9, &artifacts, 0);
    must(
        s.commit_manifest(CheckpointId(9), Bytes::from(m.clone()))
            .await,
        &ctx,
    );
    let got = must(s.get_manifest(CheckpointId(9)).await, &ctx);
    assert_same_bytes(&got, &m, &format!("{ctx}: get_manifest"));
    for pos in 0..got.len() {
        let mut bad = got.to_vec();
        bad[pos] ^= 0x10;
        match Manifest::decode(&bad) {
            Err(e) if e.is_corruption() => {}
            other => panic!("{ctx}: manifest byte {pos} flipped not detected: {other:?}"),
        }
    }
}

/// Each request kind moves its counter: puts and commits move `puts` and
/// `bytes_written`, reads move `gets` and `bytes_read`, `has_artifact`
/// moves `heads`, listings move `lists`, deletes move `deletes`; no counter
/// ever decreases.
pub async fn counters_increase(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "counters_increase");
    let a = sample_artifact(80, ArtifactKind::Entries, 10, 100);
    let len = a.bytes.len() as u64;
    let mut prev = s.counters();
    let mut step = |what: &str, check: &dyn Fn(&StoreCounters, &StoreCounters) -> bool| {
        let now = s.counters();
        let fields = |c: &StoreCounters| {
            [
                c.puts,
                c.gets,
                c.heads,
                c.lists,
                c.deletes,
                c.bytes_written,
                c.bytes_read,
            ]
        };
        assert!(
            fields(&now).iter().zip(fields(&prev)).all(|(n, p)| *n >= p),
            "{ctx}: a counter decreased during {what}: before={prev:?} after={now:?}"
        );
        assert!(
            check(&prev, &now),
            "{ctx}: counters did not move as expected during {what}: before={prev:?} after={now:?}"
        );
        prev = now;
    };
    put(s, &a, &ctx).await;
    step("put_artifact", &|p, n| {
        n.puts > p.puts && n.bytes_written >= p.bytes_written + len
    });
    get(s, a.id(), &ctx).await;
    step("get_artifact", &|p, n| {
        n.gets > p.gets && n.bytes_read >= p.bytes_read + len
    });
    must(s.has_artifact(a.id()).await, &ctx);
    step("has_artifact", &|p, n| n.heads > p.heads);
    must(s.list_artifacts().await, &ctx);
    step("list_artifacts", &|p, n| n.lists > p.lists);
    let m = sample_manifest(1, std::slice::from_ref(&a), 0);
    let mlen = m.len() as u64;
    must(
        s.commit_manifest(CheckpointId(1), Bytes::from(m)).await,
        &ctx,
    );
    step("commit_manifest", &|p, n| {
        n.puts > p.puts && n.bytes_written >= p.bytes_written + mlen
    });
    must(s.get_manifest(CheckpointId(1)).await, &ctx);
    step("get_manifest", &|p, n| {
        n.gets > p.gets && n.bytes_read >= p.bytes_read + mlen
    });
    must(s.list_manifests().await, &ctx);
    step("list_manifests", &|p, n| n.lists > p.lists);
    must(s.delete_manifest(CheckpointId(1)).await, &ctx);
    step("delete_manifest", &|p, n| n.deletes > p.deletes);
    must(s.delete_artifact(a.id()).await, &ctx);
    step("delete_artifact", &|p, n| n.deletes > p.deletes);
    let _ = s.get_artifact(a.id()).await;
    step("get of a missing artifact", &|_, _| true);
}

/// A store's scopes (see [`CheckpointStore::scoped`]) are separate stores
/// inside it: what one scope holds, the root and every other scope do not
/// see, the same manifest id commits once per scope, and unsafe scope names
/// (empty, absolute, `..`, empty segments, other characters) are refused. A
/// store that cannot be divided refuses every scope with `Invalid`.
pub async fn scopes_are_isolated(factory: StoreFactory<'_>) {
    let store = factory().await;
    let s = &*store;
    let ctx = ctx(s, "scopes_are_isolated");
    let one = match s.scoped("participants/1") {
        Err(e) if e.kind() == ErrorKind::Invalid => return,
        r => must(r, &format!("{ctx}: open scope participants/1")),
    };
    let two = must(s.scoped("participants/2"), &ctx);
    for bad in [
        "", "/abs", "../up", "a/../b", "a//b", "a/", "a:b", "a b", "a/./b",
    ] {
        match s.scoped(bad) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Invalid, "{ctx}: scope {bad:?}: {e}"),
            Ok(_) => panic!("{ctx}: unsafe scope {bad:?} was accepted"),
        }
    }
    let a = sample_artifact(60, ArtifactKind::Entries, 5, 10);
    assert_eq!(put(&*one, &a, &ctx).await, PutOutcome::Written, "{ctx}");
    for (name, other) in [("root", s), ("scope 2", &*two)] {
        assert!(
            !must(other.has_artifact(a.id()).await, &ctx),
            "{ctx}: {name} sees scope 1's artifact"
        );
        assert!(
            must(other.list_artifacts().await, &ctx).is_empty(),
            "{ctx}: {name} lists scope 1's artifact"
        );
    }
    let m1 = sample_manifest(7, std::slice::from_ref(&a), 1);
    let m2 = sample_manifest(7, std::slice::from_ref(&a), 2);
    must(
        one.commit_manifest(CheckpointId(7), Bytes::from(m1.clone()))
            .await,
        &ctx,
    );
    assert!(
        must(s.list_manifests().await, &ctx).is_empty(),
        "{ctx}: the root lists scope 1's manifest"
    );
    must(
        two.commit_manifest(CheckpointId(7), Bytes::from(m2.clone()))
            .await,
        &format!("{ctx}: the same id in another scope"),
    );
    assert_same_bytes(
        &must(one.get_manifest(CheckpointId(7)).await, &ctx),
        &m1,
        &ctx,
    );
    assert_same_bytes(
        &must(two.get_manifest(CheckpointId(7)).await, &ctx),
        &m2,
        &ctx,
    );
    must(two.delete_manifest(CheckpointId(7)).await, &ctx);
    must(two.delete_artifact(a.id()).await, &ctx);
    assert_eq!(
        must(one.list_manifests().await, &ctx),
        vec![CheckpointId(7)],
        "{ctx}: a delete in scope 2 reached scope 1"
    );
    assert_same_bytes(&get(&*one, a.id(), &ctx).await, &a.bytes, &ctx);
    // A scope of a scope is a scope too.
    let nested = must(one.scoped("inner"), &ctx);
    assert!(
        must(nested.list_manifests().await, &ctx).is_empty(),
        "{ctx}: nested scope"
    );
}
