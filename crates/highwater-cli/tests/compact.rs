//! `highwater compact`, `highwater gc` and `highwater inspect` on a store
//! with merged chains and deduplicated chunks.
//!
//! The store is written in-process by the churn workload of the facade's
//! crash tests (`crates/highwater/tests/crash/churn.rs`, included here so
//! the workload and its checks have one source), and checked with its
//! `check_store` after compaction.

use std::process::Command;

use highwater::CheckpointStore;
use highwater::cloud::ObjectCheckpointStore;
use highwater::core::load_manifest;

#[expect(
    dead_code,
    reason = "the crash child's entry point and arguments serve the facade's crash test"
)]
#[path = "../../highwater/tests/crash/churn.rs"]
mod churn;

use churn::{Churn, block_on, census, check_store};

const BIN: &str = env!("CARGO_BIN_EXE_highwater");

/// `highwater compact` merges the newest chain into a new full checkpoint
/// with the same state, log position and properties plus `compacted_from`;
/// `highwater gc --keep 1` then leaves that checkpoint alone, with every
/// other manifest and every unreferenced artifact gone; `inspect --json`
/// shows the chains.
/// Runs `highwater <args> <dir>`, which must succeed, and parses its JSON
/// output.
fn json_of(args: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let out = Command::new(BIN).args(args).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "highwater {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn compact_then_gc_keeps_the_state_and_drops_everything_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    churn::run(&Churn {
        until: 600,
        ..Churn::new(&dir)
    })
    .unwrap();
    let store = ObjectCheckpointStore::local(&dir).unwrap();
    let ids = block_on(store.list_manifests()).unwrap();
    let newest = *ids.last().unwrap();
    let source = block_on(load_manifest(&store, newest)).unwrap();
    assert!(source.layers.len() > 1, "the workload ends on a chain");

    let v = json_of(&["inspect", "--json"], &dir);
    let rows = v["checkpoints"].as_array().unwrap();
    let row = rows.iter().find(|r| r["id"] == newest.0).unwrap();
    assert_eq!(row["depth"], source.layers.len() - 1);
    assert_eq!(row["base"], source.layers[0].checkpoint_id.0);
    // left and right hold identical state: their chunks are stored once.
    assert!(row["dedup_saved_bytes"].as_u64().unwrap() > 0, "{row}");
    assert!(v["storage"]["dedup_saved_bytes"].as_u64().unwrap() > 0);

    let v = json_of(&["compact", "--json"], &dir);
    let compacted = highwater::CheckpointId(v["compact"]["compacted"].as_u64().unwrap());
    assert_eq!(compacted, newest.next().unwrap());
    assert_eq!(v["compact"]["source"], newest.0);
    let m = block_on(load_manifest(&store, compacted)).unwrap();
    assert_eq!(m.kind, highwater::CheckpointKind::Full);
    assert_eq!(m.layers.len(), 1);
    assert_eq!(m.wal_position, source.wal_position);
    assert_eq!(
        m.properties.get("compacted_from"),
        Some(&newest.0.to_string())
    );

    let v = json_of(&["gc", "--keep", "1", "--json"], &dir);
    assert_eq!(v["gc"]["retained"], serde_json::json!([compacted.0]));
    assert!(v["gc"]["artifacts_deleted"].as_u64().unwrap() > 0);
    let (stored, referenced, manifests) = census(&store).unwrap();
    assert_eq!((manifests, &stored), (1, &referenced));
    // The compacted checkpoint holds the state of the chain it replaced.
    assert_eq!(check_store(&dir, churn::SEED, 0), 1);
}
