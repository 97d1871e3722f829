//! A reference model of a [`StateBackend`](highwater_core::StateBackend)
//! and helpers that read snapshots into plain maps.
//!
//! [`Model`] is a `BTreeMap<Vec<u8>, Vec<u8>>` that also remembers the state
//! at the start of the current change-tracking epoch and which keys were
//! touched since, so that it can judge a
//! [`SnapshotKind::Changes`] snapshot exactly.
//!
//! The checks return `Result<(), String>` with a readable description of
//! every difference (keys decoded with [`describe_key`]); callers add their
//! own context (case, seed, step) and panic.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use highwater_core::{Mutation, Result as CoreResult, SnapshotKind, StateSnapshot, WriteBatch};

use crate::keys::{describe_key, describe_value};

/// Live entries: key → stored value.
pub type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// Changes: key → new value, or `None` for a delete.
pub type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The most differences a diff lists before it only counts.
const MAX_LISTED: usize = 10;

/// The reference model of a backend's live state and change tracking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    current: Entries,
    epoch_start: Entries,
    touched: BTreeSet<Vec<u8>>,
}

impl Model {
    /// An empty model at the start of an epoch.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live entries.
    pub fn entries(&self) -> &Entries {
        &self.current
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// True when no entry is live.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.current.get(key).map(Vec::as_slice)
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.touched.insert(key.to_vec());
        self.current.insert(key.to_vec(), value.to_vec());
    }

    /// Removes `key` (a no-op for a missing key, which still counts as
    /// touched: a backend may report it as a delete).
    pub fn delete(&mut self, key: &[u8]) {
        self.touched.insert(key.to_vec());
        self.current.remove(key);
    }

    /// Applies one mutation.
    pub fn apply(&mut self, m: &Mutation) {
        match m {
            Mutation::Put { key, value } => self.put(key, value),
            Mutation::Delete { key } => self.delete(key),
        }
    }

    /// Applies a batch in order (a later mutation of a key wins).
    pub fn apply_batch(&mut self, batch: &WriteBatch) {
        for m in batch.mutations() {
            self.apply(m);
        }
    }

    /// All entries whose key starts with `prefix`, sorted.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.current
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// All entries with `start <= key < end`, sorted; empty when
    /// `start >= end`.
    pub fn scan_range(&self, start: &[u8], end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        if start >= end {
            return Vec::new();
        }
        self.current
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Starts a new change-tracking epoch, as every backend snapshot does.
    pub fn start_epoch(&mut self) {
        self.epoch_start = self.current.clone();
        self.touched.clear();
    }

    /// Replaces all entries and starts a new epoch, as a restore does.
    pub fn reset_to(&mut self, entries: Entries) {
        self.current = entries;
        self.start_epoch();
    }

    /// Removes all entries and starts a new epoch, as a clear does.
    pub fn clear(&mut self) {
        self.reset_to(Entries::new());
    }

    /// Keys written or deleted since the epoch started.
    pub fn touched(&self) -> &BTreeSet<Vec<u8>> {
        &self.touched
    }

    /// The entries at the start of the epoch.
    pub fn epoch_start(&self) -> &Entries {
        &self.epoch_start
    }

    /// The smallest correct change set of the epoch: every key whose value
    /// differs from the epoch start, with its current value or `None`.
    pub fn expected_changes(&self) -> Changes {
        self.touched
            .iter()
            .filter(|k| self.current.get(*k) != self.epoch_start.get(*k))
            .map(|k| (k.clone(), self.current.get(k).cloned()))
            .collect()
    }

    /// Judges a change set reported for this epoch.
    ///
    /// Correct means: every reported key was touched in the epoch (no
    /// untouched key is reported, which is what keeps an incremental
    /// checkpoint O(changes)); every reported key carries its current value,
    /// or `None` when it is absent now; and every touched key that is not
    /// reported has the same value as at the epoch start (so a key created
    /// and deleted within the epoch may be omitted or reported as `None`).
    /// Together these make `epoch start + changes == current`.
    pub fn check_changes(&self, reported: &Changes) -> Result<(), String> {
        let mut problems = Vec::new();
        for (k, v) in reported {
            if !self.touched.contains(k) {
                problems.push(format!(
                    "reports a key not touched in the epoch: key={} value={}",
                    describe_key(k),
                    describe_value(v.as_deref())
                ));
                continue;
            }
            let now = self.current.get(k);
            if v.as_ref() != now {
                problems.push(format!(
                    "reports a value that is not the current one: key={} reported={} current={}",
                    describe_key(k),
                    describe_value(v.as_deref()),
                    describe_value(now.map(Vec::as_slice))
                ));
            }
        }
        for k in &self.touched {
            let (before, now) = (self.epoch_start.get(k), self.current.get(k));
            if !reported.contains_key(k) && before != now {
                problems.push(format!(
                    "misses a change: key={} before={} now={}",
                    describe_key(k),
                    describe_value(before.map(Vec::as_slice)),
                    describe_value(now.map(Vec::as_slice))
                ));
            }
        }
        summarize(
            "changes snapshot",
            problems,
            &format!(
                "reported={} touched={} expected_minimal={}",
                reported.len(),
                self.touched.len(),
                self.expected_changes().len()
            ),
        )
    }

    /// Judges the content of a full snapshot (or a scan) against the
    /// current entries.
    pub fn check_full(&self, reported: &Entries) -> Result<(), String> {
        diff_entries(&self.current, reported)
    }
}

/// Applies a change set to `base`: puts insert, `None` removes.
pub fn apply_changes(base: &mut Entries, changes: &Changes) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                base.insert(k.clone(), v.clone());
            }
            None => {
                base.remove(k);
            }
        }
    }
}

