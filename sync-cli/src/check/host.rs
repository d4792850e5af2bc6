//! A host's probe report turned into table cells: agent version, system, Python (against this
//! machine's), destination, disk, case sensitivity and clock. Shared by `rdist check` and the
//! pre-flight of `rdist run`.

use std::collections::BTreeSet;
use std::time::Duration;

use sync_core::proto::ProbeReport;

use super::{Cell, PROBE, PyFacts, bytes, clock_cell, python_rows};

/// A probe's answer with what the controller measured around it.
pub struct Answer {
    pub report: ProbeReport,
    pub agent_version: String,
    /// This machine's clock when the answer arrived, nanoseconds since the epoch.
    pub received_ns: i64,
}

/// The interpreter of this machine (`python3`, or `RDIST_LOCAL_PYTHON`).
pub fn local_python() -> String {
    std::env::var("RDIST_LOCAL_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs the probe script with this machine's interpreter.
///
/// # Errors
/// The interpreter cannot run or the script fails; the text says which.
pub fn local_facts() -> Result<PyFacts, String> {
    let python = local_python();
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(PROBE)
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{python}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unexpected probe output: {e}"))
}

/// The Python facts in a probe report.
///
/// # Errors
/// Why the script did not run there, or did not answer as expected.
pub fn remote_facts(rep: &ProbeReport) -> Result<PyFacts, String> {
    match (&rep.python, &rep.python_error) {
        (Some(out), _) => {
            serde_json::from_str(out).map_err(|e| format!("unexpected probe output: {e}"))
        }
        (None, Some(e)) => Err(e.clone()),
        (None, None) => Err("no answer".to_owned()),
    }
}

/// Whether the host lacks a distribution this machine has (only then do the code's imports
/// matter, and reading every `.py` file is worth it).
pub fn lacks_a_distribution(
    local: &Result<PyFacts, String>,
    remote: &Result<PyFacts, String>,
) -> bool {
    match (local, remote) {
        (Ok(l), Ok(r)) => l.dists.keys().any(|d| !r.dists.contains_key(d)),
        _ => false,
    }
}

/// Python rows, or one warning when this machine's interpreter cannot be compared with.
pub fn python_cells(
    local: &Result<PyFacts, String>,
    remote: &Result<PyFacts, String>,
    imported: &BTreeSet<String>,
) -> Vec<(&'static str, Cell)> {
    match local {
        Ok(l) => python_rows(l, remote.as_ref().map_err(String::as_str), imported),
        Err(e) => vec![(
            "python",
            Cell::warn(
                format!("cannot compare: {e}"),
                "fix the local interpreter first",
            ),
        )],
    }
}

/// Every row a probe answers. `need` is the space the tree needs on the destination (`None`
/// after a sync, when it is already there: the free space is then only shown).
pub fn host_cells(
    a: &Answer,
    local: &Result<PyFacts, String>,
    imported: &BTreeSet<String>,
    need: Option<u64>,
) -> Vec<(&'static str, Cell)> {
    let rep = &a.report;
    let mut cells = vec![
        (
            "rdist",
            if a.agent_version == env!("CARGO_PKG_VERSION") {
                Cell::ok(a.agent_version.clone())
            } else {
                Cell::warn(
                    a.agent_version.clone(),
                    "a different rdist version runs there",
                )
            },
        ),
        (
            "system",
            Cell::ok(format!("{} {} {}", rep.os, rep.arch, rep.hostname)),
        ),
    ];
    cells.extend(python_cells(local, &remote_facts(rep), imported));
    cells.push((
        "destination",
        match &rep.not_writable {
            Some(why) => Cell::error(
                why.clone(),
                "choose a writable `chdir=` or fix the permissions",
            ),
            None => Cell::ok(rep.dest.clone().unwrap_or_else(|| "in place".to_owned())),
        },
    ));
    cells.push(("disk", disk_cell(rep.disk_free, need)));
    if rep.dest.is_some() {
        cells.push((
            "case-sensitive",
            match rep.case_sensitive {
                Some(true) => Cell::ok("yes"),
                Some(false) => {
                    Cell::warn("no", "names that differ only in case will collide there")
                }
                None => Cell::warn("unknown", "the destination could not be written"),
            },
        ));
    }
    // The agent reads its clock after the Python script, just before answering: the answer's
    // arrival is within one transit of it (the middle of the round trip would be off by the
    // script's run time).
    let skew = rep.time_ns - a.received_ns;
    cells.push((
        "clock",
        clock_cell(Duration::from_nanos(skew.unsigned_abs()), skew > 0),
    ));
    cells
}

/// Free space against what the tree needs (with a tenth to spare).
pub fn disk_cell(free: Option<u64>, need: Option<u64>) -> Cell {
    match (free, need) {
        (Some(free), Some(need)) if free < need + need / 10 => Cell::error(
            format!("{} free, the tree needs {}", bytes(free), bytes(need)),
            "free space on the worker or choose another `chdir=`",
        ),
        (Some(free), _) => Cell::ok(format!("{} free", bytes(free))),
        (None, _) => Cell::warn("unknown", "free space could not be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Level;

    #[test]
    fn disk_needs_the_tree_and_a_tenth() {
        assert_eq!(disk_cell(Some(1000), Some(1000)).level, Level::Error);
        assert_eq!(
            disk_cell(Some(1000), Some(1000)).value,
            "1000 B free, the tree needs 1000 B"
        );
        assert_eq!(disk_cell(Some(1100), Some(1000)).level, Level::Ok);
        assert_eq!(disk_cell(Some(0), None).level, Level::Ok);
        assert_eq!(disk_cell(None, Some(1)).level, Level::Warn);
    }
}
