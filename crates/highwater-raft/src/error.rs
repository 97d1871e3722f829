//! What to do about a failure of the consensus layer: openraft's errors
//! classified into [`ErrorKind`]s and wrapped as [`Error::Consensus`],
//! naming the operation and keeping openraft's error as the typed source.

use highwater_core::{Error, ErrorKind};
use openraft::BasicNode;
use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError,
};

use crate::ledger::NodeId;

/// An openraft error that knows what the caller should do about it.
pub(crate) trait Classify {
    /// The kind of the error.
    fn kind(&self) -> ErrorKind;
}

impl Classify for Fatal<NodeId> {
    /// The node stopped (after a storage failure or on shutdown): it refuses
    /// further work and must be restarted ([`ErrorKind::Closed`]); a panic
    /// inside openraft is [`ErrorKind::Internal`].
    fn kind(&self) -> ErrorKind {
        match self {
            Fatal::StorageError(_) | Fatal::Stopped => ErrorKind::Closed,
            Fatal::Panicked => ErrorKind::Internal,
        }
    }
}

impl Classify for ClientWriteError<NodeId, BasicNode> {
    /// Not the leader, or a membership change in progress: transient
    /// ([`ErrorKind::Unavailable`]) — the leader, or this node later,
    /// accepts it. An empty membership or an unknown learner is the
    /// caller's mistake ([`ErrorKind::Invalid`]).
    fn kind(&self) -> ErrorKind {
        match self {
            ClientWriteError::ForwardToLeader(_) => ErrorKind::Unavailable,
            ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_)) => {
                ErrorKind::Unavailable
            }
            ClientWriteError::ChangeMembershipError(_) => ErrorKind::Invalid,
        }
    }
}

impl Classify for InitializeError<NodeId, BasicNode> {
    /// Already initialized ([`ErrorKind::AlreadyExists`]), or this node is
    /// not in the membership it was given ([`ErrorKind::Invalid`]).
    fn kind(&self) -> ErrorKind {
        match self {
            InitializeError::NotAllowed(_) => ErrorKind::AlreadyExists,
            InitializeError::NotInMembers(_) => ErrorKind::Invalid,
        }
    }
}

impl Classify for CheckIsLeaderError<NodeId, BasicNode> {
    /// Not the leader, or no majority confirmed its leadership: transient
    /// ([`ErrorKind::Unavailable`]).
    fn kind(&self) -> ErrorKind {
        ErrorKind::Unavailable
    }
}

impl<E: Classify> Classify for RaftError<NodeId, E> {
    fn kind(&self) -> ErrorKind {
        match self {
            RaftError::APIError(e) => e.kind(),
            RaftError::Fatal(f) => f.kind(),
        }
    }
}

/// [`Error::Consensus`] for openraft's `err` during `op`, of the kind
/// [`Classify`] gives it.
pub(crate) fn consensus<E>(op: impl Into<String>, err: E) -> Error
where
    E: Classify + std::error::Error + Send + Sync + 'static,
{
    Error::consensus(err.kind(), op, err)
}

/// A failure reported by another node, which arrives as text.
#[derive(Debug)]
pub(crate) struct RemoteFailure(pub(crate) String);

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the leader reported: {}", self.0)
    }
}

impl std::error::Error for RemoteFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_errors_are_permanent_and_forwarding_is_transient() {
        assert_eq!(Fatal::<NodeId>::Stopped.kind(), ErrorKind::Closed);
        assert_eq!(Fatal::<NodeId>::Panicked.kind(), ErrorKind::Internal);
        let stopped: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>> =
            RaftError::Fatal(Fatal::Stopped);
        let err = consensus("trigger checkpoint", stopped);
        assert!(matches!(err, Error::Consensus { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert!(err.to_string().contains("trigger checkpoint"), "{err}");
        let forward: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>> = RaftError::APIError(
            ClientWriteError::ForwardToLeader(openraft::error::ForwardToLeader::empty()),
        );
        assert!(consensus("propose", forward).is_transient());
    }
}
