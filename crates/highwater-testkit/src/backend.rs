//! The conformance suite of [`StateBackend`] implementations.
//!
//! Every case is a public function taking a factory that returns a fresh,
//! empty backend on each call. [`backend_conformance!`](crate::backend_conformance)
//! turns each case into its own `#[test]`; [`run_all`] runs them in one go.
//!
//! | case | what must hold |
//! | --- | --- |
//! | [`model_based`] | random puts, deletes, gets, batches, scans, snapshots, restores and clears agree with a `BTreeMap` model (32 seeds × 200 operations) |
//! | [`snapshot_is_immutable`] | a snapshot keeps its content while the backend is overwritten, cleared and restored, including when read from another thread |
//! | [`snapshot_visit_contract`] | visitor errors stop a visit and are returned; an out-of-range partition is refused without a panic |
//! | [`changes_snapshot_tracks_puts_and_deletes`] | a changes snapshot reports exactly the changed keys, current values and deletes |
//! | [`incrementals_fold_to_full`] | base + changes snapshots, applied in order, equal the final full snapshot |
//! | [`changes_cost_is_proportional`] | a changes snapshot of 10 changes among 20 000 keys visits O(10) entries |
//! | [`ttl_via_handles`] | typed handles with a TTL never return expired values, and refresh on read when asked |
//! | [`typed_state_handles`] | value, list, map, reducing and aggregating state and namespaces behave as specified |
//! | [`concurrent_writers_during_snapshots`] | snapshots taken during concurrent batches see whole batches and monotonic counters |
//! | [`scan_order_and_bounds`] | scans are sorted, prefix-exact, start-inclusive and end-exclusive |
//! | [`restore_replaces_everything_and_clear`] | restore and clear replace all state and start a new change epoch |
//! | [`stats`] | the entry count follows puts, deletes, batches, clears and restores |

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use highwater_core::{
    AggregateFunction, AggregatingStateDescriptor, Clock, Envelope, Error, ErrorKind,
    KeyedStateContext, ListStateDescriptor, ManualClock, MapStateDescriptor,
    ReducingStateDescriptor, Result, SnapshotKind, StateBackend, StateKey, StateSnapshot,
    TtlConfig, ValueStateDescriptor, WriteBatch,
};

use crate::fixture::{Guards, IntoBackend};
use crate::keys::{KeySpace, describe_key, describe_value, encode_key, plain_value, random_value};
use crate::model::{
    self, Changes, Entries, Model, SnapshotContent, apply_changes, diff_entries, diff_scan,
};
use crate::rng::SplitMix64;

/// A factory of fresh, empty backends.
pub type BackendFactory<'a> = &'a dyn Fn() -> Arc<dyn StateBackend>;

/// The names of every case, in the order the macro emits them.
pub const CASE_NAMES: &[&str] = crate::__backend_cases!(__case_names {});

/// Runs every case, each isolated by `catch_unwind`, and panics at the end
/// naming the cases that failed (their own panic messages are printed as
/// they happen). Prefer [`backend_conformance!`](crate::backend_conformance),
/// which reports each case as its own test.
pub fn run_all(factory: BackendFactory<'_>) {
    let failed: Vec<&str> = crate::__backend_cases!(__backend_run_all { factory });
    assert!(
        failed.is_empty(),
        "backend conformance cases failed: {}",
        failed.join(", ")
    );
}

/// Adapts a user factory (see [`IntoBackend`]) to a [`BackendFactory`],
/// keeping guards in `guards`. Used by the macro.
pub fn factory<'a, F, R>(
    build: &'a F,
    guards: &'a Guards,
) -> impl Fn() -> Arc<dyn StateBackend> + 'a
where
    F: Fn() -> R,
    R: IntoBackend,
{
    move || build().into_backend(guards)
}

// ---------------------------------------------------------------------------
// Small helpers shared by the cases.

/// Unwraps a backend result, naming the operation on failure.
fn must<T>(r: Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error: {e} (kind={:?})", e.kind()))
}

/// Panics with `ctx` when a check failed.
fn check(r: std::result::Result<(), String>, ctx: &str) {
    if let Err(e) = r {
        panic!("{ctx}: {e}");
    }
}

/// Takes a snapshot and checks that it says it is of the requested kind.
fn take(b: &dyn StateBackend, kind: SnapshotKind, ctx: &str) -> Arc<dyn StateSnapshot> {
    let s = must(b.snapshot(kind), &format!("{ctx}: snapshot({kind:?})"));
    assert_eq!(s.kind(), kind, "{ctx}: snapshot reports the wrong kind");
    s
}

/// Reads a snapshot through its partitions.
fn read(s: &dyn StateSnapshot, ctx: &str) -> SnapshotContent {
    model::read_snapshot(s).unwrap_or_else(|e| panic!("{ctx}: {e}"))
}

/// Takes and reads a full snapshot.
fn full_entries(b: &dyn StateBackend, ctx: &str) -> Entries {
    read(&*take(b, SnapshotKind::Full, ctx), ctx).puts()
}

/// Restores `entries` (in the given order) into `b`.
fn restore_from(b: &dyn StateBackend, entries: Vec<(Vec<u8>, Vec<u8>)>, ctx: &str) {
    let mut it = entries.into_iter().map(Ok);
    must(b.restore(&mut it), &format!("{ctx}: restore"));
}

/// Every entry of the backend, by an unbounded prefix scan.
fn scan_all(b: &dyn StateBackend, ctx: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    must(b.scan_prefix(&[]), &format!("{ctx}: scan_prefix(all)"))
}

/// Checks the backend's live content against `expected` three ways: a full
/// scan, point reads and the entry count.
fn check_content(b: &dyn StateBackend, expected: &Entries, ctx: &str) {
    let scanned: Vec<_> = expected
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check(
        diff_scan(&scanned, &scan_all(b, ctx)),
        &format!("{ctx}: full scan"),
    );
    for (k, v) in expected {
        let got = must(b.get(k), &format!("{ctx}: get"));
        assert_eq!(
            got.as_deref(),
            Some(v.as_slice()),
            "{ctx}: get key={} returned {}, expected {}",
            describe_key(k),
            describe_value(got.as_deref()),
            describe_value(Some(v))
        );
    }
    assert_eq!(
        b.stats().entries,
        expected.len() as u64,
        "{ctx}: stats().entries"
    );
}

/// Checks a range scan, including the `start > end` case, which must be
/// empty (or refused as invalid) and never panic.
fn check_range(
    b: &dyn StateBackend,
    m: &Model,
    start: &[u8],
    end: &[u8],
) -> std::result::Result<(), String> {
    let got = catch_unwind(AssertUnwindSafe(|| b.scan_range(start, end))).map_err(|_| {
        format!(
            "scan_range panicked: start={} end={}",
            describe_key(start),
            describe_key(end)
        )
    })?;
    match got {
        Ok(got) => diff_scan(&m.scan_range(start, end), &got).map_err(|e| {
            format!(
                "scan_range(start={}, end={}): {e}",
                describe_key(start),
                describe_key(end)
            )
        }),
        Err(e) if start > end && e.kind() == ErrorKind::Invalid => Ok(()),
        Err(e) => Err(format!(
            "scan_range(start={}, end={}) failed: {e}",
            describe_key(start),
            describe_key(end)
        )),
    }
}

/// Checks a prefix scan.
fn check_prefix(b: &dyn StateBackend, m: &Model, prefix: &[u8]) -> std::result::Result<(), String> {
    let got = catch_unwind(AssertUnwindSafe(|| b.scan_prefix(prefix)))
        .map_err(|_| format!("scan_prefix panicked: prefix={}", describe_key(prefix)))?
        .map_err(|e| format!("scan_prefix(prefix={}) failed: {e}", describe_key(prefix)))?;
    diff_scan(&m.scan_prefix(prefix), &got)
        .map_err(|e| format!("scan_prefix(prefix={}): {e}", describe_key(prefix)))
}

