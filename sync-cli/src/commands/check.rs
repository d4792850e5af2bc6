//! `rdist check`: the pre-flight report. Same worker options as `rdist run`; every host is
//! probed concurrently; the answer is a table (a row per check, a column per host), `hint:`
//! lines for each problem, `--json`, and exit 0 (all good), 1 (errors), 2 (a host could not be
//! checked).

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::json;
use sync_core::proto::ProbeRequest;

use crate::check::{Cell, Level, PROBE, PyFacts, bytes, clock_cell, layout, python_rows};
use crate::cli::CheckArgs;
use crate::commands::run::{plan_workers, sync_args_for};
use crate::exit::{Code, Failure};
use crate::settings::{self, SyncSettings, Target, Transport};

/// A column of the table.
struct Column {
    label: String,
    cells: Vec<(&'static str, Cell)>,
    reachable: bool,
}

/// Runs `rdist check`.
///
/// # Errors
/// Usage errors.
pub fn run(args: &CheckArgs) -> Result<Code, Failure> {
    let cwd = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .map_err(|e| Failure::usage(anyhow!(e).context("no current directory")))?;
    let run = &settings::run_args(&args.run, &cwd)?;
    let project_root = settings::find_project_root(&cwd);
    let (planned, sync_tx) = plan_workers(run, &project_root, &cwd)?;
    // The tree as `rdist sync` would send it.
    let sync_args = sync_args_for(
        run,
        &project_root,
        vec!["popen//chdir=/nonexistent-rdist-check".to_owned()],
    );
    let sync_settings = SyncSettings::from_args(&sync_args, &cwd)?;
    let mut cache = sync_core::hash::HashCache::in_memory();
    let tree = sync_core::scan::scan(
        &project_root,
        &sync_settings.roots,
        &sync_settings.filter,
        &mut cache,
    )
    .map_err(Failure::failed)?;
    let files: Vec<(String, u64)> = tree
        .manifest
        .entries()
        .iter()
        .filter_map(|e| match e.kind {
            sync_core::manifest::Kind::File { size, .. } => Some((e.path.to_string(), size)),
            _ => None,
        })
        .collect();
    let lay = layout::examine(&project_root, &files);
    if args.fix && !lay.no_init.is_empty() {
        for d in &lay.no_init {
            let p = project_root.join(d).join("__init__.py");
            eprintln!("creating {}", p.display());
            std::fs::write(&p, b"").map_err(|e| {
                Failure::failed(anyhow!(e).context(format!("cannot create `{}`", p.display())))
            })?;
        }
    }
    let local = local_facts();
    let imported: BTreeSet<String> = match &local {
        Ok(l) => lay
            .imports
            .iter()
            .flat_map(|m| l.modules.get(m).cloned().unwrap_or_default())
            .collect(),
        Err(_) => BTreeSet::new(),
    };

    // One probe per distinct place: local in-place workers, and each sync target.
    let targets: Vec<Target> = if sync_tx.is_empty() {
        Vec::new()
    } else {
        SyncSettings::from_args(&sync_args_for(run, &project_root, sync_tx), &cwd)?.targets
    };
    let s_for_connect = if targets.is_empty() {
        None
    } else {
        Some(SyncSettings::from_args(
            &sync_args_for(
                run,
                &project_root,
                targets.iter().flat_map(|t| t.specs.clone()).collect(),
            ),
            &cwd,
        )?)
    };
    let python_of = |specs: &[String]| -> String {
        planned
            .iter()
            .find(|p| specs.contains(&p.raw))
            .and_then(|p| p.spec.as_ref().and_then(|s| s.python.clone()))
            .or_else(|| run.common.from_config.python.clone())
            .unwrap_or_else(|| "python3".to_owned())
    };
    let mut columns: Vec<Column> = Vec::new();
    if planned
        .iter()
        .any(|p| p.local_dir.as_deref() == Some(project_root.as_path()))
    {
        let mut cells = vec![("reachable", Cell::ok("this machine"))];
        cells.extend(python_cells(&local, &local, &imported));
        columns.push(Column {
            label: "local (in place)".to_owned(),
            cells,
            reachable: true,
        });
    }
    let probes: Vec<Column> = std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                let (local, imported, s) = (&local, &imported, s_for_connect.as_ref());
                let python = python_of(&t.specs);
                let tree_bytes = lay.bytes;
                scope.spawn(move || {
                    probe_target(
                        t,
                        s.expect("targets imply settings"),
                        &python,
                        local,
                        imported,
                        tree_bytes,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Column {
                    label: "?".into(),
                    cells: vec![("reachable", Cell::error("internal error", "report this"))],
                    reachable: false,
                })
            })
            .collect()
    });
    columns.extend(probes);
    let mut layout_cells: Vec<(&'static str, Cell)> = Vec::new();
    layout_cells.push((
        "module names",
        if lay.clashes.is_empty() {
            Cell::ok("no clashes")
        } else {
            let first: Vec<String> = lay.clashes.iter().take(3).map(|(n, v)| format!("{n} ({})", v.join(", "))).collect();
            Cell::error(format!("same basename: {}", first.join("; ")), "add `__init__.py` to those test directories (`rdist check --fix`) or rename the modules; otherwise pytest fails with \"import file mismatch\"")
        },
    ));
    layout_cells.push((
        "__init__.py",
        if lay.no_init.is_empty() || args.fix {
            Cell::ok(if args.fix && !lay.no_init.is_empty() { "created".to_owned() } else { "present".to_owned() })
        } else {
            let dirs: Vec<String> = lay.no_init.iter().take(3).map(|d| d.display().to_string()).collect();
            Cell::warn(format!("missing in {} test dir(s): {}", lay.no_init.len(), dirs.join(", ")), "pytest imports these test modules by basename (`rdist check --fix` adds the files)")
        },
    ));
    for c in &mut columns {
        c.cells.extend(layout_cells.iter().cloned());
    }
    print_table(&columns, run.json, &["module names", "__init__.py"]);
    let unreachable = columns.iter().any(|c| !c.reachable);
    let errors = columns
        .iter()
        .any(|c| c.cells.iter().any(|(_, cell)| cell.level == Level::Error));
    Ok(if unreachable {
        Code::Interrupted
    } else if errors {
        Code::Failed
    } else {
        Code::Ok
    })
}

