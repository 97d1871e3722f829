//! Damaged logs: what opening repairs (torn tails, zeros, leftovers) and
//! what it refuses with a typed error naming the segment and offset
//! (flipped bytes in durable data, missing segments, bad headers, future
//! versions).
//!
//! A "crash image" is a copy of the segment files taken while the log is
//! open: what a power cut would leave of everything written so far.

use std::fs::OpenOptions;
use std::path::Path;

use highwater_core::{Error, ErrorKind};
use highwater_wal::{SyncPolicy, Wal, WalBatch, WalConfig};

use crate::common::{
    collect, crash_image, flip, frame_offsets, rec, records, segment_files, small,
};

/// A configuration without preallocation, so files end at their last frame.
fn plain(policy: SyncPolicy) -> WalConfig {
    WalConfig {
        preallocate: false,
        ..small(policy)
    }
}

/// Appends records 1..=n (every fifth append a batch of three) and returns
/// the crash image directory.
fn image(policy: SyncPolicy, n: u64, root: &Path) -> std::path::PathBuf {
    let src = root.join("src");
    let (wal, _) = Wal::open(&src, plain(policy)).unwrap();
    let mut i = 1;
    while i <= n {
        if i % 5 == 0 && i + 2 <= n {
            wal.append_batch(&WalBatch::from_records(&[rec(i), rec(i + 1), rec(i + 2)]))
                .unwrap();
            i += 3;
        } else {
            wal.append(&rec(i)).unwrap();
            i += 1;
        }
    }
    let img = root.join("img");
    crash_image(&src, &img);
    wal.close().unwrap();
    img
}

/// The last segment that holds frames.
fn last_nonempty(dir: &Path) -> std::path::PathBuf {
    segment_files(dir)
        .into_iter()
        .rev()
        .find(|p| !frame_offsets(p).is_empty())
        .unwrap()
}

fn expect_corrupt(err: Error, segment: &Path, offset: u64) {
    assert_eq!(err.kind(), ErrorKind::Corruption, "{err}");
    let msg = err.to_string();
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        msg.contains(name) && msg.contains(&format!("offset={offset}")),
        "error should name {name} and offset={offset}: {msg}"
    );
}

#[test]
fn a_crash_image_opens_with_everything_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Always, 200, root.path());
    let (wal, report) = Wal::open(&img, plain(SyncPolicy::Always)).unwrap();
    assert!(report.torn_tail.is_none(), "{report:?}");
    assert!(!report.clean_shutdown);
    assert_eq!(report.next_lsn, 201);
    assert_eq!(
        records(&collect(&wal, 1)),
        (1..=200).map(rec).collect::<Vec<_>>()
    );
}

#[test]
fn truncated_tail_is_cut_and_reported() {
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Always, 200, root.path());
    let seg = last_nonempty(&img);
    let offsets = frame_offsets(&seg);
    let last = *offsets.last().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    // Cut into the middle of the last frame.
    let cut_to = last + (len - last) / 2;
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cut_to)
        .unwrap();
    let (wal, report) = Wal::open(&img, plain(SyncPolicy::Always)).unwrap();
    let torn = report.torn_tail.clone().expect("a torn tail");
    assert_eq!(torn.segment, seg);
    assert_eq!(torn.offset, last);
    assert!(torn.discarded_bytes > 0);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), last);
    let got = collect(&wal, 1);
    let n = got.len() as u64;
    assert!((197..200).contains(&n), "n={n}");
    assert_eq!(records(&got), (1..=n).map(rec).collect::<Vec<_>>());
    // The log continues where the valid part ended.
    assert_eq!(wal.append(&rec(999)).unwrap(), n + 1);
    wal.close().unwrap();
    let (_, report) = Wal::open(&img, plain(SyncPolicy::Always)).unwrap();
    assert!(report.torn_tail.is_none() && report.clean_shutdown);
}

#[test]
fn zeros_at_the_tail_are_the_end_of_the_log() {
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Always, 100, root.path());
    let seg = last_nonempty(&img);
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len + 100_000)
        .unwrap();
    let (wal, report) = Wal::open(&img, plain(SyncPolicy::Always)).unwrap();
    assert!(report.torn_tail.is_none(), "{report:?}");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    assert_eq!(collect(&wal, 1).len(), 100);
}

