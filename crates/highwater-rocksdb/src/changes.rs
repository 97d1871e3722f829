//! The keys written since the last snapshot, kept as an append-only log per
//! shard rather than a hash set: a put appends its key (length and bytes)
//! to a buffer — no allocation per key, no random memory access — and
//! duplicates are removed when a snapshot takes the log, or when a log grows
//! large (so a few hot keys written millions of times stay small).

/// Logs below this size are never deduplicated before a snapshot.
const MIN_DEDUP_BYTES: usize = 4 << 20;

/// One shard's log of changed keys.
#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    buf: Vec<u8>,
    /// Deduplicate when `buf` reaches this many bytes.
    dedup_at: usize,
}

impl ChangeLog {
    /// Records that `key` changed.
    pub(crate) fn push(&mut self, key: &[u8]) {
        self.buf
            .extend_from_slice(&(key.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(key);
        if self.buf.len() >= self.dedup_at.max(MIN_DEDUP_BYTES) {
            let keys = sorted_unique(std::slice::from_ref(&self.buf));
            let mut buf = Vec::with_capacity(self.buf.len());
            for k in &keys {
                buf.extend_from_slice(&(k.len() as u64).to_le_bytes());
                buf.extend_from_slice(k);
            }
            self.buf = buf;
            // Amortised: the next pass comes after the log doubles again.
            self.dedup_at = self.buf.len() * 2;
        }
    }

    /// Takes the log, leaving an empty one (a new epoch).
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.dedup_at = 0;
        std::mem::take(&mut self.buf)
    }
}

/// Every key in `logs`, sorted, each once.
pub(crate) fn sorted_unique(logs: &[Vec<u8>]) -> Vec<Box<[u8]>> {
    let mut keys: Vec<&[u8]> = Vec::new();
    for log in logs {
        let mut rest = log.as_slice();
        while let Some((len, tail)) = rest.split_first_chunk::<8>() {
            let len = u64::from_le_bytes(*len) as usize;
            let Some((key, tail)) = tail.split_at_checked(len) else {
                break;
            };
            keys.push(key);
            rest = tail;
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter().map(Box::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_sorted_and_once_even_after_compaction_of_the_log() {
        let mut log = ChangeLog::default();
        let mut other = ChangeLog::default();
        let mut expected = std::collections::BTreeSet::new();
        // Enough hot-key writes to pass the dedup threshold several times.
        for i in 0..2_000_000u32 {
            let k = (i % 1000).to_be_bytes();
            log.push(&k);
            expected.insert(k.to_vec());
        }
        assert!(
            log.buf.len() < 2 * MIN_DEDUP_BYTES,
            "hot keys keep the log small"
        );
        other.push(b"");
        other.push(b"zz");
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
}
