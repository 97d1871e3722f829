//! `cargo xtask demo`: runs the CLI's demo pipeline into a scratch
//! directory under the target dir and says where its data went.

use std::path::PathBuf;

use crate::util::{Result, Workspace, bail, io_context, run};

/// Events the demo processes unless `--events` is passed through.
const DEFAULT_EVENTS: &str = "200000";

/// Runs `highwater demo`. `extra` is passed through to it; `--dir` and
/// `--events` there replace the defaults. Without `resume`, a directory left
/// by an earlier run is removed first so the demo starts fresh.
pub fn run_demo(ws: &Workspace, resume: bool, extra: &[String]) -> Result {
    crate::prereqs::ensure()?;
    let default_dir = ws.target_dir.join("demo-data");
    let user_dir = flag_value(extra, "--dir").map(|d| ws.root.join(d));
    let dir = user_dir.clone().unwrap_or_else(|| default_dir.clone());

    if dir.exists() && !resume {
        if user_dir.is_some() && !dir.starts_with(&ws.target_dir) {
            // Never delete a directory outside the build output on a guess.
            bail!(
                "{} exists: pass --resume to continue from it, or remove it yourself",
                dir.display()
            );
        }
        println!(
            "xtask: removing the previous demo data in {}",
            dir.display()
        );
        std::fs::remove_dir_all(&dir).map_err(io_context("remove", &dir))?;
    }

    let mut cmd = ws.cargo([
        "run",
        "--profile",
        "ci",
        "-p",
        "highwater-cli",
        "--",
        "demo",
    ]);
    if user_dir.is_none() {
        cmd.arg("--dir").arg(&dir);
    }
    if flag_value(extra, "--events").is_none() {
        cmd.args(["--events", DEFAULT_EVENTS]);
    }
    run(cmd.args(extra))?;

    println!();
    println!("demo data: {}", dir.display());
    println!("look inside with: highwater inspect {}", dir.display());
    println!(
        "  (from this checkout: cargo run --profile ci -p highwater-cli -- inspect {})",
        dir.display()
    );
    Ok(())
}

/// The value of `--flag VALUE` or `--flag=VALUE` in `args`, if present.
fn flag_value(args: &[String], flag: &str) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(PathBuf::from(v));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_are_found_in_both_spellings() {
        assert_eq!(
            flag_value(&args(&["--x", "--dir", "d"]), "--dir"),
            Some(PathBuf::from("d"))
        );
        assert_eq!(
            flag_value(&args(&["--events=5"]), "--events"),
            Some(PathBuf::from("5"))
        );
        assert_eq!(flag_value(&args(&["--directory", "d"]), "--dir"), None);
    }
}