/// Seeds for the random cases: `HIGHWATER_TESTKIT_SEED` runs one seed,
/// `HIGHWATER_TESTKIT_SEEDS` sets how many; otherwise `default_count`.
fn seeds(default_count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("HIGHWATER_TESTKIT_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("HIGHWATER_TESTKIT_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(default_count);
    (0..count).collect()
}

// ---------------------------------------------------------------------------
// Case 1: model-based random operations.

/// Random operations checked against a [`Model`]: puts, deletes, gets,
/// write batches (with repeated keys), prefix and range scans, full and
/// changes snapshots (each compared with the model), restores from earlier
/// full snapshots (re-read first, so they must not have changed) and
/// clears. Keys come from [`KeySpace::small`], values are plain envelopes.
/// Runs 32 seeds × 200 operations; see the crate docs for the environment
/// variables that change this.
pub fn model_based(factory: BackendFactory<'_>) {
    for seed in seeds(32) {
        model_based_seed(factory, seed, 200);
    }
}

/// One run of [`model_based`] with an explicit seed and operation count.
pub fn model_based_seed(factory: BackendFactory<'_>, seed: u64, ops: usize) {
    let mut run = ModelRun {
        backend: factory(),
        model: Model::new(),
        rng: SplitMix64::new(seed),
        space: KeySpace::small(),
        log: VecDeque::new(),
        seed,
        step: 0,
        captured: Vec::new(),
    };
    for step in 0..ops {
        run.step = step;
        run.one_op();
    }
    run.step = ops;
    run.finish();
}

/// A full snapshot kept for a later restore, with what it held.
struct Captured {
    snapshot: Arc<dyn StateSnapshot>,
    entries: Entries,
    taken_at: usize,
}

struct ModelRun {
    backend: Arc<dyn StateBackend>,
    model: Model,
    rng: SplitMix64,
    space: KeySpace,
    log: VecDeque<String>,
    seed: u64,
    step: usize,
    captured: Vec<Captured>,
}

impl ModelRun {
    const LOG_LEN: usize = 16;

    fn fail(&self, msg: &str) -> ! {
        let log: Vec<_> = self.log.iter().map(|l| format!("  {l}")).collect();
        panic!(
            "backend={} case=model_based seed={} step={}: {msg}\nrecent operations (oldest first):\n{}\nreproduce with HIGHWATER_TESTKIT_SEED={}",
            self.backend.name(),
            self.seed,
            self.step,
            log.join("\n"),
            self.seed
        );
    }

    fn note(&mut self, what: String) {
        if self.log.len() == Self::LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {what}", self.step));
    }

    fn ok<T>(&self, r: Result<T>, what: &str) -> T {
        match r {
            Ok(v) => v,
            Err(e) => self.fail(&format!("{what} failed: {e}")),
        }
    }

    fn verify(&self, r: std::result::Result<(), String>) {
        if let Err(e) = r {
            self.fail(&e);
        }
    }

    /// A key of the space, or half the time a live one (so deletes and
    /// reads mostly hit).
    fn some_key(&mut self) -> Vec<u8> {
        if !self.model.is_empty() && self.rng.chance(1, 2) {
            let i = self.rng.index(self.model.len());
            if let Some(k) = self.model.entries().keys().nth(i) {
                return k.clone();
            }
        }
        self.space.key(&mut self.rng)
    }

    fn one_op(&mut self) {
        match self.rng.below(100) {
            0..=24 => self.op_put(),
            25..=36 => self.op_delete(),
            37..=48 => self.op_get(),
            49..=60 => self.op_batch(),
            61..=68 => self.op_scan_prefix(),
            69..=76 => self.op_scan_range(),
            77..=82 => self.op_full_snapshot(),
            83..=90 => self.op_changes_snapshot(),
            91..=95 => self.op_restore(),
            96 => self.op_clear(),
            _ => self.op_stats(),
        }
    }

    fn op_put(&mut self) {
        let k = self.space.key(&mut self.rng);
        let v = random_value(&mut self.rng);
        self.note(format!(
            "put {} = {}",
            describe_key(&k),
            describe_value(Some(&v))
        ));
        self.ok(self.backend.put(&k, &v), "put");
        self.model.put(&k, &v);
    }

    fn op_delete(&mut self) {
        let k = self.some_key();
        self.note(format!("delete {}", describe_key(&k)));
        self.ok(self.backend.delete(&k), "delete");
        self.model.delete(&k);
    }

    fn op_get(&mut self) {
        let k = self.some_key();
        self.note(format!("get {}", describe_key(&k)));
        let got = self.ok(self.backend.get(&k), "get");
        let want = self.model.get(&k);
        if got.as_deref() != want {
            self.fail(&format!(
                "get {} returned {}, model has {}",
                describe_key(&k),
                describe_value(got.as_deref()),
                describe_value(want)
            ));
        }
    }

    fn op_batch(&mut self) {
        let n = 1 + self.rng.index(6);
        let mut batch = WriteBatch::new();
        let mut used: Vec<Vec<u8>> = Vec::new();
        for _ in 0..n {
            // Sometimes touch a key already in this batch: the later
            // mutation must win.
            let k = if !used.is_empty() && self.rng.chance(1, 5) {
                self.rng.pick(&used).clone()
            } else {
                self.some_key()
            };
            if self.rng.chance(7, 10) {
                batch.put(k.clone(), random_value(&mut self.rng));
            } else {
                batch.delete(k.clone());
            }
            used.push(k);
        }
        let desc: Vec<String> = batch
            .mutations()
            .iter()
            .map(|m| match m {
                highwater_core::Mutation::Put { key, value } => {
                    format!(
                        "put {} = {}",
                        describe_key(key),
                        describe_value(Some(value))
                    )
                }
                highwater_core::Mutation::Delete { key } => format!("delete {}", describe_key(key)),
            })
            .collect();
        self.note(format!("batch [{}]", desc.join("; ")));
        self.ok(self.backend.write_batch(batch.clone()), "write_batch");
        self.model.apply_batch(&batch);
    }

    fn op_scan_prefix(&mut self) {
        let p = self.space.prefix(&mut self.rng);
        self.note(format!("scan_prefix {}", describe_key(&p)));
        self.verify(check_prefix(&*self.backend, &self.model, &p));
    }

    fn op_scan_range(&mut self) {
        let mut a = self.space.bound(&mut self.rng);
        let mut b = self.space.bound(&mut self.rng);
        // Mostly well-ordered ranges; sometimes inverted ones on purpose.
        if a > b && self.rng.chance(4, 5) {
            std::mem::swap(&mut a, &mut b);
        }
        self.note(format!(
            "scan_range {} .. {}",
            describe_key(&a),
            describe_key(&b)
        ));
        self.verify(check_range(&*self.backend, &self.model, &a, &b));
    }

    fn op_full_snapshot(&mut self) {
        self.note("snapshot(Full)".into());
        let s = self.ok(self.backend.snapshot(SnapshotKind::Full), "snapshot(Full)");
        if s.kind() != SnapshotKind::Full {
            self.fail(&format!("snapshot(Full) reports kind {:?}", s.kind()));
        }
        let content = model::read_snapshot(&*s).unwrap_or_else(|e| self.fail(&e));
        let entries = content.puts();
        self.verify(
            self.model
                .check_full(&entries)
                .map_err(|e| format!("full snapshot: {e}")),
        );
        self.model.start_epoch();
        let captured = Captured {
            snapshot: s,
            entries,
            taken_at: self.step,
        };
        if self.captured.len() < 3 {
            self.captured.push(captured);
        } else {
            let i = self.rng.index(self.captured.len());
            self.captured[i] = captured;
        }
    }

    fn op_changes_snapshot(&mut self) {
        self.note("snapshot(Changes)".into());
        let s = self.ok(
            self.backend.snapshot(SnapshotKind::Changes),
            "snapshot(Changes)",
        );
        if s.kind() != SnapshotKind::Changes {
            self.fail(&format!("snapshot(Changes) reports kind {:?}", s.kind()));
        }
        let content = model::read_snapshot(&*s).unwrap_or_else(|e| self.fail(&e));
        self.verify(self.model.check_changes(&content.entries));
        self.model.start_epoch();
    }

    fn op_restore(&mut self) {
        if self.captured.is_empty() {
            return self.op_full_snapshot();
        }
        let i = self.rng.index(self.captured.len());
        let (snapshot, entries, taken_at) = {
            let c = &self.captured[i];
            (c.snapshot.clone(), c.entries.clone(), c.taken_at)
        };
        // Re-read the snapshot: it must still hold what it held when taken.
        let content = model::read_snapshot(&*snapshot).unwrap_or_else(|e| self.fail(&e));
        self.verify(diff_entries(&entries, &content.puts()).map_err(|e| {
            format!("full snapshot taken at step {taken_at} changed afterwards: {e}")
        }));
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = content
            .records
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        if self.rng.chance(1, 3) {
            self.rng.shuffle(&mut records);
        }
        self.note(format!(
            "restore snapshot of step {taken_at} ({} entries)",
            records.len()
        ));
        let mut it = records.into_iter().map(Ok);
        self.ok(self.backend.restore(&mut it), "restore");
        self.model.reset_to(entries);
        self.verify(
            check_prefix(&*self.backend, &self.model, &[])
                .map_err(|e| format!("after restore: {e}")),
        );
    }

    fn op_clear(&mut self) {
        self.note("clear".into());
        self.ok(self.backend.clear(), "clear");
        self.model.clear();
    }

    fn op_stats(&mut self) {
        self.note("stats".into());
        let got = self.backend.stats().entries;
        if got != self.model.len() as u64 {
            self.fail(&format!(
                "stats().entries={got}, model has {}",
                self.model.len()
            ));
        }
    }

    fn finish(&mut self) {
        self.op_stats();
        self.op_full_snapshot();
        self.verify(check_prefix(&*self.backend, &self.model, &[]));
        for c in &self.captured {
            let content = model::read_snapshot(&*c.snapshot).unwrap_or_else(|e| self.fail(&e));
            self.verify(diff_entries(&c.entries, &content.puts()).map_err(|e| {
                format!(
                    "full snapshot taken at step {} changed afterwards: {e}",
                    c.taken_at
                )
            }));
        }
    }
}

// ---------------------------------------------------------------------------
// Case 2: snapshots are immutable.

fn numbered_key(op: &str, state: &str, i: u32) -> Vec<u8> {
    // Spread over many key groups so partitioned snapshots use several
    // partitions.
    encode_key(
        (i.wrapping_mul(2_654_435_761) >> 17) as u16,
        op,
        state,
        &i.to_be_bytes(),
        &[],
        &[],
    )
}

/// Takes a full and a changes snapshot, then overwrites every key, deletes
/// half, adds new ones, clears and restores other content, while another
/// thread keeps re-reading both snapshots. Every read, during and after,
/// must return exactly what the snapshot held when it was taken.
pub fn snapshot_is_immutable(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=snapshot_is_immutable", b.name());
    let mut rng = SplitMix64::new(0x1111);
    let mut m = Model::new();
    let keys: Vec<Vec<u8>> = (0..2000).map(|i| numbered_key("imm", "s", i)).collect();
    for k in &keys {
        let v = random_value(&mut rng);
        must(b.put(k, &v), &ctx);
        m.put(k, &v);
    }
    let full = take(&*b, SnapshotKind::Full, &ctx);
    let full_content = read(&*full, &ctx).puts();
    check(
        m.check_full(&full_content),
        &format!("{ctx}: full snapshot at capture"),
    );
    m.start_epoch();

    for k in keys.iter().take(50) {
        let v = random_value(&mut rng);
        must(b.put(k, &v), &ctx);
        m.put(k, &v);
    }
    for k in keys.iter().skip(50).take(10) {
        must(b.delete(k), &ctx);
        m.delete(k);
    }
    let changes = take(&*b, SnapshotKind::Changes, &ctx);
    let changes_content = read(&*changes, &ctx).entries;
    check(
        m.check_changes(&changes_content),
        &format!("{ctx}: changes snapshot at capture"),
    );

    let reread = |when: &str| -> std::result::Result<(), String> {
        let f = model::read_snapshot(&*full)?;
        diff_entries(&full_content, &f.puts())
            .map_err(|e| format!("full snapshot changed {when}: {e}"))?;
        let c = model::read_snapshot(&*changes)?;
        if c.entries != changes_content {
            let (a, b): (Entries, Entries) = (
                changes_content
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                    .collect(),
                c.entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                    .collect(),
            );
            return Err(format!(
                "changes snapshot changed {when}: {}",
                diff_entries(&a, &b)
                    .err()
                    .unwrap_or_else(|| "deletes differ".into())
            ));
        }
        Ok(())
    };

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| -> std::result::Result<usize, String> {
            let mut reads = 0;
            while !(stop.load(Ordering::Acquire) && reads >= 3) {
                reread("while the backend was mutated")?;
                reads += 1;
            }
            Ok(reads)
        });
        let mut rng = SplitMix64::new(0x2222);
        for k in &keys {
            must(b.put(k, &random_value(&mut rng)), &ctx);
        }
        for k in keys.iter().step_by(2) {
            must(b.delete(k), &ctx);
        }
        for chunk in (2000..3000).collect::<Vec<u32>>().chunks(100) {
            let mut batch = WriteBatch::new();
            for i in chunk {
                batch.put(numbered_key("imm", "s", *i), random_value(&mut rng));
            }
            batch.delete(keys[1].clone());
            must(b.write_batch(batch), &ctx);
        }
        must(b.clear(), &ctx);
        let other: Vec<(Vec<u8>, Vec<u8>)> = (5000..5500)
            .map(|i| (numbered_key("imm", "t", i), random_value(&mut rng)))
            .collect();
        restore_from(&*b, other, &ctx);
        for k in keys.iter().take(500) {
            must(b.put(k, &random_value(&mut rng)), &ctx);
        }
        let _ = take(&*b, SnapshotKind::Changes, &ctx);
        let _ = take(&*b, SnapshotKind::Full, &ctx);
        stop.store(true, Ordering::Release);
        match reader.join() {
            Ok(Ok(_reads)) => {}
            Ok(Err(e)) => panic!("{ctx}: {e}"),
            Err(_) => panic!("{ctx}: snapshot reader thread panicked"),
        }
    });
    check(reread("after the mutations"), &ctx);
    drop(b);
    // The backend is gone; a snapshot must stand on its own.
    check(reread("after the backend was dropped"), &ctx);
}

