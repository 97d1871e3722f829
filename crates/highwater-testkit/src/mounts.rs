//! Small real file systems for tests of permanent I/O failures: a tmpfs of
//! a given size (a full disk) or one remounted read-only, mounted under a
//! fresh directory and unmounted when dropped.
//!
//! Mounting needs root (`chmod` would not do: root writes through any
//! mode). [`Tmpfs::mount_or_skip`] returns `None` and prints why when the
//! process is not root or the kernel refuses the mount (a container without
//! `CAP_SYS_ADMIN`); CI runs as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// A tmpfs mounted on a fresh directory under the system's temporary
/// directory; unmounted (and the directory removed) on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with the mount `options` (for example `size=1m`), or
    /// returns why it cannot.
    pub fn mount(options: &str) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("not running as root".into());
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "highwater-tmpfs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if let Err(e) = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&dir))
        {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(Tmpfs { dir })
    }

    /// [`mount`](Self::mount), or `None` after printing why `test` cannot
    /// run here.
    pub fn mount_or_skip(test: &str, options: &str) -> Option<Tmpfs> {
        match Tmpfs::mount(options) {
            Ok(m) => Some(m),
            Err(why) => {
                eprintln!("skipping {test}: cannot mount a tmpfs ({why}); run as root to test it");
                None
            }
        }
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes the mounted file system read-only (files stay readable).
    pub fn remount_read_only(&self) -> Result<(), String> {
        run(Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match run(Command::new("umount").arg(&self.dir)) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&self.dir);
            }
            Err(e) => eprintln!("could not unmount {}: {e}", self.dir.display()),
        }
    }
}

/// True when this process runs as root (the real user id, from
/// `/proc/self/status`; false where that file does not exist).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
