//! Where the server is and how to talk to it: endpoints, connection
//! options, retries, and thin wrappers over the redis crate's standalone and
//! cluster connections (sync for the backend, async for the store).

use std::time::Duration;

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisError, RedisResult, Value};

use highwater_core::{Error, ErrorKind, Result};

/// Which Redis deployment to talk to.
///
/// AUTH and TLS settings travel in the URLs: `redis://user:password@host:port/db`
/// authenticates (`redis://:password@host/` for a password without a user);
/// `rediss://` asks for TLS, which needs one of the redis crate's TLS
/// features (for example `tokio-rustls-comp`) enabled in the final binary —
/// this crate does not enable one, so a `rediss://` URL fails with
/// [`Error::InvalidArgument`] naming the missing feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// One server (or a proxy that looks like one).
    Standalone(String),
    /// A Redis Cluster, reached through one or more seed nodes; the client
    /// discovers the rest of the topology and follows `MOVED`/`ASK`.
    Cluster(Vec<String>),
}

impl RedisEndpoint {
    /// Parses an endpoint string:
    ///
    /// - `redis://host:port/` (or `rediss://`, with credentials and a
    ///   database number as usual): a standalone server;
    /// - `redis+cluster://host:port/` (or `rediss+cluster://`): a cluster
    ///   with that seed node;
    /// - several URLs separated by commas: a cluster with those seeds.
    pub fn parse(s: &str) -> Result<Self> {
        let urls: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let invalid = |why: &str| Error::InvalidArgument(format!("redis endpoint {why}: {s:?}"));
        match urls.as_slice() {
            [] => Err(invalid("is empty")),
            [one] => {
                if let Some(rest) = one.strip_prefix("redis+cluster://") {
                    Ok(RedisEndpoint::Cluster(vec![format!("redis://{rest}")]))
                } else if let Some(rest) = one.strip_prefix("rediss+cluster://") {
                    Ok(RedisEndpoint::Cluster(vec![format!("rediss://{rest}")]))
                } else if one.starts_with("redis://")
                    || one.starts_with("rediss://")
                    || one.starts_with("unix://")
                    || one.starts_with("redis+unix://")
                {
                    Ok(RedisEndpoint::Standalone((*one).to_owned()))
                } else {
                    Err(invalid(
                        "must start with redis://, rediss:// or redis+cluster://",
                    ))
                }
            }
            many => {
                let mut seeds = Vec::with_capacity(many.len());
                for u in many {
                    let u = u
                        .strip_prefix("redis+cluster://")
                        .map(|r| format!("redis://{r}"))
                        .unwrap_or_else(|| (*u).to_owned());
                    if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                        return Err(invalid("lists a node that is not a redis:// URL"));
                    }
                    seeds.push(u);
                }
                Ok(RedisEndpoint::Cluster(seeds))
            }
        }
    }

    /// True for a cluster endpoint.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisEndpoint::Cluster(_))
    }

    /// The endpoint for messages, with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        fn redact(url: &str) -> String {
            // scheme://[user[:password]@]host…: hide what follows the first
            // ':' of the userinfo.
            let Some((scheme, rest)) = url.split_once("://") else {
                return url.to_owned();
            };
            match rest.split_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                    None => url.to_owned(),
                },
                None => url.to_owned(),
            }
        }
        match self {
            RedisEndpoint::Standalone(u) => redact(u),
            RedisEndpoint::Cluster(us) => {
                us.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",")
            }
        }
    }
}

impl std::str::FromStr for RedisEndpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        RedisEndpoint::parse(s)
    }
}

impl std::fmt::Display for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

pub use highwater_core::RetryPolicy;

