//! The stable-toolchain mutation test (issue 18): for every decoder, a
//! replay of its seed corpus (real files made by the library) and of the
//! inputs kept in `crates/highwater-fuzz/regressions/<target>/` (what
//! fuzzing found), then a fixed-seed run of mutations of those inputs
//! (`HIGHWATER_MUTATIONS` per target, default 20,000; `HIGHWATER_MUTATION_SEED`
//! changes the seed). A panic fails, and so does any single allocation
//! above [`ALLOCATION_CAP`], counted by this binary's global allocator.

// The counting allocator implements `GlobalAlloc`, an unsafe trait; it
// only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use highwater_fuzz::{Target, seeds};
use highwater_testkit::SplitMix64;

/// The largest allocation any decoder may make for one input. The inputs
/// are at most a few tens of KiB, so anything near this is an allocation
/// sized by a length the input claims rather than by bytes it holds.
const ALLOCATION_CAP: usize = 64 << 20;

/// Requests above this are refused outright (the process aborts) rather
/// than risk the machine: far above the cap, so the test already failed.
const REFUSE_ABOVE: usize = 8 << 30;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments;
// the counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Interesting values written over a mutated input (little-endian), the
/// ones length and count fields get wrong.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    u64::MAX / 2,
    u64::MAX,
];

/// One mutation of `input` (another corpus entry for splicing).
fn mutate(rng: &mut SplitMix64, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(3) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.index(len);
                out[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.index(len);
                out[at] = rng.next_u64() as u8;
            }
            2 if len > 0 => {
                let v = *rng.pick(&INTERESTING);
                let width = *rng.pick(&[1usize, 2, 4, 8]);
                let at = rng.index(len);
                let bytes = v.to_le_bytes();
                for (i, b) in bytes.iter().take(width).enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 if len > 0 => {
                out.truncate(rng.index(len));
            }
            4 if len > 0 => {
                let at = rng.index(len);
                let n = (rng.below(64) as usize).min(len - at);
                out.drain(at..at + n);
            }
            5 => {
                let at = rng.index(len + 1);
                let n = rng.below(64) as usize;
                let extra = rng.bytes(n);
                out.splice(at..at, extra);
            }
            6 if !other.is_empty() => {
                let at = rng.index(len + 1);
                let from = rng.index(other.len());
                let n = (rng.below(256) as usize).min(other.len() - from);
                out.truncate(at);
                out.extend_from_slice(&other[from..from + n]);
            }
            _ if len > 1 => {
                // Duplicate a range (repeated records, frames, parts).
                let at = rng.index(len);
                let n = (rng.below(128) as usize).min(len - at);
                let copy = out[at..at + n].to_vec();
                let to = rng.index(out.len() + 1);
                out.splice(to..to, copy);
            }
            _ => out.push(rng.next_u64() as u8),
        }
    }
    out
}

/// Runs `target` on `input` and returns whether it was accepted; a panic
/// or an oversized allocation fails the test with the input in hex.
fn check(target: Target, input: &[u8], what: &str) -> bool {
    LARGEST.store(0, Ordering::Relaxed);
    let result = std::panic::catch_unwind(|| target.run(input));
    let largest = LARGEST.load(Ordering::Relaxed);
    let hex = || -> String { input.iter().map(|b| format!("{b:02x}")).collect() };
    assert!(
        result.is_ok(),
        "{}: {what} panicked; input ({} bytes): {}",
        target.name(),
        input.len(),
        hex()
    );
    assert!(
        largest <= ALLOCATION_CAP,
        "{}: {what} allocated {largest} bytes at once; input ({} bytes): {}",
        target.name(),
        input.len(),
        hex()
    );
    PEAK.fetch_max(largest, Ordering::Relaxed);
    result.unwrap_or(false)
}

/// The largest single allocation seen during the current target's run.
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The allocation counter is global: targets run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn regressions(target: Target) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target.name());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(&p).expect("read a regression input"))
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(target: Target) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    PEAK.store(0, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let seeds = seeds(target);
    assert!(!seeds.is_empty(), "{}: no seeds", target.name());
    let accepted = seeds.iter().filter(|s| target.run(s)).count();
    // The library's own files decode (the frame seeds are all requests
    // node 2 may not send as node 1, except status and trigger).
    if target != Target::RaftFrame {
        assert_eq!(
            accepted,
            seeds.len(),
            "{}: a seed was refused",
            target.name()
        );
    }
    let mut corpus = seeds;
    for (i, input) in regressions(target).into_iter().enumerate() {
        check(target, &input, &format!("regression input {i}"));
        corpus.push(input);
    }
    let rounds = env_u64("HIGHWATER_MUTATIONS", 20_000);
    let seed = env_u64("HIGHWATER_MUTATION_SEED", 0x18_18_18);
    let mut rng = SplitMix64::new(seed ^ target as u64);
    let mut ok = 0;
    for round in 0..rounds {
        let input = &corpus[rng.index(corpus.len())];
        let other = &corpus[rng.index(corpus.len())];
        let mutated = mutate(&mut rng, input, other);
        if check(target, &mutated, &format!("mutation {round} (seed {seed})")) {
            ok += 1;
        }
    }
    println!(
        "{}: {} corpus inputs, {rounds} mutations ({ok} accepted), largest allocation {} bytes, in {:.1?}",
        target.name(),
        corpus.len(),
        PEAK.load(Ordering::Relaxed),
        started.elapsed()
    );
}

#[test]
fn manifest() {
    run(Target::Manifest);
}

#[test]
fn manifest_body() {
    run(Target::ManifestBody);
}

#[test]
fn artifact() {
    run(Target::Artifact);
}

#[test]
fn artifact_body() {
    run(Target::ArtifactBody);
}

#[test]
fn wal_segment() {
    run(Target::WalSegment);
}

#[test]
fn raft_frame() {
    run(Target::RaftFrame);
}

#[test]
fn raft_snapshot() {
    run(Target::RaftSnapshot);
}

#[test]
fn redis_artifact() {
    run(Target::RedisArtifact);
}

#[test]
fn sealed() {
    run(Target::Sealed);
}

#[test]
fn savepoint() {
    run(Target::Savepoint);
}
