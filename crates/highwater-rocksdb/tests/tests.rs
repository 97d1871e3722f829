//! Tests of the RocksDB backend: the testkit conformance suite, TTL
//! compaction, native checkpoints opened again (whole and rescaled), damaged
//! native checkpoints, and metrics.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use highwater_core::{
    ArtifactId, Error, KeyGroupRange, ManualClock, NativeCheckpoints, NativeFileRef,
    NativeFilesInMemory, SnapshotKind, StateBackend, WriteBatch,
};
use highwater_rocksdb::{BlobValues, RocksDbBackend, RocksDbConfig};
use highwater_testkit::SplitMix64;
use highwater_testkit::keys::{encode_key, expiring_value, plain_value};
use highwater_testkit::model::read_snapshot;

/// A small configuration: tests open many databases at once.
fn small(path: &Path) -> RocksDbConfig {
    let mut c = RocksDbConfig::new(path);
    c.write_buffer_size = 1 << 20;
    c.block_cache_size = 4 << 20;
    c
}

fn open(dir: &tempfile::TempDir, name: &str) -> RocksDbBackend {
    RocksDbBackend::with_config(small(&dir.path().join(name))).unwrap()
}

mod conformance {
    highwater_testkit::backend_conformance!(|| {
        let dir = tempfile::tempdir().unwrap();
        let backend = std::sync::Arc::new(super::open(&dir, "db"));
        (dir, backend)
    });
}

/// Everything the backend holds, in key order.
fn all(b: &dyn StateBackend) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = b.scan_range(&[], &[0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
    // Keys at or above the bound (none here) would be missed by the range.
    out.extend(b.scan_prefix(&[0xff, 0xff, 0xff, 0xff, 0xff]).unwrap());
    out
}

/// `n` keys spread over `max_parallelism` key groups and two operators.
fn fill(
    b: &dyn StateBackend,
    n: u32,
    max_parallelism: u16,
    seed: u64,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    let mut model = BTreeMap::new();
    let mut batch = WriteBatch::new();
    for i in 0..n {
        let kg = (i % u32::from(max_parallelism)) as u16;
        let op = if i % 3 == 0 { "join" } else { "window" };
        let k = encode_key(kg, op, "s", &i.to_be_bytes(), b"", b"");
        let v = plain_value(&rng.bytes(24));
        batch.put(k.clone(), v.clone());
        model.insert(k, v);
        if batch.len() == 1000 {
            b.write_batch(std::mem::take(&mut batch)).unwrap();
        }
    }
    b.write_batch(batch).unwrap();
    model
}

/// Reads a native snapshot's files as a restore would receive them.
fn native_files(s: &dyn highwater_core::StateSnapshot) -> Vec<(String, Bytes)> {
    let native = s.native().expect("a native snapshot names its files");
    native
        .files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(native.dir.join(&f.name)).unwrap();
            assert_eq!(bytes.len() as u64, f.len, "listed length of {}", f.name);
            (f.name.clone(), Bytes::from(bytes))
        })
        .collect()
}

#[test]
fn expired_entries_are_physically_dropped_by_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut config = small(&dir.path().join("db"));
    config.clock = Arc::new(clock.clone());
    let b = RocksDbBackend::with_config(config).unwrap();
    let key = |i: u32| encode_key((i % 16) as u16, "op", "ttl", &i.to_be_bytes(), b"", b"");
    for i in 0..300 {
        let v = match i % 3 {
            0 => expiring_value(1_000_500, b"short"), // expires after 500 ms
            1 => expiring_value(9_000_000, b"long"),
            _ => plain_value(b"forever"),
        };
        b.put(&key(i), &v).unwrap();
    }
    b.flush().unwrap();
    assert_eq!(
        b.stats().entries,
        300,
        "nothing is dropped before compaction"
    );
    // Not expired yet: compaction keeps everything.
    b.compact().unwrap();
    assert_eq!(
        b.stats().entries,
        300,
        "a compaction before the expiry keeps every entry"
    );
    clock.advance(Duration::from_millis(500));
    b.compact().unwrap();
    assert_eq!(
        b.stats().entries,
        200,
        "compaction after the expiry drops the 100 expired entries"
    );
    for i in 0..300 {
        let got = b.get(&key(i)).unwrap();
        assert_eq!(
            got.is_none(),
            i % 3 == 0,
            "key {i} after compaction: {got:?}"
        );
    }
    // The filter can be switched off: then expired entries stay until read
    // (the typed handles hide them) or overwritten.
    let mut config = small(&dir.path().join("db-off"));
    config.clock = Arc::new(clock.clone());
    config.ttl.compaction_filter = false;
    let off = RocksDbBackend::with_config(config).unwrap();
    off.put(&key(0), &expiring_value(1, b"old")).unwrap();
    off.compact().unwrap();
    assert_eq!(
        off.stats().entries,
        1,
        "without the filter compaction keeps expired entries"
    );
}

