//! Suite `cloud`: the object-store checkpoint store on an S3-compatible
//! server (moto's server on loopback, from `cargo xtask services start`)
//! against raw `object_store` doing the same uploads, in the same run, on
//! the same server.
//!
//! Needs the server: `HIGHWATER_S3_URL` (the bucket) and the `AWS_*`
//! variables `object_store` reads, which `cargo xtask bench cloud` (and
//! `cargo xtask services start`) set.
//!
//! Metrics:
//!
//! - `s3_checkpoint_throughput` (MB/s, median of several rounds): bytes
//!   per second through [`ObjectCheckpointStore::put_artifact`] of real
//!   encoded artifacts (zstd level 1 records of state; most about 1 MiB,
//!   some about 20 MiB, which go up as multipart uploads of 8 MiB parts,
//!   4 parts in flight), as many artifacts in flight as the
//!   `StateManager` uploads (`io_concurrency`, 16), each round under a
//!   fresh prefix so every artifact is written. The store checks each id,
//!   writes create-only and HEADs before a multipart upload. Baseline: raw
//!   `object_store` on a client built the same way — `put` below the
//!   multipart threshold, `WriteMultipart` with the same part size and
//!   part concurrency above it — of the same bytes with the same
//!   concurrency. The two sides alternate which goes first.
//! - `s3_requests_per_checkpoint` (requests): the requests a 1 %
//!   incremental checkpoint sends through the real [`StateManager`] (after
//!   a full one), from the store's [`StoreCounters`]; retention included.
//!   The state is 8 operators; the 1 % changed keys belong to one of them,
//!   so 16 of the 128 artifacts change. The full checkpoint's count, a
//!   uniformly random 1 % (which changes every artifact) and the per-kind
//!   splits are parameters. No baseline.
//! - `list_manifests_ms_<N>` (ms, median): `list_manifests` of a prefix
//!   holding N committed manifests, against one GET of an index object
//!   naming the same N ids (the alternative to LIST): the measurement
//!   behind keeping plain LIST (see the crate docs of highwater-cloud).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use highwater::cloud::{CloudOptions, ObjectCheckpointStore, StoreConfig};
use highwater::core::{
    ArtifactId, ArtifactKind, CheckpointId, CheckpointStore, EncodeOptions, RecordWriter, StateKey,
    StoreCounters, WriteBatch, key_group_for,
};
use highwater::memory::MemoryBackend;
use highwater::{CheckpointConfig, CheckpointKind, StateBackend, StateManager};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde_json::{Map, Value, json};

use crate::util::{self, Rng, median};
use crate::{Ctx, Metric, Result, SuiteResult};

#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    small_artifacts: usize,
    large_artifacts: usize,
    rounds: usize,
    /// Keys of the state behind the requests-per-checkpoint measurement.
    keys: usize,
    /// Manifest counts of the listing measurement.
    list_sizes: Vec<usize>,
    list_reps: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                small_artifacts: 16,
                large_artifacts: 2,
                rounds: 3,
                keys: 100_000,
                list_sizes: vec![3, 1000],
                list_reps: 5,
            }
        } else {
            Plan {
                quick,
                small_artifacts: 48,
                large_artifacts: 6,
                rounds: 7,
                keys: 500_000,
                list_sizes: vec![3, 100, 1000, 3000],
                list_reps: 9,
            }
        }
    }
}

/// Runs the suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let plan = Plan::new(ctx.quick);
    let base = std::env::var("HIGHWATER_S3_URL").map_err(|_| {
        "HIGHWATER_S3_URL is not set: run `cargo xtask bench cloud` (it starts the servers) \
         or `cargo xtask services start` and export what it prints"
    })?;
    let base = base.trim_end_matches('/').to_owned();
    let mut params = Map::new();
    params.insert("quick".into(), json!(plan.quick));
    params.insert(
        "server".into(),
        json!("moto's S3 server (Python) on loopback"),
    );
    if let Ok(endpoint) = std::env::var("AWS_ENDPOINT") {
        params.insert("endpoint".into(), json!(endpoint));
    }
    if let Some(load) = util::loadavg() {
        params.insert("loadavg_1m_at_start".into(), json!(load));
    }
    let mut metrics = Vec::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(throughput(&plan, &base, &mut params, &mut metrics))?;
    runtime.block_on(listing(&plan, &base, &mut params, &mut metrics))?;
    drop(runtime);
    requests_per_checkpoint(&plan, &base, &mut params, &mut metrics)?;
    Ok(SuiteResult {
        suite: "cloud".into(),
        params,
        metrics,
    })
}

