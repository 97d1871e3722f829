//! A fault-injecting [`ObjectStore`] (feature `faults`, issue 18): wraps
//! any object store and makes chosen requests fail, tear, lie or stall,
//! so tests can drive checkpoints, merges, retention and recovery through
//! a misbehaving store and check what survives.
//!
//! Faults are [`Rule`]s: the `nth` request of an [`Op`] (counted from 1
//! since the wrapper was made) and the `count - 1` after it get a
//! [`Fault`]. Requests are counted whether or not a rule matches, so a
//! test can first count the requests of a clean run and then sweep `nth`
//! over them.
//!
//! ```
//! # use std::sync::Arc;
//! use highwater_cloud::faults::{Fault, FaultyObjectStore, Op, Rule};
//! let faulty = Arc::new(FaultyObjectStore::new(Arc::new(object_store::memory::InMemory::new())));
//! faulty.add(Rule { op: Op::Put, nth: 3, count: 1, fault: Fault::StorageFull });
//! let store = highwater_cloud::ObjectCheckpointStore::new(faulty.clone(), "", "faulty");
//! # let _ = store;
//! ```

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// The kinds of request a [`Rule`] matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Single-request and multipart uploads.
    Put,
    /// Reads (whole objects, ranges, heads).
    Get,
    /// Deletes.
    Delete,
    /// Listings.
    List,
    /// Copies and renames.
    Copy,
}

const OPS: usize = 5;

impl Op {
    fn index(self) -> usize {
        match self {
            Op::Put => 0,
            Op::Get => 1,
            Op::Delete => 2,
            Op::List => 3,
            Op::Copy => 4,
        }
    }
}

/// What happens to a matched request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails without reaching the store, as a connection reset would
    /// (transient: [`classify`](crate::classify) says `Unavailable`).
    Unavailable,
    /// Fails with the operating system's "no space left on device".
    StorageFull,
    /// Fails with the operating system's "input/output error" (EIO).
    Eio,
    /// An upload stores the first half of its bytes and then fails (a
    /// torn write a store without atomic uploads can leave). Other
    /// requests fail as [`Fault::Unavailable`].
    PartialWrite,
    /// An upload stores the first half of its bytes and reports success:
    /// a store that lies. Other requests are unaffected.
    TornButAcknowledged,
    /// The request waits this long, then goes through.
    Slow(Duration),
}

/// Which requests get a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The kind of request.
    pub op: Op,
    /// The first request affected, counting requests of `op` from 1.
    pub nth: u64,
    /// How many consecutive requests of `op` are affected (`u64::MAX`:
    /// every one from `nth` on).
    pub count: u64,
    /// What happens to them.
    pub fault: Fault,
}

impl Rule {
    fn matches(&self, op: Op, n: u64) -> bool {
        self.op == op && n >= self.nth && n - self.nth < self.count
    }
}

/// An [`ObjectStore`] that forwards to `inner` except where a [`Rule`]
/// says otherwise. See the [module documentation](self).
pub struct FaultyObjectStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<State>,
}

/// The rules and counters, shared with the streams of deletes.
#[derive(Debug, Default)]
struct State {
    rules: Mutex<Vec<Rule>>,
    requests: [AtomicU64; OPS],
    injected: AtomicU64,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request of `op` and returns its rule's fault, if any.
    fn decide(&self, op: Op) -> Option<Fault> {
        let n = self.requests[op.index()].fetch_add(1, Ordering::Relaxed) + 1;
        let fault = self
            .lock()
            .iter()
            .find(|r| r.matches(op, n))
            .map(|r| r.fault)?;
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(fault)
    }
}

impl FaultyObjectStore {
    /// Wraps `inner`, with no rules.
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultyObjectStore {
        FaultyObjectStore {
            inner,
            state: Arc::default(),
        }
    }

    /// Adds a rule.
    pub fn add(&self, rule: Rule) {
        self.state.lock().push(rule);
    }