#[test]
fn the_default_ttl_stamps_values_without_their_own_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(5_000);
    let mut config = small(&dir.path().join("db"));
    config.clock = Arc::new(clock.clone());
    config.ttl.default_ttl = Some(Duration::from_secs(2));
    let b = RocksDbBackend::with_config(config).unwrap();
    let k = encode_key(1, "op", "s", b"k", b"", b"");
    let j = encode_key(1, "op", "s", b"j", b"", b"");
    b.put(&k, &plain_value(b"v")).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(j.clone(), expiring_value(6_000, b"own"));
    b.write_batch(batch).unwrap();
    assert_eq!(b.get(&k).unwrap(), Some(expiring_value(7_000, b"v")));
    assert_eq!(
        b.get(&j).unwrap(),
        Some(expiring_value(6_000, b"own")),
        "an own expiry is kept"
    );
    clock.set(7_000);
    b.compact().unwrap();
    assert_eq!(
        b.get(&k).unwrap(),
        None,
        "stamped entry dropped after its default ttl"
    );
    let mut bad = small(&dir.path().join("bad"));
    bad.ttl.default_ttl = Some(Duration::ZERO);
    assert!(matches!(
        RocksDbBackend::with_config(bad),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_native_checkpoint_opens_as_the_same_state_and_later_writes_do_not_leak_in() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "a");
    let model = fill(&b, 5000, 128, 1);
    let s = b
        .native()
        .expect("rocksdb takes native checkpoints")
        .native_snapshot()
        .unwrap();
    assert_eq!(s.kind(), SnapshotKind::Full);
    let files = native_files(&*s);
    assert!(
        files.iter().any(|(n, _)| n.ends_with(".sst")),
        "files: {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(files.iter().any(|(n, _)| n == "CURRENT"));
    // Writes after the checkpoint are not in it.
    b.put(
        &encode_key(3, "join", "s", b"late", b"", b""),
        &plain_value(b"x"),
    )
    .unwrap();
    b.delete(model.keys().next().unwrap()).unwrap();
    // The snapshot's entries are the checkpoint's.
    let visited = read_snapshot(&*s).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(visited.puts(), model);

    let restored = open(&dir, "b");
    restored
        .put(
            &encode_key(9, "x", "s", b"stale", b"", b""),
            &plain_value(b"gone"),
        )
        .unwrap();
    restored
        .restore_native(&mut NativeFilesInMemory::new(files.clone()), None)
        .unwrap();
    let got: BTreeMap<_, _> = all(&restored).into_iter().collect();
    assert_eq!(got, model, "restored state equals the checkpoint's");
    // A restore starts a new change epoch, and the backend is writable.
    let c = restored.snapshot(SnapshotKind::Changes).unwrap();
    assert_eq!(c.approximate_entries(), 0);
    restored
        .put(
            &encode_key(1, "x", "s", b"new", b"", b""),
            &plain_value(b"n"),
        )
        .unwrap();
    assert_eq!(restored.stats().entries, model.len() as u64 + 1);
    // The checkpoint directory goes with its snapshot.
    let native_dir = s.native().unwrap().dir.clone();
    assert!(native_dir.exists());
    drop(s);
    assert!(
        !native_dir.exists(),
        "checkpoint directory removed with its snapshot"
    );
}

#[test]
fn a_rescaling_restore_keeps_exactly_the_owned_key_groups() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "src");
    let mut model = fill(&b, 4000, 128, 2);
    // Keys in the first and last possible key groups too.
    for kg in [0u16, 127, 0xffff] {
        let k = encode_key(kg, "edge", "s", b"k", b"", b"");
        b.put(&k, &plain_value(b"edge")).unwrap();
        model.insert(k, plain_value(b"edge"));
    }
    let s = b.native_snapshot().unwrap();
    let files = native_files(&*s);
    let mut union = BTreeMap::new();
    for (i, range) in [(0u16, 43u16), (43, 90), (90, 128)].into_iter().enumerate() {
        let part = open(&dir, &format!("part-{i}"));
        let keep = KeyGroupRange::new(range.0, range.1).unwrap();
        part.restore_native(&mut NativeFilesInMemory::new(files.clone()), Some(keep))
            .unwrap();
        let got = all(&part);
        for (k, _) in &got {
            let kg = u16::from_be_bytes([k[0], k[1]]);
            assert!(
                keep.contains(highwater_core::KeyGroup(kg)),
                "key group {kg} outside {keep}"
            );
        }
        let expected: BTreeMap<_, _> = model
            .iter()
            .filter(|(k, _)| {
                keep.contains(highwater_core::KeyGroup(u16::from_be_bytes([k[0], k[1]])))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got.len(), expected.len(), "entries of {keep}");
        assert_eq!(part.stats().entries, expected.len() as u64);
        union.extend(got);
    }
    // Key group 0xffff is outside every subtask's range of 128 key groups.
    model.retain(|k, _| u16::from_be_bytes([k[0], k[1]]) < 128);
    assert_eq!(
        union, model,
        "the subtasks together hold every key exactly once"
    );
}

