//! I/O faults injected at the system-call boundary of a child process: a
//! small `LD_PRELOAD` library (`faultfs.c`, compiled on first use with the
//! system C compiler) that makes `fdatasync`/`fsync`, or reads, of chosen
//! files fail with `EIO`, for the faults the kernel offers no switch for
//! (issue 18: an `fdatasync` that fails, a segment that cannot be read).
//! The code under test is the real one, unchanged: only the C library's
//! answer differs.
//!
//! Protocol: a child started with [`FaultFs::apply`] fails the calls of
//! the chosen [`Fault`] on every file descriptor whose path contains the
//! pattern, while the *arm file* exists (the child or the test creates it
//! with [`FaultFs::arm`] when the fault should start). A sync fault fires
//! once and removes the arm file (the kernel reports a writeback error once
//! and lets the next `fsync` succeed); a read fault lasts while armed.
//! Each injected fault is reported on the child's stderr as
//! `faultfs: CALL(FD) -> EIO`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const SOURCE: &str = include_str!("faultfs.c");

/// Which calls fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `fdatasync` and `fsync`, once per arming.
    Sync,
    /// `read`, `pread`, `pread64` and `readv`, while armed.
    Read,
}

/// A fault plan: which calls, on which files, armed by which file.
#[derive(Debug, Clone)]
pub struct FaultFs {
    fault: Fault,
    pattern: String,
    arm: PathBuf,
}

impl FaultFs {
    /// Fails `fault` calls on files whose path contains `pattern` while
    /// `arm` exists.
    pub fn new(fault: Fault, pattern: &str, arm: &Path) -> FaultFs {
        FaultFs {
            fault,
            pattern: pattern.to_string(),
            arm: arm.to_path_buf(),
        }
    }

    /// Sets the child's environment: the preloaded library and the plan.
    ///
    /// # Panics
    ///
    /// Panics when the library cannot be built (no C compiler).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("LD_PRELOAD", shim())
            .env("HW_FAULTFS_PATTERN", &self.pattern)
            .env("HW_FAULTFS_ARM", &self.arm)
            .env(
                match self.fault {
                    Fault::Sync => "HW_FAULTFS_SYNC",
                    Fault::Read => "HW_FAULTFS_READ",
                },
                "1",
            );
    }

    /// Arms the plan (from the test or, given the path, from the child).
    ///
    /// # Panics
    ///
    /// Panics when the arm file cannot be created.
    pub fn arm(arm: &Path) {
        std::fs::write(arm, b"armed").expect("create the faultfs arm file");
    }
}

/// The path of the compiled library, built once per process.
///
/// # Panics
///
/// Panics when the C compiler (`cc`) fails or is missing.
pub fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("highwater-faultfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the faultfs build directory");
        let src = dir.join("faultfs.c");
        let lib = dir.join("libfaultfs.so");
        std::fs::write(&src, SOURCE).expect("write faultfs.c");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
            .arg(&lib)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("run cc to build the faultfs library (a C compiler is needed)");
        assert!(
            out.status.success(),
            "cc failed to build faultfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lib
    })
}
