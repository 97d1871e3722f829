//! Appends, batches, concurrency, sync policies, compression, rotation,
//! truncation and retention, closing and locking.

use std::sync::Arc;
use std::time::Duration;

use highwater_core::{Error, ErrorKind};
use highwater_wal::{SyncPolicy, Wal, WalBatch, WalConfig, WalRecord};

use crate::common::{collect, rec, records, segment_files, small};

#[test]
fn append_and_batch_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, report) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    assert_eq!(report.next_lsn, 1);
    assert_eq!(report.records, 0);
    assert_eq!(wal.append(&rec(1)).unwrap(), 1);
    let batch = WalBatch::from_records(&[rec(2), rec(3), rec(4)]);
    assert_eq!(wal.append_batch(&batch).unwrap(), 2..5);
    assert_eq!(wal.append(&rec(5)).unwrap(), 5);
    assert_eq!(wal.last_lsn(), 5);
    assert_eq!(wal.written_lsn(), 5);
    assert_eq!(wal.durable_lsn(), 5);

    let entries = collect(&wal, 1);
    assert_eq!(records(&entries), (1..=5).map(rec).collect::<Vec<_>>());
    let lsns: Vec<_> = entries.iter().map(|e| e.lsn).collect();
    assert_eq!(lsns, vec![1, 2, 3, 4, 5]);
    let ends: Vec<_> = entries.iter().map(|e| e.batch_end).collect();
    assert_eq!(ends, vec![true, false, false, true, true]);
    wal.close().unwrap();
}

#[test]
fn empty_batch_takes_no_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    wal.append(&rec(1)).unwrap();
    assert_eq!(wal.append_batch(&WalBatch::new()).unwrap(), 2..2);
    assert_eq!(wal.append(&rec(2)).unwrap(), 2);
}

#[test]
fn builder_methods_encode_like_records() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    let mut b = WalBatch::with_capacity(64);
    b.put(b"a", b"1", Some(10))
        .delete(b"b", None)
        .merge(b"c", b"+2", Some(11));
    assert_eq!(b.len(), 3);
    wal.append_batch(&b).unwrap();
    let got = records(&collect(&wal, 1));
    assert_eq!(
        got,
        vec![
            WalRecord::put(b"a".to_vec(), b"1".to_vec()).with_event_time(10),
            WalRecord::delete(b"b".to_vec()),
            WalRecord::merge(b"c".to_vec(), b"+2".to_vec()).with_event_time(11),
        ]
    );
}

#[test]
fn reopen_continues_lsns_and_reports_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
        for i in 1..=50 {
            wal.append(&rec(i)).unwrap();
        }
        wal.close().unwrap();
    }
    let (wal, report) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    assert!(report.clean_shutdown, "{report:?}");
    assert!(report.torn_tail.is_none());
    assert_eq!(report.records, 50);
    assert_eq!(report.first_lsn, 1);
    assert_eq!(report.next_lsn, 51);
    assert_eq!(wal.append(&rec(51)).unwrap(), 51);
    assert_eq!(
        records(&collect(&wal, 1)),
        (1..=51).map(rec).collect::<Vec<_>>()
    );
    drop(wal);
    // Reopening an unused log over and over keeps its position.
    for _ in 0..3 {
        let (wal, report) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
        assert_eq!(report.next_lsn, 52);
        wal.close().unwrap();
    }
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    assert_eq!(wal.append(&rec(52)).unwrap(), 52);
    assert_eq!(collect(&wal, 1).len(), 52);
}

#[test]
fn rotation_spreads_records_over_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    for i in 1..=400 {
        wal.append(&rec(i)).unwrap();
    }
    let segs = wal.segments();
    assert!(segs.len() > 5, "segments={}", segs.len());
    assert_eq!(segs[0].first_lsn, 1);
    for w in segs.windows(2) {
        assert!(w[0].first_lsn < w[1].first_lsn);
    }
    // Every segment file is at most the segment size (no frame exceeds it).
    for s in &segs {
        let len = std::fs::metadata(&s.path).unwrap().len();
        assert!(len <= 8 << 10, "{} is {len} bytes", s.path.display());
    }
    assert_eq!(
        records(&collect(&wal, 1)),
        (1..=400).map(rec).collect::<Vec<_>>()
    );
    wal.close().unwrap();
    let (wal, report) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    assert_eq!(report.records, 400);
    assert_eq!(
        records(&collect(&wal, 1)),
        (1..=400).map(rec).collect::<Vec<_>>()
    );
}

