//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};

use highwater_wal::{Lsn, SyncPolicy, Wal, WalConfig, WalEntry, WalRecord};

/// A configuration with small segments, so tests rotate often.
pub fn small(policy: SyncPolicy) -> WalConfig {
    WalConfig {
        sync_policy: policy,
        segment_size: 8 << 10,
        max_batch_size: 4 << 10,
        ..WalConfig::default()
    }
}

/// A deterministic record: key `k<i>`, a value of 1..=200 bytes derived
/// from `i`, an event time of `i`.
pub fn rec(i: u64) -> WalRecord {
    let len = 1 + (i.wrapping_mul(2_654_435_761) % 200) as usize;
    let value: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
    match i % 7 {
        5 => WalRecord::delete(format!("k{i}").into_bytes()),
        6 => WalRecord::merge(format!("k{i}").into_bytes(), value),
        _ => WalRecord::put(format!("k{i}").into_bytes(), value),
    }
    .with_event_time(i)
}

/// Every entry from `from`, panicking on an error.
pub fn collect(wal: &Wal, from: Lsn) -> Vec<WalEntry> {
    wal.replay(from)
        .expect("replay")
        .map(|e| e.expect("replayed entry"))
        .collect()
}

/// The records of `entries`.
pub fn records(entries: &[WalEntry]) -> Vec<WalRecord> {
    entries.iter().map(|e| e.record.clone()).collect()
}

/// The segment files in `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// Copies the segment files of `from` into a new directory `to`: the image
/// a crash would leave of everything the log has written so far.
pub fn crash_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in segment_files(from) {
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

/// The byte offsets of the frames of an unpreallocated segment file,
/// found by walking the headers (56 bytes, body length at offset 12).
pub fn frame_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 32usize;
    while pos + 56 <= bytes.len() && &bytes[pos..pos + 4] == b"HWFR" {
        out.push(pos as u64);
        let body = u32::from_le_bytes(bytes[pos + 12..pos + 16].try_into().unwrap()) as usize;
        pos += 56 + body;
    }
    out
}

/// Flips one bit of the byte at `offset` of `path`.
pub fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}
