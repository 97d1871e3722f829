//! At-rest encryption of the log: sealed frames round-trip (compressed or
//! not, across segments and reopenings), keys rotate, and a frame that was
//! tampered with (checksums recomputed, so only the seal can tell), moved to
//! another position, left unsealed, or sealed with a key the reader lacks is
//! an authentication error, never records.

use std::path::Path;
use std::sync::Arc;

use highwater_core::{Cipher, DataKey, ErrorKind, Keyring};
use highwater_wal::{SyncPolicy, Wal, WalBatch, WalConfig, WalRecord};
use xxhash_rust::xxh3::xxh3_64;

use crate::common::{collect, rec, records, segment_files, small};

const SEGMENT_HEADER: usize = 32;
const FRAME_HEADER: usize = 56;

fn cipher(keys: Keyring) -> Cipher {
    Cipher::new(Arc::new(keys))
}

fn key1() -> Keyring {
    Keyring::new(1, DataKey::new([1; 32]))
}

fn encrypted(keys: Keyring) -> WalConfig {
    small(SyncPolicy::Always).encryption(cipher(keys))
}

/// A value no sealed segment may contain in the clear.
fn marked(i: u64) -> WalRecord {
    WalRecord::put(
        format!("key{i}").into_bytes(),
        format!("SECRET-VALUE-{i}-").repeat(8).into_bytes(),
    )
}

/// Frames of the first segment: (offset, body length).
fn frames(seg: &Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(seg).unwrap();
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER;
    while at + FRAME_HEADER <= bytes.len() && &bytes[at..at + 4] == b"HWFR" {
        let body = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as usize;
        out.push((at, body));
        at += FRAME_HEADER + body;
    }
    out
}

/// Rewrites a frame's body checksum and header checksum after `bytes` were
/// edited, so the frame passes every check but the seal.
fn reseal_checksums(bytes: &mut [u8], at: usize, body: usize) {
    let sum = xxh3_64(&bytes[at + FRAME_HEADER..at + FRAME_HEADER + body]);
    bytes[at + 40..at + 48].copy_from_slice(&sum.to_le_bytes());
    let sum = xxh3_64(&bytes[at..at + 48]);
    bytes[at + 48..at + 56].copy_from_slice(&sum.to_le_bytes());
}

fn replay_error(dir: &Path, config: WalConfig) -> highwater_core::Error {
    let (wal, _) = Wal::open(dir, config).unwrap();
    let err = wal
        .replay(1)
        .unwrap()
        .find_map(Result::err)
        .expect("the replay fails");
    wal.close().unwrap();
    err
}

#[test]
fn sealed_frames_round_trip_and_hide_their_records() {
    for compress in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = encrypted(key1());
        if compress {
            config = config.compression(64);
        }
        let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
        let mut expected = Vec::new();
        for i in 0..60 {
            let batch: Vec<WalRecord> = (0..1 + i % 4).map(|j| marked(i * 10 + j)).collect();
            wal.append_batch(&WalBatch::from_records(&batch)).unwrap();
            expected.extend(batch);
        }
        assert_eq!(records(&collect(&wal, 1)), expected);
        wal.close().unwrap();
        let segs = segment_files(dir.path());
        assert!(segs.len() > 1, "the test should span segments");
        for seg in &segs {
            let bytes = std::fs::read(seg).unwrap();
            assert!(
                !bytes.windows(12).any(|w| w == b"SECRET-VALUE"),
                "plaintext in {}",
                seg.display()
            );
        }
        // Reopened with the same keys: everything replays.
        let (wal, report) = Wal::open(dir.path(), config).unwrap();
        assert!(report.torn_tail.is_none());
        assert_eq!(records(&collect(&wal, 1)), expected, "compress={compress}");
        wal.close().unwrap();
    }
}