// ---------------------------------------------------------------------------
// Case 3: the visiting contract of snapshots.

/// A visitor's error stops the visit of its partition and is returned as
/// is; visiting a partition index past [`StateSnapshot::partitions`] fails
/// or visits nothing, without a panic; snapshots of an empty backend are
/// empty.
pub fn snapshot_visit_contract(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=snapshot_visit_contract", b.name());
    for kind in [SnapshotKind::Full, SnapshotKind::Changes] {
        let c = read(&*take(&*b, kind, &ctx), &ctx);
        assert_eq!(c.visited, 0, "{ctx}: {kind:?} snapshot of an empty backend");
    }
    let mut rng = SplitMix64::new(3);
    for i in 0..500 {
        must(
            b.put(&numbered_key("visit", "s", i), &random_value(&mut rng)),
            &ctx,
        );
    }
    // Changes first: the full snapshot starts a new epoch.
    for kind in [SnapshotKind::Changes, SnapshotKind::Full] {
        let s = take(&*b, kind, &ctx);
        let content = read(&*s, &ctx);
        assert_eq!(content.visited, 500, "{ctx}: {kind:?} snapshot entries");
        let mut stopped_any = false;
        for p in 0..s.partitions() {
            let mut calls = 0usize;
            let r = s.for_each_in_partition(p, &mut |_, _| {
                calls += 1;
                Err(Error::Internal("testkit visitor stop".into()))
            });
            if calls == 0 {
                assert!(r.is_ok(), "{ctx}: empty partition {p} failed: {r:?}");
                continue;
            }
            stopped_any = true;
            assert_eq!(
                calls, 1,
                "{ctx}: visit of partition {p} went on after the visitor failed"
            );
            match r {
                Err(Error::Internal(msg)) if msg == "testkit visitor stop" => {}
                other => panic!(
                    "{ctx}: partition {p}: the visitor's error must be returned as is, got {other:?}"
                ),
            }
        }
        assert!(stopped_any, "{ctx}: no partition visited any entry");
        let past = s.partitions();
        let mut calls = 0usize;
        let r = catch_unwind(AssertUnwindSafe(|| {
            s.for_each_in_partition(past, &mut |_, _| {
                calls += 1;
                Ok(())
            })
        }));
        match r {
            Err(_) => panic!("{ctx}: for_each_in_partition({past}) of {past} partitions panicked"),
            Ok(Ok(())) => assert_eq!(
                calls, 0,
                "{ctx}: partition index {past} out of range visited entries"
            ),
            Ok(Err(_)) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Case 4: changes snapshots.

/// After a full snapshot: overwrites, deletes, delete-then-put, a delete of
/// a key that never existed, put-then-delete of a new key, new keys and a
/// batch. The changes snapshot must report exactly the changed keys with
/// their current values, deletes as `None`, no untouched key (a key created
/// and deleted within the epoch may be absent or `None`), and base +
/// changes must equal the current state. An epoch without writes reports
/// nothing, and a key changed then changed back is either omitted or
/// reported with its (unchanged) value.
pub fn changes_snapshot_tracks_puts_and_deletes(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!(
        "backend={} case=changes_snapshot_tracks_puts_and_deletes",
        b.name()
    );
    let mut m = Model::new();
    let k = |i: u32| numbered_key("chg", "s", i);
    let v = |tag: &str| plain_value(tag.as_bytes());
    let put = |m: &mut Model, key: &[u8], value: &[u8]| {
        must(b.put(key, value), &ctx);
        m.put(key, value);
    };
    let del = |m: &mut Model, key: &[u8]| {
        must(b.delete(key), &ctx);
        m.delete(key);
    };
    for i in 0..10 {
        put(&mut m, &k(i), &v(&format!("base-{i}")));
    }
    let base = full_entries(&*b, &ctx);
    check(m.check_full(&base), &format!("{ctx}: base"));
    m.start_epoch();

    put(&mut m, &k(0), &v("new-0"));
    put(&mut m, &k(1), &v("new-1a"));
    put(&mut m, &k(1), &v("new-1b"));
    del(&mut m, &k(2));
    del(&mut m, &k(3));
    put(&mut m, &k(3), &v("again-3"));
    del(&mut m, &k(100)); // never existed
    put(&mut m, &k(101), &v("short-lived"));
    del(&mut m, &k(101)); // created and deleted within the epoch
    put(&mut m, &k(102), &v("created"));
    let mut batch = WriteBatch::new();
    batch
        .put(k(4), v("batch-4"))
        .delete(k(5))
        .put(k(103), v("batch-new"))
        .put(k(104), v("batch-tmp"))
        .delete(k(104));
    must(b.write_batch(batch.clone()), &ctx);
    m.apply_batch(&batch);

    let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
    check(m.check_changes(&c.entries), &ctx);
    // The rule above, spelled out for the keys of this scenario.
    let expect: [(u32, Option<&str>); 8] = [
        (0, Some("new-0")),
        (1, Some("new-1b")),
        (2, None),
        (3, Some("again-3")),
        (4, Some("batch-4")),
        (5, None),
        (102, Some("created")),
        (103, Some("batch-new")),
    ];
    for (i, want) in expect {
        assert_eq!(
            c.entries.get(&k(i)),
            Some(&want.map(v)),
            "{ctx}: changes snapshot entry of key {i}"
        );
    }
    for i in 6..10 {
        assert!(
            !c.entries.contains_key(&k(i)),
            "{ctx}: untouched key {i} reported as changed"
        );
    }
    for i in [100, 101, 104] {
        assert!(
            matches!(c.entries.get(&k(i)), None | Some(None)),
            "{ctx}: key {i} (absent before and after) reported as {:?}",
            c.entries.get(&k(i))
        );
    }
    let mut folded = base.clone();
    apply_changes(&mut folded, &c.entries);
    check(
        diff_entries(m.entries(), &folded),
        &format!("{ctx}: base + changes"),
    );
    m.start_epoch();

    let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
    assert!(
        c.entries.is_empty(),
        "{ctx}: an epoch without writes reported {} changes",
        c.entries.len()
    );
    m.start_epoch();

    // Changed and changed back within one epoch.
    put(&mut m, &k(6), &v("temporary"));
    put(&mut m, &k(6), &v("base-6"));
    let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
    check(m.check_changes(&c.entries), &format!("{ctx}: changed back"));
    m.start_epoch();

    // A full snapshot also starts a new epoch.
    put(&mut m, &k(7), &v("before-full"));
    let _ = take(&*b, SnapshotKind::Full, &ctx);
    m.start_epoch();
    put(&mut m, &k(8), &v("after-full"));
    let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
    check(
        m.check_changes(&c.entries),
        &format!("{ctx}: changes after a full snapshot"),
    );
    assert_eq!(
        c.entries.len(),
        1,
        "{ctx}: only the change after the full snapshot must be reported"
    );
}

/// Over several epochs of random writes, a base full snapshot plus every
/// changes snapshot, applied in order, equals a final full snapshot; the
/// same chain replayed into a fresh backend (restore of the base, then one
/// write batch per changes snapshot) yields the same full snapshot. A full
/// snapshot in the middle of the chain must equal the fold so far.
pub fn incrementals_fold_to_full(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=incrementals_fold_to_full", b.name());
    let space = KeySpace::small();
    for seed in 0..4u64 {
        let ctx = format!("{ctx} seed={seed}");
        must(b.clear(), &ctx);
        let mut rng = SplitMix64::new(0xF01D + seed);
        let mut m = Model::new();
        for _ in 0..100 {
            let (k, v) = (space.key(&mut rng), random_value(&mut rng));
            must(b.put(&k, &v), &ctx);
            m.put(&k, &v);
        }
        let base = full_entries(&*b, &ctx);
        check(m.check_full(&base), &format!("{ctx}: base"));
        m.start_epoch();
        let mut folded = base.clone();
        let mut chain: Vec<Changes> = Vec::new();
        for epoch in 0..8 {
            let ctx = format!("{ctx} epoch={epoch}");
            for _ in 0..40 {
                let k = space.key(&mut rng);
                match rng.below(10) {
                    0..=4 => {
                        let v = random_value(&mut rng);
                        must(b.put(&k, &v), &ctx);
                        m.put(&k, &v);
                    }
                    5..=6 => {
                        must(b.delete(&k), &ctx);
                        m.delete(&k);
                    }
                    7 => {
                        // Put then delete a key within the epoch.
                        must(b.put(&k, &random_value(&mut rng)), &ctx);
                        must(b.delete(&k), &ctx);
                        m.delete(&k);
                    }
                    _ => {
                        let mut batch = WriteBatch::new();
                        for _ in 0..4 {
                            let k = space.key(&mut rng);
                            if rng.chance(2, 3) {
                                batch.put(k, random_value(&mut rng));
                            } else {
                                batch.delete(k);
                            }
                        }
                        must(b.write_batch(batch.clone()), &ctx);
                        m.apply_batch(&batch);
                    }
                }
            }
            let c = read(&*take(&*b, SnapshotKind::Changes, &ctx), &ctx);
            check(m.check_changes(&c.entries), &ctx);
            m.start_epoch();
            apply_changes(&mut folded, &c.entries);
            chain.push(c.entries);
            check(diff_entries(m.entries(), &folded), &format!("{ctx}: fold"));
            if epoch == 4 {
                let mid = full_entries(&*b, &ctx);
                check(
                    diff_entries(&folded, &mid),
                    &format!("{ctx}: full snapshot in the middle of the chain"),
                );
                m.start_epoch();
            }
        }
        let last = full_entries(&*b, &ctx);
        check(
            diff_entries(&folded, &last),
            &format!("{ctx}: base + incrementals vs final full snapshot"),
        );

        let fresh = factory();
        restore_from(&*fresh, base.into_iter().collect(), &ctx);
        for changes in &chain {
            let mut batch = WriteBatch::new();
            for (k, v) in changes {
                match v {
                    Some(v) => batch.put(k.clone(), v.clone()),
                    None => batch.delete(k.clone()),
                };
            }
            must(fresh.write_batch(batch), &ctx);
        }
        check(
            diff_entries(&last, &full_entries(&*fresh, &ctx)),
            &format!("{ctx}: chain replayed into a fresh backend"),
        );
    }
}

// ---------------------------------------------------------------------------
// Case 5: cost of changes snapshots.

/// With 20 000 keys and 10 changes since the last snapshot, the changes
/// snapshot's `approximate_entries` and the entries it visits stay within
/// 10 + 6, and an epoch without changes visits nothing: incremental
/// checkpoints cost O(changes), not O(state).
pub fn changes_cost_is_proportional(factory: BackendFactory<'_>) {
    const TOTAL: u32 = 20_000;
    const SLACK: usize = 6;
    let b = factory();
    let ctx = format!("backend={} case=changes_cost_is_proportional", b.name());
    let mut rng = SplitMix64::new(0xC057);
    let mut m = Model::new();
    let keys: Vec<Vec<u8>> = (0..TOTAL).map(|i| numbered_key("cost", "s", i)).collect();
    for chunk in keys.chunks(1000) {
        let mut batch = WriteBatch::new();
        for k in chunk {
            let v = plain_value(&rng.bytes(8));
            batch.put(k.clone(), v);
        }
        m.apply_batch(&batch);
        must(b.write_batch(batch), &ctx);
    }
    let base = full_entries(&*b, &ctx);
    assert_eq!(base.len(), TOTAL as usize, "{ctx}: full snapshot entries");
    m.start_epoch();

    for round in 0..3u32 {
        let ctx = format!("{ctx} round={round}");
        let off = round * 3000;
        let mut changed = 0usize;
        for i in 0..6 {
            let k = &keys[(off + i * 401) as usize];
            let v = plain_value(&rng.bytes(8));
            must(b.put(k, &v), &ctx);
            m.put(k, &v);
            changed += 1;
        }
        let mut batch = WriteBatch::new();
        batch
            .delete(keys[(off + 2999) as usize].clone())
            .delete(keys[(off + 2998) as usize].clone())
            .put(numbered_key("cost", "new", off), plain_value(b"n1"))
            .put(numbered_key("cost", "new", off + 1), plain_value(b"n2"));
        changed += 4;
        m.apply_batch(&batch);
        must(b.write_batch(batch), &ctx);

        let s = take(&*b, SnapshotKind::Changes, &ctx);
        assert!(
            s.approximate_entries() <= changed + SLACK,
            "{ctx}: approximate_entries={} for {changed} changes among {TOTAL} keys: changes snapshots must cost O(changes)",
            s.approximate_entries()
        );
        let c = read(&*s, &ctx);
        assert!(
            c.visited <= changed + SLACK,
            "{ctx}: visited {} entries for {changed} changes among {TOTAL} keys",
            c.visited
        );
        check(m.check_changes(&c.entries), &ctx);
        m.start_epoch();

        let s = take(&*b, SnapshotKind::Changes, &ctx);
        assert!(
            s.approximate_entries() <= SLACK,
            "{ctx}: approximate_entries={} for an epoch without changes",
            s.approximate_entries()
        );
        let c = read(&*s, &ctx);
        assert_eq!(
            c.visited, 0,
            "{ctx}: an epoch without changes visited entries"
        );
        m.start_epoch();
    }
}

// ---------------------------------------------------------------------------
// Case 6: TTL through the typed handles.

/// The raw entries of one state of one operator.
fn raw_state(b: &dyn StateBackend, operator: &str, state: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    scan_all(b, "raw_state")
        .into_iter()
        .filter(|(k, _)| {
            StateKey::decode(k).is_ok_and(|sk| sk.operator == operator && sk.state == state)
        })
        .collect()
}

/// Mean of `u64` inputs; the accumulator is `(sum, count)`.
#[derive(Debug, Clone, Copy, Default)]
struct Average;

impl AggregateFunction<u64> for Average {
    type Acc = (u64, u64);
    type Out = f64;

    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }

    fn add(&self, input: &u64, acc: (u64, u64)) -> (u64, u64) {
        (acc.0 + input, acc.1 + 1)
    }

    fn result(&self, acc: &(u64, u64)) -> f64 {
        if acc.1 == 0 {
            0.0
        } else {
            acc.0 as f64 / acc.1 as f64
        }
    }
}

fn assert_close(got: Option<f64>, want: Option<f64>, ctx: &str) {
    match (got, want) {
        (Some(g), Some(w)) if (g - w).abs() < 1e-9 => {}
        (None, None) => {}
        _ => panic!("{ctx}: got {got:?}, expected {want:?}"),
    }
}

/// Value, list, map, reducing and aggregating state with a TTL, driven by a
/// [`ManualClock`]: a value is returned until `ttl` after its last write and
/// never at or after that; writes refresh the expiry; reads refresh it only
/// with [`TtlConfig::refresh_on_read`]; map entries expire independently;
/// an expired entry read through a handle is gone from the backend; a write
/// after expiry starts from nothing (no resurrection).
pub fn ttl_via_handles(factory: BackendFactory<'_>) {
    const OP: &str = "ttl-op";
    let backend = factory();
    let b = &*backend;
    let ctx = format!("backend={} case=ttl_via_handles", b.name());
    let ctx = ctx.as_str();
    let clock = ManualClock::new(1_700_000_000_000);
    let kctx = must(
        KeyedStateContext::with_clock(backend.clone(), OP, 128, Arc::new(clock.clone())),
        ctx,
    );
    let ttl = TtlConfig::new(Duration::from_millis(1000));
    let ms = Duration::from_millis;

    // Value state: expiry is stored in the envelope; reads do not refresh.
    let v = must(
        kctx.value_state::<&str, u64>(&ValueStateDescriptor::new("value").with_ttl(ttl)),
        ctx,
    );
    must(v.update(&"a", &1), ctx);
    let written_at = clock.now_ms();
    let raw = raw_state(b, OP, "value");
    assert_eq!(raw.len(), 1, "{ctx}: value state entries");
    let env = must(Envelope::decode(&raw[0].1), ctx);
    assert_eq!(
        env.expires_at_ms,
        Some(written_at + 1000),
        "{ctx}: stored expiry"
    );
    clock.advance(ms(999));
    assert_eq!(
        must(v.get(&"a"), ctx),
        Some(1),
        "{ctx}: value 1 ms before expiry"
    );
    clock.advance(ms(1));
    assert_eq!(must(v.get(&"a"), ctx), None, "{ctx}: value at its expiry");
    assert!(
        raw_state(b, OP, "value").is_empty(),
        "{ctx}: an expired value read through a handle must be deleted from the backend"
    );
    assert_eq!(must(v.get(&"a"), ctx), None, "{ctx}: value after expiry");

    // Writes refresh the expiry.
    must(v.update(&"b", &1), ctx);
    clock.advance(ms(800));
    must(v.update(&"b", &2), ctx);
    clock.advance(ms(800));
    assert_eq!(
        must(v.get(&"b"), ctx),
        Some(2),
        "{ctx}: value after a refreshing write"
    );
    clock.advance(ms(200));
    assert_eq!(
        must(v.get(&"b"), ctx),
        None,
        "{ctx}: value ttl after the last write"
    );

    // Reads refresh the expiry only when asked to.
    let r = must(
        kctx.value_state::<&str, u64>(
            &ValueStateDescriptor::new("refreshing").with_ttl(ttl.refresh_on_read()),
        ),
        ctx,
    );
    must(r.update(&"a", &7), ctx);
    for i in 0..5 {
        clock.advance(ms(800));
        assert_eq!(must(r.get(&"a"), ctx), Some(7), "{ctx}: refreshed read {i}");
    }
    clock.advance(ms(1000));
    assert_eq!(
        must(r.get(&"a"), ctx),
        None,
        "{ctx}: ttl after the last read"
    );
    must(r.update(&"a", &8), ctx);
    clock.advance(ms(1000));
    assert_eq!(
        must(r.get(&"a"), ctx),
        None,
        "{ctx}: unread refreshing value"
    );

    // List state: the list is one entry; appending rewrites and refreshes it.
    let l = must(
        kctx.list_state::<&str, u32>(&ListStateDescriptor::new("list").with_ttl(ttl)),
        ctx,
    );
    must(l.add(&"k", &1), ctx);
    clock.advance(ms(500));
    must(l.add(&"k", &2), ctx);
    clock.advance(ms(900));
    assert_eq!(
        must(l.get(&"k"), ctx),
        vec![1, 2],
        "{ctx}: list before expiry"
    );
    clock.advance(ms(100));
    assert!(must(l.get(&"k"), ctx).is_empty(), "{ctx}: list at expiry");
    must(l.add(&"k", &3), ctx);
    assert_eq!(
        must(l.get(&"k"), ctx),
        vec![3],
        "{ctx}: list restarted after expiry"
    );

    // Map state: entries expire independently.
    let m = must(
        kctx.map_state::<&str, u32, String>(&MapStateDescriptor::new("map").with_ttl(ttl)),
        ctx,
    );
    must(m.put(&"k", &1, &"x".to_string()), ctx);
    clock.advance(ms(500));
    must(m.put(&"k", &2, &"y".to_string()), ctx);
    clock.advance(ms(600));
    assert_eq!(
        must(m.entries(&"k"), ctx),
        vec![(2, "y".to_string())],
        "{ctx}: map entries after the first expired"
    );
    assert!(
        !must(m.contains(&"k", &1), ctx),
        "{ctx}: expired map entry contained"
    );
    assert_eq!(
        must(m.get(&"k", &1), ctx),
        None,
        "{ctx}: expired map entry returned"
    );
    assert_eq!(
        must(m.get(&"k", &2), ctx),
        Some("y".to_string()),
        "{ctx}: live map entry"
    );
    assert_eq!(
        raw_state(b, OP, "map").len(),
        1,
        "{ctx}: expired map entry must be deleted once read"
    );
    clock.advance(ms(400));
    assert!(
        must(m.entries(&"k"), ctx).is_empty(),
        "{ctx}: map entries all expired"
    );
    assert!(must(m.is_empty(&"k"), ctx), "{ctx}: map empty after expiry");
    assert!(
        raw_state(b, OP, "map").is_empty(),
        "{ctx}: map entries reclaimed"
    );

    // Reducing state: an add after expiry starts over.
    let red = must(
        kctx.reducing_state::<&str, u64>(
            &ReducingStateDescriptor::new("sum", |a: u64, b: u64| a + b).with_ttl(ttl),
        ),
        ctx,
    );
    must(red.add(&"k", 5), ctx);
    must(red.add(&"k", 6), ctx);
    assert_eq!(must(red.get(&"k"), ctx), Some(11), "{ctx}: reduced value");
    clock.advance(ms(1000));
    assert_eq!(
        must(red.get(&"k"), ctx),
        None,
        "{ctx}: reduced value at expiry"
    );
    must(red.add(&"k", 1), ctx);
    assert_eq!(
        must(red.get(&"k"), ctx),
        Some(1),
        "{ctx}: reduced value restarted"
    );

    // Aggregating state: same.
    let agg = must(
        kctx.aggregating_state::<&str, u64, Average>(
            &AggregatingStateDescriptor::new("avg", Average).with_ttl(ttl),
        ),
        ctx,
    );
    must(agg.add(&"k", &2), ctx);
    must(agg.add(&"k", &4), ctx);
    assert_close(must(agg.get(&"k"), ctx), Some(3.0), ctx);
    clock.advance(ms(1000));
    assert_close(must(agg.get(&"k"), ctx), None, ctx);
    must(agg.add(&"k", &10), ctx);
    assert_close(must(agg.get(&"k"), ctx), Some(10.0), ctx);

    // Namespaces expire independently.
    let w1 = must(v.in_namespace(&1u32), ctx);
    let w2 = must(v.in_namespace(&2u32), ctx);
    must(w1.update(&"n", &1), ctx);
    clock.advance(ms(600));
    must(w2.update(&"n", &2), ctx);
    clock.advance(ms(400));
    assert_eq!(must(w1.get(&"n"), ctx), None, "{ctx}: namespace 1 expired");
    assert_eq!(must(w2.get(&"n"), ctx), Some(2), "{ctx}: namespace 2 alive");
}

// ---------------------------------------------------------------------------
// Case 7: typed handles without TTL.

/// Value, list, map, reducing and aggregating state behave as specified;
/// states, operators, keys and namespaces are isolated from each other.
pub fn typed_state_handles(factory: BackendFactory<'_>) {
    let backend = factory();
    let b = &*backend;
    let ctx = format!("backend={} case=typed_state_handles", b.name());
    let ctx = ctx.as_str();
    let op = must(KeyedStateContext::new(backend.clone(), "typed", 128), ctx);
    let other_op = must(KeyedStateContext::new(backend.clone(), "typed-2", 128), ctx);

    // Value state.
    let v = must(
        op.value_state::<&str, String>(&ValueStateDescriptor::new("v")),
        ctx,
    );
    let v_other_state = must(
        op.value_state::<&str, String>(&ValueStateDescriptor::new("v2")),
        ctx,
    );
    let v_other_op = must(
        other_op.value_state::<&str, String>(&ValueStateDescriptor::new("v")),
        ctx,
    );
    assert_eq!(must(v.get(&"a"), ctx), None, "{ctx}: unset value");
    must(v.update(&"a", &"one".to_string()), ctx);
    must(v.update(&"b", &"bee".to_string()), ctx);
    must(v.update(&"a", &"two".to_string()), ctx);
    assert_eq!(
        must(v.get(&"a"), ctx).as_deref(),
        Some("two"),
        "{ctx}: overwritten value"
    );
    assert_eq!(
        must(v.get(&"b"), ctx).as_deref(),
        Some("bee"),
        "{ctx}: other key"
    );
    assert_eq!(
        must(v_other_state.get(&"a"), ctx),
        None,
        "{ctx}: state isolation"
    );
    assert_eq!(
        must(v_other_op.get(&"a"), ctx),
        None,
        "{ctx}: operator isolation"
    );
    must(v_other_op.update(&"a", &"elsewhere".to_string()), ctx);
    assert_eq!(
        must(v.get(&"a"), ctx).as_deref(),
        Some("two"),
        "{ctx}: operator isolation"
    );
    must(v.clear(&"a"), ctx);
    assert_eq!(must(v.get(&"a"), ctx), None, "{ctx}: cleared value");
    assert_eq!(
        must(v.get(&"b"), ctx).as_deref(),
        Some("bee"),
        "{ctx}: clear of another key"
    );
    assert_eq!(
        must(v_other_op.get(&"a"), ctx).as_deref(),
        Some("elsewhere"),
        "{ctx}: clear in another operator"
    );

    // List state.
    let l = must(
        op.list_state::<&str, u32>(&ListStateDescriptor::new("l")),
        ctx,
    );
    assert!(must(l.get(&"k"), ctx).is_empty(), "{ctx}: unset list");
    must(l.add(&"k", &1), ctx);
    must(l.add(&"k", &2), ctx);
    must(l.add_all(&"k", &[3, 4, 300_000]), ctx);
    assert_eq!(
        must(l.get(&"k"), ctx),
        vec![1, 2, 3, 4, 300_000],
        "{ctx}: list after adds"
    );
    must(l.add(&"j", &9), ctx);
    must(l.update(&"k", &[7, 8]), ctx);
    assert_eq!(
        must(l.get(&"k"), ctx),
        vec![7, 8],
        "{ctx}: list after update"
    );
    assert_eq!(must(l.get(&"j"), ctx), vec![9], "{ctx}: other list");
    must(l.update(&"k", &[]), ctx);
    assert!(
        must(l.get(&"k"), ctx).is_empty(),
        "{ctx}: list updated to empty"
    );
    must(l.add(&"k", &5), ctx);
    must(l.clear(&"k"), ctx);
    assert!(must(l.get(&"k"), ctx).is_empty(), "{ctx}: cleared list");
    assert_eq!(
        must(l.get(&"j"), ctx),
        vec![9],
        "{ctx}: clear of another list"
    );

    // Map state.
    let m = must(
        op.map_state::<&str, u32, String>(&MapStateDescriptor::new("m")),
        ctx,
    );
    assert!(must(m.is_empty(&"k"), ctx), "{ctx}: unset map");
    for (uk, uv) in [(3u32, "c"), (1, "a"), (2, "b"), (1000, "big")] {
        must(m.put(&"k", &uk, &uv.to_string()), ctx);
    }
    must(m.put(&"kk", &1, &"other key".to_string()), ctx);
    must(m.put(&"k", &2, &"B".to_string()), ctx);
    assert_eq!(
        must(m.get(&"k", &2), ctx).as_deref(),
        Some("B"),
        "{ctx}: overwritten map entry"
    );
    assert_eq!(must(m.get(&"k", &9), ctx), None, "{ctx}: missing map entry");
    assert!(must(m.contains(&"k", &1), ctx), "{ctx}: contains present");
    assert!(!must(m.contains(&"k", &9), ctx), "{ctx}: contains absent");
    let mut entries = must(m.entries(&"k"), ctx);
    entries.sort();
    assert_eq!(
        entries,
        vec![
            (1, "a".to_string()),
            (2, "B".to_string()),
            (3, "c".to_string()),
            (1000, "big".to_string())
        ],
        "{ctx}: map entries"
    );
    must(m.remove(&"k", &3), ctx);
    must(m.remove(&"k", &42), ctx);
    assert!(!must(m.contains(&"k", &3), ctx), "{ctx}: removed entry");
    assert_eq!(
        must(m.entries(&"k"), ctx).len(),
        3,
        "{ctx}: entries after remove"
    );
    // Namespaces isolate map entries.
    let m1 = must(m.in_namespace("window-1"), ctx);
    let m2 = must(m.in_namespace("window-2"), ctx);
    must(m1.put(&"k", &1, &"w1".to_string()), ctx);
    must(m2.put(&"k", &1, &"w2".to_string()), ctx);
    must(m2.put(&"k", &5, &"w2-5".to_string()), ctx);
    assert_eq!(
        must(m1.get(&"k", &1), ctx).as_deref(),
        Some("w1"),
        "{ctx}: namespace 1"
    );
    assert_eq!(
        must(m2.get(&"k", &1), ctx).as_deref(),
        Some("w2"),
        "{ctx}: namespace 2"
    );
    assert_eq!(
        must(m.get(&"k", &1), ctx).as_deref(),
        Some("a"),
        "{ctx}: default namespace"
    );
    assert_eq!(
        must(m1.entries(&"k"), ctx).len(),
        1,
        "{ctx}: namespace 1 entries"
    );
    must(m2.clear(&"k"), ctx);
    assert!(must(m2.is_empty(&"k"), ctx), "{ctx}: cleared namespace");
    assert_eq!(
        must(m1.entries(&"k"), ctx).len(),
        1,
        "{ctx}: clear of another namespace"
    );
    assert_eq!(
        must(m.entries(&"k"), ctx).len(),
        3,
        "{ctx}: clear of another namespace"
    );
    must(m.clear(&"k"), ctx);
    assert!(must(m.is_empty(&"k"), ctx), "{ctx}: cleared map");
    assert_eq!(
        must(m.entries(&"kk"), ctx),
        vec![(1, "other key".to_string())],
        "{ctx}: clear of another key's map"
    );

    // Value state in namespaces.
    let vw1 = must(v.in_namespace(&(1u64, 2u64)), ctx);
    let vw2 = must(v.in_namespace(&(1u64, 3u64)), ctx);
    must(vw1.update(&"b", &"in window".to_string()), ctx);
    assert_eq!(
        must(vw1.get(&"b"), ctx).as_deref(),
        Some("in window"),
        "{ctx}: namespaced value"
    );
    assert_eq!(must(vw2.get(&"b"), ctx), None, "{ctx}: other namespace");
    assert_eq!(
        must(v.get(&"b"), ctx).as_deref(),
        Some("bee"),
        "{ctx}: default namespace"
    );
    must(vw1.clear(&"b"), ctx);
    assert_eq!(
        must(v.get(&"b"), ctx).as_deref(),
        Some("bee"),
        "{ctx}: namespaced clear"
    );

    // Reducing state.
    let sum = must(
        op.reducing_state::<&str, u64>(&ReducingStateDescriptor::new("sum", |a: u64, b: u64| {
            a + b
        })),
        ctx,
    );
    let max = must(
        op.reducing_state::<&str, u64>(&ReducingStateDescriptor::new("max", u64::max)),
        ctx,
    );
    assert_eq!(
        must(sum.get(&"k"), ctx),
        None,
        "{ctx}: unset reducing state"
    );
    for x in [1, 2, 3, 10] {
        must(sum.add(&"k", x), ctx);
        must(max.add(&"k", x), ctx);
    }
    must(max.add(&"k", 4), ctx);
    assert_eq!(must(sum.get(&"k"), ctx), Some(16), "{ctx}: sum");
    assert_eq!(must(max.get(&"k"), ctx), Some(10), "{ctx}: max");
    must(sum.clear(&"k"), ctx);
    assert_eq!(must(sum.get(&"k"), ctx), None, "{ctx}: cleared sum");
    must(sum.add(&"k", 5), ctx);
    assert_eq!(must(sum.get(&"k"), ctx), Some(5), "{ctx}: sum after clear");

    // Aggregating state.
    let avg = must(
        op.aggregating_state::<&str, u64, Average>(&AggregatingStateDescriptor::new(
            "avg", Average,
        )),
        ctx,
    );
    assert_close(must(avg.get(&"k"), ctx), None, ctx);
    for x in [2, 4, 9] {
        must(avg.add(&"k", &x), ctx);
    }
    assert_close(must(avg.get(&"k"), ctx), Some(5.0), ctx);
    must(avg.add(&"j", &1), ctx);
    assert_close(must(avg.get(&"j"), ctx), Some(1.0), ctx);
    let avg_w = must(avg.in_namespace("w"), ctx);
    must(avg_w.add(&"k", &100), ctx);
    assert_close(must(avg_w.get(&"k"), ctx), Some(100.0), ctx);
    assert_close(must(avg.get(&"k"), ctx), Some(5.0), ctx);
    must(avg.clear(&"k"), ctx);
    assert_close(must(avg.get(&"k"), ctx), None, ctx);
    assert_close(must(avg_w.get(&"k"), ctx), Some(100.0), ctx);

    // The typed writes are ordinary backend entries, all under the
    // operators' key groups.
    for (k, _) in scan_all(b, ctx) {
        let sk = StateKey::decode(&k)
            .unwrap_or_else(|e| panic!("{ctx}: stored key does not decode: {e}"));
        assert!(
            sk.key_group.0 < 128,
            "{ctx}: key group out of range in {}",
            describe_key(&k)
        );
    }
}

// ---------------------------------------------------------------------------
// Case 8: concurrency.

const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 4;

fn writer_key(w: usize, j: usize) -> Vec<u8> {
    encode_key(
        ((w * KEYS_PER_WRITER + j) * 31) as u16,
        "concurrent",
        "counter",
        &[w as u8],
        &[],
        &[j as u8],
    )
}

fn decode_counter(v: &[u8]) -> std::result::Result<u64, String> {
    let env = Envelope::decode(v).map_err(|e| format!("stored value is not an envelope: {e}"))?;
    let bytes: [u8; 8] = env
        .payload
        .try_into()
        .map_err(|_| format!("counter payload has {} bytes", env.payload.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Each writer's counter in `entries`: `None` when none of its keys is
/// present; an error when a batch is torn (some keys missing, or different
/// counters).
fn writer_counters(entries: &Entries) -> std::result::Result<[Option<u64>; WRITERS], String> {
    let mut out = [None; WRITERS];
    for (w, slot) in out.iter_mut().enumerate() {
        let vals: Vec<Option<u64>> = (0..KEYS_PER_WRITER)
            .map(|j| {
                entries
                    .get(&writer_key(w, j))
                    .map(|v| decode_counter(v))
                    .transpose()
            })
            .collect::<std::result::Result<_, _>>()?;
        if vals.iter().all(Option::is_none) {
            continue;
        }
        let first = vals[0];
        if vals.iter().any(|v| *v != first) {
            return Err(format!(
                "torn batch of writer {w}: counters per key {vals:?}"
            ));
        }
        *slot = first;
    }
    Ok(out)
}

/// Four writer threads each own four keys and write them in one batch per
/// iteration, all set to the iteration number, while the main thread takes
/// full and changes snapshots. Every snapshot (and every fold of a full
/// snapshot with the changes snapshots after it) must show each writer's
/// keys all at the same counter (batches are atomic with respect to
/// snapshots), and each writer's counter must never go backwards from one
/// snapshot to the next. The final state holds each writer's last counter.
pub fn concurrent_writers_during_snapshots(factory: BackendFactory<'_>) {
    const MIN_SNAPSHOTS: usize = 150;
    const MIN_ITERATIONS: u64 = 200;
    const MAX_ITERATIONS: u64 = 2_000_000;
    const DEADLINE: Duration = Duration::from_secs(30);
    let backend = factory();
    let b = &*backend;
    let ctx = format!(
        "backend={} case=concurrent_writers_during_snapshots",
        b.name()
    );
    let ctx = ctx.as_str();
    // Bystander entries that never change.
    let mut rng = SplitMix64::new(7);
    for i in 0..1000 {
        must(
            b.put(&numbered_key("bystander", "s", i), &random_value(&mut rng)),
            ctx,
        );
    }
    let progress: [AtomicU64; WRITERS] = Default::default();
    let stop = AtomicBool::new(false);

    std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (stop, progress) = (&stop, &progress);
                s.spawn(move || -> std::result::Result<u64, String> {
                    let keys: Vec<Vec<u8>> =
                        (0..KEYS_PER_WRITER).map(|j| writer_key(w, j)).collect();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Acquire) && i < MAX_ITERATIONS {
                        i += 1;
                        let mut batch = WriteBatch::new();
                        for k in &keys {
                            batch.put(k.clone(), plain_value(&i.to_be_bytes()));
                        }
                        b.write_batch(batch)
                            .map_err(|e| format!("writer {w} write_batch failed: {e}"))?;
                        progress[w].store(i, Ordering::Release);
                    }
                    Ok(i)
                })
            })
            .collect();

        let started = Instant::now();
        let observe = || -> std::result::Result<(usize, Entries), String> {
            let mut last = [0u64; WRITERS];
            let mut folded: Option<Entries> = None;
            let mut n = 0usize;
            loop {
                let kind = if n.is_multiple_of(3) {
                    SnapshotKind::Full
                } else {
                    SnapshotKind::Changes
                };
                let snap = b
                    .snapshot(kind)
                    .map_err(|e| format!("snapshot {n} ({kind:?}) failed: {e}"))?;
                let content = model::read_snapshot(&*snap)
                    .map_err(|e| format!("snapshot {n} ({kind:?}): {e}"))?;
                match kind {
                    SnapshotKind::Full => {
                        writer_counters(&content.puts())
                            .map_err(|e| format!("full snapshot {n}: {e}"))?;
                        folded = Some(content.puts());
                    }
                    SnapshotKind::Changes => {
                        // Within one change set a writer's keys are reported
                        // together or not at all, with one counter.
                        for w in 0..WRITERS {
                            let reported: Vec<Option<u64>> = (0..KEYS_PER_WRITER)
                                .map(|j| match content.entries.get(&writer_key(w, j)) {
                                    None => Ok(None),
                                    Some(None) => Err(format!(
                                        "changes snapshot {n} reports a delete of writer {w}'s key {j}, which is never deleted"
                                    )),
                                    Some(Some(v)) => decode_counter(v).map(Some),
                                })
                                .collect::<std::result::Result<_, _>>()?;
                            if reported.iter().any(|r| *r != reported[0]) {
                                return Err(format!(
                                    "changes snapshot {n}: torn batch of writer {w}: {reported:?}"
                                ));
                            }
                        }
                        let f = folded.as_mut().ok_or("changes before any full snapshot")?;
                        apply_changes(f, &content.entries);
                    }
                }
                let f = folded.as_ref().ok_or("no full snapshot yet")?;
                let counters = writer_counters(f)
                    .map_err(|e| format!("snapshot {n} ({kind:?}) folded: {e}"))?;
                for (w, c) in counters.iter().enumerate() {
                    let c = c.unwrap_or(0);
                    if c < last[w] {
                        return Err(format!(
                            "snapshot {n} ({kind:?}): writer {w}'s counter went back from {} to {c}",
                            last[w]
                        ));
                    }
                    last[w] = c;
                }
                n += 1;
                let progressed = progress
                    .iter()
                    .all(|p| p.load(Ordering::Acquire) >= MIN_ITERATIONS);
                if (n >= MIN_SNAPSHOTS && progressed) || started.elapsed() > DEADLINE {
                    return Ok((n, folded.unwrap_or_default()));
                }
            }
        };
        let observed = observe();
        stop.store(true, Ordering::Release);
        let finals: Vec<u64> = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => panic!("{ctx}: {e}"),
                Err(_) => panic!("{ctx}: a writer thread panicked"),
            })
            .collect();
        let (snapshots, mut folded) = observed.unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert!(
            finals.iter().all(|i| *i >= MIN_ITERATIONS) && snapshots >= MIN_SNAPSHOTS,
            "{ctx}: too little concurrency to judge within {DEADLINE:?}: snapshots={snapshots} writer iterations={finals:?}"
        );

        let last_changes = read(&*take(b, SnapshotKind::Changes, ctx), ctx);
        apply_changes(&mut folded, &last_changes.entries);
        let full = full_entries(b, ctx);
        check(diff_entries(&full, &folded), &format!("{ctx}: final fold"));
        let counters = writer_counters(&full).unwrap_or_else(|e| panic!("{ctx}: final: {e}"));
        for w in 0..WRITERS {
            assert_eq!(
                counters[w],
                Some(finals[w]),
                "{ctx}: writer {w}'s final counter"
            );
        }
        assert_eq!(
            full.len(),
            1000 + WRITERS * KEYS_PER_WRITER,
            "{ctx}: final entries"
        );
    });
}

