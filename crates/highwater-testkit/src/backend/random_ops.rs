//! Conformance cases: random operations against a model.

use super::*;

// ---------------------------------------------------------------------------
// Case 1: model-based random operations.

/// Random operations checked against a [`Model`]: puts, deletes, gets,
/// write batches (with repeated keys), prefix and range scans, full and
/// changes snapshots (each compared with the model), restores from earlier
/// full snapshots (re-read first, so they must not have changed) and
/// clears. Keys come from [`KeySpace::small`], values are plain envelopes.
/// Runs 32 seeds × 200 operations; see the crate docs for the environment
/// variables that change this.
pub fn model_based(factory: BackendFactory<'_>) {
    for seed in seeds(32) {
        model_based_seed(factory, seed, 200);
    }
}

/// One run of [`model_based`] with an explicit seed and operation count.
pub fn model_based_seed(factory: BackendFactory<'_>, seed: u64, ops: usize) {
    let mut run = ModelRun {
        backend: factory(),
        model: Model::new(),
        rng: SplitMix64::new(seed),
        space: KeySpace::small(),
        log: VecDeque::new(),
        seed,
        step: 0,
        captured: Vec::new(),
    };
    for step in 0..ops {
        run.step = step;
        run.one_op();
    }
    run.step = ops;
    run.finish();
}

/// A full snapshot kept for a later restore, with what it held.
struct Captured {
    snapshot: Arc<dyn StateSnapshot>,
    entries: Entries,
    taken_at: usize,
}

struct ModelRun {
    backend: Arc<dyn StateBackend>,
    model: Model,
    rng: SplitMix64,
    space: KeySpace,
    log: VecDeque<String>,
    seed: u64,
    step: usize,
    captured: Vec<Captured>,
}

impl ModelRun {
    const LOG_LEN: usize = 16;

    fn fail(&self, msg: &str) -> ! {
        let log: Vec<_> = self.log.iter().map(|l| format!("  {l}")).collect();
        panic!(
            "backend={} case=model_based seed={} step={}: {msg}\nrecent operations (oldest first):\n{}\nreproduce with HIGHWATER_TESTKIT_SEED={}",
            self.backend.name(),
            self.seed,
            self.step,
            log.join("\n"),
            self.seed
        );
    }

    fn note(&mut self, what: String) {
        if self.log.len() == Self::LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {what}", self.step));
    }

    fn ok<T>(&self, r: Result<T>, what: &str) -> T {
        match r {
            Ok(v) => v,
            Err(e) => self.fail(&format!("{what} failed: {e}")),
        }
    }

    fn verify(&self, r: std::result::Result<(), String>) {
        if let Err(e) = r {
            self.fail(&e);
        }
    }

    /// A key of the space, or half the time a live one (so deletes and
    /// reads mostly hit).
    fn some_key(&mut self) -> Vec<u8> {
        if !self.model.is_empty() && self.rng.chance(1, 2) {
            let i = self.rng.index(self.model.len());
            if let Some(k) = self.model.entries().keys().nth(i) {
                return k.clone();
            }
        }
        self.space.key(&mut self.rng)
    }

    fn one_op(&mut self) {
        match self.rng.below(100) {
            0..=24 => self.op_put(),
            25..=36 => self.op_delete(),
            37..=48 => self.op_get(),
            49..=60 => self.op_batch(),
            61..=68 => self.op_scan_prefix(),
            69..=76 => self.op_scan_range(),
            77..=82 => self.op_full_snapshot(),
            83..=90 => self.op_changes_snapshot(),
            91..=95 => self.op_restore(),
            96 => self.op_clear(),
            _ => self.op_stats(),
        }
    }

    fn op_put(&mut self) {
        let k = self.space.key(&mut self.rng);
        let v = random_value(&mut self.rng);
        self.note(format!(
            "put {} = {}",
            describe_key(&k),
            describe_value(Some(&v))
        ));
        self.ok(self.backend.put(&k, &v), "put");
        self.model.put(&k, &v);
    }

    fn op_delete(&mut self) {
        let k = self.some_key();
        self.note(format!("delete {}", describe_key(&k)));
        self.ok(self.backend.delete(&k), "delete");
        self.model.delete(&k);
    }

    fn op_get(&mut self) {
        let k = self.some_key();
        self.note(format!("get {}", describe_key(&k)));
        let got = self.ok(self.backend.get(&k), "get");
        let want = self.model.get(&k);
        if got.as_deref() != want {
            self.fail(&format!(
                "get {} returned {}, model has {}",
                describe_key(&k),
                describe_value(got.as_deref()),
                describe_value(want)
            ));
        }
    }

    fn op_batch(&mut self) {
        let n = 1 + self.rng.index(6);
        let mut batch = WriteBatch::new();
        let mut used: Vec<Vec<u8>> = Vec::new();
        for _ in 0..n {
            // Sometimes touch a key already in this batch: the later
            // mutation must win.
            let k = if !used.is_empty() && self.rng.chance(1, 5) {
                self.rng.pick(&used).clone()
            } else {
                self.some_key()
            };
            if self.rng.chance(7, 10) {
                batch.put(k.clone(), random_value(&mut self.rng));
            } else {
                batch.delete(k.clone());
            }
            used.push(k);
        }
        let desc: Vec<String> = batch
            .mutations()
            .iter()
            .map(|m| match m {
                highwater_core::Mutation::Put { key, value } => {
                    format!(
                        "put {} = {}",
                        describe_key(key),
                        describe_value(Some(value))
                    )
                }
                highwater_core::Mutation::Delete { key } => format!("delete {}", describe_key(key)),
            })
            .collect();
        self.note(format!("batch [{}]", desc.join("; ")));
        self.ok(self.backend.write_batch(batch.clone()), "write_batch");
        self.model.apply_batch(&batch);
    }

