//! Shared helpers: the servers' URLs from the environment, unique
//! namespaces, and a guard that removes a test's keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use highwater_core::StateBackend;
use highwater_redis::{RedisBackend, RedisBackendConfig, RedisEndpoint};

const HOW: &str = "run the tests through `cargo xtask test`, or start the servers with \
                   `cargo xtask services start` and export the variables it prints";

/// The standalone server's URL.
pub fn standalone_url() -> String {
    std::env::var("HIGHWATER_REDIS_URL")
        .unwrap_or_else(|_| panic!("HIGHWATER_REDIS_URL is not set: {HOW}"))
}

/// The cluster's node URLs, comma-separated.
pub fn cluster_urls() -> String {
    std::env::var("HIGHWATER_REDIS_CLUSTER")
        .unwrap_or_else(|_| panic!("HIGHWATER_REDIS_CLUSTER is not set: {HOW}"))
}

/// The standalone endpoint.
pub fn standalone() -> RedisEndpoint {
    RedisEndpoint::parse(&standalone_url()).expect("HIGHWATER_REDIS_URL parses")
}

/// The cluster endpoint.
pub fn cluster() -> RedisEndpoint {
    let ep = RedisEndpoint::parse(&cluster_urls()).expect("HIGHWATER_REDIS_CLUSTER parses");
    assert!(
        ep.is_cluster(),
        "HIGHWATER_REDIS_CLUSTER must list several nodes"
    );
    ep
}

/// A namespace no other test (or test run) uses.
pub fn namespace(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    #[expect(
        clippy::disallowed_methods,
        reason = "a unique name, not the time of state"
    )]
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "t-{tag}-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Clears the backend's namespace when dropped, so the servers stay small.
pub struct ClearOnDrop(pub Arc<RedisBackend>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        let _ = self.0.clear();
    }
}

/// A fresh backend in its own namespace, with its cleanup guard.
pub fn backend(endpoint: RedisEndpoint, tag: &str) -> (ClearOnDrop, Arc<RedisBackend>) {
    let config = RedisBackendConfig::new(endpoint, namespace(tag));
    let b = Arc::new(RedisBackend::connect(config).expect("connect to redis"));
    (ClearOnDrop(b.clone()), b)
}

/// Deletes every key of a store namespace when dropped (run on the test's
/// runtime by the testkit, which drops guards inside it).
pub struct DropStoreKeys {
    pub endpoint: RedisEndpoint,
    pub namespace: String,
}

impl Drop for DropStoreKeys {
    fn drop(&mut self) {
        // A blocking connection, so the guard works in and out of a runtime.
        let pattern = format!("{{{}:*", self.namespace);
        let _ = delete_matching(&self.endpoint, &pattern);
    }
}

/// Deletes every key matching `pattern` on every node of `endpoint`.
pub fn delete_matching(endpoint: &RedisEndpoint, pattern: &str) -> redis::RedisResult<()> {
    let urls: Vec<String> = match endpoint {
        RedisEndpoint::Standalone(u) => vec![u.clone()],
        RedisEndpoint::Cluster(us) => us.clone(),
    };
    for url in urls {
        let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)?;
            for k in keys {
                let _: i64 = redis::cmd("UNLINK").arg(k).query(&mut conn)?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(())
}

/// A fresh store in its own namespace, with its cleanup guard; parts of
/// 64 KiB so the large-artifact case is chunked.
pub async fn store(
    endpoint: RedisEndpoint,
    tag: &str,
) -> (DropStoreKeys, Arc<highwater_redis::RedisCheckpointStore>) {
    let ns = namespace(tag);
    let mut config = highwater_redis::RedisStoreConfig::new(endpoint.clone()).with_namespace(&ns);
    config.chunk_size = 64 << 10;
    let s = highwater_redis::RedisCheckpointStore::connect(config)
        .await
        .expect("connect to redis");
    (
        DropStoreKeys {
            endpoint,
            namespace: ns,
        },
        Arc::new(s),
    )
}

pub use highwater_testkit::servers::PrivateRedis;
