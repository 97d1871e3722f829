//! `cargo xtask bench`: runs the benchmark binary and renders its results
//! into `docs/bench/REPORT.md`.
//!
//! The benchmark binary (`highwater-benches`) writes one JSON file per suite
//! into `<target>/bench/<suite>.json`:
//!
//! ```json
//! {
//!   "suite": "wal",
//!   "params": { "records": 100000 },
//!   "metrics": [
//!     { "name": "durable commits", "value": 5100.0, "unit": "commits/s",
//!       "baseline": "raw fsync", "baseline_value": 5200.0, "ratio": 0.98,
//!       "higher_is_better": true }
//!   ]
//! }
//! ```
//!
//! The baseline fields may be `null`. Top-level keys other than `suite` and
//! `metrics` (such as `params`) are shown in the report as they are.
//!
//! Every successful run is also archived as
//! `<target>/bench/history/<suite>/<unix seconds>.json`; the report draws
//! an SVG chart per suite into `docs/bench/` (ratio to baseline, and the
//! history of the newest archived runs: see [`crate::bench_chart`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::bench_chart;
use crate::util::{Result, Workspace, bail, io_context, output_of, run};

/// The suite name that runs every suite.
pub const ALL: &str = "all";

/// Suites that talk to servers: they run inside
/// [`with_services`](crate::testing::with_services).
const NEEDS_SERVICES: &[&str] = &["redis", "cloud"];

/// One suite's results, as the benchmark binary writes them.
#[derive(Debug, Deserialize)]
pub(crate) struct SuiteResult {
    pub suite: String,
    pub metrics: Vec<Metric>,
    /// Every other top-level key, shown verbatim.
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// One measured metric and its same-run baseline.
#[derive(Debug, Deserialize)]
pub(crate) struct Metric {
    pub name: String,
    value: f64,
    unit: String,
    #[serde(default)]
    baseline: Option<String>,
    #[serde(default)]
    baseline_value: Option<f64>,
    #[serde(default)]
    pub ratio: Option<f64>,
    pub higher_is_better: bool,
}

/// The directory the benchmark binary writes its JSON into.
pub fn results_dir(ws: &Workspace) -> PathBuf {
    ws.target_dir.join("bench")
}

/// Runs `suite` (or [`ALL`]) and checks that it wrote its results.
///
/// Results of earlier runs of the same suites are removed first, so the
/// report never mixes a fresh run with stale numbers.
pub fn run_suite(
    ws: &Workspace,
    suite: &str,
    quick: bool,
    size: Option<&str>,
    blob_values: bool,
) -> Result {
    crate::prereqs::ensure()?;
    let valid = !suite.is_empty()
        && suite
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        bail!("bench suite names are letters, digits, '-' and '_': got {suite:?}");
    }
    let out = results_dir(ws);
    std::fs::create_dir_all(&out).map_err(io_context("create", &out))?;
    let stale = if suite == ALL {
        json_files(&out)?
    } else {
        vec![out.join(format!("{suite}.json"))]
    };
    for file in stale.iter().filter(|f| f.exists()) {
        std::fs::remove_file(file).map_err(io_context("remove", file))?;
    }

    let mut cmd = ws.cargo([
        "run",
        "--profile",
        "ci",
        "-p",
        "highwater-benches",
        "--",
        suite,
    ]);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(size) = size {
        cmd.arg("--size").arg(size);
    }
    if blob_values {
        cmd.arg("--blob-values");
    }
    cmd.arg("--out").arg(&out);
    if suite == ALL || NEEDS_SERVICES.contains(&suite) {
        crate::testing::with_services(ws, |env| run(env.apply(&mut cmd)))?;
    } else {
        run(&mut cmd)?;
    }

    let written = json_files(&out)?;
    let expected = out.join(format!("{suite}.json"));
    if (suite == ALL && written.is_empty()) || (suite != ALL && !written.contains(&expected)) {
        bail!(
            "the bench binary succeeded but wrote no results for suite `{suite}` into {}",
            out.display()
        );
    }
    archive(
        &out,
        if suite == ALL {
            &written
        } else {
            std::slice::from_ref(&expected)
        },
    )
}

/// Copies each result file into `history/<suite>/<unix seconds>.json`
/// under `out`, for the history charts.
fn archive(out: &Path, files: &[PathBuf]) -> Result {
    #[expect(
        clippy::disallowed_methods,
        reason = "the time of a benchmark run, not the time of state"
    )]
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for file in files {
        let Some(stem) = file.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let dir = out.join("history").join(stem);
        std::fs::create_dir_all(&dir).map_err(io_context("create", &dir))?;
        let to = dir.join(format!("{secs}.json"));
        std::fs::copy(file, &to).map_err(io_context("copy to", &to))?;
    }
    Ok(())
}

