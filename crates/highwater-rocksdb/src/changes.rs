//! The keys written since the last snapshot, kept as an append-only log per
//! shard rather than a hash set: a put appends its key (length and bytes)
//! to a buffer — no allocation per key, no random memory access — and
//! duplicates are removed when a snapshot takes the log, or when a log grows
//! large (so a few hot keys written millions of times stay small).
//!
//! A log is bounded: when its distinct keys would take more than its cap,
//! it gives up (returns `false` from [`ChangeLog::push`]) and the backend
//! answers the next changes snapshot with a full one. A bulk load of more
//! keys than the cap holds therefore costs no memory for change tracking.

/// Logs below this size are never deduplicated before a snapshot.
const MIN_DEDUP_BYTES: usize = 4 << 20;

/// Bytes a log entry takes besides its key (the length prefix).
const ENTRY_HEADER: usize = 8;

/// One shard's log of changed keys.
#[derive(Debug)]
pub(crate) struct ChangeLog {
    buf: Vec<u8>,
    /// Deduplicate when `buf` reaches this many bytes.
    dedup_at: usize,
    /// The most bytes the log may hold.
    cap: usize,
}

impl ChangeLog {
    /// An empty log holding at most `cap` bytes (keys and an 8-byte length
    /// each).
    pub(crate) fn new(cap: usize) -> ChangeLog {
        ChangeLog {
            buf: Vec::new(),
            dedup_at: 0,
            cap,
        }
    }

    /// Records that `key` changed. False when the log cannot hold the keys
    /// of this epoch (their distinct keys pass its cap): it is emptied and
    /// the epoch's changes are no longer known.
    #[must_use]
    pub(crate) fn push(&mut self, key: &[u8]) -> bool {
        if ENTRY_HEADER.saturating_add(key.len()) > self.cap {
            self.take();
            return false;
        }
        self.buf
            .extend_from_slice(&(key.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(key);
        if self.buf.len() < self.dedup_at.max(MIN_DEDUP_BYTES).min(self.cap) {
            return true;
        }
        self.buf = dedup(&self.buf);
        // Amortised: each pass frees at least a quarter of the cap, or the
        // log gives up.
        if self.buf.len() > self.cap - self.cap / 4 {
            self.take();
            return false;
        }
        // The next pass comes after the log doubles again.
        self.dedup_at = self.buf.len() * 2;
        true
    }

    /// Takes the log, leaving an empty one (a new epoch).
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.dedup_at = 0;
        std::mem::take(&mut self.buf)
    }
}

/// The keys of a log, in the order they were pushed.
fn keys(log: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = log;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<ENTRY_HEADER>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        let (key, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(key)
    })
}

/// `log` with each key once, in key order.
fn dedup(log: &[u8]) -> Vec<u8> {
    let mut sorted: Vec<&[u8]> = keys(log).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::with_capacity(sorted.iter().map(|k| ENTRY_HEADER + k.len()).sum());
    for k in sorted {
        out.extend_from_slice(&(k.len() as u64).to_le_bytes());
        out.extend_from_slice(k);
    }
    out
}

/// Every key in `logs`, sorted, each once.
pub(crate) fn sorted_unique(logs: &[Vec<u8>]) -> Vec<Box<[u8]>> {
    let mut all: Vec<&[u8]> = logs.iter().flat_map(|log| keys(log)).collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter().map(Box::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_sorted_and_once_even_after_compaction_of_the_log() {
        let mut log = ChangeLog::new(usize::MAX);
        let mut other = ChangeLog::new(usize::MAX);
        let mut expected = std::collections::BTreeSet::new();
        // Enough hot-key writes to pass the dedup threshold several times.
        for i in 0..2_000_000u32 {
            let k = (i % 1000).to_be_bytes();
            assert!(log.push(&k));
            expected.insert(k.to_vec());
        }
        assert!(
            log.buf.len() < 2 * MIN_DEDUP_BYTES,
            "hot keys keep the log small"
        );
        assert!(other.push(b""));
        assert!(other.push(b"zz"));
        expected.insert(Vec::new());
        expected.insert(b"zz".to_vec());
        let keys = sorted_unique(&[log.take(), other.take()]);
        let got: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        assert_eq!(got, expected.into_iter().collect::<Vec<_>>());
        assert!(
            sorted_unique(&[log.take()]).is_empty(),
            "take starts a new epoch"
        );
    }

    #[test]
    fn a_log_gives_up_past_its_cap_and_holds_nothing_then() {
        let cap = 64 << 10;
        let mut log = ChangeLog::new(cap);
        // Hot keys written over and over stay within the cap.
        for i in 0..200_000u32 {
            assert!(log.push(&(i % 100).to_be_bytes()), "write {i}");
            assert!(log.buf.len() <= cap);
        }
        // Distinct keys: 12 bytes each, so the cap holds about 5 400.
        let mut gave_up = None;
        for i in 0..10_000u32 {
            if !log.push(&(1_000_000 + i).to_be_bytes()) {
                gave_up = Some(i);
                break;
            }
            assert!(log.buf.len() <= cap);
        }
        let at = gave_up.expect("the log gives up");
        assert!(
            (cap / 12 * 3 / 4 - 100..=cap / 12).contains(&(at as usize)),
            "gave up after {at} distinct keys"
        );
        assert!(log.take().is_empty(), "a log that gave up holds nothing");
        // A key longer than the cap never fits; one well within it does.
        assert!(!ChangeLog::new(8).push(b"k"));
        assert!(ChangeLog::new(16).push(b"k"));
    }
}
