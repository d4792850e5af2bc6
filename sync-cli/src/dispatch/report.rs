//! Results as pytest prints them: a progress character per test (or a `[gwN] PASSED id` line
//! with `-v`), failure sections headed with the worker's platform and interpreter, a short
//! summary naming worker and platform, and pytest's closing line. Everything goes to stdout,
//! like pytest's own report.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use super::bar::RunBar;
use super::worker::TestReport;

/// What a worker runs on, from its collection message.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    pub platform: String,
    pub python: String,
    pub implementation: String,
    pub executable: String,
}

/// The outcome categories pytest counts, in its order.
pub const CATEGORIES: [&str; 6] = ["failed", "passed", "skipped", "xfailed", "xpassed", "error"];

/// One finished test, for summaries and `--json`.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub worker: usize,
    pub nodeid: String,
    pub category: &'static str,
    pub duration: f64,
    pub message: String,
    /// The full failure text (longrepr), for failures and errors.
    pub text: String,
}

struct Failure {
    worker: usize,
    nodeid: String,
    when: String,
    text: String,
    sections: Vec<(String, String)>,
}

/// Collects reports and prints them.
pub struct Reporter {
    /// Show a per-worker (per-platform) table of outcomes: `--dist each`.
    pub per_worker: bool,
    verbose: u8,
    width: usize,
    col: usize,
    total: usize,
    done: usize,
    pub platforms: BTreeMap<usize, Platform>,
    pub outcomes: Vec<Outcome>,
    failures: Vec<Failure>,
    /// Warnings as pytest groups them: each text with the node ids that raised it, in order.
    warnings: Vec<(String, Vec<String>)>,
    /// How many warnings (pytest counts each occurrence).
    warned: usize,
    /// Collection and configuration warnings already counted: every worker collects, but
    /// pytest would have seen each once.
    seen_early: std::collections::HashSet<(String, String)>,
    /// Failed and errored outcomes so far (for `--maxfail`).
    bad: usize,
    /// Output not yet written to `out`: it goes out when the dispatcher has caught up, or
    /// every [`FLUSH_EVERY`] (with the bar cleared meanwhile, if there is one).
    buf: Vec<u8>,
    out: Box<dyn Write>,
    flushed: Instant,
    bar: Option<RunBar>,
    /// The bar shares the report's terminal: a line of progress dots is held back until it is
    /// complete, so that the bar never has to be drawn after half a line.
    hold: bool,
    held: String,
}

/// The longest the progress output waits in the buffer while results keep coming.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

fn plural(n: usize, word: &str) -> String {
    match (n, word) {
        (1, w) => format!("1 {w}"),
        (n, "error") => format!("{n} errors"),
        (n, w) => format!("{n} {w}"),
    }
}

/// The last `E   ...` line of a failure text, without the `E`.
fn last_e_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| l.starts_with("E "))
        .map(|l| l[1..].trim().to_owned())
        .unwrap_or_default()
}

/// A line of `ch` around `title`, as pytest draws section headers.
pub fn rule(ch: char, title: &str, width: usize) -> String {
    // pytest's `TerminalWriter.sep`: at least one fill character on each side, however long
    // the title, and one more on the right when it fits.
    let mut s = if title.is_empty() {
        ch.to_string().repeat(width)
    } else {
        let n = (width.saturating_sub(title.chars().count() + 2) / 2).max(1);
        let fill = ch.to_string().repeat(n);
        format!("{fill} {title} {fill}")
    };
    if s.chars().count() < width {
        s.push(ch);
    }
    s
}

impl Reporter {
    pub fn new(verbose: u8, total: usize, out: Box<dyn Write>) -> Reporter {
        Reporter {
            per_worker: false,
            verbose,
            width: 80,
            col: 0,
            total,
            done: 0,
            platforms: BTreeMap::new(),
            outcomes: Vec::new(),
            failures: Vec::new(),
            warnings: Vec::new(),
            warned: 0,
            seen_early: std::collections::HashSet::new(),
            bad: 0,
            buf: Vec::with_capacity(16 << 10),
            out,
            flushed: Instant::now(),
            bar: None,
            hold: false,
            held: String::new(),
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            let (buf, out) = (&mut self.buf, &mut self.out);
            let mut write = || {
                let _ = out.write_all(buf).and_then(|()| out.flush());
            };
            match &self.bar {
                Some(bar) if self.hold => bar.suspend(write),
                _ => write(),
            }
            self.buf.clear();
        }
        self.flushed = Instant::now();
    }