/// The newest archived runs of `suite` (at most
/// [`bench_chart::HISTORY_RUNS`]), oldest first, each labelled with its
/// date; unreadable files are skipped with a note.
fn history(dir: &Path, suite: &str) -> Result<Vec<(String, SuiteResult)>> {
    let dir = dir.join("history").join(suite);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut runs: Vec<(u64, PathBuf)> = json_files(&dir)?
        .into_iter()
        .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
        .collect();
    runs.sort();
    let skip = runs.len().saturating_sub(bench_chart::HISTORY_RUNS);
    let mut out = Vec::new();
    for (secs, path) in runs.into_iter().skip(skip) {
        let parsed = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<SuiteResult>(&t).ok());
        match parsed {
            Some(r) => out.push((utc_timestamp(secs).replace(" UTC", ""), r)),
            None => println!(
                "xtask: skipping unreadable bench history {}",
                path.display()
            ),
        }
    }
    Ok(out)
}

/// Renders every `<target>/bench/*.json` into `docs/bench/REPORT.md` and
/// returns the report's path.
pub fn write_report(ws: &Workspace) -> Result<PathBuf> {
    let dir = results_dir(ws);
    let files = if dir.is_dir() {
        json_files(&dir)?
    } else {
        Vec::new()
    };
    if files.is_empty() {
        bail!(
            "no benchmark results in {}: run `cargo xtask bench` first",
            dir.display()
        );
    }
    println!(
        "xtask: rendering {} result file(s) from {}",
        files.len(),
        dir.display()
    );
    let mut suites = Vec::with_capacity(files.len());
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(io_context("read", file))?;
        let suite: SuiteResult = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a bench result: {e}", file.display()))?;
        suites.push(suite);
    }
    let mut machine = Machine::current();
    machine.measured = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok()?.modified().ok())
        .max()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(|| "unknown".to_owned(), |d| utc_timestamp(d.as_secs()));
    let docs = ws.root.join("docs").join("bench");
    std::fs::create_dir_all(&docs).map_err(io_context("create", &docs))?;
    let mut charts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for suite in &suites {
        let mut write = |name: String, svg: String| -> Result {
            let path = docs.join(&name);
            std::fs::write(&path, svg).map_err(io_context("write", &path))?;
            println!("xtask: wrote {}", ws.display_path(&path));
            charts.entry(suite.suite.clone()).or_default().push(name);
            Ok(())
        };
        if let Some(svg) = bench_chart::ratio_svg(suite)? {
            write(format!("{}.svg", suite.suite), svg)?;
        }
        if let Some(svg) = bench_chart::history_svg(&suite.suite, &history(&dir, &suite.suite)?)? {
            write(format!("{}-history.svg", suite.suite), svg)?;
        }
    }
    let report = render(&suites, &machine, &charts);
    let path = docs.join("REPORT.md");
    std::fs::write(&path, report).map_err(io_context("write", &path))?;
    println!("xtask: wrote {}", ws.display_path(&path));
    Ok(path)
}

/// The `*.json` files of `dir`, sorted by name.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_context("list", dir))? {
        let path = entry.map_err(io_context("list", dir))?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Where and when a report was rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Machine {
    date: String,
    uname: String,
    nproc: String,
    rustc: String,
    commit: String,
    /// When the newest result file was written (the run may be older than
    /// the render and than `commit`).
    measured: String,
}

impl Machine {
    fn current() -> Machine {
        let unknown = || "unknown".to_owned();
        #[expect(
            clippy::disallowed_methods,
            reason = "the date of the report, not the time of state"
        )]
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Machine {
            date: utc_timestamp(secs),
            uname: output_of("uname", &["-srm"]).unwrap_or_else(unknown),
            nproc: std::thread::available_parallelism()
                .map_or_else(|_| unknown(), |n| n.to_string()),
            rustc: output_of("rustc", &["--version"]).unwrap_or_else(unknown),
            commit: output_of("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(unknown),
            measured: unknown(),
        }
    }
}