    /// Removes every rule (the counters keep counting).
    pub fn clear(&self) {
        self.state.lock().clear();
    }

    /// Requests of `op` made so far.
    pub fn requests(&self, op: Op) -> u64 {
        self.state.requests[op.index()].load(Ordering::Relaxed)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::Relaxed)
    }

    /// Counts a request of `op` and returns its fault, if any; a slow
    /// fault has been waited out when this returns.
    async fn fault(&self, op: Op) -> Option<Fault> {
        let fault = self.state.decide(op)?;
        if let Fault::Slow(d) = fault {
            tokio::time::sleep(d).await;
            return None;
        }
        Some(fault)
    }
}

fn injected(fault: Fault, location: &Path) -> object_store::Error {
    let source: std::io::Error = match fault {
        Fault::StorageFull => std::io::Error::from(std::io::ErrorKind::StorageFull),
        Fault::Eio => {
            std::io::Error::other(format!("injected input/output error (EIO) at {location}"))
        }
        _ => std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            format!("injected fault {fault:?} at {location}"),
        ),
    };
    object_store::Error::Generic {
        store: "faulty",
        source: Box::new(source),
    }
}

/// The first half of `payload`.
fn torn(payload: &PutPayload) -> PutPayload {
    let bytes: Bytes = payload.clone().into();
    PutPayload::from(bytes.slice(..bytes.len() / 2))
}

impl fmt::Debug for FaultyObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyObjectStore")
            .field("inner", &self.inner)
            .field("rules", &*self.state.lock())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for FaultyObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyObjectStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyObjectStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        match self.fault(Op::Put).await {
            None => self.inner.put_opts(location, payload, opts).await,
            Some(Fault::PartialWrite) => {
                self.inner.put_opts(location, torn(&payload), opts).await?;
                Err(injected(Fault::PartialWrite, location))
            }
            Some(Fault::TornButAcknowledged) => {
                self.inner.put_opts(location, torn(&payload), opts).await
            }
            Some(fault) => Err(injected(fault, location)),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        match self.fault(Op::Put).await {
            None | Some(Fault::TornButAcknowledged) => {
                self.inner.put_multipart_opts(location, opts).await
            }
            Some(fault) => Err(injected(fault, location)),
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        match self.fault(Op::Get).await {
            None | Some(Fault::TornButAcknowledged) => self.inner.get_opts(location, options).await,
            Some(fault) => Err(injected(fault, location)),
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match self.fault(Op::Get).await {
            None | Some(Fault::TornButAcknowledged) => {
                self.inner.get_ranges(location, ranges).await
            }
            Some(fault) => Err(injected(fault, location)),
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // Each delete is counted, and its fault decided, as its location
        // arrives; a failed one never reaches the inner store.
        let state = self.state.clone();
        let checked = locations.map(move |loc| {
            let loc = loc?;
            match state.decide(Op::Delete) {
                Some(f) if !matches!(f, Fault::Slow(_) | Fault::TornButAcknowledged) => {
                    Err(injected(f, &loc))
                }
                _ => Ok(loc),
            }
        });
        self.inner.delete_stream(checked.boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.state.decide(Op::List) {
            Some(f) if !matches!(f, Fault::Slow(_) | Fault::TornButAcknowledged) => {
                let at = prefix.cloned().unwrap_or_default();
                futures::stream::once(async move { Err(injected(f, &at)) }).boxed()
            }
            _ => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        match self.fault(Op::List).await {
            None | Some(Fault::TornButAcknowledged) => self.inner.list_with_delimiter(prefix).await,
            Some(fault) => Err(injected(fault, &prefix.cloned().unwrap_or_default())),
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        match self.fault(Op::Copy).await {
            None | Some(Fault::TornButAcknowledged) => {
                self.inner.copy_opts(from, to, options).await
            }
            Some(fault) => Err(injected(fault, to)),
        }
    }
}
