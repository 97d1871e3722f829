//! The engine's plan, statistics, progress and verification levels.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use highwater::ValueStateDescriptor;
use highwater::core::ManualClock;
use highwater::memory::MemoryBackend;
use highwater::recovery::{
    LoadStrategy, Phase, PrefetchStrategy, Progress, Recovery, RecoveryConfig, RecoveryScope,
    RecoveryTarget, VerificationLevel,
};

use crate::common::{JobDirs, assert_state, config, dump, flip_byte, manager, runtime};

fn chain_job(dirs: &JobDirs) -> highwater_testkit::model::Entries {
    let clock = Arc::new(ManualClock::new(5_000));
    let m = manager(dirs, config(10), clock, None).unwrap();
    let v = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, u64>(&ValueStateDescriptor::new("v"))
        .unwrap();
    for round in 0..5u64 {
        for k in 0..(if round == 0 { 2000 } else { 200 }) {
            v.update(&(k * (round as u32 + 1)), &round).unwrap();
        }
        for k in 0..20 {
            v.clear(&(k * 13 + round as u32)).unwrap();
        }
        m.checkpoint().unwrap().wait().unwrap();
    }
    dump(&**m.backend())
}

/// Recovers the newest checkpoint of `dirs`, all of it, into a fresh
/// memory backend with `cfg`.
fn recover_latest(
    dirs: &JobDirs,
    rt: &tokio::runtime::Runtime,
    cfg: RecoveryConfig,
) -> (
    MemoryBackend,
    highwater::Result<highwater::recovery::RecoveryOutcome>,
) {
    let engine = Recovery::new(dirs.store(), cfg, rt.handle().clone()).unwrap();
    let backend = MemoryBackend::new();
    let out = engine.recover(
        RecoveryTarget::Latest,
        &RecoveryScope::all(),
        &backend,
        None,
        None,
    );
    (backend, out)
}

/// Every verification level.
const LEVELS: [VerificationLevel; 3] = [
    VerificationLevel::None,
    VerificationLevel::Checksum,
    VerificationLevel::Full,
];

/// [`recover_latest`] at `level`, failing instead of falling back.
fn recover_latest_strictly(
    dirs: &JobDirs,
    rt: &tokio::runtime::Runtime,
    level: VerificationLevel,
) -> (
    MemoryBackend,
    highwater::Result<highwater::recovery::RecoveryOutcome>,
) {
    let cfg = RecoveryConfig::default()
        .verification_level(level)
        .optimistic_recovery(false);
    recover_latest(dirs, rt, cfg)
}

/// A restore that overlaps fetching with decoding holds at most
/// `fetch_ahead_bytes` of the checkpoint at once — or one range's
/// artifacts, when the bound is smaller than that — and restores the same
/// state at any bound, down to one byte (one artifact at a time).
#[test]
fn a_restore_holds_at_most_its_fetch_ahead_bound() {
    let dirs = JobDirs::new();
    let want = chain_job(&dirs);
    let rt = runtime();
    let plan = Recovery::new(dirs.store(), RecoveryConfig::default(), rt.handle().clone())
        .unwrap()
        .plan(RecoveryTarget::Latest, &RecoveryScope::all(), None)
        .unwrap();
    // The chain's layers cut key groups alike: no artifact is shared
    // between ranges, so a range's artifacts are fetched together.
    let range_bytes = |r: &highwater::recovery::RangePlan| -> u64 {
        let mut ids: Vec<_> = r
            .artifacts
            .iter()
            .map(|a| (a.artifact.id, a.artifact.stored_bytes))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.iter().map(|(_, n)| n).sum()
    };
    let largest_range = plan.ranges.iter().map(range_bytes).max().unwrap();
    let largest_artifact = plan
        .ranges
        .iter()
        .flat_map(|r| &r.artifacts)
        .map(|a| a.artifact.stored_bytes)
        .max()
        .unwrap();
    for bound in [
        1,
        largest_artifact,
        2 * largest_range,
        plan.bytes_to_fetch / 2,
        u64::MAX,
    ] {
        for threads in [1, 3] {
            let cfg = RecoveryConfig::default()
                .max_parallel_threads(threads)
                .fetch_ahead_bytes(bound)
                .optimistic_recovery(false);
            let (backend, out) = recover_latest(&dirs, &rt, cfg);
            let s = out.unwrap().stats;
            let ctx = format!("bound {bound}, {threads} threads");
            assert_state(&want, &dump(&backend), &ctx);
            assert_eq!(s.bytes_fetched, plan.bytes_to_fetch, "{ctx}");
            let peak = s.fetch_ahead_peak_bytes;
            assert!(
                peak <= bound.max(largest_range),
                "{ctx}: {peak} bytes held, largest range {largest_range}"
            );
            assert!(peak >= largest_artifact.min(bound), "{ctx}: peak {peak}");
        }
    }
    let zero = RecoveryConfig::default().fetch_ahead_bytes(0);
    assert!(matches!(
        Recovery::new(dirs.store(), zero, rt.handle().clone()),
        Err(highwater::Error::InvalidArgument(_))
    ));
}

