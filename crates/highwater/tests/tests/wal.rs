//! The manager with a write-ahead log: restore = checkpoint + replay of the
//! committed tail; uncommitted changes are not replayed; the log before the
//! oldest retained checkpoint is released.

use std::sync::Arc;

use highwater::memory::MemoryBackend;
use highwater::wal::{SyncPolicy, WalConfig};
use highwater::{CheckpointId, StateManager, ValueState, ValueStateDescriptor};

use crate::common::{LocalStore, config, dump};

fn manager(local: &LocalStore, wal_dir: &std::path::Path, retained: usize) -> StateManager {
    StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(local.dyn_store())
        .config(config(true, 4, retained))
        .wal(
            wal_dir,
            WalConfig::default()
                .segment_size(64 << 10)
                .sync_policy(SyncPolicy::Always),
        )
        .build()
        .unwrap()
}

fn counter(m: &StateManager) -> ValueState<u32, u64> {
    m.keyed_state("op")
        .unwrap()
        .value_state(&ValueStateDescriptor::new("n"))
        .unwrap()
}

#[test]
fn restore_latest_replays_the_committed_tail_only() {
    let local = LocalStore::new();
    let wal_dir = local.dir.parent().unwrap().join("wal");
    let expected = {
        let m = manager(&local, &wal_dir, 3);
        let n = counter(&m);
        for k in 0..100 {
            n.update(&k, &1).unwrap();
        }
        m.commit().unwrap();
        let c1 = m.checkpoint().unwrap().wait().unwrap();
        assert_eq!(c1.id, CheckpointId(1));
        // Committed after the checkpoint: in the log only.
        for k in 0..50 {
            n.update(&k, &2).unwrap();
            m.commit().unwrap();
        }
        n.clear(&99).unwrap();
        m.commit().unwrap();
        let expected = dump(&**m.backend());
        // Never committed: must not come back. (Dropping everything without
        // close() is what a crash leaves behind as far as the log goes.)
        n.update(&7, &999).unwrap();
        n.update(&1000, &999).unwrap();
        drop(n);
        drop(m);
        expected
    };
    let m = manager(&local, &wal_dir, 3);
    let info = m.restore_latest().unwrap().expect("a checkpoint");
    assert_eq!(info.stats.checkpoint, Some(CheckpointId(1)));
    assert_eq!(info.stats.wal_records_replayed, 51);
    assert_eq!(dump(&**m.backend()), expected);
    // The next checkpoint is an incremental holding the replayed changes.
    let c2 = m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(c2.entries, 51);
    m.restore(c2.id).unwrap();
    assert_eq!(dump(&**m.backend()), expected);
}

#[test]
fn without_a_checkpoint_the_log_alone_rebuilds_the_state() {
    let local = LocalStore::new();
    let wal_dir = local.dir.parent().unwrap().join("wal");
    let expected = {
        let m = manager(&local, &wal_dir, 3);
        let n = counter(&m);
        for k in 0..20 {
            n.update(&k, &u64::from(k)).unwrap();
            m.commit().unwrap();
        }
        let state = dump(&**m.backend());
        drop(n);
        m.close().unwrap();
        state
    };
    let m = manager(&local, &wal_dir, 3);
    let info = m.restore_latest().unwrap().expect("the log holds state");
    assert_eq!(info.stats.checkpoint, None);
    assert_eq!(info.stats.wal_records_replayed, 20);
    assert_eq!(dump(&**m.backend()), expected);
}

#[test]
fn checkpoints_record_their_position_and_release_the_log() {
    let local = LocalStore::new();
    let wal_dir = local.dir.parent().unwrap().join("wal");
    let m = manager(&local, &wal_dir, 2);
    let n = counter(&m);
    let mut positions = Vec::new();
    for round in 0..6u64 {
        for k in 0..400 {
            n.update(&k, &round).unwrap();
            m.commit().unwrap();
        }
        let c = m.checkpoint().unwrap().wait().unwrap();
        let manifest = m
            .checkpoint_history()
            .unwrap()
            .into_iter()
            .find(|h| h.id == c.id)
            .unwrap()
            .manifest
            .unwrap();
        positions.push(manifest.wal_position.expect("position recorded"));
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let wal = m.wal().unwrap();
    // Everything before the older of the two retained checkpoints may go;
    // nothing after it may.
    assert!(wal.first_lsn() > 1, "no segment was released");
    assert!(wal.first_lsn() <= positions[4] + 1, "released too much");
    // The newest checkpoint restores with nothing left to replay.
    m.close().unwrap();
    let m = manager(&local, &wal_dir, 2);
    let info = m.restore_latest().unwrap().unwrap();
    assert_eq!(info.stats.wal_position, Some(positions[5]));
    assert_eq!(info.stats.wal_records_replayed, 0);
}
