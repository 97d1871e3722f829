//! Issue 18's attacks on the Raft port, each against a real node on
//! loopback: an unauthenticated client, a forged acknowledgement, a term
//! that would overflow openraft's arithmetic, snapshot chunks that would
//! make the node zero-fill memory, and a flood of connections. They speak
//! the wire protocol through the crate's own client code (so they can be
//! authenticated members where the attack needs one).

use std::sync::Arc;
use std::time::Duration;

use highwater_cloud::ObjectCheckpointStore;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{LogId, SnapshotMeta, StoredMembership, Vote};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{ClusterSecret, Session, TOOL_IDENTITY, client_handshake};
use crate::ledger::{Command, ManifestRef, NodeId, Outcome};
use crate::network::{Reply, Request, read_frame, write_frame};
use crate::{CheckpointCoordinator, DistributedConfig, query_status, request_checkpoint};

fn secret() -> ClusterSecret {
    ClusterSecret::new(b"the hostile tests' cluster secret".to_vec()).unwrap()
}

/// A one-node cluster (node 1) that has elected itself.
async fn single_node(dir: &std::path::Path, max_connections: usize) -> CheckpointCoordinator {
    let mut config =
        DistributedConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir).secret(secret());
    config.max_connections = max_connections;
    let store = Arc::new(ObjectCheckpointStore::local(dir.join("snapshots")).unwrap());
    let node = CheckpointCoordinator::start(config, store).await.unwrap();
    node.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    node
}

/// An authenticated connection to `node` as `me`.
async fn connect(node: &CheckpointCoordinator, me: NodeId) -> (TcpStream, Session) {
    let mut s = TcpStream::connect(node.local_addr()).await.unwrap();
    let session = client_handshake(&mut s, &secret(), me, Some(1))
        .await
        .unwrap();
    (s, session)
}

/// Sends `request`; the reply, or `None` when the node closed the
/// connection instead.
async fn exchange(s: &mut TcpStream, session: &mut Session, request: &Request) -> Option<Reply> {
    write_frame(s, session, request).await.ok()?;
    tokio::time::timeout(Duration::from_secs(10), read_frame::<Reply>(s, session))
        .await
        .expect("the node answers or closes within 10 s")
        .ok()
        .flatten()
}

/// Triggers a checkpoint, acknowledges it as node 1 and waits until it is
/// completed: the node still works.
async fn still_works(node: &CheckpointCoordinator) {
    node.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let id = request_checkpoint(node.local_addr(), &secret(), Duration::from_secs(5))
        .await
        .unwrap();
    acknowledge_and_wait(node, id, "node-1/m").await;
}