#[test]
fn damaged_native_checkpoints_are_refused_with_typed_errors_and_keep_the_old_state() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "src");
    fill(&b, 500, 16, 3);
    let s = b.native_snapshot().unwrap();
    let files = native_files(&*s);
    let target = open(&dir, "dst");
    let k = encode_key(1, "op", "s", b"keep", b"", b"");
    target.put(&k, &plain_value(b"me")).unwrap();

    let mut cases: Vec<(&str, Vec<(String, Bytes)>)> = Vec::new();
    cases.push((
        "no CURRENT",
        files
            .iter()
            .filter(|(n, _)| n != "CURRENT")
            .cloned()
            .collect(),
    ));
    let mut escaping = files.clone();
    escaping.push(("../evil".into(), Bytes::from_static(b"x")));
    cases.push(("a path in a file name", escaping));
    let mut twice = files.clone();
    twice.push(files[0].clone());
    cases.push(("a file given twice", twice));
    let manifest_missing: Vec<_> = files
        .iter()
        .filter(|(n, _)| !n.starts_with("MANIFEST"))
        .cloned()
        .collect();
    cases.push(("the MANIFEST missing", manifest_missing));
    for (what, case) in cases {
        let err = target
            .restore_native(&mut NativeFilesInMemory::new(case), None)
            .expect_err(what);
        assert!(
            err.is_corruption() || matches!(err, Error::Backend { .. }),
            "{what}: unexpected error kind: {err}"
        );
        assert_eq!(
            target.get(&k).unwrap(),
            Some(plain_value(b"me")),
            "{what}: old state kept"
        );
    }
    // An error from the source of files is returned as is.
    let err = target
        .restore_native(
            &mut NativeFilesInMemory::with_results(files.iter().map(|(name, bytes)| {
                let r = NativeFileRef {
                    name: name.clone(),
                    len: bytes.len() as u64,
                    id: ArtifactId::of(bytes),
                };
                let fetched = if name == "CURRENT" {
                    Err(Error::NotFound("artifact x".into()))
                } else {
                    Ok(bytes.clone())
                };
                (r, fetched)
            })),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[test]
fn metrics_report_counters_and_rocksdb_properties() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small(&dir.path().join("db"));
    config.statistics = true;
    let b = RocksDbBackend::with_config(config).unwrap();
    fill(&b, 2000, 8, 4);
    let k = encode_key(1, "join", "s", &0u32.to_be_bytes(), b"", b"");
    for _ in 0..5 {
        b.get(&k).unwrap();
    }
    b.delete(&k).unwrap();
    let m = b.metrics();
    assert_eq!(m.counters.gets, 5);
    assert_eq!(m.counters.deletes, 1);
    assert_eq!(m.counters.batch_mutations, 2000);
    assert!(
        m.estimate_num_keys >= 1000,
        "estimate-num-keys={}",
        m.estimate_num_keys
    );
    assert!(m.all_memtables_bytes > 0);
    b.flush().unwrap();
    b.get(&encode_key(1, "join", "s", &3u32.to_be_bytes(), b"", b""))
        .unwrap();
    let m = b.metrics();
    assert!(
        m.live_sst_bytes > 0,
        "after a flush the data is in SST files"
    );
    assert!(
        m.block_cache_usage > 0,
        "a read from an SST file fills the block cache"
    );
    assert!(
        b.statistics().is_some_and(|s| s.contains("rocksdb")),
        "statistics dump"
    );
}