// ---------------------------------------------------------------------------
// Case 9: scans.

/// Prefix scans return exactly the keys with the prefix, sorted, for every
/// semantic prefix (key group, operator, state, key, base) and for edge
/// prefixes (empty, `0xFF…` without successor); range scans include the
/// start and exclude the end, are empty for `start == end` and for
/// `start > end` (which may also be refused as invalid, but must not
/// panic); results follow overwrites and deletes.
pub fn scan_order_and_bounds(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=scan_order_and_bounds", b.name());
    let ctx = ctx.as_str();
    let space = KeySpace::small();
    let mut rng = SplitMix64::new(0x5CA9);
    let mut m = Model::new();
    let mut keys = space.all_keys();
    // Keys at the edges of the byte order and a maximal operator name.
    let long_op = "z".repeat(255);
    keys.push(encode_key(
        0xFFFF,
        &long_op,
        "s",
        &[0xFF; 8],
        &[0xFF],
        &[0xFF, 0xFF],
    ));
    keys.push(encode_key(0, "a", "s", &[], &[], &[0x00]));
    keys.sort();
    keys.dedup();
    // Insert in shuffled order so a backend cannot get sorting for free.
    let mut order = keys.clone();
    rng.shuffle(&mut order);
    for k in &order {
        let v = random_value(&mut rng);
        must(b.put(k, &v), ctx);
        m.put(k, &v);
    }
    let all: Vec<_> = keys
        .iter()
        .map(|k| (k.clone(), m.get(k).map(<[u8]>::to_vec).unwrap_or_default()))
        .collect();
    check(
        diff_scan(&all, &scan_all(&*b, ctx)),
        &format!("{ctx}: full scan"),
    );

    let run = |m: &Model, rng: &mut SplitMix64| {
        for p in [
            Vec::new(),
            vec![0x00],
            vec![0x00, 0x00],
            vec![0xFF],
            vec![0xFF, 0xFF],
            vec![0xFF, 0xFF, 255],
            vec![0xFF; 12],
            vec![0x7F],
        ] {
            check(check_prefix(&*b, m, &p), ctx);
        }
        for k in keys.iter().step_by(7) {
            for cut in 0..=k.len() {
                check(check_prefix(&*b, m, &k[..cut]), ctx);
            }
        }
        for _ in 0..300 {
            let p = space.prefix(rng);
            check(check_prefix(&*b, m, &p), ctx);
        }
        // Exact bounds.
        for (i, k) in keys.iter().enumerate().step_by(5) {
            check(check_range(&*b, m, k, k), ctx);
            let mut next = k.clone();
            next.push(0x00);
            check(check_range(&*b, m, k, &next), ctx);
            let j = (i + 1 + rng.index(keys.len() - i)).min(keys.len() - 1);
            check(check_range(&*b, m, k, &keys[j]), ctx);
            check(check_range(&*b, m, &keys[j], k), ctx);
        }
        check(check_range(&*b, m, &[], &[]), ctx);
        check(check_range(&*b, m, &[], &[0xFF; 16]), ctx);
        check(check_range(&*b, m, &keys[0], &keys[keys.len() - 1]), ctx);
        check(check_range(&*b, m, &[0xFF; 16], &[]), ctx);
        for _ in 0..300 {
            let (s, e) = (space.bound(rng), space.bound(rng));
            check(check_range(&*b, m, &s, &e), ctx);
        }
    };
    run(&m, &mut rng);
    // Scans follow overwrites and deletes.
    for k in keys.iter().step_by(3) {
        must(b.delete(k), ctx);
        m.delete(k);
    }
    for k in keys.iter().skip(1).step_by(4) {
        let v = random_value(&mut rng);
        must(b.put(k, &v), ctx);
        m.put(k, &v);
    }
    run(&m, &mut rng);
    // Explicit expectations, independent of the model.
    must(b.clear(), ctx);
    let k = |kg: u16, key: &[u8]| encode_key(kg, "op", "st", key, &[], &[]);
    for key in [k(1, b"a"), k(1, b"b"), k(1, b"c"), k(2, b"a")] {
        must(b.put(&key, &plain_value(&key)), ctx);
    }
    let got: Vec<Vec<u8>> = must(b.scan_range(&k(1, b"a"), &k(1, b"c")), ctx)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        got,
        vec![k(1, b"a"), k(1, b"b")],
        "{ctx}: start inclusive, end exclusive"
    );
    let got: Vec<Vec<u8>> = must(b.scan_prefix(&1u16.to_be_bytes()), ctx)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        got,
        vec![k(1, b"a"), k(1, b"b"), k(1, b"c")],
        "{ctx}: key group prefix"
    );
}

