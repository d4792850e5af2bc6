//! Collection drift: a worker collects (the same `python -m pytest -p rdist_worker` process
//! `rdist run` starts, here or through the host's agent, stopped right after collecting) and its
//! test ids are compared with this machine's. The comparison is pure and unit-tested.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Cell;
use crate::dispatch::worker::{Event, Worker, WorkerMsg, WorkerSpec};

/// How many differing ids the report shows on each side.
const SHOWN: usize = 3;

/// What a worker collected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collection {
    pub ids: Vec<String>,
    /// Collection errors: node id and the exception line (`ModuleNotFoundError: ...`).
    pub errors: Vec<(String, String)>,
}

/// Collects with the worker `spec` (its interpreter and place) and pytest's `args`.
///
/// # Errors
/// When pytest cannot start, exits before collecting, or takes longer than `limit`; the text
/// says why (with the last line pytest wrote on stderr).
pub fn collect(
    spec: &WorkerSpec,
    plugin_dir: &Path,
    args: &[String],
    limit: Duration,
) -> Result<Collection, String> {
    let (tx, rx) = mpsc::channel();
    let mut w = Worker::spawn(0, 1, spec, "rdist-check", plugin_dir, args, tx)
        .map_err(|e| format!("cannot start `{}`: {e}", spec.python))?;
    let deadline = Instant::now() + limit;
    let mut errors = Vec::new();
    let mut closed = false;
    let got = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Msg(_, WorkerMsg::CollectError { nodeid, longrepr })) => {
                errors.push((nodeid, exception_line(&longrepr)));
            }
            Ok(Event::Msg(_, WorkerMsg::Collected { ids, .. })) => {
                break Ok(Collection { ids, errors });
            }
            Ok(Event::Msg(..) | Event::Garbage(..)) => {}
            Ok(Event::Closed(_)) => {
                closed = true;
                let code = w.wait();
                let stderr = w.stderr_text();
                let last = stderr
                    .lines()
                    .rev()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("no output");
                let how = code.map_or("a signal".to_owned(), |c| format!("exit {c}"));
                break Err(format!("pytest stopped before collecting ({how}): {last}"));
            }
            Err(_) => {
                w.kill();
                break Err(format!(
                    "pytest did not finish collecting within {} s",
                    limit.as_secs()
                ));
            }
        }
    };
    if !closed {
        w.shutdown();
        // Wait for the exit so no worker outlives the check (its connection closes afterwards).
        let until = Instant::now() + Duration::from_secs(10);
        while let Ok(ev) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if matches!(ev, Event::Closed(_)) {
                break;
            }
        }
        w.kill();
        let _ = w.wait_until(Instant::now() + Duration::from_secs(5));
    }
    got
}

/// The exception line of a collection error's report (`E   ModuleNotFoundError: ...`).
fn exception_line(longrepr: &str) -> String {
    longrepr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("E "))
        .or_else(|| longrepr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The verdict on a worker's collection against this machine's: the same ids (ok), the same
/// ids in another order (warning), or other ids (error, with the first few on each side and
/// the worker's collection errors as details).
pub fn drift_cell(local: &Result<Collection, String>, remote: &Result<Collection, String>) -> Cell {
    let local = match local {
        Ok(l) => l,
        Err(e) => {
            return Cell::warn(
                format!("cannot compare: {e}"),
                "this machine's collection failed; run `pytest --collect-only` here",
            );
        }
    };
    let remote = match remote {
        Ok(r) => r,
        Err(e) => {
            return Cell::error(
                format!("not collected: {e}"),
                "run `python -m pytest --collect-only` in the worker directory there",
            );
        }
    };
    if local.ids == remote.ids {
        return Cell::ok(format!("{} tests, same", remote.ids.len()));
    }
    let (here, there): (BTreeSet<&String>, BTreeSet<&String>) =
        (local.ids.iter().collect(), remote.ids.iter().collect());
    if here == there {
        let k = local
            .ids
            .iter()
            .zip(&remote.ids)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Cell::warn(
            format!(
                "same {} tests, other order (from item {k})",
                local.ids.len()
            ),
            "file-system order differs; `--dist` modes that rely on order may group differently",
        );
    }
    let only_here: Vec<&String> = local.ids.iter().filter(|i| !there.contains(i)).collect();
    let only_there: Vec<&String> = remote.ids.iter().filter(|i| !here.contains(i)).collect();
    let mut cell = Cell::error(
        format!(
            "{} only here, {} only there",
            only_here.len(),
            only_there.len()
        ),
        "the worker collects other tests than this machine (below: first ids only here `-`, only there `+`); `rdist run` would stop with a collection mismatch",
    );
    cell.details.extend(
        only_here
            .iter()
            .take(SHOWN)
            .map(|i| format!("- {i}"))
            .chain(only_there.iter().take(SHOWN).map(|i| format!("+ {i}")))
            .chain(
                remote
                    .errors
                    .iter()
                    .filter(|e| !local.errors.contains(e))
                    .take(SHOWN)
                    .map(|(n, e)| format!("error there: {n}: {e}")),
            ),
    );
    cell
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Level;

    fn coll(ids: &[&str]) -> Result<Collection, String> {
        Ok(Collection {
            ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            errors: Vec::new(),
        })
    }

    #[test]
    fn same_ids_pass_other_order_warns_other_ids_fail_with_a_short_diff() {
        let here = coll(&["t/a.py::x", "t/b.py::y", "t/c.py::z"]);
        assert_eq!(drift_cell(&here, &here).level, Level::Ok);
        assert_eq!(drift_cell(&here, &here).value, "3 tests, same");
        let reordered = coll(&["t/a.py::x", "t/c.py::z", "t/b.py::y"]);
        let c = drift_cell(&here, &reordered);
        assert_eq!(c.level, Level::Warn);
        assert_eq!(c.value, "same 3 tests, other order (from item 1)");
        let mut there = coll(&["t/a.py::x", "t/c.py::z", "t/d.py::w"]).unwrap();
        there.errors.push((
            "t/b.py".into(),
            "ModuleNotFoundError: No module named 'yaml'".into(),
        ));
        let c = drift_cell(&here, &Ok(there));
        assert_eq!(c.level, Level::Error);
        assert_eq!(c.value, "1 only here, 1 only there");
        assert_eq!(
            c.details,
            [
                "- t/b.py::y",
                "+ t/d.py::w",
                "error there: t/b.py: ModuleNotFoundError: No module named 'yaml'"
            ]
        );
        let c = drift_cell(&here, &Err("pytest stopped".into()));
        assert_eq!(c.level, Level::Error);
        assert_eq!(drift_cell(&Err("x".into()), &here).level, Level::Warn);
    }

    #[test]
    fn the_exception_line_is_taken_from_the_report() {
        let text = "ImportError while importing test module 't/b.py'.\nTraceback:\n  x\nE   ModuleNotFoundError: No module named 'yaml'";
        assert_eq!(
            exception_line(text),
            "ModuleNotFoundError: No module named 'yaml'"
        );
        assert_eq!(exception_line("just text\n"), "just text");
    }
}
