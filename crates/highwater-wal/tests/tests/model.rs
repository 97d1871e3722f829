//! Model-based test: random interleavings of appends (single and batch),
//! truncations, bounded replays, reopenings and crash images, with random
//! configurations (encrypted or not), checked against a model `Vec` of records after every
//! step.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use highwater_core::{Cipher, DataKey, Keyring};

use highwater_wal::{SyncPolicy, Wal, WalBatch, WalConfig, WalOp, WalRecord};
use proptest::prelude::*;

use crate::common::crash_image;

#[derive(Debug, Clone)]
enum Op {
    Append(WalRecord),
    Batch(Vec<WalRecord>),
    /// Truncate before a point chosen as a fraction of the retained range.
    Truncate(f64),
    /// Replay between two fractions of the retained range.
    Replay(f64, f64),
    Reopen,
    /// Continue from a copy of the files taken while the log is open.
    CrashImage,
    Sync,
}

fn record() -> impl Strategy<Value = WalRecord> {
    let bytes = |max| proptest::collection::vec(any::<u8>(), 0..max);
    let op = prop_oneof![
        bytes(600).prop_map(WalOp::Put),
        Just(WalOp::Delete),
        bytes(100).prop_map(WalOp::Merge),
    ];
    (bytes(24), op, proptest::option::of(0u64..1_000_000)).prop_map(|(key, op, event_time)| {
        WalRecord {
            key,
            op,
            event_time,
        }
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => record().prop_map(Op::Append),
        4 => proptest::collection::vec(record(), 1..6).prop_map(Op::Batch),
        1 => (0.0..1.2f64).prop_map(Op::Truncate),
        2 => (0.0..1.0f64, 0.0..1.0f64).prop_map(|(a, b)| Op::Replay(a, b)),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashImage),
        1 => Just(Op::Sync),
    ]
}

fn config() -> impl Strategy<Value = WalConfig> {
    (
        prop_oneof![
            Just(SyncPolicy::Always),
            Just(SyncPolicy::Never),
            Just(SyncPolicy::Interval(Duration::from_millis(1))),
        ],
        any::<bool>(),
        any::<bool>(),
        4096u64..16384,
        0usize..3,
        any::<bool>(),
    )
        .prop_map(
            |(policy, compress, prealloc, segment_size, retention, encrypt)| WalConfig {
                sync_policy: policy,
                enable_compression: compress,
                compression_threshold: 200,
                preallocate: prealloc,
                segment_size,
                max_batch_size: 2048,
                retention_segments: retention,
                encryption: encrypt
                    .then(|| Cipher::new(Arc::new(Keyring::new(1, DataKey::new([5; 32]))))),
                ..WalConfig::default()
            },
        )
}

/// Position `frac` of the way through `first..=end`.
fn point(first: u64, end: u64, frac: f64) -> u64 {
    first + ((end + 1 - first) as f64 * frac) as u64
}

fn check(wal: &Wal, model: &[WalRecord], first: u64) -> Result<(), TestCaseError> {
    prop_assert_eq!(wal.last_lsn(), model.len() as u64);
    prop_assert_eq!(wal.first_lsn(), first);
    let got: Vec<WalRecord> = wal
        .replay(first)
        .unwrap()
        .map(|e| e.unwrap().record)
        .collect();
    prop_assert_eq!(&got[..], &model[first as usize - 1..]);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(config in config(), ops in proptest::collection::vec(op(), 1..40)) {
        let root = tempfile::tempdir().unwrap();
        let mut generation = 0;
        let mut dir: PathBuf = root.path().join("g0");
        let (mut wal, _) = Wal::open(&dir, config.clone()).unwrap();
        let mut model: Vec<WalRecord> = Vec::new();
        let mut first = 1u64;
        for op in ops {
            match op {
                Op::Append(r) => {
                    let lsn = wal.append(&r).unwrap();
                    model.push(r);
                    prop_assert_eq!(lsn, model.len() as u64);
                }
                Op::Batch(rs) => {
                    let lsns = wal.append_batch(&WalBatch::from_records(&rs)).unwrap();
                    prop_assert_eq!(lsns.start, model.len() as u64 + 1);
                    model.extend(rs);
                    prop_assert_eq!(lsns.end, model.len() as u64 + 1);
                }
                Op::Truncate(f) => {
                    let to = point(first, model.len() as u64 + 1, f);
                    wal.truncate_before(to).unwrap();
                    let now = wal.first_lsn();
                    // Whole segments only, never past the point, never back.
                    prop_assert!(now >= first && now <= to.max(first), "first {} -> {} for {}", first, now, to);
                    first = now;
                }
                Op::Replay(a, b) => {
                    let end = model.len() as u64;
                    let (from, until) = (point(first, end, a), point(first, end, b));
                    let got: Vec<(u64, WalRecord)> = wal
                        .replay(from)
                        .unwrap()
                        .until_lsn(until)
                        .map(|e| e.map(|e| (e.lsn, e.record)).unwrap())
                        .collect();
                    let expected: Vec<(u64, WalRecord)> = (from..=until.min(end))
                        .map(|l| (l, model[l as usize - 1].clone()))
                        .collect();
                    prop_assert_eq!(got, expected);
                }
                Op::Sync => {
                    wal.sync().unwrap();
                    prop_assert_eq!(wal.durable_lsn(), model.len() as u64);
                }
                Op::Reopen => {
                    wal.close().unwrap();
                    drop(wal);
                    let (w, report) = Wal::open(&dir, config.clone()).unwrap();
                    prop_assert!(report.clean_shutdown);
                    prop_assert!(report.torn_tail.is_none());
                    prop_assert_eq!(report.next_lsn, model.len() as u64 + 1);
                    wal = w;
                }
                Op::CrashImage => {
                    // Everything appended has been written to the OS (the
                    // appends returned), so the image holds all of it.
                    generation += 1;
                    let next = root.path().join(format!("g{generation}"));
                    crash_image(&dir, &next);
                    drop(wal);
                    dir = next;
                    let (w, report) = Wal::open(&dir, config.clone()).unwrap();
                    prop_assert!(report.torn_tail.is_none(), "{:?}", report);
                    prop_assert_eq!(report.next_lsn, model.len() as u64 + 1);
                    wal = w;
                }
            }
            check(&wal, &model, first)?;
        }
        wal.close().unwrap();
        let (wal, _) = Wal::open(&dir, config).unwrap();
        check(&wal, &model, first)?;
    }
}