// ---------------------------------------------------------------------------
// Case 10: restore and clear.

/// A restore replaces everything: keys not in the restored set are gone
/// (from gets, scans, stats and snapshots), restored keys carry their
/// restored values, and the next changes snapshot reports only writes made
/// after the restore. A restore whose source fails returns the error. A
/// clear empties the backend and also starts a new change epoch.
pub fn restore_replaces_everything_and_clear(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!(
        "backend={} case=restore_replaces_everything_and_clear",
        b.name()
    );
    let ctx = ctx.as_str();
    let mut rng = SplitMix64::new(0x7E57);
    let set_a: Entries = (0..300)
        .map(|i| (numbered_key("rst", "a", i), random_value(&mut rng)))
        .collect();
    for (k, v) in &set_a {
        must(b.put(k, v), ctx);
    }
    let snap_a = take(&*b, SnapshotKind::Full, ctx);
    // Overlapping set B: new keys, overwrites of A's keys, deletes of A's.
    for i in 150..450 {
        must(
            b.put(&numbered_key("rst", "a", i), &random_value(&mut rng)),
            ctx,
        );
    }
    for i in 0..50 {
        must(b.delete(&numbered_key("rst", "a", i)), ctx);
    }
    for i in 0..100 {
        must(
            b.put(&numbered_key("rst", "b", i), &random_value(&mut rng)),
            ctx,
        );
    }
    let a_content = read(&*snap_a, ctx).records;
    let a_records: Vec<(Vec<u8>, Vec<u8>)> = a_content
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    restore_from(&*b, a_records, ctx);
    check_content(&*b, &set_a, &format!("{ctx}: after restore"));
    for i in [300, 449] {
        assert_eq!(
            must(b.get(&numbered_key("rst", "a", i)), ctx),
            None,
            "{ctx}: key {i} not in the restored set"
        );
    }
    assert!(
        must(b.scan_prefix(&numbered_key("rst", "b", 0)[..2]), ctx)
            .iter()
            .all(|(k, _)| set_a.contains_key(k)),
        "{ctx}: scan returned keys that are not in the restored set"
    );
    check(
        diff_entries(&set_a, &full_entries(&*b, ctx)),
        &format!("{ctx}: full snapshot after restore"),
    );

    // The epoch restarts at the restore.
    let mut m = Model::new();
    m.reset_to(set_a.clone());
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    assert!(
        c.entries.is_empty(),
        "{ctx}: changes snapshot right after a restore reported {} entries (a restore starts a new epoch)",
        c.entries.len()
    );
    m.start_epoch();
    restore_from(&*b, set_a.clone().into_iter().collect(), ctx);
    let k0 = numbered_key("rst", "a", 7);
    let k_new = numbered_key("rst", "c", 1);
    let v0 = plain_value(b"after restore");
    must(b.put(&k0, &v0), ctx);
    must(b.put(&k_new, &v0), ctx);
    must(b.delete(&numbered_key("rst", "a", 8)), ctx);
    m.put(&k0, &v0);
    m.put(&k_new, &v0);
    m.delete(&numbered_key("rst", "a", 8));
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    check(
        m.check_changes(&c.entries),
        &format!("{ctx}: changes after restore"),
    );
    assert_eq!(
        c.entries.len(),
        3,
        "{ctx}: only the three writes after the restore"
    );
    m.start_epoch();

    // A failing source makes restore fail.
    let mut failing = set_a
        .clone()
        .into_iter()
        .take(10)
        .map(Ok)
        .chain(std::iter::once(Err(Error::corrupt(
            "testkit restore source",
            "injected failure",
        ))))
        .chain(set_a.clone().into_iter().skip(10).map(Ok));
    let r = b.restore(&mut failing);
    assert!(
        r.is_err(),
        "{ctx}: restore must return the error of its source, not succeed"
    );

    // Clear empties everything and starts a new epoch.
    must(b.clear(), ctx);
    check_content(&*b, &Entries::new(), &format!("{ctx}: after clear"));
    assert!(
        full_entries(&*b, ctx).is_empty(),
        "{ctx}: full snapshot after clear"
    );
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    assert!(
        c.entries.is_empty(),
        "{ctx}: changes snapshot after clear and full"
    );
    must(b.put(&k0, &v0), ctx);
    must(b.clear(), ctx);
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    assert!(
        c.entries.is_empty(),
        "{ctx}: changes snapshot right after a clear reported {} entries (a clear starts a new epoch)",
        c.entries.len()
    );
    must(b.put(&k_new, &v0), ctx);
    let c = read(&*take(&*b, SnapshotKind::Changes, ctx), ctx);
    assert_eq!(
        c.entries,
        Changes::from([(k_new.clone(), Some(v0.clone()))]),
        "{ctx}: changes after clear"
    );

    // Restoring nothing empties the backend; restoring works after a clear.
    restore_from(&*b, Vec::new(), ctx);
    check_content(&*b, &Entries::new(), &format!("{ctx}: after empty restore"));
    restore_from(&*b, set_a.clone().into_iter().collect(), ctx);
    check_content(&*b, &set_a, &format!("{ctx}: restore after clear"));
}

