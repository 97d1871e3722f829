//! Crash tests: child processes killed with SIGKILL at a random moment.
//!
//! Every crash test of the workspace uses this one mechanism:
//!
//! - **The child is the test binary itself.** A crash test target is
//!   declared with `harness = false` and its `main` is [`main`], given the
//!   target's children and tests. [`child`] builds a command that runs the
//!   same binary again with [`CHILD_ENV`] naming a child; [`main`] then runs
//!   that child instead of the tests. So no crate ships a binary or a
//!   hidden subcommand that exists only to be killed, the child's code sits
//!   beside the checks that read its output (no copied helpers), and cargo
//!   builds it with the test.
//! - **The tests run under [`libtest_mimic`]**, which speaks the built-in
//!   harness's command line (`--list --format terse`, `--exact`,
//!   `--nocapture`, filters), so `cargo test` and `cargo nextest` list, run
//!   and filter them like any other test.
//! - **[`Victim`] spawns, kills and collects**: stdout and stderr are read
//!   on their own threads (a full pipe never blocks the child), and only
//!   whole lines count: a line the kill cut short was never acknowledged.
//!   [`Victim::kill_after`] sends SIGKILL after the delay the test's own
//!   schedule chose (no destructors, no flush, no chance to finish a
//!   write) unless the child already exited, and says which happened.
//!
//! The crash tests using it: `crates/highwater-wal/tests/crash.rs` (the
//! log alone, so it stays with the log's crate) and
//! `crates/highwater/tests/crash.rs` (workloads driving the facade); the
//! CLI's kill-and-resume tests kill `highwater demo`, a user command,
//! through [`Victim`] too.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

/// The environment variable naming the child a crash test binary runs
/// instead of its tests.
pub const CHILD_ENV: &str = "HIGHWATER_CRASH_CHILD";

/// A child process a crash test binary can become: its name (the value of
/// [`CHILD_ENV`]) and its body, given the command-line arguments after the
/// program name.
#[derive(Debug, Clone, Copy)]
pub struct CrashChild {
    /// Name under which [`child`] asks for it.
    pub name: &'static str,
    /// The child's body.
    pub run: fn(&[String]) -> ExitCode,
}

/// A test of a crash test binary. It fails by panicking.
#[derive(Debug, Clone, Copy)]
pub struct CrashTest {
    /// The test's name, as `cargo test` and `cargo nextest` show it.
    pub name: &'static str,
    /// The test.
    pub run: fn(),
}

