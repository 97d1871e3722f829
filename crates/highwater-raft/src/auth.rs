//! Authentication of every connection between nodes (and from tools): a
//! challenge–response handshake over a per-cluster shared secret, then an
//! HMAC on every frame.
//!
//! ## Handshake (before any request is read)
//!
//! ```text
//! client → server  hello      "HWRAUTH1" ‖ client id (u64 LE) ‖ client nonce (32 bytes)
//! server → client  challenge  "HWRAUTH1" ‖ server id (u64 LE) ‖ server nonce (32) ‖ server tag (32)
//! client → server  proof      client tag (32)
//! ```
//!
//! With `t = client nonce ‖ server nonce ‖ client id ‖ server id` and
//! HMAC-SHA256 keyed with the cluster secret, the server tag is
//! `HMAC("highwater-raft server" ‖ t)` and the client tag
//! `HMAC("highwater-raft client" ‖ t)`: each side proves it holds the secret
//! for this exchange only (fresh random nonces from both sides, so a
//! recorded handshake cannot be replayed). Tags are compared in constant
//! time. Both then derive the session key `HMAC("highwater-raft session" ‖
//! t)`.
//!
//! ## Frames
//!
//! After the handshake every frame is `len (u32 LE) ‖ body ‖ tag (32)`,
//! where the tag is `HMAC_session(direction ‖ sequence number (u64 LE) ‖
//! len ‖ body)`, the direction 0 for client to server and 1 back, and the
//! sequence number counts the frames of that direction from 0. A frame
//! that is altered, replayed, reordered, dropped or sent the other way
//! fails its tag, and the connection is dropped. Frames are authenticated,
//! not encrypted: whoever can read the network sees the ledger.
//!
//! ## Trust model
//!
//! See `docs/raft.md`: whoever holds the cluster secret is a member;
//! identity 0 is a tool (status, trigger), any other identity a node.

use std::path::Path;
use std::sync::Arc;

use highwater_core::{Error, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ledger::NodeId;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 8] = b"HWRAUTH1";
const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 tag.
pub(crate) const TAG_LEN: usize = 32;
const HELLO_LEN: usize = 8 + 8 + NONCE_LEN;
const CHALLENGE_LEN: usize = 8 + 8 + NONCE_LEN + TAG_LEN;

/// The identity tools (status queries, manual triggers) authenticate as: a
/// holder of the secret that is not a node of the cluster.
pub const TOOL_IDENTITY: NodeId = 0;

/// The per-cluster shared secret every node and tool of a cluster holds.
///
/// At least [`ClusterSecret::MIN_LEN`] bytes; generate it randomly (for
/// example `head -c 32 /dev/urandom | base64 > secret`) and give it to every
/// node through a file readable only by the node's user. `Debug` does not
/// show it.
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret(<{} bytes>)", self.0.len())
    }
}

impl ClusterSecret {
    /// The shortest secret accepted, in bytes.
    pub const MIN_LEN: usize = 16;
    /// The longest secret file read, in bytes.
    pub const MAX_LEN: usize = 4096;

    /// A secret of these bytes; fails with [`Error::InvalidArgument`] when
    /// shorter than [`Self::MIN_LEN`] or longer than [`Self::MAX_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<ClusterSecret> {
        let bytes = bytes.into();
        if bytes.len() < Self::MIN_LEN || bytes.len() > Self::MAX_LEN {
            return Err(Error::InvalidArgument(format!(
                "the raft cluster secret must have {}..={} bytes: len={}",
                Self::MIN_LEN,
                Self::MAX_LEN,
                bytes.len()
            )));
        }
        Ok(ClusterSecret(bytes.into()))
    }

    /// A new secret for a secret file: 32 bytes from the operating
    /// system's random source, as 64 hex digits (text, so it can be
    /// copied between machines).
    pub fn generate_hex() -> Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| {
            Error::Internal(format!("no randomness for a raft cluster secret: {e}"))
        })?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Reads the secret from a file: its bytes without trailing ASCII
    /// whitespace (so a line written by `echo` works).
    pub fn from_file(path: impl AsRef<Path>) -> Result<ClusterSecret> {
        use std::io::Read;
        let path = path.as_ref();
        let f = std::fs::File::open(path).map_err(|e| Error::Io {
            context: format!("opening the raft secret file {}", path.display()),
            source: e,
        })?;
        let mut bytes = Vec::new();
        // One byte more than allowed tells an oversized file apart.
        f.take(Self::MAX_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Io {
                context: format!("reading the raft secret file {}", path.display()),
                source: e,
            })?;
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        ClusterSecret::new(bytes).map_err(|e| match e {
            Error::InvalidArgument(m) => {
                Error::InvalidArgument(format!("{m}: file={}", path.display()))
            }
            other => other,
        })
    }

    fn mac(&self, label: &[u8], transcript: &[u8]) -> [u8; TAG_LEN] {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("hmac takes keys of any length");
        m.update(label);
        m.update(transcript);
        m.finalize().into_bytes().into()
    }

    fn verify(&self, label: &[u8], transcript: &[u8], tag: &[u8]) -> bool {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("hmac takes keys of any length");
        m.update(label);
        m.update(transcript);
        m.verify_slice(tag).is_ok()
    }
}

