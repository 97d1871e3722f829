//! Crash tests of workloads driving the facade: each kills a child process
//! with SIGKILL at random moments and checks what it left behind.
//!
//! A `harness = false` target (`highwater_testkit::crash`): the children
//! are this test binary run again, so the workloads need no binary or
//! hidden subcommand of their own.
//!
//! - `merge`: the churn workload (`churn`: checkpoints, background and
//!   on-demand merges, retention) killed for 32 rounds; every retained
//!   checkpoint restores to the workload's state at its step, and garbage
//!   collection leaves nothing unreferenced.

use std::process::ExitCode;

use highwater_testkit::crash::{self, CrashChild, CrashTest};

#[path = "crash/churn.rs"]
mod churn;
#[path = "crash/merge.rs"]
mod merge;

fn main() -> ExitCode {
    crash::main(
        &[CrashChild {
            name: churn::CHILD,
            run: churn::child,
        }],
        &[CrashTest {
            name: "merge::sigkill_during_checkpoints_merges_and_gc_leaves_every_retained_checkpoint_restorable",
            run: merge::sigkill_during_checkpoints_merges_and_gc_leaves_every_retained_checkpoint_restorable,
        }],
    )
}
