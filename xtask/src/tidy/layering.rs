//! The crate layering of `docs/architecture.md` ("Layering"), checked on
//! what `cargo metadata` says every member depends on.
//!
//! - A member's dependencies on other highwater crates are those its row of
//!   [`LAYERS`] allows; the facade, the CLI, xtask and the benches see
//!   everything. A member missing from the table is a violation, so a new
//!   crate is placed in the layering before it lands.
//! - Dev-dependencies (and optional dependencies that exist only for a
//!   test-support binary, see [`test_support_only`]) may add the *leaf
//!   components*, [`LEAVES`]: the backends, the stores and the testkit,
//!   which depend on `highwater-core` alone, so a test can use a real
//!   component instead of a mock. A backend's tests may add the testkit but
//!   never another backend; `highwater-core` adds nothing; nothing below the
//!   top ever reaches the facade, the CLI or a crate above itself.
//! - `highwater-core` depends on no runtime and no storage engine
//!   ([`CORE_FORBIDDEN`]), in any kind of dependency.
//! - A storage engine's client crate ([`ENGINE_CLIENTS`]) is used only by the
//!   crate that wraps it (and the top).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::Violation;
use crate::util::{Result, bail};

/// Which part of the house a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `highwater-core`: traits and types only.
    Core,
    /// A state backend or checkpoint store (memory, rocksdb, redis, cloud).
    Backend,
    /// Any other library below the facade.
    Component,
    /// The facade, the CLI, xtask and the benches: see everything.
    Top,
}

/// Every member: its role and the highwater crates its normal dependencies
/// may name. The same table is in `docs/architecture.md` ("Layering").
const LAYERS: &[(&str, Role, &[&str])] = &[
    ("highwater-core", Role::Core, &[]),
    ("highwater-wal", Role::Component, &["highwater-core"]),
    ("highwater-memory", Role::Backend, &["highwater-core"]),
    ("highwater-rocksdb", Role::Backend, &["highwater-core"]),
    ("highwater-redis", Role::Backend, &["highwater-core"]),
    ("highwater-cloud", Role::Backend, &["highwater-core"]),
    ("highwater-testkit", Role::Component, &["highwater-core"]),
    (
        "highwater-merge",
        Role::Component,
        &["highwater-core", "highwater-wal"],
    ),
    (
        "highwater-raft",
        Role::Component,
        &["highwater-core", "highwater-wal"],
    ),
    (
        "highwater-recovery",
        Role::Component,
        &["highwater-core", "highwater-wal", "highwater-merge"],
    ),
    ("highwater", Role::Top, &[]),
    ("highwater-cli", Role::Top, &[]),
    ("highwater-benches", Role::Top, &[]),
    ("highwater-fuzz", Role::Top, &[]),
    ("xtask", Role::Top, &[]),
];

/// The leaf components a test may use for real: crates that depend on
/// `highwater-core` alone.
const LEAVES: [&str; 5] = [
    "highwater-memory",
    "highwater-rocksdb",
    "highwater-redis",
    "highwater-cloud",
    "highwater-testkit",
];

/// Crates `highwater-core` never depends on: async runtimes, storage
/// engines, consensus.
const CORE_FORBIDDEN: [&str; 6] = [
    "tokio",
    "rocksdb",
    "librocksdb-sys",
    "redis",
    "object_store",
    "openraft",
];

/// Storage engine and consensus clients, each with the one crate below the
/// top that may use it.
const ENGINE_CLIENTS: [(&str, &str); 5] = [
    ("rocksdb", "highwater-rocksdb"),
    ("librocksdb-sys", "highwater-rocksdb"),
    ("redis", "highwater-redis"),
    ("object_store", "highwater-cloud"),
    ("openraft", "highwater-raft"),
];

/// A dependency as the layering sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The package depended on (not a rename).
    pub name: String,
    /// `None` for a normal dependency, `Some("dev")`, `Some("build")`.
    pub kind: Option<String>,
    /// Whether a feature turns it on.
    pub optional: bool,
}