    /// Failed and errored outcomes so far.
    pub fn bad(&self) -> usize {
        self.bad
    }

    /// Shows `bar` below the report; `shared`: on the terminal the report goes to.
    pub fn set_bar(&mut self, bar: RunBar, shared: bool) {
        self.bar = Some(bar);
        self.hold = shared;
    }

    /// How many test outcomes to expect, for the percentages (and the bar).
    pub fn set_total(&mut self, total: usize) {
        self.total = total;
        if let Some(bar) = &mut self.bar {
            bar.set_total(total);
        }
    }

    /// The header line for worker `w`'s sections: `[gw0] linux -- Python 3.11.7 /usr/bin/python3`.
    pub fn worker_line(&self, w: usize) -> String {
        match self.platforms.get(&w) {
            Some(p) => format!(
                "[gw{w}] {} -- Python {} {}",
                p.platform, p.python, p.executable
            ),
            None => format!("[gw{w}]"),
        }
    }

    fn category(r: &TestReport) -> Option<&'static str> {
        match (r.when.as_str(), r.outcome.as_str(), r.wasxfail.is_some()) {
            ("call", "passed", false) => Some("passed"),
            ("call", "passed", true) => Some("xpassed"),
            ("call", "failed", _) => Some("failed"),
            (_, "skipped", true) => Some("xfailed"),
            (_, "skipped", false) => Some("skipped"),
            (_, "failed", _) => Some("error"),
            _ => None,
        }
    }

    /// Takes one phase report from worker `w`.
    pub fn report(&mut self, w: usize, r: &TestReport) {
        let Some(cat) = Self::category(r) else { return };
        if matches!(cat, "failed" | "error") {
            self.bad += 1;
            self.failures.push(Failure {
                worker: w,
                nodeid: r.nodeid.clone(),
                when: r.when.clone(),
                text: r.longrepr.clone(),
                sections: r.sections.clone(),
            });
        }
        let message = match cat {
            "skipped" => r.skip_reason.clone().unwrap_or_default(),
            "xfailed" | "xpassed" => r.wasxfail.clone().unwrap_or_default(),
            _ => r
                .crash_message
                .clone()
                .unwrap_or_else(|| last_e_line(&r.longrepr)),
        };
        // An error in teardown after a passed call is a second outcome for the same test, as in pytest.
        self.outcomes.push(Outcome {
            worker: w,
            nodeid: r.nodeid.clone(),
            category: cat,
            duration: r.duration,
            message,
            text: if matches!(cat, "failed" | "error") {
                r.longrepr.clone()
            } else {
                String::new()
            },
        });
        // Teardown errors are a second outcome of a test already counted.
        if r.when != "teardown" {
            self.done += 1;
        }
        self.progress(w, cat, &r.nodeid);
    }

    /// Records a collection error (once per node id, however many workers report it).
    pub fn collect_error(&mut self, w: usize, nodeid: &str, text: &str) {
        if self
            .outcomes
            .iter()
            .any(|o| o.category == "error" && o.nodeid == nodeid)
        {
            return;
        }
        self.outcomes.push(Outcome {
            worker: w,
            nodeid: nodeid.to_owned(),
            category: "error",
            duration: 0.0,
            message: last_e_line(text),
            text: text.to_owned(),
        });
    }

    /// Records a test whose worker died while running it.
    pub fn crashed(&mut self, w: usize, nodeid: &str, why: &str) {
        self.failures.push(Failure {
            worker: w,
            nodeid: nodeid.to_owned(),
            when: "call".to_owned(),
            text: why.to_owned(),
            sections: Vec::new(),
        });
        self.bad += 1;
        self.outcomes.push(Outcome {
            worker: w,
            nodeid: nodeid.to_owned(),
            category: "failed",
            duration: 0.0,
            message: "worker crashed".to_owned(),
            text: why.to_owned(),
        });
        self.done += 1;
        self.progress(w, "failed", nodeid);
    }

    fn progress(&mut self, w: usize, cat: &str, nodeid: &str) {
        if let Some(bar) = &mut self.bar {
            bar.update(self.done, self.bad);
        }
        let pct = (self.done * 100)
            .checked_div(self.total)
            .unwrap_or(100)
            .min(100);
        if self.verbose > 0 {
            let word = cat.to_uppercase();
            let word = if word == "ERROR" {
                "ERROR".to_owned()
            } else {
                word
            };
            let _ = writeln!(self.buf, "[gw{w}] [{pct:>3}%] {word} {nodeid}");
        } else {
            self.dot(cat, pct);
        }
        if self.flushed.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }

    fn dot(&mut self, cat: &str, pct: usize) {
        let ch = match cat {
            "passed" => '.',
            "failed" => 'F',
            "error" => 'E',
            "skipped" => 's',
            "xfailed" => 'x',
            _ => 'X',
        };
        if self.hold {
            self.held.push(ch);
        } else {
            let _ = write!(self.buf, "{ch}");
        }
        self.col += 1;
        if self.col >= self.width - 7 || (self.done >= self.total && cat != "error") {
            let pad = (self.width - 7).saturating_sub(self.col);
            self.release_held();
            let _ = writeln!(self.buf, "{}[{pct:>3}%]", " ".repeat(pad));
            self.col = 0;
        }
    }

    /// Moves a held-back line of dots into the output.
    fn release_held(&mut self) {
        if !self.held.is_empty() {
            self.buf.extend_from_slice(self.held.as_bytes());
            self.held.clear();
        }
    }

    /// Prints text as is (headers, notes).
    pub fn line(&mut self, text: &str) {
        if self.col > 0 {
            self.release_held();
            let _ = writeln!(self.buf);
            self.col = 0;
        }
        let _ = writeln!(self.buf, "{text}");
    }

    /// Counts per category.
    /// A warning from a worker; ones raised while collecting or configuring count once, as in
    /// a single pytest process.
    pub fn warning(&mut self, when: &str, nodeid: &str, text: &str) {
        if when != "runtest" && !self.seen_early.insert((nodeid.to_owned(), text.to_owned())) {
            return;
        }
        self.warned += 1;
        match self.warnings.iter_mut().find(|(t, _)| t == text) {
            Some((_, ids)) => ids.push(nodeid.to_owned()),
            None => self
                .warnings
                .push((text.to_owned(), vec![nodeid.to_owned()])),
        }
    }

    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut c = BTreeMap::new();
        for o in &self.outcomes {
            *c.entry(o.category).or_insert(0) += 1;
        }
        c
    }

    /// Failures, the short summary, and pytest's closing line.
    pub fn finish(&mut self, elapsed: Duration, interrupted: Option<&str>) {
        // What is buffered goes out above the bar, which then goes for good.
        self.flush();
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        if self.col > 0 {
            self.release_held();
            let _ = writeln!(self.buf);
            self.col = 0;
        }
        let width = self.width;
        let mut errors: Vec<&Failure> = self.failures.iter().filter(|f| f.when != "call").collect();
        let failures: Vec<&Failure> = self.failures.iter().filter(|f| f.when == "call").collect();
        let mut text = String::new();
        for (title, list) in [("ERRORS", &mut errors), ("FAILURES", &mut failures.clone())] {
            if list.is_empty() {
                continue;
            }
            text.push_str(&rule('=', title, width));
            text.push('\n');
            for f in list.iter() {
                let name = f.nodeid.rsplit("::").next().unwrap_or(&f.nodeid);
                let head = match f.when.as_str() {
                    "call" => name.to_owned(),
                    w => format!("ERROR at {w} of {name}"),
                };
                text.push_str(&rule('_', &head, width));
                text.push('\n');
                text.push_str(&self.worker_line(f.worker));
                text.push('\n');
                text.push_str(f.text.trim_end());
                text.push('\n');
                for (sec, body) in &f.sections {
                    text.push_str(&rule('-', sec, width));
                    text.push('\n');
                    text.push_str(body.trim_end());
                    text.push('\n');
                }
            }
        }
        if !self.warnings.is_empty() {
            text.push_str(&rule('=', "warnings summary", width));
            text.push('\n');
            for (warning, ids) in &self.warnings {
                for id in ids {
                    text.push_str(if id.is_empty() { "<config>" } else { id });
                    text.push('\n');
                }
                for line in warning.trim_end().lines() {
                    text.push_str("  ");
                    text.push_str(line);
                    text.push('\n');
                }
                text.push('\n');
            }
            text.push_str(
                "-- Docs: https://docs.pytest.org/en/stable/how-to/capture-warnings.html\n",
            );
        }
        let summary: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|o| matches!(o.category, "failed" | "error"))
            .collect();
        if !summary.is_empty() {
            text.push_str(&rule('=', "short test summary info", width));
            text.push('\n');
            for o in summary {
                let word = if o.category == "error" {
                    "ERROR"
                } else {
                    "FAILED"
                };
                let plat = self
                    .platforms
                    .get(&o.worker)
                    .map(|p| p.platform.as_str())
                    .unwrap_or("");
                let msg = if o.message.is_empty() {
                    String::new()
                } else {
                    format!(" - {}", o.message)
                };
                text.push_str(&format!(
                    "[gw{} {plat}] {word} {}{msg}\n",
                    o.worker, o.nodeid
                ));
            }
        }
        if self.per_worker && !self.platforms.is_empty() {
            text.push_str(&rule('=', "outcomes per worker", width));
            text.push('\n');
            for (w, p) in &self.platforms {
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for o in self.outcomes.iter().filter(|o| o.worker == *w) {
                    *counts.entry(o.category).or_insert(0) += 1;
                }
                let parts: Vec<String> = CATEGORIES
                    .iter()
                    .filter_map(|c| counts.get(c).map(|&n| plural(n, c)))
                    .collect();
                text.push_str(&format!(
                    "gw{w}  {:<8} {} {:<8} {}\n",
                    p.platform,
                    p.implementation,
                    p.python,
                    if parts.is_empty() {
                        "nothing ran".to_owned()
                    } else {
                        parts.join(", ")
                    }
                ));
            }
        }
        if let Some(why) = interrupted {
            text.push_str(&rule('!', why, width));
            text.push('\n');
        }
        let counts = self.counts();
        let mut parts: Vec<String> = CATEGORIES
            .iter()
            .filter_map(|c| counts.get(c).map(|&n| plural(n, c)))
            .collect();
        // pytest's order: ... xfailed, xpassed, warnings, errors.
        if self.warned > 0 {
            let at = parts.len() - usize::from(counts.contains_key("error"));
            let word = if self.warned == 1 {
                "warning"
            } else {
                "warnings"
            };
            parts.insert(at, format!("{} {word}", self.warned));
        }
        if parts.is_empty() {
            parts.push("no tests ran".to_owned());
        }
        let secs = elapsed.as_secs_f64();
        let time = if secs >= 60.0 {
            let t = secs as u64;
            format!("{secs:.2}s ({}:{:02}:{:02})", t / 3600, t / 60 % 60, t % 60)
        } else {
            format!("{secs:.2}s")
        };
        text.push_str(&rule(
            '=',
            &format!("{} in {time}", parts.join(", ")),
            width,
        ));
        text.push('\n');
        self.buf.extend_from_slice(text.as_bytes());
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_look_like_pytest() {
        assert_eq!(
            rule('=', "1 failed, 2 passed in 0.10s", 40),
            "===== 1 failed, 2 passed in 0.10s ======"
        );
        assert_eq!(rule('=', "", 5), "=====");
        // Wider than the terminal: one `=` on each side, as pytest's `sep` writes it.
        assert_eq!(rule('=', "a long title", 10), "= a long title =");
        assert_eq!(rule('=', "12345", 10), "= 12345 ==");
    }

    use std::sync::{Arc, Mutex};

    use indicatif::{ProgressDrawTarget, TermLike};

    /// What reached the terminal, in order: report output, and what the bar drew.
    #[derive(Debug, Clone, PartialEq)]
    enum Ev {
        Out(String),
        Bar(String),
    }

    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<Ev>>>);

    impl Screen {
        fn events(&self) -> Vec<Ev> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Write for Screen {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let text = String::from_utf8_lossy(b).into_owned();
            self.0.lock().unwrap().push(Ev::Out(text));
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(Ev::Bar(s.to_owned()));
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(Ev::Bar(s.to_owned()));
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn report(nodeid: &str, outcome: &str) -> TestReport {
        TestReport {
            nodeid: nodeid.to_owned(),
            when: "call".to_owned(),
            outcome: outcome.to_owned(),
            duration: 0.01,
            longrepr: if outcome == "failed" {
                "E   assert 0".to_owned()
            } else {
                String::new()
            },
            sections: Vec::new(),
            skip_reason: None,
            wasxfail: None,
            crash_message: None,
        }
    }

    /// Feeds a run of `n` tests (the third fails) to a reporter, flushing after each.
    fn feed(rep: &mut Reporter, n: usize) {
        rep.line("header");
        rep.set_total(n);
        for i in 0..n {
            let outcome = if i == 2 { "failed" } else { "passed" };
            rep.report(i % 2, &report(&format!("t.py::test_{i}"), outcome));
            rep.flush();
        }
        rep.finish(Duration::from_millis(1500), None);
    }

    #[test]
    fn warnings_are_summarised_grouped_and_counted_before_errors() {
        let screen = Screen::default();
        let mut rep = Reporter::new(0, 0, Box::new(screen.clone()));
        rep.set_total(2);
        rep.report(0, &report("t.py::test_a", "passed"));
        let mut err = report("t.py::test_b", "failed");
        err.when = "setup".to_owned();
        rep.report(1, &err);
        let w = "t.py:3: UserWarning: careful\n  warnings.warn(UserWarning('careful'))\n";
        rep.warning("runtest", "t.py::test_a", w);
        rep.warning("runtest", "t.py::test_b", w);
        // Both workers collect: a collection warning counts once.
        let c = "conftest.py:1: DeprecationWarning: old\n";
        rep.warning("collect", "", c);
        rep.warning("collect", "", c);
        rep.finish(Duration::from_millis(10), None);
        let out: String = screen
            .events()
            .iter()
            .filter_map(|e| match e {
                Ev::Out(t) => Some(t.clone()),
                Ev::Bar(_) => None,
            })
            .collect();
        let section = out
            .split_once("warnings summary")
            .map(|(_, rest)| rest)
            .expect("a warnings summary");
        assert!(
            section.contains(
                "\nt.py::test_a\nt.py::test_b\n  t.py:3: UserWarning: careful\n    \
                 warnings.warn(UserWarning('careful'))\n\n<config>\n  conftest.py:1: \
                 DeprecationWarning: old\n\n-- Docs: "
            ),
            "{out}"
        );
        assert!(
            out.contains("1 passed, 3 warnings, 1 error in 0.01s"),
            "{out}"
        );
        assert!(out.find("warnings summary") < out.find("short test summary info"));
    }

    #[test]
    fn bar_on_the_report_terminal_sees_only_whole_lines_and_changes_no_byte() {
        // 100 tests: one full line of dots and a partial one.
        let plain = Screen::default();
        let mut rep = Reporter::new(0, 0, Box::new(plain.clone()));
        feed(&mut rep, 100);
        let text = |evs: &[Ev]| -> String {
            evs.iter()
                .filter_map(|e| match e {
                    Ev::Out(t) => Some(t.as_str()),
                    Ev::Bar(_) => None,
                })
                .collect()
        };
        let expected = text(&plain.events());
        assert!(expected.contains("F....."), "{expected}");

        let screen = Screen::default();
        let mut rep = Reporter::new(0, 0, Box::new(screen.clone()));
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        rep.set_bar(super::super::bar::RunBar::with_target(target), true);
        feed(&mut rep, 100);
        let events = screen.events();
        assert_eq!(text(&events), expected, "the bar changed the report");
        for e in &events {
            if let Ev::Out(t) = e {
                assert!(
                    t.ends_with('\n'),
                    "half a line written under the bar: {t:?}"
                );
            }
        }
        let drawn: Vec<&String> = events
            .iter()
            .filter_map(|e| match e {
                Ev::Bar(t) => Some(t),
                Ev::Out(_) => None,
            })
            .collect();
        assert!(
            drawn.iter().any(|t| t.contains("/100 tests, 1 failed")),
            "{drawn:?}"
        );
    }

    #[test]
    fn plurals_follow_pytest() {
        assert_eq!(plural(1, "error"), "1 error");
        assert_eq!(plural(2, "error"), "2 errors");
        assert_eq!(plural(3, "passed"), "3 passed");
    }
}
