//! `cargo xtask browser`: the browser test of `highwater report` (a step
//! of `cargo xtask ci`).
//!
//! The test (crates/highwater-cli/tests/browser.rs) renders a report in
//! headless Chromium, checks the screenshot is not blank and that the
//! page's text carries the store's numbers. Its test target has `test =
//! false` (crates/highwater-cli/Cargo.toml), so the default test run
//! leaves it out; otherwise every machine that runs `cargo test` would
//! need Chromium, and installing it takes longer than the minute the test
//! itself may cost. This runs it by name, with the `full` features of the
//! main test build, so nothing is compiled again after `test`.

use crate::util::{Result, Workspace, run};

/// Makes sure Chromium is installed, then runs the browser test.
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
        .args(["--", "--nocapture"])
        .env("HIGHWATER_CHROMIUM", chromium);
    run(&mut cmd)
}
