//! The merge crash test: the churn workload (`churn.rs`: checkpoints with
//! background merges, on-demand merges and retention passes in a loop over
//! a local store) is SIGKILLed at random moments, 32 rounds
//! (`HIGHWATER_CHECKPOINT_TORTURE_ROUNDS`; `cargo xtask torture checkpoint`
//! runs 1,000). After every
//! kill: every manifest's artifacts exist, the store verifies clean, and
//! every retained checkpoint restores to exactly the workload's state at
//! the step it recorded. Artifacts orphaned by a kill are gone once the
//! next run has collected garbage, and a final collection leaves only
//! referenced artifacts.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use highwater::cloud::ObjectCheckpointStore;
use highwater::core::ArtifactId;
use highwater_testkit::crash::{self, Victim};

use crate::churn::{self, CHILD, Churn, census, check_store};

/// Starts the churn child with `run`'s arguments.
fn spawn(run: &Churn) -> Victim {
    let mut cmd = crash::child(CHILD);
    cmd.args(run.args());
    Victim::spawn(cmd)
}

/// Kills the churn workload 32 times (or
/// `HIGHWATER_CHECKPOINT_TORTURE_ROUNDS`) at random moments; see the module
/// doc.
pub fn sigkill_during_checkpoints_merges_and_gc_leaves_every_retained_checkpoint_restorable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let started = Instant::now();
    let mut rng = crash::kill_schedule();
    let (mut kills, mut orphans_seen, mut checked) = (0, 0usize, 0usize);
    let mut orphans: HashSet<ArtifactId> = HashSet::new();
    let mut startup_collected = 0usize;
    let rounds: usize = std::env::var("HIGHWATER_CHECKPOINT_TORTURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    for round in 0..rounds {
        let after = Duration::from_millis(40 + rng.below(400));
        // SIGKILL: no destructors, no flush, no chance to finish a write.
        let ended = spawn(&Churn::new(&dir)).kill_after(after);
        // A run that ended before its kill must have succeeded.
        ended.assert_killed_or_succeeded(&format!("round {round}: churn"));
        if ended.killed {
            kills += 1;
        }
        let store = ObjectCheckpointStore::local(&dir).unwrap();
        let (stored, referenced, _) = census(&store).unwrap();
        // The run's first act is collecting garbage; once it got that far,
        // nothing unreferenced may remain of the previous kill's work.
        if let Some(line) = ended.line_starting("startup gc deleted") {
            let mut words = line.split_whitespace();
            let deleted: usize = words.nth(3).unwrap().parse().unwrap();
            let leftover: usize = words.nth(1).unwrap().parse().unwrap();
            assert_eq!(leftover, 0, "round {round}: {line}");
            if !orphans.is_empty() {
                assert!(
                    deleted > 0,
                    "round {round}: {} orphans were not collected: {line}",
                    orphans.len()
                );
                startup_collected += deleted;
            }
        }
        orphans = stored.difference(&referenced).copied().collect();
        orphans_seen += orphans.len();
        checked += check_store(&dir, churn::SEED, round);
    }
    // A run may finish before its kill now and then (2 of 32 allowed).
    assert!(
        kills * 16 >= rounds * 15,
        "only {kills} of {rounds} runs were killed"
    );
    // The next run's collection removes every leftover of the killed runs.
    let gc = spawn(&Churn {
        gc_only: true,
        ..Churn::new(&dir)
    })
    .wait();
    assert!(gc.status.success(), "{}", gc.stderr);
    let store = ObjectCheckpointStore::local(&dir).unwrap();
    let (stored, referenced, manifests) = census(&store).unwrap();
    assert_eq!(
        stored, referenced,
        "unreferenced artifacts after the final collection"
    );
    assert!(manifests > 0);
    check_store(&dir, churn::SEED, usize::MAX);
    assert!(
        orphans_seen == 0 || startup_collected > 0,
        "kills orphaned artifacts but no run collected any"
    );
    println!(
        "{kills} kills, {checked} checkpoint restores checked, {orphans_seen} orphaned artifacts seen, {startup_collected} collected by the next run, {:?}",
        started.elapsed()
    );
}
