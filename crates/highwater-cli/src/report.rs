//! `highwater report STORE -o report.html`: one self-contained HTML page
//! about a store's retained checkpoints.
//!
//! The page needs no network and no JavaScript to be read: the charts are
//! inline SVG drawn with `plotters` (its SVG backend only), the style is
//! inline, and every number a chart shows is also in the page's text (the
//! checkpoint table). It holds:
//!
//! - charts over time of full (whole chain) and incremental (own layer)
//!   stored size and uploaded bytes, checkpoint duration and snapshot pause
//!   (when the manifests record them: `highwater::merge::recorded`), chain
//!   depth, dedup saving and shared artifacts;
//! - the newest checkpoint's chain as a picture;
//! - the recovery plan of the newest checkpoint, and a plan summary per
//!   retained checkpoint;
//! - the cluster ledger: of a coordinator node (`--ledger DIR`, builds with
//!   the `raft` feature), or the one a job's `LocalCoordinator` keeps in
//!   the store's `ledger` scope (with each participant's checkpoints), or
//!   a sentence saying there is none.
//!
//! The numbers come from the same inventory as `highwater inspect`
//! ([`crate::inspect::inventory`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use highwater::core::{LayerKind, Manifest};
use highwater::recovery::{Recovery, RecoveryConfig, RecoveryPlan, RecoveryScope, RecoveryTarget};
use highwater::{CheckpointId, CheckpointStore, Error, Result};
use plotters::prelude::*;

use crate::inspect::{Inventory, Row, human, inventory, runtime};
use crate::target::open_store;

/// Arguments of `highwater report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Checkpoint directory, or a redis://, s3://, az:// or gs:// URL.
    pub store: String,
    /// Where to write the page.
    #[arg(short, long, default_value = "report.html")]
    pub output: PathBuf,
    /// Key namespace of a Redis store.
    #[arg(long, default_value = "highwater")]
    pub namespace: String,
    /// Data directory of a coordinator node (`highwater coordinator
    /// --data`) whose cluster ledger the page shows, as of the node's last
    /// Raft snapshot. Needs a build with the `raft` feature.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
}