#[test]
fn plan_prints_and_serialises_the_chain_ranges_and_log_range() {
    let dirs = JobDirs::new();
    chain_job(&dirs);
    let rt = runtime();
    let engine =
        Recovery::new(dirs.store(), RecoveryConfig::default(), rt.handle().clone()).unwrap();
    let plan = engine
        .plan(RecoveryTarget::Latest, &RecoveryScope::all(), None)
        .unwrap();
    assert_eq!(plan.checkpoint, Some(highwater::CheckpointId(5)));
    assert_eq!(plan.chain.len(), 5);
    assert_eq!(plan.ranges.len(), 16, "128 key groups in chunks of 8");
    let text = plan.to_string();
    assert!(text.contains("checkpoint 5"), "{text}");
    assert!(text.contains("chain of 5 layers"), "{text}");
    let json: serde_json::Value = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["checkpoint"], 5);
    let id = json["ranges"][0]["artifacts"][0]["artifact"]["id"]
        .as_str()
        .unwrap();
    assert_eq!(id.len(), 32, "artifact ids are hex");
    let at2 = engine
        .plan(
            RecoveryTarget::Checkpoint(highwater::CheckpointId(2)),
            &RecoveryScope::all(),
            None,
        )
        .unwrap();
    assert_eq!(at2.chain.len(), 2);
    assert_eq!(at2.fallback_candidates, vec![highwater::CheckpointId(1)]);
}

#[test]
fn every_thread_count_level_and_prefetch_strategy_gives_the_same_state_and_reports_progress() {
    let dirs = JobDirs::new();
    let want = chain_job(&dirs);
    let rt = runtime();
    for (threads, level, prefetch, load) in [
        (
            1,
            VerificationLevel::None,
            PrefetchStrategy::Sequential,
            LoadStrategy::Restore,
        ),
        (
            2,
            VerificationLevel::Checksum,
            PrefetchStrategy::Concurrent(3),
            LoadStrategy::Parallel,
        ),
        (
            4,
            VerificationLevel::Full,
            PrefetchStrategy::Adaptive,
            LoadStrategy::Restore,
        ),
        (
            3,
            VerificationLevel::Checksum,
            PrefetchStrategy::Adaptive,
            LoadStrategy::Parallel,
        ),
    ] {
        let cfg = RecoveryConfig::default()
            .max_parallel_threads(threads)
            .verification_level(level)
            .prefetch_strategy(prefetch)
            .load_strategy(load);
        let engine = Recovery::new(dirs.store(), cfg, rt.handle().clone()).unwrap();
        let backend = MemoryBackend::new();
        // Live state to be replaced.
        backend.put(b"\x00\x05stale", b"x").unwrap();
        let fetched = AtomicU64::new(0);
        let loaded = AtomicU64::new(0);
        let progress = |p: Progress| match p.phase {
            Phase::Fetching => {
                fetched.fetch_max(p.done, Ordering::Relaxed);
            }
            Phase::Loading => {
                loaded.fetch_max(p.done, Ordering::Relaxed);
            }
            Phase::ReplayingWal => {}
        };
        let out = engine
            .recover(
                RecoveryTarget::Latest,
                &RecoveryScope::all(),
                &backend,
                None,
                Some(&progress),
            )
            .unwrap();
        let ctx = format!("threads={threads} {level:?} {prefetch:?} {load:?}");
        assert_state(&want, &dump(&backend), &ctx);
        // A new change-tracking epoch starts at the recovered state.
        use highwater::core::StateBackend as _;
        let changes = backend
            .snapshot(highwater::core::SnapshotKind::Changes)
            .unwrap();
        assert_eq!(
            changes.approximate_entries(),
            0,
            "{ctx}: recovered entries are no changes"
        );
        let s = &out.stats;
        assert_eq!(s.entries_loaded, want.len() as u64, "{ctx}");
        assert_eq!(s.chain_length, 5, "{ctx}");
        assert!(
            s.records_decoded > s.entries_loaded,
            "{ctx}: deltas were folded"
        );
        assert_eq!(
            fetched.load(Ordering::Relaxed),
            s.artifacts_fetched as u64,
            "{ctx}"
        );
        assert_eq!(loaded.load(Ordering::Relaxed), s.ranges as u64, "{ctx}");
        assert!(s.bytes_fetched > 0 && s.logical_bytes > 0, "{ctx}");
    }
}

