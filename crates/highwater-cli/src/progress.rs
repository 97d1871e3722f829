//! Progress bars of the long-running commands (`recover`, `compact`,
//! `gc`): drawn on stderr with `indicatif` only when stderr is a terminal
//! (never into a pipe, a file or a CI log) and `--json` is off, coloured
//! unless `NO_COLOR` is set (<https://no-color.org>).

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether a bar is drawn at all: stderr is a terminal.
pub fn visible() -> bool {
    std::io::stderr().is_terminal()
}

/// True when `NO_COLOR` is set to anything but the empty string.
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// The template of a bar counting `bytes` or items, coloured or not.
fn template(bytes: bool, color: bool) -> String {
    let bar = if color {
        "{bar:40.cyan/blue}"
    } else {
        "{bar:40}"
    };
    if bytes {
        format!(
            "{{spinner}} {{msg:>14}} [{bar}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, {{eta}})"
        )
    } else {
        format!("{{spinner}} {{msg:>14}} [{bar}] {{pos}}/{{len}} ({{elapsed}})")
    }
}

/// A bar of `total` steps (bytes when `bytes`), hidden when `hide` (for
/// example `--json`) or when stderr is not a terminal.
pub fn bar(total: u64, hide: bool, bytes: bool) -> ProgressBar {
    let target = if hide || !visible() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let pb = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(&template(bytes, !no_color())) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_carry_colour_only_when_asked() {
        for bytes in [false, true] {
            for color in [false, true] {
                let t = template(bytes, color);
                assert!(ProgressStyle::with_template(&t).is_ok(), "{t}");
                assert_eq!(t.contains(".cyan"), color, "{t}");
            }
        }
    }

    #[test]
    fn a_bar_asked_to_hide_is_hidden() {
        assert!(bar(10, true, false).is_hidden());
    }
}
