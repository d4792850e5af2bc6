//! `rdist check`: pre-flight checks before any test runs. Every worker host is asked (over the
//! same transports as `rdist sync`, concurrently) about its system, clock, destination and Python;
//! the answers are compared with this machine's and with the project tree, and shown as one
//! table: a row per check, a column per host.

pub mod collect;
pub mod host;
pub mod layout;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

/// The Python probe, run on this machine and sent to every host.
pub const PROBE: &str = include_str!("probe.py");

/// What the probe reports about an interpreter.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PyFacts {
    pub python: String,
    pub implementation: String,
    pub executable: String,
    #[serde(default)]
    pub dists: BTreeMap<String, String>,
    #[serde(default)]
    pub plugins: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub modules: BTreeMap<String, Vec<String>>,
    pub pytest: Option<String>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Error,
}

impl Level {
    pub fn mark(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Error => "FAIL",
        }
    }
}

/// One cell of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub level: Level,
    pub value: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Lines shown under the hint (a short diff).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

impl Cell {
    pub fn ok(value: impl Into<String>) -> Cell {
        Cell {
            level: Level::Ok,
            value: value.into(),
            hint: None,
            details: Vec::new(),
        }
    }
    pub fn warn(value: impl Into<String>, hint: impl Into<String>) -> Cell {
        Cell {
            level: Level::Warn,
            value: value.into(),
            hint: Some(hint.into()),
            details: Vec::new(),
        }
    }
    pub fn error(value: impl Into<String>, hint: impl Into<String>) -> Cell {
        Cell {
            level: Level::Error,
            value: value.into(),
            hint: Some(hint.into()),
            details: Vec::new(),
        }
    }
}

/// Python facts of a host against this machine's: interpreter, pytest, plugins, packages.
/// `imported` are the distributions the synced code imports (missing ones are errors).
pub fn python_rows(
    local: &PyFacts,
    remote: Result<&PyFacts, &str>,
    imported: &BTreeSet<String>,
) -> Vec<(&'static str, Cell)> {
    let remote = match remote {
        Ok(r) => r,
        Err(e) => {
            return vec![(
                "python",
                Cell::error(
                    format!("not usable: {e}"),
                    "install it there, or pick another with `python=` in the spec",
                ),
            )];
        }
    };
    let mut rows = Vec::new();
    let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    let py = format!(
        "{} {} {}",
        remote.implementation, remote.python, remote.executable
    );
    rows.push((
        "python",
        if minor(&remote.python) != minor(&local.python)
            || remote.implementation != local.implementation
        {
            Cell::warn(
                py,
                format!(
                    "this machine runs {} {}",
                    local.implementation, local.python
                ),
            )
        } else {
            Cell::ok(py)
        },
    ));
    rows.push((
        "pytest",
        match (&remote.pytest, &local.pytest) {
            (None, _) => Cell::error(
                "missing",
                format!("install pytest for `{}`", remote.executable),
            ),
            (Some(r), Some(l)) if r != l => {
                Cell::warn(r.clone(), format!("this machine has pytest {l}"))
            }
            (Some(r), _) => Cell::ok(r.clone()),
        },
    ));
    let missing: Vec<&String> = local
        .plugins
        .keys()
        .filter(|p| !remote.plugins.contains_key(*p))
        .collect();
    let differ: Vec<String> = local
        .plugins
        .iter()
        .filter_map(|(p, v)| match (remote.plugins.get(p), v) {
            (Some(Some(rv)), Some(lv)) if rv != lv => Some(format!("{p} {rv} (here {lv})")),
            _ => None,
        })
        .collect();
    rows.push((
        "pytest plugins",
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            Cell::error(
                format!("missing: {}", names.join(", ")),
                "install the same pytest plugins there",
            )
        } else if !differ.is_empty() {
            Cell::warn(differ.join(", "), "versions differ from this machine's")
        } else {
            Cell::ok(format!("{} same", remote.plugins.len()))
        },
    ));
    let mut missing_needed = Vec::new();
    let mut missing_other = Vec::new();
    let mut other_version = Vec::new();
    for (name, v) in &local.dists {
        match remote.dists.get(name) {
            None if imported.contains(name) => missing_needed.push(name.clone()),
            None => missing_other.push(format!("missing: {name} {v}")),
            Some(rv) if rv != v => other_version.push(format!("{name} {rv} (here {v})")),
            Some(_) => {}
        }
    }
    let extra = remote
        .dists
        .keys()
        .filter(|k| !local.dists.contains_key(*k))
        .count();
    rows.push((
        "packages",
        if !missing_needed.is_empty() {
            Cell::error(
                format!(
                    "missing, imported by the code: {}",
                    missing_needed.join(", ")
                ),
                "install the project's dependencies there (the same requirements file)",
            )
        } else if missing_other.len() + other_version.len() > 0 {
            let mut cell = Cell::warn(
                format!(
                    "{} missing, {} other version, {extra} extra",
                    missing_other.len(),
                    other_version.len()
                ),
                "the environments differ (below: the first differences)",
            );
            cell.details = other_version
                .into_iter()
                .chain(missing_other)
                .take(5)
                .collect();
            cell
        } else {
            Cell::ok(format!("{} same, {extra} extra", local.dists.len()))
        },
    ));
    rows
}