/// What the layering needs of one member.
#[derive(Debug, Clone)]
pub struct Member {
    /// The package name.
    pub name: String,
    /// Its `Cargo.toml`.
    pub manifest: PathBuf,
    /// Every dependency, all kinds.
    pub dependencies: Vec<Dependency>,
    /// `[features]`: name → what it turns on.
    pub features: BTreeMap<String, Vec<String>>,
    /// The features some binary target requires (`required-features`).
    pub bin_features: BTreeSet<String>,
    /// The Rust sources of the library, for `cfg(feature = …)` uses
    /// (everything under the library root's directory except `bin/`).
    pub lib_sources: Vec<String>,
}

/// Reads the members from `cargo metadata --no-deps` run in `root`.
pub fn members(root: &Path) -> Result<Vec<Member>> {
    let out = Command::new("cargo")
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let mut members = parse_metadata(&json)?;
    for m in &mut members {
        m.lib_sources = lib_sources(&m.manifest)?;
    }
    Ok(members)
}

/// The members described by `cargo metadata` output (`lib_sources` left
/// empty).
pub fn parse_metadata(json: &str) -> Result<Vec<Member>> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("cargo metadata output: {e}"))?;
    let Some(packages) = v["packages"].as_array() else {
        bail!("cargo metadata output has no `packages`");
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        let dependencies = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| Dependency {
                name: d["name"].as_str().unwrap_or_default().to_owned(),
                kind: d["kind"].as_str().map(str::to_owned),
                optional: d["optional"].as_bool().unwrap_or(false),
            })
            .collect();
        let features = p["features"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), strings(v)))
            .collect();
        let bin_features = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| strings(&t["kind"]).iter().any(|k| k == "bin"))
            .flat_map(|t| strings(&t["required-features"]))
            .collect();
        out.push(Member {
            name,
            manifest: PathBuf::from(p["manifest_path"].as_str().unwrap_or_default()),
            dependencies,
            features,
            bin_features,
            lib_sources: Vec::new(),
        });
    }
    Ok(out)
}

/// The text of every `.rs` file under the member's `src/`, except `src/bin/`.
fn lib_sources(manifest: &Path) -> Result<Vec<String>> {
    let src = manifest.with_file_name("src");
    let mut files = Vec::new();
    if src.is_dir() {
        super::collect_rs_files(&src, &mut files)?;
    }
    let bin = src.join("bin");
    files
        .into_iter()
        .filter(|f| !f.starts_with(&bin))
        .map(|f| std::fs::read_to_string(&f).map_err(crate::util::io_context("read", &f)))
        .collect()
}

/// Features of `member` that turn on the optional dependency `dep`,
/// directly or through other features.
fn features_enabling(member: &Member, dep: &str) -> BTreeSet<String> {
    let direct = |item: &str| {
        item == format!("dep:{dep}")
            || item == dep
            || item.strip_prefix(dep).is_some_and(|r| r.starts_with('/'))
    };
    let mut enabling: BTreeSet<String> = member
        .features
        .iter()
        .filter(|(_, items)| items.iter().any(|i| direct(i)))
        .map(|(f, _)| f.clone())
        .collect();
    loop {
        let more: Vec<String> = member
            .features
            .iter()
            .filter(|(f, items)| {
                !enabling.contains(*f) && items.iter().any(|i| enabling.contains(i))
            })
            .map(|(f, _)| f.clone())
            .collect();
        if more.is_empty() {
            return enabling;
        }
        enabling.extend(more);
    }
}

/// True when an optional dependency exists only for a test-support binary:
/// every feature turning it on is one some `[[bin]]` requires, none is
/// `default`, and the library's code never tests one of them.
fn test_support_only(member: &Member, dep: &Dependency) -> bool {
    if !dep.optional || dep.kind.is_some() {
        return false;
    }
    let enabling = features_enabling(member, &dep.name);
    !enabling.is_empty()
        && enabling.iter().all(|f| {
            f != "default"
                && member.bin_features.contains(f)
                && !member
                    .lib_sources
                    .iter()
                    .any(|text| text.contains(&format!("feature = \"{f}\"")))
        })
}

