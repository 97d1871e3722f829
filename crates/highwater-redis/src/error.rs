//! The private error carried as the source of [`Error::Backend`] and
//! [`Error::Store`](highwater_core::Error::Store): which request failed,
//! against which server, and the redis crate's error.
//!
//! [`Error::Backend`]: highwater_core::Error::Backend

use std::fmt;

/// A failed request to Redis.
#[derive(Debug)]
pub(crate) struct RedisOpError {
    /// The operation (`write`, `scan`, `put artifact`, …).
    pub(crate) op: &'static str,
    /// The endpoint, with any password redacted.
    pub(crate) endpoint: String,
    /// What the redis crate reported.
    pub(crate) source: redis::RedisError,
}

impl fmt::Display for RedisOpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redis {} failed: endpoint={} error={}",
            self.op, self.endpoint, self.source
        )
    }
}

impl std::error::Error for RedisOpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