// ---------------------------------------------------------------------------
// Case 11: stats.

/// `stats().entries` equals the number of live keys after puts,
/// overwrites, deletes (including of missing keys), batches, clears,
/// restores and snapshots; `stats().bytes` is positive whenever entries
/// are held.
pub fn stats(factory: BackendFactory<'_>) {
    let b = factory();
    let ctx = format!("backend={} case=stats", b.name());
    let ctx = ctx.as_str();
    let expect = |n: u64, when: &str| {
        let s = b.stats();
        assert_eq!(s.entries, n, "{ctx}: stats().entries {when}");
        if n > 0 {
            assert!(
                s.bytes > 0,
                "{ctx}: stats().bytes is 0 with {n} entries {when}"
            );
        }
    };
    expect(0, "of a fresh backend");
    let k = |i: u32| numbered_key("stats", "s", i);
    let mut rng = SplitMix64::new(5);
    for i in 0..100 {
        must(b.put(&k(i), &random_value(&mut rng)), ctx);
    }
    expect(100, "after 100 puts");
    for i in 0..30 {
        must(b.put(&k(i), &random_value(&mut rng)), ctx);
    }
    expect(100, "after overwrites");
    for i in 0..20 {
        must(b.delete(&k(i)), ctx);
    }
    expect(80, "after 20 deletes");
    for i in 1000..1010 {
        must(b.delete(&k(i)), ctx);
    }
    expect(80, "after deletes of missing keys");
    let mut batch = WriteBatch::new();
    for i in 200..210 {
        batch.put(k(i), random_value(&mut rng));
    }
    for i in 20..25 {
        batch.delete(k(i));
    }
    batch.put(k(300), plain_value(b"x")).delete(k(300));
    batch
        .put(k(301), plain_value(b"x"))
        .put(k(301), plain_value(b"y"));
    must(b.write_batch(batch), ctx);
    expect(86, "after a batch");
    let _ = take(&*b, SnapshotKind::Full, ctx);
    let _ = take(&*b, SnapshotKind::Changes, ctx);
    expect(86, "after snapshots");
    must(b.clear(), ctx);
    expect(0, "after clear");
    restore_from(
        &*b,
        (0..40).map(|i| (k(i), random_value(&mut rng))).collect(),
        ctx,
    );
    expect(40, "after restoring 40 entries");
    must(b.put(&k(40), &random_value(&mut rng)), ctx);
    expect(41, "after a put following a restore");
}
