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

/// The encoded state key of `key` (no namespace or user key) in its key
/// group under `max_parallelism`.
fn state_key(operator: &str, state: &str, key: &[u8], max_parallelism: u16) -> Vec<u8> {
    StateKey {
        key_group: key_group_for(key, max_parallelism),
        operator,
        state,
        key,
        namespace: &[],
        user_key: &[],
    }
    .encode()
    .unwrap()
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
        if k.is_multiple_of(3) {
            seen.add_all(&k, &[format!("a{k}"), format!("b{k}")])
                .unwrap();
        }
        if k.is_multiple_of(5) {
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
    // Memory and RocksDB restore atomically and load blocks as they are
    // verified; Redis gets them only once the whole savepoint is verified.
    std::fs::create_dir_all(d.join("redis")).unwrap();
    let server = PrivateRedis::start(&d.join("redis"));
    type Open<'a> = &'a dyn Fn(usize) -> Arc<dyn StateBackend>;
    let backends: [(&str, Open<'_>); 3] = [
        ("memory", &|_| Arc::new(MemoryBackend::new())),
        ("rocksdb", &|i| {
            let config = RocksDbConfig::new(d.join(format!("rocks{i}")));
            Arc::new(RocksDbBackend::with_config(config).unwrap())
        }),
        ("redis", &|i| {
            Arc::new(RedisBackend::open(&server.url(), &format!("corrupt{i}")).unwrap())
        }),
    ];
    for (i, (what, file, damage)) in damages.into_iter().enumerate() {
        let copy = d.join(format!("copy{i}"));
        copy_dir(&sp, &copy);
        damage(&copy.join(file));
        for (j, (name, open)) in backends.iter().enumerate() {
            let n = i * backends.len() + j;
            let live = manager(open(n), &d.join(format!("l{n}")), 128);
            workload(&live, 50);
            let before = dump(&**live.backend());
            assert!(!before.is_empty());
            let err = live
                .restore_savepoint(local(&copy))
                .expect_err(&format!("{name}: {what}"));
            assert!(
                err.is_corruption() || err.kind() == ErrorKind::NotFound,
                "{name}: {what}: {err}"
            );
            assert_eq!(
                dump(&**live.backend()),
                before,
                "{name}: {what}: live state changed"
            );
            live.close().unwrap();
        }
    }
    drop(server);
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

/// `d` with every list whose elements expire one by one (value envelope
/// tag 2) in the whole-list form: the elements concatenated under the
/// latest of their expiries (tag 1).
fn whole_list_form(d: Dump) -> Dump {
    d.into_iter()
        .map(|(k, v)| {
            let env = highwater::core::Envelope::decode(&v).unwrap();
            if !env.elements {
                return (k, v);
            }
            let items: Vec<u8> = env
                .iter_elements()
                .flat_map(|e| e.unwrap().1.to_vec())
                .collect();
            let mut out = Vec::new();
            highwater::core::Envelope::encode_into(env.expires_at_ms, &items, &mut out);
            (k, out)
        })
        .collect()
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
    // The fixture's list with a TTL is in the whole-list form written
    // before elements expired one by one (it still reads: below); today's
    // job writes each element's expiry, which folds back to that form.
    assert_eq!(
        dump(&**m.backend()),
        whole_list_form(rehash(&dump(&**source.backend()), 64))
    );
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

/// Schema evolution against a model: a value type in versions 1, 2 and 3,
/// restored from savepoints of versions 1 and 2 through the migrations.
mod evolution {
    use super::*;
    use highwater_testkit::SplitMix64;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct V1 {
        count: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct V2 {
        count: u64,
        label: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct V3 {
        total: u64,
        label: String,
        flags: Vec<bool>,
    }

    fn up2(v: V1) -> V2 {
        V2 {
            count: u64::from(v.count) * 10,
            label: format!("c{}", v.count),
        }
    }

    fn up3(v: V2) -> V3 {
        V3 {
            total: v.count + 1,
            flags: vec![v.count.is_multiple_of(2); v.label.len()],
            label: v.label,
        }
    }

    /// Version 1 state: a value, a list (TTL) and a map state of V1.
    struct Model {
        values: BTreeMap<u32, V1>,
        lists: BTreeMap<u32, Vec<V1>>,
        maps: BTreeMap<(String, u8), V1>,
    }

    fn write_v1(m: &StateManager, seed: u64) -> Model {
        let ctx = m.keyed_state("evolve").unwrap();
        let values = ctx
            .value_state::<u32, V1>(&ValueStateDescriptor::new("acc"))
            .unwrap();
        let lists = ctx
            .list_state::<u32, V1>(
                &ListStateDescriptor::new("events")
                    .with_ttl(TtlConfig::new(Duration::from_secs(600))),
            )
            .unwrap();
        let maps = ctx
            .map_state::<String, u8, V1>(&MapStateDescriptor::new("by_kind"))
            .unwrap();
        let mut rng = SplitMix64::new(seed);
        let mut model = Model {
            values: BTreeMap::new(),
            lists: BTreeMap::new(),
            maps: BTreeMap::new(),
        };
        for _ in 0..400 {
            let k = rng.below(150) as u32;
            let v = V1 {
                count: rng.below(1_000_000) as u32,
            };
            match rng.below(3) {
                0 => {
                    values.update(&k, &v).unwrap();
                    model.values.insert(k, v);
                }
                1 => {
                    lists.add(&k, &v).unwrap();
                    model.lists.entry(k).or_default().push(v);
                }
                _ => {
                    let uk = rng.below(4) as u8;
                    maps.put(&format!("u{k}"), &uk, &v).unwrap();
                    model.maps.insert((format!("u{k}"), uk), v);
                }
            }
        }
        model
    }

    fn v2_descriptors(m: &StateManager) {
        let ctx = m.keyed_state("evolve").unwrap();
        ctx.value_state::<u32, V2>(
            &ValueStateDescriptor::new("acc")
                .with_schema_version(2)
                .migrate_from(1, up2),
        )
        .unwrap();
        ctx.list_state::<u32, V2>(
            &ListStateDescriptor::new("events")
                .with_schema_version(2)
                .migrate_from(1, up2),
        )
        .unwrap();
        ctx.map_state::<String, u8, V2>(
            &MapStateDescriptor::new("by_kind")
                .with_schema_version(2)
                .migrate_from(1, up2),
        )
        .unwrap();
    }

    fn check_v3(m: &StateManager, model: &Model) {
        let ctx = m.keyed_state("evolve").unwrap();
        let values = ctx
            .value_state::<u32, V3>(
                &ValueStateDescriptor::new("acc")
                    .with_schema_version(3)
                    .migrate_from(1, up2)
                    .migrate_from(2, up3),
            )
            .unwrap();
        let lists = ctx
            .list_state::<u32, V3>(
                &ListStateDescriptor::new("events")
                    .with_schema_version(3)
                    .migrate_from(1, up2)
                    .migrate_from(2, up3),
            )
            .unwrap();
        let maps = ctx
            .map_state::<String, u8, V3>(
                &MapStateDescriptor::new("by_kind")
                    .with_schema_version(3)
                    .migrate_from(1, up2)
                    .migrate_from(2, up3),
            )
            .unwrap();
        for (k, v) in &model.values {
            assert_eq!(values.get(k).unwrap(), Some(up3(up2(v.clone()))), "acc {k}");
        }
        for (k, l) in &model.lists {
            let want: Vec<V3> = l.iter().cloned().map(up2).map(up3).collect();
            assert_eq!(lists.get(k).unwrap(), want, "events {k}");
        }
        for ((k, uk), v) in &model.maps {
            assert_eq!(
                maps.get(k, uk).unwrap(),
                Some(up3(up2(v.clone()))),
                "by_kind {k}/{uk}"
            );
        }
    }

    fn v3_manager(d: &Path, name: &str) -> StateManager {
        manager(Arc::new(MemoryBackend::new()), &d.join(name), 128)
    }

    fn register_v3(m: &StateManager, with_first_step: bool) {
        let ctx = m.keyed_state("evolve").unwrap();
        let mut d = ValueStateDescriptor::<V3>::new("acc")
            .with_schema_version(3)
            .migrate_from(2, up3);
        if with_first_step {
            d = d.migrate_from(1, up2);
        }
        ctx.value_state::<u32, V3>(&d).unwrap();
    }

    /// Checkpoints migrate like savepoints: a version 3 job restores a
    /// version 1 checkpoint (a value, a list with a TTL, a map), migrated
    /// eagerly during the restore, which then takes a checkpoint recording
    /// version 3; the next restore migrates nothing. Without a migration
    /// from version 1 the restore is refused before anything is loaded.
    #[test]
    fn a_checkpoint_of_version_1_restores_into_version_3_against_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let m1 = v3_manager(d, "c");
        let model = write_v1(&m1, 0xc0ffee);
        m1.checkpoint().unwrap().wait().unwrap();
        m1.close().unwrap();
        let empty = Model {
            values: BTreeMap::new(),
            lists: BTreeMap::new(),
            maps: BTreeMap::new(),
        };

        let refused = v3_manager(d, "c");
        register_v3(&refused, false);
        let err = refused.restore_latest().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
        assert!(
            err.to_string().contains("no migration from version 1"),
            "{err}"
        );
        assert_eq!(refused.backend().stats().entries, 0, "nothing was loaded");
        refused.close().unwrap();

        let m3 = v3_manager(d, "c");
        check_v3(&m3, &empty); // registers the version 3 handles
        let info = m3.restore_latest().unwrap().unwrap();
        assert_eq!(info.migrated.len(), 3, "{:?}", info.migrated);
        assert!(
            info.migrated
                .iter()
                .all(|(_, _, from, to)| (*from, *to) == (1, 3))
        );
        let taken = info
            .migration_checkpoint
            .expect("a checkpoint of the migrated state");
        check_v3(&m3, &model);
        let history = m3.checkpoint_history().unwrap();
        let newest = history.last().unwrap();
        assert_eq!(newest.id, taken);
        let manifest = newest.manifest.as_ref().unwrap();
        for state in ["acc", "events", "by_kind"] {
            assert_eq!(
                manifest.schema("evolve", state).unwrap().version,
                3,
                "{state}"
            );
        }
        m3.close().unwrap();

        let again = v3_manager(d, "c");
        check_v3(&again, &empty);
        let info = again.restore_latest().unwrap().unwrap();
        assert!(info.migrated.is_empty() && info.migration_checkpoint.is_none());
        check_v3(&again, &model);
    }

    #[test]
    fn versions_1_to_2_to_3_against_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let m1 = v3_manager(d, "c1");
        let model = write_v1(&m1, 0x5eed);
        m1.savepoint(local(&d.join("sp1"))).unwrap().wait().unwrap();

        // Version 2 job: restores version 1 and saves version 2.
        let m2 = v3_manager(d, "c2");
        v2_descriptors(&m2);
        let r = m2.restore_savepoint(local(&d.join("sp1"))).unwrap();
        assert_eq!(r.migrated.len(), 3);
        assert!(
            r.migrated
                .iter()
                .all(|(_, _, from, to)| (*from, *to) == (1, 2))
        );
        let sp2 = m2.savepoint(local(&d.join("sp2"))).unwrap().wait().unwrap();
        assert_eq!(sp2.entries, r.entries);

        // Version 3 from version 2, and from version 1 in one go.
        for (name, sp) in [("c3a", "sp2"), ("c3b", "sp1")] {
            let m3 = v3_manager(d, name);
            check_v3(&m3, &BTreeMap::new().into_model());
            let r = m3.restore_savepoint(local(&d.join(sp))).unwrap();
            assert!(r.migrated.iter().all(|(_, _, _, to)| *to == 3), "{r:?}");
            check_v3(&m3, &model);
            // The restored state's schema is version 3 from now on: a
            // checkpoint records it, and a restore of that checkpoint
            // needs no migration.
            let id = r.checkpoint.expect("a checkpoint after the restore");
            let m = m3.checkpoint_history().unwrap();
            let manifest = m
                .iter()
                .find(|h| h.id == id)
                .unwrap()
                .manifest
                .as_ref()
                .unwrap();
            assert_eq!(manifest.schema("evolve", "acc").unwrap().version, 3);
            m3.restore(id).unwrap();
            check_v3(&m3, &model);
        }
        // TTL expiry survives the migration unchanged.
        let m3 = v3_manager(d, "c3c");
        check_v3(&m3, &BTreeMap::new().into_model());
        m3.restore_savepoint(local(&d.join("sp1"))).unwrap();
        let (k, _) = model.lists.iter().next().unwrap();
        let expiry = |m: &StateManager| {
            let dump = dump(&**m.backend());
            dump.iter()
                .find(|(key, _)| {
                    let sk = StateKey::decode(key).unwrap();
                    sk.state == "events" && sk.key == postcard_u32(*k)
                })
                .map(|(_, v)| v[..9].to_vec())
                .unwrap()
        };
        assert_eq!(expiry(&m3), expiry(&m1));
    }

    fn postcard_u32(k: u32) -> Vec<u8> {
        // postcard writes a u32 as a varint.
        let mut out = Vec::new();
        let mut v = k;
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    }

    trait IntoModel {
        fn into_model(self) -> Model;
    }

    impl IntoModel for BTreeMap<u32, V1> {
        fn into_model(self) -> Model {
            Model {
                values: self,
                lists: BTreeMap::new(),
                maps: BTreeMap::new(),
            }
        }
    }

    #[test]
    fn a_missing_migration_or_a_newer_version_is_refused_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let m1 = v3_manager(d, "c1");
        write_v1(&m1, 7);
        m1.savepoint(local(&d.join("sp1"))).unwrap().wait().unwrap();

        // No migration from version 1.
        let m = v3_manager(d, "c2");
        register_v3(&m, false);
        let err = m.restore_savepoint(local(&d.join("sp1"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("operator=evolve") && msg.contains("state=acc"),
            "{msg}"
        );
        assert!(msg.contains("no migration from version 1"), "{msg}");
        assert_eq!(m.backend().stats().entries, 0, "nothing was loaded");

        // A migration whose input type is not the stored one.
        let m = v3_manager(d, "c3");
        m.keyed_state("evolve")
            .unwrap()
            .value_state::<u32, V3>(
                &ValueStateDescriptor::new("acc")
                    .with_schema_version(3)
                    .migrate_from(1, |old: u64| V2 {
                        count: old,
                        label: String::new(),
                    })
                    .migrate_from(2, up3),
            )
            .unwrap();
        let err = m.restore_savepoint(local(&d.join("sp1"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
        assert!(err.to_string().contains("reads u64"), "{err}");
        assert_eq!(m.backend().stats().entries, 0);

        // A newer stored version than the job knows.
        let m3 = v3_manager(d, "c4");
        register_v3(&m3, true);
        m3.restore_savepoint(local(&d.join("sp1"))).unwrap();
        m3.savepoint(local(&d.join("sp3"))).unwrap().wait().unwrap();
        let old_job = v3_manager(d, "c5");
        v2_descriptors(&old_job);
        let err = old_job
            .restore_savepoint(local(&d.join("sp3")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(old_job.backend().stats().entries, 0);
    }

    #[test]
    fn dropped_states_are_left_out_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let m1 = v3_manager(d, "c1");
        let model = write_v1(&m1, 11);
        m1.savepoint(local(&d.join("sp1"))).unwrap().wait().unwrap();

        let m = v3_manager(d, "c2");
        register_v3(&m, true);
        let r = m
            .restore_savepoint_with(
                local(&d.join("sp1")),
                &SavepointRestoreOptions::default().allow_dropped_state(true),
            )
            .unwrap();
        let mut dropped = r.dropped.clone();
        dropped.sort();
        assert_eq!(
            dropped,
            vec![
                ("evolve".to_string(), "by_kind".to_string()),
                ("evolve".to_string(), "events".to_string())
            ]
        );
        assert_eq!(r.entries, model.values.len() as u64);
        assert_eq!(m.backend().stats().entries, model.values.len() as u64);

        // Explicitly named.
        let m = v3_manager(d, "c3");
        let r = m
            .restore_savepoint_with(
                local(&d.join("sp1")),
                &SavepointRestoreOptions::default().drop_state("evolve", "events"),
            )
            .unwrap();
        assert_eq!(
            r.entries,
            (model.values.len() + model.maps.len()) as u64,
            "{r:?}"
        );
    }
}

/// The savepoint writer against a model: entries of several states (keys
/// sharing long prefixes, so the writer's sort falls back to whole keys;
/// expired ones among them) given in a random order come back from the
/// reader exactly once each, sorted by key within each state, without the
/// expired ones; a key given twice, or in the wrong key group, is refused.
#[test]
fn the_writer_keeps_every_live_entry_once_in_key_order() {
    use highwater::merge::savepoint::{SavepointParams, SavepointReader, write_savepoint};
    use highwater_testkit::SplitMix64;
    type StateName = (String, String);
    type Raw = (Vec<u8>, Vec<u8>);
    type ByState = BTreeMap<StateName, Vec<Raw>>;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..8u64 {
        let mut rng = SplitMix64::new(0x5a7e + seed);
        let max_parallelism = [1u16, 7, 128][(seed % 3) as usize];
        // One value per key (a later write replaces an earlier one).
        let mut written: BTreeMap<Vec<u8>, (StateName, bool, Vec<u8>)> = BTreeMap::new();
        for _ in 0..(200 + rng.below(800)) {
            let operator = ["ops", "op", "windows"][rng.below(3) as usize];
            let state = ["s", "state", "s2"][rng.below(3) as usize];
            // Long shared prefixes: the first bytes rarely decide.
            let mut key = b"user-000000".to_vec();
            key.extend(rng.below(500).to_string().bytes());
            let k = state_key(operator, state, &key, max_parallelism);
            let stale = rng.below(10) == 0;
            let mut v = Vec::new();
            highwater::core::Envelope::encode_into(
                stale.then_some(NOW - 1),
                &rng.next_u64().to_le_bytes(),
                &mut v,
            );
            written.insert(k, ((operator.to_string(), state.to_string()), stale, v));
        }
        let expired = written.values().filter(|(_, stale, _)| *stale).count() as u64;
        let mut model: BTreeMap<StateName, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        for (k, (name, stale, v)) in &written {
            if !stale {
                model
                    .entry(name.clone())
                    .or_default()
                    .insert(k.clone(), v.clone());
            }
        }
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> =
            written.into_iter().map(|(k, (_, _, v))| (k, v)).collect();
        // A random order.
        for i in (1..entries.len()).rev() {
            entries.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let params = SavepointParams::new(max_parallelism, NOW);
        let target = local(&dir.path().join(format!("sp{seed}")));
        let (_, info) = write_savepoint(
            entries.iter().cloned().map(Ok),
            &[],
            &params,
            &target,
            rt.handle(),
        )
        .unwrap();
        assert_eq!(info.expired_dropped, expired, "seed {seed}");
        let reader = SavepointReader::open(target, rt.handle().clone(), None).unwrap();
        let mut got: ByState = BTreeMap::new();
        for e in reader.entries() {
            let e = e.unwrap();
            let raw = e.to_raw(max_parallelism).unwrap();
            got.entry((e.operator.clone(), e.state.clone()))
                .or_default()
                .push(raw);
        }
        let want: ByState = model
            .into_iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(name, m)| (name, m.into_iter().collect()))
            .collect();
        assert_eq!(got, want, "seed {seed}");
    }

    // Refused: a key twice, a key in the wrong key group.
    let key = |kg: u16| {
        StateKey {
            key_group: highwater::KeyGroup(kg),
            operator: "op",
            state: "s",
            key: b"k",
            namespace: &[],
            user_key: &[],
        }
        .encode()
        .unwrap()
    };
    let right = key_group_for(b"k", 128).0;
    let value = {
        let mut v = Vec::new();
        highwater::core::Envelope::encode_into(None, b"v", &mut v);
        v
    };
    let params = SavepointParams::new(128, NOW);
    let target = local(&dir.path().join("refused"));
    let twice = vec![
        Ok((key(right), value.clone())),
        Ok((key(right), value.clone())),
    ];
    let err = write_savepoint(twice, &[], &params, &target, rt.handle()).unwrap_err();
    assert!(err.to_string().contains("given twice"), "{err}");
    let wrong = vec![Ok((key((right + 1) % 128), value))];
    let err = write_savepoint(wrong, &[], &params, &target, rt.handle()).unwrap_err();
    assert!(err.to_string().contains("wrong key group"), "{err}");
}

/// `load_blocks` against a model: every live entry of a savepoint of many
/// small artifacts, handed over as it is stored (same key groups) or
/// re-hashed and filtered to a key-group range; a loader that stops
/// before the end of the savepoint is an error, not a silent partial load.
#[test]
fn load_blocks_hands_over_every_entry_as_stored_or_rehashed() {
    use highwater::merge::savepoint::{
        LoadOptions, SavepointParams, load_blocks, load_savepoint, write_savepoint,
    };
    use highwater_testkit::SplitMix64;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SplitMix64::new(0x10ad);
    let mut model = Dump::new();
    for i in 0..5_000u32 {
        let (operator, state) = [("ops", "a"), ("ops", "b"), ("win", "a")][i as usize % 3];
        let key = rng.below(100_000).to_be_bytes().to_vec();
        let k = state_key(operator, state, &key, 128);
        let mut v = Vec::new();
        highwater::core::Envelope::encode_into(None, &rng.next_u64().to_le_bytes(), &mut v);
        model.insert(k, v);
    }
    let mut params = SavepointParams::new(128, NOW);
    params.artifact_bytes = 4 << 10;
    let target = local(dir.path());
    let entries = model.iter().map(|(k, v)| Ok((k.clone(), v.clone())));
    write_savepoint(entries, &[], &params, &target, rt.handle()).unwrap();
    let manifest = load_savepoint(&target, rt.handle(), None).unwrap();
    let artifacts: usize = manifest.states.iter().map(|s| s.artifacts.len()).sum();
    assert!(artifacts > 20, "many artifacts: {artifacts}");

    let collect =
        |blocks: &mut dyn Iterator<Item = highwater::Result<highwater::core::RecordBlock>>| {
            let mut got = Dump::new();
            for block in blocks {
                for (k, v) in block?.puts() {
                    assert!(got.insert(k.to_vec(), v.to_vec()).is_none(), "a key twice");
                }
            }
            Ok(got)
        };
    let (got, loaded) = load_blocks(
        &target,
        rt.handle(),
        &manifest,
        &LoadOptions::default(),
        collect,
    )
    .unwrap();
    assert_eq!(got, model);
    assert_eq!(loaded.entries, model.len() as u64);
    assert!(!loaded.rehashed);

    let keep = KeyGroupRange::new(40, 170).unwrap();
    let options = LoadOptions {
        max_parallelism: 256,
        keep: Some(keep),
        ..LoadOptions::default()
    };
    let (got, loaded) = load_blocks(&target, rt.handle(), &manifest, &options, collect).unwrap();
    let want: Dump = rehash(&model, 256)
        .into_iter()
        .filter(|(k, _)| keep.contains(StateKey::decode(k).unwrap().key_group))
        .collect();
    assert!(!want.is_empty() && want.len() < model.len());
    assert_eq!(got, want);
    assert_eq!(loaded.entries, want.len() as u64);
    assert!(loaded.rehashed);

    let stops_early = |blocks: &mut dyn Iterator<
        Item = highwater::Result<highwater::core::RecordBlock>,
    >| { blocks.next().transpose().map(|_| ()) };
    let err = load_blocks(
        &target,
        rt.handle(),
        &manifest,
        &LoadOptions::default(),
        stops_early,
    )
    .expect_err("a loader that stops early");
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
}
