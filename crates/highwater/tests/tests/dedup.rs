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
