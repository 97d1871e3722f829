//! Global checkpoints of a job whose state is split over several
//! participants (subtasks in one process, or nodes of a cluster).
//!
//! Each participant owns a key-group range and checkpoints its own part
//! into its own scope of one shared [`CheckpointStore`]
//! ([`participant_scope`], through [`CheckpointStore::scoped`]). A
//! [`Coordinator`] decides which checkpoint ids are taken (barriers),
//! collects each participant's acknowledgement ([`PartRef`]) and declares a
//! checkpoint globally complete only when every participant's part is
//! durable. Restores read the newest [`GlobalCheckpoint`], never a
//! participant's newest local manifest on its own, so all participants
//! resume from the same cut.
//!
//! Two coordinators implement the trait: an in-process one in the
//! `highwater` facade (several subtasks of one process) and the
//! Raft-replicated ledger of `highwater-raft` (nodes of a cluster). An
//! engine moves from one to the other by changing the coordinator it hands
//! the state manager, not its code.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::manifest::CheckpointId;
use crate::store::CheckpointStore;

/// Identifies one participant of a global checkpoint: a subtask index for
/// the in-process coordinator, a Raft node id in a cluster.
pub type ParticipantId = u64;

/// The longest scope name accepted (see [`valid_scope`]).
pub const MAX_SCOPE_LEN: usize = 200;

/// The scope of participant `p` in the shared store: `participants/<p>`.
pub fn participant_scope(p: ParticipantId) -> String {
    format!("participants/{p}")
}

/// True when `scope` is a safe relative name inside a store: 1 to
/// [`MAX_SCOPE_LEN`] bytes of `/`-separated segments, each non-empty, made
/// of ASCII letters, digits, `-` and `_` (no `.`/`..`, no absolute path, no
/// empty segment).
pub fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= MAX_SCOPE_LEN
        && scope.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Where one participant's part of a global checkpoint is: its scope in the
/// shared store and the id of the manifest it committed there (the global
/// checkpoint's id). Written as `<scope>@<id>` in acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartRef {
    /// The participant's scope in the shared store.
    pub scope: String,
    /// The manifest it committed there.
    pub checkpoint: CheckpointId,
}

impl fmt::Display for PartRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.scope, self.checkpoint.0)
    }
}

impl PartRef {
    /// Parses `<scope>@<id>`; anything else (an unsafe scope, a bad id) is
    /// a corruption error naming the text: a reference comes from a
    /// ledger, which a peer may have written.
    pub fn parse(text: &str) -> Result<PartRef> {
        let bad = |why: &str| {
            Err(Error::corrupt(
                "checkpoint part reference",
                format!("{why}: {:?}", text.chars().take(64).collect::<String>()),
            ))
        };
        let Some((scope, id)) = text.rsplit_once('@') else {
            return bad("no '@'");
        };
        if !valid_scope(scope) {
            return bad("unsafe scope");
        }
        let Ok(id) = id.parse::<u64>() else {
            return bad("bad checkpoint id");
        };
        Ok(PartRef {
            scope: scope.to_string(),
            checkpoint: CheckpointId(id),
        })
    }
}

/// A globally completed checkpoint: every participant's part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalCheckpoint {
    /// The checkpoint id (each part's manifest has this id in its scope).
    pub id: CheckpointId,
    /// Each participant's part.
    pub parts: BTreeMap<ParticipantId, PartRef>,
}

/// Where a global checkpoint is, as a coordinator knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalStatus {
    /// Triggered, not every part acknowledged yet.
    Pending,
    /// Every part acknowledged: restorable.
    Completed,
    /// Aborted: its parts are garbage.
    Aborted,
    /// Not known (never triggered, or older than the coordinator's history).
    Unknown,
}

/// One participant's view of the coordinator of a job's global
/// checkpoints. Methods block; they are called from the processing thread
/// (barriers, restores) and from a checkpoint's completion (acknowledge).
pub trait Coordinator: Send + Sync + fmt::Debug {
    /// This participant's id.
    fn participant(&self) -> ParticipantId;

    /// The oldest checkpoint newer than `after` that this participant must
    /// take its part of now, if any (a barrier). Cheap: called at every
    /// event boundary.
    fn next_barrier(&self, after: Option<CheckpointId>) -> Result<Option<CheckpointId>>;

    /// Reports that this participant's part of `checkpoint` is durable at
    /// `part`. The checkpoint completes once every participant has.
    fn acknowledge(&self, checkpoint: CheckpointId, part: &PartRef) -> Result<()>;

    /// Reports that this participant could not take its part of
    /// `checkpoint`; the checkpoint is aborted.
    fn decline(&self, checkpoint: CheckpointId, reason: &str) -> Result<()>;

    /// The newest globally completed checkpoints, at most `limit`, newest
    /// first.
    fn completed(&self, limit: usize) -> Result<Vec<GlobalCheckpoint>>;

    /// What the coordinator knows of `checkpoint`.
    fn status(&self, checkpoint: CheckpointId) -> Result<GlobalStatus>;

    /// Brings this participant's view of the completed checkpoints up to
    /// date with the coordinator's: afterwards [`completed`](Self::completed)
    /// and [`status`](Self::status) answer at least as newly as any
    /// participant's did when this was called. Called before a restore (a
    /// participant that restarts may learn the history late and would
    /// otherwise restore a checkpoint its peers have moved past). The
    /// default does nothing: for coordinators whose view is always current.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// The newest globally completed checkpoint.
    fn latest_completed(&self) -> Result<Option<GlobalCheckpoint>> {
        Ok(self.completed(1)?.into_iter().next())
    }
}

/// Opens participant `p`'s scope of `store`.
pub fn participant_store(
    store: &dyn CheckpointStore,
    p: ParticipantId,
) -> Result<std::sync::Arc<dyn CheckpointStore>> {
    store.scoped(&participant_scope(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_refs_round_trip_and_refuse_unsafe_text() {
        let p = PartRef {
            scope: participant_scope(7),
            checkpoint: CheckpointId(42),
        };
        assert_eq!(p.to_string(), "participants/7@42");
        assert_eq!(PartRef::parse(&p.to_string()).unwrap(), p);
        for bad in [
            "",
            "participants/7",
            "../x@1",
            "/abs@1",
            "a//b@1",
            "a/./b@1",
            "a@-1",
            "a@18446744073709551616",
            "a b@1",
        ] {
            let e = PartRef::parse(bad).unwrap_err();
            assert!(e.is_corruption(), "{bad:?}: {e}");
        }
        assert!(!valid_scope(&"a".repeat(MAX_SCOPE_LEN + 1)));
        assert!(valid_scope(&"a".repeat(MAX_SCOPE_LEN)));
    }
}
