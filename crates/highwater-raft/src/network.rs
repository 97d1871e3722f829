//! TCP transport between nodes: length-prefixed postcard frames.
//!
//! A frame is a little-endian `u32` length followed by that many bytes of
//! postcard. A length above [`MAX_FRAME_BYTES`] is refused before anything
//! is allocated. Each connection carries one request at a time; every
//! request has a deadline (openraft's per-RPC TTL for Raft traffic), and a
//! connection that failed or timed out is dropped and re-dialled on the
//! next request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use highwater_core::{Error, ErrorKind, Result};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TypeConfig;
use crate::ledger::{Command, NodeId, Outcome};

/// The largest frame either side accepts, in bytes.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// A request from one node (or a tool) to another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// A ledger command forwarded to the leader.
    Propose(Command),
    /// The node's view of the cluster and its ledger.
    Status,
    /// Trigger a checkpoint now (only the leader accepts).
    Trigger,
}

/// Why a forwarded proposal failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ProposeError {
    /// The receiver is not the leader; this one may be.
    NotLeader(Option<NodeId>),
    /// Anything else, as text.
    Failed(String),
}

/// The reply to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Proposed(Result<Outcome, ProposeError>),
    Status(Box<crate::NodeStatus>),
}

fn frame_err(detail: impl std::fmt::Display) -> Error {
    Error::corrupt("raft frame", detail)
}

/// Writes one frame.
pub(crate) async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> Result<()> {
    let body = postcard::to_allocvec(value).map_err(|e| Error::Serialization {
        context: "raft frame".into(),
        source: e.into(),
    })?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(Error::InvalidArgument(format!(
            "raft frame too large to send: len={} max={MAX_FRAME_BYTES}",
            body.len()
        )));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    stream.write_all(&buf).await.map_err(|e| Error::Io {
        context: "writing a raft frame".into(),
        source: e,
    })
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame.
pub(crate) async fn read_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => {
            return Err(Error::Io {
                context: "reading a raft frame length".into(),
                source: e,
            });
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(frame_err(format!(
            "length above the limit: len={len} max={MAX_FRAME_BYTES}"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| Error::Io {
        context: format!("reading a raft frame body: len={len}"),
        source: e,
    })?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|e| frame_err(format!("undecodable: {e} len={len}")))
}

/// Where each node is reached: the addresses given at start (which win)
/// and, for nodes added later, the address in the membership.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddressBook {
    fixed: Arc<Mutex<BTreeMap<NodeId, String>>>,
}

impl AddressBook {
    pub(crate) fn new(peers: BTreeMap<NodeId, String>) -> AddressBook {
        AddressBook {
            fixed: Arc::new(Mutex::new(peers)),
        }
    }

    pub(crate) fn resolve(&self, id: NodeId, node: Option<&BasicNode>) -> Option<String> {
        let fixed = self.fixed.lock().unwrap_or_else(|p| p.into_inner());
        fixed
            .get(&id)
            .cloned()
            .or_else(|| node.map(|n| n.addr.clone()).filter(|a| !a.is_empty()))
    }

    pub(crate) fn insert(&self, id: NodeId, addr: String) {
        self.fixed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, addr);
    }
}

/// One connection to one address, re-dialled after any failure.
#[derive(Debug)]
pub(crate) struct Connection {
    addr: Option<String>,
    stream: Option<TcpStream>,
}

/// How a request failed: before anything was sent (unreachable) or after.
#[derive(Debug)]
pub(crate) enum CallError {
    Unreachable(Error),
    Failed(Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "unreachable: {e}"),
            CallError::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

impl Connection {
    pub(crate) fn new(addr: Option<String>) -> Connection {
        Connection { addr, stream: None }
    }