#[test]
fn garbage_after_the_last_frame_is_cut() {
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Always, 100, root.path());
    let seg = last_nonempty(&img);
    let len = std::fs::metadata(&seg).unwrap().len();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend((0..500u32).map(|i| 1 + (i * 7 % 255) as u8));
    std::fs::write(&seg, bytes).unwrap();
    let (wal, report) = Wal::open(&img, plain(SyncPolicy::Always)).unwrap();
    let torn = report.torn_tail.expect("torn");
    assert_eq!((torn.segment, torn.offset), (seg.clone(), len));
    assert_eq!(torn.discarded_bytes, 500);
    assert_eq!(collect(&wal, 1).len(), 100);
}

#[test]
fn flipped_byte_mid_log_is_a_typed_error_naming_the_place() {
    // After a clean close, and in a crash image under `Always`: either way
    // later frames vouch that the damaged one was durable.
    for closed in [true, false] {
        let root = tempfile::tempdir().unwrap();
        let dir = if closed {
            let dir = root.path().join("log");
            let (wal, _) = Wal::open(&dir, plain(SyncPolicy::Always)).unwrap();
            for i in 1..=200 {
                wal.append(&rec(i)).unwrap();
            }
            wal.close().unwrap();
            dir
        } else {
            image(SyncPolicy::Always, 200, root.path())
        };
        let segs = segment_files(&dir);
        assert!(segs.len() >= 3);
        for (seg, frame) in [
            (&segs[0], 2usize),
            (&segs[segs.len() / 2], 0),
            (&segs[1], 1),
        ] {
            let scratch = root.path().join(format!("case-{closed}-{frame}"));
            crash_image(&dir, &scratch);
            let target = scratch.join(seg.file_name().unwrap());
            let at = frame_offsets(&target)[frame];
            // One flip in the header, one in the body: both refused.
            for delta in [10u64, 60] {
                let case = root.path().join(format!("case-{closed}-{frame}-{delta}"));
                crash_image(&scratch, &case);
                let t = case.join(seg.file_name().unwrap());
                flip(&t, at + delta);
                let err = Wal::open(&case, plain(SyncPolicy::Always)).unwrap_err();
                expect_corrupt(err, &t, at);
                // Nothing was repaired or deleted.
                assert_eq!(segment_files(&case).len(), segs.len());
            }
        }
    }
}

#[test]
fn flipped_byte_in_the_last_segment_is_an_error_when_later_frames_vouch() {
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Always, 120, root.path());
    let seg = last_nonempty(&img);
    let offsets = frame_offsets(&seg);
    assert!(offsets.len() >= 3);
    flip(&seg, offsets[0] + 58);
    let err = Wal::open(&img, plain(SyncPolicy::Always)).unwrap_err();
    expect_corrupt(err, &seg, offsets[0]);
}

#[test]
fn damage_to_the_last_frame_after_a_crash_is_indistinguishable_from_a_tear() {
    // Documented limit: nothing after it can vouch for it.
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Always, 50, root.path());
    let seg = last_nonempty(&img);
    let last = *frame_offsets(&seg).last().unwrap();
    flip(&seg, last + 58);
    let (wal, report) = Wal::open(&img, plain(SyncPolicy::Always)).unwrap();
    let torn = report.torn_tail.expect("reported as torn");
    assert_eq!(torn.offset, last);
    assert!(torn.reason.contains("checksum"), "{}", torn.reason);
    assert!(collect(&wal, 1).len() < 50);
}

#[test]
fn unsynced_data_is_cut_at_the_first_damage() {
    // Under `Never` nothing was ever synced, so no frame vouches for another:
    // damage means a torn (power-cut) tail, and the log keeps the prefix
    // before it — nothing after the damage survives.
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Never, 200, root.path());
    let segs = segment_files(&img);
    assert!(segs.len() >= 3);
    let at = frame_offsets(&segs[1])[1];
    flip(&segs[1], at + 60);
    let (wal, report) = Wal::open(&img, plain(SyncPolicy::Never)).unwrap();
    let torn = report.torn_tail.expect("torn");
    assert_eq!((torn.segment.clone(), torn.offset), (segs[1].clone(), at));
    assert_eq!(torn.removed_segments, segs[2..].to_vec());
    let got = collect(&wal, 1);
    let n = got.len() as u64;
    assert_eq!(records(&got), (1..=n).map(rec).collect::<Vec<_>>());
    assert!(n < 200);
}

