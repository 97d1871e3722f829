//! `cargo xtask ci`: exactly what CI runs, in order, stopping at the first
//! failure.
//!
//! Cheap checks come first so a formatting slip fails in seconds, not after
//! the build. Clippy, the docs and the facade's feature matrix use the `ci`
//! profile like the tests and benches, so all of them share one build of the
//! dependencies (RocksDB's above all).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Result, Workspace, bail, render, run};
use crate::{bench, testing, tidy};

/// The packages whose feature combinations CI checks: the facade, and the
/// CLI (whose default build is the one `cargo xtask demo` makes).
const FEATURE_PACKAGES: [&str; 2] = ["highwater", "highwater-cli"];

/// Feature sets of the facade that build RocksDB, each with a package
/// checked in the same command only so that the features of the crates
/// under `librocksdb-sys` are the workspace build's: alone, `rocksdb` leaves
/// out libc's `extra_traits` (turned on by object_store's nix, under
/// `highwater-cloud`), which would make Cargo build RocksDB again (≈ 23
/// minutes). The facade itself is still checked with that feature alone:
/// the other package does not depend on it. (The sets without RocksDB
/// build zstd-sys once more, without the `legacy` feature RocksDB turns on:
/// about a minute, once per target directory.)
const SHARED_BUILD_COMPANIONS: [(&str, &str); 1] = [("rocksdb", "highwater-cloud")];

