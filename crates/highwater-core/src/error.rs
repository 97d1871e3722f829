//! The error type shared by every highwater crate.

use std::fmt;

/// A boxed error from an underlying component (a store, a server, the OS).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout highwater.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the caller should do about an [`Error`], independent of its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Stored bytes failed a checksum, a bound or a structural check.
    Corruption,
    /// The data was written by an incompatible format version.
    Version,
    /// Something that should exist does not (artifact, manifest, checkpoint).
    NotFound,
    /// Something that must be unique already exists (a committed manifest).
    AlreadyExists,
    /// The caller passed something invalid (configuration, arguments).
    Invalid,
    /// A storage component failed; retrying later may succeed.
    Unavailable,
    /// The component was closed or poisoned and refuses further work.
    Closed,
    /// A bug or an unexpected condition inside highwater.
    Internal,
}

/// Errors returned by highwater.
///
/// Messages are lowercase and put variable parts last, so they read well when
/// wrapped by callers.
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
    /// A named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A named object already exists and may not be overwritten.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// An argument or configuration value is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Serialising or deserialising a user value failed.
    #[error("serialization failed: {context}: {source}")]
    Serialization {
        /// Which state or record was being encoded or decoded.
        context: String,
        /// The postcard error.
        #[source]
        source: postcard::Error,
    },
    /// A checkpoint store failed.
    #[error("store {store} failed during {op}: {source}")]
    Store {
        /// The store implementation (for example `local`, `memory`, `s3`).
        store: &'static str,
        /// The operation that failed.
        op: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// A state backend failed.
    #[error("backend {backend} failed: {source}")]
    Backend {
        /// The backend implementation.
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// An operating-system I/O error.
    #[error("i/o error during {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The component was closed, shut down or poisoned.
    #[error("closed: {0}")]
    Closed(String),
    /// An internal invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Builds a [`Error::Corrupt`].
    pub fn corrupt(what: &'static str, detail: impl fmt::Display) -> Self {
        Error::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }

    /// Builds an [`Error::Io`] with a context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Builds an [`Error::Store`].
    pub fn store(store: &'static str, op: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Store {
            store,
            op: op.into(),
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
            Error::Store { .. } | Error::Backend { .. } | Error::Io { .. } => {
                ErrorKind::Unavailable
            }
            Error::Closed(_) => ErrorKind::Closed,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// True when the stored data itself is damaged or unreadable by this build.
    pub fn is_corruption(&self) -> bool {
        matches!(self.kind(), ErrorKind::Corruption | ErrorKind::Version)
    }
}
