//! The docs tell the truth: what `docs/*.md` and `README.md` name in
//! backticks exists.
//!
//! - A repository path (`crates/highwater/src/lib.rs`, `docs/merge.md`,
//!   `xtask/src/tidy.rs`: a span without spaces whose first segment is a
//!   directory at the root) exists. Spans with placeholders or globs
//!   (`<`, `*`, `{`) are patterns, not paths, and are skipped; a `:line`
//!   or `#anchor` suffix is dropped.
//! - A Rust file name (`manager.rs`) exists under the crate whose section it
//!   is in (a heading naming `crates/<crate>`), else somewhere under
//!   `crates/`, `xtask/` or `benches/`.
//! - An item path of a highwater crate (`highwater_merge::Checkpointer`,
//!   `highwater::wal::Wal`, `highwater_core::Error::Corrupt`) resolves,
//!   pragmatically: the facade's module re-exports (`pub use
//!   highwater_wal as wal`) are followed, then every segment after the
//!   crate is declared `pub` (an item, a re-export, a macro) in that
//!   crate's sources; the last one may instead be a variant, field or
//!   method of the type named before it.
//! - A relative link (`[format](format.md#layout)`) points to a file that
//!   exists (anchors are not checked).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Violation;
use crate::util::{Result, io_context};

