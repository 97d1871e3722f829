//! The test-generating macros. Each expands to one `#[test]` per case, so
//! one failing case never hides the others. The case lists live in one
//! place each (`__backend_cases!`, `__store_cases!`) and feed both the
//! macros and the `CASES` tables.

/// Expands to one `#[test]` per [backend conformance case](crate::backend).
///
/// The argument is an expression evaluating to a factory: anything callable
/// as `Fn() -> R` where `R:` [`IntoBackend`](crate::IntoBackend), that is an
/// `Arc` of the backend, or a `(guard, Arc<backend>)` pair whose guard (a
/// temporary directory, a server) is dropped after the case returns. Every
/// call must return a fresh, empty backend.
///
/// Invoke it once per module; wrap invocations in modules to test several
/// backends or configurations from one file.
///
/// ```text
/// mod memory {
///     highwater_testkit::backend_conformance!(|| std::sync::Arc::new(
///         highwater_memory::MemoryBackend::new()
///     ));
/// }
/// mod rocksdb {
///     highwater_testkit::backend_conformance!(|| {
///         let dir = tempfile::tempdir().unwrap();
///         let backend = std::sync::Arc::new(RocksBackend::open(dir.path()).unwrap());
///         (dir, backend)
///     });
/// }
/// ```
#[macro_export]
macro_rules! backend_conformance {
    ($factory:expr $(,)?) => {
        $crate::__backend_cases!(__backend_tests { $factory });
    };
}

/// Expands to one `#[test]` per [store conformance case](crate::store).
///
/// Each test builds its own multi-threaded tokio runtime (two workers, so
/// concurrent commits really race) and blocks on the case.
///
/// Two forms:
///
/// - `store_conformance!(factory)`: `factory` is callable as `Fn() -> R`
///   with `R:` [`IntoStore`](crate::IntoStore) — an `Arc` of the store or a
///   `(guard, Arc<store>)` pair. It is called inside the runtime, so it may
///   spawn tasks.
/// - `store_conformance!(async factory)`: `factory` is callable as
///   `Fn() -> Fut` where `Fut: Future<Output = R> + Send + 'static`, for
///   stores that connect asynchronously.
///
/// Every call must return a fresh, empty store. Guards are dropped inside
/// the runtime after the case returns.
///
/// ```text
/// mod in_memory {
///     highwater_testkit::store_conformance!(|| std::sync::Arc::new(
///         highwater_cloud::ObjectCheckpointStore::in_memory()
///     ));
/// }
/// mod local {
///     highwater_testkit::store_conformance!(|| {
///         let dir = tempfile::tempdir().unwrap();
///         let store = highwater_cloud::ObjectCheckpointStore::local(dir.path()).unwrap();
///         (dir, std::sync::Arc::new(store))
///     });
/// }
/// mod redis {
///     highwater_testkit::store_conformance!(async || async {
///         let server = TestRedis::start().await;
///         let store = RedisStore::connect(server.url()).await.unwrap();
///         (server, std::sync::Arc::new(store))
///     });
/// }
/// ```
#[macro_export]
macro_rules! store_conformance {
    (async $factory:expr $(,)?) => {
        $crate::__store_cases!(__store_tests { async_factory $factory });
    };
    ($factory:expr $(,)?) => {
        $crate::__store_cases!(__store_tests { sync_factory $factory });
    };
}

/// The backend case list; calls `$callback` with the arguments and every
/// case name.
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_cases {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! {
            { $($args)* }
            model_based
            snapshot_is_immutable
            snapshot_visit_contract
            changes_snapshot_tracks_puts_and_deletes
            incrementals_fold_to_full
            changes_cost_is_proportional
            ttl_via_handles
            typed_state_handles
            concurrent_writers_during_snapshots
            scan_order_and_bounds
            restore_replaces_everything_and_clear
            stats
            native_checkpoints
        }
    };
}

/// The store case list; calls `$callback` with the arguments and every
/// case name.
#[doc(hidden)]
#[macro_export]
macro_rules! __store_cases {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! {
            { $($args)* }
            artifact_round_trip
            artifact_dedup
            artifact_id_mismatch_refused
            missing_is_not_found
            delete_is_idempotent
            manifest_commit_is_create_only
            list_manifests_ascending_and_committed_only
            concurrent_commits_single_winner
            large_artifact_round_trip
            corruption_is_detected_after_get
            counters_increase
            scopes_are_isolated
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __backend_tests {
    ({ $factory:expr } $($case:ident)*) => {
        $(
            #[test]
            fn $case() {
                let guards = $crate::fixture::Guards::new();
                let build = $factory;
                let factory = $crate::backend::factory(&build, &guards);
                $crate::backend::$case(&factory);
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_tests {
    ({ $adapter:ident $factory:expr } $($case:ident)*) => {
        $(
            #[test]
            fn $case() {
                let runtime = $crate::store::runtime();
                let guards = $crate::fixture::Guards::new();
                let build = $factory;
                let factory = $crate::store::$adapter(&build, &guards);
                runtime.block_on($crate::store::$case(&factory));
                ::std::mem::drop(factory);
                $crate::store::finish(runtime, guards);
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_names {
    ({} $($case:ident)*) => {
        &[$(::std::stringify!($case)),*]
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __backend_run_all {
    ({ $factory:expr } $($case:ident)*) => {{
        let mut failed: ::std::vec::Vec<&'static str> = ::std::vec::Vec::new();
        $(
            let outcome = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| {
                $crate::backend::$case($factory)
            }));
            if outcome.is_err() {
                failed.push(::std::stringify!($case));
            }
        )*
        failed
    }};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_run_all {
    ({ $factory:expr } $($case:ident)*) => {{
        $( $crate::store::$case($factory).await; )*
    }};
}
