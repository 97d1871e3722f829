//! The error type shared by every highwater crate.
//!
//! Every [`Error`] has an [`ErrorKind`] that tells the caller what to do
//! about it: retry ([`ErrorKind::Unavailable`], the only transient kind),
//! fix something outside the program (permissions, free space, the
//! configuration), fall back to an older checkpoint (corruption, a missing
//! artifact), or report a bug. Errors from stores, backends, the operating
//! system and the consensus layer keep their cause as a typed
//! [`source`](std::error::Error::source), never as a string, and their
//! message names what failed: the path, URL, key or operation.
//!
//! Each backend and store crate classifies the errors of its own
//! dependency (`object_store`, `redis`, `rocksdb`, `openraft`); operating
//! system errors are classified here, once, by [`ErrorKind::of_io`].

use std::fmt;

/// A boxed error from an underlying component (a store, a server, the OS).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout highwater.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the caller should do about an [`Error`], independent of its details.
///
/// Only [`Unavailable`](ErrorKind::Unavailable) is transient: highwater's
/// own retry loops retry it and nothing else, and a caller may retry it
/// later. Every other kind is permanent: the same request fails the same
/// way until something changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Stored bytes failed a checksum, a bound or a structural check.
    /// Recovery falls back to an older checkpoint; do not retry.
    Corruption,
    /// The data was written by an incompatible format version. Read it with
    /// a build that supports the version; do not retry.
    Version,
    /// Something that should exist does not (artifact, manifest,
    /// checkpoint, file). Recovery falls back to an older checkpoint; for a
    /// name the caller chose, check the name. Not used for a missing
    /// bucket or server: that is [`Misconfigured`](ErrorKind::Misconfigured).
    NotFound,
    /// Something that must be unique already exists (a committed manifest).
    /// Pick another name or read the existing one; do not retry.
    AlreadyExists,
    /// The caller passed something invalid (configuration, arguments, a
    /// value that does not serialize). Fix the call; do not retry.
    Invalid,
    /// Access was refused: wrong or missing credentials (HTTP 401/403,
    /// Redis `NOAUTH`/`WRONGPASS`/`NOPERM`), file permissions (`EACCES`,
    /// `EPERM`) or a read-only file system or server (`EROFS`, Redis
    /// `READONLY` replicas aside). Fix the credentials, the permissions or
    /// the mount; retrying will not help.
    PermissionDenied,
    /// The disk, a quota or the server's memory is full (`ENOSPC`,
    /// `EDQUOT`, `EFBIG`, Redis `OOM`, RocksDB "No space left"). Free space
    /// or raise the limit, then retry; retrying before that will not help.
    StorageFull,
    /// The configured location or service cannot serve the request: a
    /// bucket, container or directory that does not exist, a path that
    /// names a file where a directory is needed, an operation the store
    /// does not support. Fix the configuration; retrying will not help.
    Misconfigured,
    /// A storage component, server or the consensus group is temporarily
    /// unable to serve: a timeout, a refused or dropped connection, HTTP
    /// 5xx, 408 or 429, a cluster that is failing over, no leader elected
    /// yet. The only transient kind: retrying later may succeed.
    Unavailable,
    /// The component was closed or poisoned and refuses further work.
    /// Open a new one.
    Closed,
    /// A bug or an unexpected condition inside highwater (or a worker that
    /// panicked). Report it; retrying will not help.
    Internal,
    /// State was registered, read or restored with a type or schema version
    /// other than the one it was written with, and no migration bridges the
    /// two (see `docs/savepoints.md`). Fix the descriptor or register a
    /// migration; retrying will not help.
    SchemaMismatch,
    /// Encrypted data failed to authenticate: its bytes were changed or
    /// moved to another name, it was sealed with a key the configured
    /// [`KeyProvider`](crate::crypto::KeyProvider) does not hold, or it is
    /// not encrypted where encryption is configured (see
    /// [`crypto`](crate::crypto)). Distinct from corruption: recovery does
    /// not fall back to an older checkpoint over it. Check the keys and the
    /// store's integrity; do not retry.
    Authentication,
}

