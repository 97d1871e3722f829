//! `cargo xtask browser`: the browser test of `highwater report` (a step
//! of `cargo xtask ci`).
//!
//! The test (crates/highwater-cli/tests/browser.rs) renders a report in
//! headless Chromium, checks the screenshot is not blank and that the
//! page's text carries the store's numbers. It is `#[ignore]`d in the
//! default test run, which would otherwise need Chromium on every machine
//! that runs `cargo test`: installing Chromium takes longer than the
//! minute the test itself may cost. This runs it with the `full` features
//! of the main test build, so nothing is compiled again after `test`.

use crate::util::{Result, Workspace, run};

/// Makes sure Chromium is installed, then runs the ignored browser test.
pub fn run_browser_test(ws: &Workspace) -> Result {
    let chromium = crate::prereqs::ensure_chromium()?;
    let mut cmd = ws.cargo([
        "test",
        "--profile",
        "ci",
        "-p",
        "highwater-cli",
        "--test",
        "browser",
    ]);
    cmd.args(crate::testing::ALL_FEATURES)
        .args(["--", "--ignored", "--nocapture"])
        .env("HIGHWATER_CHROMIUM", chromium);
    run(&mut cmd)
}
