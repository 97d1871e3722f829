//! Suite `redis`: the Redis state backend and checkpoint store against the
//! raw redis crate doing the same work, in the same run, on the same server.
//!
//! Needs a server: the standalone URL comes from `HIGHWATER_REDIS_URL`,
//! which `cargo xtask bench redis` (and `cargo xtask services start`) set.
//!
//! Metrics (ops/s or MB/s, median of several rounds; single client thread).
//! The put and get measurements alternate highwater and the baseline batch
//! by batch, so both run under the same machine load; the per-round ratios
//! are in the parameters.
//!
//!
//! - `redis_put_pipelined`: [`RedisBackend::write_batch`] of 1 000 puts at
//!   a time, overwriting existing keys (encoded state keys of ~37 bytes,
//!   100-byte values), against raw pipelines of `SET key value` with the same
//!   Redis keys and values and the same round trips (each 1 000 keys as
//!   pipelines of at most 512 commands, the backend's depth). The backend
//!   also tracks the changed keys in process and orders writers of a key;
//!   no snapshot is being read while it is timed, so it sends plain `SET`s.
//! - `redis_get_batched`: [`RedisBackend::get_many`] of 512 keys at a time
//!   against raw `MGET`s of the same 512 Redis keys (what the backend sends
//!   on a standalone server). Raw pipelined `GET`s are reported in the
//!   parameters for information.
//! - `redis_checkpoint_throughput`: bytes per second into a
//!   [`RedisCheckpointStore`] through `put_artifact` of real encoded
//!   artifacts (zstd level 1 records of state; most about 1 MiB, some 10 MiB
//!   and chunked into 4 MiB parts), 4 uploads in flight, each round into a
//!   fresh namespace so every artifact is written; against raw `SET`s of the
//!   same bytes over one multiplexed connection, 4 in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use highwater::core::{
    ArtifactId, ArtifactKind, CheckpointStore, EncodeOptions, RecordWriter, SnapshotKind,
    StateBackend, StateKey, WriteBatch, key_group_for,
};
use highwater_redis::{
    RedisBackend, RedisBackendConfig, RedisCheckpointStore, RedisEndpoint, RedisStoreConfig,
};
use highwater_testkit::model::visit_snapshot;
use serde_json::{Map, Value, json};

use crate::util::{self, Rng, median};
use crate::{Ctx, Metric, Result, SuiteResult};

/// Value size of the put/get benchmark.
const VALUE_BYTES: usize = 100;

/// Mutations per `write_batch` call.
const BATCH: usize = 1000;

/// Pipeline depth of the backend (its default) and of the raw baseline.
const DEPTH: usize = 512;

/// Uploads in flight in the checkpoint benchmark.
const IN_FLIGHT: usize = 4;

#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    keys: usize,
    rounds: usize,
    /// Artifacts of ~1 MiB and of ~10 MiB per checkpoint round.
    small_artifacts: usize,
    large_artifacts: usize,
    checkpoint_rounds: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                keys: 50_000,
                rounds: 9,
                small_artifacts: 12,
                large_artifacts: 1,
                checkpoint_rounds: 5,
            }
        } else {
            Plan {
                quick,
                keys: 500_000,
                rounds: 9,
                small_artifacts: 48,
                large_artifacts: 4,
                checkpoint_rounds: 7,
            }
        }
    }
}

/// Runs the suite.
pub fn run(ctx: &Ctx) -> Result<SuiteResult> {
    let plan = Plan::new(ctx.quick);
    let url = std::env::var("HIGHWATER_REDIS_URL").map_err(|_| {
        "HIGHWATER_REDIS_URL is not set: run `cargo xtask bench redis` (it starts the servers) \
         or `cargo xtask services start` and export what it prints"
    })?;
    let mut params = Map::new();
    params.insert("quick".into(), json!(plan.quick));
    params.insert(
        "server".into(),
        json!("redis-server on loopback, standalone"),
    );
    if let Some(version) = server_version(&url) {
        params.insert("redis_version".into(), json!(version));
    }
    params.insert("keys".into(), json!(plan.keys));
    params.insert("value_bytes".into(), json!(VALUE_BYTES));
    params.insert("pipeline_depth".into(), json!(DEPTH));
    if let Some(load) = util::loadavg() {
        params.insert("loadavg_1m_at_start".into(), json!(load));
    }
    let mut metrics = Vec::new();
    ops_bench(&plan, &url, &mut params, &mut metrics)?;
    checkpoint_bench(&plan, &url, &mut params, &mut metrics)?;
    Ok(SuiteResult {
        suite: "redis".into(),
        params,
        metrics,
    })
}