/// Connection settings shared by the backend and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Longest wait for a TCP connection (and the handshake) to a node.
    pub connect_timeout: Duration,
    /// Longest wait for the reply to one request or pipeline.
    pub response_timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl Default for ConnectOptions {
    /// 2 s to connect, 10 s per response, the default [`RetryPolicy`].
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

/// Classifies a redis error by what the caller should do.
///
/// - Transient ([`ErrorKind::Unavailable`], retried): I/O failures
///   (refused, reset, timed out, dropped connections), a lost cluster node
///   connection, a cluster that is reconfiguring or down (`TRYAGAIN`,
///   `CLUSTERDOWN`, `MASTERDOWN`, `MOVED`/`ASK` the client could not
///   follow), a server still loading its data (`LOADING`), a write that
///   reached a replica during a failover (`READONLY`), and a server at its
///   client limit (`ERR max number of clients reached`).
/// - [`ErrorKind::PermissionDenied`]: a failed `AUTH` (`WRONGPASS`), a
///   server that requires one (`NOAUTH`), an ACL refusal (`NOPERM`, or the
///   `ERR` a script gets for a command the user may not run).
/// - [`ErrorKind::StorageFull`]: `OOM` (the server reached `maxmemory`).
/// - [`ErrorKind::Misconfigured`]: `MISCONF` (the server cannot persist,
///   often because its disk is full, and refuses writes), a command the
///   server does not know (too old a server).
/// - [`ErrorKind::Invalid`]: a client configuration the redis crate refuses
///   (a URL it cannot parse, TLS without the feature).
/// - [`ErrorKind::Internal`] for everything else: a reply of an unexpected
///   shape, a cross-slot command, any other server error.
pub fn classify(err: &RedisError) -> ErrorKind {
    use redis::ErrorKind as K;
    use redis::ServerErrorKind as S;
    if let Some(kind) = classify_code(err) {
        return kind;
    }
    match err.kind() {
        K::Io | K::ClusterConnectionNotFound => ErrorKind::Unavailable,
        K::Server(
            S::TryAgain
            | S::ClusterDown
            | S::MasterDown
            | S::BusyLoading
            | S::Moved
            | S::Ask
            | S::ReadOnly,
        ) => ErrorKind::Unavailable,
        K::AuthenticationFailed | K::Server(S::NoPerm) => ErrorKind::PermissionDenied,
        K::InvalidClientConfig => ErrorKind::Invalid,
        _ if err.is_timeout() || err.is_connection_dropped() || err.is_connection_refusal() => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Internal,
    }
}

/// The kind named by a server error code the redis crate has no variant
/// for. The code is read from [`RedisError::code`], or from the message
/// when the error came back inside a pipeline (whose errors carry no code).
fn classify_code(err: &RedisError) -> Option<ErrorKind> {
    const CODES: [(&str, ErrorKind); 5] = [
        ("NOAUTH", ErrorKind::PermissionDenied),
        ("WRONGPASS", ErrorKind::PermissionDenied),
        ("NOPERM", ErrorKind::PermissionDenied),
        ("OOM", ErrorKind::StorageFull),
        ("MISCONF", ErrorKind::Misconfigured),
    ];
    let named = |text: &str| {
        CODES.iter().find_map(|(code, kind)| {
            text.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| word == *code)
                .then_some(*kind)
        })
    };
    if let Some(kind) = err.code().and_then(named) {
        return Some(kind);
    }
    if err.kind() == redis::ErrorKind::Extension
        || matches!(err.kind(), redis::ErrorKind::Server(_))
    {
        let text = err.to_string();
        if let Some(kind) = named(&text) {
            return Some(kind);
        }
        // An ACL refusal inside a script comes back as `ERR`.
        if text.contains("can't run this command") || text.contains("no permissions to") {
            return Some(ErrorKind::PermissionDenied);
        }
        if text.contains("max number of clients reached") {
            return Some(ErrorKind::Unavailable);
        }
        if text.contains("unknown command") {
            return Some(ErrorKind::Misconfigured);
        }
    }
    None
}

/// True when retrying may succeed: [`classify`] says
/// [`ErrorKind::Unavailable`]. Permanent errors are returned at once.
pub fn is_transient(err: &RedisError) -> bool {
    classify(err).is_transient()
}

/// True when the connection that returned `err` should be thrown away and a
/// new one made for the next request.
pub(crate) fn needs_reconnect(err: &RedisError) -> bool {
    err.is_unrecoverable_error()
        || err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || matches!(err.kind(), redis::ErrorKind::ClusterConnectionNotFound)
}

/// Maps a configuration error of the redis crate (a URL it cannot parse,
/// TLS without the feature) to [`Error::InvalidArgument`].
pub(crate) fn config_error(endpoint: &RedisEndpoint, err: &RedisError) -> Option<Error> {
    if err.kind() == redis::ErrorKind::InvalidClientConfig {
        let hint = if err.to_string().contains("TLS") || err.to_string().contains("tls") {
            " (rediss:// needs one of the redis crate's TLS features, for example \
             `tokio-rustls-comp`, enabled in the final binary)"
        } else {
            ""
        };
        return Some(Error::InvalidArgument(format!(
            "redis endpoint {endpoint}: {err}{hint}"
        )));
    }
    None
}

/// One node to run `SCAN` on: the whole server, or the master owning a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanTarget {
    /// The only server of a standalone deployment.
    Server,
    /// The master serving a slot.
    Node(Route),
}