/// Describes how `actual` differs from `expected`, or `Ok(())` when equal.
pub fn diff_entries(expected: &Entries, actual: &Entries) -> Result<(), String> {
    let mut problems = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => problems.push(format!(
                "missing key={} expected={}",
                describe_key(k),
                describe_value(Some(v))
            )),
            Some(a) if a != v => problems.push(format!(
                "different key={} expected={} actual={}",
                describe_key(k),
                describe_value(Some(v)),
                describe_value(Some(a))
            )),
            Some(_) => {}
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            problems.push(format!(
                "unexpected key={} value={}",
                describe_key(k),
                describe_value(Some(v))
            ));
        }
    }
    summarize(
        "entries",
        problems,
        &format!("expected={} actual={}", expected.len(), actual.len()),
    )
}

/// Describes how a scan result differs from the model's, checking order
/// and duplicates as well as content.
pub fn diff_scan(
    expected: &[(Vec<u8>, Vec<u8>)],
    actual: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), String> {
    if let Some(i) = actual.windows(2).position(|w| w[0].0 >= w[1].0) {
        return Err(format!(
            "scan result is not strictly ascending at index {i}: {} then {}",
            describe_key(&actual[i].0),
            describe_key(&actual[i + 1].0)
        ));
    }
    if expected == actual {
        return Ok(());
    }
    let e: Entries = expected.iter().cloned().collect();
    let a: Entries = actual.iter().cloned().collect();
    diff_entries(&e, &a)
}

fn summarize(what: &str, problems: Vec<String>, counts: &str) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    let mut out = format!("{what} differ ({} problems; {counts}):", problems.len());
    for p in problems.iter().take(MAX_LISTED) {
        out.push_str("\n  - ");
        out.push_str(p);
    }
    if problems.len() > MAX_LISTED {
        out.push_str(&format!("\n  … and {} more", problems.len() - MAX_LISTED));
    }
    Err(out)
}

/// Everything a snapshot reported, read through its public interface.
#[derive(Debug, Clone)]
pub struct SnapshotContent {
    /// What [`StateSnapshot::kind`] said.
    pub kind: SnapshotKind,
    /// What [`StateSnapshot::partitions`] said.
    pub partitions: usize,
    /// What [`StateSnapshot::approximate_entries`] said.
    pub approximate_entries: usize,
    /// Number of entries visited over all partitions.
    pub visited: usize,
    /// The entries in visiting order (partition by partition).
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The entries by key.
    pub entries: Changes,
}

impl SnapshotContent {
    /// The live entries of a full snapshot (or the puts of a change set).
    pub fn puts(&self) -> Entries {
        self.entries
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
            .collect()
    }
}