/// This machine's interpreter: `python3`, or `RDIST_LOCAL_PYTHON`.
fn local_facts() -> Result<PyFacts, String> {
    let python = std::env::var("RDIST_LOCAL_PYTHON").unwrap_or_else(|_| "python3".to_owned());
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

fn python_cells(
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

fn probe_target(
    t: &Target,
    s: &SyncSettings,
    python: &str,
    local: &Result<PyFacts, String>,
    imported: &BTreeSet<String>,
    tree_bytes: u64,
) -> Column {
    let label = t.dest_label();
    let started = Instant::now();
    let opts = sync_core::push::PushOptions {
        dest: t.dest.clone(),
        ignore: Vec::new(),
        dry_run: true,
        fsync: false,
        adopt: false,
        lock_wait_ms: 0,
        base: t.base,
        token: match (&t.transport, &s.token) {
            (Transport::Socket { .. }, Some(tok)) => Some(sync_core::auth::Key::from_token(tok)),
            _ => None,
        },
        delta_min: 0,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let mut opened = match crate::transport::open(t, s, opts) {
        Ok(o) => o,
        Err(e) => {
            let mut cell = Cell::error(
                format!("{:#}", e.error),
                e.hint
                    .clone()
                    .unwrap_or_else(|| "check the host and the spec".to_owned()),
            );
            if !e.stderr.is_empty() {
                cell.value
                    .push_str(&format!(" ({})", e.stderr.lines().last().unwrap_or("")));
            }
            return Column {
                label,
                cells: vec![("reachable", cell)],
                reachable: false,
            };
        }
    };
    let connect = started.elapsed();
    let asked = Instant::now();
    let req = ProbeRequest {
        dest: Some(t.dest.clone()),
        base: t.base,
        python: python.to_owned(),
        script: PROBE.to_owned(),
    };
    let rep = opened.conn.probe(req);
    let rtt = asked.elapsed();
    let local_now = sync_core::hash::now_ns();
    let agent_version = opened.conn.agent_version.clone();
    drop(opened.conn);
    if let Some(c) = opened.child {
        let _ = c.finish();
    }
    let rep = match rep {
        Ok(r) => r,
        Err(e) => {
            return Column {
                label,
                cells: vec![(
                    "reachable",
                    Cell::error(
                        format!("probe failed: {e}"),
                        "is the agent on the host the same rdist version?",
                    ),
                )],
                reachable: false,
            };
        }
    };
    let mut cells = vec![
        (
            "reachable",
            Cell::ok(format!("{:.2} s", connect.as_secs_f64())),
        ),
        (
            "rdist",
            if agent_version == env!("CARGO_PKG_VERSION") {
                Cell::ok(agent_version)
            } else {
                Cell::warn(agent_version, "a different rdist version runs there")
            },
        ),
        (
            "system",
            Cell::ok(format!("{} {} {}", rep.os, rep.arch, rep.hostname)),
        ),
    ];
    let remote: Result<PyFacts, String> = match (&rep.python, &rep.python_error) {
        (Some(out), _) => {
            serde_json::from_str(out).map_err(|e| format!("unexpected probe output: {e}"))
        }
        (None, Some(e)) => Err(e.clone()),
        (None, None) => Err("no answer".to_owned()),
    };
    cells.extend(python_cells(local, &remote, imported));
    cells.push((
        "destination",
        match &rep.not_writable {
            Some(why) => Cell::error(
                why.clone(),
                "choose a writable `chdir=` or fix the permissions",
            ),
            None => Cell::ok(rep.dest.clone().unwrap_or_default()),
        },
    ));
    cells.push((
        "disk",
        match rep.disk_free {
            Some(free) if free < tree_bytes + tree_bytes / 10 => Cell::error(
                format!("{} free, the tree needs {}", bytes(free), bytes(tree_bytes)),
                "free space on the worker or choose another `chdir=`",
            ),
            Some(free) => Cell::ok(format!("{} free", bytes(free))),
            None => Cell::warn("unknown", "free space could not be read"),
        },
    ));
    cells.push((
        "case-sensitive",
        match rep.case_sensitive {
            Some(true) => Cell::ok("yes"),
            Some(false) => Cell::warn("no", "names that differ only in case will collide there"),
            None => Cell::warn("unknown", "the destination could not be written"),
        },
    ));
    // The host answered somewhere within the round trip: compare with its middle.
    let mid = local_now - (rtt.as_nanos() as i64) / 2;
    let skew = rep.time_ns - mid;
    cells.push((
        "clock",
        clock_cell(Duration::from_nanos(skew.unsigned_abs()), skew > 0),
    ));
    Column {
        label,
        cells,
        reachable: true,
    }
}

/// Prints the table and the hints; `shared` rows are about the project, not a host, and get
/// one hint each.
fn print_table(columns: &[Column], json: bool, shared: &[&str]) {
    let mut out = std::io::stdout().lock();
    if json {
        let doc: Vec<_> = columns
            .iter()
            .map(|c| json!({"host": c.label, "reachable": c.reachable, "checks": c.cells.iter().map(|(n, cell)| json!({"check": n, "level": cell.level, "value": cell.value, "hint": cell.hint})).collect::<Vec<_>>()}))
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
                hints.insert(format!("{who}: {n}: {h}"));
            }
        }
    }
    for h in hints {
        let _ = writeln!(out, "hint: {h}");
    }
}