/// An authenticated connection's frame keys and counters.
#[derive(Clone)]
pub(crate) struct Session {
    key: [u8; TAG_LEN],
    send_dir: u8,
    send_seq: u64,
    recv_seq: u64,
    /// Who the other side authenticated as.
    pub(crate) peer: NodeId,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn tag(&self, dir: u8, seq: u64, len: u32, body: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("hmac takes keys of any length");
        m.update(&[dir]);
        m.update(&seq.to_le_bytes());
        m.update(&len.to_le_bytes());
        m.update(body);
        m
    }

    /// The tag of the next frame this side sends (and counts it).
    pub(crate) fn seal(&mut self, len: u32, body: &[u8]) -> [u8; TAG_LEN] {
        let tag = self
            .tag(self.send_dir, self.send_seq, len, body)
            .finalize()
            .into_bytes()
            .into();
        self.send_seq += 1;
        tag
    }

    /// Checks the tag of the next frame received (and counts it).
    pub(crate) fn open(&mut self, len: u32, body: &[u8], tag: &[u8]) -> Result<()> {
        let ok = self
            .tag(1 - self.send_dir, self.recv_seq, len, body)
            .verify_slice(tag)
            .is_ok();
        self.recv_seq += 1;
        if ok {
            Ok(())
        } else {
            Err(Error::corrupt(
                "raft frame",
                format!(
                    "authentication tag mismatch (altered, replayed or forged): peer={} len={len}",
                    self.peer
                ),
            ))
        }
    }
}

fn transcript(nc: &[u8], ns: &[u8], client: NodeId, server: NodeId) -> Vec<u8> {
    let mut t = Vec::with_capacity(2 * NONCE_LEN + 16);
    t.extend_from_slice(nc);
    t.extend_from_slice(ns);
    t.extend_from_slice(&client.to_le_bytes());
    t.extend_from_slice(&server.to_le_bytes());
    t
}

fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n)
        .map_err(|e| Error::Internal(format!("no randomness for a raft handshake nonce: {e}")))?;
    Ok(n)
}

fn refused(detail: impl std::fmt::Display) -> Error {
    Error::consensus(
        highwater_core::ErrorKind::PermissionDenied,
        "authenticate a raft connection",
        detail.to_string(),
    )
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        context: format!("raft handshake: {what}"),
        source,
    }
}

/// The client side of the handshake, as `me`; with `expect`, the server
/// must authenticate as that node.
pub(crate) async fn client_handshake(
    stream: &mut TcpStream,
    secret: &ClusterSecret,
    me: NodeId,
    expect: Option<NodeId>,
) -> Result<Session> {
    let nc = nonce()?;
    let mut hello = [0u8; HELLO_LEN];
    hello[..8].copy_from_slice(MAGIC);
    hello[8..16].copy_from_slice(&me.to_le_bytes());
    hello[16..].copy_from_slice(&nc);
    stream
        .write_all(&hello)
        .await
        .map_err(io("sending hello"))?;
    let mut ch = [0u8; CHALLENGE_LEN];
    stream
        .read_exact(&mut ch)
        .await
        .map_err(io("reading the challenge (is the secret the cluster's?)"))?;
    if &ch[..8] != MAGIC {
        return Err(refused("the server does not speak the raft handshake"));
    }
    let server = u64::from_le_bytes(ch[8..16].try_into().expect("8 bytes"));
    let ns = &ch[16..16 + NONCE_LEN];
    let t = transcript(&nc, ns, me, server);
    if !secret.verify(b"highwater-raft server", &t, &ch[16 + NONCE_LEN..]) {
        return Err(refused(format!(
            "node {server} does not hold this cluster's secret"
        )));
    }
    if let Some(want) = expect.filter(|w| *w != server) {
        return Err(refused(format!(
            "expected node {want}, the server authenticated as node {server}"
        )));
    }
    let proof = secret.mac(b"highwater-raft client", &t);
    stream
        .write_all(&proof)
        .await
        .map_err(io("sending proof"))?;
    Ok(Session {
        key: secret.mac(b"highwater-raft session", &t),
        send_dir: 0,
        send_seq: 0,
        recv_seq: 0,
        peer: server,
    })
}

