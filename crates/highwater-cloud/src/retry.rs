//! Bounded retries of transient object-store errors.

pub use highwater_core::RetryPolicy;

/// True when retrying the request may succeed.
///
/// Answers about the object itself (not found, already exists, precondition
/// failed, not modified), requests the store cannot serve (not implemented,
/// not supported, invalid path, bad configuration) and authorization
/// failures are permanent. So is any other HTTP 4xx answer of a cloud
/// store (a malformed request, a part below the service's minimum size)
/// except 408 Request Timeout and 429 Too Many Requests. Everything else —
/// I/O and network failures, timeouts, HTTP 5xx (which `object_store`
/// reports as `Generic` once its own HTTP retries are used up), a failed
/// blocking task — is treated as transient.
pub fn is_transient(err: &object_store::Error) -> bool {
    use object_store::Error as E;
    if matches!(
        err,
        E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::NotImplemented { .. }
            | E::NotSupported { .. }
            | E::InvalidPath { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
    ) {
        return false;
    }
    match http_status(err) {
        Some(status) if (400..500).contains(&status) => matches!(status, 408 | 429),
        _ => true,
    }
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
}
