//! Savepoints through the state manager: round trips across the memory,
//! RocksDB and Redis backends with a changed parallelism and number of key
//! groups, corrupt savepoints refused before anything is loaded, schema
//! checks, retention, and the committed format version 1 fixture.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use highwater::cloud::ObjectCheckpointStore;
use highwater::cloud::layout::{ARTIFACTS_DIR, MANIFESTS_DIR};
use highwater::core::key::StateKey;
use highwater::core::{SavepointManifest, key_group_for};
use highwater::memory::MemoryBackend;
use highwater::{
    CheckpointConfig, CheckpointStore, ErrorKind, KeyGroupRange, ListStateDescriptor, ManualClock,
    MapStateDescriptor, SavepointRestoreOptions, StateBackend, StateManager, TtlConfig,
    ValueStateDescriptor,
};
use highwater_redis::RedisBackend;
use highwater_rocksdb::{RocksDbBackend, RocksDbConfig};
use highwater_testkit::servers::PrivateRedis;

type Dump = BTreeMap<Vec<u8>, Vec<u8>>;

const NOW: u64 = 1_800_000_000_000;

fn manager(backend: Arc<dyn StateBackend>, store: &Path, max_parallelism: u16) -> StateManager {
    let mut cfg = CheckpointConfig::default();
    cfg.max_parallelism = max_parallelism;
    cfg.max_retained = 2;
    StateManager::builder()
        .backend(backend)
        .store(Arc::new(ObjectCheckpointStore::local(store).unwrap()))
        .config(cfg)
        .clock(Arc::new(ManualClock::new(NOW)))
        .build()
        .unwrap()
}

fn local(dir: &Path) -> Arc<dyn CheckpointStore> {
    Arc::new(ObjectCheckpointStore::local(dir).unwrap())
}

fn dump(b: &dyn StateBackend) -> Dump {
    b.scan_range(&[], &[0xFF; 4]).unwrap().into_iter().collect()
}

/// The dump with every key moved to its key group under `max_parallelism`.
fn rehash(d: &Dump, max_parallelism: u16) -> Dump {
    d.iter()
        .map(|(k, v)| {
            let sk = StateKey::decode(k).unwrap();
            let moved = StateKey {
                key_group: key_group_for(sk.key, max_parallelism),
                ..sk
            };
            (moved.encode().unwrap(), v.clone())
        })
        .collect()
}

/// Value, list and map state of two operators, some with a TTL.
fn workload(m: &StateManager, n: u32) {
    let counts = m
        .keyed_state("counts")
        .unwrap()
        .value_state::<u32, u64>(&ValueStateDescriptor::new("n"))
        .unwrap();
    let seen = m
        .keyed_state("counts")
        .unwrap()
        .list_state::<u32, String>(
            &ListStateDescriptor::new("seen").with_ttl(TtlConfig::new(Duration::from_secs(3600))),
        )
        .unwrap();
    let joins = m
        .keyed_state("joins")
        .unwrap()
        .map_state::<String, u16, Vec<u8>>(&MapStateDescriptor::new("pending"))
        .unwrap()
        .in_namespace(&7u64)
        .unwrap();
    for k in 0..n {
        counts.update(&k, &(u64::from(k) * 3)).unwrap();
        if k % 3 == 0 {
            seen.add_all(&k, &[format!("a{k}"), format!("b{k}")])
                .unwrap();
        }
        if k % 5 == 0 {
            joins
                .put(&format!("user-{k}"), &(k as u16), &vec![k as u8; 9])
                .unwrap();
        }
    }
}

/// Registers the workload's handles (so restores check their schemas).
fn register(m: &StateManager) {
    workload(m, 0);
}

