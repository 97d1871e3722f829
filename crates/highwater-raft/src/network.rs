//! TCP transport between nodes: authenticated, length-prefixed postcard
//! frames.
//!
//! Every connection starts with the handshake of [`crate::auth`] (both
//! sides prove they hold the cluster secret); then a frame is a
//! little-endian `u32` length, that many bytes of postcard and an
//! HMAC-SHA256 tag under the session key. A length above
//! [`MAX_FRAME_BYTES`] is refused before anything is allocated, and the
//! body buffer grows only as its bytes arrive, so a peer announcing a large
//! frame and sending nothing reserves nothing. Each connection carries one
//! request at a time; every request has a deadline (openraft's per-RPC TTL
//! for Raft traffic), and a connection that failed or timed out is dropped
//! and re-dialled on the next request. The server side's deadlines and
//! connection limit are in the coordinator (`serve`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use crate::auth::{ClusterSecret, Session, TAG_LEN, TOOL_IDENTITY, client_handshake};
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
    /// The leader's read index, confirmed by a majority (only the leader
    /// answers).
    ReadIndex,
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
    ReadIndex(Result<u64, ProposeError>),
}

fn frame_err(detail: impl std::fmt::Display) -> Error {
    Error::corrupt("raft frame", detail)
}

/// A client drops a connection unused for this long and dials again rather
/// than write into one the server may be closing (its idle timeout is
/// twice this).
pub(crate) const CLIENT_IDLE: Duration = Duration::from_secs(60);

/// Writes one frame, tagged for `session`.
pub(crate) async fn write_frame<T: Serialize>(
    stream: &mut TcpStream,
    session: &mut Session,
    value: &T,
) -> Result<()> {
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
    let len = body.len() as u32;
    let tag = session.seal(len, &body);
    let mut buf = Vec::with_capacity(4 + body.len() + TAG_LEN);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    buf.extend_from_slice(&tag);
    stream.write_all(&buf).await.map_err(|e| Error::Io {
        context: "writing a raft frame".into(),
        source: e,
    })
}