fn server_version(url: &str) -> Option<String> {
    let mut conn = redis::Client::open(url).ok()?.get_connection().ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

/// A namespace of its own for each run, so runs never see each other.
fn namespace(what: &str) -> String {
    format!("bench-{what}-{}", std::process::id())
}

fn state_key(i: usize) -> Vec<u8> {
    let key = (i as u64).to_be_bytes();
    StateKey {
        key_group: key_group_for(&key, highwater::core::DEFAULT_MAX_PARALLELISM),
        operator: "aggregate",
        state: "running-sum",
        key: &key,
        namespace: &[],
        user_key: &[],
    }
    .encode()
    .expect("bench keys encode")
}

/// The Redis key the backend stores `raw` under (see the crate docs).
fn redis_key(ns: &str, raw: &[u8]) -> Vec<u8> {
    let kg = u16::from_be_bytes([raw[0], raw[1]]);
    let mut k = format!("{{{ns}:{kg:04x}}}v").into_bytes();
    k.extend_from_slice(raw);
    k
}

fn ops_per_sec(ops: usize, d: Duration) -> f64 {
    ops as f64 / d.as_secs_f64()
}

fn ops_bench(
    plan: &Plan,
    url: &str,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    let ns = namespace("ops");
    let endpoint = RedisEndpoint::parse(url)?;
    let backend = RedisBackend::connect(RedisBackendConfig::new(endpoint, ns.clone()))?;
    let mut rng = Rng::new(0x5eed);
    let mut keys: Vec<Vec<u8>> = (0..plan.keys).map(state_key).collect();
    rng.shuffle(&mut keys);
    let values: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            let mut v = vec![0u8];
            v.extend((0..VALUE_BYTES - 1).map(|j| (i * 7 + j) as u8));
            v
        })
        .collect();
    let rkeys: Vec<Vec<u8>> = keys.iter().map(|k| redis_key(&ns, k)).collect();
    let mut raw = redis::Client::open(url)?.get_connection()?;
    let value_of = |round: usize, i: usize| values[(round * 7 + i) % values.len()].as_slice();

    // One round: every key written once by the backend and once by the raw
    // client, batch by batch in alternation, so both see the same machine
    // load; each side's time is
    // the sum over its batches. The backend's batches are built before its
    // clock starts: the caller's allocations are not the backend's cost.
    // Every timed write overwrites (the keys are loaded first).
    let put_round = |raw: &mut redis::Connection, round: usize| -> Result<(Duration, Duration)> {
        let (mut ours, mut base) = (Duration::ZERO, Duration::ZERO);
        for (c, (batch_keys, batch_rkeys)) in
            keys.chunks(BATCH).zip(rkeys.chunks(BATCH)).enumerate()
        {
            let mut batch = WriteBatch::new();
            for (i, k) in batch_keys.iter().enumerate() {
                batch.put(k.clone(), value_of(round, c * BATCH + i).to_vec());
            }
            // Whichever side runs first after the other is slower (the
            // server has gone idle): flip the order every batch.
            let ours_first = (round + c).is_multiple_of(2);
            for side in [ours_first, !ours_first] {
                let t = Instant::now();
                if side {
                    backend.write_batch(std::mem::take(&mut batch))?;
                    ours += t.elapsed();
                } else {
                    // The same round trips as the backend: pipelines of at
                    // most DEPTH commands.
                    for (j, chunk) in batch_rkeys.chunks(DEPTH).enumerate() {
                        let mut p = redis::Pipeline::with_capacity(chunk.len());
                        for (i, k) in chunk.iter().enumerate() {
                            p.cmd("SET")
                                .arg(k.as_slice())
                                .arg(value_of(round, c * BATCH + j * DEPTH + i))
                                .ignore();
                        }
                        p.exec(raw)?;
                    }
                    base += t.elapsed();
                }
            }
        }
        // Close the change epoch (and wait for its background read), as a
        // checkpoint would, so the dirty set does not grow across rounds.
        let snap = backend.snapshot(SnapshotKind::Changes)?;
        visit_snapshot(&*snap, |_, _, _| Ok(()))?;
        Ok((ours, base))
    };
    println!("redis: loading {} keys …", plan.keys);
    put_round(&mut raw, 0)?;
    let (mut ours, mut base, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=plan.rounds {
        let (o, b) = put_round(&mut raw, round)?;
        ours.push(ops_per_sec(plan.keys, o));
        base.push(ops_per_sec(plan.keys, b));
        ratios.push(b.as_secs_f64() / o.as_secs_f64());
    }
    metrics.push(Metric::versus(
        "redis_put_pipelined",
        median(&ours),
        "ops/s",
        "raw redis crate: pipelined SET, same keys, values and round trips",
        median(&base),
        true,
    ));
    params.insert(
        "put_ratio_per_round".into(),
        json!(ratios.iter().map(|r| round3(*r)).collect::<Vec<_>>()),
    );

    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let get_round = |raw: &mut redis::Connection, round: usize| -> Result<[Duration; 3]> {
        let mut took = [Duration::ZERO; 3];
        let mut found = 0usize;
        for (c, (chunk, rchunk)) in key_refs.chunks(DEPTH).zip(rkeys.chunks(DEPTH)).enumerate() {
            let order: [usize; 3] = if (round + c).is_multiple_of(2) {
                [0, 1, 2]
            } else {
                [1, 0, 2]
            };
            for side in order {
                let t = Instant::now();
                match side {
                    0 => found += backend.get_many(chunk)?.iter().flatten().count(),
                    1 => {
                        let mut cmd = redis::cmd("MGET");
                        for k in rchunk {
                            cmd.arg(k.as_slice());
                        }
                        let vs: Vec<Option<Vec<u8>>> = cmd.query(raw)?;
                        std::hint::black_box(vs);
                    }
                    _ => {
                        let mut p = redis::Pipeline::with_capacity(rchunk.len());
                        for k in rchunk {
                            p.cmd("GET").arg(k.as_slice());
                        }
                        let vs: Vec<Option<Vec<u8>>> = p.query(raw)?;
                        std::hint::black_box(vs);
                    }
                }
                took[side] += t.elapsed();
            }
        }
        if found != key_refs.len() {
            return Err(format!("get_many found {found} of {} keys", key_refs.len()).into());
        }
        Ok(took)
    };
    let (mut ours, mut base, mut piped, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.rounds {
        let [o, b, p] = get_round(&mut raw, round)?;
        ours.push(ops_per_sec(plan.keys, o));
        base.push(ops_per_sec(plan.keys, b));
        piped.push(ops_per_sec(plan.keys, p));
        ratios.push(b.as_secs_f64() / o.as_secs_f64());
    }
    metrics.push(Metric::versus(
        "redis_get_batched",
        median(&ours),
        "ops/s",
        "raw redis crate: MGET of the same 512 keys",
        median(&base),
        true,
    ));
    params.insert(
        "get_ratio_per_round".into(),
        json!(ratios.iter().map(|r| round3(*r)).collect::<Vec<_>>()),
    );
    params.insert(
        "raw_pipelined_get_ops_per_s".into(),
        json!(median(&piped).round()),
    );
    backend.destroy()?;
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Real artifacts: sorted state records encoded with the default options
/// (zstd level 1): `small_artifacts` of about 1 MiB and `large_artifacts`
/// of about 10 MiB.
fn artifacts(plan: &Plan) -> Result<Vec<Bytes>> {
    let mut rng = Rng::new(0xa27);
    let mut out = Vec::new();
    let sizes = std::iter::repeat_n(1usize << 20, plan.small_artifacts)
        .chain(std::iter::repeat_n(10usize << 20, plan.large_artifacts));
    for (n, target) in sizes.enumerate() {
        // Window buffers of sensor readings: about 2x compressible.
        let mut w = RecordWriter::new(ArtifactKind::Entries, target * 2);
        let mut raw = 0usize;
        let mut i = 0u64;
        while raw < target * 2 {
            let key = StateKey {
                key_group: highwater::core::KeyGroup((i % 128) as u16),
                operator: "window",
                state: "buffer",
                key: &(n as u64 * 1_000_000 + i).to_be_bytes(),
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

fn checkpoint_bench(
    plan: &Plan,
    url: &str,
    params: &mut Map<String, Value>,
    metrics: &mut Vec<Metric>,
) -> Result {
    let data = artifacts(plan)?;
    let total: usize = data.iter().map(Bytes::len).sum();
    params.insert("checkpoint_artifacts".into(), json!(data.len()));
    params.insert("checkpoint_bytes".into(), json!(total));
    params.insert("uploads_in_flight".into(), json!(IN_FLIGHT));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let endpoint = RedisEndpoint::parse(url)?;
    let data = Arc::new(data);
    runtime.block_on(async {
        let client = redis::Client::open(url)?;
        let raw = client.get_multiplexed_async_connection().await?;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for round in 0..plan.checkpoint_rounds {
            let ns = format!("{}-{round}", namespace("ckpt"));
            let store = Arc::new(
                RedisCheckpointStore::connect(
                    RedisStoreConfig::new(endpoint.clone()).with_namespace(&ns),
                )
                .await?,
            );
            let raw_ns = format!("{ns}-raw");
            // Whichever side goes first after the other is slower (the
            // server has gone idle): alternate every round.
            let (o, b) = if round.is_multiple_of(2) {
                let o = upload_ours(&store, &data).await?;
                (o, upload_raw(&raw, &raw_ns, &data).await?)
            } else {
                let b = upload_raw(&raw, &raw_ns, &data).await?;
                (upload_ours(&store, &data).await?, b)
            };
            ours.push(total as f64 / 1e6 / o.as_secs_f64());
            base.push(total as f64 / 1e6 / b.as_secs_f64());
            // Free the memory before the next round.
            let mut conn = raw.clone();
            for pattern in [format!("{{{ns}:*"), format!("{{{raw_ns}:*")] {
                delete_matching(&mut conn, &pattern).await?;
            }
        }
        metrics.push(Metric::versus(
            "redis_checkpoint_throughput",
            median(&ours),
            "MB/s",
            "raw redis crate: SET of the same artifact bytes, same concurrency",
            median(&base),
            true,
        ));
        Ok::<(), crate::BoxError>(())
    })?;
    Ok(())
}

/// Puts every artifact into `store`, `IN_FLIGHT` at a time.
async fn upload_ours(store: &Arc<RedisCheckpointStore>, data: &[Bytes]) -> Result<Duration> {
    let t = Instant::now();
    let mut next = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while next < data.len() || !tasks.is_empty() {
        while next < data.len() && tasks.len() < IN_FLIGHT {
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

/// `SET`s every artifact under its id in namespace `ns`, `IN_FLIGHT` at a
/// time, over one multiplexed connection.
async fn upload_raw(
    raw: &redis::aio::MultiplexedConnection,
    ns: &str,
    data: &[Bytes],
) -> Result<Duration> {
    let t = Instant::now();
    let mut next = 0usize;
    let mut tasks = tokio::task::JoinSet::new();
    while next < data.len() || !tasks.is_empty() {
        while next < data.len() && tasks.len() < IN_FLIGHT {
            let (mut conn, bytes) = (raw.clone(), data[next].clone());
            let key = format!("{{{ns}:a:{}}}", ArtifactId::of(&bytes));
            tasks.spawn(async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(bytes.as_ref())
                    .exec_async(&mut conn)
                    .await
            });
            next += 1;
        }
        if let Some(done) = tasks.join_next().await {
            done??;
        }
    }
    Ok(t.elapsed())
}

async fn delete_matching(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Result {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        for k in keys {
            redis::cmd("UNLINK").arg(k).exec_async(conn).await?;
        }
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
}
