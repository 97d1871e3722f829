//! The crash test: a child process (`src/bin/wal-crash-child.rs`) appends
//! with `SyncPolicy::Always` from several threads and prints every
//! acknowledged record; it is killed with SIGKILL at random moments — while
//! appending, rotating, preallocating, truncating or still recovering — and
//! the same directory is reopened and checked after every round:
//!
//! - every acknowledged record is present, at its LSN, byte-identical
//!   (unless a completed or interrupted `truncate_before` released it);
//! - LSNs are contiguous from the first retained record to the last;
//! - every record in the log is one the child wrote, whole (nothing torn
//!   survives, nothing is invented).
//!
//! Rounds: `HIGHWATER_WAL_TORTURE_ROUNDS` (default 50; `cargo xtask
//! torture wal` runs 1,000). `HIGHWATER_WAL_TORTURE_SEED` changes the kill
//! timings.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use highwater_wal::{SyncPolicy, Wal, WalConfig, WalOp};

/// Copy of the child's `fnv`.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Copy of the child's `value_for`.
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

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

/// xorshift64*: the kill schedule, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_record() {
    let rounds = env_u64("HIGHWATER_WAL_TORTURE_ROUNDS", 50);
    let seed = env_u64("HIGHWATER_WAL_TORTURE_SEED", 0x5eed);
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("wal");
    let child_bin = env!("CARGO_BIN_EXE_wal-crash-child");
    let config = WalConfig {
        segment_size: 64 << 10,
        ..WalConfig::default().sync_policy(SyncPolicy::Always)
    };

    // lsn -> key of every acknowledged record, over all rounds.
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut truncated_to = 0u64;
    let mut torn_rounds = 0;
    let mut total_lines = 0usize;
    for round in 0..rounds {
        let threads = 1 + rng.next() % 4;
        let mut child = Command::new(child_bin)
            .arg(&log)
            .arg(threads.to_string())
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the crash child");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut lines = Vec::new();
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    // A line cut by the kill has no newline: not acknowledged
                    // as far as the test knows.
                    Ok(_) if line.last() == Some(&b'\n') => {
                        lines.push(String::from_utf8(line[..line.len() - 1].to_vec()).unwrap());
                    }
                    Ok(_) => break,
                }
            }
            lines
        });
        // Mostly mid-run; sometimes right away, to hit recovery and
        // preallocation in the child.
        let delay = match rng.next() % 10 {
            0 => rng.next() % 3,
            1..=3 => 3 + rng.next() % 20,
            _ => 20 + rng.next() % 150,
        };
        std::thread::sleep(Duration::from_millis(delay));
        let early_exit = child.try_wait().unwrap();
        child.kill().expect("SIGKILL the child");
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        if let Some(status) = early_exit {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("round {round}: the child exited by itself ({status}): {err}");
        }
        total_lines += lines.len();
        for line in &lines {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("A"), Some(lsn), Some(key)) => {
                    let lsn: u64 = lsn.parse().unwrap();
                    if let Some(old) = acked.insert(lsn, key.to_owned()) {
                        panic!("round {round}: lsn {lsn} acknowledged twice: {old} and {key}");
                    }
                }
                (Some("T"), Some(lsn), None) => {
                    truncated_to = truncated_to.max(lsn.parse().unwrap());
                }
                _ => panic!("round {round}: unexpected child output {line:?}"),
            }
        }

        let (wal, report) = Wal::open(&log, config.clone())
            .unwrap_or_else(|e| panic!("round {round}: reopening failed: {e}"));
        if report.torn_tail.is_some() {
            torn_rounds += 1;
        }
        let first = wal.first_lsn();
        assert!(
            first <= truncated_to.max(1),
            "round {round}: log starts at {first} but only {truncated_to} was released"
        );
        let mut expected_lsn = first;
        let mut present: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for entry in wal.replay(first).unwrap() {
            let entry = entry.unwrap_or_else(|e| panic!("round {round}: replay failed: {e}"));
            assert_eq!(entry.lsn, expected_lsn, "round {round}: lsn gap");
            expected_lsn += 1;
            let WalOp::Put(value) = &entry.record.op else {
                panic!("round {round}: unexpected op at lsn {}", entry.lsn);
            };
            assert_eq!(
                value,
                &value_for(&entry.record.key),
                "round {round}: record at lsn {} is not what was written",
                entry.lsn
            );
            present.insert(entry.lsn, entry.record.key);
        }
        let last = expected_lsn - 1;
        assert_eq!(last + 1, report.next_lsn, "round {round}");
        if let Some((&max_acked, _)) = acked.last_key_value() {
            assert!(
                last >= max_acked,
                "round {round}: log ends at {last}, {max_acked} was acknowledged"
            );
        }
        for (lsn, key) in &acked {
            if *lsn < first {
                assert!(
                    *lsn < truncated_to,
                    "round {round}: acknowledged lsn {lsn} is gone but was never released"
                );
                continue;
            }
            let got = present
                .get(lsn)
                .unwrap_or_else(|| panic!("round {round}: acknowledged lsn {lsn} is missing"));
            assert_eq!(
                got,
                key.as_bytes(),
                "round {round}: lsn {lsn} holds another record"
            );
        }
        // Forget what was released, to keep the map small.
        acked = acked.split_off(&first);
        wal.close().unwrap();
    }
    assert!(total_lines > 0, "the child never acknowledged anything");
    eprintln!(
        "crash test: {rounds} rounds, {total_lines} acknowledged records, {torn_rounds} torn tails cut"
    );
}