    fn op_scan_prefix(&mut self) {
        let p = self.space.prefix(&mut self.rng);
        self.note(format!("scan_prefix {}", describe_key(&p)));
        self.verify(check_prefix(&*self.backend, &self.model, &p));
    }

    fn op_scan_range(&mut self) {
        let mut a = self.space.bound(&mut self.rng);
        let mut b = self.space.bound(&mut self.rng);
        // Mostly well-ordered ranges; sometimes inverted ones on purpose.
        if a > b && self.rng.chance(4, 5) {
            std::mem::swap(&mut a, &mut b);
        }
        self.note(format!(
            "scan_range {} .. {}",
            describe_key(&a),
            describe_key(&b)
        ));
        self.verify(check_range(&*self.backend, &self.model, &a, &b));
    }

    fn op_full_snapshot(&mut self) {
        self.note("snapshot(Full)".into());
        let s = self.ok(self.backend.snapshot(SnapshotKind::Full), "snapshot(Full)");
        if s.kind() != SnapshotKind::Full {
            self.fail(&format!("snapshot(Full) reports kind {:?}", s.kind()));
        }
        let content = model::read_snapshot(&*s).unwrap_or_else(|e| self.fail(&e));
        let entries = content.puts();
        self.verify(
            self.model
                .check_full(&entries)
                .map_err(|e| format!("full snapshot: {e}")),
        );
        self.model.start_epoch();
        let captured = Captured {
            snapshot: s,
            entries,
            taken_at: self.step,
        };
        if self.captured.len() < 3 {
            self.captured.push(captured);
        } else {
            let i = self.rng.index(self.captured.len());
            self.captured[i] = captured;
        }
    }

    fn op_changes_snapshot(&mut self) {
        self.note("snapshot(Changes)".into());
        let s = self.ok(
            self.backend.snapshot(SnapshotKind::Changes),
            "snapshot(Changes)",
        );
        let content = model::read_snapshot(&*s).unwrap_or_else(|e| self.fail(&e));
        // A backend may answer with a full snapshot when it no longer
        // knows what changed: then it must hold exactly the live state.
        match s.kind() {
            SnapshotKind::Changes => self.verify(self.model.check_changes(&content.entries)),
            SnapshotKind::Full => self.verify(
                self.model
                    .check_full(&content.puts())
                    .map_err(|e| format!("snapshot(Changes) answered full: {e}")),
            ),
        }
        self.model.start_epoch();
    }

    fn op_restore(&mut self) {
        if self.captured.is_empty() {
            return self.op_full_snapshot();
        }
        let i = self.rng.index(self.captured.len());
        let (snapshot, entries, taken_at) = {
            let c = &self.captured[i];
            (c.snapshot.clone(), c.entries.clone(), c.taken_at)
        };
        // Re-read the snapshot: it must still hold what it held when taken.
        let content = model::read_snapshot(&*snapshot).unwrap_or_else(|e| self.fail(&e));
        self.verify(diff_entries(&entries, &content.puts()).map_err(|e| {
            format!("full snapshot taken at step {taken_at} changed afterwards: {e}")
        }));
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = content
            .records
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        if self.rng.chance(1, 3) {
            self.rng.shuffle(&mut records);
        }
        self.note(format!(
            "restore snapshot of step {taken_at} ({} entries)",
            records.len()
        ));
        // In blocks of random sizes, so restores see several blocks.
        let per_block = self.rng.below(records.len() as u64 + 1) as usize + 1;
        let mut it = records
            .chunks(per_block)
            .map(|c| Ok(c.iter().cloned().collect()));
        self.ok(self.backend.restore(&mut it), "restore");
        self.model.reset_to(entries);
        self.verify(
            check_prefix(&*self.backend, &self.model, &[])
                .map_err(|e| format!("after restore: {e}")),
        );
    }

    fn op_clear(&mut self) {
        self.note("clear".into());
        self.ok(self.backend.clear(), "clear");
        self.model.clear();
    }

    fn op_stats(&mut self) {
        self.note("stats".into());
        let got = self.backend.stats().entries;
        if got != self.model.len() as u64 {
            self.fail(&format!(
                "stats().entries={got}, model has {}",
                self.model.len()
            ));
        }
    }

    fn finish(&mut self) {
        self.op_stats();
        self.op_full_snapshot();
        self.verify(check_prefix(&*self.backend, &self.model, &[]));
        for c in &self.captured {
            let content = model::read_snapshot(&*c.snapshot).unwrap_or_else(|e| self.fail(&e));
            self.verify(diff_entries(&c.entries, &content.puts()).map_err(|e| {
                format!(
                    "full snapshot taken at step {} changed afterwards: {e}",
                    c.taken_at
                )
            }));
        }
    }
}
