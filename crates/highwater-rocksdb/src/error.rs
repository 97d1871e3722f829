//! What to do about a RocksDB error.
//!
//! RocksDB's C API reports a status as text: a code (`IO error`,
//! `Corruption`, …), which the `rocksdb` crate parses into its `ErrorKind`,
//! and a message that for I/O errors carries the operating system's
//! `strerror` text. [`classify`] reads both, as well as text allows.

use highwater_core::ErrorKind;

/// Classifies a RocksDB error by what the caller should do.
///
/// - `IO error`: by the operating-system text in the message — "No space
///   left on device", "Disk quota exceeded", "File too large" are
///   [`ErrorKind::StorageFull`]; "Permission denied", "Operation not
///   permitted", "Read-only file system" are [`ErrorKind::PermissionDenied`];
///   "No such file or directory" is [`ErrorKind::NotFound`] (a file of the
///   database or checkpoint is missing); "Not a directory" / "Is a
///   directory" are [`ErrorKind::Misconfigured`]; anything else (a lock held
///   by another process, an interrupted call) is [`ErrorKind::Unavailable`].
/// - `Corruption`: [`ErrorKind::Corruption`]; `NotFound`:
///   [`ErrorKind::NotFound`]; `Invalid argument`: [`ErrorKind::Invalid`];
///   `Not implemented`: [`ErrorKind::Misconfigured`].
/// - `Resource busy`, `Operation failed. Try again.`, `Operation timed
///   out`, `Result incomplete`, `Merge in progress`, `Operation expired`,
///   `Operation aborted`, `Compaction too large`: [`ErrorKind::Unavailable`].
/// - `Shutdown in progress`, `Column family dropped`: [`ErrorKind::Closed`].
/// - An unknown code: by the operating-system text if there is one, else
///   [`ErrorKind::Internal`].
pub fn classify(err: &rocksdb::Error) -> ErrorKind {
    classify_status(err.kind(), err.as_ref())
}

/// [`classify`] from the parsed code and the message.
fn classify_status(kind: rocksdb::ErrorKind, message: &str) -> ErrorKind {
    use rocksdb::ErrorKind as K;
    match kind {
        K::IOError => os_text_kind(message).unwrap_or(ErrorKind::Unavailable),
        K::Corruption => ErrorKind::Corruption,
        K::NotFound => ErrorKind::NotFound,
        K::InvalidArgument => ErrorKind::Invalid,
        K::NotSupported => ErrorKind::Misconfigured,
        K::Busy
        | K::TryAgain
        | K::TimedOut
        | K::Incomplete
        | K::MergeInProgress
        | K::Expired
        | K::Aborted
        | K::CompactionTooLarge => ErrorKind::Unavailable,
        K::ShutdownInProgress | K::ColumnFamilyDropped => ErrorKind::Closed,
        K::Unknown => os_text_kind(message).unwrap_or(ErrorKind::Internal),
    }
}

/// The kind named by an operating system's error text in `message`.
fn os_text_kind(message: &str) -> Option<ErrorKind> {
    const TEXTS: [(&str, ErrorKind); 9] = [
        ("No space left on device", ErrorKind::StorageFull),
        ("Disk quota exceeded", ErrorKind::StorageFull),
        ("File too large", ErrorKind::StorageFull),
        ("Permission denied", ErrorKind::PermissionDenied),
        ("Operation not permitted", ErrorKind::PermissionDenied),
        ("Read-only file system", ErrorKind::PermissionDenied),
        ("No such file or directory", ErrorKind::NotFound),
        ("Not a directory", ErrorKind::Misconfigured),
        ("Is a directory", ErrorKind::Misconfigured),
    ];
    TEXTS
        .iter()
        .find(|(text, _)| message.contains(text))
        .map(|(_, kind)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::ErrorKind as K;

    #[test]
    fn statuses_are_classified_by_what_to_do() {
        let cases = [
            (
                K::IOError,
                "IO error: No space left on device: While appending to file: /d/000012.log: No space left on device",
                ErrorKind::StorageFull,
            ),
            (
                K::IOError,
                "IO error: While open a file for appending: /d/LOCK: Read-only file system",
                ErrorKind::PermissionDenied,
            ),
            (
                K::IOError,
                "IO error: While opening a file for sequentially reading: /d/CURRENT: No such file or directory",
                ErrorKind::NotFound,
            ),
            (
                K::IOError,
                "IO error: While lock file: /d/LOCK: Resource temporarily unavailable",
                ErrorKind::Unavailable,
            ),
            (
                K::Corruption,
                "Corruption: block checksum mismatch",
                ErrorKind::Corruption,
            ),
            (K::Busy, "Resource busy: ", ErrorKind::Unavailable),
            (
                K::ShutdownInProgress,
                "Shutdown in progress: ",
                ErrorKind::Closed,
            ),
            (K::Unknown, "something else", ErrorKind::Internal),
        ];
        for (kind, message, want) in cases {
            assert_eq!(classify_status(kind, message), want, "{message}");
        }
    }
}