    /// Sends `request` and waits for the reply, all within `timeout`.
    pub(crate) async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> std::result::Result<Reply, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        if self.stream.is_none() {
            let Some(addr) = self.addr.clone() else {
                return Err(CallError::Unreachable(Error::InvalidArgument(
                    "no address for node".into(),
                )));
            };
            let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(&addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(CallError::Unreachable(Error::Io {
                        context: format!("connecting to {addr}"),
                        source: e,
                    }));
                }
                Err(_) => {
                    return Err(CallError::Unreachable(Error::Io {
                        context: format!("connecting to {addr}"),
                        source: std::io::ErrorKind::TimedOut.into(),
                    }));
                }
            };
            // Small frames must not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(CallError::Unreachable(Error::Internal(
                "connection vanished".into(),
            )));
        };
        let exchange = async {
            write_frame(stream, request).await?;
            match read_frame::<Reply>(stream).await? {
                Some(r) => Ok(r),
                None => Err(Error::Io {
                    context: "reading a raft reply".into(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                }),
            }
        };
        let result = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Error::Io {
                context: format!("raft request timed out after {timeout:?}"),
                source: std::io::ErrorKind::TimedOut.into(),
            }),
        };
        if result.is_err() {
            // The stream may hold half a frame; never reuse it.
            self.stream = None;
        }
        result.map_err(CallError::Failed)
    }
}

/// openraft's network factory: one [`PeerClient`] per target node.
#[derive(Debug, Clone)]
pub(crate) struct TcpNetwork {
    pub(crate) book: AddressBook,
    pub(crate) retry_backoff: Duration,
}

/// The client side of the Raft RPCs to one peer.
#[derive(Debug)]
pub(crate) struct PeerClient {
    target: NodeId,
    conn: Connection,
    retry_backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            conn: Connection::new(self.book.resolve(target, Some(node))),
            retry_backoff: self.retry_backoff,
        }
    }
}

fn rpc_error<E: std::error::Error>(target: NodeId, e: CallError) -> RPCError<NodeId, BasicNode, E> {
    let _ = target;
    match e {
        CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
        CallError::Failed(e) => RPCError::Network(NetworkError::new(&e)),
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&Error::corrupt(
        "raft reply",
        format!("unexpected reply to {what}"),
    )))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<
        AppendEntriesResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId>>,
    > {
        match self
            .conn
            .call(&Request::Append(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::Append(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected("append_entries")),
            Err(e) => Err(rpc_error(self.target, e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .conn
            .call(&Request::Snapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::Snapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected("install_snapshot")),
            Err(e) => Err(rpc_error(self.target, e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>>
    {
        match self.conn.call(&Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected("vote")),
            Err(e) => Err(rpc_error(self.target, e)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry_backoff))
    }
}

/// Asks the node at `addr` for its status (used by tools and tests).
pub async fn query_status(addr: SocketAddr, timeout: Duration) -> Result<crate::NodeStatus> {
    let mut conn = Connection::new(Some(addr.to_string()));
    match conn.call(&Request::Status, timeout).await {
        Ok(Reply::Status(s)) => Ok(*s),
        Ok(other) => Err(Error::corrupt(
            "raft reply",
            format!("unexpected reply to status: {other:?}"),
        )),
        Err(CallError::Unreachable(e) | CallError::Failed(e)) => Err(e),
    }
}

/// Asks the node at `addr` to trigger a checkpoint now. Only the leader
/// accepts; another node answers with an error naming the leader it knows.
pub async fn request_checkpoint(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<highwater_core::CheckpointId> {
    let mut conn = Connection::new(Some(addr.to_string()));
    match conn.call(&Request::Trigger, timeout).await {
        Ok(Reply::Proposed(Ok(Outcome::Triggered(id)))) => Ok(id),
        Ok(Reply::Proposed(Err(ProposeError::NotLeader(l)))) => Err(Error::consensus(
            ErrorKind::Unavailable,
            format!("trigger a checkpoint at {addr}"),
            format!("not the leader: leader={l:?}"),
        )),
        Ok(Reply::Proposed(Err(ProposeError::Failed(text)))) => Err(Error::consensus(
            ErrorKind::Unavailable,
            format!("trigger a checkpoint at {addr}"),
            crate::error::RemoteFailure(text),
        )),
        Ok(other) => Err(Error::consensus(
            ErrorKind::Internal,
            format!("trigger a checkpoint at {addr}"),
            format!("unexpected reply: {other:?}"),
        )),
        Err(CallError::Unreachable(e) | CallError::Failed(e)) => Err(e),
    }
}