#[test]
fn keys_rotate_and_old_frames_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), encrypted(key1())).unwrap();
    for i in 1..=5 {
        wal.append(&rec(i)).unwrap();
    }
    wal.close().unwrap();
    let rotated = key1().with_key(2, DataKey::new([2; 32])).unwrap();
    let (wal, _) = Wal::open(dir.path(), encrypted(rotated.clone())).unwrap();
    for i in 6..=10 {
        wal.append(&rec(i)).unwrap();
    }
    assert_eq!(
        records(&collect(&wal, 1)),
        (1..=10).map(rec).collect::<Vec<_>>()
    );
    wal.close().unwrap();
    // Frames name their key: the first segment key 1, the newest key 2.
    let segs = segment_files(dir.path());
    let key_of = |seg: &Path| {
        let (at, _) = frames(seg)[0];
        let bytes = std::fs::read(seg).unwrap();
        u32::from_le_bytes(bytes[at + 20..at + 24].try_into().unwrap())
    };
    assert_eq!(key_of(&segs[0]), 1);
    let newest = segs
        .iter()
        .rev()
        .find(|s| !frames(s).is_empty() && key_of(s) != 0)
        .unwrap();
    assert_eq!(key_of(newest), 2);
    // Without key 1 the old frames do not open: an authentication error
    // naming the key, not corruption and not records.
    let only2 = Keyring::new(2, DataKey::new([2; 32]));
    let err = replay_error(dir.path(), encrypted(only2));
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("key 1"), "{err}");
}

#[test]
fn a_tampered_or_moved_body_is_an_authentication_error() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), encrypted(key1())).unwrap();
    // Two frames of one record each, of the same size.
    wal.append(&marked(1)).unwrap();
    wal.append(&marked(2)).unwrap();
    wal.close().unwrap();
    let seg = segment_files(dir.path())[0].clone();
    let original = std::fs::read(&seg).unwrap();
    let f = frames(&seg);
    assert!(f.len() >= 2);
    let ((a, body_a), (b, body_b)) = (f[0], f[1]);
    assert_eq!(body_a, body_b);

    // One flipped ciphertext byte, checksums made to fit.
    let mut bytes = original.clone();
    bytes[a + FRAME_HEADER + 30] ^= 0x01;
    reseal_checksums(&mut bytes, a, body_a);
    std::fs::write(&seg, &bytes).unwrap();
    let err = replay_error(dir.path(), encrypted(key1()));
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("lsn=1"), "{err}");

    // The second frame's body copied over the first (a replay of sealed
    // bytes at another position), checksums made to fit.
    let mut bytes = original.clone();
    let second = bytes[b + FRAME_HEADER..b + FRAME_HEADER + body_b].to_vec();
    bytes[a + FRAME_HEADER..a + FRAME_HEADER + body_a].copy_from_slice(&second);
    reseal_checksums(&mut bytes, a, body_a);
    std::fs::write(&seg, &bytes).unwrap();
    let err = replay_error(dir.path(), encrypted(key1()));
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");

    // The same key id with other key material.
    std::fs::write(&seg, &original).unwrap();
    let other = Keyring::new(1, DataKey::new([9; 32]));
    let err = replay_error(dir.path(), encrypted(other));
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");

    // Untouched, it replays.
    let (wal, _) = Wal::open(dir.path(), encrypted(key1())).unwrap();
    assert_eq!(records(&collect(&wal, 1)), vec![marked(1), marked(2)]);
    wal.close().unwrap();
}

#[test]
fn sealed_and_clear_logs_refuse_the_other_configuration() {
    // A sealed log opened without keys.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), encrypted(key1())).unwrap();
    wal.append(&rec(1)).unwrap();
    wal.close().unwrap();
    let err = replay_error(dir.path(), small(SyncPolicy::Always));
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("without encryption"), "{err}");

    // A clear log (or a frame planted in the clear) opened with keys.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small(SyncPolicy::Always)).unwrap();
    wal.append(&rec(1)).unwrap();
    wal.close().unwrap();
    let err = replay_error(dir.path(), encrypted(key1()));
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("not encrypted"), "{err}");
}
