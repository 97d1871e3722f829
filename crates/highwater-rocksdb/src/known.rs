//! Content addresses the backend has learned for its own SST and blob
//! files, kept beside them so that local recovery takes a file without
//! reading it.
//!
//! A database directory may hold [`FILE`]: one line per file,
//! `name len dev ino mtime_s mtime_ns id`. A line is written only for a
//! file whose content address is known — fetched or linked by a restore,
//! or uploaded by a committed native checkpoint — with the file's
//! identity as `stat` gave it then. Local recovery trusts a set-aside file
//! whose name, length, device, inode and modification time still match the
//! line and whose address is the one the checkpoint asks for; any other
//! candidate is read and hashed. RocksDB never rewrites an SST or blob
//! file, and it checks every block's checksum when it reads one, so damage
//! after the line was written surfaces as a corruption error on read
//! rather than as wrong state.
//!
//! The file is a cache: unreadable, oversized or malformed content means
//! "not known", never an error, and it is replaced by rename, not fsynced
//! (a line lost to a crash costs a hash later, nothing more).

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use highwater_core::{ArtifactId, NativeFileRef};

/// The file's name inside a database directory. RocksDB leaves names it
/// does not recognise alone.
pub(crate) const FILE: &str = "HIGHWATER-CONTENT-IDS";

/// A file larger than this is not read (a few hundred bytes a line; a
/// database of 100,000 files stays below it).
const MAX_BYTES: u64 = 16 << 20;

/// What `stat` says identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    dev: u64,
    ino: u64,
    mtime_s: i64,
    mtime_ns: i64,
}

impl Stamp {
    pub(crate) fn of(meta: &Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_s: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
        }
    }

    /// The stamp of the file at `path`, if it can be read.
    pub(crate) fn at(path: &Path) -> Option<Stamp> {
        std::fs::metadata(path).ok().map(|m| Stamp::of(&m))
    }
}

/// The known files of one directory, by name.
pub(crate) type Known = HashMap<String, (Stamp, ArtifactId)>;

/// Reads `dir`'s [`FILE`]; empty when there is none or it cannot be read.
pub(crate) fn load(dir: &Path) -> Known {
    let mut text = String::new();
    let read = std::fs::File::open(dir.join(FILE))
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_string(&mut text));
    match read {
        Ok(n) if n as u64 <= MAX_BYTES => text.lines().filter_map(parse).collect(),
        _ => Known::new(),
    }
}

fn parse(line: &str) -> Option<(String, (Stamp, ArtifactId))> {
    let mut fields = line.split(' ');
    let mut next = || fields.next();
    let name = next()?;
    let stamp = Stamp {
        len: next()?.parse().ok()?,
        dev: next()?.parse().ok()?,
        ino: next()?.parse().ok()?,
        mtime_s: next()?.parse().ok()?,
        mtime_ns: next()?.parse().ok()?,
    };
    let id = ArtifactId::from_hex(next()?).ok()?;
    (next().is_none() && crate::backend::immutable_file(name))
        .then(|| (name.to_string(), (stamp, id)))
}

/// Writes `known` as `dir`'s [`FILE`] (through a temporary file and a
/// rename, so a reader sees the old or the new list). An entry whose file
/// was modified no earlier than the list is written is left out: the
/// file system's clock is coarse (a tick of some milliseconds), and a
/// change within the same tick would keep the stamp (git's "racily clean"
/// entries). Failures are logged: the list is a cache.
pub(crate) fn save(dir: &Path, known: &Known) {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        use std::io::Write;
        let now = Stamp::of(&f.metadata()?);
        let mut text = String::new();
        for (name, (s, id)) in known {
            if (s.mtime_s, s.mtime_ns) < (now.mtime_s, now.mtime_ns) {
                text.push_str(&format!(
                    "{name} {} {} {} {} {} {id}\n",
                    s.len, s.dev, s.ino, s.mtime_s, s.mtime_ns
                ));
            }
        }
        f.write_all(text.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, dir.join(FILE))
    });
    if let Err(e) = written {
        tracing::warn!(dir = %dir.display(), error = %e, "could not record the content addresses of local files");
    }
}