#[test]
fn verification_level_none_skips_the_content_address_but_not_the_decoder_checks() {
    let dirs = JobDirs::new();
    let want = chain_job(&dirs);
    let rt = runtime();
    let store = dirs.store();
    let manifest = rt
        .block_on(highwater::core::load_manifest(
            &*store,
            highwater::CheckpointId(5),
        ))
        .unwrap();
    let victim = manifest.layers[0].artifacts[3].id;
    flip_byte(&dirs.artifact_file(victim));
    let file = dirs.artifact_file(victim);
    for level in LEVELS {
        let (backend, out) = recover_latest_strictly(&dirs, &rt, level);
        let err = out.unwrap_err();
        assert!(
            err.to_string().contains(&victim.to_hex()),
            "{level:?}: {err}"
        );
        assert!(dump(&backend).is_empty(), "{level:?}: nothing loaded");
        match level {
            // The decoder's own checksums refuse it; nothing is deleted.
            VerificationLevel::None => {
                assert!(err.is_corruption(), "{level:?}: {err}");
                assert!(file.exists(), "level None deletes nothing");
            }
            // The content address refuses it, twice: the stored copy is
            // damaged and deleted so the next checkpoint rewrites it.
            VerificationLevel::Checksum => {
                assert!(err.is_corruption(), "{level:?}: {err}");
                assert!(err.to_string().contains("xxh3"), "{level:?}: {err}");
                assert!(!file.exists(), "the damaged copy was deleted");
            }
            VerificationLevel::Full => {
                assert_eq!(
                    err.kind(),
                    highwater::ErrorKind::NotFound,
                    "{level:?}: {err}"
                );
            }
        }
    }
    // The other checkpoints sharing the artifact are unusable too; the
    // state written is still recoverable from the live job only.
    assert!(!want.is_empty());
}

#[test]
fn a_timeout_is_an_unavailable_error() {
    let dirs = JobDirs::new();
    chain_job(&dirs);
    let rt = runtime();
    let cfg = RecoveryConfig::default().recovery_timeout(Some(std::time::Duration::from_nanos(1)));
    let err = recover_latest(&dirs, &rt, cfg).1.unwrap_err();
    assert_eq!(err.kind(), highwater::ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("recovery_timeout"), "{err}");
}