/// The `main` of a crash test target (`harness = false`): runs the child
/// that [`CHILD_ENV`] names, else the `tests` under [`libtest_mimic`] with
/// the built-in harness's arguments.
pub fn main(children: &[CrashChild], tests: &[CrashTest]) -> ExitCode {
    if let Some(name) = std::env::var_os(CHILD_ENV) {
        let name = name.to_string_lossy();
        let Some(c) = children.iter().find(|c| c.name == name) else {
            let known: Vec<_> = children.iter().map(|c| c.name).collect();
            eprintln!("{CHILD_ENV}={name:?} names no child of this binary; known: {known:?}");
            return ExitCode::from(2);
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        return (c.run)(&args);
    }
    let args = libtest_mimic::Arguments::from_args();
    let trials = tests
        .iter()
        .map(|t| {
            let run = t.run;
            libtest_mimic::Trial::test(t.name, move || {
                run();
                Ok(())
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// The environment variable that fixes the seed of [`kill_schedule`], to
/// replay a failed run.
pub const SEED_ENV: &str = "HIGHWATER_CRASH_SEED";

/// The generator of a crash test's kill moments, seeded from [`SEED_ENV`]
/// when it is set (a failed run printed its seed) or else from the wall
/// clock, so every run tries new moments. Prints the seed.
///
/// # Panics
///
/// Panics when [`SEED_ENV`] is set to something that is not a `u64`.
pub fn kill_schedule() -> crate::SplitMix64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not a u64")),
        Err(_) => {
            #[expect(
                clippy::disallowed_methods,
                reason = "a random seed, not the time of state"
            )]
            let now = std::time::SystemTime::now();
            now.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        }
    };
    println!("kill-schedule seed: {seed} (replay with {SEED_ENV}={seed})");
    crate::SplitMix64::new(seed)
}

/// A command that runs this test binary again as the child `name` (one of
/// the children given to [`main`]), with stdin closed. Add the child's
/// arguments, then [`Victim::spawn`] it.
///
/// # Panics
///
/// Panics when the path of the running binary is unknown.
pub fn child(name: &str) -> Command {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let mut c = Command::new(exe);
    c.env(CHILD_ENV, name).stdin(Stdio::null());
    c
}

/// A running child process whose stdout and stderr are being collected.
#[derive(Debug)]
pub struct Victim {
    child: Child,
    stdout: JoinHandle<Vec<String>>,
    stderr: JoinHandle<String>,
}

/// How a [`Victim`] ended and what it printed.
#[derive(Debug)]
pub struct Ended {
    /// True when the test killed it; false when it had exited by itself
    /// before the kill was due.
    pub killed: bool,
    /// Its exit status.
    pub status: ExitStatus,
    /// The whole lines it printed to stdout, without their newlines; a
    /// last line cut short by the kill is not among them.
    pub lines: Vec<String>,
    /// Everything it printed to stderr.
    pub stderr: String,
}

impl Ended {
    /// The first line starting with `prefix`.
    pub fn line_starting(&self, prefix: &str) -> Option<&str> {
        self.lines
            .iter()
            .map(String::as_str)
            .find(|l| l.starts_with(prefix))
    }

    /// Panics, naming `what` and showing stderr, unless the process was
    /// killed or exited successfully.
    pub fn assert_killed_or_succeeded(&self, what: &str) {
        assert!(
            self.killed || self.status.success(),
            "{what}: exited by itself with {} before the kill:\n{}",
            self.status,
            self.stderr
        );
    }
}

impl Victim {
    /// Spawns `cmd` with stdout and stderr piped and collected.
    ///
    /// # Panics
    ///
    /// Panics when the process cannot be started.
    pub fn spawn(mut cmd: Command) -> Victim {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || whole_lines(out));
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error ends the collection; what was read is kept.
            let _ = err.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        Victim {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits `delay`, then kills the process with SIGKILL unless it has
    /// already exited; collects its output.
    pub fn kill_after(mut self, delay: Duration) -> Ended {
        std::thread::sleep(delay);
        let killed = match self.child.try_wait().expect("poll the child") {
            Some(_) => false,
            None => {
                self.child.kill().expect("SIGKILL the child");
                true
            }
        };
        self.finish(killed)
    }

    /// Waits until the process exits by itself; collects its output.
    pub fn wait(self) -> Ended {
        self.finish(false)
    }

    fn finish(mut self, killed: bool) -> Ended {
        let status = self.child.wait().expect("wait for the child");
        Ended {
            killed,
            status,
            lines: self.stdout.join().expect("the stdout reader"),
            stderr: self.stderr.join().expect("the stderr reader"),
        }
    }
}

/// The newline-terminated lines of `r` until its end (or a read error, or
/// a last line without a newline: the writer was killed mid-line).
fn whole_lines(r: impl Read) -> Vec<String> {
    let mut r = BufReader::new(r);
    let mut lines = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                lines.push(String::from_utf8_lossy(&line).into_owned());
            }
            Ok(_) => break,
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn a_kill_keeps_the_whole_lines_and_drops_a_cut_one() {
        let ended = Victim::spawn(sh("echo one; echo two; printf cut; exec sleep 60"))
            .kill_after(Duration::from_secs(1));
        assert!(ended.killed);
        assert!(!ended.status.success());
        assert_eq!(ended.lines, ["one", "two"]);
        assert_eq!(ended.line_starting("tw"), Some("two"));
        ended.assert_killed_or_succeeded("sh");
    }

    #[test]
    fn a_child_that_exits_first_is_not_killed_and_its_failure_is_seen() {
        let ended =
            Victim::spawn(sh("echo out; echo oops >&2; exit 3")).kill_after(Duration::from_secs(1));
        assert!(!ended.killed);
        assert_eq!(ended.status.code(), Some(3));
        assert_eq!(ended.lines, ["out"]);
        assert_eq!(ended.stderr, "oops\n");
        let failed = std::panic::catch_unwind(|| ended.assert_killed_or_succeeded("sh"));
        assert!(failed.is_err(), "a failed exit must not pass");
        let ok = Victim::spawn(sh("echo done")).wait();
        assert!(!ok.killed && ok.status.success());
        ok.assert_killed_or_succeeded("sh");
    }
}
