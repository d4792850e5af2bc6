//! The check report: a table on stdout (a row per check, a column per host, a mark and a short
//! value in each cell), then a `hint:` line per problem with its details indented below; or one
//! JSON document with `--json`.

use std::collections::BTreeSet;
use std::io::Write;

use serde_json::json;

use super::{Cell, Level};

/// A column of the table: one host (or destination).
pub struct Column {
    pub label: String,
    pub cells: Vec<(&'static str, Cell)>,
    /// Whether the host could be asked at all.
    pub reachable: bool,
}

impl Column {
    /// Whether any cell is an error.
    pub fn has_errors(&self) -> bool {
        self.cells.iter().any(|(_, c)| c.level == Level::Error)
    }
}

/// Prints the table and the hints; `shared` rows are about the project, not a host, and get
/// one hint each.
pub fn print_table(columns: &[Column], json: bool, shared: &[&str]) {
    let mut out = std::io::stdout().lock();
    if json {
        let doc: Vec<_> = columns
            .iter()
            .map(|c| json!({"host": c.label, "reachable": c.reachable, "checks": c.cells.iter().map(|(n, cell)| json!({"check": n, "level": cell.level, "value": cell.value, "hint": cell.hint, "details": cell.details})).collect::<Vec<_>>()}))
            .collect();
        let _ = writeln!(out, "{}", json!({"hosts": doc}));
        return;
    }
    let mut rows: Vec<&'static str> = Vec::new();
    for c in columns {
        for (n, _) in &c.cells {
            if !rows.contains(n) {
                rows.push(n);
            }
        }
    }
    let width = 38;
    let clip = |s: &str| -> String {
        if s.chars().count() > width {
            format!("{}…", s.chars().take(width - 1).collect::<String>())
        } else {
            s.to_owned()
        }
    };
    let _ = write!(out, "{:<16}", "check");
    for c in columns {
        let _ = write!(out, " | {:<w$}", clip(&c.label), w = width + 5);
    }
    let _ = writeln!(out);
    for r in &rows {
        let _ = write!(out, "{r:<16}");
        for c in columns {
            let text = match c.cells.iter().find(|(n, _)| n == r) {
                Some((_, cell)) => format!("{:<4} {}", cell.level.mark(), clip(&cell.value)),
                None => "-".to_owned(),
            };
            let _ = write!(out, " | {text:<w$}", w = width + 5);
        }
        let _ = writeln!(out);
    }
    let mut hints = BTreeSet::new();
    for c in columns {
        for (n, cell) in &c.cells {
            if cell.level != Level::Ok
                && let Some(h) = &cell.hint
            {
                let who = if shared.contains(n) {
                    "project"
                } else {
                    c.label.as_str()
                };
                let mut text = format!("{who}: {n}: {h}");
                for d in &cell.details {
                    text.push_str("\n    ");
                    text.push_str(d);
                }
                hints.insert(text);
            }
        }
    }
    for h in hints {
        let _ = writeln!(out, "hint: {h}");
    }
}