#[test]
fn ranges_cut_into_several_chunks_recover_and_verify_at_every_level() {
    let dirs = JobDirs::new();
    let mut cfg = config(3);
    // Tiny content-defined chunks: every key-group range holds several
    // artifacts with the same operator and range.
    cfg.merger.chunking = highwater::merge::ChunkConfig {
        min_bytes: 512,
        target_bytes: 1024,
        max_bytes: 4096,
    };
    let m = manager(&dirs, cfg, Arc::new(ManualClock::new(5_000)), None).unwrap();
    let v = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, String>(&ValueStateDescriptor::new("v"))
        .unwrap();
    for k in 0..3000u32 {
        v.update(&k, &format!("value-{k:08}-{}", k % 97)).unwrap();
    }
    m.checkpoint().unwrap().wait().unwrap();
    for k in (0..3000u32).step_by(7) {
        v.update(&k, &format!("changed-{k}")).unwrap();
    }
    let id = m.checkpoint().unwrap().wait().unwrap().id;
    let want = dump(&**m.backend());

    let rt = runtime();
    let store = dirs.store();
    let manifest = rt
        .block_on(highwater::core::load_manifest(&*store, id))
        .unwrap();
    let base = &manifest.layers[0].artifacts;
    let shared_range = base.windows(2).any(|w| {
        w[0].operator == w[1].operator && w[0].key_groups == w[1].key_groups && w[0].id != w[1].id
    });
    assert!(shared_range, "the test needs ranges of several chunks");

    for level in LEVELS {
        let (backend, out) = recover_latest_strictly(&dirs, &rt, level);
        let outcome = out.unwrap();
        assert!(outcome.stats.fallbacks.is_empty(), "{level:?}");
        assert_state(&want, &dump(&backend), &format!("{level:?}"));
    }
    let report = rt.block_on(highwater::verify_store(&*store)).unwrap();
    assert!(report.iter().all(|v| v.is_sound()), "{report:?}");
}

/// Issue 18: two artifacts of the same kind, key-group range and entry
/// count swapped in the store restored a wrong state at
/// `VerificationLevel::None`. The decoder now binds each artifact to its
/// reference by stored size and codec as well, so a swap of artifacts
/// whose sizes differ is corruption at every level; only the content
/// address (`Checksum`, `Full`) catches a swap of equal-sized artifacts,
/// as `VerificationLevel::None`'s documentation says.
#[test]
fn swapped_artifacts_of_the_same_range_are_refused_at_every_level() {
    let dirs = JobDirs::new();
    let clock = Arc::new(ManualClock::new(5_000));
    let mut cfg = config(10);
    cfg.incremental = false;
    let m = manager(&dirs, cfg, clock, None).unwrap();
    let v = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, u64>(&ValueStateDescriptor::new("v"))
        .unwrap();
    // Same keys, so the same ranges and entry counts; values of 1 and of
    // 3 varint bytes, so different sizes.
    for value in [0u64, 1_000_000] {
        for k in 0..2000 {
            v.update(&k, &value).unwrap();
        }
        m.checkpoint().unwrap().wait().unwrap();
    }
    let want = dump(&**m.backend());
    let rt = runtime();
    let store = dirs.store();
    let load = |id| {
        rt.block_on(highwater::core::load_manifest(
            &*store,
            highwater::CheckpointId(id),
        ))
        .unwrap()
    };
    let (old, new) = (load(1), load(2));
    let (a, b) = (&old.layers[0].artifacts[0], &new.layers[0].artifacts[0]);
    assert_eq!((a.key_groups, a.entries), (b.key_groups, b.entries));
    assert_ne!(a.stored_bytes, b.stored_bytes);
    for level in LEVELS {
        let (backend, out) = recover_latest_strictly(&dirs, &rt, level);
        out.unwrap();
        assert_state(
            &want,
            &dump(&backend),
            &format!("{level:?} before the swap"),
        );
    }
    std::fs::copy(dirs.artifact_file(a.id), dirs.artifact_file(b.id)).unwrap();
    for level in LEVELS {
        let (backend, out) = recover_latest_strictly(&dirs, &rt, level);
        let err = out.unwrap_err();
        assert!(err.to_string().contains(&b.id.to_hex()), "{level:?}: {err}");
        assert!(dump(&backend).is_empty(), "{level:?}: nothing loaded");
        // The Checksum level deleted the damaged copy (NotFound after).
        if level == VerificationLevel::None {
            assert!(err.is_corruption(), "{level:?}: {err}");
            assert!(err.to_string().contains("stored size"), "{level:?}: {err}");
        }
    }
}
