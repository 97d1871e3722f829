//! Damaged checkpoints in a local store directory: a flipped byte, a
//! truncated manifest, a deleted artifact. `restore_latest` falls back to
//! the previous checkpoint and says why; `restore(id)` returns a typed
//! error naming the checkpoint and the artifact; live state is untouched
//! by a failed restore.

use std::collections::BTreeMap;

use highwater::core::ArtifactId;
use highwater::{CheckpointId, CheckpointKind, ErrorKind, StateManager, ValueStateDescriptor};
use highwater_testkit::model::Entries;

use crate::common::{LocalStore, assert_entries, config, dump, manager_with, manifests};

struct Fixture {
    local: LocalStore,
    m: StateManager,
    /// State captured at checkpoints 1 (full), 2 and 3 (incrementals).
    states: BTreeMap<CheckpointId, Entries>,
}

fn fixture() -> Fixture {
    let local = LocalStore::new();
    let m = manager_with(local.dyn_store(), config(true, 8, 10));
    let v = m
        .keyed_state("op")
        .unwrap()
        .value_state::<u32, String>(&ValueStateDescriptor::new("v"))
        .unwrap();
    let mut states = BTreeMap::new();
    for round in 0..3u32 {
        let keys = if round == 0 { 0..300 } else { 0..40 };
        for k in keys {
            v.update(&k, &format!("round-{round}-key-{k}")).unwrap();
        }
        let state = dump(&**m.backend());
        let info = m.checkpoint().unwrap().wait().unwrap();
        assert_eq!(info.id, CheckpointId(u64::from(round) + 1));
        states.insert(info.id, state);
    }
    Fixture { local, m, states }
}

impl Fixture {
    /// An artifact checkpoint 3 wrote that checkpoint 2 does not use.
    fn own_artifact_of_newest(&self) -> ArtifactId {
        let ms = manifests(&*self.local.store);
        let m3 = &ms[&CheckpointId(3)];
        assert_eq!(m3.kind, CheckpointKind::Incremental);
        let used_by_2: Vec<_> = ms[&CheckpointId(2)].artifacts().map(|a| a.id).collect();
        m3.own_artifacts()
            .iter()
            .map(|a| a.id)
            .find(|id| !used_by_2.contains(id))
            .expect("checkpoint 3 wrote an artifact of its own")
    }

    /// Replaces live state with something recognisable, to show what a
    /// restore did or did not replace.
    fn scribble(&self) -> Entries {
        self.m.backend().clear().unwrap();
        let v = self
            .m
            .keyed_state("scratch")
            .unwrap()
            .value_state::<u32, u32>(&ValueStateDescriptor::new("x"))
            .unwrap();
        v.update(&1, &1).unwrap();
        dump(&**self.m.backend())
    }

    fn expect_fallback_to_2(&self, reason: &[&str]) {
        self.scribble();
        let info = self.m.restore_latest().unwrap().expect("a checkpoint");
        assert_eq!(info.stats.checkpoint, Some(CheckpointId(2)));
        assert_eq!(info.stats.fallbacks.len(), 1, "{:?}", info.stats.fallbacks);
        let (id, why) = (
            &info.stats.fallbacks[0].checkpoint,
            &info.stats.fallbacks[0].reason,
        );
        assert_eq!(*id, CheckpointId(3));
        for r in reason {
            assert!(why.contains(r), "fallback reason {why:?} lacks {r:?}");
        }
        assert_entries(
            &self.states[&CheckpointId(2)],
            &dump(&**self.m.backend()),
            "fallback",
        );
        assert_eq!(self.m.last_checkpoint(), Some(CheckpointId(2)));
    }

    fn expect_restore_error(&self, id: CheckpointId, kind: ErrorKind, names: &[&str]) {
        let before = self.scribble();
        let err = self
            .m
            .restore(id)
            .expect_err("restore of a damaged checkpoint");
        assert_eq!(err.kind(), kind, "{err}");
        let msg = err.to_string();
        for n in names {
            assert!(msg.contains(n), "error {msg:?} does not name {n:?}");
        }
        assert_entries(
            &before,
            &dump(&**self.m.backend()),
            "after a failed restore",
        );
    }
}

#[test]
fn flipped_artifact_byte_falls_back_to_previous_checkpoint() {
    let f = fixture();
    let bad = f.own_artifact_of_newest();
    let path = f.local.artifact_file(bad);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();

    f.expect_fallback_to_2(&["corrupt", &bad.to_hex()]);
    // The damaged copy was deleted when it was found (read twice, bad twice),
    // so checkpoint 3 now reports the artifact as missing.
    assert!(!path.exists(), "corrupt artifact still stored");
    f.expect_restore_error(
        CheckpointId(3),
        ErrorKind::NotFound,
        &["checkpoint 3", &bad.to_hex()],
    );

    // After the fallback the manager carries on from checkpoint 2.
    f.m.restore(CheckpointId(2)).unwrap();
    let c4 = f.m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(
        (c4.id, c4.kind, c4.chain_length),
        (CheckpointId(4), CheckpointKind::Incremental, 3)
    );
    f.scribble();
    f.m.restore_latest().unwrap().unwrap();
    assert_entries(
        &f.states[&CheckpointId(2)],
        &dump(&**f.m.backend()),
        "checkpoint 4",
    );
}

