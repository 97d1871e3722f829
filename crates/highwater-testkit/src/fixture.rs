//! What a factory may return, and the guards that outlive a case.
//!
//! The suites call a factory for every fresh backend or store they need. A
//! factory returns the implementation either alone (`Arc<MemoryBackend>`,
//! `Arc<dyn StateBackend>`) or paired with a guard — `(guard, backend)` —
//! for anything that must live exactly as long as the test: a temporary
//! directory, a test server, a connection pool. Guards are kept in a
//! [`Guards`] set that the test macros drop after the case has returned,
//! whether it passed or panicked.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};

use highwater_core::{CheckpointStore, StateBackend};

/// Values kept alive until the end of a test case.
#[derive(Clone, Default)]
pub struct Guards {
    inner: Arc<Mutex<Vec<Box<dyn Any + Send>>>>,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guards").field("len", &self.len()).finish()
    }
}

impl Guards {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `guard` alive until the set (and every clone of it) is dropped.
    pub fn keep<G: Send + 'static>(&self, guard: G) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(guard));
    }

    /// Number of guards kept.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no guard is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a backend factory may return.
pub trait IntoBackend {
    /// The backend, after handing any guard to `guards`.
    fn into_backend(self, guards: &Guards) -> Arc<dyn StateBackend>;
}

impl<B: StateBackend> IntoBackend for Arc<B> {
    fn into_backend(self, _guards: &Guards) -> Arc<dyn StateBackend> {
        self
    }
}

impl IntoBackend for Arc<dyn StateBackend> {
    fn into_backend(self, _guards: &Guards) -> Arc<dyn StateBackend> {
        self
    }
}

impl<G: Send + 'static, B: IntoBackend> IntoBackend for (G, B) {
    fn into_backend(self, guards: &Guards) -> Arc<dyn StateBackend> {
        guards.keep(self.0);
        self.1.into_backend(guards)
    }
}

/// What a store factory may return.
pub trait IntoStore {
    /// The store, after handing any guard to `guards`.
    fn into_store(self, guards: &Guards) -> Arc<dyn CheckpointStore>;
}

impl<S: CheckpointStore> IntoStore for Arc<S> {
    fn into_store(self, _guards: &Guards) -> Arc<dyn CheckpointStore> {
        self
    }
}

impl IntoStore for Arc<dyn CheckpointStore> {
    fn into_store(self, _guards: &Guards) -> Arc<dyn CheckpointStore> {
        self
    }
}

impl<G: Send + 'static, S: IntoStore> IntoStore for (G, S) {
    fn into_store(self, guards: &Guards) -> Arc<dyn CheckpointStore> {
        guards.keep(self.0);
        self.1.into_store(guards)
    }
}
