//! What to do about an `object_store` error: [`classify`] maps it to an
//! [`ErrorKind`]; only [`ErrorKind::Unavailable`] is retried.

use highwater_core::ErrorKind;
pub use highwater_core::RetryPolicy;

/// Classifies an `object_store` error by what the caller should do.
///
/// - `NotFound`: [`ErrorKind::NotFound`] for a missing object, but
///   [`ErrorKind::Misconfigured`] when the service says the bucket or
///   container itself does not exist (S3 `NoSuchBucket`, Azure
///   `ContainerNotFound`, GCS "bucket does not exist").
/// - `AlreadyExists`, `Precondition` (a create-only put that lost),
///   `NotModified`: [`ErrorKind::AlreadyExists`].
/// - `PermissionDenied` (HTTP 403), `Unauthenticated` (401):
///   [`ErrorKind::PermissionDenied`].
/// - `NotImplemented`, `NotSupported`, `UnknownConfigurationKey`:
///   [`ErrorKind::Misconfigured`]; `InvalidPath`: [`ErrorKind::Invalid`];
///   a failed blocking task: [`ErrorKind::Internal`].
/// - `Generic` wrapping an operating-system error (the local file system):
///   [`ErrorKind::of_io`] of it — `EACCES`/`EROFS` are permission denied,
///   `ENOSPC`/`EDQUOT` storage full.
/// - `Generic` with an HTTP status in its source chain (see
///   [`http_status`]; `object_store` reports a listing's 404 and any
///   status without a variant this way): 404 is a missing bucket
///   ([`ErrorKind::Misconfigured`]), 401/403 [`ErrorKind::PermissionDenied`],
///   507 [`ErrorKind::StorageFull`], 408, 429 and 5xx
///   [`ErrorKind::Unavailable`], any other 4xx (a malformed request, a part
///   below the service's minimum size, a wrong region)
///   [`ErrorKind::Misconfigured`].
/// - Everything else (connection and timeout errors, which carry no status,
///   and HTTP 5xx that `object_store`'s own retries gave up on) is
///   [`ErrorKind::Unavailable`].
pub fn classify(err: &object_store::Error) -> ErrorKind {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } if names_missing_container(err) => ErrorKind::Misconfigured,
        E::NotFound { .. } => ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            ErrorKind::AlreadyExists
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        E::NotImplemented { .. } | E::NotSupported { .. } | E::UnknownConfigurationKey { .. } => {
            ErrorKind::Misconfigured
        }
        E::InvalidPath { .. } => ErrorKind::Invalid,
        E::JoinError { .. } => ErrorKind::Internal,
        _ => {
            if let Some(kind) = ErrorKind::of_io_in_chain(err) {
                return kind;
            }
            match http_status(err) {
                Some(404) => ErrorKind::Misconfigured,
                Some(401 | 403) => ErrorKind::PermissionDenied,
                Some(507) => ErrorKind::StorageFull,
                Some(408 | 429) => ErrorKind::Unavailable,
                Some(status) if (400..500).contains(&status) => ErrorKind::Misconfigured,
                _ => ErrorKind::Unavailable,
            }
        }
    }
}

/// True when retrying the request may succeed: [`classify`] says
/// [`ErrorKind::Unavailable`]. Every permanent error is returned at once.
pub fn is_transient(err: &object_store::Error) -> bool {
    classify(err).is_transient()
}

/// True when the messages of `err`'s source chain say that the bucket or
/// container does not exist (the answer to a request for an object in it).
fn names_missing_container(err: &object_store::Error) -> bool {
    const MARKERS: [&str; 4] = [
        "NoSuchBucket",
        "ContainerNotFound",
        "bucket does not exist",
        "container does not exist",
    ];
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        let text = e.to_string();
        if MARKERS.iter().any(|m| text.contains(m)) {
            return true;
        }
        source = e.source();
    }
    false
}

/// The HTTP status of a cloud store's answer behind `err`, if it carried one.
///
/// `object_store` keeps its HTTP error type private; its message is public
/// and stable: `Server returned non-2xx status code: 503 Service
/// Unavailable: …` (or `Server returned error response: …` for an error in
/// a 200 body, which carries no status and is transient). This reads the
/// status from the messages of the error's source chain.
pub fn http_status(err: &object_store::Error) -> Option<u16> {
    const MARKER: &str = "status code: ";
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        let text = e.to_string();
        if let Some(at) = text.find(MARKER) {
            let digits: String = text[at + MARKER.len()..].chars().take(3).collect();
            if digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()) {
                return digits.parse().ok();
            }
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Http(&'static str);

    impl std::fmt::Display for Http {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Http {}

    fn generic(msg: &'static str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(Http(msg)),
        }
    }

    #[test]
    fn statuses_are_read_from_the_source_chain() {
        let e = generic("Server returned non-2xx status code: 503 Service Unavailable: slow down");
        assert_eq!(http_status(&e), Some(503));
        assert!(is_transient(&e));
        let e = generic("Server returned non-2xx status code: 400 Bad Request: EntityTooSmall");
        assert_eq!(http_status(&e), Some(400));
        assert!(!is_transient(&e));
        for status in ["408 Request Timeout", "429 Too Many Requests"] {
            let msg: &'static str =
                format!("Server returned non-2xx status code: {status}: x").leak();
            assert!(is_transient(&generic(msg)), "{status}");
        }
        let e = generic("error sending request: connection refused");
        assert_eq!(http_status(&e), None);
        assert!(is_transient(&e));
        let e = object_store::Error::AlreadyExists {
            path: "p".into(),
            source: Box::new(Http(
                "Server returned non-2xx status code: 409 Conflict: busy",
            )),
        };
        assert_eq!(http_status(&e), Some(409));
        assert!(!is_transient(&e));
    }

    #[test]
    fn errors_are_classified_by_what_to_do() {
        let missing_bucket = object_store::Error::NotFound {
            path: "p".into(),
            source: Box::new(Http(
                "Server returned non-2xx status code: 404 Not Found: <Error><Code>NoSuchBucket</Code></Error>",
            )),
        };
        assert_eq!(classify(&missing_bucket), ErrorKind::Misconfigured);
        let missing_object = object_store::Error::NotFound {
            path: "p".into(),
            source: Box::new(Http(
                "Server returned non-2xx status code: 404 Not Found: <Error><Code>NoSuchKey</Code></Error>",
            )),
        };
        assert_eq!(classify(&missing_object), ErrorKind::NotFound);
        let listing = generic("Server returned non-2xx status code: 404 Not Found: NoSuchBucket");
        assert_eq!(classify(&listing), ErrorKind::Misconfigured);
        let forbidden = generic("Server returned non-2xx status code: 403 Forbidden: AccessDenied");
        assert_eq!(classify(&forbidden), ErrorKind::PermissionDenied);
        let denied = object_store::Error::PermissionDenied {
            path: "p".into(),
            source: Box::new(Http("denied")),
        };
        assert_eq!(classify(&denied), ErrorKind::PermissionDenied);
        assert!(!is_transient(&denied));
        let full = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        };
        assert_eq!(classify(&full), ErrorKind::StorageFull);
        let interrupted = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::Interrupted)),
        };
        assert_eq!(classify(&interrupted), ErrorKind::Unavailable);
        assert!(is_transient(&interrupted));
        let slow = generic("Server returned non-2xx status code: 503 Service Unavailable: x");
        assert_eq!(classify(&slow), ErrorKind::Unavailable);
    }
}
