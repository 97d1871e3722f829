//! Shared plumbing: the workspace paths, the error type and a command runner
//! that prints every command before it runs it.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An xtask failure: a message for the person at the terminal.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(msg: String) -> Self {
        Error(msg)
    }
}

impl From<&str> for Error {
    fn from(msg: &str) -> Self {
        Error(msg.to_owned())
    }
}

/// Result alias of every xtask step.
pub type Result<T = ()> = std::result::Result<T, Error>;

/// Returns early with an [`Error`] built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::util::Error::from(format!($($arg)*)))
    };
}
pub(crate) use bail;

/// Wraps an I/O error with what was being done and to which path.
pub fn io_context(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let msg = format!("{what} {}", path.display());
    move |e| Error(format!("{msg}: {e}"))
}

/// Where the workspace and its build output live.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The repository root (the directory holding the workspace `Cargo.toml`).
    pub root: PathBuf,
    /// `$CARGO_TARGET_DIR` (made absolute) or `<root>/target`.
    pub target_dir: PathBuf,
}

impl Workspace {
    /// Finds the workspace from xtask's own manifest directory.
    ///
    /// `cargo run` sets `CARGO_MANIFEST_DIR` at run time; the compile-time
    /// value is the fallback when the binary is started directly.
    pub fn locate() -> Result<Workspace> {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let Some(root) = manifest_dir.parent().map(Path::to_path_buf) else {
            bail!(
                "cannot find the repository root above {}",
                manifest_dir.display()
            );
        };
        let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
        // Cargo resolves a relative CARGO_TARGET_DIR against the directory it
        // is started in; every command here starts in the root instead, so
        // the path is made absolute once and passed on explicitly.
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => cwd.join(dir),
            _ => root.join("target"),
        };
        Ok(Workspace { root, target_dir })
    }

    /// A path relative to the root, for messages.
    pub fn display_path(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// A `cargo` command started in the root with the target dir pinned.
    pub fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        // The `cargo` on PATH (normally the rustup proxy) honours
        // rust-toolchain.toml, and finds cargo-nextest, cargo-deny etc.
        let mut cmd = Command::new("cargo");
        cmd.args(args)
            .current_dir(&self.root)
            .env("CARGO_TARGET_DIR", &self.target_dir);
        cmd
    }

    /// True when `cargo <args>` runs and exits successfully; output hidden.
    /// Used to probe for optional cargo subcommands.
    pub fn cargo_probe(&self, args: &[&str]) -> bool {
        self.cargo(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Prints `cmd` the way a shell user would type it, then runs it.
/// A non-zero exit is an error that names the command.
pub fn run(cmd: &mut Command) -> Result {
    let shown = render(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    if !status.success() {
        let code = status
            .code()
            .map_or_else(|| "a signal".to_owned(), |c| format!("status {c}"));
        bail!("`{shown}` failed with {code}");
    }
    Ok(())
}

/// Runs `program args` and returns its trimmed stdout, or `None` if it
/// cannot run or fails. For facts about the machine, not for build steps.
pub fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The command line of `cmd`, quoted for a POSIX shell where needed.
pub fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_shell_quoted() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--", "a b", "it's", ""]);
        assert_eq!(render(&cmd), r#"cargo test -- 'a b' 'it'\''s' ''"#);
    }

    #[test]
    fn a_failing_command_is_an_error_naming_it() {
        let err = run(Command::new("false").arg("x")).unwrap_err();
        assert_eq!(err.to_string(), "`false x` failed with status 1");
    }
}