/// Clock skew, allowing for half the round trip.
pub fn clock_cell(skew: Duration, ahead: bool) -> Cell {
    let text = format!(
        "{} {:.2} s",
        if ahead { "ahead" } else { "behind" },
        skew.as_secs_f64()
    );
    if skew > Duration::from_secs(2) {
        Cell::warn(
            text,
            "synced mtimes will look like the future or the past there; run an NTP client",
        )
    } else {
        Cell::ok(text)
    }
}

/// Human-readable bytes.
pub fn bytes(n: u64) -> String {
    crate::output::human_bytes(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pytest: Option<&str>, dists: &[(&str, &str)], plugins: &[&str]) -> PyFacts {
        PyFacts {
            python: "3.11.7".into(),
            implementation: "CPython".into(),
            executable: "/usr/bin/python3".into(),
            dists: dists
                .iter()
                .map(|(a, b)| ((*a).into(), (*b).into()))
                .collect(),
            plugins: plugins
                .iter()
                .map(|p| ((*p).into(), Some("1.0".into())))
                .collect(),
            modules: BTreeMap::new(),
            pytest: pytest.map(Into::into),
        }
    }

    #[test]
    fn verdicts_follow_the_rules() {
        let local = facts(
            Some("9.0"),
            &[("requests", "2.0"), ("rich", "13"), ("tox", "4")],
            &["pytest-cov"],
        );
        let remote = facts(None, &[("rich", "12"), ("zzz", "1")], &[]);
        let imported: BTreeSet<String> = ["requests".to_owned()].into();
        let rows = python_rows(&local, Ok(&remote), &imported);
        let level = |name: &str| rows.iter().find(|(n, _)| *n == name).unwrap().1.level;
        assert_eq!(level("python"), Level::Ok);
        assert_eq!(level("pytest"), Level::Error);
        assert_eq!(level("pytest plugins"), Level::Error);
        assert_eq!(level("packages"), Level::Error);
        let same = python_rows(&local, Ok(&local), &imported);
        assert!(same.iter().all(|(_, c)| c.level == Level::Ok), "{same:?}");
        let none = python_rows(&local, Err("cannot run `python9`"), &imported);
        assert_eq!(none[0].1.level, Level::Error);
    }

    #[test]
    fn clock_skew_over_two_seconds_warns() {
        assert_eq!(
            clock_cell(Duration::from_millis(300), true).level,
            Level::Ok
        );
        assert_eq!(clock_cell(Duration::from_secs(5), false).level, Level::Warn);
    }
}
