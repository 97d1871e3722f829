//! `cargo xtask tidy`: checks of the source tree that neither rustc nor
//! clippy makes.
//!
//! - every `.rs` file under `crates/`, `xtask/` and `benches/` (library
//!   roots, binaries, modules, tests, build scripts) opens with a `//!` doc
//!   saying what it is for;
//! - no test is switched off and no code is left unwritten: the markers for
//!   an ignored test, a to-do and an unimplemented body appear in no `.rs`
//!   file;
//! - every member manifest (`crates/*/Cargo.toml`, `xtask/`, `benches/`)
//!   takes its version and license from the workspace and opts into the
//!   workspace lints;
//! - the crate layering of `docs/architecture.md` holds, dev-dependencies
//!   included ([`layering`]);
//! - what `docs/*.md` and `README.md` name in backticks exists: repository
//!   paths, Rust file names, highwater item paths ([`docs`]).
//!
//! The same checks run as a unit test of xtask, so `cargo xtask test` fails
//! on a violation too.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::util::{Result, Workspace, bail, io_context};

mod docs;
pub(crate) mod layering;

/// The directories whose Rust sources are checked, relative to the root.
const SOURCE_DIRS: [&str; 3] = ["crates", "xtask", "benches"];

/// Text no source file may contain. Spelled in two halves so that this file
/// does not trip its own check.
const FORBIDDEN: [&str; 3] = [
    concat!("#[", "ignore"),
    concat!("todo", "!("),
    concat!("unimplemented", "!("),
];

/// One rule broken in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The file, relative to the repository root.
    pub path: PathBuf,
    /// The line (1-based), when the rule is about one line.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// Runs every check, prints every violation and fails if there is one.
pub fn run_tidy(ws: &Workspace) -> Result {
    println!(
        "xtask: tidy: checking {}, the member manifests, the crate layering and the docs",
        SOURCE_DIRS.join("/, ") + "/"
    );
    let (files, violations) = check(&ws.root)?;
    if violations.is_empty() {
        println!("xtask: tidy: ok ({files} Rust files)");
        return Ok(());
    }
    for v in &violations {
        eprintln!("tidy: {v}");
    }
    bail!("tidy found {} violation(s)", violations.len());
}

/// Checks the tree under `root`; returns the number of Rust files read and
/// every violation found.
pub fn check(root: &Path) -> Result<(usize, Vec<Violation>)> {
    let mut violations = Vec::new();
    let mut sources = Vec::new();
    for dir in SOURCE_DIRS {
        let dir = root.join(dir);
        if dir.is_dir() {
            collect_rs_files(&dir, &mut sources)?;
        }
    }
    sources.sort();
    for file in &sources {
        let text = std::fs::read_to_string(file).map_err(io_context("read", file))?;
        violations.extend(check_source(relative(root, file), &text));
    }
    for manifest in member_manifests(root)? {
        let text = std::fs::read_to_string(&manifest).map_err(io_context("read", &manifest))?;
        violations.extend(check_manifest(relative(root, &manifest), &text));
    }
    violations.extend(layering::check_layering(root, &layering::members(root)?));
    let rs_files: Vec<String> = sources
        .iter()
        .map(|f| relative(root, f).to_string_lossy().replace('\\', "/"))
        .collect();
    let crates = docs::Crates::read(root)?;
    let exists = |p: &str| root.join(p).exists();
    for doc in docs::doc_files(root)? {
        let text = std::fs::read_to_string(&doc).map_err(io_context("read", &doc))?;
        violations.extend(docs::check_doc(
            &relative(root, &doc),
            &text,
            &exists,
            &rs_files,
            &crates,
        ));
    }
    Ok((sources.len(), violations))
}