/// Checks every member against the layering; `root` makes manifest paths
/// relative in the messages.
pub fn check_layering(root: &Path, members: &[Member]) -> Vec<Violation> {
    // The highwater crates: the members and every crate of the table.
    let workspace: BTreeSet<&str> = members
        .iter()
        .map(|m| m.name.as_str())
        .chain(LAYERS.iter().map(|(n, ..)| *n))
        .collect();
    let mut out = Vec::new();
    for m in members {
        let path = m
            .manifest
            .strip_prefix(root)
            .unwrap_or(&m.manifest)
            .to_path_buf();
        let mut flag = |message: String| {
            out.push(Violation {
                path: path.clone(),
                line: None,
                message,
            });
        };
        let Some(&(_, role, may_use)) = LAYERS.iter().find(|(n, ..)| *n == m.name) else {
            flag(format!(
                "`{}` has no place in the crate layering: add it to `LAYERS` in \
                 xtask/src/tidy/layering.rs and to docs/architecture.md (\"Layering\")",
                m.name
            ));
            continue;
        };
        for dep in &m.dependencies {
            let kind = match (dep.kind.as_deref(), test_support_only(m, dep)) {
                (Some("dev"), _) => "dev-dependency",
                (Some("build"), _) => "build-dependency",
                (_, true) => "test-support dependency",
                _ => "dependency",
            };
            if role == Role::Core && CORE_FORBIDDEN.contains(&dep.name.as_str()) {
                flag(format!(
                    "`highwater-core` must not depend on `{}` ({kind}): core is traits and \
                     types, with no runtime and no storage engine",
                    dep.name
                ));
            }
            if let Some((_, owner)) = ENGINE_CLIENTS.iter().find(|(c, _)| *c == dep.name)
                && role != Role::Top
                && m.name != *owner
            {
                flag(format!(
                    "`{}` must not depend on `{}` ({kind}): only `{owner}` (and the top: the \
                     facade, the CLI, xtask, the benches) uses it",
                    m.name, dep.name
                ));
            }
            if role == Role::Top || !workspace.contains(dep.name.as_str()) || dep.name == m.name {
                continue;
            }
            let allowed = may_use.contains(&dep.name.as_str())
                || (kind != "dependency"
                    && kind != "build-dependency"
                    && match role {
                        Role::Core | Role::Top => false,
                        Role::Backend => dep.name == "highwater-testkit",
                        Role::Component => LEAVES.contains(&dep.name.as_str()),
                    });
            if !allowed {
                let mut may: Vec<&str> = may_use.to_vec();
                if kind != "dependency" && kind != "build-dependency" {
                    match role {
                        Role::Backend => may.push("highwater-testkit"),
                        Role::Component => may.extend(LEAVES),
                        Role::Core | Role::Top => {}
                    }
                }
                may.retain(|c| *c != m.name);
                let may = if may.is_empty() {
                    "no highwater crate".to_owned()
                } else {
                    may.join(", ")
                };
                flag(format!(
                    "`{}` must not depend on `{}` ({kind}); its {kind} may name: {may} \
                     (docs/architecture.md, \"Layering\")",
                    m.name, dep.name
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dependency in a test: `(name, kind, optional)`.
    type Dep<'a> = (&'a str, Option<&'a str>, bool);

    /// A metadata document with one package per `(name, deps)`.
    fn metadata(packages: &[(&str, &[Dep])]) -> String {
        let packages: Vec<Value> = packages
            .iter()
            .map(|(name, deps)| {
                let deps: Vec<Value> = deps
                    .iter()
                    .map(|(d, kind, optional)| {
                        serde_json::json!({"name": d, "kind": kind, "optional": optional})
                    })
                    .collect();
                serde_json::json!({
                    "name": name,
                    "manifest_path": format!("/r/crates/{name}/Cargo.toml"),
                    "dependencies": deps,
                    "features": {},
                    "targets": [{"kind": ["lib"], "name": name, "required-features": []}],
                })
            })
            .collect();
        serde_json::json!({ "packages": packages }).to_string()
    }

    fn messages(json: &str) -> Vec<String> {
        let members = parse_metadata(json).unwrap();
        check_layering(Path::new("/r"), &members)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const CORE: &str = "highwater-core";

    #[test]
    fn the_layering_of_the_design_passes() {
        let json = metadata(&[
            (
                CORE,
                &[("serde", None, false), ("proptest", Some("dev"), false)],
            ),
            ("highwater-wal", &[(CORE, None, false)]),
            (
                "highwater-cloud",
                &[
                    (CORE, None, false),
                    ("object_store", None, false),
                    ("highwater-testkit", Some("dev"), false),
                ],
            ),
            (
                "highwater-recovery",
                &[
                    (CORE, None, false),
                    ("highwater-wal", None, false),
                    ("highwater-merge", None, false),
                    ("highwater-memory", Some("dev"), false),
                    ("highwater-cloud", Some("dev"), false),
                ],
            ),
            (
                "highwater",
                &[
                    ("highwater-recovery", None, false),
                    ("highwater-rocksdb", Some("dev"), false),
                ],
            ),
        ]);
        assert_eq!(messages(&json), Vec::<String>::new());
    }

    #[test]
    fn an_upward_dev_dependency_is_caught() {
        let json = metadata(&[(
            "highwater-merge",
            &[
                (CORE, None, false),
                ("highwater-wal", None, false),
                ("highwater", Some("dev"), false),
                ("highwater-recovery", Some("dev"), false),
            ],
        )]);
        let found = messages(&json);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with(
            "crates/highwater-merge/Cargo.toml: `highwater-merge` must not depend on \
             `highwater` (dev-dependency)"
        ));
        assert!(found[1].contains("`highwater-recovery` (dev-dependency)"));
    }

    #[test]
    fn core_backends_and_normal_dependencies_are_held_to_their_rows() {
        let json = metadata(&[
            (
                CORE,
                &[
                    ("tokio", Some("dev"), false),
                    ("highwater-testkit", Some("dev"), false),
                ],
            ),
            (
                "highwater-redis",
                &[
                    (CORE, None, false),
                    ("highwater-memory", Some("dev"), false),
                ],
            ),
            (
                "highwater-recovery",
                &[(CORE, None, false), ("highwater-memory", None, false)],
            ),
            (
                "highwater-wal",
                &[(CORE, None, false), ("rocksdb", None, false)],
            ),
            ("highwater-new", &[(CORE, None, false)]),
        ]);
        let found = messages(&json).join("\n");
        for expected in [
            "`highwater-core` must not depend on `tokio` (dev-dependency)",
            "`highwater-core` must not depend on `highwater-testkit` (dev-dependency); its \
             dev-dependency may name: no highwater crate",
            "`highwater-redis` must not depend on `highwater-memory` (dev-dependency)",
            "`highwater-recovery` must not depend on `highwater-memory` (dependency)",
            "`highwater-wal` must not depend on `rocksdb` (dependency): only `highwater-rocksdb`",
            "`highwater-new` has no place in the crate layering",
        ] {
            assert!(
                found.contains(expected),
                "missing {expected:?} in:\n{found}"
            );
        }
        assert_eq!(found.lines().count(), 6, "{found}");
    }

    #[test]
    fn an_optional_dependency_counts_as_test_support_only_for_a_binary() {
        let json = serde_json::json!({"packages": [{
            "name": "highwater-raft",
            "manifest_path": "/r/crates/highwater-raft/Cargo.toml",
            "dependencies": [
                {"name": CORE, "kind": null, "optional": false},
                {"name": "highwater-cloud", "kind": null, "optional": true},
            ],
            "features": {"node-bin": ["dep:highwater-cloud"], "all": ["node-bin"]},
            "targets": [
                {"kind": ["lib"], "name": "highwater_raft", "required-features": []},
                {"kind": ["bin"], "name": "node", "required-features": ["node-bin", "all"]},
            ],
        }]})
        .to_string();
        let mut members = parse_metadata(&json).unwrap();
        assert!(check_layering(Path::new("/r"), &members).is_empty());
        // The library itself uses the feature: a real dependency.
        members[0].lib_sources = vec!["#[cfg(feature = \"node-bin\")]\nmod x;".into()];
        let found = check_layering(Path::new("/r"), &members);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("`highwater-cloud` (dependency)"));
        // A feature no binary requires turns it on: a real dependency too.
        members[0].lib_sources.clear();
        members[0]
            .features
            .insert("store".into(), vec!["highwater-cloud/s3".into()]);
        assert_eq!(check_layering(Path::new("/r"), &members).len(), 1);
    }
}