/// A prefix of its own for each use, so runs never see each other.
fn unique(base: &str, what: &str) -> String {
    #[expect(
        clippy::disallowed_methods,
        reason = "a unique name, not the time of state"
    )]
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{base}/bench-{what}-{}-{nanos}", std::process::id())
}

fn open(url: &str) -> Result<ObjectCheckpointStore> {
    Ok(ObjectCheckpointStore::from_url(url, &CloudOptions::new())?)
}

/// Real artifacts: sorted state records encoded with the default options
/// (zstd level 1), `small` of about 1 MiB and `large` of about 20 MiB
/// (encoded sizes; the medians are reported as parameters).
fn artifacts(small: usize, large: usize) -> Result<Vec<Bytes>> {
    let mut rng = Rng::new(0xc10d);
    let mut out = Vec::new();
    let sizes =
        std::iter::repeat_n(1usize << 20, small).chain(std::iter::repeat_n(20 << 20, large));
    for (n, target) in sizes.enumerate() {
        // Window buffers of sensor readings: they compress about 3.4x, so
        // 3.4 × `target` record bytes encode to about `target` bytes.
        let raw_target = target * 34 / 10;
        let mut w = RecordWriter::new(ArtifactKind::Entries, raw_target);
        let mut raw = 0usize;
        let mut i = 0u64;
        while raw < raw_target {
            let key = StateKey {
                key_group: highwater::core::KeyGroup((i % 128) as u16),
                operator: "window",
                state: "buffer",
                key: &(n as u64 * 10_000_000 + i).to_be_bytes(),
                namespace: &[],
                user_key: &[],
            }
            .encode()?;
            let readings = 4 + rng.below(10) as usize;
            let mut value = vec![0u8];
            for _ in 0..readings {
                let base = 20_000 + rng.below(500) as u32;
                value.extend_from_slice(&base.to_le_bytes());
                value.extend_from_slice(&(1_700_000_000u64 + i).to_le_bytes());
                value.extend_from_slice(&(rng.next_u64() as u32 & 0xff).to_le_bytes());
            }
            raw += key.len() + value.len();
            w.push(&key, Some(&value))?;
            i += 1;
        }
        out.push(Bytes::from(w.finish(&EncodeOptions::default())?.bytes));
    }
    Ok(out)
}

