//! The backend conformance suite on a standalone server and on a cluster,
//! and backend behaviour the suite does not cover (native TTL, counts).

mod standalone {
    highwater_testkit::backend_conformance!(|| super::super::common::backend(
        super::super::common::standalone(),
        "bs"
    ));
}

mod cluster {
    highwater_testkit::backend_conformance!(|| super::super::common::backend(
        super::super::common::cluster(),
        "bc"
    ));
}

use std::time::{Duration, Instant};

use highwater_core::{
    Envelope, ManualClock, SnapshotKind, StateBackend, StateSnapshot, WriteBatch,
};
use highwater_redis::{RedisBackend, RedisBackendConfig};

use super::common;

fn key(kg: u16, i: u32) -> Vec<u8> {
    highwater_testkit::keys::encode_key(kg, "op", "st", &i.to_be_bytes(), &[], &[])
}

fn plain(payload: &[u8]) -> Vec<u8> {
    highwater_testkit::keys::plain_value(payload)
}

/// The snapshot's entries sorted by key (the testkit's reader, which also
/// fails on a key visited twice or a delete in a full snapshot).
fn read(s: &dyn StateSnapshot) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    highwater_testkit::model::read_snapshot(s)
        .unwrap_or_else(|e| panic!("{e}"))
        .entries
        .into_iter()
        .collect()
}

/// A raw connection to the server a backend or store uses.
fn raw(endpoint: &highwater_redis::RedisEndpoint) -> redis::Connection {
    let url = match endpoint {
        highwater_redis::RedisEndpoint::Standalone(u) => u.clone(),
        highwater_redis::RedisEndpoint::Cluster(_) => panic!("standalone only"),
    };
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// A full snapshot of 20 000 entries returns from `snapshot()` without
/// reading them (the cut is in-process), and its content is the state at
/// the cut even though every key is overwritten, half are deleted and new
/// ones are added while it is still being read.
#[test]
fn full_snapshot_is_a_cut_while_writers_rewrite_everything() {
    for endpoint in [common::standalone(), common::cluster()] {
        let (_guard, b) = common::backend(endpoint, "cut");
        let n = 20_000u32;
        let mut batch = WriteBatch::new();
        for i in 0..n {
            batch.put(key((i % 512) as u16, i), plain(&i.to_le_bytes()));
        }
        b.write_batch(batch).unwrap();
        let t = Instant::now();
        let snap = b.snapshot(SnapshotKind::Full).unwrap();
        let pause = t.elapsed();
        // Rewrite everything while the snapshot is (probably) still being read.
        let mut batch = WriteBatch::new();
        for i in 0..n {
            if i % 2 == 0 {
                batch.delete(key((i % 512) as u16, i));
            } else {
                batch.put(key((i % 512) as u16, i), plain(b"changed"));
            }
            batch.put(key(7, n + i), plain(b"new"));
        }
        b.write_batch(batch).unwrap();
        let got = read(&*snap);
        assert_eq!(got.len(), n as usize);
        for (k, v) in &got {
            let i = u32::from_be_bytes(k[k.len() - 8..k.len() - 4].try_into().unwrap());
            assert_eq!(v.as_deref(), Some(plain(&i.to_le_bytes()).as_slice()));
        }
        assert!(
            pause < Duration::from_millis(50),
            "snapshot() paused writers for {pause:?} with {n} entries"
        );
        assert_eq!(b.stats().entries, u64::from(n / 2 + n));
        // The next full snapshot sees the rewritten state.
        assert_eq!(
            read(&*b.snapshot(SnapshotKind::Full).unwrap()).len(),
            (n / 2 + n) as usize
        );
    }
}

/// Values with an expiry get a native Redis expiry (plus the grace), so
/// Redis reclaims them by itself; values whose expiry already passed, or
/// plain values, get none; `stats` no longer counts what Redis reclaimed.
#[test]
fn envelope_expiry_becomes_native_expiry() {
    let endpoint = common::standalone();
    let mut config = RedisBackendConfig::new(endpoint.clone(), common::namespace("ttl"));
    config.native_ttl_grace = Duration::from_millis(0);
    let b = std::sync::Arc::new(RedisBackend::connect(config).unwrap());
    let _guard = common::ClearOnDrop(b.clone());
    let mut conn = raw(&endpoint);
    #[expect(
        clippy::disallowed_methods,
        reason = "Redis expires keys by its own wall clock"
    )]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expiring = |at: u64| {
        let mut v = Vec::new();
        Envelope::encode_into(Some(at), b"payload", &mut v);
        v
    };
    b.put(&key(1, 1), &expiring(now + 300)).unwrap();
    b.put(&key(1, 2), &expiring(now - 10_000)).unwrap();
    b.put(&key(1, 3), &plain(b"forever")).unwrap();
    let redis_key = |i: u32| {
        let mut k = format!("{{{}:0001}}v", b.config().namespace).into_bytes();
        k.extend_from_slice(&key(1, i));
        k
    };
    let pttl = |conn: &mut redis::Connection, i: u32| -> i64 {
        redis::cmd("PTTL").arg(redis_key(i)).query(conn).unwrap()
    };
    let ttl1 = pttl(&mut conn, 1);
    assert!(
        (1..=300).contains(&ttl1),
        "native expiry of key 1: {ttl1} ms"
    );
    assert_eq!(
        pttl(&mut conn, 2),
        -1,
        "an expiry in the past is not handed to Redis"
    );
    assert_eq!(pttl(&mut conn, 3), -1, "plain values never expire");
    assert_eq!(b.stats().entries, 3);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(pttl(&mut conn, 1), -2, "Redis reclaimed the expired entry");
    assert_eq!(b.get(&key(1, 1)).unwrap(), None);
    assert_eq!(b.stats().entries, 2, "stats count what Redis holds");
    // Overwriting with a plain value removes the native expiry.
    b.put(&key(1, 4), &expiring(now + 60_000)).unwrap();
    b.put(&key(1, 4), &plain(b"kept")).unwrap();
    assert_eq!(pttl(&mut conn, 4), -1);
    let full = b.snapshot(SnapshotKind::Full).unwrap();
    assert_eq!(read(&*full).len(), 3);
    assert_eq!(b.stats().entries, 3);
}