impl ErrorKind {
    /// True for the only transient kind, [`Unavailable`](ErrorKind::Unavailable):
    /// the same request may succeed when retried later. Retry loops retry
    /// exactly these errors.
    pub fn is_transient(self) -> bool {
        self == ErrorKind::Unavailable
    }

    /// Classifies an operating-system error by what the caller should do.
    ///
    /// Permission denied and a read-only file system give
    /// [`PermissionDenied`](ErrorKind::PermissionDenied); a full disk, an
    /// exceeded quota or a file too large give
    /// [`StorageFull`](ErrorKind::StorageFull); a missing file gives
    /// [`NotFound`](ErrorKind::NotFound); a path of the wrong type or an
    /// unsupported operation gives [`Misconfigured`](ErrorKind::Misconfigured);
    /// invalid arguments give [`Invalid`](ErrorKind::Invalid). Interrupted,
    /// timed-out and would-block operations, connection failures, busy
    /// resources, memory exhaustion and anything unrecognised are
    /// [`Unavailable`](ErrorKind::Unavailable) (transient).
    ///
    /// Used by every crate that does file or socket I/O (the write-ahead
    /// log, the local checkpoint store, RocksDB's file handling, Raft's
    /// log), so that one mapping decides.
    pub fn of_io(err: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match err.kind() {
            Io::PermissionDenied | Io::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
            Io::StorageFull | Io::QuotaExceeded | Io::FileTooLarge => ErrorKind::StorageFull,
            Io::NotFound => ErrorKind::NotFound,
            Io::AlreadyExists => ErrorKind::AlreadyExists,
            Io::NotADirectory
            | Io::IsADirectory
            | Io::DirectoryNotEmpty
            | Io::InvalidFilename
            | Io::NotSeekable
            | Io::CrossesDevices
            | Io::TooManyLinks
            | Io::Unsupported
            | Io::AddrNotAvailable => ErrorKind::Misconfigured,
            Io::InvalidInput | Io::InvalidData | Io::ArgumentListTooLong => ErrorKind::Invalid,
            // Interrupted, TimedOut, WouldBlock, ConnectionRefused/Reset/
            // Aborted, NotConnected, BrokenPipe, AddrInUse, ResourceBusy,
            // ExecutableFileBusy, Deadlock, StaleNetworkFileHandle,
            // OutOfMemory, UnexpectedEof, WriteZero, Other and anything a
            // newer standard library adds.
            _ => ErrorKind::Unavailable,
        }
    }

    /// The kind of the first operating-system error in `err`'s source
    /// chain (`err` itself included), if there is one. Components that
    /// wrap file I/O in their own error types (`object_store`'s local file
    /// system, a join of a blocking task) are classified through this.
    pub fn of_io_in_chain(err: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return Some(ErrorKind::of_io(io));
            }
            next = e.source();
        }
        None
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Corruption => "corruption",
            ErrorKind::Version => "unsupported version",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Invalid => "invalid",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::StorageFull => "storage full",
            ErrorKind::Misconfigured => "misconfigured",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Closed => "closed",
            ErrorKind::Internal => "internal",
            ErrorKind::SchemaMismatch => "schema mismatch",
            ErrorKind::Authentication => "authentication failed",
        })
    }
}

