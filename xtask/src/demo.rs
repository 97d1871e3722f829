//! `cargo xtask demo`: runs the CLI's demo pipeline into a scratch
//! directory under the target dir and says where its data went.
//!
//! It builds the CLI with its default features (the memory backend and
//! local directories: no RocksDB, no HTTP client), so the first digest
//! comes minutes after a fresh clone; `--features rocksdb` (or `full`, …)
//! builds the rest when a run asks for it, and `--metrics-addr` among the
//! arguments adds the `prometheus` feature by itself.

use std::path::PathBuf;

use crate::util::{Result, Workspace, bail, io_context, run};

/// Events the demo processes unless `--events` is passed through.
const DEFAULT_EVENTS: &str = "200000";

/// Runs `highwater demo`, built with the CLI's default features plus
/// `features` (a comma-separated list of `highwater-cli` features). `extra`
/// is passed through to it; `--dir` and `--events` there replace the
/// defaults. Without `resume`, a directory left by an earlier run is
/// removed first so the demo starts fresh.
pub fn run_demo(ws: &Workspace, resume: bool, features: Option<&str>, extra: &[String]) -> Result {
    if features.is_some_and(needs_rocksdb) {
        // libclang and a C++ compiler, for librocksdb-sys only.
        crate::prereqs::ensure()?;
    }
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

    let mut cmd = ws.cargo(["run", "--profile", "ci", "-p", "highwater-cli"]);
    if let Some(f) = with_implied_features(features, extra) {
        cmd.args(["--features", &f]);
    }
    cmd.args(["--", "demo"]);
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

/// True when the `highwater-cli` features in `features` (comma- or
/// space-separated) build RocksDB.
fn needs_rocksdb(features: &str) -> bool {
    features
        .split([',', ' '])
        .any(|f| matches!(f.trim(), "rocksdb" | "full"))
}

/// `features` plus what the demo's arguments need and cost little to build:
/// `prometheus` for `--metrics-addr` (pure Rust). A backend or store is
/// never added this way (RocksDB is a 25-minute build: the user asks for it).
fn with_implied_features(features: Option<&str>, extra: &[String]) -> Option<String> {
    let wants_metrics = flag_value(extra, "--metrics-addr").is_some();
    match (features, wants_metrics) {
        (Some(f), true) => Some(format!("{f},prometheus")),
        (None, true) => Some("prometheus".to_owned()),
        (f, false) => f.map(str::to_owned),
    }
}

/// Removes `--flag VALUE` or `--flag=VALUE` from `args` and returns its
/// value (the last one if repeated).
pub fn take_flag(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let mut value = None;
    let mut i = 0;
    while i < args.len() {
        if args[i] == flag && i + 1 < args.len() {
            value = Some(args.remove(i + 1));
            args.remove(i);
        } else if let Some(v) = args[i].strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            value = Some(v.to_owned());
            args.remove(i);
        } else {
            i += 1;
        }
    }
    value
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

    #[test]
    fn features_are_taken_out_of_the_demo_arguments() {
        let mut a = args(&[
            "--events",
            "5",
            "--features",
            "rocksdb",
            "--backend",
            "rocksdb",
        ]);
        assert_eq!(take_flag(&mut a, "--features").as_deref(), Some("rocksdb"));
        assert_eq!(a, ["--events", "5", "--backend", "rocksdb"]);
        let mut b = args(&["--features=redis,s3"]);
        assert_eq!(take_flag(&mut b, "--features").as_deref(), Some("redis,s3"));
        assert!(b.is_empty());
        assert!(needs_rocksdb("redis,full"));
        assert!(needs_rocksdb("rocksdb"));
        assert!(!needs_rocksdb("redis,s3"));
    }

    #[test]
    fn metrics_addr_adds_the_prometheus_feature() {
        let metrics = args(&["--metrics-addr", "127.0.0.1:9464"]);
        assert_eq!(
            with_implied_features(None, &metrics).as_deref(),
            Some("prometheus")
        );
        assert_eq!(
            with_implied_features(Some("redis"), &metrics).as_deref(),
            Some("redis,prometheus")
        );
        assert_eq!(with_implied_features(None, &args(&["--wal"])), None);
        assert_eq!(
            with_implied_features(Some("rocksdb"), &args(&["--backend", "rocksdb"])).as_deref(),
            Some("rocksdb")
        );
    }
}
