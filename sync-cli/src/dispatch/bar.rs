//! The progress bar of `rdist run` on a terminal: tests done out of the total, failures so far,
//! elapsed time. As cargo-nextest's: drawn on stderr only when stderr is a terminal and not in
//! CI, below the report; the report's lines go out above it while it is cleared (`suspend`),
//! and only whole lines, so a line of progress dots is never split by the bar.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where the bar goes, decided from the terminals and the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarMode {
    /// No bar: stderr is not a terminal, `CI` is set, or `--json` goes to a pipe.
    Off,
    /// A bar on stderr; the report goes elsewhere (stdout redirected to a file).
    Alone,
    /// A bar on the terminal the report also goes to.
    Shared,
}

impl BarMode {
    /// The mode for a run: `json` (the report then goes to stderr, results to stdout),
    /// whether stdout and stderr are terminals, and whether `CI` is set.
    pub fn decide(json: bool, stdout_tty: bool, stderr_tty: bool, ci: bool) -> BarMode {
        if !stderr_tty || ci || (json && !stdout_tty) {
            BarMode::Off
        } else if json || stdout_tty {
            BarMode::Shared
        } else {
            BarMode::Alone
        }
    }

    /// The mode for this process.
    pub fn detect(json: bool) -> BarMode {
        BarMode::decide(
            json,
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
            std::env::var_os("CI").is_some_and(|v| !v.is_empty()),
        )
    }
}

/// The bar itself.
pub struct RunBar {
    bar: ProgressBar,
    failed: usize,
}

impl RunBar {
    /// A bar on stderr.
    pub fn stderr() -> RunBar {
        RunBar::with_target(ProgressDrawTarget::stderr())
    }

    /// A bar drawn on `target` (tests draw into memory).
    pub fn with_target(target: ProgressDrawTarget) -> RunBar {
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} {msg}").expect("valid template"),
        );
        bar.set_message("collecting");
        bar.enable_steady_tick(Duration::from_millis(200));
        RunBar { bar, failed: 0 }
    }

    /// The total is known: the bar proper replaces the spinner.
    pub fn set_total(&mut self, total: usize) {
        self.bar.set_message("");
        self.bar.set_length(total as u64);
        self.bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} tests{msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
    }

    /// `done` tests have an outcome, `failed` of the outcomes are failures or errors.
    pub fn update(&mut self, done: usize, failed: usize) {
        if failed != self.failed {
            self.failed = failed;
            self.bar.set_message(format!(", {failed} failed"));
        }
        self.bar.set_position(done as u64);
    }

    /// Runs `f` with the bar cleared, then draws it again.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Clears the bar for good.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_only_on_a_terminal_outside_ci_and_not_for_piped_json() {
        use BarMode::*;
        // (json, stdout tty, stderr tty, ci) -> mode
        for (json, out, err, ci, want) in [
            (false, true, true, false, Shared),
            (false, false, true, false, Alone),
            (false, true, false, false, Off),
            (false, true, true, true, Off),
            (true, true, true, false, Shared),
            (true, false, true, false, Off),
            (true, false, false, false, Off),
        ] {
            assert_eq!(
                BarMode::decide(json, out, err, ci),
                want,
                "json {json}, stdout tty {out}, stderr tty {err}, ci {ci}"
            );
        }
    }
}
