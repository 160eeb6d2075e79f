//! Progress bars (indicatif) on stderr: every bar revive draws is built here.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps: spinner, `what`, the bar, the count and the time so far.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// `bar`, drawn only when `show` and stderr is a terminal (hidden otherwise).
pub fn terminal_bar(len: u64, what: &str, show: bool) -> ProgressBar {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = bar(len, what);
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar
}

/// The bar of a sequential edit run: edit i of `len`, the elapsed time and a message of what
/// it is doing; hidden unless `show`.
pub fn edits(len: u64, show: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    bar.set_style(ProgressStyle::with_template("{spinner} edit {pos}/{len} [{elapsed_precise}] {wide_msg}").expect("valid template"));
    bar
}

/// The bar of an editing session: batch i of `len`, elapsed time, ETA and a message (edits/s,
/// the last batch's efficacy, what the current batch is doing); hidden unless `show` and
/// stderr is a terminal.
pub fn batches(len: u64, what: &str, show: bool) -> ProgressBar {
    let bar = terminal_bar(len, what, show);
    bar.set_style(ProgressStyle::with_template(&format!("{{spinner}} {what} {{pos}}/{{len}} [{{elapsed_precise}}, ETA {{eta}}] {{wide_msg}}")).expect("valid template"));
    bar
}
