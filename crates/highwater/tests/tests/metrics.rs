//! What the library emits through the `metrics` facade without any
//! exporter: restores (counted on the calling thread, so a thread-local
//! recorder sees exactly this test's) and the backend gauges. (Checkpoint
//! metrics come from the checkpointer's worker thread; the CLI's
//! Prometheus test covers them.)

use std::sync::Arc;

use highwater::memory::MemoryBackend;
use highwater::prelude::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

/// One snapshot of the recorder (taking one resets its counters).
type Snapshot = Vec<(CompositeKey, DebugValue)>;

use crate::common::LocalStore;

/// The value of metric `name` with exactly the labels `labels`.
fn value<'s>(
    s: &'s Snapshot,
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> &'s DebugValue {
    let found: Vec<&DebugValue> = s
        .iter()
        .filter(|(k, _)| {
            let key = k.key();
            let mut have: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            have.sort_unstable();
            let mut want = labels.to_vec();
            want.sort_unstable();
            k.kind() == kind && key.name() == name && have == want
        })
        .map(|(_, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found.into_iter().next().unwrap()
}

fn counter(s: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(s, MetricKind::Counter, name, labels) {
        DebugValue::Counter(n) => *n,
        other => panic!("{name}: {other:?}"),
    }
}

fn gauge(s: &Snapshot, name: &str, labels: &[(&str, &str)]) -> f64 {
    match value(s, MetricKind::Gauge, name, labels) {
        DebugValue::Gauge(g) => g.into_inner(),
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn restores_and_backend_size_are_emitted_through_the_metrics_facade() {
    use highwater::recovery::metrics as r;
    let local = LocalStore::new();
    let m = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(local.dyn_store())
        .build()
        .unwrap();
    let n: ValueState<u32, u64> = m
        .keyed_state("op")
        .unwrap()
        .value_state(&ValueStateDescriptor::new("n"))
        .unwrap();
    for k in 0..10 {
        n.update(&k, &u64::from(k)).unwrap();
    }
    let first = m.checkpoint().unwrap().wait().unwrap();
    n.update(&99, &99).unwrap();
    let second = m.checkpoint().unwrap().wait().unwrap();

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        // An exact restore of the first checkpoint: 10 entries.
        m.restore(first.id).unwrap();
        // The newest manifest cut short: the latest restore falls back to
        // the first checkpoint, and says so.
        let newest = local.manifest_file(second.id);
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
        let info = m.restore_latest().unwrap().unwrap();
        assert_eq!(info.stats.checkpoint, Some(first.id));
        assert_eq!(info.stats.fallbacks.len(), 1);
        m.record_backend_metrics();
    });
    let s: Snapshot = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect();

    assert_eq!(
        counter(&s, r::RESTORES_COMPLETED, &[("source", "checkpoint")]),
        2
    );
    assert_eq!(counter(&s, r::RESTORE_ENTRIES, &[]), 20);
    assert_eq!(counter(&s, r::RESTORE_FALLBACKS, &[]), 1);
    assert!(counter(&s, r::RESTORE_BYTES_FETCHED, &[]) > 0);
    assert_eq!(
        gauge(&s, r::LAST_RESTORE_CHECKPOINT, &[]),
        first.id.0 as f64
    );
    assert!(gauge(&s, r::LAST_RESTORE_DURATION, &[]) > 0.0);
    match value(&s, MetricKind::Histogram, r::RESTORE_DURATION, &[]) {
        DebugValue::Histogram(samples) => assert_eq!(samples.len(), 2),
        other => panic!("{other:?}"),
    }
    let backend = [("backend", "memory")];
    assert_eq!(
        gauge(&s, highwater::metrics::BACKEND_ENTRIES, &backend),
        10.0
    );
    assert!(gauge(&s, highwater::metrics::BACKEND_BYTES, &backend) > 0.0);
}

#[test]
fn backend_operations_are_counted_by_op() {
    use highwater::metrics::BACKEND_OPERATIONS;
    let local = LocalStore::new();
    let m = StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(local.dyn_store())
        .build()
        .unwrap();
    let n: ValueState<u32, u64> = m
        .keyed_state("op")
        .unwrap()
        .value_state(&ValueStateDescriptor::new("n"))
        .unwrap();
    for k in 0..3 {
        n.update(&k, &1).unwrap();
    }
    assert_eq!(n.get(&0).unwrap(), Some(1));
    assert_eq!(n.get(&7).unwrap(), None);
    n.clear(&1).unwrap();
    // A checkpoint reads the backend itself, not through the handles: not
    // counted.
    m.checkpoint().unwrap().wait().unwrap();

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || m.record_backend_metrics());
    let s: Snapshot = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect();
    let ops = |op| counter(&s, BACKEND_OPERATIONS, &[("backend", "memory"), ("op", op)]);
    assert_eq!(ops("put"), 3);
    assert_eq!(ops("get"), 2);
    assert_eq!(ops("delete"), 1);
    assert_eq!(ops("batch"), 0);
    assert_eq!(ops("scan"), 0);
}
