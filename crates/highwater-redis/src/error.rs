//! The private error carried as the source of [`Error::Backend`] and
//! [`Error::Store`](highwater_core::Error::Store): which request failed,
//! against which server, and the redis crate's error.
//!
//! [`Error::Backend`]: highwater_core::Error::Backend

use std::fmt;

use highwater_core::{Error, ErrorKind};
use redis::RedisError;

use crate::conn::{RedisEndpoint, classify, config_error};

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

/// Which error a failed request becomes: the backend's or the store's.
pub(crate) type MakeError = fn(ErrorKind, &'static str, String, RedisOpError) -> Error;

/// The error of request `op` of component `name` (backend or store) at
/// `endpoint`: a configuration error (wrong password, ACL) when the reply
/// says so, else `make` with the kind the reply classifies as and the
/// request as its typed source.
pub(crate) fn op_error(
    make: MakeError,
    name: &'static str,
    endpoint: &RedisEndpoint,
    op: &'static str,
    source: RedisError,
) -> Error {
    if let Some(e) = config_error(endpoint, &source) {
        return e;
    }
    let endpoint = endpoint.redacted();
    make(
        classify(&source),
        name,
        format!("{op} at {endpoint}"),
        RedisOpError {
            op,
            endpoint,
            source,
        },
    )
}
