//! Entry points for fuzzing the port's decoders (feature `fuzzing`): what
//! a node does with the bytes of an authenticated frame and of a snapshot
//! before openraft sees them, and real encodings to seed a corpus. Used by
//! `crates/highwater-fuzz` (the stable mutation test) and `fuzz/` (cargo
//! fuzz). Every function returns a typed error for bad input; a panic or
//! an unbounded allocation is a bug.

use std::collections::BTreeSet;

use highwater_core::{CheckpointId, Result};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use crate::coordinator::{SnapshotReceipt, refusal};
use crate::ledger::{Command, Ledger, ManifestRef};
use crate::network::{Request, decode_body};
use crate::state_machine::{SnapshotBody, decode_snapshot, encode_snapshot};

/// Decodes the body of a frame received from node `peer` (the tag already
/// checked) and applies the checks a node makes before openraft or the
/// ledger sees it: the refusal rules and, for a snapshot chunk, the size
/// and offset check of a fresh receipt.
pub fn frame_body(peer: u64, body: &[u8]) -> Result<()> {
    let request: Request = decode_body(body)?;
    if let Some(why) = refusal(peer, &request) {
        return Err(highwater_core::Error::InvalidArgument(why));
    }
    if let Request::Snapshot(r) = &request {
        let receipt = SnapshotReceipt::default();
        receipt.check(r).map_err(|resume| {
            highwater_core::Error::InvalidArgument(format!(
                "snapshot chunk refused: resume={resume}"
            ))
        })?;
    }
    Ok(())
}

/// Decodes a snapshot as a node reads one (magic, version, checksum,
/// postcard body).
pub fn snapshot(bytes: &[u8]) -> Result<()> {
    decode_snapshot(bytes).map(|_| ())
}

/// `payload` framed as a snapshot with a correct checksum, so mutations
/// of the payload reach the postcard decoder instead of stopping at the
/// checksum.
pub fn snapshot_with_payload(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 18);
    out.extend_from_slice(&encode_snapshot(&empty_body()).unwrap_or_default()[..10]);
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn empty_body() -> SnapshotBody {
    SnapshotBody {
        last_applied: None,
        membership: StoredMembership::default(),
        ledger: Ledger::new(),
    }
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Real frame bodies of every request kind a node accepts from node 1.
pub fn sample_frame_bodies() -> Vec<Vec<u8>> {
    let membership = Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        [1u64, 2, 3]
            .into_iter()
            .map(|n| (n, BasicNode::new(format!("127.0.0.1:{}", 7000 + n))))
            .collect::<std::collections::BTreeMap<_, _>>(),
    );
    let trigger = Command::Trigger {
        checkpoint: CheckpointId(4),
        time_ms: 1_700_000_000_000,
        participants: BTreeSet::from([1, 2, 3]),
    };
    let requests = [
        Request::Vote(VoteRequest {
            vote: Vote::new(3, 1),
            last_log_id: Some(log_id(2, 17)),
        }),
        Request::Append(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(3, 17)),
            entries: vec![
                Entry {
                    log_id: log_id(3, 18),
                    payload: EntryPayload::Normal(trigger.clone()),
                },
                Entry {
                    log_id: log_id(3, 19),
                    payload: EntryPayload::Membership(membership.clone()),
                },
                Entry {
                    log_id: log_id(3, 20),
                    payload: EntryPayload::Blank,
                },
            ],
            leader_commit: Some(log_id(3, 17)),
        }),
        Request::Snapshot(InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 20)),
                last_membership: StoredMembership::new(Some(log_id(3, 19)), membership),
                snapshot_id: "3-20-1".into(),
            },
            offset: 0,
            data: sample_snapshot(),
            done: true,
        }),
        Request::Propose(trigger),
        Request::Propose(Command::Ack {
            checkpoint: CheckpointId(4),
            node: 1,
            manifest: ManifestRef("node-1/manifests/00000000000000000004.hwm".into()),
        }),
        Request::Status,
        Request::Trigger,
    ];
    requests
        .iter()
        .filter_map(|r| postcard::to_allocvec(r).ok())
        .collect()
}

/// A real snapshot of a ledger with a completed, a pending and an aborted
/// checkpoint.
pub fn sample_snapshot() -> Vec<u8> {
    let mut ledger = Ledger::new();
    let mut index = 0;
    let mut apply = |c: Command| {
        index += 1;
        ledger.apply(index, &c);
    };
    for id in 1..=3 {
        apply(Command::Trigger {
            checkpoint: CheckpointId(id),
            time_ms: 1_700_000_000_000 + id,
            participants: BTreeSet::from([1, 2]),
        });
    }
    for node in [1, 2] {
        apply(Command::Ack {
            checkpoint: CheckpointId(1),
            node,
            manifest: ManifestRef(format!("node-{node}/m1")),
        });
    }
    apply(Command::Complete {
        checkpoint: CheckpointId(1),
    });
    apply(Command::Abort {
        checkpoint: CheckpointId(2),
        reason: crate::ledger::AbortReason::Timeout,
    });
    let body = SnapshotBody {
        last_applied: Some(log_id(2, index)),
        membership: StoredMembership::default(),
        ledger,
    };
    encode_snapshot(&body).unwrap_or_default()
}