#[test]
fn the_working_directory_is_wiped_on_open_and_invalid_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let b = RocksDbBackend::with_config(small(&path)).unwrap();
        fill(&b, 100, 8, 5);
    }
    let b = RocksDbBackend::with_config(small(&path)).unwrap();
    assert_eq!(b.stats().entries, 0, "a reopened backend starts empty");
    // A directory the backend did not create is never wiped.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), b"keep me").unwrap();
    assert!(matches!(
        RocksDbBackend::with_config(small(&foreign)),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        std::fs::read(foreign.join("precious.txt")).unwrap(),
        b"keep me"
    );
    for f in [
        |c: &mut RocksDbConfig| c.write_buffer_size = 10,
        |c: &mut RocksDbConfig| c.max_write_buffer_number = 1,
        |c: &mut RocksDbConfig| c.block_size = 0,
        |c: &mut RocksDbConfig| c.bloom_bits_per_key = -1.0,
        |c: &mut RocksDbConfig| c.max_parallelism = 0,
        |c: &mut RocksDbConfig| c.max_open_files = 3,
        // Room for less than 4.5 memtables (three in the cache's two thirds).
        |c: &mut RocksDbConfig| c.memory_budget = Some(2 << 20),
        // Blob files with the TTL compaction filter on (the default).
        |c: &mut RocksDbConfig| c.blob_values = Some(BlobValues::default()),
        |c: &mut RocksDbConfig| {
            c.ttl.compaction_filter = false;
            c.blob_values = Some(BlobValues {
                gc_age_cutoff: 1.5,
                ..BlobValues::default()
            });
        },
    ] {
        let mut c = small(&dir.path().join("other"));
        f(&mut c);
        assert!(matches!(
            RocksDbBackend::with_config(c),
            Err(Error::InvalidArgument(_))
        ));
    }
}

/// Names of the SST files among `files`.
fn sst_names(files: &[(String, Bytes)]) -> Vec<String> {
    files
        .iter()
        .filter(|(n, _)| n.ends_with(".sst"))
        .map(|(n, _)| n.clone())
        .collect()
}

/// The file `name` in one of the database directories a dropped backend
/// left in its working directory `path`.
fn left_behind(path: &Path, name: &str) -> std::path::PathBuf {
    std::fs::read_dir(path)
        .unwrap()
        .flatten()
        .map(|d| d.path().join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} was not left behind"))
}

