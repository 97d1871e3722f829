//! Content-addressed artifacts: a full checkpoint of unchanged state
//! uploads nothing, and a change uploads only the chunk it touched.

use std::collections::BTreeSet;

use highwater::{CheckpointKind, ValueStateDescriptor};

use crate::common::{assert_entries, block_on, config, dump, manifests, memory_manager};

#[test]
fn unchanged_full_checkpoint_writes_no_artifact_bytes() {
    let m = memory_manager(config(false, 8, 5));
    let store = m.store().clone();
    let handles: Vec<_> = ["left", "right"]
        .iter()
        .map(|op| {
            m.keyed_state(op)
                .unwrap()
                .value_state::<u32, String>(&ValueStateDescriptor::new("v"))
                .unwrap()
        })
        .collect();
    // The operators' values differ: identical state of two operators is
    // stored once (operator-relative keys), which this test is not about.
    for (i, h) in handles.iter().enumerate() {
        for k in 0..400u32 {
            h.update(&k, &format!("value-{i}-{k}-{}", k * 7)).unwrap();
        }
    }
    let state = dump(&**m.backend());

    let c1 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(c1.kind, CheckpointKind::Full);
    // 2 operators x 8 chunks of 16 key groups, all populated.
    assert_eq!(c1.artifacts, 16);
    assert_eq!(c1.artifacts_reused, 0);
    assert_eq!(c1.bytes_written, c1.encoded_bytes);
    assert!(c1.bytes_written > 0);

    let before = store.counters();
    let c2 = m.checkpoint().unwrap().wait().unwrap();
    let after = store.counters();
    assert_eq!(c2.kind, CheckpointKind::Full);
    assert_eq!(c2.artifacts, c1.artifacts);
    assert_eq!(
        c2.artifacts_reused, c2.artifacts,
        "every artifact is reused"
    );
    assert_eq!(c2.bytes_written, 0, "no artifact bytes written");
    assert_eq!(c2.encoded_bytes, c1.encoded_bytes);
    // The store saw only the manifest.
    let manifest_len = block_on(store.get_manifest(c2.id)).unwrap().len() as u64;
    assert_eq!(after.bytes_written - before.bytes_written, manifest_len);

    let ms = manifests(&*store);
    let ids = |id| -> BTreeSet<_> { ms[&id].artifacts().map(|a| a.id).collect() };
    assert_eq!(ids(c1.id), ids(c2.id), "same content, same artifact ids");

    // One changed key changes exactly one artifact.
    handles[0].update(&17, &"changed".to_string()).unwrap();
    let c3 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(c3.artifacts, 16);
    assert_eq!(c3.artifacts_reused, 15);
    let ms = manifests(&*store);
    let a3: BTreeSet<_> = ms[&c3.id].artifacts().map(|a| a.id).collect();
    let a2 = ids(c2.id);
    let new: Vec<_> = a3.difference(&a2).collect();
    assert_eq!(new.len(), 1, "exactly one new artifact");
    let new_ref = ms[&c3.id].artifacts().find(|a| a.id == *new[0]).unwrap();
    assert_eq!(new_ref.operator, "left");
    assert_eq!(c3.bytes_written, new_ref.stored_bytes);

    // Both deduplicated checkpoints restore.
    m.restore(c2.id).unwrap();
    assert_entries(&state, &dump(&**m.backend()), "deduplicated checkpoint");
    assert_eq!(
        handles[0].get(&17).unwrap(),
        Some("value-0-17-119".to_string())
    );
    m.restore(c3.id).unwrap();
    assert_eq!(handles[0].get(&17).unwrap(), Some("changed".to_string()));
}

/// A memory-backed manager of full checkpoints compressed with
/// `compression` (and checkpoints due every `interval`), its configuration
/// and its one value state.
fn compressed_manager(
    compression: highwater::Compression,
    interval: Option<std::time::Duration>,
) -> (
    highwater::CheckpointConfig,
    highwater::StateManager,
    highwater::ValueState<u32, String>,
) {
    let mut cfg = config(false, 8, 5);
    cfg.interval = interval;
    cfg.merger.compression = compression;
    let m = memory_manager(cfg.clone());
    let s = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, String>(&ValueStateDescriptor::new("v"))
        .unwrap();
    (cfg, m, s)
}

