//! SVG charts of the benchmark results, written beside
//! `docs/bench/REPORT.md` by `cargo xtask bench --report`: per suite, the
//! ratio of each metric to its same-run baseline (`<suite>.svg`), and,
//! where several runs are archived in `<target>/bench/history/<suite>/`,
//! each ratio over the newest runs (`<suite>-history.svg`).
//!
//! Drawn with `plotters`' SVG backend (no fonts loaded: text is SVG
//! `<text>`), so the charts are plain files a Markdown viewer shows.

use plotters::prelude::*;

use crate::bench::SuiteResult;
use crate::util::Result;

/// How many archived runs a history chart shows at most.
pub const HISTORY_RUNS: usize = 10;

const GOOD: RGBColor = RGBColor(44, 160, 44);
const BAD: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(90, 90, 90);

fn draw_err(e: impl std::fmt::Display) -> String {
    format!("drawing a bench chart: {e}")
}

/// The log-scale range that holds 1 and every ratio, with some room.
fn ratio_range(ratios: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = ratios
        .filter(|r| r.is_finite() && *r > 0.0)
        .fold((1.0f64, 1.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    ((lo / 1.6).max(1e-4), (hi * 1.6).min(1e4))
}

/// The powers of ten (and 1) inside `lo..hi`, for axis ticks.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut e = lo.log10().ceil() as i32;
    while 10f64.powi(e) <= hi {
        out.push(10f64.powi(e));
        e += 1;
    }
    for extra in [0.5, 2.0] {
        if (lo..=hi).contains(&extra) && hi / lo < 50.0 {
            out.push(extra);
        }
    }
    out
}

/// `x` as a short ratio label: `0.98×`, `35×`, `0.0103×`.
fn ratio_label(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}×")
    } else if x >= 0.1 {
        format!("{x:.2}×")
    } else {
        format!("{x:.3}×")
    }
}