impl ScanTarget {
    /// The node holding `key` (the whole server when not on a cluster).
    pub(crate) fn for_key(cluster: bool, key: &[u8]) -> Self {
        if cluster {
            ScanTarget::Node(Route::with_key(key, SlotAddr::Master))
        } else {
            ScanTarget::Server
        }
    }
}

/// A blocking connection to a standalone server or a cluster.
pub(crate) enum SyncConn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl SyncConn {
    /// Connects, applying the timeouts of `opts`.
    pub(crate) fn connect(endpoint: &RedisEndpoint, opts: &ConnectOptions) -> RedisResult<Self> {
        match endpoint {
            RedisEndpoint::Standalone(url) => {
                let client = redis::Client::open(url.as_str())?;
                let conn = client.get_connection_with_timeout(opts.connect_timeout)?;
                conn.set_read_timeout(Some(opts.response_timeout))?;
                conn.set_write_timeout(Some(opts.response_timeout))?;
                Ok(SyncConn::Single(conn))
            }
            RedisEndpoint::Cluster(seeds) => {
                let client = cluster_builder(seeds, opts).build()?;
                let conn = client.get_connection()?;
                conn.set_write_timeout(Some(opts.response_timeout))?;
                Ok(SyncConn::Cluster(Box::new(conn)))
            }
        }
    }

    /// False once the connection is known to be broken.
    pub(crate) fn is_open(&self) -> bool {
        use redis::ConnectionLike;
        match self {
            SyncConn::Single(c) => c.is_open(),
            SyncConn::Cluster(c) => c.is_open(),
        }
    }

    /// Runs one command.
    pub(crate) fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            SyncConn::Single(c) => cmd.query(c),
            SyncConn::Cluster(c) => cmd.query(c.as_mut()),
        }
    }

    /// Runs a prepared pipeline (built once, so retries do not copy it).
    pub(crate) fn pipeline(&mut self, pipe: &Pipe) -> RedisResult<Vec<Value>> {
        match (self, pipe) {
            (_, Pipe::Empty) => Ok(Vec::new()),
            (SyncConn::Single(c), Pipe::Single(p)) => p.query(c),
            (SyncConn::Cluster(c), Pipe::Cluster(p)) => p.query(c.as_mut()),
            _ => Err(RedisError::from((
                redis::ErrorKind::Client,
                "pipeline prepared for another kind of connection",
            ))),
        }
    }

    /// Runs a prepared pipeline whose replies are not needed (errors still
    /// are); cheaper than [`pipeline`](Self::pipeline).
    pub(crate) fn pipeline_exec(&mut self, pipe: &Pipe) -> RedisResult<()> {
        match (self, pipe) {
            (_, Pipe::Empty) => Ok(()),
            (SyncConn::Single(c), Pipe::Single(p)) => p.exec(c),
            (SyncConn::Cluster(c), Pipe::Cluster(p)) => p.exec(c.as_mut()),
            _ => Err(RedisError::from((
                redis::ErrorKind::Client,
                "pipeline prepared for another kind of connection",
            ))),
        }
    }

    /// The nodes a full `SCAN` must visit: the server, or one slot of each
    /// cluster master (from `CLUSTER SLOTS`).
    pub(crate) fn scan_targets(&mut self) -> RedisResult<Vec<ScanTarget>> {
        match self {
            SyncConn::Single(_) => Ok(vec![ScanTarget::Server]),
            SyncConn::Cluster(c) => {
                let slots = c.route_command(
                    &redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )?;
                Ok(masters_from_cluster_slots(&slots)
                    .into_iter()
                    .map(|slot| ScanTarget::Node(Route::new(slot, SlotAddr::Master)))
                    .collect())
            }
        }
    }

    /// One `SCAN cursor MATCH pattern COUNT count` on `target`.
    pub(crate) fn scan_page(
        &mut self,
        target: ScanTarget,
        cursor: u64,
        pattern: &[u8],
        count: usize,
    ) -> RedisResult<(u64, Vec<Vec<u8>>)> {
        let cmd = scan_cmd(cursor, pattern, count);
        let value = match (self, target) {
            (SyncConn::Single(c), _) => cmd.query(c)?,
            (SyncConn::Cluster(c), ScanTarget::Node(route)) => c.route_command(
                &cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
            )?,
            (SyncConn::Cluster(c), ScanTarget::Server) => cmd.query(c.as_mut())?,
        };
        parse_scan_reply(value)
    }
}