/// Issue 17, local recovery: a backend reopened in the same working
/// directory takes the checkpoint's SST files from the previous process's
/// database (checked by length and content address) and fetches only the
/// rest; a local SST that was damaged in place (same length) or deleted is
/// fetched instead, and the state is exactly the checkpoint's every time.
/// With local recovery off, everything is fetched.
#[test]
fn local_recovery_takes_verified_local_files_and_fetches_damaged_or_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let b = RocksDbBackend::with_config(small(&path)).unwrap();
    // Three flushes: three level-0 files, below RocksDB's compaction
    // trigger, so the restored database keeps them as they are.
    let mut model = BTreeMap::new();
    for seed in 0..3 {
        model.extend(fill(&b, 3000, 64, 40 + seed));
        b.flush().unwrap();
    }
    let s = b.native_snapshot().unwrap();
    let files = native_files(&*s);
    let ssts = sst_names(&files);
    assert!(ssts.len() >= 3, "{ssts:?}");
    drop(s);
    drop(b);
    // RocksDB may have rewritten a file since (a compaction on its own):
    // what is still there is what a restart can take.
    let present = |ssts: &[String]| -> Vec<String> {
        ssts.iter()
            .filter(|n| {
                std::fs::read_dir(&path)
                    .unwrap()
                    .flatten()
                    .any(|d| d.path().join(n).exists())
            })
            .cloned()
            .collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let fetched_ssts = |fetched: &[String]| {
        sorted(
            fetched
                .iter()
                .filter(|n| n.ends_with(".sst"))
                .cloned()
                .collect(),
        )
    };
    let local = present(&ssts);
    assert!(local.len() >= 2, "{local:?} of {ssts:?} still on disk");
    let restore = |config: RocksDbConfig| {
        let r = RocksDbBackend::with_config(config).unwrap();
        let mut source = NativeFilesInMemory::new(files.clone());
        r.restore_native(&mut source, None).unwrap();
        let got: BTreeMap<_, _> = all(&r).into_iter().collect();
        assert_eq!(got, model, "restored state equals the checkpoint's");
        let fetched = source.fetched().to_vec();
        assert!(
            !path.join("local-recovery").exists(),
            "what was set aside goes after the restore"
        );
        (r, fetched)
    };
    // A restart: only the SSTs no longer on disk are fetched.
    let missing = |local: &[String]| {
        sorted(
            ssts.iter()
                .filter(|n| !local.contains(n))
                .cloned()
                .collect(),
        )
    };
    let (r, fetched) = restore(small(&path));
    assert_eq!(fetched_ssts(&fetched), missing(&local), "{fetched:?}");
    assert!(fetched.iter().any(|n| n == "CURRENT"), "{fetched:?}");
    drop(r);

    // One SST damaged in place, one deleted: those are fetched too.
    let local = present(&ssts);
    assert!(local.len() >= 2, "{local:?} of {ssts:?} still on disk");
    let damaged = left_behind(&path, &local[0]);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&damaged, &bytes).unwrap();
    std::fs::remove_file(left_behind(&path, &local[1])).unwrap();
    // An open that restores nothing (a process that died at once) keeps
    // what was set aside for the next.
    drop(RocksDbBackend::with_config(small(&path)).unwrap());
    let (r, fetched) = restore(small(&path));
    assert_eq!(
        fetched_ssts(&fetched),
        missing(&local[2..]),
        "the damaged, the deleted and the rewritten SSTs"
    );
    drop(r);

    // Local recovery off: everything is fetched, nothing is kept.
    let mut off = small(&path);
    off.local_recovery = false;
    let (r, fetched) = restore(off);
    assert_eq!(fetched.len(), files.len());
    drop(r);
    let left: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        ["HIGHWATER-ROCKSDB-WORKDIR"],
        "dropped without local recovery"
    );
}

/// Issue 17: one memory budget bounds the block cache and the memtables
/// together. 96 MiB of incompressible values (six times the budget) are
/// written in batches and read back at random, and `memory_bytes` is read
/// after every batch: it must use the cache's two thirds of the budget and
/// stay near them, under the budget; the same
/// load without a budget holds the cache's and the memtables' sizes apart.
#[test]
fn a_memory_budget_bounds_cache_and_memtables_together() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 16usize << 20;
    let peak = |memory_budget: Option<usize>| {
        let mut c = RocksDbConfig::new(dir.path().join("db"));
        c.write_buffer_size = 2 << 20;
        c.block_cache_size = 64 << 20;
        c.block_size = 4 << 10;
        c.compression = highwater_rocksdb::Compression::None;
        c.memory_budget = memory_budget;
        let b = RocksDbBackend::with_config(c).unwrap();
        let mut rng = SplitMix64::new(17);
        let value = |rng: &mut SplitMix64| -> Vec<u8> {
            let mut v = vec![0u8];
            v.extend((0..128).flat_map(|_| rng.next_u64().to_le_bytes()));
            v
        };
        let key = |i: u64| encode_key((i % 128) as u16, "op", "s", &i.to_be_bytes(), b"", b"");
        let (mut max, mut memtables_max) = (0u64, 0u64);
        let per_batch = 1024u64;
        for batch in 0..96u64 {
            let mut w = WriteBatch::new();
            for i in batch * per_batch..(batch + 1) * per_batch {
                w.put(key(i), value(&mut rng));
            }
            b.write_batch(w).unwrap();
            for _ in 0..2000 {
                let i = rng.next_u64() % ((batch + 1) * per_batch);
                assert!(b.get(&key(i)).unwrap().is_some());
            }
            let m = b.metrics();
            max = max.max(m.memory_bytes);
            memtables_max = memtables_max.max(m.all_memtables_bytes);
        }
        (max, memtables_max)
    };
    let (with_budget, _) = peak(Some(budget));
    // RocksDB's accounting gets the cache's share of the budget; the rest
    // is headroom for the allocator.
    let mut c = RocksDbConfig::new(dir.path());
    c.memory_budget = Some(budget);
    let cache = c.block_cache_capacity() as u64;
    assert!(cache < budget as u64);
    assert!(
        with_budget >= cache / 2,
        "the cache is used: peak={with_budget} cache={cache} budget={budget}"
    );
    assert!(
        with_budget <= cache + cache / 4 && with_budget < budget as u64,
        "memory stays near the cache's share and under the budget: peak={with_budget} cache={cache} budget={budget}"
    );
    let (without, memtables) = peak(None);
    assert!(
        without > budget as u64 + (budget as u64) / 4 && without >= memtables,
        "without a budget the cache alone outgrows it: peak={without} memtables={memtables}"
    );
}

