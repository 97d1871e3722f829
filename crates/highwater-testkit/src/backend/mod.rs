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
//! | [`native_checkpoints`] | a backend without native checkpoints says so (`None`); one with them takes a consistent full cut whose files restore whole or by key-group range, and a failed restore leaves the target as it was |
//!
//! One module per capability: `random_ops`, `snapshots`, `changes`, `ttl`,
//! `typed`, `concurrency`, `scans`, `restore`, `counts`, `native`.

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

mod changes;
mod concurrency;
mod counts;
mod native;
mod random_ops;
mod restore;
mod scans;
mod snapshots;
mod ttl;
mod typed;

pub use changes::*;
pub use concurrency::*;
pub use counts::*;
pub use native::*;
pub use random_ops::*;
pub use restore::*;
pub use scans::*;
pub use snapshots::*;
pub use ttl::*;
pub use typed::*;

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

/// Restores `entries` (in the given order, in blocks of seven) into `b`.
fn restore_from(b: &dyn StateBackend, entries: Vec<(Vec<u8>, Vec<u8>)>, ctx: &str) {
    let mut it = entries.chunks(7).map(|c| Ok(c.iter().cloned().collect()));
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