/// Adds to `dir`'s list each of `files` that `stamps` (taken when the
/// content was what `files` names) has with the same length, and drops
/// entries whose file is gone or changed.
pub(crate) fn record(dir: &Path, files: &[NativeFileRef], stamps: &HashMap<String, Stamp>) {
    let mut known = load(dir);
    known.retain(|name, (stamp, _)| Stamp::at(&dir.join(name)) == Some(*stamp));
    for f in files {
        if let Some(stamp) = stamps.get(&f.name).filter(|s| s.len == f.len) {
            known.insert(f.name.clone(), (*stamp, f.id));
        }
    }
    save(dir, &known);
}

/// The stamps of the SST and blob files among `names` in `dir`.
pub(crate) fn stamps<'a>(
    dir: &Path,
    names: impl IntoIterator<Item = &'a str>,
) -> HashMap<String, Stamp> {
    names
        .into_iter()
        .filter(|n| crate::backend::immutable_file(n))
        .filter_map(|n| Stamp::at(&dir.join(n)).map(|s| (n.to_string(), s)))
        .collect()
}

/// True when `recorded` (what the list of the directory `path` is in
/// says of it) vouches that the file at `path` holds `f`'s bytes: same
/// address and length, and the file unchanged since.
pub(crate) fn vouches(
    recorded: Option<&(Stamp, ArtifactId)>,
    path: &Path,
    f: &NativeFileRef,
) -> bool {
    recorded.is_some_and(|(stamp, id)| {
        *id == f.id && stamp.len == f.len && Stamp::at(path) == Some(*stamp)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_round_trips_and_vouches_only_for_unchanged_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("000001.sst"), b"one").unwrap();
        std::fs::write(d.join("000002.sst"), b"two!").unwrap();
        let f1 = NativeFileRef {
            name: "000001.sst".into(),
            len: 3,
            id: ArtifactId::of(b"one"),
        };
        let f2 = NativeFileRef {
            name: "000002.sst".into(),
            len: 4,
            id: ArtifactId::of(b"two!"),
        };
        // Older than the list by more than the file system's clock tick.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let stamps = stamps(d, ["000001.sst", "000002.sst", "CURRENT"]);
        assert_eq!(stamps.len(), 2, "only immutable files");
        record(d, &[f1.clone(), f2.clone()], &stamps);
        let known = load(d);
        assert_eq!(known.len(), 2);
        assert!(vouches(known.get("000001.sst"), &d.join("000001.sst"), &f1));
        assert!(vouches(known.get("000002.sst"), &d.join("000002.sst"), &f2));
        // Another id, or a rewritten file, is not vouched for.
        let other = NativeFileRef {
            id: ArtifactId::of(b"uno"),
            ..f1.clone()
        };
        assert!(!vouches(
            known.get("000001.sst"),
            &d.join("000001.sst"),
            &other
        ));
        std::fs::remove_file(d.join("000002.sst")).unwrap();
        std::fs::write(d.join("000002.sst"), b"TWO!").unwrap();
        assert!(!vouches(
            known.get("000002.sst"),
            &d.join("000002.sst"),
            &f2
        ));
        // Recording again drops the changed file's line.
        record(d, &[], &HashMap::new());
        assert_eq!(load(d).keys().collect::<Vec<_>>(), vec!["000001.sst"]);
        // A file modified no earlier than the list is written is left out
        // (it could change again within the tick without its stamp
        // changing).
        let mut known = load(d);
        let future = Stamp {
            mtime_s: i64::MAX,
            ..Stamp::at(&d.join("000001.sst")).unwrap()
        };
        known.insert("000004.sst".into(), (future, f1.id));
        save(d, &known);
        let saved = load(d);
        assert!(!saved.contains_key("000004.sst"));
        assert!(saved.contains_key("000001.sst"));
    }

    #[test]
    fn damaged_or_hostile_lists_are_empty_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let id = ArtifactId::of(b"x");
        for bad in [
            "000001.sst 1 2 3 4 5".to_string(),
            format!("000001.sst 1 2 3 4 5 {id} extra"),
            format!("../etc/passwd 1 2 3 4 5 {id}"),
            format!("000001.sst -1 2 3 4 5 {id}"),
            "\u{0}\u{ff}".to_string(),
        ] {
            std::fs::write(d.join(FILE), &bad).unwrap();
            assert!(load(d).is_empty(), "{bad:?}");
        }
        std::fs::write(d.join(FILE), format!("000001.sst 1 2 3 4 5 {id}\n")).unwrap();
        assert_eq!(load(d).len(), 1);
        // Too large to read: not known.
        let big = std::fs::File::create(d.join(FILE)).unwrap();
        big.set_len(MAX_BYTES + 1).unwrap();
        assert!(load(d).is_empty());
    }
}