/// All entries of one key group of a namespace share one hash tag, so on a
/// cluster they live in one slot.
/// The native expiry is judged by the configured clock, not by reading the
/// wall clock: with an injected clock in 2200, an expiry in 2100 is already
/// past (not handed to Redis) and one in 2300 is handed over as is (plus
/// the grace); moving the clock past it stops handing it over.
#[test]
fn native_expiry_follows_the_injected_clock() {
    const Y2100_MS: u64 = 4_102_444_800_000;
    const Y2200_MS: u64 = 7_258_118_400_000;
    const Y2300_MS: u64 = 10_413_792_000_000;
    let endpoint = common::standalone();
    let clock = ManualClock::new(Y2200_MS);
    let mut config = RedisBackendConfig::new(endpoint.clone(), common::namespace("clock"));
    config.native_ttl_grace = Duration::from_millis(5);
    config.clock = std::sync::Arc::new(clock.clone());
    let b = std::sync::Arc::new(RedisBackend::connect(config).unwrap());
    let _guard = common::ClearOnDrop(b.clone());
    let mut conn = raw(&endpoint);
    let expiring = |at: u64| {
        let mut v = Vec::new();
        Envelope::encode_into(Some(at), b"payload", &mut v);
        v
    };
    let redis_key = |i: u32| {
        let mut k = format!("{{{}:0001}}v", b.config().namespace).into_bytes();
        k.extend_from_slice(&key(1, i));
        k
    };
    let pexpiretime = |conn: &mut redis::Connection, i: u32| -> i64 {
        redis::cmd("PEXPIRETIME")
            .arg(redis_key(i))
            .query(conn)
            .unwrap()
    };
    b.put(&key(1, 1), &expiring(Y2100_MS)).unwrap();
    b.put(&key(1, 2), &expiring(Y2300_MS)).unwrap();
    assert_eq!(
        pexpiretime(&mut conn, 1),
        -1,
        "past by the injected clock: not handed to Redis"
    );
    assert_eq!(
        pexpiretime(&mut conn, 2),
        (Y2300_MS + 5) as i64,
        "the envelope expiry plus the grace"
    );
    clock.set(Y2300_MS + 5);
    b.put(&key(1, 2), &expiring(Y2300_MS)).unwrap();
    assert_eq!(pexpiretime(&mut conn, 2), -1, "the clock moved past it");
}