/// The server side of the handshake, as node `me`: returns the session with
/// the client's identity, or an error (the caller drops the connection).
pub(crate) async fn server_handshake(
    stream: &mut TcpStream,
    secret: &ClusterSecret,
    me: NodeId,
) -> Result<Session> {
    let mut hello = [0u8; HELLO_LEN];
    stream
        .read_exact(&mut hello)
        .await
        .map_err(io("reading hello"))?;
    if &hello[..8] != MAGIC {
        return Err(refused("the client did not start the raft handshake"));
    }
    let client = u64::from_le_bytes(hello[8..16].try_into().expect("8 bytes"));
    let nc = &hello[16..];
    let ns = nonce()?;
    let t = transcript(nc, &ns, client, me);
    let mut ch = [0u8; CHALLENGE_LEN];
    ch[..8].copy_from_slice(MAGIC);
    ch[8..16].copy_from_slice(&me.to_le_bytes());
    ch[16..16 + NONCE_LEN].copy_from_slice(&ns);
    ch[16 + NONCE_LEN..].copy_from_slice(&secret.mac(b"highwater-raft server", &t));
    stream
        .write_all(&ch)
        .await
        .map_err(io("sending the challenge"))?;
    let mut proof = [0u8; TAG_LEN];
    stream
        .read_exact(&mut proof)
        .await
        .map_err(io("reading the proof"))?;
    if !secret.verify(b"highwater-raft client", &t, &proof) {
        return Err(refused(format!(
            "a client claiming node {client} does not hold this cluster's secret"
        )));
    }
    Ok(Session {
        key: secret.mac(b"highwater-raft session", &t),
        send_dir: 1,
        send_seq: 0,
        recv_seq: 0,
        peer: client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_bounded_and_hidden() {
        assert!(ClusterSecret::new(vec![1u8; 15]).is_err());
        assert!(ClusterSecret::new(vec![1u8; 4097]).is_err());
        let s = ClusterSecret::new(b"0123456789abcdef".to_vec()).unwrap();
        assert!(!format!("{s:?}").contains("0123"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, b"0123456789abcdef\n").unwrap();
        let from_file = ClusterSecret::from_file(&p).unwrap();
        assert_eq!(&*from_file.0, b"0123456789abcdef");
        std::fs::write(&p, vec![b'x'; 5000]).unwrap();
        assert!(ClusterSecret::from_file(&p).is_err());
    }

    #[test]
    fn frame_tags_bind_direction_order_and_content() {
        let key = [7u8; TAG_LEN];
        let mut client = Session {
            key,
            send_dir: 0,
            send_seq: 0,
            recv_seq: 0,
            peer: 1,
        };
        let mut server = Session {
            send_dir: 1,
            peer: 2,
            ..client.clone()
        };
        let t0 = client.seal(3, b"abc");
        let t1 = client.seal(3, b"def");
        // Out of order: the server expects frame 0 first.
        assert!(server.clone().open(3, b"def", &t1).is_err());
        assert!(server.open(3, b"abc", &t0).is_ok());
        // Replayed: frame 0 again where frame 1 is expected.
        assert!(server.clone().open(3, b"abc", &t0).is_err());
        // Altered.
        assert!(server.clone().open(3, b"dex", &t1).is_err());
        assert!(server.open(3, b"def", &t1).is_ok());
        // Reflected: the server's own frame sent back to it.
        let s0 = server.seal(1, b"x");
        assert!(server.clone().open(1, b"x", &s0).is_err());
        assert!(client.open(1, b"x", &s0).is_ok());
    }
}
