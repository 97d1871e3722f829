//! Connections: a pool of idle synchronous connections, and the one place
//! a request runs under the retry policy and a Redis error becomes a
//! highwater error.

use std::sync::Mutex;

use highwater_core::{Error, Result};
use redis::RedisError;

use super::{NAME, Shared, lock};
use crate::conn::{ConnectOptions, RedisEndpoint, SyncConn, is_transient, needs_reconnect};
use crate::error::op_error;

/// Idle connections, reused across calls and threads.
pub(super) struct Pool {
    pub(super) endpoint: RedisEndpoint,
    pub(super) opts: ConnectOptions,
    pub(super) idle: Mutex<Vec<SyncConn>>,
    pub(super) max_idle: usize,
}

impl Pool {
    fn take(&self) -> std::result::Result<SyncConn, RedisError> {
        if let Some(c) = lock(&self.idle).pop() {
            return Ok(c);
        }
        SyncConn::connect(&self.endpoint, &self.opts)
    }

    fn give(&self, conn: SyncConn) {
        if !conn.is_open() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Drops every idle connection (after a failure that may have broken
    /// them all, such as a server restart).
    fn reset(&self) {
        lock(&self.idle).clear();
    }
}

impl Shared {
    pub(super) fn err(&self, op: &'static str, source: RedisError) -> Error {
        op_error(Error::backend, NAME, &self.config.endpoint, op, source)
    }

    /// Runs `f` on a pooled connection under the retry policy. Returns the
    /// result and whether an attempt failed after sending (an unknown
    /// outcome, for writes).
    pub(super) fn run_tracked<T>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&mut SyncConn) -> std::result::Result<T, RedisError>,
    ) -> (Result<T>, bool) {
        let mut sent_and_failed = false;
        let (result, _) = self.config.connect.retry.retry_blocking(
            || match self.pool.take() {
                Ok(mut conn) => match f(&mut conn) {
                    Ok(v) => {
                        self.pool.give(conn);
                        Ok(v)
                    }
                    Err(e) => {
                        sent_and_failed = true;
                        if needs_reconnect(&e) {
                            // The server may have restarted: every idle
                            // connection is suspect.
                            self.pool.reset();
                        } else {
                            self.pool.give(conn);
                        }
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            },
            is_transient,
            |r| {
                tracing::warn!(
                    backend = NAME,
                    op,
                    attempt = r.attempt,
                    backoff_ms = r.backoff.as_millis() as u64,
                    error = %r.error,
                    "transient redis error, retrying"
                );
            },
            std::thread::sleep,
        );
        (result.map_err(|e| self.err(op, e)), sent_and_failed)
    }

    pub(super) fn run<T>(
        &self,
        op: &'static str,
        f: impl FnMut(&mut SyncConn) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        self.run_tracked(op, f).0
    }
}