/// Regression (seen as a flaky kill-and-resume test): the wipe on open
/// removed the whole directory, marker included, so a wipe cut short (the
/// process killed mid-way) could leave files without the marker, and every
/// later open refused the directory as foreign. The marker now goes never:
/// a wipe that stops part-way (here: a file made immutable, as root) leaves
/// it, and once the obstacle is gone the next open wipes and starts.
#[test]
fn a_wipe_cut_short_keeps_the_marker_and_the_next_open_succeeds() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // The wipe (local recovery sets directories aside by renaming them,
    // which an immutable file inside does not stop).
    let config = || {
        let mut c = small(&path);
        c.local_recovery = false;
        c
    };
    {
        let b = RocksDbBackend::with_config(config()).unwrap();
        fill(&b, 100, 8, 5);
    }
    let stuck = path.join("stuck");
    std::fs::create_dir_all(&stuck).unwrap();
    std::fs::write(stuck.join("file"), b"x").unwrap();
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(stuck.join("file"))
            .status()
            .is_ok_and(|s| s.success())
    };
    if uid.as_deref() != Some("0") || !chattr("+i") {
        println!("skipped: needs root and chattr on an ext2/3/4-like file system");
        return;
    }
    let failed = RocksDbBackend::with_config(config());
    let marker_left = path.join("HIGHWATER-ROCKSDB-WORKDIR").exists();
    assert!(chattr("-i"), "chattr -i");
    assert!(failed.is_err(), "the wipe cannot remove an immutable file");
    assert!(marker_left, "a wipe cut short keeps the marker");
    let b = RocksDbBackend::with_config(config()).unwrap();
    assert_eq!(b.stats().entries, 0);
    assert!(!stuck.exists());
}

#[test]
fn native_checkpoints_taken_while_writers_run_hold_whole_batches() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(open(&dir, "src"));
    let stop = AtomicBool::new(false);
    let key = |w: u8, which: &str| encode_key(u16::from(w) * 7, "op", which, &[w], b"", b"");
    let counter = |v: Option<Vec<u8>>| -> u64 {
        v.map(|v| u64::from_le_bytes(v[1..9].try_into().unwrap()))
            .unwrap_or(0)
    };
    let mut checkpoints = Vec::new();
    std::thread::scope(|s| {
        for w in 0..2u8 {
            let (b, stop) = (&b, &stop);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let v = plain_value(&n.to_le_bytes());
                    let mut batch = WriteBatch::new();
                    batch.put(key(w, "a"), v.clone()).put(key(w, "b"), v);
                    b.write_batch(batch).unwrap();
                }
            });
        }
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            let s = b.native_snapshot().unwrap();
            checkpoints.push(native_files(&*s));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let mut last = [0u64; 2];
    for (i, files) in checkpoints.into_iter().enumerate() {
        let r = open(&dir, &format!("restored-{i}"));
        r.restore_native(&mut NativeFilesInMemory::new(files), None)
            .unwrap();
        for w in 0..2u8 {
            let a = counter(r.get(&key(w, "a")).unwrap());
            let bb = counter(r.get(&key(w, "b")).unwrap());
            assert_eq!(a, bb, "checkpoint {i} writer {w}: a batch was split");
            assert!(
                a >= last[w as usize],
                "checkpoint {i} writer {w}: went back in time"
            );
            last[w as usize] = a;
        }
    }
    assert!(
        last.iter().all(|&n| n > 0),
        "writers made progress: {last:?}"
    );
}