/// Horizontal bars on a log scale: each metric's ratio to its baseline,
/// green where it is better than the baseline. `None` when no metric of
/// the suite has a baseline.
pub fn ratio_svg(suite: &SuiteResult) -> Result<Option<String>> {
    let rows: Vec<(&str, f64, bool)> = suite
        .metrics
        .iter()
        .filter_map(|m| {
            let r = m.ratio.filter(|r| r.is_finite() && *r > 0.0)?;
            Some((m.name.as_str(), r, m.higher_is_better))
        })
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let (lo, hi) = ratio_range(rows.iter().map(|r| r.1));
    let (width, left, right, top, row_h) = (960i32, 300i32, 70i32, 56i32, 24i32);
    let height = top + row_h * rows.len() as i32 + 40;
    let plot_w = (width - left - right) as f64;
    let x = |r: f64| left + ((r.ln() - lo.ln()) / (hi.ln() - lo.ln()) * plot_w) as i32;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        root.draw(&Text::new(
            format!(
                "{}: ratio to the same-run baseline (log scale; green: better than the baseline)",
                suite.suite
            ),
            (10, 10),
            ("sans-serif", 16).into_font(),
        ))
        .map_err(draw_err)?;
        let bottom = top + row_h * rows.len() as i32;
        for t in ticks(lo, hi) {
            let tx = x(t);
            let style = if t == 1.0 {
                BLACK.stroke_width(2)
            } else {
                RGBColor(220, 220, 220).stroke_width(1)
            };
            root.draw(&PathElement::new(vec![(tx, top - 6), (tx, bottom)], style))
                .map_err(draw_err)?;
            root.draw(&Text::new(
                ratio_label(t),
                (tx - 12, bottom + 6),
                ("sans-serif", 12).into_font().color(&GREY),
            ))
            .map_err(draw_err)?;
        }
        for (i, (name, r, higher)) in rows.iter().enumerate() {
            let y = top + row_h * i as i32;
            let better = if *higher { *r >= 1.0 } else { *r <= 1.0 };
            let color = if better { GOOD } else { BAD };
            let (a, b) = (x(1.0).min(x(*r)), x(1.0).max(x(*r)));
            root.draw(&Rectangle::new(
                [(a, y + 4), (b.max(a + 2), y + row_h - 4)],
                color.mix(0.8).filled(),
            ))
            .map_err(draw_err)?;
            root.draw(&Text::new(
                name.to_string(),
                (10, y + 5),
                ("sans-serif", 13).into_font(),
            ))
            .map_err(draw_err)?;
            let label_x = if *r >= 1.0 {
                b + 4
            } else {
                (a - 62).max(left - 62)
            };
            root.draw(&Text::new(
                ratio_label(*r),
                (label_x, y + 5),
                ("sans-serif", 12).into_font().color(&GREY),
            ))
            .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(Some(svg))
}

/// One line per metric with a baseline: its ratio in each of `runs`
/// (oldest first, each labelled), on a log scale. `None` with fewer than
/// two runs or no ratios.
pub fn history_svg(suite: &str, runs: &[(String, SuiteResult)]) -> Result<Option<String>> {
    if runs.len() < 2 {
        return Ok(None);
    }
    // Metric names in the order of the newest run.
    let names: Vec<&str> = runs[runs.len() - 1]
        .1
        .metrics
        .iter()
        .filter(|m| m.ratio.is_some())
        .map(|m| m.name.as_str())
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let ratio_of = |run: &SuiteResult, name: &str| {
        run.metrics
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.ratio)
            .filter(|r| r.is_finite() && *r > 0.0)
    };
    let (lo, hi) = ratio_range(
        runs.iter()
            .flat_map(|(_, r)| names.iter().filter_map(|n| ratio_of(r, n))),
    );
    let legend_rows = names.len().div_ceil(3) as u32;
    let (width, chart_h) = (960u32, 380u32);
    let height = chart_h + 20 + legend_rows * 18;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (upper, lower) = root.split_vertically(chart_h);
        let last = (runs.len() - 1) as f64;
        let mut chart = ChartBuilder::on(&upper)
            .caption(
                format!(
                    "{suite}: ratio to baseline over the newest {} runs",
                    runs.len()
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.2f64..last + 0.2, (lo..hi).log_scale())
            .map_err(draw_err)?;
        let labels: Vec<String> = runs.iter().map(|(l, _)| l.clone()).collect();
        chart
            .configure_mesh()
            .x_labels(runs.len())
            .x_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("value / baseline")
            .draw()
            .map_err(draw_err)?;
        for (i, name) in names.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = runs
                .iter()
                .enumerate()
                .filter_map(|(x, (_, r))| Some((x as f64, ratio_of(r, name)?)))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw_err)?;
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?;
            let (col, row) = ((i % 3) as i32, (i / 3) as i32);
            let (lx, ly) = (20 + col * 310, 6 + row * 18);
            lower
                .draw(&Rectangle::new(
                    [(lx, ly + 2), (lx + 14, ly + 12)],
                    color.filled(),
                ))
                .map_err(draw_err)?;
            lower
                .draw(&Text::new(
                    name.to_string(),
                    (lx + 20, ly),
                    ("sans-serif", 12).into_font(),
                ))
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(json: &str) -> SuiteResult {
        serde_json::from_str(json).unwrap()
    }

    const WAL: &str = r#"{"suite": "wal", "metrics": [
        {"name": "commits", "value": 5100, "unit": "ops/s", "baseline": "raw",
         "baseline_value": 5200, "ratio": 0.98, "higher_is_better": true},
        {"name": "p99 latency", "value": 12, "unit": "µs", "baseline": "raw",
         "baseline_value": 24, "ratio": 0.5, "higher_is_better": false},
        {"name": "no baseline", "value": 1, "unit": "x", "baseline": null,
         "baseline_value": null, "ratio": null, "higher_is_better": true}
    ]}"#;

    #[test]
    fn the_ratio_chart_has_a_bar_per_metric_with_a_baseline() {
        let svg = ratio_svg(&suite(WAL)).unwrap().unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("commits") && svg.contains("p99 latency"));
        assert!(!svg.contains("no baseline"), "a metric without a ratio");
        assert!(svg.contains("0.98×") && svg.contains("0.50×"));
        // Worse (0.98 of a higher-is-better) in red, better (0.5 of a
        // lower-is-better) in green.
        assert!(
            svg.contains("#D62728") || svg.contains("#d62728"),
            "red bar"
        );
        assert!(
            svg.contains("#2CA02C") || svg.contains("#2ca02c"),
            "green bar"
        );
        let none = suite(r#"{"suite": "x", "metrics": []}"#);
        assert!(ratio_svg(&none).unwrap().is_none());
    }

    #[test]
    fn history_needs_two_runs_and_labels_each() {
        let one = vec![("2026-12-01".to_string(), suite(WAL))];
        assert!(history_svg("wal", &one).unwrap().is_none());
        let two = vec![
            ("2026-12-01".to_string(), suite(WAL)),
            (
                "2026-12-02".to_string(),
                suite(&WAL.replace("0.98", "1.25")),
            ),
        ];
        let svg = history_svg("wal", &two).unwrap().unwrap();
        assert!(svg.contains("newest 2 runs"));
        assert!(svg.contains("2026-12-01") && svg.contains("2026-12-02"));
        assert!(svg.contains("commits") && !svg.contains("no baseline"));
    }

    #[test]
    fn ticks_are_powers_of_ten_inside_the_range() {
        assert_eq!(ticks(0.05, 200.0), vec![0.1, 1.0, 10.0, 100.0]);
        assert!(ticks(0.4, 3.0).contains(&1.0) && ticks(0.4, 3.0).contains(&2.0));
    }
}