#[test]
fn a_segment_deleted_from_the_middle_is_a_typed_error() {
    for closed in [true, false] {
        let root = tempfile::tempdir().unwrap();
        let dir = if closed {
            let dir = root.path().join("log");
            let (wal, _) = Wal::open(&dir, plain(SyncPolicy::Always)).unwrap();
            for i in 1..=200 {
                wal.append(&rec(i)).unwrap();
            }
            wal.close().unwrap();
            dir
        } else {
            image(SyncPolicy::Always, 200, root.path())
        };
        let segs = segment_files(&dir);
        assert!(segs.len() >= 4);
        std::fs::remove_file(&segs[1]).unwrap();
        let err = Wal::open(&dir, plain(SyncPolicy::Always)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corruption, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("missing") && msg.contains(segs[0].file_name().unwrap().to_str().unwrap()),
            "{msg}"
        );
        assert_eq!(segment_files(&dir).len(), segs.len() - 1, "nothing deleted");
    }
}

#[test]
fn a_future_format_version_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Always, 20, root.path());
    let seg = &segment_files(&img)[0];
    let mut bytes = std::fs::read(seg).unwrap();
    bytes[8] = 2;
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..24]);
    bytes[24..32].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(seg, bytes).unwrap();
    let err = Wal::open(&img, plain(SyncPolicy::Always)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_damaged_segment_header_mid_log_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Always, 200, root.path());
    let segs = segment_files(&img);
    flip(&segs[1], 3);
    let err = Wal::open(&img, plain(SyncPolicy::Always)).unwrap_err();
    expect_corrupt(err, &segs[1], 0);
}

#[test]
fn leftover_temporary_files_are_removed_and_unknown_files_kept() {
    let root = tempfile::tempdir().unwrap();
    let img = image(SyncPolicy::Always, 10, root.path());
    std::fs::write(img.join("spare-000007.tmp"), vec![0u8; 4096]).unwrap();
    std::fs::write(img.join("notes.txt"), b"keep me").unwrap();
    let (wal, report) = Wal::open(&img, plain(SyncPolicy::Always)).unwrap();
    assert_eq!(
        report.removed_temp_files,
        vec![img.join("spare-000007.tmp")]
    );
    assert!(img.join("notes.txt").exists());
    assert_eq!(collect(&wal, 1).len(), 10);
}

#[test]
fn an_empty_or_zeroed_last_segment_keeps_the_position() {
    // A crash right after a segment was created leaves it with a zero header
    // (preallocated) or empty; its name still carries the next LSN.
    for content in [Vec::new(), vec![0u8; 8192]] {
        let root = tempfile::tempdir().unwrap();
        let img = image(SyncPolicy::Always, 30, root.path());
        let (wal, _) = Wal::open(&img, plain(SyncPolicy::Always)).unwrap();
        wal.truncate_before(31).unwrap();
        drop(wal);
        // Only the (empty) newest segment is left, named 31.
        let segs = segment_files(&img);
        assert_eq!(segs.len(), 1);
        std::fs::write(&segs[0], &content).unwrap();
        let (wal, report) = Wal::open(&img, plain(SyncPolicy::Always)).unwrap();
        assert_eq!(report.next_lsn, 31, "{report:?}");
        assert_eq!(wal.append(&rec(31)).unwrap(), 31);
    }
}

/// Issue 18: after `Wal::close` the last segment held the only evidence
/// (the close marker) that its records were durable, so deleting it or
/// cutting it short lost acknowledged records silently. The `DURABLE` file
/// beside the segments keeps that evidence.
mod after_close {
    use super::*;

    /// A closed log in `dir` holding records 1..=300 over several segments;
    /// returns the last segment that holds records.
    fn closed_log(dir: &Path) -> std::path::PathBuf {
        let (wal, _) = Wal::open(dir, plain(SyncPolicy::Always)).unwrap();
        for i in 1..=300 {
            wal.append(&rec(i)).unwrap();
        }
        wal.close().unwrap();
        assert!(segment_files(dir).len() > 2, "the log spans segments");
        last_nonempty(dir)
    }

