//! The backend's configuration, and the namespace check the store shares.

use std::sync::Arc;
use std::time::Duration;

use highwater_core::{Clock, Error, Result, SystemClock};

use crate::conn::{ConnectOptions, RedisEndpoint};

/// Configuration of a [`RedisBackend`](crate::RedisBackend).
#[derive(Debug, Clone)]
pub struct RedisBackendConfig {
    /// The server or cluster.
    pub endpoint: RedisEndpoint,
    /// The namespace of this backend's keys: 1 to 64 bytes of ASCII letters,
    /// digits, `_`, `-`, `.` and `:`. The backend assumes it is the only
    /// writer of its namespace (see the crate docs).
    pub namespace: String,
    /// Timeouts and retries.
    pub connect: ConnectOptions,
    /// Idle connections kept for reuse; more are opened when threads use
    /// the backend concurrently.
    pub max_idle_connections: usize,
    /// Also give Redis the envelope's expiry (`SET … PXAT`), so Redis
    /// reclaims the space of expired entries by itself.
    pub native_ttl: bool,
    /// Added to the envelope expiry before it is handed to Redis, to absorb
    /// clock skew between this process and the server: Redis never drops
    /// an entry that this process's clock still considers alive. Expiries
    /// already in the past (by this process's clock, after the grace) are
    /// not handed to Redis.
    pub native_ttl_grace: Duration,
    /// The clock the native expiry is judged by (the envelope's expiry is
    /// in wall-clock milliseconds): [`SystemClock`] by default; inject
    /// another for tests and deterministic replay.
    pub clock: Arc<dyn Clock>,
    /// The `COUNT` hint of `SCAN`.
    pub scan_count: usize,
    /// Commands sent per pipeline round trip.
    pub pipeline_depth: usize,
    /// Partitions of a snapshot (entries are spread by key group).
    pub snapshot_partitions: usize,
}

impl RedisBackendConfig {
    /// Defaults for `endpoint` and `namespace`: 4 idle connections, native
    /// TTL with 1 s of grace judged by the [`SystemClock`], `SCAN COUNT
    /// 1000`, pipelines of 512 commands, 16 snapshot partitions.
    pub fn new(endpoint: RedisEndpoint, namespace: impl Into<String>) -> Self {
        RedisBackendConfig {
            endpoint,
            namespace: namespace.into(),
            connect: ConnectOptions::default(),
            max_idle_connections: 4,
            native_ttl: true,
            native_ttl_grace: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
            scan_count: 1000,
            pipeline_depth: 512,
            snapshot_partitions: 16,
        }
    }
}

/// Checks a namespace: 1..=64 bytes of `[A-Za-z0-9_.:-]`, so it can never
/// contain a hash-tag brace or a glob metacharacter.
pub(crate) fn check_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "redis namespace must be 1..=64 bytes of [A-Za-z0-9_.:-]: namespace={ns:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_checked() {
        assert!(check_namespace("hw-test_1.a:b").is_ok());
        for bad in ["", "a{b", "a}b", "a*b", "a b", &"x".repeat(65)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
