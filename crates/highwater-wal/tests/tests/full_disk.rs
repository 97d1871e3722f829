//! A log on a full disk: a 1 MiB tmpfs mounted by the test (root only; the
//! test prints why and returns elsewhere). Opening a log whose first
//! segment does not fit, and appending until the disk is full, both fail
//! with `ErrorKind::StorageFull` naming the directory; the log then stays
//! poisoned with the same kind, and what was acknowledged replays (under
//! `Always` and under `Interval`, whose syncs run in a thread of their own).

use highwater_core::{Error, ErrorKind};
use highwater_testkit::mounts::Tmpfs;
use highwater_wal::{SyncPolicy, Wal, WalConfig};

use crate::common::{collect, rec, small};

#[test]
fn a_segment_that_does_not_fit_is_storage_full() {
    let Some(mount) = Tmpfs::mount_or_skip("the wal full-disk open test", "size=1m") else {
        return;
    };
    let dir = mount.path().join("wal");
    let config = WalConfig {
        segment_size: 4 << 20,
        ..small(SyncPolicy::Always)
    };
    let err = Wal::open(&dir, config).map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert!(!err.is_transient());
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "the message names the directory: {err}"
    );
}

#[test]
fn appending_to_a_full_disk_is_storage_full_and_stays_so() {
    appending_to_a_full_disk(SyncPolicy::Always);
}

/// The same under `Interval`, where a separate thread syncs: the writer's
/// failed write still poisons the log and every later append fails.
#[test]
fn appending_to_a_full_disk_under_interval_sync_is_storage_full() {
    appending_to_a_full_disk(SyncPolicy::Interval(std::time::Duration::from_millis(5)));
}

fn appending_to_a_full_disk(policy: SyncPolicy) {
    let Some(mount) = Tmpfs::mount_or_skip("the wal full-disk append test", "size=1m") else {
        return;
    };
    let dir = mount.path().join("wal");
    let config = WalConfig {
        segment_size: 64 << 10,
        ..small(policy)
    };
    let (wal, _) = Wal::open(&dir, config).unwrap();
    let mut acknowledged = 0;
    let err = loop {
        match wal.append(&rec(acknowledged + 1)) {
            Ok(lsn) => acknowledged = lsn,
            Err(e) => break e,
        }
        assert!(acknowledged < 100_000, "1 MiB never filled up");
    };
    assert!(acknowledged > 0, "the first records fit: {err}");
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{policy:?} {err}");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "the message names the directory: {err}"
    );
    // Poisoned: the next append fails at once with the same kind, and the
    // disk-full error is its source.
    let again = wal.append(&rec(acknowledged + 1)).unwrap_err();
    assert_eq!(again.kind(), ErrorKind::StorageFull, "{again}");
    assert!(
        matches!(again, Error::Backend { backend: "wal", .. }),
        "{again:?}"
    );
    assert!(std::error::Error::source(&again).is_some());
    // Everything acknowledged is there.
    assert_eq!(collect(&wal, 1).len() as u64, acknowledged);
    drop(wal);
}