#[test]
fn a_batch_larger_than_a_segment_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    wal.append(&rec(1)).unwrap();
    let big = WalRecord::put(b"big".to_vec(), vec![9u8; 20 << 10]);
    assert_eq!(wal.append(&big).unwrap(), 2);
    wal.append(&rec(3)).unwrap();
    let got = records(&collect(&wal, 1));
    assert_eq!(got, vec![rec(1), big.clone(), rec(3)]);
    wal.close().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    assert_eq!(records(&collect(&wal, 1)), vec![rec(1), big, rec(3)]);
}

#[test]
fn concurrent_appenders_get_contiguous_lsns() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    let wal = Arc::new(wal);
    let threads = 8u64;
    let per = 60u64;
    let mut handles = Vec::new();
    for t in 0..threads {
        let wal = Arc::clone(&wal);
        handles.push(std::thread::spawn(move || {
            let mut got = Vec::new();
            for i in 0..per {
                let r = rec(t * 1000 + i);
                if i % 3 == 0 {
                    let b = WalBatch::from_records(&[r.clone(), rec(t * 1000 + 500 + i)]);
                    let lsns = wal.append_batch(&b).unwrap();
                    assert_eq!(lsns.end - lsns.start, 2);
                    got.push((lsns.start, r));
                    got.push((lsns.start + 1, rec(t * 1000 + 500 + i)));
                } else {
                    got.push((wal.append(&r).unwrap(), r));
                }
            }
            got
        }));
    }
    let mut all: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_by_key(|(lsn, _)| *lsn);
    let expected_n = threads * (per + per.div_ceil(3));
    assert_eq!(all.len() as u64, expected_n);
    for (i, (lsn, _)) in all.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1);
    }
    let entries = collect(&wal, 1);
    assert_eq!(entries.len(), all.len());
    for (e, (lsn, r)) in entries.iter().zip(&all) {
        assert_eq!(e.lsn, *lsn);
        assert_eq!(&e.record, r);
    }
}

#[test]
fn every_policy_keeps_what_was_appended_across_close() {
    for policy in [
        SyncPolicy::Always,
        SyncPolicy::Interval(Duration::from_millis(5)),
        SyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), small(policy)).unwrap();
        for i in 1..=300 {
            wal.append(&rec(i)).unwrap();
        }
        assert_eq!(wal.written_lsn(), 300, "{policy:?}");
        wal.sync().unwrap();
        assert_eq!(wal.durable_lsn(), 300, "{policy:?}");
        for i in 301..=320 {
            let _ = wal.submit(&WalBatch::from_records([&rec(i)])).unwrap();
        }
        wal.flush().unwrap();
        assert_eq!(wal.written_lsn(), 320, "{policy:?}");
        wal.close().unwrap();
        let (wal, report) = Wal::open(dir.path(), small(policy)).unwrap();
        assert!(report.clean_shutdown, "{policy:?} {report:?}");
        assert_eq!(
            records(&collect(&wal, 1)),
            (1..=320).map(rec).collect::<Vec<_>>(),
            "{policy:?}"
        );
    }
}

#[test]
fn interval_policy_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(
        dir.path(),
        small(SyncPolicy::Interval(Duration::from_millis(20))),
    )
    .unwrap();
    wal.append(&rec(1)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while wal.durable_lsn() < 1 {
        assert!(std::time::Instant::now() < deadline, "never synced");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn tickets_pipeline_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    let tickets: Vec<_> = (1..=100)
        .map(|i| wal.submit(&WalBatch::from_records([&rec(i)])).unwrap())
        .collect();
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.lsns(), (i as u64 + 1)..(i as u64 + 2));
        assert_eq!(t.wait().unwrap().start, i as u64 + 1);
    }
    assert_eq!(wal.durable_lsn(), 100);
}

#[test]
fn back_pressure_with_a_tiny_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        buffer_size: 300,
        ..small(SyncPolicy::Never)
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let wal = Arc::new(wal);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let wal = Arc::clone(&wal);
            s.spawn(move || {
                for i in 0..200 {
                    let _ = wal
                        .submit(&WalBatch::from_records([&rec(t * 1000 + i)]))
                        .unwrap();
                }
            });
        }
    });
    wal.flush().unwrap();
    assert_eq!(collect(&wal, 1).len(), 800);
}

