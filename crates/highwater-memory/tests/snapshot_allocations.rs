//! A snapshot call asks the allocator for nothing of 1 KiB or more.
//!
//! glibc's allocator answers the first request of 1 KiB or more (one its
//! per-thread cache does not serve) after small blocks were freed by
//! merging every one of them (`malloc_consolidate`). After a checkpoint
//! interval that memory is cold: the state suite's snapshot call after 15
//! idle seconds took 6.6–17.8 ms, nearly all of it there
//! (docs/architecture.md), against a 10 ms promise for checkpoint
//! initiation. The backend keeps what a call needs from one call to the
//! next; this binary's global allocator records the largest request each
//! thread makes while it is watched.

// The recording allocator implements `GlobalAlloc`, an unsafe trait; it
// only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use highwater_core::{KeyGroup, SnapshotKind, StateBackend, StateKey, StateSnapshot};
use highwater_memory::{MemoryBackend, MemoryConfig};

/// glibc's smallest request outside its small bins (`MIN_LARGE_SIZE`,
/// 1 KiB of chunk on 64-bit targets, header included): requests from
/// here on merge the freed small blocks first.
const LARGE: usize = 1008;

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are torn
    // down.
    let _ = WATCHED.try_with(|w| {
        if w.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

struct Recording;

// SAFETY: every method forwards to `System` with the caller's arguments;
// recording the size has no effect on the memory handed out.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

/// The largest allocation this thread made inside `f`.
fn largest_in<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    WATCHED.with(|w| w.set(true));
    let r = f();
    WATCHED.with(|w| w.set(false));
    (r, LARGEST.with(Cell::get))
}

fn key(i: u32) -> Vec<u8> {
    StateKey {
        key_group: KeyGroup((i % 128) as u16),
        operator: "op",
        state: "s",
        key: &i.to_be_bytes(),
        namespace: b"",
        user_key: b"",
    }
    .encode()
    .unwrap()
}

fn put_range(b: &MemoryBackend, keys: std::ops::Range<u32>, round: u8) {
    for i in keys {
        b.put(&key(i), &[round; 100]).unwrap();
    }
}

fn snapshot(b: &MemoryBackend, kind: SnapshotKind) -> Arc<dyn StateSnapshot> {
    let (s, largest) = largest_in(|| b.snapshot(kind).unwrap());
    assert!(
        largest < LARGE,
        "a {kind:?} snapshot call asked for {largest} bytes at once"
    );
    s
}

fn entries(s: &dyn StateSnapshot) -> usize {
    let mut n = 0;
    for p in 0..s.partitions() {
        s.for_each_in_partition(p, &mut |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
    }
    n
}

#[test]
fn snapshot_calls_make_no_large_allocation() {
    let b = MemoryBackend::new();
    put_range(&b, 0..20_000, 0);
    // The first call after the load (every key changed), then full and
    // changes snapshots with writes between them, one held across the
    // next call, some read (their slots filled by the reader) and some
    // left to writers.
    let first = snapshot(&b, SnapshotKind::Full);
    assert_eq!(entries(&*first), 20_000);
    drop(first);
    for round in 1..6u8 {
        let held = snapshot(&b, SnapshotKind::Full);
        put_range(&b, 0..2_000, round);
        let changes = snapshot(&b, SnapshotKind::Changes);
        assert_eq!(entries(&*changes), 2_000);
        put_range(
            &b,
            20_000 + u32::from(round) * 10..20_000 + u32::from(round) * 10 + 10,
            round,
        );
        assert_eq!(entries(&*held), 20_000 + usize::from(round - 1) * 10);
        drop(held);
        drop(changes);
    }
    // A third snapshot alive at once makes its own vectors and slots
    // (allowed to allocate) and gives nothing back the spares do not
    // need; the calls after it allocate nothing large again.
    let a = snapshot(&b, SnapshotKind::Full);
    let c = snapshot(&b, SnapshotKind::Full);
    let (d, _) = largest_in(|| b.snapshot(SnapshotKind::Full).unwrap());
    drop((a, c, d));
    drop(snapshot(&b, SnapshotKind::Full));
    drop(snapshot(&b, SnapshotKind::Changes));
}

#[test]
fn the_watch_sees_a_large_allocation() {
    // The check above could not fail if the recording missed requests:
    // with more shards than the locks held inline, the call allocates
    // its vector of guards (2 048 × 16 bytes).
    let b = MemoryBackend::with_config(MemoryConfig {
        shards: 2048,
        ..MemoryConfig::default()
    });
    put_range(&b, 0..1_000, 0);
    let (s, largest) = largest_in(|| b.snapshot(SnapshotKind::Full).unwrap());
    assert!(largest >= 2048 * 16, "largest request {largest} bytes");
    assert_eq!(entries(&*s), 1_000);
}
