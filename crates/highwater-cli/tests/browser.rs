//! The browser test of `highwater report`: a demo store's report rendered
//! in headless Chromium is not blank, draws its charts, and its text
//! carries the numbers `highwater inspect --json` gives for the same store.
//!
//! Not part of the default test run (it needs Chromium, which takes longer
//! to install than the test may cost CI): its target has `test = false`
//! in the CLI's Cargo.toml, so `cargo test` and `cargo nextest run` build
//! and run it only when named (`--test browser`). `cargo xtask browser`
//! and the `browser` step of `cargo xtask ci` install Chromium if missing
//! and run it. `HIGHWATER_CHROMIUM` names the browser binary (default
//! `chromium`).

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_highwater");

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run a command");
    assert!(
        out.status.success(),
        "{c:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chromium(profile: &Path) -> Command {
    let bin = std::env::var("HIGHWATER_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
    ])
    // A fresh profile per run: nothing cached, no other instance joined.
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The decoded screenshot: width, height and RGB triples.
fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let samples = info.color_type.samples();
    assert!(samples >= 3, "a colour screenshot: {:?}", info.color_type);
    let pixels = buf[..info.buffer_size()]
        .chunks_exact(samples)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, pixels)
}

#[test]
fn the_report_renders_in_chromium_with_its_charts_and_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("demo");
    run_ok(
        Command::new(BIN)
            .arg("demo")
            .arg("--dir")
            .arg(&store)
            .args(["--events", "300000", "--checkpoint-every", "40"]),
    );
    let json: serde_json::Value = serde_json::from_str(&run_ok(
        Command::new(BIN).arg("inspect").arg(&store).arg("--json"),
    ))
    .unwrap();
    let html = tmp.path().join("report.html");
    run_ok(
        Command::new(BIN)
            .arg("report")
            .arg(&store)
            .arg("-o")
            .arg(&html),
    );
    let source = std::fs::read_to_string(&html).unwrap();
    // Self-contained: no script, nothing fetched at view time (the only
    // URL is the SVG namespace, which is a name, not a fetch).
    assert!(!source.contains("<script"), "the page needs no JavaScript");
    for attr in ["src=", "href=", "@import", "url("] {
        assert!(!source.contains(attr), "the page refers to {attr}");
    }
    let started = std::time::Instant::now();
    let url = format!("file://{}", html.display());
    let png = tmp.path().join("report.png");
    run_ok(
        chromium(&tmp.path().join("profile-shot"))
            .arg(format!("--screenshot={}", png.display()))
            .arg("--window-size=1280,2000")
            .arg(&url),
    );
    let dom = run_ok(
        chromium(&tmp.path().join("profile-dom"))
            .arg("--dump-dom")
            .arg(&url),
    );
    println!("chromium: screenshot and DOM in {:?}", started.elapsed());

    // The screenshot is not blank: a good share of non-white pixels, and
    // the chart colours (the full-size line's blue, the incremental
    // line's orange) are drawn.
    let (w, h, pixels) = decode_png(&png);
    assert_eq!((w, h), (1280, 2000));
    let non_white = pixels.iter().filter(|p| p.iter().any(|&c| c < 235)).count();
    let share = non_white as f64 / pixels.len() as f64;
    println!("screenshot: {w}x{h}, {:.1}% non-white", share * 100.0);
    assert!(share > 0.03, "the screenshot is nearly blank: {share}");
    let near = |p: &[u8; 3], c: [u8; 3]| p.iter().zip(c).all(|(&a, b)| a.abs_diff(b) < 40);
    for (name, colour) in [("blue", [31, 119, 180]), ("orange", [255, 127, 14])] {
        let n = pixels.iter().filter(|p| near(p, colour)).count();
        assert!(n > 200, "only {n} {name} pixels: the charts were not drawn");
    }

    // The page's text (the DOM after rendering) carries the numbers.
    assert!(dom.contains("highwater checkpoint report"));
    assert!(dom.matches("<svg").count() >= 5, "the charts and the chain");
    let checkpoints = json["checkpoints"].as_array().unwrap();
    assert!(checkpoints.len() >= 2, "{json}");
    for c in checkpoints {
        for key in ["stored_bytes", "own_stored_bytes", "logical_bytes"] {
            let n = c[key].as_u64().unwrap();
            assert!(
                dom.contains(&format!("{n} B")),
                "{key} {n} is not on the page"
            );
        }
        let duration = c["duration_ms"]
            .as_f64()
            .expect("the demo records durations");
        assert!(
            dom.contains(&format!("{duration:.1} ms")),
            "duration {duration:.1} ms is not on the page"
        );
        let id = c["id"].as_u64().unwrap();
        assert!(dom.contains(&format!("<td>{id}</td>")), "checkpoint {id}");
    }
    let newest = checkpoints.last().unwrap()["id"].as_u64().unwrap();
    assert!(
        dom.contains(&format!("checkpoint {newest}")),
        "the chain picture"
    );
    let dedup = json["storage"]["dedup_saved_bytes"].as_u64().unwrap();
    assert!(dom.contains(&format!("{dedup} B")), "dedup saving {dedup}");
    assert!(dom.contains("Recovery plans"));
    assert!(dom.contains("No cluster ledger"));
}