/// RocksDB on a full disk (a 1 MiB tmpfs mounted by the test; root only,
/// elsewhere the test prints why and returns): writing and flushing past
/// the space left fails with `StorageFull`, permanent, naming the database
/// directory.
#[test]
fn a_full_disk_is_storage_full() {
    use highwater_core::ErrorKind;
    use highwater_testkit::mounts::Tmpfs;

    let Some(mount) = Tmpfs::mount_or_skip("the rocksdb full-disk test", "size=1m") else {
        return;
    };
    let path = mount.path().join("db");
    let names_the_path = |err: &Error| {
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "the message names the database directory: {err}"
        )
    };
    let b = match RocksDbBackend::with_config(small(&path)) {
        Ok(b) => b,
        // The database's own files may not fit already.
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
            names_the_path(&err);
            return;
        }
    };
    let mut rng = SplitMix64::new(7);
    let err = (0..64u32)
        .find_map(|i| {
            let mut batch = WriteBatch::new();
            for j in 0..64u32 {
                let value: Vec<u8> = (0..1024).map(|_| rng.next_u64() as u8).collect();
                batch.put(
                    encode_key(1, "op", "s", &(i * 64 + j).to_be_bytes(), b"", b""),
                    plain_value(&value),
                );
            }
            b.write_batch(batch).and_then(|()| b.flush()).err()
        })
        .expect("1 MiB cannot hold 4 MiB of incompressible values");
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert!(!err.is_transient(), "{err}");
    names_the_path(&err);
    drop(b);
}

/// Change tracking is bounded: an epoch whose distinct changed keys pass
/// `change_tracking_bytes` (a bulk load, say) keeps no log, and its changes
/// snapshot comes back full — every live entry, with `kind()` saying so.
/// The next epoch tracks again and reports puts and deletes exactly.
/// (Before, the log held every key written since the last snapshot: 185 M
/// keys, about 7 GB, during the large suite's 32 GiB load.)
#[test]
fn change_tracking_past_its_bound_answers_with_a_full_snapshot_then_tracks_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = small(&dir.path().join("db"));
    c.change_tracking_bytes = 64 << 10;
    let b = RocksDbBackend::with_config(c).unwrap();
    let mut model = fill(&b, 20_000, 128, 7);
    let gone = model.keys().nth(5).unwrap().clone();
    b.delete(&gone).unwrap();
    model.remove(&gone);
    let s = b.snapshot(SnapshotKind::Changes).unwrap();
    assert_eq!(s.kind(), SnapshotKind::Full, "the load passed the bound");
    let visited = read_snapshot(&*s).unwrap();
    assert_eq!(visited.puts(), model);
    assert_eq!(
        visited.entries.len(),
        model.len(),
        "no deletes in a full snapshot"
    );

    // A small epoch is tracked exactly again.
    let (k0, k1) = {
        let mut keys = model.keys();
        (keys.next().unwrap().clone(), keys.nth(100).unwrap().clone())
    };
    b.put(&k0, &plain_value(b"new")).unwrap();
    b.delete(&k1).unwrap();
    let s = b.snapshot(SnapshotKind::Changes).unwrap();
    assert_eq!(s.kind(), SnapshotKind::Changes);
    let visited = read_snapshot(&*s).unwrap();
    assert_eq!(
        visited.entries,
        BTreeMap::from([(k0.clone(), Some(plain_value(b"new"))), (k1, None)])
    );

    // With tracking off entirely, every changes snapshot is full.
    let mut c = small(&dir.path().join("off"));
    c.change_tracking_bytes = 0;
    let off = RocksDbBackend::with_config(c).unwrap();
    off.put(&k0, &plain_value(b"x")).unwrap();
    let s = off.snapshot(SnapshotKind::Changes).unwrap();
    assert_eq!(s.kind(), SnapshotKind::Full);
    assert_eq!(
        read_snapshot(&*s).unwrap().puts(),
        BTreeMap::from([(k0, plain_value(b"x"))])
    );
}

/// `db_dir` names the live database: after a clear (a new generation) it
/// is the new one, and with local recovery it stays when the backend is
/// dropped, where the raw crate reads what the backend wrote (what the
/// large suite's gets baseline does).
#[test]
fn db_dir_is_the_live_database_and_outlives_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "live");
    let first = b.db_dir();
    b.clear().unwrap();
    let k = encode_key(3, "op", "s", b"k", b"", b"");
    b.put(&k, &plain_value(b"v")).unwrap();
    b.flush().unwrap();
    let live = b.db_dir();
    assert_ne!(live, first, "a clear opens a new database");
    assert!(!first.exists(), "the old generation is removed");
    let stored = b.get(&k).unwrap();
    assert!(b.config().local_recovery);
    drop(b);
    let raw = rocksdb::DB::open_for_read_only(&rocksdb::Options::default(), &live, false).unwrap();
    assert_eq!(raw.get(&k).unwrap(), stored);
    assert!(stored.is_some());
}