fn artifact_ids(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join(ARTIFACTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn memory_to_rocksdb_to_redis_to_memory_with_new_key_groups_and_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Memory, 128 key groups.
    let m1 = manager(Arc::new(MemoryBackend::new()), &d.join("c1"), 128);
    workload(&m1, 3_000);
    let before = dump(&**m1.backend());
    let h = m1.savepoint(local(&d.join("sp1"))).unwrap();
    assert!(h.snapshot_pause() < Duration::from_secs(1));
    let sp1 = h.wait().unwrap();
    assert_eq!(sp1.entries, before.len() as u64);
    // Writing goes on after a savepoint; it is not in the savepoint.
    workload(&m1, 10);

    // RocksDB, 256 key groups: keys are re-hashed.
    let m2 = manager(
        Arc::new(RocksDbBackend::with_config(RocksDbConfig::new(d.join("rocks"))).unwrap()),
        &d.join("c2"),
        256,
    );
    register(&m2);
    let r = m2.restore_savepoint(local(&d.join("sp1"))).unwrap();
    assert!(r.rehashed);
    assert_eq!(r.entries, before.len() as u64);
    let at_256 = rehash(&before, 256);
    assert_eq!(dump(&**m2.backend()), at_256);
    m2.savepoint(local(&d.join("sp2"))).unwrap().wait().unwrap();

    // Redis, 256 key groups: byte-equal.
    std::fs::create_dir_all(d.join("redis")).unwrap();
    let server = PrivateRedis::start(&d.join("redis"));
    let m3 = manager(
        Arc::new(RedisBackend::open(&server.url(), "savepoints").unwrap()),
        &d.join("c3"),
        256,
    );
    let r = m3.restore_savepoint(local(&d.join("sp2"))).unwrap();
    assert!(!r.rehashed);
    assert_eq!(dump(&**m3.backend()), at_256);
    m3.savepoint(local(&d.join("sp3"))).unwrap().wait().unwrap();

    // Back to memory at 128 key groups: byte-equal to the start, and the
    // savepoint it writes is the first one, artifact for artifact.
    let m4 = manager(Arc::new(MemoryBackend::new()), &d.join("c4"), 128);
    m4.restore_savepoint(local(&d.join("sp3"))).unwrap();
    assert_eq!(dump(&**m4.backend()), before);
    m4.savepoint(local(&d.join("sp4"))).unwrap().wait().unwrap();
    assert_eq!(artifact_ids(&d.join("sp4")), artifact_ids(&d.join("sp1")));

    // Typed reads see the state after the round trip.
    let counts = m4
        .keyed_state("counts")
        .unwrap()
        .value_state::<u32, u64>(&ValueStateDescriptor::new("n"))
        .unwrap();
    assert_eq!(counts.get(&2_999).unwrap(), Some(8_997));

    // Parallelism 4 at 128 key groups → 3 subtasks at 256: the subtasks'
    // state partitions the whole.
    let mut union = Dump::new();
    for i in 0..3u16 {
        let sub = manager(
            Arc::new(MemoryBackend::new()),
            &d.join(format!("sub{i}")),
            256,
        );
        let range = KeyGroupRange::for_subtask(256, 3, i).unwrap();
        sub.restore_savepoint_with(
            local(&d.join("sp1")),
            &SavepointRestoreOptions::default().key_groups(range),
        )
        .unwrap();
        let part = dump(&**sub.backend());
        assert!(!part.is_empty());
        for k in part.keys() {
            assert!(range.contains(StateKey::decode(k).unwrap().key_group));
        }
        let n = union.len();
        union.extend(part.clone());
        assert_eq!(union.len(), n + part.len(), "subtasks overlap");
    }
    assert_eq!(union, at_256);
    drop(server);
}

/// Every way a savepoint store can be damaged; each must give a typed error
/// and leave the live state as it was.
#[test]
fn corrupt_savepoints_are_refused_before_anything_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = manager(Arc::new(MemoryBackend::new()), &d.join("c"), 128);
    workload(&m, 2_000);
    m.savepoint(local(&d.join("sp"))).unwrap().wait().unwrap();
    let sp = d.join("sp");
    let names = |sub: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(sp.join(sub))
            .unwrap()
            .map(|e| PathBuf::from(sub).join(e.unwrap().file_name()))
            .collect();
        v.sort();
        v
    };
    let artifacts = names(ARTIFACTS_DIR);
    let manifest = names(MANIFESTS_DIR).remove(0);
    assert!(artifacts.len() >= 3, "one artifact per state at least");

    // Each damage gets the root of a fresh copy of the savepoint.
    type Damage = (&'static str, PathBuf, fn(&Path));
    fn flip_last(p: &Path) {
        let mut b = std::fs::read(p).unwrap();
        let i = b.len() - 1;
        b[i] ^= 0x10;
        std::fs::write(p, b).unwrap();
    }
    fn flip_header(p: &Path) {
        let mut b = std::fs::read(p).unwrap();
        b[9] ^= 0x10;
        std::fs::write(p, b).unwrap();
    }
    fn flip_middle(p: &Path) {
        let mut b = std::fs::read(p).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x10;
        std::fs::write(p, b).unwrap();
    }
    fn truncate(p: &Path) {
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..b.len() / 2]).unwrap();
    }
    fn delete(p: &Path) {
        std::fs::remove_file(p).unwrap();
    }
    let last = artifacts.last().unwrap().clone();
    let first = artifacts[0].clone();
    let damages: Vec<Damage> = vec![
        ("flip in an artifact's payload", last.clone(), flip_last),
        ("flip in an artifact's header", first.clone(), flip_header),
        ("truncated artifact", last.clone(), truncate),
        ("deleted artifact", first.clone(), delete),
        ("flip in the manifest", manifest.clone(), flip_middle),
        ("truncated manifest", manifest.clone(), truncate),
        ("deleted manifest", manifest.clone(), delete),
    ];
    for (i, (what, file, damage)) in damages.into_iter().enumerate() {
        let copy = d.join(format!("copy{i}"));
        copy_dir(&sp, &copy);
        damage(&copy.join(file));
        let live = manager(
            Arc::new(MemoryBackend::new()),
            &d.join(format!("l{i}")),
            128,
        );
        workload(&live, 50);
        let before = dump(&**live.backend());
        let err = live.restore_savepoint(local(&copy)).expect_err(what);
        assert!(
            err.is_corruption() || err.kind() == ErrorKind::NotFound,
            "{what}: {err}"
        );
        assert_eq!(
            dump(&**live.backend()),
            before,
            "{what}: live state changed"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_savepoint_with_other_types_is_refused_and_renames_apply() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = manager(Arc::new(MemoryBackend::new()), &d.join("c"), 128);
    workload(&m, 100);
    let info = m.savepoint(local(&d.join("sp"))).unwrap().wait().unwrap();
    let bytes = std::fs::read_dir(d.join("sp").join(MANIFESTS_DIR))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .next()
        .unwrap();
    let sp = SavepointManifest::decode(&bytes).unwrap();
    assert_eq!(sp.savepoint_id, info.id);
    let n = sp.states.iter().find(|s| s.state == "n").unwrap();
    let schema = n.schema.as_ref().unwrap();
    assert_eq!(
        (schema.key_type.as_str(), schema.value_type.as_str()),
        ("u32", "u64")
    );
    let seen = sp.states.iter().find(|s| s.state == "seen").unwrap();
    assert!(seen.schema.as_ref().unwrap().ttl.is_some());

    // A job whose handle reads `counts/n` as i64 is refused, untouched.
    let other = manager(Arc::new(MemoryBackend::new()), &d.join("o"), 128);
    let wrong = other
        .keyed_state("counts")
        .unwrap()
        .value_state::<u32, i64>(&ValueStateDescriptor::new("n"))
        .unwrap();
    wrong.update(&1, &-5).unwrap();
    let err = other.restore_savepoint(local(&d.join("sp"))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert_eq!(wrong.get(&1).unwrap(), Some(-5));

    // Renamed, the same state loads under its new name.
    let renamed = manager(Arc::new(MemoryBackend::new()), &d.join("r"), 128);
    renamed
        .restore_savepoint_with(
            local(&d.join("sp")),
            &SavepointRestoreOptions::default().rename(("counts", "n"), ("counts", "total")),
        )
        .unwrap();
    let total = renamed
        .keyed_state("counts")
        .unwrap()
        .value_state::<u32, u64>(&ValueStateDescriptor::new("total"))
        .unwrap();
    assert_eq!(total.get(&7).unwrap(), Some(21));
    assert!(
        renamed
            .keyed_state("counts")
            .unwrap()
            .value_state::<u32, u64>(&ValueStateDescriptor::new("n"))
            .unwrap()
            .get(&7)
            .unwrap()
            .is_none()
    );
}

#[test]
fn retention_never_deletes_a_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = manager(Arc::new(MemoryBackend::new()), &d.join("c"), 128);
    workload(&m, 300);
    let target = local(&d.join("sp"));
    for _ in 0..3 {
        m.savepoint(target.clone()).unwrap().wait().unwrap();
    }
    let before = artifact_ids(&d.join("sp"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt
        .block_on(highwater::apply_retention(&*target, 1))
        .unwrap();
    assert_eq!(report.savepoints.len(), 3);
    assert!(report.manifests_deleted.is_empty());
    assert_eq!(report.artifacts_deleted, 0);
    assert_eq!(artifact_ids(&d.join("sp")), before);
    let again = manager(Arc::new(MemoryBackend::new()), &d.join("a"), 128);
    again.restore_savepoint(target).unwrap();
    assert_eq!(dump(&**again.backend()), dump(&**m.backend()));
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/savepoint-v1")
}

/// A savepoint of format version 1, committed: every later build must
/// restore it to the same state.
#[test]
fn the_version_1_savepoint_fixture_restores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = manager(Arc::new(MemoryBackend::new()), &d.join("src"), 128);
    workload(&source, 200);
    if std::env::var_os("HIGHWATER_REGENERATE_FIXTURES").is_some() {
        let _ = std::fs::remove_dir_all(fixture_dir());
        source
            .savepoint(local(&fixture_dir()))
            .unwrap()
            .wait()
            .unwrap();
    }
    let copy = d.join("fixture");
    copy_dir(&fixture_dir(), &copy);
    let m = manager(Arc::new(MemoryBackend::new()), &d.join("c"), 64);
    register(&m);
    let r = m.restore_savepoint(local(&copy)).unwrap();
    assert!(r.rehashed);
    assert_eq!(dump(&**m.backend()), rehash(&dump(&**source.backend()), 64));
    let seen = m
        .keyed_state("counts")
        .unwrap()
        .list_state::<u32, String>(&ListStateDescriptor::new("seen"))
        .unwrap();
    assert_eq!(
        seen.get(&3).unwrap(),
        vec!["a3".to_string(), "b3".to_string()]
    );
}