fn relative(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

/// Every `.rs` file below `dir`, skipping build output and hidden folders.
fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result {
    for entry in std::fs::read_dir(dir).map_err(io_context("list", dir))? {
        let entry = entry.map_err(io_context("list", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type().map_err(io_context("stat", &path))?;
        if kind.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect_rs_files(&path, out)?;
            }
        } else if kind.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The manifests of `crates/*`, `xtask` and `benches` that exist.
fn member_manifests(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let crates = root.join("crates");
    if crates.is_dir() {
        for entry in std::fs::read_dir(&crates).map_err(io_context("list", &crates))? {
            let manifest = entry
                .map_err(io_context("list", &crates))?
                .path()
                .join("Cargo.toml");
            if manifest.is_file() {
                out.push(manifest);
            }
        }
    }
    out.sort();
    for dir in ["xtask", "benches"] {
        let manifest = root.join(dir).join("Cargo.toml");
        if manifest.is_file() {
            out.push(manifest);
        }
    }
    Ok(out)
}

fn check_source(path: PathBuf, text: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    if !text.trim_start_matches('\u{feff}').starts_with("//!") {
        out.push(Violation {
            path: path.clone(),
            line: Some(1),
            message: "does not start with a `//!` doc saying what the file is for".into(),
        });
    }
    for (i, line) in text.lines().enumerate() {
        for marker in FORBIDDEN {
            if line.contains(marker) {
                out.push(Violation {
                    path: path.clone(),
                    line: Some(i + 1),
                    message: format!("contains `{marker}`"),
                });
            }
        }
    }
    out
}

/// The table a manifest line opens, or the key and value it sets.
enum TomlLine {
    Table(String),
    Pair(String, String),
    Other,
}

/// Reads one line of TOML closely enough for the keys tidy needs: table
/// headers and `key = value` pairs, with spaces and comments removed.
fn toml_line(raw: &str) -> TomlLine {
    let line = strip_comment(raw).trim();
    if line.starts_with('[') && line.ends_with(']') && !line.starts_with("[[") {
        return TomlLine::Table(line.trim_matches(['[', ']']).trim().to_owned());
    }
    match line.split_once('=') {
        Some((key, value)) => {
            let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect();
            TomlLine::Pair(squash(key), squash(value))
        }
        None => TomlLine::Other,
    }
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

fn check_manifest(path: PathBuf, text: &str) -> Vec<Violation> {
    let (mut version, mut license, mut lints) = (false, false, false);
    let mut table = String::new();
    for raw in text.lines() {
        match toml_line(raw) {
            TomlLine::Table(name) => table = name,
            TomlLine::Pair(key, value) => {
                let inherited = value == "true" || value == "{workspace=true}";
                let key = match table.as_str() {
                    "" => key,
                    t => format!("{t}.{key}"),
                };
                match key.as_str() {
                    "package.version.workspace" | "package.version" if inherited => {
                        version = true;
                    }
                    "package.license.workspace" | "package.license" if inherited => {
                        license = true;
                    }
                    "lints.workspace" if value == "true" => lints = true,
                    _ => {}
                }
            }
            TomlLine::Other => {}
        }
    }
    let mut out = Vec::new();
    let mut require = |ok: bool, what: &str| {
        if !ok {
            out.push(Violation {
                path: path.clone(),
                line: None,
                message: format!("missing {what}"),
            });
        }
    };
    require(version, "`version.workspace = true` in [package]");
    require(license, "`license.workspace = true` in [package]");
    require(lints, "`workspace = true` in [lints]");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_tidy() {
        let ws = Workspace::locate().unwrap();
        let (files, violations) = check(&ws.root).unwrap();
        assert!(files > 0);
        let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(
            violations.is_empty(),
            "tidy violations:\n{}",
            listed.join("\n")
        );
    }

    #[test]
    fn sources_need_a_module_doc_and_no_markers() {
        let good = "//! A module.\nfn f() {}\n";
        assert!(check_source("a.rs".into(), good).is_empty());
        let bad = format!("// not a doc\n{}\n    {})\n", FORBIDDEN[0], FORBIDDEN[1]);
        let found: Vec<String> = check_source("a.rs".into(), &bad)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("a.rs:1: does not start"));
        assert!(found[1].starts_with("a.rs:2: contains"));
        assert!(found[2].starts_with("a.rs:3: contains"));
    }

    #[test]
    fn manifests_must_inherit_version_license_and_lints() {
        let good = "[package]\nname = \"x\"\nversion.workspace = true\n\
                    license = { workspace = true } # inherited\n\n[lints]\nworkspace = true\n";
        assert!(check_manifest("Cargo.toml".into(), good).is_empty());
        let bad = "[package]\nname = \"x\"\nversion = \"0.1.0\"\nlicense = \"MIT\"\n\
                   [dependencies]\nworkspace = true\n";
        let found = check_manifest("c/Cargo.toml".into(), bad);
        assert_eq!(found.len(), 3, "{found:?}");
        let dotted = "lints.workspace = true\npackage.version.workspace = true\n\
                      package.license.workspace = true\n";
        assert!(check_manifest("Cargo.toml".into(), dotted).is_empty());
    }
}
