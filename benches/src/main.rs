//! `highwater-benches`: the benchmark harness behind `cargo xtask bench`.
//!
//! ```text
//! highwater-benches <suite|all> [--quick] --out DIR
//! ```
//!
//! Each suite measures highwater against a baseline measured in the same run
//! and writes `DIR/<suite>.json`:
//!
//! ```json
//! {"suite": "state", "params": {...},
//!  "metrics": [{"name": "memory_put", "value": 1.0, "unit": "ops/s",
//!               "baseline": "...", "baseline_value": 1.0, "ratio": 1.0,
//!               "higher_is_better": true}]}
//! ```
//!
//! (the schema `xtask/src/bench.rs` renders into `docs/bench/REPORT.md`),
//! and prints a summary table. `--quick` makes short runs for CI.
//!
//! A suite is a module with a `run(&Ctx) -> Result<SuiteResult>` function,
//! listed in [`SUITES`]; add new suites (wal, merge, recovery, …) there.

mod cloud;
mod large;
mod merge;
mod raft;
mod recovery;
mod redis;
mod rocksdb;
mod savepoint;
mod state;
mod state_flink;
mod state_pipeline;
mod util;
mod wal;

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::{Map, Value};

/// The error type of the harness: anything printable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The result type of the harness.
pub type Result<T = (), E = BoxError> = std::result::Result<T, E>;

/// A registered suite: its name and the function that runs it.
type Suite = (&'static str, fn(&Ctx) -> Result<SuiteResult>);

/// Every suite, in the order `all` runs them.
const SUITES: &[Suite] = &[
    ("state", state::run),
    ("redis", redis::run),
    ("cloud", cloud::run),
    ("wal", wal::run),
    ("merge", merge::run),
    ("raft", raft::run),
    ("rocksdb", rocksdb::run),
    ("recovery", recovery::run),
    ("savepoint", savepoint::run),
    ("large", large::run),
];

/// What every suite is given.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Short runs for CI and smoke tests.
    pub quick: bool,
    /// Where results (and any scratch directories) go.
    pub out: PathBuf,
    /// `--size`: logical bytes of state for the suites that take a size
    /// (`large`); their default when `None`.
    pub size: Option<u64>,
    /// `--blob-values`: the `large` suite keeps values in blob files
    /// (`RocksDbConfig::blob_values`), on both sides of its comparisons.
    pub blob_values: bool,
}

/// One suite's results, written as `<out>/<suite>.json`.
#[derive(Debug, Serialize)]
pub struct SuiteResult {
    /// The suite name, also the file name.
    pub suite: String,
    /// The parameters of the run (sizes, threads, mode, machine).
    pub params: Map<String, Value>,
    /// The measurements.
    pub metrics: Vec<Metric>,
}

/// One measurement and, if it has one, its same-run baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    /// What was measured.
    pub name: String,
    /// The measurement.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// What it is compared with.
    pub baseline: Option<String>,
    /// The baseline's measurement, same unit.
    pub baseline_value: Option<f64>,
    /// `value / baseline_value`.
    pub ratio: Option<f64>,
    /// Which direction of `value` is an improvement.
    pub higher_is_better: bool,
}

impl Metric {
    /// A metric without a baseline.
    pub fn plain(name: &str, value: f64, unit: &str, higher_is_better: bool) -> Metric {
        Metric {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline: None,
            baseline_value: None,
            ratio: None,
            higher_is_better,
        }
    }

    /// A metric compared with `baseline`; the ratio is `value / baseline_value`.
    pub fn versus(
        name: &str,
        value: f64,
        unit: &str,
        baseline: &str,
        baseline_value: f64,
        higher_is_better: bool,
    ) -> Metric {
        let ratio = (baseline_value != 0.0).then(|| value / baseline_value);
        Metric {
            baseline: Some(baseline.to_owned()),
            baseline_value: Some(baseline_value),
            ratio,
            ..Metric::plain(name, value, unit, higher_is_better)
        }
    }
}

const USAGE: &str = "usage: highwater-benches <suite|all> [--quick] [--size BYTES[K|M|G]] [--blob-values] --out DIR";

/// The parsed command line.
#[derive(Debug, PartialEq)]
struct Args {
    suite: String,
    quick: bool,
    out: PathBuf,
    size: Option<u64>,
    blob_values: bool,
}