#[test]
fn truncated_newest_manifest_falls_back_to_previous_checkpoint() {
    let f = fixture();
    let path = f.local.manifest_file(CheckpointId(3));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

    f.expect_fallback_to_2(&["corrupt manifest", "checkpoint=3"]);
    f.expect_restore_error(
        CheckpointId(3),
        ErrorKind::Corruption,
        &["manifest", "checkpoint=3"],
    );
    let history = f.m.checkpoint_history().unwrap();
    assert_eq!(history.len(), 3);
    assert!(history[2].manifest.as_ref().unwrap_err().is_corruption());
    assert!(history[1].manifest.is_ok());
}

#[test]
fn missing_artifact_falls_back_with_not_found() {
    let f = fixture();
    let gone = f.own_artifact_of_newest();
    std::fs::remove_file(f.local.artifact_file(gone)).unwrap();

    f.expect_fallback_to_2(&["not found", &gone.to_hex()]);
    f.expect_restore_error(
        CheckpointId(3),
        ErrorKind::NotFound,
        &["checkpoint 3", &gone.to_hex()],
    );
}

#[test]
fn damaged_base_breaks_every_checkpoint_with_a_typed_error() {
    let f = fixture();
    // An artifact of checkpoint 1's full layer, shared by all three.
    let base = manifests(&*f.local.store)[&CheckpointId(1)]
        .artifacts()
        .next()
        .unwrap()
        .id;
    let path = f.local.artifact_file(base);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();

    let before = f.scribble();
    let err = f.m.restore_latest().expect_err("no readable checkpoint");
    assert!(err.is_corruption(), "{err}");
    let msg = err.to_string();
    for id in ["3 (", "2 (", "1 ("] {
        assert!(msg.contains(id), "{msg:?} does not list checkpoint {id}");
    }
    assert_entries(
        &before,
        &dump(&**f.m.backend()),
        "after a failed restore_latest",
    );
    assert_eq!(f.m.backend().stats().entries, 1);

    // The corrupt artifact was removed from the store, and the next
    // checkpoint is full, so it writes that data afresh: the store heals.
    assert!(
        !f.local.artifact_file(base).exists(),
        "corrupt artifact kept"
    );
    let info = f.m.checkpoint().unwrap().wait().unwrap();
    assert_eq!(info.kind, CheckpointKind::Full);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt
        .block_on(highwater::verify_store(&*f.local.store))
        .unwrap();
    let newest = report.last().unwrap();
    assert_eq!(newest.checkpoint, info.id);
    assert!(newest.is_sound(), "{newest:?}");
    f.m.restore(info.id).unwrap();
    assert_entries(
        &before,
        &dump(&**f.m.backend()),
        "after restoring the healed checkpoint",
    );
}

/// Issue 18: a file named `manifests/18446744073709551615.hwm` (a copy of
/// a real manifest, or garbage) made `StateManager::build` panic on
/// overflow, or in release wrap the next id to 0. Now building the manager
/// is a typed corruption error naming the id, and a real manifest re-labelled
/// with that id is refused when decoded; `restore_latest` falls back past it.
#[test]
fn a_forged_last_checkpoint_id_is_a_typed_error_not_a_wrap() {
    let f = fixture();
    let forged = f.local.manifest_file(CheckpointId(u64::MAX));
    assert!(forged.ends_with("manifests/18446744073709551615.hwm"));
    std::fs::copy(f.local.manifest_file(CheckpointId(3)), &forged).unwrap();
    let err = StateManager::builder()
        .backend(std::sync::Arc::new(highwater::memory::MemoryBackend::new()))
        .store(f.local.dyn_store())
        .config(config(true, 8, 10))
        .build()
        .expect_err("no id follows u64::MAX");
    assert!(err.is_corruption(), "{err}");
    assert!(err.to_string().contains("18446744073709551615"), "{err}");
    // The running manager: the forged manifest (checkpoint 3's bytes, so
    // its id does not match its name) is skipped, checkpoint 3 restored.
    f.scribble();
    f.m.restore_latest().unwrap().unwrap();
    assert_entries(
        &f.states[&CheckpointId(3)],
        &dump(&**f.m.backend()),
        "after skipping the forged manifest",
    );
}