/// The report; `charts` names each suite's SVG files in `docs/bench/`.
fn render(suites: &[SuiteResult], m: &Machine, charts: &BTreeMap<String, Vec<String>>) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail; the results are ignored below.
    let _ = writeln!(s, "# Benchmark report\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench --report` from the JSON the bench \
         binary wrote; do not edit by hand.\n"
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| date | {} |", cell(&m.date));
    let _ = writeln!(s, "| results written | {} |", cell(&m.measured));
    let _ = writeln!(s, "| machine (`uname -srm`) | {} |", cell(&m.uname));
    let _ = writeln!(s, "| cores (`nproc`) | {} |", cell(&m.nproc));
    let _ = writeln!(s, "| compiler | {} |", cell(&m.rustc));
    let _ = writeln!(s, "| commit | {} |", cell(&m.commit));
    let _ = writeln!(
        s,
        "\nEach baseline was measured in the same run on the same machine. \
         `ratio` compares the metric with its baseline; \"higher is better\" \
         says in which direction `value` improves.\n"
    );
    for suite in suites {
        let _ = writeln!(s, "## {}\n", suite.suite);
        for file in charts.get(&suite.suite).into_iter().flatten() {
            let _ = writeln!(s, "![{}]({file})\n", file.trim_end_matches(".svg"));
        }
        for (key, value) in &suite.extra {
            match value {
                Value::Object(fields) => {
                    let _ = writeln!(s, "{key}:\n");
                    for (k, v) in fields {
                        let _ = writeln!(s, "- `{k}`: {}", scalar(v));
                    }
                    s.push('\n');
                }
                _ => {
                    let _ = writeln!(s, "{key}: {}\n", scalar(value));
                }
            }
        }
        if suite.metrics.is_empty() {
            let _ = writeln!(s, "No metrics.\n");
            continue;
        }
        let _ = writeln!(
            s,
            "| metric | value | unit | baseline | baseline value | ratio | higher is better |"
        );
        let _ = writeln!(s, "|---|---:|---|---|---:|---:|---|");
        for mt in &suite.metrics {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(&mt.name),
                number(mt.value),
                cell(&mt.unit),
                mt.baseline.as_deref().map_or_else(|| "—".to_owned(), cell),
                mt.baseline_value.map_or_else(|| "—".to_owned(), number),
                mt.ratio.map_or_else(|| "—".to_owned(), number),
                if mt.higher_is_better { "yes" } else { "no" },
            );
        }
        s.push('\n');
    }
    s
}

/// Text made safe for one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', r"\|").replace('\n', " ")
}

/// A JSON value as report text: strings bare, everything else as JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => cell(s),
        other => format!("`{}`", cell(&other.to_string())),
    }
}

/// A number with as many digits as a reader can use: integers as they are,
/// fractions to about four significant digits.
fn number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(1, 12) as usize;
    let s = format!("{x:.decimals$}");
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

/// `YYYY-MM-DD HH:MM UTC` for seconds since the Unix epoch.
fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days, after Howard Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_timestamp(1_795_261_500), "2026-11-21 11:45 UTC");
    }

    #[test]
    fn numbers_keep_useful_digits() {
        assert_eq!(number(137_000.0), "137000");
        assert_eq!(number(3797.25), "3797.2");
        assert_eq!(number(1.23456), "1.235");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(0.000_123_456), "0.0001235");
        assert_eq!(number(-2.5), "-2.5");
    }

    #[test]
    fn report_has_a_table_per_suite_with_params() {
        let json = r#"{"suite": "wal", "params": {"records": 1000, "mode": "quick"},
            "metrics": [
              {"name": "commits", "value": 5100.5, "unit": "ops/s", "baseline": "raw fsync",
               "baseline_value": 5200, "ratio": 0.98, "higher_is_better": true},
              {"name": "p99 | latency", "value": 12, "unit": "µs", "baseline": null,
               "baseline_value": null, "ratio": null, "higher_is_better": false}
            ]}"#;
        let suite: SuiteResult = serde_json::from_str(json).unwrap();
        let m = Machine {
            date: "D".into(),
            uname: "Linux 6 x86_64".into(),
            nproc: "2".into(),
            rustc: "rustc".into(),
            commit: "c".into(),
            measured: "M".into(),
        };
        let charts = BTreeMap::from([("wal".to_string(), vec!["wal.svg".to_string()])]);
        let out = render(&[suite], &m, &charts);
        assert!(out.contains("| results written | M |"));
        assert!(out.contains("![wal](wal.svg)"));
        assert!(out.contains("| cores (`nproc`) | 2 |"));
        assert!(out.contains("| machine (`uname -srm`) | Linux 6 x86_64 |"));
        assert!(out.contains("## wal\n"));
        assert!(out.contains("- `records`: `1000`"));
        assert!(out.contains("- `mode`: quick"));
        assert!(out.contains("| commits | 5100.5 | ops/s | raw fsync | 5200 | 0.98 | yes |"));
        assert!(out.contains(r"| p99 \| latency | 12 | µs | — | — | — | no |"));
    }

    #[test]
    fn a_result_without_metrics_is_refused() {
        assert!(serde_json::from_str::<SuiteResult>(r#"{"suite": "x"}"#).is_err());
    }
}