/// Reads every partition of `snapshot`, checking the structural contract:
/// each key is visited exactly once over all partitions, a full snapshot
/// reports no delete, and no partition fails.
pub fn read_snapshot(snapshot: &dyn StateSnapshot) -> Result<SnapshotContent, String> {
    let kind = snapshot.kind();
    let partitions = snapshot.partitions();
    let approximate_entries = snapshot.approximate_entries();
    let mut records = Vec::new();
    let mut entries = Changes::new();
    let mut first_seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for p in 0..partitions {
        let mut visit = |k: &[u8], v: Option<&[u8]>| {
            if let Some(prev) = first_seen.get(k) {
                problems.push(format!(
                    "key visited twice: key={} partitions={prev} and {p}",
                    describe_key(k)
                ));
            } else {
                first_seen.insert(k.to_vec(), p);
            }
            if kind == SnapshotKind::Full && v.is_none() {
                problems.push(format!(
                    "full snapshot reports a delete: key={}",
                    describe_key(k)
                ));
            }
            records.push((k.to_vec(), v.map(<[u8]>::to_vec)));
            entries.insert(k.to_vec(), v.map(<[u8]>::to_vec));
            Ok(())
        };
        if let Err(e) = snapshot.for_each_in_partition(p, &mut visit) {
            return Err(format!(
                "for_each_in_partition failed: partition={p} of {partitions} error={e}"
            ));
        }
    }
    summarize("snapshot structure", problems, &format!("kind={kind:?}"))?;
    Ok(SnapshotContent {
        kind,
        partitions,
        approximate_entries,
        visited: records.len(),
        records,
        entries,
    })
}

/// Visits every entry of every partition of `snapshot`, partition by
/// partition, without copying: the streaming form of [`read_snapshot`] for
/// callers that cannot hold the whole snapshot (benches over gigabytes of
/// state) or only drain it. `visit` gets the partition, the key and the
/// value (`None` for a delete). Stops at the first error, of the snapshot
/// or of `visit`, and returns it typed. Returns the number of entries.
pub fn visit_snapshot(
    snapshot: &dyn StateSnapshot,
    mut visit: impl FnMut(usize, &[u8], Option<&[u8]>) -> CoreResult<()>,
) -> CoreResult<usize> {
    let mut n = 0;
    for p in 0..snapshot.partitions() {
        snapshot.for_each_in_partition(p, &mut |k, v| {
            n += 1;
            visit(p, k, v)
        })?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use highwater_core::{Error, StateBackend};

    #[test]
    fn visit_snapshot_streams_what_read_snapshot_reads_and_stops_at_an_error() {
        let b = highwater_memory::MemoryBackend::new();
        for i in 0..100u32 {
            let k = crate::keys::encode_key((i % 7) as u16, "op", "st", &i.to_be_bytes(), &[], &[]);
            b.put(&k, &crate::keys::plain_value(&i.to_le_bytes()))
                .unwrap();
        }
        let s = b.snapshot(SnapshotKind::Full).unwrap();
        let mut seen = Entries::new();
        let n = visit_snapshot(&*s, |p, k, v| {
            assert!(p < s.partitions());
            seen.insert(k.to_vec(), v.unwrap().to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 100);
        assert_eq!(seen, read_snapshot(&*s).unwrap().puts());
        let mut calls = 0;
        let err = visit_snapshot(&*s, |_, _, _| {
            calls += 1;
            Err(Error::InvalidArgument("stop".into()))
        })
        .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(m) if m == "stop"));
        assert_eq!(calls, 1);
    }

    #[test]
    fn changes_rule_accepts_minimal_and_tolerant_sets() {
        let mut m = Model::new();
        m.put(b"a", b"1");
        m.put(b"b", b"1");
        m.start_epoch();
        m.put(b"a", b"2");
        m.delete(b"b");
        m.put(b"c", b"3");
        m.delete(b"c");
        m.delete(b"d");
        let minimal = m.expected_changes();
        assert_eq!(minimal.len(), 2);
        m.check_changes(&minimal).unwrap();
        let mut tolerant = minimal.clone();
        tolerant.insert(b"c".to_vec(), None);
        tolerant.insert(b"d".to_vec(), None);
        m.check_changes(&tolerant).unwrap();
        let mut missing = minimal.clone();
        missing.remove(b"b".as_slice());
        assert!(m.check_changes(&missing).is_err());
        let mut stale = minimal.clone();
        stale.insert(b"a".to_vec(), Some(b"1".to_vec()));
        assert!(m.check_changes(&stale).is_err());
        let mut extra = minimal;
        extra.insert(b"z".to_vec(), None);
        assert!(m.check_changes(&extra).is_err());
    }

    #[test]
    fn scans_respect_bounds() {
        let mut m = Model::new();
        for k in [&b"a"[..], b"ab", b"b", &[0xFF, 0xFF]] {
            m.put(k, b"v");
        }
        assert_eq!(m.scan_prefix(b"a").len(), 2);
        assert_eq!(m.scan_prefix(&[0xFF]).len(), 1);
        assert_eq!(m.scan_range(b"a", b"b").len(), 2);
        assert!(m.scan_range(b"b", b"a").is_empty());
        assert!(diff_scan(&m.scan_prefix(b""), &m.scan_prefix(b"")).is_ok());
    }
}