#[test]
fn compression_shrinks_segments_and_round_trips() {
    let values: Vec<WalRecord> = (0..200u64)
        .map(|i| WalRecord::put(format!("key-{i}").into_bytes(), vec![b'x'; 2000]))
        .collect();
    let mut sizes = Vec::new();
    for compress in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            enable_compression: compress,
            compression_threshold: 1024,
            preallocate: false,
            ..WalConfig::default()
        };
        let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
        for chunk in values.chunks(10) {
            wal.append_batch(&WalBatch::from_records(chunk)).unwrap();
        }
        // Below the threshold: stored as is, still readable.
        wal.append(&rec(1)).unwrap();
        wal.close().unwrap();
        let bytes: u64 = segment_files(dir.path())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        sizes.push(bytes);
        let (wal, _) = Wal::open(dir.path(), config).unwrap();
        let mut expected = values.clone();
        expected.push(rec(1));
        assert_eq!(records(&collect(&wal, 1)), expected);
    }
    assert!(sizes[1] * 10 < sizes[0], "sizes={sizes:?}");
}

#[test]
fn truncate_before_deletes_whole_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Never)).unwrap();
    for i in 1..=400 {
        wal.append(&rec(i)).unwrap();
    }
    let segs = wal.segments();
    assert!(segs.len() >= 4);
    // An LSN inside the third segment releases the first two.
    let cut = segs[2].first_lsn + 1;
    assert_eq!(wal.truncate_before(cut).unwrap(), 2);
    assert_eq!(wal.first_lsn(), segs[2].first_lsn);
    assert!(!segs[0].path.exists() && !segs[1].path.exists());
    assert!(wal.first_lsn() <= cut);
    assert_eq!(
        collect(&wal, wal.first_lsn()).len() as u64,
        400 - segs[2].first_lsn + 1
    );
    // Replaying truncated records is NotFound.
    let err = wal.replay(1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Everything released: only the active segment remains.
    wal.truncate_before(wal.last_lsn() + 1).unwrap();
    assert_eq!(wal.segments().len(), 1);
    wal.close().unwrap();
    let (wal, report) = Wal::open(dir.path(), small(SyncPolicy::Never)).unwrap();
    assert_eq!(report.next_lsn, 401);
    assert_eq!(wal.append(&rec(401)).unwrap(), 401);
}

#[test]
fn retention_keeps_the_newest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        retention_segments: 3,
        ..small(SyncPolicy::Never)
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    for i in 1..=600 {
        wal.append(&rec(i)).unwrap();
    }
    let before = wal.segments();
    assert!(before.len() > 5);
    wal.truncate_before(wal.last_lsn() + 1).unwrap();
    let after = wal.segments();
    assert_eq!(after.len(), 3);
    assert_eq!(after[..], before[before.len() - 3..]);
    assert_eq!(segment_files(dir.path()).len(), 3);
    // Unreleased segments are never deleted, whatever the retention.
    let (dir2, config2) = (
        tempfile::tempdir().unwrap(),
        WalConfig {
            retention_segments: 1,
            ..small(SyncPolicy::Never)
        },
    );
    let (wal2, _) = Wal::open(dir2.path(), config2).unwrap();
    for i in 1..=600 {
        wal2.append(&rec(i)).unwrap();
    }
    let n = wal2.segments().len();
    assert_eq!(wal2.truncate_before(1).unwrap(), 0);
    assert_eq!(wal2.segments().len(), n);
}

#[test]
fn closed_log_refuses_work() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    wal.append(&rec(1)).unwrap();
    wal.close().unwrap();
    wal.close().unwrap();
    assert!(matches!(wal.append(&rec(2)), Err(Error::Closed(_))));
    assert!(matches!(wal.sync(), Err(Error::Closed(_))));
    assert!(matches!(wal.flush(), Err(Error::Closed(_))));
    // Reading still works.
    assert_eq!(collect(&wal, 1).len(), 1);
}

#[test]
fn a_directory_is_open_once() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    let err = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
    wal.close().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    drop(wal);
    assert!(Wal::open(dir.path(), small(SyncPolicy::Always)).is_ok());
}

