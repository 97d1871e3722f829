//! Conformance cases: concurrent writers during snapshots.

use super::*;

// ---------------------------------------------------------------------------
// Case 8: concurrency.

const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 4;

fn writer_key(w: usize, j: usize) -> Vec<u8> {
    encode_key(
        ((w * KEYS_PER_WRITER + j) * 31) as u16,
        "concurrent",
        "counter",
        &[w as u8],
        &[],
        &[j as u8],
    )
}

fn decode_counter(v: &[u8]) -> std::result::Result<u64, String> {
    let env = Envelope::decode(v).map_err(|e| format!("stored value is not an envelope: {e}"))?;
    let bytes: [u8; 8] = env
        .payload
        .try_into()
        .map_err(|_| format!("counter payload has {} bytes", env.payload.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Each writer's counter in `entries`: `None` when none of its keys is
/// present; an error when a batch is torn (some keys missing, or different
/// counters).
fn writer_counters(entries: &Entries) -> std::result::Result<[Option<u64>; WRITERS], String> {
    let mut out = [None; WRITERS];
    for (w, slot) in out.iter_mut().enumerate() {
        let vals: Vec<Option<u64>> = (0..KEYS_PER_WRITER)
            .map(|j| {
                entries
                    .get(&writer_key(w, j))
                    .map(|v| decode_counter(v))
                    .transpose()
            })
            .collect::<std::result::Result<_, _>>()?;
        if vals.iter().all(Option::is_none) {
            continue;
        }
        let first = vals[0];
        if vals.iter().any(|v| *v != first) {
            return Err(format!(
                "torn batch of writer {w}: counters per key {vals:?}"
            ));
        }
        *slot = first;
    }
    Ok(out)
}

/// Four writer threads each own four keys and write them in one batch per
/// iteration, all set to the iteration number, while the main thread takes
/// full and changes snapshots. Every snapshot (and every fold of a full
/// snapshot with the changes snapshots after it) must show each writer's
/// keys all at the same counter (batches are atomic with respect to
/// snapshots), and each writer's counter must never go backwards from one
/// snapshot to the next. The final state holds each writer's last counter.
pub fn concurrent_writers_during_snapshots(factory: BackendFactory<'_>) {
    const MIN_SNAPSHOTS: usize = 150;
    const MIN_ITERATIONS: u64 = 200;
    const MAX_ITERATIONS: u64 = 2_000_000;
    const DEADLINE: Duration = Duration::from_secs(30);
    let backend = factory();
    let b = &*backend;
    let ctx = format!(
        "backend={} case=concurrent_writers_during_snapshots",
        b.name()
    );
    let ctx = ctx.as_str();
    // Bystander entries that never change.
    let mut rng = SplitMix64::new(7);
    for i in 0..1000 {
        must(
            b.put(&numbered_key("bystander", "s", i), &random_value(&mut rng)),
            ctx,
        );
    }
    let progress: [AtomicU64; WRITERS] = Default::default();
    let stop = AtomicBool::new(false);

    std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (stop, progress) = (&stop, &progress);
                s.spawn(move || -> std::result::Result<u64, String> {
                    let keys: Vec<Vec<u8>> =
                        (0..KEYS_PER_WRITER).map(|j| writer_key(w, j)).collect();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Acquire) && i < MAX_ITERATIONS {
                        i += 1;
                        let mut batch = WriteBatch::new();
                        for k in &keys {
                            batch.put(k.clone(), plain_value(&i.to_be_bytes()));
                        }
                        b.write_batch(batch)
                            .map_err(|e| format!("writer {w} write_batch failed: {e}"))?;
                        progress[w].store(i, Ordering::Release);
                    }
                    Ok(i)
                })
            })
            .collect();

        let started = Instant::now();
        let observe = || -> std::result::Result<(usize, Entries), String> {
            let mut last = [0u64; WRITERS];
            let mut folded: Option<Entries> = None;
            let mut n = 0usize;
            loop {
                let kind = if n.is_multiple_of(3) {
                    SnapshotKind::Full
                } else {
                    SnapshotKind::Changes
                };
                let snap = b
                    .snapshot(kind)
                    .map_err(|e| format!("snapshot {n} ({kind:?}) failed: {e}"))?;
                let content = model::read_snapshot(&*snap)
                    .map_err(|e| format!("snapshot {n} ({kind:?}): {e}"))?;
                match kind {
                    SnapshotKind::Full => {
                        writer_counters(&content.puts())
                            .map_err(|e| format!("full snapshot {n}: {e}"))?;
                        folded = Some(content.puts());
                    }
                    SnapshotKind::Changes => {
                        // Within one change set a writer's keys are reported
                        // together or not at all, with one counter.
                        for w in 0..WRITERS {
                            let reported: Vec<Option<u64>> = (0..KEYS_PER_WRITER)
                                .map(|j| match content.entries.get(&writer_key(w, j)) {
                                    None => Ok(None),
                                    Some(None) => Err(format!(
                                        "changes snapshot {n} reports a delete of writer {w}'s key {j}, which is never deleted"
                                    )),
                                    Some(Some(v)) => decode_counter(v).map(Some),
                                })
                                .collect::<std::result::Result<_, _>>()?;
                            if reported.iter().any(|r| *r != reported[0]) {
                                return Err(format!(
                                    "changes snapshot {n}: torn batch of writer {w}: {reported:?}"
                                ));
                            }
                        }
                        let f = folded.as_mut().ok_or("changes before any full snapshot")?;
                        apply_changes(f, &content.entries);
                    }
                }
                let f = folded.as_ref().ok_or("no full snapshot yet")?;
                let counters = writer_counters(f)
                    .map_err(|e| format!("snapshot {n} ({kind:?}) folded: {e}"))?;
                for (w, c) in counters.iter().enumerate() {
                    let c = c.unwrap_or(0);
                    if c < last[w] {
                        return Err(format!(
                            "snapshot {n} ({kind:?}): writer {w}'s counter went back from {} to {c}",
                            last[w]
                        ));
                    }
                    last[w] = c;
                }
                n += 1;
                let progressed = progress
                    .iter()
                    .all(|p| p.load(Ordering::Acquire) >= MIN_ITERATIONS);
                if (n >= MIN_SNAPSHOTS && progressed) || started.elapsed() > DEADLINE {
                    return Ok((n, folded.unwrap_or_default()));
                }
            }
        };
        let observed = observe();
        stop.store(true, Ordering::Release);
        let finals: Vec<u64> = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => panic!("{ctx}: {e}"),
                Err(_) => panic!("{ctx}: a writer thread panicked"),
            })
            .collect();
        let (snapshots, mut folded) = observed.unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert!(
            finals.iter().all(|i| *i >= MIN_ITERATIONS) && snapshots >= MIN_SNAPSHOTS,
            "{ctx}: too little concurrency to judge within {DEADLINE:?}: snapshots={snapshots} writer iterations={finals:?}"
        );

        let last_changes = read(&*take(b, SnapshotKind::Changes, ctx), ctx);
        apply_changes(&mut folded, &last_changes.entries);
        let full = full_entries(b, ctx);
        check(diff_entries(&full, &folded), &format!("{ctx}: final fold"));
        let counters = writer_counters(&full).unwrap_or_else(|e| panic!("{ctx}: final: {e}"));
        for w in 0..WRITERS {
            assert_eq!(
                counters[w],
                Some(finals[w]),
                "{ctx}: writer {w}'s final counter"
            );
        }
        assert_eq!(
            full.len(),
            1000 + WRITERS * KEYS_PER_WRITER,
            "{ctx}: final entries"
        );
    });
}