async fn throughput(
    plan: &Plan,
    base: &str,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    let in_flight = CheckpointConfig::default().io_concurrency;
    let transfer = StoreConfig::default().transfer;
    let data = Arc::new(artifacts(plan.small_artifacts, plan.large_artifacts)?);
    let total: usize = data.iter().map(Bytes::len).sum();
    params.insert("checkpoint_artifacts".into(), json!(data.len()));
    params.insert(
        "checkpoint_large_artifacts".into(),
        json!(plan.large_artifacts),
    );
    params.insert("checkpoint_bytes".into(), json!(total));
    let sizes = |range: std::ops::Range<usize>| {
        let v: Vec<f64> = data[range].iter().map(|b| b.len() as f64).collect();
        (median(&v) / 1e6 * 100.0).round() / 100.0
    };
    params.insert(
        "small_artifact_mb_median".into(),
        json!(sizes(0..plan.small_artifacts)),
    );
    params.insert(
        "large_artifact_mb_median".into(),
        json!(sizes(plan.small_artifacts..data.len())),
    );
    params.insert("uploads_in_flight".into(), json!(in_flight));
    params.insert("part_size".into(), json!(transfer.part_size));
    params.insert("part_concurrency".into(), json!(transfer.part_concurrency));
    println!(
        "cloud: {} artifacts, {:.1} MB, {} rounds …",
        data.len(),
        total as f64 / 1e6,
        plan.rounds
    );
    let (mut ours, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut requests = StoreCounters::default();
    for round in 0..plan.rounds {
        let store = Arc::new(open(&unique(base, "put"))?);
        // The baseline's client is built exactly as the store's.
        let raw_store = open(&unique(base, "raw"))?;
        let raw_os = raw_store.object_store().clone();
        let raw_prefix = raw_store.prefix().clone();
        let (o, r) = if round % 2 == 0 {
            let o = upload_ours(&store, &data, in_flight).await?;
            (o, upload_raw(&raw_os, &raw_prefix, &data, in_flight).await?)
        } else {
            let r = upload_raw(&raw_os, &raw_prefix, &data, in_flight).await?;
            (upload_ours(&store, &data, in_flight).await?, r)
        };
        requests = store.counters();
        ours.push(total as f64 / 1e6 / o.as_secs_f64());
        raw.push(total as f64 / 1e6 / r.as_secs_f64());
        ratios.push(r.as_secs_f64() / o.as_secs_f64());
        println!(
            "cloud:   round {round}: store {:.1} MB/s, raw {:.1} MB/s",
            ours.last().copied().unwrap_or_default(),
            raw.last().copied().unwrap_or_default()
        );
    }
    metrics.push(Metric::versus(
        "s3_checkpoint_throughput",
        median(&ours),
        "MB/s",
        "raw object_store: put / WriteMultipart of the same bytes, same part size and concurrency",
        median(&raw),
        true,
    ));
    params.insert(
        "throughput_ratio_per_round".into(),
        json!(
            ratios
                .iter()
                .map(|r| (r * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        ),
    );
    params.insert(
        "requests_per_upload_round".into(),
        json!({"puts": requests.puts, "heads": requests.heads}),
    );
    Ok(())
}

/// Puts every artifact into `store`, `in_flight` at a time.
async fn upload_ours(
    store: &Arc<ObjectCheckpointStore>,
    data: &Arc<Vec<Bytes>>,
    in_flight: usize,
) -> Result<Duration> {
    let t = Instant::now();
    let mut next = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while next < data.len() || !tasks.is_empty() {
        while next < data.len() && tasks.len() < in_flight {
            let (store, bytes) = (store.clone(), data[next].clone());
            tasks.spawn(async move { store.put_artifact(ArtifactId::of(&bytes), bytes).await });
            next += 1;
        }
        if let Some(done) = tasks.join_next().await {
            done??;
        }
    }
    Ok(t.elapsed())
}

/// Uploads every artifact with raw `object_store` calls, `in_flight` at a
/// time: `put` up to the multipart threshold, `WriteMultipart` above it.
async fn upload_raw(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
    data: &Arc<Vec<Bytes>>,
    in_flight: usize,
) -> Result<Duration> {
    let transfer = StoreConfig::default().transfer;
    let threshold = transfer.multipart_threshold.unwrap_or(u64::MAX);
    let t = Instant::now();
    let mut next = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while next < data.len() || !tasks.is_empty() {
        while next < data.len() && tasks.len() < in_flight {
            let (store, bytes) = (store.clone(), data[next].clone());
            let path = prefix.clone().join(ArtifactId::of(&bytes).to_hex());
            tasks.spawn(async move {
                if bytes.len() as u64 > threshold {
                    let upload = store.put_multipart(&path).await?;
                    let mut w = WriteMultipart::new_with_chunk_size(upload, transfer.part_size);
                    let mut at = 0;
                    while at < bytes.len() {
                        w.wait_for_capacity(transfer.part_concurrency).await?;
                        let end = (at + transfer.part_size).min(bytes.len());
                        w.put(bytes.slice(at..end));
                        at = end;
                    }
                    w.finish().await.map(|_| ())
                } else {
                    store.put(&path, PutPayload::from(bytes)).await.map(|_| ())
                }
            });
            next += 1;
        }
        if let Some(done) = tasks.join_next().await {
            done??;
        }
    }
    Ok(t.elapsed())
}

/// LIST of the manifests of a prefix against GET of an index object.
async fn listing(
    plan: &Plan,
    base: &str,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    for &n in &plan.list_sizes {
        let store = Arc::new(open(&unique(base, &format!("list{n}")))?);
        // Commit n small manifests, 32 at a time.
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..n as u64 {
            if tasks.len() >= 32
                && let Some(done) = tasks.join_next().await
            {
                done??;
            }
            let store = store.clone();
            tasks.spawn(async move {
                store
                    .commit_manifest(CheckpointId(id), Bytes::from(vec![7u8; 600]))
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        // The alternative: one object naming every committed id.
        let index: String = (0..n).map(|i| format!("{i:020}\n")).collect();
        let index_path = store.prefix().clone().join("index");
        store
            .object_store()
            .put(&index_path, PutPayload::from(index.into_bytes()))
            .await?;
        let (mut list_ms, mut get_ms) = (Vec::new(), Vec::new());
        let before = store.counters().lists;
        for _ in 0..plan.list_reps {
            let t = Instant::now();
            let ids = store.list_manifests().await?;
            list_ms.push(util::ms(t.elapsed()));
            if ids.len() != n {
                return Err(format!("listed {} manifests, committed {n}", ids.len()).into());
            }
            let t = Instant::now();
            let bytes = store.object_store().get(&index_path).await?.bytes().await?;
            get_ms.push(util::ms(t.elapsed()));
            std::hint::black_box(bytes);
        }
        let pages = (store.counters().lists - before) / plan.list_reps as u64;
        println!(
            "cloud: list of {n} manifests: {:.2} ms ({pages} request(s)); GET of an index: {:.2} ms",
            median(&list_ms),
            median(&get_ms)
        );
        params.insert(format!("list_requests_{n}"), json!(pages));
        metrics.push(Metric::versus(
            &format!("list_manifests_ms_{n}"),
            median(&list_ms),
            "ms",
            "GET of one index object naming the same ids",
            median(&get_ms),
            false,
        ));
    }
    Ok(())
}

/// Operators of the requests-per-checkpoint state; keys are spread evenly.
const OPERATORS: usize = 8;

fn state_key(i: usize) -> Result<Vec<u8>> {
    let key = (i as u64).to_be_bytes();
    let operator = format!("operator-{}", i % OPERATORS);
    Ok(StateKey {
        key_group: key_group_for(&key, highwater::core::DEFAULT_MAX_PARALLELISM),
        operator: &operator,
        state: "running-sum",
        key: &key,
        namespace: &[],
        user_key: &[],
    }
    .encode()?)
}

fn value(rng: &mut Rng) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend((0..40).map(|_| rng.below(16) as u8));
    v
}

fn sum(c: &StoreCounters) -> u64 {
    c.puts + c.gets + c.heads + c.lists + c.deletes
}

fn diff(a: &StoreCounters, b: &StoreCounters) -> StoreCounters {
    StoreCounters {
        puts: b.puts - a.puts,
        gets: b.gets - a.gets,
        heads: b.heads - a.heads,
        lists: b.lists - a.lists,
        deletes: b.deletes - a.deletes,
        bytes_written: b.bytes_written - a.bytes_written,
        bytes_read: b.bytes_read - a.bytes_read,
    }
}

fn counters_json(c: &StoreCounters) -> Value {
    json!({"puts": c.puts, "gets": c.gets, "heads": c.heads, "lists": c.lists,
           "deletes": c.deletes, "bytes_written": c.bytes_written})
}

/// Requests of one incremental checkpoint after `changed` keys (picked by
/// `pick`) were rewritten.
fn incremental_requests(
    manager: &StateManager,
    store: &ObjectCheckpointStore,
    backend: &MemoryBackend,
    keys: &[Vec<u8>],
    changed: usize,
    rng: &mut Rng,
    pick: &dyn Fn(&mut Rng) -> usize,
) -> Result<(StoreCounters, usize)> {
    let before = store.counters();
    let mut batch = WriteBatch::new();
    for _ in 0..changed {
        batch.put(keys[pick(rng)].clone(), value(rng));
    }
    backend.write_batch(batch)?;
    let inc = manager.checkpoint()?.wait()?;
    if inc.kind != CheckpointKind::Incremental {
        return Err(format!("expected an incremental checkpoint, got {}", inc.kind).into());
    }
    Ok((diff(&before, &store.counters()), inc.artifacts))
}

/// A full checkpoint, then incrementals after 1 % of the keys were
/// rewritten, through the real `StateManager` into S3. The state is
/// `OPERATORS` operators of `keys / OPERATORS` keys each, so a full
/// checkpoint writes `OPERATORS × 16` artifacts (8 key groups of 128 per
/// artifact). The metric's 1 % are keys of one operator (the usual shape:
/// some operators' state moves, reference data does not); uniformly random
/// 1 % of keys, which touches every artifact, is a parameter.
fn requests_per_checkpoint(
    plan: &Plan,
    base: &str,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    let backend = Arc::new(MemoryBackend::new());
    let mut rng = Rng::new(0x1c);
    let keys: Vec<Vec<u8>> = (0..plan.keys).map(state_key).collect::<Result<_>>()?;
    for chunk in keys.chunks(10_000) {
        let mut batch = WriteBatch::new();
        for k in chunk {
            batch.put(k.clone(), value(&mut rng));
        }
        backend.write_batch(batch)?;
    }
    let store = Arc::new(open(&unique(base, "requests"))?);
    let dyn_store: Arc<dyn CheckpointStore> = store.clone();
    let dyn_backend: Arc<dyn StateBackend> = backend.clone();
    let manager = StateManager::builder()
        .backend(dyn_backend)
        .store(dyn_store)
        .build()?;
    let c0 = store.counters();
    let full = manager.checkpoint()?.wait()?;
    if full.kind != CheckpointKind::Full {
        return Err(format!("expected a full checkpoint, got {}", full.kind).into());
    }
    let full_req = diff(&c0, &store.counters());
    let changed = plan.keys / 100;
    let n = keys.len() as u64;
    // Keys of operator 0 only: i % OPERATORS == 0.
    let (one_op, one_op_artifacts) =
        incremental_requests(&manager, &store, &backend, &keys, changed, &mut rng, &|r| {
            (r.below(n / OPERATORS as u64) * OPERATORS as u64) as usize
        })?;
    let (random, random_artifacts) =
        incremental_requests(&manager, &store, &backend, &keys, changed, &mut rng, &|r| {
            r.below(n) as usize
        })?;
    println!(
        "cloud: full checkpoint of {} keys: {} requests ({} artifacts); 1% of keys in one \
         operator: {} requests ({} artifacts); 1% random keys: {} requests ({} artifacts)",
        plan.keys,
        sum(&full_req),
        full.artifacts,
        sum(&one_op),
        one_op_artifacts,
        sum(&random),
        random_artifacts
    );
    params.insert("requests_state_keys".into(), json!(plan.keys));
    params.insert("requests_operators".into(), json!(OPERATORS));
    params.insert("requests_changed_keys".into(), json!(changed));
    params.insert("full_checkpoint_requests".into(), json!(sum(&full_req)));
    params.insert("full_checkpoint_artifacts".into(), json!(full.artifacts));
    params.insert("full_checkpoint_split".into(), counters_json(&full_req));
    params.insert(
        "incremental_one_operator_artifacts".into(),
        json!(one_op_artifacts),
    );
    params.insert(
        "incremental_one_operator_split".into(),
        counters_json(&one_op),
    );
    params.insert(
        "incremental_random_1pct_requests".into(),
        json!(sum(&random)),
    );
    params.insert(
        "incremental_random_1pct_artifacts".into(),
        json!(random_artifacts),
    );
    params.insert(
        "incremental_random_1pct_split".into(),
        counters_json(&random),
    );
    metrics.push(Metric::plain(
        "s3_requests_per_checkpoint",
        sum(&one_op) as f64,
        "requests",
        false,
    ));
    drop(manager);
    Ok(())
}