#[test]
fn invalid_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        WalConfig {
            segment_size: 100,
            ..WalConfig::default()
        },
        WalConfig {
            max_batch_size: 0,
            ..WalConfig::default()
        },
        WalConfig {
            buffer_size: 0,
            ..WalConfig::default()
        },
        WalConfig::default().sync_policy(SyncPolicy::Interval(Duration::ZERO)),
        WalConfig {
            compression_level: 1000,
            ..WalConfig::default().compression(10)
        },
    ] {
        let err = Wal::open(dir.path(), bad.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{bad:?}: {err}");
    }
    assert_eq!(
        WalConfig::default().enable_sync(false).sync_policy,
        SyncPolicy::Never
    );
}

#[test]
fn preallocated_segments_are_zero_filled_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        segment_size: 64 << 10,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    wal.append(&rec(1)).unwrap();
    let seg = &wal.segments()[0];
    assert_eq!(std::fs::metadata(&seg.path).unwrap().len(), 64 << 10);
    wal.close().unwrap();
    // Unused spares are removed on close; the preallocated tail is cut on
    // the next open.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (wal, report) = Wal::open(dir.path(), WalConfig::default().segment_size(64 << 10)).unwrap();
    assert!(report.clean_shutdown);
    assert!(report.torn_tail.is_none(), "{report:?}");
    assert!(std::fs::metadata(&seg.path).unwrap().len() < 1024);
    assert_eq!(records(&collect(&wal, 1)), vec![rec(1)]);
}

#[test]
fn group_commit_shares_fsyncs_between_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalConfig::default().segment_size(1 << 20)).unwrap();
    let wal = Arc::new(wal);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let wal = Arc::clone(&wal);
            s.spawn(move || {
                for i in 0..50 {
                    wal.append(&rec(t * 100 + i)).unwrap();
                }
            });
        }
    });
    let stats = wal.stats();
    assert_eq!(stats.frames, 400);
    assert!(stats.syncs >= 1 && stats.syncs < stats.frames, "{stats:?}");
    assert!(stats.writes <= stats.syncs + 1, "{stats:?}");
    assert_eq!(wal.durable_lsn(), 400);
}

#[test]
fn pipelined_batches_reach_the_os_without_anyone_waiting() {
    for policy in [
        SyncPolicy::Never,
        SyncPolicy::Interval(Duration::from_secs(60)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), small(policy)).unwrap();
        for i in 1..=10 {
            drop(wal.submit(&WalBatch::from_records([&rec(i)])).unwrap());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while wal.written_lsn() < 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "{policy:?}: never written"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(wal.durable_lsn(), 0, "{policy:?}: nothing asked for a sync");
        wal.sync().unwrap();
        assert_eq!(wal.durable_lsn(), 10);
    }
}

/// A bulk restore through the logged backend replaces the state and drops
/// the changes not yet committed to the log (they belonged to the state
/// replaced), as `restore` does; one dropped uncommitted changes neither.
#[test]
fn a_bulk_restore_through_the_logged_backend_drops_pending_changes_only_on_commit() {
    use highwater_core::{StateBackend, SystemClock};
    use highwater_memory::MemoryBackend;
    use highwater_wal::LoggedBackend;

    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    let wal = Arc::new(wal);
    let logged = LoggedBackend::new(
        Arc::new(MemoryBackend::new()),
        Arc::clone(&wal),
        Arc::new(SystemClock),
    );
    logged.put(b"live", b"1").unwrap();
    // Dropped uncommitted: the live state and its pending change stay.
    {
        let bulk = logged
            .bulk_restore()
            .expect("the memory backend's, forwarded");
        bulk.loader().put(b"restored", b"2").unwrap();
    }
    assert_eq!(logged.get(b"live").unwrap(), Some(b"1".to_vec()));
    assert_eq!(logged.get(b"restored").unwrap(), None);
    logged.put(b"live", b"3").unwrap();
    // Committed: the restored state only, and nothing left to log.
    let bulk = logged.bulk_restore().unwrap();
    bulk.loader().put(b"restored", b"2").unwrap();
    bulk.commit().unwrap();
    assert_eq!(logged.get(b"live").unwrap(), None);
    assert_eq!(logged.get(b"restored").unwrap(), Some(b"2".to_vec()));
    let before = wal.last_lsn();
    logged.commit().unwrap();
    assert_eq!(
        wal.last_lsn(),
        before,
        "the replaced state's changes were logged"
    );
    wal.close().unwrap();
}