#[test]
fn a_key_group_is_one_cluster_slot() {
    let endpoint = common::cluster();
    let (_guard, b) = common::backend(endpoint.clone(), "slot");
    let ns = b.config().namespace.clone();
    let urls = match &endpoint {
        highwater_redis::RedisEndpoint::Cluster(u) => u.clone(),
        _ => unreachable!(),
    };
    let mut conn = redis::Client::open(urls[0].as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut slot = |k: &[u8]| -> i64 {
        let mut full = format!("{{{ns}:0005}}v").into_bytes();
        full.extend_from_slice(k);
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(full)
            .query(&mut conn)
            .unwrap()
    };
    let first = slot(&key(5, 0));
    for i in 1..50 {
        assert_eq!(slot(&key(5, i)), first);
    }
    for i in 0..50 {
        b.put(&key(5, i), &plain(b"v")).unwrap();
    }
    assert_eq!(b.scan_prefix(&5u16.to_be_bytes()).unwrap().len(), 50);
}

/// Bad configuration is refused up front with an invalid-argument error.
#[test]
fn bad_configuration_is_invalid() {
    let url = common::standalone_url();
    assert!(matches!(
        RedisBackend::open(&url, "has space"),
        Err(highwater_core::Error::InvalidArgument(_))
    ));
    let tls = url.replacen("redis://", "rediss://", 1);
    match RedisBackend::open(&tls, "tls") {
        Err(highwater_core::Error::InvalidArgument(msg)) => {
            assert!(msg.contains("tls") || msg.contains("TLS"), "{msg}")
        }
        other => panic!("rediss:// without a TLS feature must be invalid, got {other:?}"),
    }
    assert!(matches!(
        RedisBackend::open("http://x/", "ns"),
        Err(highwater_core::Error::InvalidArgument(_))
    ));
}

/// Calls of `command` the server has served (`INFO commandstats`).
fn calls(conn: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    let field = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(field.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Map state reads (`entries`, `is_empty`, `clear`) go through the map's
/// index — never a `SCAN` of the server — whatever else the namespace
/// holds; the index follows puts and removes, and members whose entry Redis
/// expired are skipped and cleaned up.
#[test]
fn map_state_reads_use_the_index() {
    use highwater_core::{KeyedStateContext, MapStateDescriptor, TtlConfig};
    let dir = tempfile::tempdir().unwrap();
    let server = common::PrivateRedis::start(dir.path());
    let endpoint = highwater_redis::RedisEndpoint::parse(&server.url()).unwrap();
    let mut config = RedisBackendConfig::new(endpoint.clone(), "maps");
    config.native_ttl_grace = Duration::from_millis(0);
    let b: std::sync::Arc<dyn StateBackend> =
        std::sync::Arc::new(RedisBackend::connect(config).unwrap());
    let mut conn = raw(&endpoint);
    // Bystanders: plain values in the same namespace.
    let mut batch = WriteBatch::new();
    for i in 0..5000 {
        batch.put(key((i % 128) as u16, i), plain(b"bystander"));
    }
    b.write_batch(batch).unwrap();

    let ctx = KeyedStateContext::new(b.clone(), "op", 128).unwrap();
    let m = ctx
        .map_state::<&str, u32, String>(&MapStateDescriptor::new("m"))
        .unwrap();
    for i in 0..100u32 {
        m.put(&"k", &i, &format!("v{i}")).unwrap();
    }
    m.put(&"other", &1, &"x".to_string()).unwrap();
    let scans = calls(&mut conn, "scan");
    let mut entries = m.entries(&"k").unwrap();
    entries.sort();
    assert_eq!(entries.len(), 100);
    assert_eq!(entries[7], (7, "v7".to_string()));
    assert!(!m.is_empty(&"k").unwrap());
    for i in 0..50u32 {
        m.remove(&"k", &i).unwrap();
    }
    assert_eq!(m.entries(&"k").unwrap().len(), 50);
    m.clear(&"k").unwrap();
    assert!(m.is_empty(&"k").unwrap());
    assert_eq!(m.entries(&"other").unwrap().len(), 1);
    assert_eq!(
        calls(&mut conn, "scan"),
        scans,
        "map state reads must not SCAN the server"
    );
    // Removing every entry removed the index (an empty sorted set is gone).
    let indexes: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("{maps:*}i*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(indexes.len(), 1, "only the index of \"other\" is left");

    // Entries with a TTL that Redis expires: skipped, and their index
    // members removed on the next read.
    let clock = highwater_core::SystemClock;
    let t =
        KeyedStateContext::with_clock(b.clone(), "op", 128, std::sync::Arc::new(clock)).unwrap();
    let short = t
        .map_state::<&str, u32, u32>(
            &MapStateDescriptor::new("short").with_ttl(TtlConfig::new(Duration::from_millis(200))),
        )
        .unwrap();
    for i in 0..10u32 {
        short.put(&"k", &i, &i).unwrap();
    }
    let index_len = |conn: &mut redis::Connection| -> usize {
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("{maps:*}i*").query(conn).unwrap();
        keys.iter()
            .map(|k| redis::cmd("ZCARD").arg(k).query::<usize>(conn).unwrap())
            .sum()
    };
    assert_eq!(index_len(&mut conn), 11);
    std::thread::sleep(Duration::from_millis(400));
    assert!(short.entries(&"k").unwrap().is_empty());
    assert_eq!(index_len(&mut conn), 1, "stale index members are cleaned");
    assert_eq!(b.stats().entries, 5001);
}