/// How a step ended.
enum Outcome {
    Passed,
    Skipped(&'static str),
}

/// Runs every CI step; fails with the name of the first step that failed.
pub fn run_ci(ws: &Workspace) -> Result {
    type Step = (&'static str, fn(&Workspace) -> Result<Outcome>);
    let steps: [Step; 10] = [
        ("fmt", fmt),
        ("tidy", |ws| tidy::run_tidy(ws).map(|()| Outcome::Passed)),
        ("clippy", clippy),
        ("doc", doc),
        ("features", features),
        ("test", |ws| {
            testing::run_all(ws, &[]).map(|()| Outcome::Passed)
        }),
        ("browser", |ws| {
            crate::browser::run_browser_test(ws).map(|()| Outcome::Passed)
        }),
        ("deny", deny),
        ("bench", |ws| {
            bench::run_suite(ws, bench::ALL, true, None, false).map(|()| Outcome::Passed)
        }),
        ("report", |ws| {
            bench::write_report(ws).map(|_| Outcome::Passed)
        }),
    ];
    // libclang for librocksdb-sys, before the first step that builds.
    crate::prereqs::ensure()?;
    let total = Instant::now();
    let mut timings: Vec<(&str, Duration, String)> = Vec::new();
    for (i, (name, step)) in steps.iter().enumerate() {
        println!("\n==> ci [{}/{}] {name}", i + 1, steps.len());
        let start = Instant::now();
        let result = step(ws);
        let took = start.elapsed();
        match result {
            Ok(Outcome::Passed) => {
                println!("==> ci: {name} passed in {}", secs(took));
                timings.push((name, took, "passed".into()));
            }
            Ok(Outcome::Skipped(why)) => {
                println!("==> ci: {name} skipped ({why})");
                timings.push((name, took, format!("skipped: {why}")));
            }
            Err(e) => {
                timings.push((name, took, "FAILED".into()));
                print_summary(&timings, total.elapsed());
                bail!("ci failed at step `{name}`: {e}");
            }
        }
    }
    print_summary(&timings, total.elapsed());
    println!("==> ci: all steps passed");
    Ok(())
}

fn print_summary(timings: &[(&str, Duration, String)], total: Duration) {
    println!("\n==> ci: step times");
    for (name, took, how) in timings {
        println!("    {name:<8} {:>9}  {how}", secs(*took));
    }
    println!("    {:<8} {:>9}", "total", secs(total));
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn fmt(ws: &Workspace) -> Result<Outcome> {
    run(&mut ws.cargo(["fmt", "--all", "--", "--check"]))?;
    Ok(Outcome::Passed)
}

fn clippy(ws: &Workspace) -> Result<Outcome> {
    let mut cmd = ws.cargo(["clippy", "--workspace", "--all-targets", "--profile", "ci"]);
    run(cmd
        .args(testing::ALL_FEATURES)
        .args(["--", "-D", "warnings"]))?;
    Ok(Outcome::Passed)
}

/// `cargo doc` of every member, without dependencies, with every rustdoc
/// warning (a broken intra-doc link, an unclosed HTML tag, …) an error.
fn doc(ws: &Workspace) -> Result<Outcome> {
    let mut cmd = ws.cargo(["doc", "--workspace", "--no-deps", "--profile", "ci"]);
    cmd.args(testing::ALL_FEATURES);
    run(&mut doc_command(cmd))?;
    Ok(Outcome::Passed)
}

/// `cmd` (a `cargo doc`) with rustdoc's warnings denied.
fn doc_command(mut cmd: Command) -> Command {
    cmd.env("RUSTDOCFLAGS", "-D warnings");
    cmd
}

/// `cargo check` of the facade and of the CLI with no default features,
/// each feature alone and all features, in the `ci` profile.
///
/// Before anything is checked, every set that builds RocksDB is compared
/// with the workspace build: if a crate under `librocksdb-sys` would get
/// other features (so Cargo would build RocksDB a second time, ≈ 23
/// minutes), the step fails at once and names the difference.
fn features(ws: &Workspace) -> Result<Outcome> {
    let members = tidy::layering::members(&ws.root)?;
    let mut sets = Vec::new();
    for package in FEATURE_PACKAGES {
        let Some(member) = members.iter().find(|m| m.name == package) else {
            bail!("no package `{package}` in the workspace");
        };
        let features: Vec<&str> = member
            .features
            .keys()
            .map(String::as_str)
            .filter(|f| *f != "default")
            .collect();
        sets.extend(feature_sets(package, &features, &SHARED_BUILD_COMPANIONS));
    }
    let tree = |selection: &[String]| -> Result<String> {
        let mut cmd = ws.cargo(["tree", "--offline"]);
        cmd.args(selection)
            .args(["-f", "{p} [{f}]", "--prefix", "depth", "--no-dedupe"]);
        let out = cmd
            .output()
            .map_err(|e| format!("cannot start `{}`: {e}", render(&cmd)))?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}",
                render(&cmd),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut workspace = ["--workspace", "-e", "normal,build,dev"]
        .map(str::to_owned)
        .to_vec();
    workspace.extend(testing::ALL_FEATURES.map(str::to_owned));
    let reference = subtree(&tree(&workspace)?, ROCKSDB_SYS);
    for set in &sets {
        let mut selection = set.clone();
        selection.extend(["-e", "normal,build"].map(str::to_owned));
        let inputs = subtree(&tree(&selection)?, ROCKSDB_SYS);
        if !inputs.is_empty() && inputs != reference {
            let differ: Vec<&String> = inputs.symmetric_difference(&reference).collect();
            bail!(
                "`cargo check {}` would build RocksDB again: the crates under {ROCKSDB_SYS} \
                 differ from the workspace build's ({differ:?}); check it beside a package \
                 that restores them (SHARED_BUILD_COMPANIONS in xtask/src/ci.rs)",
                set.join(" ")
            );
        }
    }
    check_feature_sets(
        |set| {
            let mut cmd = ws.cargo(["check", "--profile", "ci"]);
            cmd.args(set);
            cmd
        },
        &sets,
    )?;
    Ok(Outcome::Passed)
}

/// The crate whose second build the feature matrix must never cause.
const ROCKSDB_SYS: &str = "librocksdb-sys";

/// Every `package [features]` line below each `root` line of a `cargo tree
/// --prefix depth -f "{p} [{f}]"` listing (the root itself included).
fn subtree(listing: &str, root: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut inside: Option<usize> = None;
    for line in listing.lines() {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        let Ok(depth) = line[..digits].parse::<usize>() else {
            continue;
        };
        let entry = &line[digits..];
        if inside.is_some_and(|d| depth <= d) {
            inside = None;
        }
        if inside.is_none() && entry.split(' ').next() == Some(root) {
            inside = Some(depth);
        }
        if inside.is_some() {
            out.insert(entry.trim_end_matches(" (*)").to_owned());
        }
    }
    out
}

/// The package selections of every feature set of `package` to check: no
/// default features, each feature alone, all features. A feature listed in
/// `companions` is checked together with its companion package.
fn feature_sets(package: &str, features: &[&str], companions: &[(&str, &str)]) -> Vec<Vec<String>> {
    let with = |extra: &[&str]| -> Vec<String> {
        ["-p", package]
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let mut sets = vec![with(&["--no-default-features"])];
    for f in features {
        let feature = format!("{package}/{f}");
        let mut args = with(&["--no-default-features", "--features", &feature]);
        if let Some((_, companion)) = companions.iter().find(|(c, _)| c == f) {
            args.extend(["-p".to_owned(), (*companion).to_owned()]);
        }
        sets.push(args);
    }
    sets.push(with(&["--all-features"]));
    sets
}

/// Runs `cargo(set)` for every set (all of them, so one run shows every
/// broken combination) and fails naming the ones that did not compile.
fn check_feature_sets(cargo: impl Fn(&[String]) -> Command, sets: &[Vec<String>]) -> Result {
    let mut failed = Vec::new();
    for set in sets {
        if run(&mut cargo(set)).is_err() {
            failed.push(format!("`{}`", render(&cargo(set))));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} feature sets do not compile: {}",
            failed.len(),
            sets.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn deny(ws: &Workspace) -> Result<Outcome> {
    if !ws.cargo_probe(&["deny", "--version"]) {
        println!(
            "xtask: cargo-deny is not installed; skipping the license, ban and source checks \
             (install with `cargo install cargo-deny --locked`)"
        );
        return Ok(Outcome::Skipped("cargo-deny not installed"));
    }
    // advisories needs the network; the three offline checks are named.
    run(&mut ws.cargo(["deny", "check", "bans", "licenses", "sources"]))?;
    Ok(Outcome::Passed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A one-file crate in a fresh directory (its own workspace and target
    /// dir), removed on drop.
    struct Probe(std::path::PathBuf);

    impl Probe {
        fn new(name: &str, features: &str, lib: &str) -> Probe {
            let dir = std::env::temp_dir().join(format!(
                "xtask-ci-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("src")).unwrap();
            let manifest = format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\
                 [workspace]\n[features]\n{features}\n[profile.ci]\ninherits = \"dev\"\n"
            );
            std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
            std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
            Probe(dir)
        }

        fn cargo(&self, args: &[String]) -> Command {
            let mut cmd = Command::new("cargo");
            cmd.args(args)
                .arg("--offline")
                .arg("--quiet")
                .current_dir(&self.0)
                .env("CARGO_TARGET_DIR", self.0.join("target"))
                .env_remove("RUSTFLAGS");
            cmd
        }

        /// `cargo args` where `args` has a `--`: cargo's own flags go before it.
        fn cargo_before_dashdash(&self, args: &[String]) -> Command {
            let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
            let mut cmd = self.cargo(&args[..split]);
            cmd.args(&args[split..]);
            cmd
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_matrix_is_none_each_alone_and_all() {
        let sets = feature_sets("hw", &["a", "rocksdb"], &SHARED_BUILD_COMPANIONS);
        let lines: Vec<String> = sets.iter().map(|s| s.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "-p hw --no-default-features",
                "-p hw --no-default-features --features hw/a",
                "-p hw --no-default-features --features hw/rocksdb -p highwater-cloud",
                "-p hw --all-features",
            ]
        );
    }

    #[test]
    fn the_crates_under_rocksdb_are_read_from_the_tree() {
        let listing = "0highwater v0.1.0 (/r) [rocksdb]\n\
                       1highwater-rocksdb v0.1.0 (/r) []\n\
                       2librocksdb-sys v0.19.0 [zstd]\n\
                       3libc v0.2.191 [default,std]\n\
                       3zstd-sys v2.1.2 [legacy] (*)\n\
                       2rocksdb v0.25.0 []\n\
                       1libc v0.2.191 [default,extra_traits,std]\n";
        let found: Vec<String> = subtree(listing, ROCKSDB_SYS).into_iter().collect();
        assert_eq!(
            found,
            [
                "libc v0.2.191 [default,std]",
                "librocksdb-sys v0.19.0 [zstd]",
                "zstd-sys v2.1.2 [legacy]",
            ]
        );
        assert!(subtree("0highwater v0.1.0 []\n", ROCKSDB_SYS).is_empty());
    }

    #[test]
    fn a_feature_that_does_not_compile_alone_is_caught() {
        // `a` uses what only `b` declares: fine with all features, broken
        // with `a` alone.
        let probe = Probe::new(
            "probe_features",
            "a = []\nb = []",
            "//! Probe.\n#[cfg(feature = \"b\")]\npub fn g() -> u8 { 1 }\n\
             #[cfg(feature = \"a\")]\npub fn f() -> u8 { g() }\n",
        );
        let sets = feature_sets("probe_features", &["a", "b"], &[]);
        let check = |set: &[String]| {
            let mut args = vec!["check".to_owned()];
            args.extend_from_slice(set);
            probe.cargo(&args)
        };
        let err = check_feature_sets(check, &sets).unwrap_err().to_string();
        assert!(
            err.starts_with("1 of 4 feature sets do not compile"),
            "{err}"
        );
        assert!(err.contains("--features probe_features/a "), "{err}");
        // Fixed, every set passes.
        std::fs::write(
            probe.path().join("src/lib.rs"),
            "//! Probe.\n#[cfg(feature = \"a\")]\npub fn f() -> u8 { 1 }\n",
        )
        .unwrap();
        check_feature_sets(check, &sets).unwrap();
    }

    #[test]
    fn the_workspace_clippy_config_refuses_a_direct_wall_clock_read() {
        let probe = Probe::new(
            "probe_clock",
            "",
            "//! Probe.\n\n/// Now.\npub fn now() -> std::time::SystemTime {\n    \
             std::time::SystemTime::now()\n}\n",
        );
        let ws = Workspace::locate().unwrap();
        std::fs::copy(
            ws.root.join("clippy.toml"),
            probe.path().join("clippy.toml"),
        )
        .unwrap();
        let args: Vec<String> = ["clippy", "--", "-D", "warnings"]
            .map(str::to_owned)
            .to_vec();
        let err = run(&mut probe.cargo_before_dashdash(&args)).unwrap_err();
        assert!(err.to_string().contains("cargo clippy"), "{err}");
        // Said out loud, the read passes.
        std::fs::write(
            probe.path().join("src/lib.rs"),
            "//! Probe.\n\n/// Now.\n#[expect(clippy::disallowed_methods, reason = \"a test\")]\n\
             pub fn now() -> std::time::SystemTime {\n    std::time::SystemTime::now()\n}\n",
        )
        .unwrap();
        run(&mut probe.cargo_before_dashdash(&args)).unwrap();
    }

    #[test]
    fn a_rustdoc_warning_fails_the_doc_step() {
        let probe = Probe::new(
            "probe_doc",
            "",
            "//! Probe: see [`Missing`].\n\n/// Documented.\npub fn f() {}\n",
        );
        let args: Vec<String> = ["doc", "--no-deps", "--profile", "ci"]
            .map(str::to_owned)
            .to_vec();
        let err = run(&mut doc_command(probe.cargo(&args))).unwrap_err();
        assert!(err.to_string().contains("cargo doc"), "{err}");
        std::fs::write(
            probe.path().join("src/lib.rs"),
            "//! Probe: see [`f`].\n\n/// Documented.\npub fn f() {}\n",
        )
        .unwrap();
        run(&mut doc_command(probe.cargo(&args))).unwrap();
    }
}