/// Runs `highwater report`.
pub fn run(args: ReportArgs) -> Result<ExitCode> {
    let store = open_store(&args.store, &args.namespace, false)?;
    let rt = runtime()?;
    let inv = rt.block_on(inventory(&*store))?;
    let plans = plans(store.clone(), rt.handle(), &inv)?;
    let ledger = match &args.ledger {
        Some(dir) => Some(ledger::read(dir, &rt)?),
        None => ledger::in_store(&store, &rt)?,
    };
    let page = render(&args.store, &inv, &plans, ledger.as_deref())?;
    std::fs::write(&args.output, page)
        .map_err(|e| Error::io(format!("write {}", args.output.display()), e))?;
    println!(
        "wrote {}: {} checkpoints",
        args.output.display(),
        inv.rows.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The recovery plan of the newest checkpoint (`Latest`, with its fallback
/// order) and of each retained checkpoint. The log is not opened: opening
/// it cuts a torn tail, which a report must not do to a running job.
struct Plans {
    latest: std::result::Result<RecoveryPlan, String>,
    each: Vec<(CheckpointId, std::result::Result<RecoveryPlan, String>)>,
}

fn plans(
    store: Arc<dyn CheckpointStore>,
    handle: &tokio::runtime::Handle,
    inv: &Inventory,
) -> Result<Plans> {
    let engine = Recovery::new(store, RecoveryConfig::default(), handle.clone())?;
    let scope = RecoveryScope::all();
    let plan = |t| engine.plan(t, &scope, None).map_err(|e| e.to_string());
    Ok(Plans {
        latest: plan(RecoveryTarget::Latest),
        each: inv
            .manifests
            .iter()
            .map(|m| {
                (
                    m.checkpoint_id,
                    plan(RecoveryTarget::Checkpoint(m.checkpoint_id)),
                )
            })
            .collect(),
    })
}

/// Text made safe for HTML element content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1200px}\
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}\
th{background:#eef}td.l,th.l{text-align:left}small{color:#666}pre{background:#f6f6f6;padding:1em;overflow:auto}\
.note{color:#555;font-style:italic}.charts{display:flex;flex-wrap:wrap;gap:1em}";

/// The whole page.
fn render(spec: &str, inv: &Inventory, plans: &Plans, ledger: Option<&str>) -> Result<String> {
    let mut h = String::new();
    let readable: Vec<&Row> = inv.rows.iter().filter(|r| r.error.is_none()).collect();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>highwater report: {s}</title><style>{STYLE}</style></head><body>\
         <h1>highwater checkpoint report</h1><p>Store <code>{s}</code>: {n} retained \
         checkpoint(s), {u} unreadable.</p>",
        s = esc(spec),
        n = inv.rows.len(),
        u = inv.rows.len() - readable.len(),
    );
    summary(&mut h, inv);
    h.push_str("<h2>Checkpoints over time</h2>");
    if readable.is_empty() {
        h.push_str("<p class=\"note\">No readable checkpoint: nothing to chart.</p>");
    } else {
        charts(&mut h, &readable)?;
    }
    h.push_str("<h2>Current chain</h2>");
    match inv.manifests.iter().max_by_key(|m| m.checkpoint_id) {
        Some(m) => {
            let _ = write!(
                h,
                "<p>Checkpoint {} restores {} layer(s), base first:</p>{}",
                m.checkpoint_id,
                m.layers.len(),
                chain_svg(m)?
            );
        }
        None => h.push_str("<p class=\"note\">No readable checkpoint.</p>"),
    }
    recovery(&mut h, plans);
    table(&mut h, &inv.rows);
    h.push_str("<h2>Cluster ledger</h2>");
    match ledger {
        Some(section) => h.push_str(section),
        None => h.push_str(
            "<p class=\"note\">No cluster ledger: this store has no <code>ledger</code> \
             scope (a job of several subtasks keeps one there), and none was given (a Raft \
             coordinator keeps its ledger in its data directory; pass it with \
             <code>--ledger DIR</code>).</p>",
        ),
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

fn summary(h: &mut String, inv: &Inventory) {
    let s = &inv.summary;
    let newest = inv.rows.iter().rev().find(|r| r.error.is_none());
    let _ = write!(
        h,
        "<table><tr><th class=\"l\">distinct artifacts</th><td>{}</td></tr>\
         <tr><th class=\"l\">stored</th><td>{}<br><small>{} B</small></td></tr>\
         <tr><th class=\"l\">referenced by all retained checkpoints</th><td>{}<br><small>{} B</small></td></tr>\
         <tr><th class=\"l\">dedup saving (content addressing)</th><td>{}<br><small>{} B</small></td></tr>",
        s.distinct_artifacts,
        human(s.stored_bytes),
        s.stored_bytes,
        human(s.referenced_bytes),
        s.referenced_bytes,
        human(s.dedup_saved_bytes),
        s.dedup_saved_bytes,
    );
    if let Some(r) = newest {
        let _ = write!(
            h,
            "<tr><th class=\"l\">newest checkpoint</th><td>{} ({}, created {})</td></tr>",
            r.id,
            esc(r.kind.as_deref().unwrap_or("?")),
            esc(r.created_at.as_deref().unwrap_or("?")),
        );
    }
    h.push_str("</table>");
}

/// The unit bytes are charted in: the largest binary unit under `max`.
fn byte_unit(max: u64) -> (f64, &'static str) {
    const UNITS: [(f64, &str); 4] = [
        (1.0, "B"),
        (1024.0, "KiB"),
        (1024.0 * 1024.0, "MiB"),
        (1024.0 * 1024.0 * 1024.0, "GiB"),
    ];
    UNITS
        .iter()
        .rev()
        .find(|(f, _)| max as f64 >= *f)
        .copied()
        .unwrap_or(UNITS[0])
}

/// One line of a chart: its name, colour and points.
struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    /// Line width; a wider line drawn first stays visible under a narrower
    /// one with the same values.
    width: u32,
    points: Vec<(f64, f64)>,
}

const BLUE_: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN_: RGBColor = RGBColor(44, 160, 44);
const PURPLE: RGBColor = RGBColor(148, 103, 189);

fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("drawing a chart: {e}"))
}

/// A line chart (with points) of `series` over `x` seconds as inline SVG.
fn line_chart(
    title: &str,
    y_desc: &str,
    series: &[Series<'_>],
    size: (u32, u32),
) -> Result<String> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1) = pts().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    let pad = if x1 > x0 { (x1 - x0) * 0.03 } else { 0.5 };
    let y1 = pts().fold(0.0f64, |m, p| m.max(p.1));
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d((x0 - pad)..(x1 + pad), 0f64..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the oldest retained checkpoint")
            .y_desc(y_desc)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_err)?;
        for s in series {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(s.width),
                ))
                .map_err(draw_err)?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&p| Circle::new(p, s.width + 1, color.filled())),
                )
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn charts(h: &mut String, rows: &[&Row]) -> Result<()> {
    let t0 = rows
        .iter()
        .filter_map(|r| r.created_at_ms)
        .min()
        .unwrap_or(0);
    let x = |r: &Row| r.created_at_ms.unwrap_or(t0).saturating_sub(t0) as f64 / 1000.0;
    let series = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((x(r), f(r)?))).collect()
    };
    let max_bytes = rows
        .iter()
        .filter_map(|r| r.stored_bytes.max(r.bytes_written))
        .max()
        .unwrap_or(0);
    let (div, unit) = byte_unit(max_bytes);
    let bytes = |v: Option<u64>| v.map(|b| b as f64 / div);
    h.push_str("<div class=\"charts\">");
    h.push_str(&line_chart(
        "Checkpoint size: full (whole chain) vs incremental (own layer)",
        unit,
        &[
            Series {
                name: "full: stored bytes of the chain",
                color: BLUE_,
                width: 2,
                points: series(&|r| bytes(r.stored_bytes)),
            },
            Series {
                name: "uploaded (recorded; artifacts already stored are not uploaded)",
                color: GREEN_,
                width: 6,
                points: series(&|r| bytes(r.bytes_written)),
            },
            Series {
                name: "incremental: stored bytes of its own layer",
                color: ORANGE,
                width: 2,
                points: series(&|r| bytes(r.own_stored_bytes)),
            },
        ],
        (1150, 380),
    )?);
    let recorded = rows.iter().filter(|r| r.duration_ms.is_some()).count();
    if recorded > 0 {
        h.push_str(&line_chart(
            "Checkpoint duration and snapshot pause",
            "ms",
            &[
                Series {
                    name: "duration (trigger to artifacts stored)",
                    color: PURPLE,
                    width: 2,
                    points: series(&|r| r.duration_ms),
                },
                Series {
                    name: "snapshot pause",
                    color: ORANGE,
                    width: 2,
                    points: series(&|r| r.snapshot_pause_ms),
                },
            ],
            (1150, 320),
        )?);
    }
    h.push_str(&line_chart(
        "Chain depth (deltas on the base)",
        "layers",
        &[Series {
            name: "depth",
            color: BLUE_,
            width: 2,
            points: series(&|r| r.depth.map(|d| d as f64)),
        }],
        (565, 300),
    )?);
    let max_saved = rows
        .iter()
        .filter_map(|r| r.dedup_saved_bytes)
        .max()
        .unwrap_or(0);
    let (sdiv, sunit) = byte_unit(max_saved);
    h.push_str(&line_chart(
        "Dedup saving inside each checkpoint",
        sunit,
        &[Series {
            name: "stored bytes saved",
            color: GREEN_,
            width: 2,
            points: series(&|r| r.dedup_saved_bytes.map(|b| b as f64 / sdiv)),
        }],
        (565, 300),
    )?);
    h.push_str(&line_chart(
        "Artifacts shared with another retained checkpoint",
        "artifacts",
        &[Series {
            name: "shared artifacts",
            color: PURPLE,
            width: 2,
            points: series(&|r| r.shared_artifacts.map(|n| n as f64)),
        }],
        (565, 300),
    )?);
    h.push_str("</div>");
    if recorded < rows.len() {
        let _ = write!(
            h,
            "<p class=\"note\">Duration is not recorded in {} of {} manifest(s) (written \
             before manifests recorded it, or compacted checkpoints, which are not a \
             checkpoint run).</p>",
            rows.len() - recorded,
            rows.len()
        );
    }
    Ok(())
}