/// Errors returned by highwater.
///
/// Messages are lowercase and put variable parts last, so they read well when
/// wrapped by callers. Use [`Error::kind`] to decide what to do about one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Stored bytes are damaged: bad magic, checksum mismatch, truncated data,
    /// a length that points past the end of the buffer or above a limit.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What was being decoded (for example `artifact` or `manifest`).
        what: &'static str,
        /// Which check failed, with the offending values.
        detail: String,
    },
    /// The data was written with a format version this build cannot read.
    #[error("unsupported {what} format version: found={found} supported={supported}")]
    UnsupportedVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version found in the data.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// Encrypted data failed to authenticate (see
    /// [`ErrorKind::Authentication`]).
    #[error("authentication failed for {what}: {detail}")]
    Authentication {
        /// What was being opened (an artifact, a manifest, a log frame, a
        /// key), with its name.
        what: String,
        /// Why: a tag mismatch, a missing key, no encryption.
        detail: String,
    },
    /// A named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A named object already exists and may not be overwritten.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// An argument or configuration value is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Serialising or deserialising a user value or a record failed.
    #[error("serialization failed: {context}: {source}")]
    Serialization {
        /// Which state or record was being encoded or decoded.
        context: String,
        /// The serializer's error.
        #[source]
        source: BoxError,
    },
    /// A checkpoint store failed.
    #[error("store {store} failed ({kind}) during {op}: {source}")]
    Store {
        /// The store implementation (for example `local`, `memory`, `s3`).
        store: &'static str,
        /// The operation that failed, with the path, URL or key it was
        /// applied to.
        op: String,
        /// What the caller should do, as the store's classifier decided.
        kind: ErrorKind,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// A state backend failed.
    #[error("backend {backend} failed ({kind}) during {op}: {source}")]
    Backend {
        /// The backend implementation.
        backend: &'static str,
        /// The operation that failed, with the path, endpoint or key it was
        /// applied to.
        op: String,
        /// What the caller should do, as the backend's classifier decided.
        kind: ErrorKind,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// An operating-system I/O error; its kind comes from
    /// [`ErrorKind::of_io`].
    #[error("i/o error during {context}: {source}")]
    Io {
        /// What was being done, naming the path or address.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The consensus layer (the Raft group coordinating checkpoints) could
    /// not carry out an operation: no leader, no quorum, a node that is not
    /// the leader, a stopped or failed Raft node.
    #[error("consensus failed ({kind}) during {op}: {source}")]
    Consensus {
        /// The operation (for example `trigger checkpoint`,
        /// `change membership`).
        op: String,
        /// What the caller should do, as the Raft crate's classifier decided.
        kind: ErrorKind,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The component was closed, shut down or poisoned.
    #[error("closed: {0}")]
    Closed(String),
    /// A state's stored schema (type names, kind, schema version) differs
    /// from the one requested, and no registered migration bridges them.
    #[error(
        "schema mismatch: operator={operator} state={state} stored={stored} requested={requested}"
    )]
    SchemaMismatch {
        /// Operator owning the state.
        operator: String,
        /// State name.
        state: String,
        /// The schema the state was written with (or first registered with).
        stored: String,
        /// The schema the caller asked for.
        requested: String,
    },
    /// An internal invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
    /// An internal step failed with an underlying error highwater does not
    /// expect: a worker task or thread that panicked or was cancelled, a
    /// thread pool that could not start, a value that could not be
    /// rendered.
    #[error("unexpected failure during {what}: {source}")]
    Unexpected {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Builds a [`Error::Corrupt`].
    pub fn corrupt(what: &'static str, detail: impl fmt::Display) -> Self {
        Error::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }

    /// Builds an [`Error::Io`] with a context naming what was done to
    /// which path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Builds an [`Error::Store`] whose kind is read from the source: the
    /// kind of an operating-system error in its chain
    /// ([`ErrorKind::of_io_in_chain`]), else [`ErrorKind::Unavailable`].
    /// Stores that can classify their own errors use
    /// [`store_with_kind`](Error::store_with_kind).
    pub fn store(store: &'static str, op: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        let kind = ErrorKind::of_io_in_chain(source.as_ref()).unwrap_or(ErrorKind::Unavailable);
        Error::store_with_kind(kind, store, op, source)
    }

    /// Builds an [`Error::Store`] of the given kind.
    pub fn store_with_kind(
        kind: ErrorKind,
        store: &'static str,
        op: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Store {
            store,
            op: op.into(),
            kind,
            source: source.into(),
        }
    }

    /// Builds an [`Error::Backend`] of the given kind.
    pub fn backend(
        kind: ErrorKind,
        backend: &'static str,
        op: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            op: op.into(),
            kind,
            source: source.into(),
        }
    }

    /// Builds an [`Error::Consensus`] of the given kind.
    pub fn consensus(kind: ErrorKind, op: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Consensus {
            op: op.into(),
            kind,
            source: source.into(),
        }
    }

    /// Builds an [`Error::Serialization`].
    pub fn serialization(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Serialization {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Builds an [`Error::Unexpected`].
    pub fn unexpected(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unexpected {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Classifies the error by what a caller should do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Corrupt { .. } => ErrorKind::Corruption,
            Error::UnsupportedVersion { .. } => ErrorKind::Version,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidArgument(_) => ErrorKind::Invalid,
            Error::Serialization { .. } => ErrorKind::Invalid,
            Error::Store { kind, .. }
            | Error::Backend { kind, .. }
            | Error::Consensus { kind, .. } => *kind,
            Error::Io { source, .. } => ErrorKind::of_io(source),
            Error::Closed(_) => ErrorKind::Closed,
            Error::SchemaMismatch { .. } => ErrorKind::SchemaMismatch,
            Error::Authentication { .. } => ErrorKind::Authentication,
            Error::Internal(_) | Error::Unexpected { .. } => ErrorKind::Internal,
        }
    }

    /// True when retrying later may succeed (the kind is
    /// [`Unavailable`](ErrorKind::Unavailable)); false for every permanent
    /// error.
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// True when the stored data itself is damaged or unreadable by this build.
    pub fn is_corruption(&self) -> bool {
        matches!(self.kind(), ErrorKind::Corruption | ErrorKind::Version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn io_errors_are_classified_by_what_to_do() {
        let cases = [
            (io::ErrorKind::PermissionDenied, ErrorKind::PermissionDenied),
            (
                io::ErrorKind::ReadOnlyFilesystem,
                ErrorKind::PermissionDenied,
            ),
            (io::ErrorKind::StorageFull, ErrorKind::StorageFull),
            (io::ErrorKind::QuotaExceeded, ErrorKind::StorageFull),
            (io::ErrorKind::NotFound, ErrorKind::NotFound),
            (io::ErrorKind::NotADirectory, ErrorKind::Misconfigured),
            (io::ErrorKind::Interrupted, ErrorKind::Unavailable),
            (io::ErrorKind::TimedOut, ErrorKind::Unavailable),
            (io::ErrorKind::WouldBlock, ErrorKind::Unavailable),
            (io::ErrorKind::ConnectionReset, ErrorKind::Unavailable),
            (io::ErrorKind::Other, ErrorKind::Unavailable),
        ];
        for (io_kind, want) in cases {
            let err = Error::io("write /x", io::Error::from(io_kind));
            assert_eq!(err.kind(), want, "{io_kind:?}");
            assert_eq!(err.is_transient(), want == ErrorKind::Unavailable);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn raw_os_errors_are_classified() {
        // ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EINTR, EAGAIN.
        let cases = [
            (28, ErrorKind::StorageFull),
            (122, ErrorKind::StorageFull),
            (30, ErrorKind::PermissionDenied),
            (13, ErrorKind::PermissionDenied),
            (1, ErrorKind::PermissionDenied),
            (4, ErrorKind::Unavailable),
            (11, ErrorKind::Unavailable),
        ];
        for (errno, want) in cases {
            assert_eq!(
                ErrorKind::of_io(&io::Error::from_raw_os_error(errno)),
                want,
                "errno {errno}"
            );
        }
    }

    #[derive(Debug)]
    struct Wrapper(io::Error);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("unable to write the file")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn store_errors_keep_their_source_and_find_io_kinds_in_the_chain() {
        let err = Error::store(
            "local",
            "put /data/artifacts/x",
            Wrapper(io::Error::from(io::ErrorKind::StorageFull)),
        );
        assert_eq!(err.kind(), ErrorKind::StorageFull);
        assert!(!err.is_transient());
        let msg = err.to_string();
        assert!(msg.contains("/data/artifacts/x"), "{msg}");
        assert!(msg.contains("storage full"), "{msg}");
        let source = std::error::Error::source(&err).expect("a typed source");
        assert!(source.downcast_ref::<Wrapper>().is_some());

        let err = Error::store("s3", "get s3://b/x", "connection reset");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_transient());

        let err = Error::consensus(ErrorKind::Unavailable, "trigger checkpoint", "no leader");
        assert!(err.to_string().contains("trigger checkpoint"), "{err}");
        assert!(err.is_transient());
    }
}