/// Commands prepared as one pipeline (not a transaction) for a standalone
/// server or a cluster, where it is split by node and each command follows
/// its key.
pub(crate) enum Pipe {
    Empty,
    Single(redis::Pipeline),
    Cluster(redis::cluster::ClusterPipeline),
}

impl Pipe {
    /// Prepares `cmds` for a cluster or a standalone server.
    pub(crate) fn new(cluster: bool, cmds: impl ExactSizeIterator<Item = Cmd>) -> Self {
        if cmds.len() == 0 {
            return Pipe::Empty;
        }
        if cluster {
            let mut p = redis::cluster::ClusterPipeline::with_capacity(cmds.len());
            for cmd in cmds {
                p.add_command(cmd);
            }
            Pipe::Cluster(p)
        } else {
            let mut p = redis::Pipeline::with_capacity(cmds.len());
            for cmd in cmds {
                p.add_command(cmd);
            }
            Pipe::Single(p)
        }
    }
}

/// The redis crate's cluster builder with our timeouts. The client's own
/// retries (for `MOVED`, `ASK`, `TRYAGAIN`) stay few: failures beyond them
/// surface to our retry policy, which reconnects.
pub(crate) fn cluster_builder(
    seeds: &[String],
    opts: &ConnectOptions,
) -> redis::cluster::ClusterClientBuilder {
    redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(opts.connect_timeout)
        .response_timeout(opts.response_timeout)
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait(200)
}

/// Parses a `SCAN` reply: `[cursor, [key, …]]`.
pub(crate) fn parse_scan_reply(value: Value) -> RedisResult<(u64, Vec<Vec<u8>>)> {
    let bad = || {
        RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "malformed SCAN reply",
        ))
    };
    let Value::Array(mut parts) = value else {
        return Err(bad());
    };
    if parts.len() != 2 {
        return Err(bad());
    }
    let keys = parts.pop().ok_or_else(bad)?;
    let cursor = parts.pop().ok_or_else(bad)?;
    let cursor: u64 = match cursor {
        Value::BulkString(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?,
        Value::SimpleString(s) => s.parse().map_err(|_| bad())?,
        Value::Int(i) => u64::try_from(i).map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let Value::Array(items) = keys else {
        return Err(bad());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::BulkString(k) => out.push(k),
            Value::SimpleString(s) => out.push(s.into_bytes()),
            _ => return Err(bad()),
        }
    }
    Ok((cursor, out))
}

/// One slot of each master in a `CLUSTER SLOTS` reply, deduplicated by
/// node address.
pub(crate) fn masters_from_cluster_slots(value: &Value) -> Vec<u16> {
    let mut seen: Vec<(Vec<u8>, i64)> = Vec::new();
    let mut slots = Vec::new();
    let Value::Array(ranges) = value else {
        return slots;
    };
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        let (Some(Value::Int(start)), Some(Value::Array(master))) = (fields.first(), fields.get(2))
        else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) => h.clone(),
            Some(Value::SimpleString(h)) => h.clone().into_bytes(),
            _ => Vec::new(),
        };
        let port = match master.get(1) {
            Some(Value::Int(p)) => *p,
            _ => -1,
        };
        if seen.iter().any(|(h, p)| *h == host && *p == port) {
            continue;
        }
        seen.push((host, port));
        if let Ok(slot) = u16::try_from(*start) {
            slots.push(slot);
        }
    }
    slots
}