/// Issue 17, key-value separation: with `blob_values` the values live in
/// blob files, which native checkpoints carry; after half the values were
/// overwritten and a compaction ran with garbage collection over all blob
/// files, the checkpoint holds the live values once (the overwritten ones
/// reclaimed) and restores as exactly the model; a restart in the same
/// working directory takes the blob files it still holds instead of
/// fetching them.
#[test]
fn blob_values_are_carried_by_native_checkpoints_collected_and_recovered_locally() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let config = |path: &Path| {
        let mut c = small(path);
        c.ttl.compaction_filter = false;
        c.blob_values = Some(BlobValues {
            min_value_size: 64,
            file_size: 1 << 20,
            gc_age_cutoff: 1.0,
        });
        c
    };
    let b = RocksDbBackend::with_config(config(&path)).unwrap();
    let mut rng = SplitMix64::new(90);
    let mut model = BTreeMap::new();
    let n = 3000u32;
    let value_len = 200;
    for round in 0..2 {
        let mut batch = WriteBatch::new();
        // The second round overwrites every other key: the first round's
        // blob file keeps live values, so only garbage collection frees it.
        for i in (0..n).filter(|i| round == 0 || i % 2 == 0) {
            let k = encode_key((i % 64) as u16, "op", "s", &i.to_be_bytes(), b"", b"");
            let v = plain_value(&rng.bytes(value_len));
            batch.put(k.clone(), v.clone());
            model.insert(k, v);
        }
        // A short value stays in the SST files.
        let k = encode_key(7, "op", "short", &[round], b"", b"");
        batch.put(k.clone(), plain_value(b"tiny"));
        model.insert(k, plain_value(b"tiny"));
        b.write_batch(batch).unwrap();
        b.flush().unwrap();
    }
    b.compact().unwrap();
    let s = b.native_snapshot().unwrap();
    let files = native_files(&*s);
    let bytes_of = |suffix: &str| -> usize {
        files
            .iter()
            .filter(|(name, _)| name.ends_with(suffix))
            .map(|(_, bytes)| bytes.len())
            .sum()
    };
    let live_values = n as usize * value_len;
    let (blobs, ssts) = (bytes_of(".blob"), bytes_of(".sst"));
    assert!(
        blobs >= live_values && ssts < live_values / 2,
        "values in blob files, keys in SSTs: blob={blobs} sst={ssts} live values={live_values}"
    );
    // Each blob record also holds its key and a 32-byte header (about 250
    // bytes in all here); without the collection the first round's file
    // stays whole beside the second's, about twice the live values.
    assert!(
        blobs < live_values + live_values / 2,
        "the overwritten values were collected: blob={blobs} live values={live_values}"
    );
    assert_eq!(
        read_snapshot(&*s).unwrap_or_else(|e| panic!("{e}")).puts(),
        model
    );
    drop(s);

    let elsewhere = RocksDbBackend::with_config(config(&dir.path().join("other"))).unwrap();
    elsewhere
        .restore_native(&mut NativeFilesInMemory::new(files.clone()), None)
        .unwrap();
    let got: BTreeMap<_, _> = all(&elsewhere).into_iter().collect();
    assert_eq!(got, model, "restored state equals the checkpoint's");
    drop(elsewhere);

    drop(b);
    let restarted = RocksDbBackend::with_config(config(&path)).unwrap();
    let mut source = NativeFilesInMemory::new(files.clone());
    restarted.restore_native(&mut source, None).unwrap();
    let got: BTreeMap<_, _> = all(&restarted).into_iter().collect();
    assert_eq!(
        got, model,
        "locally recovered state equals the checkpoint's"
    );
    let fetched_blobs: Vec<&String> = source
        .fetched()
        .iter()
        .filter(|name| name.ends_with(".blob"))
        .collect();
    assert!(
        fetched_blobs.is_empty(),
        "blob files still on disk are not fetched: {fetched_blobs:?}"
    );
}