    fn expect_missing(dir: &Path, what: &str) {
        let err = Wal::open(dir, plain(SyncPolicy::Always))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corruption, "{what}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("was durable up to lsn=300") && msg.contains("DURABLE"),
            "{what}: the message says what was lost and why it is known: {msg}"
        );
    }

    #[test]
    fn deleting_the_last_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let last = closed_log(dir.path());
        std::fs::remove_file(&last).unwrap();
        expect_missing(dir.path(), "deleted");
        // Nothing was repaired away: the remaining segments are intact and
        // restoring the deleted one would make the log whole again.
        assert!(segment_files(dir.path()).len() > 1);
    }

    #[test]
    fn deleting_every_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        closed_log(dir.path());
        for f in segment_files(dir.path()) {
            std::fs::remove_file(f).unwrap();
        }
        expect_missing(dir.path(), "all deleted");
    }

    #[test]
    fn truncating_the_last_segment_is_corruption() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("orig");
        let last = closed_log(&dir);
        let name = last.file_name().unwrap().to_owned();
        let len = std::fs::metadata(&last).unwrap().len();
        let frames = frame_offsets(&last);
        // The close marker is the last 56 bytes when it shares the segment
        // with records; cut it alone, cut into the last record frame, cut
        // at a frame boundary, keep only the header, empty the file.
        let cuts = [
            ("without the marker", len.saturating_sub(56)),
            ("mid-frame", len - 70),
            ("at a frame boundary", frames[frames.len() / 2]),
            ("header only", 32),
            ("empty", 0),
        ];
        for (what, at) in cuts {
            let copy = root.path().join(what.replace(' ', "-"));
            crash_image(&dir, &copy);
            std::fs::copy(dir.join("DURABLE"), copy.join("DURABLE")).unwrap();
            let f = OpenOptions::new()
                .write(true)
                .open(copy.join(&name))
                .unwrap();
            f.set_len(at).unwrap();
            drop(f);
            let records_left = {
                // What a reader without the DURABLE file would keep: fewer
                // than the 300 acknowledged (otherwise the cut lost nothing).
                let bare = root.path().join(format!("{}-bare", what.replace(' ', "-")));
                crash_image(&copy, &bare);
                let (wal, _) = Wal::open(&bare, plain(SyncPolicy::Always)).unwrap();
                wal.last_lsn()
            };
            if records_left >= 300 {
                // Cutting only the marker of a segment whose records all
                // survive loses nothing; the log opens.
                let (wal, report) = Wal::open(&copy, plain(SyncPolicy::Always)).unwrap();
                assert_eq!(wal.last_lsn(), 300, "{what}");
                assert!(!report.clean_shutdown, "{what}");
                continue;
            }
            expect_missing(&copy, what);
        }
    }

    #[test]
    fn a_damaged_durable_file_is_corruption_and_a_missing_one_is_an_older_log() {
        let dir = tempfile::tempdir().unwrap();
        closed_log(dir.path());
        let durable = dir.path().join("DURABLE");
        flip(&durable, 17);
        let err = Wal::open(dir.path(), plain(SyncPolicy::Always))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corruption, "{err}");
        assert!(err.to_string().contains("durable-lsn file"), "{err}");
        // A log written before the file existed has none: it opens as
        // before, clean, and gets one.
        std::fs::remove_file(&durable).unwrap();
        let (wal, report) = Wal::open(dir.path(), plain(SyncPolicy::Always)).unwrap();
        assert!(report.clean_shutdown, "{report:?}");
        assert_eq!(wal.last_lsn(), 300);
        drop(wal);
        assert!(durable.exists());
    }

    #[test]
    fn the_log_keeps_growing_across_reopens_with_the_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        closed_log(dir.path());
        for round in 0..3u64 {
            let (wal, report) = Wal::open(dir.path(), plain(SyncPolicy::Always)).unwrap();
            assert!(report.clean_shutdown, "round {round}: {report:?}");
            assert_eq!(wal.last_lsn(), 300 + round * 10);
            for i in 1..=10 {
                wal.append(&rec(300 + round * 10 + i)).unwrap();
            }
            wal.close().unwrap();
        }
    }
}