/// A non-blocking connection to a standalone server or a cluster; cheap to
/// clone (both kinds multiplex requests over shared sockets).
#[derive(Clone)]
pub(crate) enum AsyncConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl AsyncConn {
    /// Connects, applying the timeouts of `opts`.
    pub(crate) async fn connect(
        endpoint: &RedisEndpoint,
        opts: &ConnectOptions,
    ) -> RedisResult<Self> {
        match endpoint {
            RedisEndpoint::Standalone(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(opts.connect_timeout))
                    .set_response_timeout(Some(opts.response_timeout));
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(AsyncConn::Single(conn))
            }
            RedisEndpoint::Cluster(seeds) => {
                let client = cluster_builder(seeds, opts).build()?;
                Ok(AsyncConn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Runs one command.
    pub(crate) async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            AsyncConn::Single(c) => cmd.query_async(c).await,
            AsyncConn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Runs a pipeline whose keys all live in one slot (a cluster routes it
    /// to that slot's master as a whole).
    pub(crate) async fn pipeline(&mut self, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>> {
        match self {
            AsyncConn::Single(c) => pipe.query_async(c).await,
            AsyncConn::Cluster(c) => pipe.query_async(c).await,
        }
    }

    /// Invokes a Lua script (`EVALSHA`, loading it on `NOSCRIPT`).
    pub(crate) async fn script(&mut self, inv: &redis::ScriptInvocation<'_>) -> RedisResult<Value> {
        match self {
            AsyncConn::Single(c) => inv.invoke_async(c).await,
            AsyncConn::Cluster(c) => inv.invoke_async(c).await,
        }
    }

    /// The nodes a full `SCAN` must visit.
    pub(crate) async fn scan_targets(&mut self) -> RedisResult<Vec<ScanTarget>> {
        match self {
            AsyncConn::Single(_) => Ok(vec![ScanTarget::Server]),
            AsyncConn::Cluster(c) => {
                let slots = c
                    .route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                Ok(masters_from_cluster_slots(&slots)
                    .into_iter()
                    .map(|slot| ScanTarget::Node(Route::new(slot, SlotAddr::Master)))
                    .collect())
            }
        }
    }

    /// One `SCAN cursor MATCH pattern COUNT count` on `target`.
    pub(crate) async fn scan_page(
        &mut self,
        target: ScanTarget,
        cursor: u64,
        pattern: &[u8],
        count: usize,
    ) -> RedisResult<(u64, Vec<Vec<u8>>)> {
        let cmd = scan_cmd(cursor, pattern, count);
        let value = match (self, target) {
            (AsyncConn::Cluster(c), ScanTarget::Node(route)) => {
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await?
            }
            (conn, _) => conn.query(&cmd).await?,
        };
        parse_scan_reply(value)
    }
}

/// Escapes the glob metacharacters of Redis `MATCH` patterns (`* ? [ ] \`)
/// in `bytes`, appending to `out`.
pub(crate) fn glob_escape_into(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// `SCAN cursor MATCH pattern COUNT count`, for the sync and async
/// connections alike.
fn scan_cmd(cursor: u64, pattern: &[u8], count: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_to_do() {
        let io = |kind| RedisError::from(std::io::Error::from(kind));
        assert_eq!(
            classify(&io(std::io::ErrorKind::ConnectionRefused)),
            ErrorKind::Unavailable
        );
        assert_eq!(
            classify(&io(std::io::ErrorKind::TimedOut)),
            ErrorKind::Unavailable
        );
        let kind = |k, msg: &'static str| RedisError::from((k, msg));
        assert_eq!(
            classify(&kind(redis::ErrorKind::AuthenticationFailed, "WRONGPASS")),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            classify(&kind(redis::ErrorKind::InvalidClientConfig, "bad url")),
            ErrorKind::Invalid
        );
        assert_eq!(
            classify(&kind(redis::ErrorKind::UnexpectedReturnType, "odd reply")),
            ErrorKind::Internal
        );
        assert!(!is_transient(&kind(
            redis::ErrorKind::UnexpectedReturnType,
            "x"
        )));
        assert!(is_transient(&io(std::io::ErrorKind::ConnectionReset)));
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            RedisEndpoint::parse("redis://127.0.0.1:6379/").unwrap(),
            RedisEndpoint::Standalone("redis://127.0.0.1:6379/".into())
        );
        assert_eq!(
            RedisEndpoint::parse("redis+cluster://h:1/").unwrap(),
            RedisEndpoint::Cluster(vec!["redis://h:1/".into()])
        );
        assert_eq!(
            RedisEndpoint::parse("redis://a:1/, redis://b:2/").unwrap(),
            RedisEndpoint::Cluster(vec!["redis://a:1/".into(), "redis://b:2/".into()])
        );
        assert!(RedisEndpoint::parse("").is_err());
        assert!(RedisEndpoint::parse("http://x/").is_err());
        assert!(RedisEndpoint::parse("redis://a/,http://b/").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        let e = RedisEndpoint::parse("redis://user:secret@h:1/").unwrap();
        assert_eq!(e.to_string(), "redis://user:***@h:1/");
        let e = RedisEndpoint::parse("redis://:secret@h:1/,redis://h:2/").unwrap();
        assert_eq!(e.to_string(), "redis://:***@h:1/,redis://h:2/");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(30),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(10));
        assert_eq!(p.backoff(2), Duration::from_millis(20));
        assert_eq!(p.backoff(3), Duration::from_millis(30));
        assert_eq!(RetryPolicy::none().attempts(), 1);
    }

    #[test]
    fn globs_are_escaped() {
        let mut out = Vec::new();
        glob_escape_into(b"a*b?[c]\\d", &mut out);
        assert_eq!(out, b"a\\*b\\?\\[c\\]\\\\d");
    }
}
