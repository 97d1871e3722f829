//! Format fixtures: a log written by format version 1 must keep opening and
//! replaying to the same records. Set `HIGHWATER_REGENERATE_FIXTURES=1` to
//! rewrite the fixtures of the *current* version (only when adding a
//! version; old fixtures are never regenerated).

use std::path::{Path, PathBuf};

use highwater_core::{KeyGroup, StateKey};
use highwater_wal::{SyncPolicy, Wal, WalBatch, WalConfig, WalRecord};

use crate::common::{collect, records, segment_files};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-v1")
}

fn key(i: u16) -> Vec<u8> {
    StateKey {
        key_group: KeyGroup(i % 4),
        operator: "window",
        state: "sum",
        key: &i.to_le_bytes(),
        namespace: b"w",
        user_key: b"",
    }
    .encode()
    .unwrap()
}

/// The records of the fixture, in LSN order, and how they were batched.
fn batches_v1() -> Vec<Vec<WalRecord>> {
    vec![
        vec![WalRecord::put(key(1), b"one".to_vec()).with_event_time(1_000)],
        vec![
            WalRecord::put(key(2), b"two".to_vec()).with_event_time(2_000),
            WalRecord::delete(key(1)).with_event_time(2_000),
            WalRecord::merge(key(3), b"+3".to_vec()),
        ],
        // Compressible: stored as a zstd frame.
        (10..30)
            .map(|i| WalRecord::put(key(i), vec![b'z'; 64]).with_event_time(3_000))
            .collect(),
        vec![WalRecord::delete(key(2))],
    ]
}

fn config() -> WalConfig {
    WalConfig {
        sync_policy: SyncPolicy::Always,
        preallocate: false,
        enable_compression: true,
        compression_threshold: 256,
        segment_size: 1 << 20,
        ..WalConfig::default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in segment_files(from) {
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn version_1_fixture_still_replays() {
    if std::env::var_os("HIGHWATER_REGENERATE_FIXTURES").is_some() {
        let scratch = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(scratch.path(), config()).unwrap();
        for b in batches_v1() {
            wal.append_batch(&WalBatch::from_records(&b)).unwrap();
        }
        wal.close().unwrap();
        let _ = std::fs::remove_dir_all(fixture_dir());
        copy_dir(scratch.path(), &fixture_dir());
    }
    let files = segment_files(&fixture_dir());
    assert_eq!(files.len(), 1, "{files:?}");
    let work = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), work.path());
    let (wal, report) = Wal::open(work.path(), config()).unwrap();
    assert!(report.clean_shutdown, "{report:?}");
    assert!(report.torn_tail.is_none());
    let want: Vec<WalRecord> = batches_v1().into_iter().flatten().collect();
    assert_eq!(report.records, want.len() as u64);
    let entries = collect(&wal, 1);
    assert_eq!(records(&entries), want);
    // Batch boundaries survive too.
    let ends: Vec<u64> = entries
        .iter()
        .filter(|e| e.batch_end)
        .map(|e| e.lsn)
        .collect();
    assert_eq!(ends, vec![1, 4, 24, 25]);
    // The compressible batch really was stored compressed.
    let bytes = std::fs::read(&files[0]).unwrap();
    assert!(bytes.len() < 20 * 64, "fixture is {} bytes", bytes.len());
}