/// The Markdown files checked, as found under `root`.
pub fn doc_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    let docs = root.join("docs");
    if docs.is_dir() {
        for entry in std::fs::read_dir(&docs).map_err(io_context("list", &docs))? {
            let path = entry.map_err(io_context("list", &docs))?.path();
            if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    let readme = root.join("README.md");
    if readme.is_file() {
        out.push(readme);
    }
    Ok(out)
}

/// What the item check knows about the highwater crates: the text of each
/// one's sources, by library name (`highwater_merge`).
#[derive(Debug, Default)]
pub struct Crates {
    sources: BTreeMap<String, String>,
    dirs: BTreeMap<String, PathBuf>,
}

impl Crates {
    /// Reads every `crates/<name>/src` under `root`.
    pub fn read(root: &Path) -> Result<Crates> {
        let mut crates = Crates::default();
        let dir = root.join("crates");
        if !dir.is_dir() {
            return Ok(crates);
        }
        for entry in std::fs::read_dir(&dir).map_err(io_context("list", &dir))? {
            let path = entry.map_err(io_context("list", &dir))?.path();
            let src = path.join("src");
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !src.is_dir() {
                continue;
            }
            let mut files = Vec::new();
            super::collect_rs_files(&src, &mut files)?;
            files.sort();
            let mut text = String::new();
            for f in files {
                text.push_str(&std::fs::read_to_string(&f).map_err(io_context("read", &f))?);
                text.push('\n');
            }
            crates.insert(name, path.clone(), text);
        }
        Ok(crates)
    }

    /// Adds a crate (`highwater-merge`) with the text of its sources.
    pub fn insert(&mut self, name: &str, dir: PathBuf, text: String) {
        let lib = name.replace('-', "_");
        self.dirs.insert(lib.clone(), dir);
        self.sources.insert(lib, text);
    }
}

/// Checks one Markdown file (`path` relative to `root`, its `text`).
/// `exists` answers whether a path relative to the root exists; `rs_files`
/// lists every `.rs` file of the repository relative to the root.
pub fn check_doc(
    path: &Path,
    text: &str,
    exists: &dyn Fn(&str) -> bool,
    rs_files: &[String],
    crates: &Crates,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut flag = |line: usize, message: String| {
        out.push(Violation {
            path: path.to_path_buf(),
            line: Some(line),
            message,
        });
    };
    let mut section: Vec<(usize, Option<String>)> = Vec::new();
    for (line, piece) in pieces(text) {
        let span = match piece {
            Piece::Span(span) => span,
            Piece::Link(target) => {
                if let Some(file) = link_file(path, &target)
                    && !exists(&file)
                {
                    flag(line, format!("link to `{target}`: no such file ({file})"));
                }
                continue;
            }
            Piece::Heading { level, title } => {
                section.retain(|(l, _)| *l < level);
                let krate = title
                    .split('`')
                    .find_map(|s| s.strip_prefix("crates/"))
                    .map(|s| s.trim_end_matches('/').to_owned());
                section.push((level, krate));
                continue;
            }
        };
        let in_crate = section.iter().rev().find_map(|(_, c)| c.clone());
        if let Some(repo_path) = as_repo_path(&span, exists) {
            if !exists(&repo_path) {
                flag(line, format!("`{span}`: no such file or directory"));
            }
        } else if is_rs_file_name(&span) {
            let under = |prefix: &str| {
                rs_files
                    .iter()
                    .any(|f| f.starts_with(prefix) && f.rsplit('/').next() == Some(span.as_str()))
            };
            match &in_crate {
                Some(c) if !under(&format!("crates/{c}/")) => flag(
                    line,
                    format!("`{span}`: no such file in crates/{c} (this section's crate)"),
                ),
                None if !under("") => flag(line, format!("`{span}`: no such Rust file")),
                _ => {}
            }
        } else if let Some(item) = item_path(&span, crates)
            && let Err(why) = resolve(&item, crates)
        {
            flag(line, format!("`{span}`: {why}"));
        }
    }
    out
}

/// What the check reads of a Markdown file.
#[derive(Debug)]
enum Piece {
    /// A heading: its level (the number of `#`) and text.
    Heading { level: usize, title: String },
    /// The text of a backticked span outside fenced code blocks.
    Span(String),
    /// The target of a link, `[text](target)`.
    Link(String),
}

/// Every heading and every backticked span, in order, each with its
/// (first) line.
fn pieces(text: &str) -> Vec<(usize, Piece)> {
    let mut out = Vec::new();
    let mut fenced = false;
    // The paragraph being read: its text and the line of each of its chars.
    let mut para: Vec<(char, usize)> = Vec::new();
    let flush = |para: &mut Vec<(char, usize)>, out: &mut Vec<_>| {
        let mut i = 0;
        while i < para.len() {
            // A link: `](target)`, the target without spaces.
            if para[i].0 == ']' && para.get(i + 1).is_some_and(|(c, _)| *c == '(') {
                let target = &para[i + 2..];
                let len = target
                    .iter()
                    .position(|(c, _)| *c == ')' || c.is_whitespace())
                    .unwrap_or(target.len());
                if target.get(len).is_some_and(|(c, _)| *c == ')') {
                    let link = target[..len].iter().map(|(c, _)| c).collect();
                    out.push((para[i].1, Piece::Link(link)));
                    i += 2 + len + 1;
                    continue;
                }
            }
            if para[i].0 != '`' {
                i += 1;
                continue;
            }
            let ticks = para[i..].iter().take_while(|(c, _)| *c == '`').count();
            let start = i + ticks;
            let mut j = start;
            let mut close = None;
            while j < para.len() {
                if para[j].0 == '`' {
                    let run = para[j..].iter().take_while(|(c, _)| *c == '`').count();
                    if run == ticks {
                        close = Some(j);
                        break;
                    }
                    j += run;
                } else {
                    j += 1;
                }
            }
            match close {
                Some(end) => {
                    let s: String = para[start..end]
                        .iter()
                        .map(|(c, _)| if *c == '\n' { ' ' } else { *c })
                        .collect();
                    out.push((para[i].1, Piece::Span(s.trim().to_owned())));
                    i = end + ticks;
                }
                None => i = start,
            }
        }
        para.clear();
    };
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            flush(&mut para, &mut out);
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if trimmed.is_empty() {
            flush(&mut para, &mut out);
            continue;
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        if level > 0 && trimmed[level..].starts_with(' ') {
            flush(&mut para, &mut out);
            let title = trimmed[level..].trim().to_owned();
            out.push((n, Piece::Heading { level, title }));
            para.extend(trimmed.chars().map(|c| (c, n)));
            flush(&mut para, &mut out);
            continue;
        }
        para.extend(line.chars().map(|c| (c, n)));
        para.push(('\n', n));
    }
    flush(&mut para, &mut out);
    out
}

/// The file a link in the doc at `doc` (relative to the root) points to,
/// relative to the root; `None` for web links and anchors in the same doc.
fn link_file(doc: &Path, target: &str) -> Option<String> {
    let file = target.split('#').next().unwrap_or_default();
    if file.is_empty() || file.contains("://") || file.starts_with("mailto:") {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    let base = doc.parent().map(|p| p.to_string_lossy().replace('\\', "/"));
    let base = base.unwrap_or_default();
    for part in base.split('/').chain(file.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The repository path a span names, if it names one: no spaces or
/// placeholders, a `/`, and a first segment that is a directory at the root.
fn as_repo_path(span: &str, exists: &dyn Fn(&str) -> bool) -> Option<String> {
    if span.contains(|c: char| c.is_whitespace() || "<>*{}$`'\"|,;()[]".contains(c)) {
        return None;
    }
    let path = span.split('#').next().unwrap_or(span);
    // `file.rs:12` or `file.rs:12:3`: a position in the file.
    let path = match path.split_once(':') {
        Some((p, rest)) if rest.split(':').all(|n| n.parse::<u32>().is_ok()) => p,
        Some(_) => return None,
        None => path,
    };
    let (first, rest) = path.split_once('/')?;
    if first.is_empty() || first == ".git" || rest.is_empty() {
        return None;
    }
    // `target/` is build output, not part of the repository.
    (first != "target" && exists(first)).then(|| path.trim_end_matches('/').to_owned())
}

fn is_rs_file_name(span: &str) -> bool {
    span.strip_suffix(".rs").is_some_and(|stem| {
        !stem.is_empty()
            && stem
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// `crate::a::b` as segments, when the span starts with a highwater crate's
/// path: the longest prefix made of identifiers joined by `::` (what
/// follows, like `(…)` or `<T>`, is dropped).
fn item_path(span: &str, crates: &Crates) -> Option<Vec<String>> {
    let mut segments = Vec::new();
    let mut rest = span;
    loop {
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        segments.push(rest[..len].to_owned());
        rest = &rest[len..];
        match rest.strip_prefix("::") {
            // A path broken over two lines reads `a:: b`.
            Some(r) => rest = r.trim_start(),
            None => break,
        }
    }
    (segments.len() >= 2 && crates.sources.contains_key(&segments[0])).then_some(segments)
}

/// Resolves `segments` (a crate, then items) or says which segment fails.
fn resolve(segments: &[String], crates: &Crates) -> std::result::Result<(), String> {
    let mut segments = segments.to_vec();
    // `highwater::wal::…` → `highwater_wal::…` through `pub use highwater_wal as wal;`.
    while segments.len() >= 2 {
        let Some(text) = crates.sources.get(&segments[0]) else {
            break;
        };
        let alias = format!(" as {};", segments[1]);
        let target = text.lines().find_map(|l| {
            let l = l.trim();
            let body = l.strip_prefix("pub use ")?.strip_suffix(&alias)?;
            (!body.contains("::") && crates.sources.contains_key(body)).then(|| body.to_owned())
        });
        match target {
            Some(t) if t != segments[0] => {
                segments.splice(0..2, [t]);
            }
            _ => break,
        }
    }
    let krate = &segments[0];
    let text = &crates.sources[krate];
    let names = declared(text);
    let items = &segments[1..];
    for (i, seg) in items.iter().enumerate() {
        if names.contains(seg.as_str()) {
            continue;
        }
        let is_last = i + 1 == items.len();
        let after_type = i > 0 && items[i - 1].starts_with(|c: char| c.is_ascii_uppercase());
        if is_last && after_type && is_member(text, seg) {
            continue;
        }
        return Err(format!("`{seg}` is not a public item of {krate}"));
    }
    Ok(())
}

/// Every name a crate's sources declare `pub` (items, re-exported names,
/// `macro_rules!` macros).
fn declared(text: &str) -> std::collections::BTreeSet<&str> {
    let mut names = std::collections::BTreeSet::new();
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut rest = text;
    while let Some(at) = rest.find("pub") {
        let after = &rest[at + 3..];
        let boundary_before = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        rest = after;
        if !boundary_before || !after.starts_with([' ', '\n', '\t', '(']) {
            continue;
        }
        // `pub(crate)` and the like are not public.
        let mut s = after;
        if s.starts_with('(') {
            continue;
        }
        s = s.trim_start();
        if let Some(body) = s.strip_prefix("use ") {
            let end = body.find(';').unwrap_or(body.len());
            for word in body[..end].split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.is_empty() && !["self", "super", "crate", "as"].contains(&word) {
                    names.insert(word);
                }
            }
            continue;
        }
        loop {
            let word = &s[..ident(s)];
            let after = s[word.len()..].trim_start();
            let next = &after[..ident(after)];
            match word {
                "async" | "unsafe" | "extern" => {
                    s = after;
                    // `extern "C"`.
                    if let Some(r) = s.strip_prefix('"') {
                        s = r.split_once('"').map_or("", |(_, r)| r).trim_start();
                    }
                }
                "const" | "static" if ["fn", "unsafe", "async", "extern"].contains(&next) => {
                    s = after;
                }
                "const" | "static" | "struct" | "enum" | "trait" | "fn" | "type" | "mod"
                | "union" => {
                    let name = if next == "mut" {
                        let r = after[3..].trim_start();
                        &r[..ident(r)]
                    } else {
                        next
                    };
                    if !name.is_empty() {
                        names.insert(name);
                    }
                    break;
                }
                // A public field: `pub name: Type`.
                _ if !word.is_empty() && after.starts_with(':') && !after.starts_with("::") => {
                    names.insert(word);
                    break;
                }
                _ => break,
            }
        }
    }
    let mut rest = text;
    while let Some(at) = rest.find("macro_rules!") {
        rest = rest[at + "macro_rules!".len()..].trim_start();
        names.insert(&rest[..ident(rest)]);
    }
    names
}

/// Whether `name` is declared as an enum variant, a field or an associated
/// function (public or in a trait) somewhere in `text`.
fn is_member(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        let Some(rest) = l.strip_prefix(name) else {
            return l.starts_with("fn ") && l[3..].starts_with(name) && fn_name_ends(&l[3..], name);
        };
        // A variant: `Name,` `Name(…)` `Name {` or `Name = 3,`.
        rest.is_empty() || rest.starts_with([',', '(', '{', ' ', ':'])
    })
}

fn fn_name_ends(s: &str, name: &str) -> bool {
    s[name.len()..].starts_with(['(', '<'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crates() -> Crates {
        let mut c = Crates::default();
        c.insert(
            "highwater-merge",
            "crates/highwater-merge".into(),
            "//! m\npub mod io;\npub struct Checkpointer;\npub(crate) fn hidden() {}\n\
             pub use crate::gc::{apply_retention, Pins as RetentionPins};\n\
             pub async fn fetch_verified() {}\n"
                .into(),
        );
        c.insert(
            "highwater-core",
            "crates/highwater-core".into(),
            "pub enum Error {\n    Corrupt(String),\n    Closed,\n}\n\
             pub trait StateBackend {\n    fn native(&self) -> u8;\n}\n"
                .into(),
        );
        c.insert(
            "highwater",
            "crates/highwater".into(),
            "pub use highwater_core as core;\npub use highwater_merge as merge;\n\
             pub struct StateManager { pub config: u8 }\n"
                .into(),
        );
        c
    }

    fn check(text: &str) -> Vec<String> {
        let exists = |p: &str| {
            [
                "crates",
                "crates/highwater-merge",
                "docs",
                "xtask",
                "crates/highwater/src/manager.rs",
                "docs/merge.md",
            ]
            .contains(&p)
        };
        let rs = vec![
            "crates/highwater/src/manager.rs".to_owned(),
            "crates/highwater-merge/src/io.rs".to_owned(),
        ];
        check_doc(Path::new("docs/a.md"), text, &exists, &rs, &crates())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn true_docs_pass() {
        let text = "# A\n\nSee `crates/highwater/src/manager.rs:12`, `docs/merge.md#tests`,\n\
                    `highwater_merge::Checkpointer`, `highwater::merge::io::fetch_verified()`,\n\
                    `highwater_core::Error::Corrupt`, `highwater::core::StateBackend::native`,\n\
                    `highwater_merge::RetentionPins`, `highwater::StateManager::config` and\n\
                    `manager.rs`; patterns: `crates/*/Cargo.toml`, `artifacts/<id>`,\n\
                    `target/ci/x`, `a/b`; links: [m](merge.md#tests), [w](https://x.y/z),\n\
                    [here](#a), [up](../docs/merge.md).\n\n\
                    ### `crates/highwater-merge`\n\n`io.rs`\n\n\
                    ```\nnot checked: `crates/nope.rs` `highwater::Nope`\n```\n";
        assert_eq!(check(text), Vec::<String>::new());
    }

    #[test]
    fn what_does_not_exist_is_flagged_with_its_line() {
        let text = "# A\n\n`crates/highwater/src/encode.rs` and `docs/gone.md`\n\
                    and `highwater_merge::hidden`, `highwater::merge::Nope`,\n\
                    `highwater_core::Error::Broken` over\ntwo `highwater_merge::\nMissing` lines.\n\n\
                    ### `crates/highwater-merge`\n\n`manager.rs` `restore.rs`\n\n\
                    See [the format](format.md#layout) and [ops](../docs/ops.md).\n";
        let found = check(text);
        assert_eq!(
            found,
            [
                "docs/a.md:3: `crates/highwater/src/encode.rs`: no such file or directory",
                "docs/a.md:3: `docs/gone.md`: no such file or directory",
                "docs/a.md:4: `highwater_merge::hidden`: `hidden` is not a public item of \
                 highwater_merge",
                "docs/a.md:4: `highwater::merge::Nope`: `Nope` is not a public item of \
                 highwater_merge",
                "docs/a.md:5: `highwater_core::Error::Broken`: `Broken` is not a public item of \
                 highwater_core",
                "docs/a.md:6: `highwater_merge:: Missing`: `Missing` is not a public item of \
                 highwater_merge",
                "docs/a.md:11: `manager.rs`: no such file in crates/highwater-merge (this \
                 section's crate)",
                "docs/a.md:11: `restore.rs`: no such file in crates/highwater-merge (this \
                 section's crate)",
                "docs/a.md:13: link to `format.md#layout`: no such file (docs/format.md)",
                "docs/a.md:13: link to `../docs/ops.md`: no such file (docs/ops.md)",
            ]
        );
    }
}