/// Each compression setting writes what it says (raw artifacts for `None`,
/// zstd frames otherwise, smaller at a higher level on compressible state),
/// and every one restores the same state; an out-of-range level is refused
/// when the manager is built.
#[test]
fn compression_settings_write_what_they_say_and_restore() {
    use highwater::Compression;
    use highwater::core::Codec;

    let mut stored = Vec::new();
    for compression in [
        Compression::None,
        Compression::Zstd { level: -5 },
        Compression::Zstd { level: 1 },
        Compression::Zstd { level: 9 },
    ] {
        let (cfg, m, s) = compressed_manager(compression, None);
        for k in 0..2_000u32 {
            s.update(&k, &format!("reading {} of sensor {}", k % 97, k % 13))
                .unwrap();
        }
        let state = dump(&**m.backend());
        let info = m.checkpoint().unwrap().wait().unwrap();
        let ms = manifests(&**m.store());
        let codecs: std::collections::HashSet<_> =
            ms[&info.id].artifacts().map(|a| a.codec).collect();
        let want = match compression {
            Compression::None => Codec::Raw,
            Compression::Zstd { .. } | Compression::Adaptive { .. } => Codec::Zstd,
        };
        assert_eq!(codecs, [want].into(), "{compression:?}");
        stored.push(info.encoded_bytes);

        let fresh = crate::common::manager_with(m.store().clone(), cfg);
        fresh.restore_latest().unwrap().expect("a checkpoint");
        assert_entries(
            &state,
            &dump(&**fresh.backend()),
            &format!("{compression:?}"),
        );
    }
    // Raw > fast > default. (A high level is not always smaller than
    // level 1 on artifacts of a few KB, so it is only restored above.)
    assert!(stored[0] > stored[1], "{stored:?}");
    assert!(stored[1] > stored[2], "{stored:?}");

    let mut bad = config(false, 8, 5);
    bad.merger.compression = Compression::Zstd { level: 23 };
    let built = highwater::StateManager::builder()
        .backend(std::sync::Arc::new(highwater::memory::MemoryBackend::new()))
        .store(std::sync::Arc::new(
            highwater::cloud::ObjectCheckpointStore::in_memory(),
        ))
        .config(bad)
        .build();
    let Err(err) = built else {
        panic!("level 23 is refused")
    };
    assert!(err.to_string().contains("zstd level"), "{err}");
}

/// Adaptive compression: while checkpoints overrun their share of the
/// interval (1 ms here, so every one does), each steps one rung faster
/// down to the fastest, every checkpoint reports the level it used, writes
/// smaller artifacts at the stronger levels and restores the state; with
/// an interval they fit easily they stay at the strongest level.
#[test]
fn adaptive_compression_steps_down_while_checkpoints_overrun_and_restores() {
    use highwater::Compression;
    use std::time::Duration;

    let adaptive = Compression::Adaptive {
        budget_percent: 50,
        fastest: -3,
        strongest: 3,
    };
    for (interval, want) in [
        (Duration::from_millis(1), [3, 1, -1, -3, -3]),
        (Duration::from_secs(3600), [3, 3, 3, 3, 3]),
    ] {
        let (cfg, m, s) = compressed_manager(adaptive, Some(interval));
        let mut levels = Vec::new();
        let mut sizes = Vec::new();
        for round in 0..want.len() as u32 {
            for k in 0..2_000u32 {
                s.update(
                    &k,
                    &format!("reading {} of sensor {} in round {round}", k % 97, k % 13),
                )
                .unwrap();
            }
            let info = m.checkpoint().unwrap().wait().unwrap();
            assert_eq!(info.kind, CheckpointKind::Full);
            levels.push(info.compression_level.expect("compressed"));
            sizes.push(info.encoded_bytes);
        }
        assert_eq!(levels, want, "{interval:?}");
        if want[0] != want[3] {
            // Level 3 against -3 on the same kind of state.
            assert!(sizes[0] < sizes[3], "{sizes:?}");
        }
        let state = dump(&**m.backend());
        let fresh = crate::common::manager_with(m.store().clone(), cfg);
        fresh.restore_latest().unwrap().expect("a checkpoint");
        assert_entries(&state, &dump(&**fresh.backend()), &format!("{interval:?}"));
    }
}