/// The chain of `m` as boxes, base first, an arrow between layers; a box's
/// height grows with its stored bytes.
fn chain_svg(m: &Manifest) -> Result<String> {
    let n = m.layers.len().max(1) as i32;
    let (bw, gap, h) = (170, 40, 230);
    let width = (n * (bw + gap) + gap).max(400) as u32;
    let sizes: Vec<u64> = m
        .layers
        .iter()
        .map(|l| l.artifacts.iter().map(|a| a.stored_bytes).sum())
        .collect();
    let max = sizes.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, h as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        for (i, (layer, &bytes)) in m.layers.iter().zip(&sizes).enumerate() {
            let x = gap + i as i32 * (bw + gap);
            let box_h = 80 + (90.0 * bytes as f64 / max as f64) as i32;
            let (top, bottom) = (h - 30 - box_h, h - 30);
            let (color, kind) = match layer.kind {
                LayerKind::Full => (BLUE_, "full"),
                LayerKind::Delta => (ORANGE, "delta"),
                LayerKind::Native => (GREEN_, "native"),
            };
            root.draw(&Rectangle::new(
                [(x, top), (x + bw, bottom)],
                color.mix(0.35).filled(),
            ))
            .map_err(draw_err)?;
            root.draw(&Rectangle::new(
                [(x, top), (x + bw, bottom)],
                color.stroke_width(2),
            ))
            .map_err(draw_err)?;
            let lines = [
                format!("checkpoint {}", layer.checkpoint_id),
                format!("{kind} layer"),
                format!("{} artifacts", layer.artifacts.len()),
                human(bytes),
            ];
            for (j, line) in lines.iter().enumerate() {
                root.draw(&Text::new(
                    line.clone(),
                    (x + 8, top + 8 + 17 * j as i32),
                    ("sans-serif", 14).into_font(),
                ))
                .map_err(draw_err)?;
            }
            if i + 1 < m.layers.len() {
                let y = bottom - 20;
                let (ax, bx) = (x + bw + 4, x + bw + gap - 4);
                root.draw(&PathElement::new(
                    vec![(ax, y), (bx, y)],
                    BLACK.stroke_width(2),
                ))
                .map_err(draw_err)?;
                root.draw(&Polygon::new(
                    vec![(bx, y), (bx - 8, y - 5), (bx - 8, y + 5)],
                    BLACK.filled(),
                ))
                .map_err(draw_err)?;
            }
        }
        root.draw(&Text::new(
            "restore applies left to right; box height grows with stored bytes".to_string(),
            (gap, h - 20),
            ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn recovery(h: &mut String, plans: &Plans) {
    h.push_str("<h2>Recovery plans</h2>");
    match &plans.latest {
        Ok(p) => {
            let _ = write!(
                h,
                "<p>Recovering the newest checkpoint (the write-ahead log, if any, is not \
                 looked at here: <code>highwater recover --plan</code> shows its range):</p>\
                 <pre>{}</pre>",
                esc(&p.to_string())
            );
        }
        Err(e) => {
            let _ = write!(
                h,
                "<p class=\"note\">No recovery plan for the newest checkpoint: {}</p>",
                esc(e)
            );
        }
    }
    if plans.each.is_empty() {
        return;
    }
    h.push_str(
        "<table><tr><th>checkpoint</th><th>layers</th><th>key-group ranges</th>\
         <th>artifacts to fetch</th><th>bytes to fetch</th><th class=\"l\">falls back to</th></tr>",
    );
    for (id, plan) in &plans.each {
        match plan {
            Ok(p) => {
                let fallback: Vec<String> = p
                    .fallback_candidates
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let _ = write!(
                    h,
                    "<tr><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}<br><small>{} B</small></td><td class=\"l\">{}</td></tr>",
                    p.chain.len(),
                    p.ranges.len(),
                    p.artifacts_to_fetch,
                    human(p.bytes_to_fetch),
                    p.bytes_to_fetch,
                    if fallback.is_empty() {
                        "—".to_string()
                    } else {
                        fallback.join(", ")
                    }
                );
            }
            Err(e) => {
                let _ = write!(
                    h,
                    "<tr><td>{id}</td><td class=\"l\" colspan=\"5\">no plan: {}</td></tr>",
                    esc(e)
                );
            }
        }
    }
    h.push_str("</table>");
}

fn table(h: &mut String, rows: &[Row]) {
    h.push_str(
        "<h2>Retained checkpoints</h2><table><tr><th>id</th><th class=\"l\">kind</th>\
         <th>parent</th><th class=\"l\">created</th><th>base</th><th>depth</th>\
         <th>full size (chain stored)</th><th>incremental size (own layer)</th>\
         <th>uploaded</th><th>logical</th><th>artifacts (own)</th><th>shared</th>\
         <th>dedup saving</th><th>duration</th><th>snapshot pause</th><th>log position</th></tr>",
    );
    let bytes = |v: Option<u64>| match v {
        Some(b) => format!("{}<br><small>{b} B</small>", human(b)),
        None => "—".into(),
    };
    let num = |v: Option<u64>| v.map_or_else(|| "—".to_string(), |n| n.to_string());
    let ms =
        |v: Option<f64>| v.map_or_else(|| "not recorded".to_string(), |d| format!("{d:.1} ms"));
    for r in rows {
        if let Some(e) = &r.error {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"l\" colspan=\"15\">UNREADABLE: {}</td></tr>",
                r.id,
                esc(e)
            );
            continue;
        }
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.id,
            esc(r.kind.as_deref().unwrap_or("?")),
            num(r.parent),
            esc(r.created_at.as_deref().unwrap_or("?")),
            num(r.base),
            num(r.depth.map(|d| d as u64)),
            bytes(r.stored_bytes),
            bytes(r.own_stored_bytes),
            bytes(r.bytes_written),
            bytes(r.logical_bytes),
            num(r.artifacts.map(|n| n as u64)),
            num(r.own_artifacts.map(|n| n as u64)),
            num(r.shared_artifacts.map(|n| n as u64)),
            bytes(r.dedup_saved_bytes),
            ms(r.duration_ms),
            ms(r.snapshot_pause_ms),
            num(r.wal_position),
        );
    }
    h.push_str("</table>");
}

/// The ledger section: of a coordinator's data directory, or of the
/// store's own `ledger` scope.
mod ledger {
    use std::path::Path;
    use std::sync::Arc;

    use highwater::cluster::{LOCAL_HISTORY, LOCAL_LEDGER_SCOPE, LocalCoordinator};
    use highwater::core::participant_scope;
    use highwater::{CheckpointStore, Result};

    /// The ledger a job's `LocalCoordinator` keeps in `store`'s `ledger`
    /// scope, and each participant's checkpoints, as an HTML section;
    /// `None` when the store has no such scope (or cannot be divided).
    pub fn in_store(
        store: &Arc<dyn CheckpointStore>,
        rt: &tokio::runtime::Runtime,
    ) -> Result<Option<String>> {
        use std::fmt::Write as _;

        use super::esc;
        use crate::inspect::{human, inventory};

        let Ok(scope) = store.scoped(LOCAL_LEDGER_SCOPE) else {
            return Ok(None);
        };
        if rt.block_on(scope.list_manifests())?.is_empty() {
            return Ok(None);
        }
        // Opening reads the completed checkpoints; with no interval it
        // triggers nothing and writes nothing.
        let coordinator = LocalCoordinator::open(store.clone(), 1, None)?;
        let completed = coordinator.completed(LOCAL_HISTORY);
        let mut h = String::new();
        let _ = write!(
            h,
            "<p>The job's ledger in the store's <code>{LOCAL_LEDGER_SCOPE}</code> scope: {} \
             completed global checkpoint(s) remembered (newest first).</p>\
             <table><tr><th>checkpoint</th><th>parts</th><th class=\"l\">where each part is \
             (participant: scope@id)</th></tr>",
            completed.len()
        );
        for g in &completed {
            let parts: Vec<String> = g.parts.iter().map(|(p, r)| format!("{p}: {r}")).collect();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
                g.id,
                g.parts.len(),
                esc(&parts.join(", "))
            );
        }
        h.push_str("</table>");
        // Each participant's own checkpoints (the charts above are of the
        // store's root scope).
        let mut participants = std::collections::BTreeSet::new();
        for g in &completed {
            participants.extend(g.parts.keys().copied());
        }
        if !participants.is_empty() {
            h.push_str(
                "<p>Each participant's checkpoints are in its own scope (for a directory, a \
                 subdirectory: <code>highwater report STORE/participants/N</code> charts \
                 them):</p><table><tr><th class=\"l\">participant scope</th>\
                 <th>retained checkpoints</th><th>newest</th><th>stored (newest chain)</th></tr>",
            );
            for p in participants {
                let name = participant_scope(p);
                let inv = rt.block_on(inventory(&*store.scoped(&name)?))?;
                let newest = inv.rows.iter().rev().find(|r| r.error.is_none());
                let _ = write!(
                    h,
                    "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&name),
                    inv.rows.len(),
                    newest.map_or_else(|| "—".to_string(), |r| r.id.to_string()),
                    newest
                        .and_then(|r| r.stored_bytes)
                        .map_or_else(|| "—".to_string(), |b| format!("{} ({b} B)", human(b)))
                );
            }
            h.push_str("</table>");
        }
        Ok(Some(h))
    }

    /// Without the `raft` feature: the error naming the build that has it.
    #[cfg(not(feature = "raft"))]
    pub fn read(dir: &Path, rt: &tokio::runtime::Runtime) -> Result<String> {
        let _ = (dir, rt);
        Err(crate::target::not_built(
            "`highwater report --ledger`",
            "raft",
        ))
    }

    /// The ledger of the node whose data directory is `dir`, as of its last
    /// Raft snapshot, as an HTML section.
    #[cfg(feature = "raft")]
    pub fn read(dir: &Path, rt: &tokio::runtime::Runtime) -> Result<String> {
        use std::fmt::Write as _;

        use highwater::Error;
        use highwater::cloud::ObjectCheckpointStore;
        use highwater::raft::{CheckpointState, LedgerStateMachine};

        use super::esc;
        use crate::inspect::format_utc;

        if !dir.is_dir() {
            return Err(Error::NotFound(format!(
                "coordinator data directory: {}",
                dir.display()
            )));
        }
        // Opening reads the snapshot pointer and its artifact; nothing is
        // written, so a running node's directory can be read.
        let store: Arc<dyn highwater::CheckpointStore> =
            Arc::new(ObjectCheckpointStore::local(dir.join("snapshots"))?);
        // A running node replaces its snapshot (new artifact, pointer, then
        // the old artifact deleted): a pointer read just before the switch
        // may name an artifact gone a moment later. Read again then.
        let mut attempt = 0;
        let sm = loop {
            match rt.block_on(LedgerStateMachine::open(0, dir, store.clone())) {
                Err(Error::NotFound(_)) if attempt < 5 => attempt += 1,
                other => break other?,
            }
        };
        let applied = *sm.applied_index().borrow();
        let ledger = sm.ledger();
        let mut h = String::new();
        if applied == 0 {
            let _ = write!(
                h,
                "<p class=\"note\">The coordinator in <code>{}</code> has no Raft snapshot \
                 yet: its ledger lives only in its log, which this report does not replay.</p>",
                esc(&dir.display().to_string())
            );
            return Ok(h);
        }
        let _ = write!(
            h,
            "<p>Ledger of the coordinator in <code>{}</code> as of its last Raft snapshot \
             (log index {applied}; entries applied since are not shown): {} completed, {} \
             aborted, {} rejected command(s) since the ledger began; next checkpoint id {}.</p>",
            esc(&dir.display().to_string()),
            ledger.completed_total(),
            ledger.aborted_total(),
            ledger.rejected_total(),
            ledger.next_id(),
        );
        h.push_str(
            "<table><tr><th>checkpoint</th><th class=\"l\">triggered</th><th>participants</th>\
             <th>acks</th><th class=\"l\">state</th></tr>",
        );
        for c in ledger.checkpoints() {
            let state = match &c.state {
                CheckpointState::Pending => "pending".to_string(),
                CheckpointState::Completed { log_index } => {
                    format!("completed at log index {log_index}")
                }
                CheckpointState::Aborted { log_index, reason } => {
                    format!("aborted at log index {log_index}: {reason}")
                }
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
                c.id,
                format_utc(c.triggered_ms),
                c.participants.len(),
                c.acks.len(),
                esc(&state)
            );
        }
        h.push_str("</table>");
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn bytes_are_charted_in_the_largest_unit_below_the_maximum() {
        assert_eq!(byte_unit(0).1, "B");
        assert_eq!(byte_unit(1023).1, "B");
        assert_eq!(byte_unit(4096).1, "KiB");
        assert_eq!(byte_unit(5 << 20).1, "MiB");
        assert_eq!(byte_unit(3 << 30).1, "GiB");
    }

    #[test]
    fn a_chart_is_inline_svg_with_its_title_and_legend() {
        let svg = line_chart(
            "Title <1>",
            "KiB",
            &[Series {
                name: "only series",
                color: BLUE_,
                width: 2,
                points: vec![(0.0, 1.0), (2.0, 3.0)],
            }],
            (400, 300),
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        assert!(svg.contains("Title &lt;1&gt;"), "the title is escaped text");
        assert!(svg.contains("only series"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        // One point alone (a single checkpoint) still draws.
        line_chart(
            "one",
            "B",
            &[Series {
                name: "s",
                color: BLUE_,
                width: 2,
                points: vec![(0.0, 0.0)],
            }],
            (400, 300),
        )
        .unwrap();
    }
}