/// Acknowledges checkpoint `id` as node 1 with `manifest` and waits until
/// the node has it completed.
pub(crate) async fn acknowledge_and_wait(
    node: &CheckpointCoordinator,
    id: highwater_core::CheckpointId,
    manifest: &str,
) {
    node.report_completion(id, 1, ManifestRef(manifest.into()))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.latest_completed().map(|c| c.id) != Some(id) {
        assert!(
            std::time::Instant::now() < deadline,
            "{id:?} never completed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_secret_can_neither_trigger_nor_read() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), 256).await;
    let wrong = ClusterSecret::new(b"not the cluster's secret at all".to_vec()).unwrap();
    let err = request_checkpoint(node.local_addr(), &wrong, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");
    assert!(
        query_status(node.local_addr(), &wrong, Duration::from_secs(5))
            .await
            .is_err()
    );
    // The bytes a pre-authentication client sends are never taken for a
    // request: a frame that would have triggered a checkpoint before
    // (length, then the postcard of `Request::Trigger`) is refused.
    let mut s = TcpStream::connect(node.local_addr()).await.unwrap();
    let body = postcard::to_allocvec(&Request::Trigger).unwrap();
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame.resize(48, 0);
    s.write_all(&frame).await.unwrap();
    let mut buf = [0u8; 128];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "no reply, the connection is closed");
    assert_eq!(node.ledger().pending().count(), 0, "nothing was triggered");
    assert!(node.latest_completed().is_none());
    still_works(&node).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_participant_itself_may_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), 256).await;
    let id = node.trigger_checkpoint().await.unwrap();
    let forged = Request::Propose(Command::Ack {
        checkpoint: id,
        node: 1,
        manifest: ManifestRef("attacker/manifest".into()),
    });
    // A tool (holding the secret) and another member both try to
    // acknowledge for node 1: refused, the connection closed.
    for me in [TOOL_IDENTITY, 2] {
        let (mut s, mut session) = connect(&node, me).await;
        assert!(
            exchange(&mut s, &mut session, &forged).await.is_none(),
            "node {me} acknowledged for node 1"
        );
    }
    let record = node.ledger().get(id).unwrap().clone();
    assert!(record.acks.is_empty(), "{record:?}");
    // Node 1 itself may (as a follower forwarding its own ack would).
    let (mut s, mut session) = connect(&node, 1).await;
    let reply = exchange(&mut s, &mut session, &forged).await;
    assert!(
        matches!(reply, Some(Reply::Proposed(Ok(Outcome::Acked { .. })))),
        "{reply:?}"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_or_index_that_would_overflow_never_reaches_openraft() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), 256).await;
    let term_before = node.cluster_health().term;
    let huge = u64::MAX;
    let vote = |term| Vote::new(term, 2);
    let log_id = |term, index| LogId::new(openraft::CommittedLeaderId::new(term, 2), index);
    let attacks = [
        Request::Append(AppendEntriesRequest {
            vote: vote(huge),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        }),
        Request::Append(AppendEntriesRequest {
            vote: vote(term_before + 1),
            prev_log_id: Some(log_id(1, huge)),
            entries: vec![],
            leader_commit: None,
        }),
        Request::Vote(VoteRequest {
            vote: vote(huge),
            last_log_id: None,
        }),
        Request::Vote(VoteRequest {
            vote: vote(term_before + 1),
            last_log_id: Some(log_id(huge, 1)),
        }),
    ];
    for attack in &attacks {
        let (mut s, mut session) = connect(&node, 2).await;
        assert!(
            exchange(&mut s, &mut session, attack).await.is_none(),
            "accepted {attack:?}"
        );
    }
    // A member may not speak for another node either.
    let (mut s, mut session) = connect(&node, 3).await;
    let as_other = Request::Vote(VoteRequest {
        vote: vote(term_before + 1),
        last_log_id: None,
    });
    assert!(exchange(&mut s, &mut session, &as_other).await.is_none());
    let health = node.cluster_health();
    assert_eq!(health.term, term_before, "openraft never saw the vote");
    assert_eq!(health.leader, Some(1));
    still_works(&node).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_chunks_that_skip_ahead_or_pass_the_cap_are_refused_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), 256).await;
    let term = node.cluster_health().term + 1;
    let chunk = |id: &str, offset: u64, len: usize| {
        Request::Snapshot(InstallSnapshotRequest {
            vote: Vote::new(term, 2),
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: StoredMembership::default(),
                snapshot_id: id.into(),
            },
            offset,
            data: vec![7; len],
            done: false,
        })
    };
    let mismatch = |reply: Option<Reply>, expect: u64| match reply {
        Some(Reply::Snapshot(Err(openraft::error::RaftError::APIError(
            openraft::error::InstallSnapshotError::SnapshotMismatch(m),
        )))) => assert_eq!(m.expect.offset, expect, "{m:?}"),
        other => panic!("expected a snapshot mismatch, got {other:?}"),
    };
    let rss_before = vm_rss_bytes();
    let (mut s, mut session) = connect(&node, 2).await;
    // The two frames: 1 GiB and 8 GiB offsets of an unknown
    // snapshot; then past the 256 MiB cap and past u64.
    mismatch(
        exchange(&mut s, &mut session, &chunk("a", 1 << 30, 32)).await,
        0,
    );
    mismatch(
        exchange(&mut s, &mut session, &chunk("a", 8 << 30, 32)).await,
        0,
    );
    mismatch(
        exchange(&mut s, &mut session, &chunk("a", (256 << 20) - 16, 32)).await,
        0,
    );
    mismatch(
        exchange(&mut s, &mut session, &chunk("a", u64::MAX - 8, 32)).await,
        0,
    );
    // A snapshot started at 0 may continue where it stopped (or resend),
    // never skip ahead.
    let started = exchange(&mut s, &mut session, &chunk("b", 0, 100)).await;
    assert!(
        matches!(started, Some(Reply::Snapshot(Ok(_)))),
        "{started:?}"
    );
    mismatch(
        exchange(&mut s, &mut session, &chunk("b", 101, 10)).await,
        100,
    );
    mismatch(
        exchange(&mut s, &mut session, &chunk("b", 1 << 30, 10)).await,
        100,
    );
    let resumed = exchange(&mut s, &mut session, &chunk("b", 100, 10)).await;
    assert!(
        matches!(resumed, Some(Reply::Snapshot(Ok(_)))),
        "{resumed:?}"
    );
    let grown = vm_rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 200 << 20,
        "the node's memory grew by {grown} bytes (a 1 GiB offset used to add 1 GiB)"
    );
    drop(s);
    still_works(&node).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_the_node_serves_again_once_they_go() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), 4).await;
    // Four connections that send nothing (and, for two, half a frame
    // announcing 16 MiB after authenticating) hold every slot.
    let mut held = Vec::new();
    for i in 0..4u64 {
        if i < 2 {
            held.push(TcpStream::connect(node.local_addr()).await.unwrap());
        } else {
            let (mut s, _session) = connect(&node, 2).await;
            s.write_all(&(16u32 << 20).to_le_bytes()).await.unwrap();
            s.write_all(&[1, 2, 3]).await.unwrap();
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(node.local_addr()).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the fifth connection is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        query_status(node.local_addr(), &secret(), Duration::from_secs(1))
            .await
            .is_err()
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = query_status(node.local_addr(), &secret(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status.health.leader, Some(1));
    node.shutdown().await.unwrap();
}