/// Reads one frame and checks its tag; `Ok(None)` on a clean end of
/// stream before a frame.
pub(crate) async fn read_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
    session: &mut Session,
) -> Result<Option<T>> {
    match read_frame_len(stream).await? {
        Some(len) => read_frame_body(stream, session, len).await.map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's length; `Ok(None)` on a clean end of stream. A length
/// above [`MAX_FRAME_BYTES`] is an error.
pub(crate) async fn read_frame_len(stream: &mut TcpStream) -> Result<Option<u32>> {
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
    let len = u32::from_le_bytes(len);
    if len as usize > MAX_FRAME_BYTES {
        return Err(frame_err(format!(
            "length above the limit: len={len} max={MAX_FRAME_BYTES}"
        )));
    }
    Ok(Some(len))
}

/// Reads the body and tag of a frame of `len` bytes, checks the tag and
/// decodes the body. The buffer grows as bytes arrive (never reserved from
/// the announced length).
pub(crate) async fn read_frame_body<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
    session: &mut Session,
    len: u32,
) -> Result<T> {
    let mut body = Vec::new();
    let got = (&mut *stream)
        .take(u64::from(len))
        .read_to_end(&mut body)
        .await
        .map_err(|e| Error::Io {
            context: format!("reading a raft frame body: len={len}"),
            source: e,
        })?;
    let mut tag = [0u8; TAG_LEN];
    if got != len as usize {
        return Err(Error::Io {
            context: format!("reading a raft frame body: len={len} got={got}"),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        });
    }
    stream.read_exact(&mut tag).await.map_err(|e| Error::Io {
        context: "reading a raft frame tag".into(),
        source: e,
    })?;
    session.open(len, &body, &tag)?;
    decode_body(&body)
}

/// Decodes the body of a frame whose tag was checked.
pub(crate) fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T> {
    postcard::from_bytes(body)
        .map_err(|e| frame_err(format!("undecodable: {e} len={}", body.len())))
}

/// How a client authenticates: the cluster secret, its own identity (a
/// node id, or [`TOOL_IDENTITY`]), and the node it expects to reach, if
/// known.
#[derive(Debug, Clone)]
pub(crate) struct ClientAuth {
    pub(crate) secret: ClusterSecret,
    pub(crate) me: NodeId,
    pub(crate) expect: Option<NodeId>,
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

/// One authenticated connection to one address, re-dialled after any
/// failure.
#[derive(Debug)]
pub(crate) struct Connection {
    addr: Option<String>,
    auth: ClientAuth,
    stream: Option<(TcpStream, Session, Instant)>,
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
    pub(crate) fn new(addr: Option<String>, auth: ClientAuth) -> Connection {
        Connection {
            addr,
            auth,
            stream: None,
        }
    }

    /// Sends `request` and waits for the reply, all within `timeout`.
    pub(crate) async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> std::result::Result<Reply, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        if self
            .stream
            .as_ref()
            .is_some_and(|(_, _, used)| used.elapsed() > CLIENT_IDLE)
        {
            self.stream = None;
        }
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
            let mut stream = stream;
            let auth = &self.auth;
            let session = match tokio::time::timeout_at(
                deadline,
                client_handshake(&mut stream, &auth.secret, auth.me, auth.expect),
            )
            .await
            {
                Ok(Ok(session)) => session,
                // Nothing was sent: the request can go elsewhere or later.
                Ok(Err(e)) => return Err(CallError::Unreachable(e)),
                Err(_) => {
                    return Err(CallError::Unreachable(Error::Io {
                        context: format!("authenticating to {addr}"),
                        source: std::io::ErrorKind::TimedOut.into(),
                    }));
                }
            };
            self.stream = Some((stream, session, Instant::now()));
        }
        let Some((stream, session, used)) = self.stream.as_mut() else {
            return Err(CallError::Unreachable(Error::Internal(
                "connection vanished".into(),
            )));
        };
        *used = Instant::now();
        let exchange = async {
            write_frame(stream, session, request).await?;
            match read_frame::<Reply>(stream, session).await? {
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
    pub(crate) secret: ClusterSecret,
    /// This node's id, which its clients authenticate as.
    pub(crate) me: NodeId,
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
            conn: Connection::new(
                self.book.resolve(target, Some(node)),
                ClientAuth {
                    secret: self.secret.clone(),
                    me: self.me,
                    expect: Some(target),
                },
            ),
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

fn tool(addr: SocketAddr, secret: &ClusterSecret) -> Connection {
    Connection::new(
        Some(addr.to_string()),
        ClientAuth {
            secret: secret.clone(),
            me: TOOL_IDENTITY,
            expect: None,
        },
    )
}

/// Asks the node at `addr` for its status (used by tools and tests),
/// authenticating with the cluster's `secret` as a tool.
pub async fn query_status(
    addr: SocketAddr,
    secret: &ClusterSecret,
    timeout: Duration,
) -> Result<crate::NodeStatus> {
    let mut conn = tool(addr, secret);
    match conn.call(&Request::Status, timeout).await {
        Ok(Reply::Status(s)) => Ok(*s),
        Ok(other) => Err(Error::corrupt(
            "raft reply",
            format!("unexpected reply to status: {other:?}"),
        )),
        Err(CallError::Unreachable(e) | CallError::Failed(e)) => Err(e),
    }
}

/// Asks the node at `addr` to trigger a checkpoint now, authenticating with
/// the cluster's `secret` as a tool. Only the leader accepts; another node
/// answers with an error naming the leader it knows.
pub async fn request_checkpoint(
    addr: SocketAddr,
    secret: &ClusterSecret,
    timeout: Duration,
) -> Result<highwater_core::CheckpointId> {
    let mut conn = tool(addr, secret);
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