/// `BYTES` with an optional binary suffix: `512M`, `32G`, `1048576`.
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        Some('T' | 't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("--size wants a number of bytes like 32G, got {s:?}"))?;
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("--size out of range: {s:?}"))
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut suite = None;
    let mut quick = false;
    let mut out = None;
    let mut size = None;
    let mut blob_values = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--blob-values" => blob_values = true,
            "--out" => {
                let dir = args.next().ok_or("--out needs a directory")?;
                out = Some(PathBuf::from(dir));
            }
            s if s.starts_with("--out=") => out = Some(PathBuf::from(&s["--out=".len()..])),
            "--size" => size = Some(parse_size(&args.next().ok_or("--size needs a value")?)?),
            s if s.starts_with("--size=") => size = Some(parse_size(&s["--size=".len()..])?),
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            s => {
                if suite.replace(s.to_owned()).is_some() {
                    return Err("give one suite (or `all`)".into());
                }
            }
        }
    }
    let suite = suite.ok_or("no suite given")?;
    if suite != "all" && !SUITES.iter().any(|(name, _)| *name == suite) {
        let names: Vec<_> = SUITES.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "unknown suite {suite:?}; suites: {}, all",
            names.join(", ")
        ));
    }
    let out = out.ok_or("--out DIR is required")?;
    Ok(Args {
        suite,
        quick,
        out,
        size,
        blob_values,
    })
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some(state::MEMORY_PROBE_ARG) {
        return state::memory_probe_main(&raw[1..]);
    }
    if raw.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        let names: Vec<_> = SUITES.iter().map(|(n, _)| *n).collect();
        println!("suites: {}, all", names.join(", "));
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("highwater-benches: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("highwater-benches: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("create {}: {e}", args.out.display()))?;
    let ctx = Ctx {
        quick: args.quick,
        out: args.out.clone(),
        size: args.size,
        blob_values: args.blob_values,
    };
    for (name, suite) in SUITES {
        if args.suite != "all" && args.suite != *name {
            continue;
        }
        println!(
            "== suite {name}{} ==",
            if ctx.quick { " (quick)" } else { "" }
        );
        let started = std::time::Instant::now();
        let result = suite(&ctx).map_err(|e| format!("suite {name}: {e}"))?;
        write_result(&ctx, &result)?;
        print_summary(&result);
        println!(
            "suite {name} took {:.1} s; wrote {}",
            started.elapsed().as_secs_f64(),
            ctx.out.join(format!("{name}.json")).display()
        );
    }
    Ok(())
}

/// Writes `<out>/<suite>.json`, refusing non-finite numbers (JSON has none).
fn write_result(ctx: &Ctx, result: &SuiteResult) -> Result {
    for m in &result.metrics {
        let finite = m.value.is_finite()
            && m.baseline_value.is_none_or(f64::is_finite)
            && m.ratio.is_none_or(f64::is_finite);
        if !finite {
            return Err(format!("metric {} is not a finite number: {m:?}", m.name).into());
        }
    }
    let path = ctx.out.join(format!("{}.json", result.suite));
    let mut text = serde_json::to_string_pretty(result)?;
    text.push('\n');
    // Write aside and rename, so a reader never sees half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
    Ok(())
}

fn print_summary(result: &SuiteResult) {
    let rows: Vec<[String; 6]> = result
        .metrics
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                format!("{} {}", util::human(m.value), m.unit),
                m.baseline.clone().unwrap_or_else(|| "-".into()),
                m.baseline_value.map_or_else(|| "-".into(), util::human),
                m.ratio.map_or_else(|| "-".into(), |r| format!("{r:.3}")),
                if m.higher_is_better {
                    "higher"
                } else {
                    "lower"
                }
                .into(),
            ]
        })
        .collect();
    let header = [
        "metric",
        "value",
        "baseline",
        "baseline value",
        "ratio",
        "better",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String; 6]| {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", cells.join(" | ").trim_end());
    };
    println!();
    println!("  suite {}:", result.suite);
    for (k, v) in &result.params {
        println!("    {k} = {v}");
    }
    line(&header);
    println!("  {}", widths.map(|w| "-".repeat(w)).join("-|-").trim_end());
    for row in &rows {
        line(row);
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Result<Args, String> {
        parse_args(s.iter().map(|s| s.to_string()))
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            args(&["state", "--quick", "--out", "d"]).unwrap(),
            Args {
                suite: "state".into(),
                quick: true,
                out: "d".into(),
                size: None,
                blob_values: false,
            }
        );
        assert!(
            args(&["large", "--blob-values", "--out", "x"])
                .unwrap()
                .blob_values
        );
        assert_eq!(
            args(&["large", "--size", "32G", "--out", "x"])
                .unwrap()
                .size,
            Some(32 << 30)
        );
        assert_eq!(
            args(&["large", "--size=512M", "--out", "x"]).unwrap().size,
            Some(512 << 20)
        );
        assert!(args(&["large", "--size", "0", "--out", "x"]).is_err());
        assert!(args(&["large", "--size", "lots", "--out", "x"]).is_err());
        assert!(args(&["large", "--size", "99999999999T", "--out", "x"]).is_err());
        assert_eq!(args(&["--out=x", "all"]).unwrap().suite, "all");
        assert!(!args(&["all", "--out", "x"]).unwrap().quick);
        assert!(args(&["state"]).is_err());
        assert!(args(&["nope", "--out", "x"]).is_err());
        assert!(args(&["state", "all", "--out", "x"]).is_err());
        assert!(args(&["state", "--fast", "--out", "x"]).is_err());
    }

    #[test]
    fn metrics_serialize_in_the_report_schema() {
        let m = Metric::versus("memory_put", 2.0, "ops/s", "RwLock<HashMap>", 4.0, true);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["baseline"], "RwLock<HashMap>");
        let p = serde_json::to_value(Metric::plain("p99", 1.0, "ms", false)).unwrap();
        assert!(p["baseline"].is_null() && p["baseline_value"].is_null() && p["ratio"].is_null());
        assert_eq!(p["higher_is_better"], false);
    }
}
