//! The child process of the crash test (`tests/tests/crash.rs`).
//!
//! ```text
//! wal-crash-child <dir> <threads> <seed>
//! ```
//!
//! Opens the log in `<dir>` with `SyncPolicy::Always` and small, preallocated
//! segments, then appends from `<threads>` threads until it is killed. Each
//! thread appends batches of one to four records; after a batch is
//! acknowledged it prints one line per record, `A <lsn> <key>`, to stdout
//! (each line is flushed as it is written). Thread 0 now and then truncates
//! the log, printing `T <lsn>` *before* calling `truncate_before(lsn)`.
//!
//! One batch in 25 holds large records (64 to 256 KiB, larger than a
//! segment), so that kills often land inside a long `write` and leave torn
//! frames. Every record is self-describing: its value is [`value_for`] of its key,
//! so the test can check that whatever survives is byte-identical to what
//! was appended. The test carries a copy of [`value_for`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use highwater_wal::{SyncPolicy, Wal, WalBatch, WalConfig};

/// FNV-1a, 64 bits.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The value stored under `key`: 1 to 300 bytes derived from the key.
fn value_for(key: &[u8]) -> Vec<u8> {
    let h = fnv(key);
    let len = if key.ends_with(b"/big") {
        (64 << 10) + (h % (192 << 10)) as usize
    } else {
        1 + (h % 300) as usize
    };
    (0..len)
        .map(|i| (h >> (i % 8 * 8)) as u8 ^ i as u8)
        .collect()
}

/// The configuration the child and the test both open the log with.
fn config(seed: u64) -> WalConfig {
    WalConfig {
        sync_policy: SyncPolicy::Always,
        segment_size: 64 << 10,
        max_batch_size: 16 << 10,
        enable_compression: seed.is_multiple_of(3),
        compression_threshold: 256,
        ..WalConfig::default()
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(threads), Some(seed)) = (
        args.get(1).map(PathBuf::from),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
        args.get(3).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: wal-crash-child <dir> <threads> <seed>");
        return ExitCode::from(2);
    };
    let wal = match Wal::open(&dir, config(seed)) {
        Ok((wal, _)) => Arc::new(wal),
        Err(e) => {
            eprintln!("wal-crash-child: open failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || -> Result<(), String> {
                let mut i: u64 = 0;
                loop {
                    let h = fnv(format!("{seed}/{t}/{i}").as_bytes());
                    let k = 1 + (h % 4) as usize;
                    // One batch in 25 carries a large record, so that kills
                    // land inside a long write() and leave torn frames.
                    let big = if h.is_multiple_of(25) { "/big" } else { "" };
                    let keys: Vec<String> = (0..k)
                        .map(|j| format!("s{seed}/t{t}/i{i}/j{j}{big}"))
                        .collect();
                    let mut batch = WalBatch::new();
                    for key in &keys {
                        batch.put(key.as_bytes(), &value_for(key.as_bytes()), Some(i));
                    }
                    let lsns = wal.append_batch(&batch).map_err(|e| e.to_string())?;
                    let mut out = String::new();
                    for (lsn, key) in lsns.zip(&keys) {
                        out.push_str(&format!("A {lsn} {key}\n"));
                    }
                    // One locked write per batch; stdout flushes at each
                    // newline, so every printed line was acknowledged first.
                    print!("{out}");
                    if t == 0 && i % 150 == 149 {
                        let upto = wal.durable_lsn().saturating_sub(200);
                        if upto > 0 {
                            println!("T {upto}");
                            wal.truncate_before(upto).map_err(|e| e.to_string())?;
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("wal-crash-child: append failed: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => return ExitCode::FAILURE,
        }
    }
    ExitCode::SUCCESS
}
