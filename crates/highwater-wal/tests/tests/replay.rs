//! The replay iterator: start points, LSN and event-time bounds, and what
//! it refuses.

use highwater_core::ErrorKind;
use highwater_wal::{SyncPolicy, Wal, WalBatch, WalRecord};

use crate::common::{collect, rec, records, small};

fn lsns(wal: &Wal, from: u64) -> Vec<u64> {
    collect(wal, from).iter().map(|e| e.lsn).collect()
}

#[test]
fn from_any_lsn_including_inside_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    for i in 0..100u64 {
        let b = WalBatch::from_records(&[rec(3 * i + 1), rec(3 * i + 2), rec(3 * i + 3)]);
        wal.append_batch(&b).unwrap();
    }
    assert!(wal.segments().len() > 3);
    for from in [1u64, 2, 3, 4, 150, 151, 299, 300, 301] {
        let got = collect(&wal, from);
        assert_eq!(
            records(&got),
            (from..=300).map(rec).collect::<Vec<_>>(),
            "from={from}"
        );
        if let Some(first) = got.first() {
            assert_eq!(first.lsn, from);
        }
    }
    // One past the end is an empty replay; further is an error.
    assert!(collect(&wal, 301).is_empty());
    let err = wal.replay(302).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let err = wal.replay(0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[test]
fn until_lsn_is_inclusive() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    for i in 1..=200 {
        wal.append(&rec(i)).unwrap();
    }
    let got: Vec<u64> = wal
        .replay(10)
        .unwrap()
        .until_lsn(150)
        .map(|e| e.unwrap().lsn)
        .collect();
    assert_eq!(got, (10..=150).collect::<Vec<_>>());
    assert_eq!(
        wal.replay(10).unwrap().until_lsn(9).count(),
        0,
        "an empty range"
    );
    assert_eq!(wal.replay(1).unwrap().until_lsn(10_000).count(), 200);
}

#[test]
fn until_event_time_cuts_the_log_at_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    let r = |k: &str, t: Option<u64>| {
        let r = WalRecord::put(k.as_bytes().to_vec(), b"v".to_vec());
        match t {
            Some(t) => r.with_event_time(t),
            None => r,
        }
    };
    // Event times 10, 20, (25 and 40 in one batch), none, 30 (late).
    wal.append(&r("a", Some(10))).unwrap();
    wal.append(&r("b", Some(20))).unwrap();
    wal.append_batch(&WalBatch::from_records(&[
        r("c", Some(25)),
        r("d", Some(40)),
    ]))
    .unwrap();
    wal.append(&r("e", None)).unwrap();
    wal.append(&r("f", Some(30))).unwrap();
    let keys = |t: u64| -> Vec<String> {
        wal.replay(1)
            .unwrap()
            .until_event_time(t)
            .map(|e| String::from_utf8(e.unwrap().record.key).unwrap())
            .collect()
    };
    assert_eq!(keys(5), Vec::<String>::new());
    assert_eq!(keys(10), vec!["a"]);
    assert_eq!(keys(24), vec!["a", "b"]);
    // The batch holding 25 and 40 is kept or dropped whole; the late event
    // with time 30 after it does not reappear.
    assert_eq!(keys(30), vec!["a", "b"]);
    assert_eq!(keys(40), vec!["a", "b", "c", "d", "e", "f"]);
}

#[test]
fn replay_sees_only_what_was_written_when_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    for i in 1..=50 {
        wal.append(&rec(i)).unwrap();
    }
    let replay = wal.replay(1).unwrap();
    for i in 51..=100 {
        wal.append(&rec(i)).unwrap();
    }
    assert_eq!(replay.count(), 50);
    assert_eq!(lsns(&wal, 95), vec![95, 96, 97, 98, 99, 100]);
}

#[test]
fn replay_reports_damage_found_after_open() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    for i in 1..=300 {
        wal.append(&rec(i)).unwrap();
    }
    let seg = wal.segments()[1].clone();
    let offsets = crate::common::frame_offsets(&seg.path);
    let target = offsets[3];
    crate::common::flip(&seg.path, target + 60);
    let results: Vec<_> = wal.replay(1).unwrap().collect();
    let err = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("an error");
    assert_eq!(err.kind(), ErrorKind::Corruption);
    let msg = err.to_string();
    assert!(
        msg.contains(&seg.path.display().to_string()) && msg.contains(&format!("offset={target}")),
        "{msg}"
    );
    // Nothing is yielded after the error, and nothing past the damage.
    assert!(results.last().unwrap().is_err());
    let good = results.iter().filter(|r| r.is_ok()).count() as u64;
    assert!(good < seg.first_lsn + 3 + 1, "good={good}");
}
