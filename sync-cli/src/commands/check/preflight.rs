//! The fast subset of `rdist check` that `rdist run` runs after its sync (`--no-check` skips it):
//! each remote destination is probed over the connection the sync used (which then carries the
//! workers), a local destination or in-place worker with another `python=` is probed in this
//! process, and the answers are compared with this machine's interpreter. Workers that use this
//! machine's interpreter in place or in a local directory would only be compared with
//! themselves, and the sync has just shown their directory writable: nothing is run for them,
//! so a healthy local run pays nothing. Collection and the layout checks are left to the run.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use sync_core::proto::ProbeRequest;
use sync_core::scan::SourceTree;

use super::{files_of, imported_dists, python_of};
use crate::check::host::{
    Answer, host_cells, lacks_a_distribution, local_facts, local_python, remote_facts,
};
use crate::check::report::{Column, print_table};
use crate::check::{Cell, Level, PROBE, layout};
use crate::cli::RunArgs;
use crate::commands::run::Planned;
use crate::exit::Code;
use crate::settings::{Target, Transport};
use crate::transport::Opened;

/// A place to probe.
enum Place<'a> {
    /// Over the sync's connection to a host.
    Remote(&'a Target),
    /// In this process: a local destination (`Some`) or the project in place.
    Here(Option<&'a Target>, String),
}

/// Runs the fast checks. `None`: go on with the run (warnings were printed); `Some(code)`: the
/// report has been printed and the run stops with `code` (1 errors, 2 a host could not be
/// asked).
pub(crate) fn preflight(
    args: &RunArgs,
    project_root: &Path,
    planned: &[Planned],
    targets: &[Target],
    kept: &mut [(Transport, Opened)],
    tree: Option<&SourceTree>,
) -> Option<Code> {
    let mine = local_python();
    let mut places: Vec<Place<'_>> = Vec::new();
    for t in targets {
        let python = python_of(planned, &t.specs, args.common.from_config.python.as_deref());
        match t.transport {
            Transport::Local if python == mine => {}
            Transport::Local => places.push(Place::Here(Some(t), python)),
            _ => places.push(Place::Remote(t)),
        }
    }
    let mut in_place: BTreeSet<String> = BTreeSet::new();
    for p in planned
        .iter()
        .filter(|p| p.local_dir.as_deref() == Some(project_root))
    {
        let python = python_of(
            planned,
            std::slice::from_ref(&p.raw),
            args.common.from_config.python.as_deref(),
        );
        if python != mine && in_place.insert(python.clone()) {
            places.push(Place::Here(None, python));
        }
    }
    if places.is_empty() {
        return None;
    }
    let started = Instant::now();
    let (local, answers) = std::thread::scope(|scope| {
        let facts = scope.spawn(local_facts);
        // One thread per connection: a host's destinations are asked one after another.
        let mut handles = Vec::new();
        for (transport, opened) in kept.iter_mut() {
            let mine: Vec<&Target> = places
                .iter()
                .filter_map(|p| match p {
                    Place::Remote(t) if t.transport == *transport => Some(*t),
                    _ => None,
                })
                .collect();
            handles.push(scope.spawn(move || {
                mine.into_iter()
                    .map(|t| {
                        (
                            t.dest_label(),
                            ask(
                                opened,
                                t,
                                &python_of(
                                    planned,
                                    &t.specs,
                                    args.common.from_config.python.as_deref(),
                                ),
                            ),
                        )
                    })
                    .collect::<Vec<_>>()
            }));
        }
        let mut answers: Vec<(String, Result<Answer, String>)> = places
            .iter()
            .filter_map(|p| match p {
                Place::Here(t, python) => Some(ask_here(*t, python)),
                Place::Remote(_) => None,
            })
            .collect();
        for h in handles {
            answers.extend(h.join().unwrap_or_default());
        }
        let local = facts
            .join()
            .unwrap_or_else(|_| Err("internal error".to_owned()));
        (local, answers)
    });
    let imported = if answers.iter().any(|(_, a)| {
        a.as_ref()
            .is_ok_and(|a| lacks_a_distribution(&local, &remote_facts(&a.report)))
    }) {
        imports(args, project_root, tree)
            .map(|lay| imported_dists(&local, &lay))
            .unwrap_or_default()
    } else {
        BTreeSet::new()
    };
    let columns: Vec<Column> = answers
        .into_iter()
        .map(|(label, a)| match a {
            Ok(a) => Column {
                label,
                cells: host_cells(&a, &local, &imported, None),
                reachable: true,
            },
            Err(e) => Column {
                label,
                cells: vec![(
                    "reachable",
                    Cell::error(
                        format!("probe failed: {e}"),
                        "`--no-check` skips the pre-flight check",
                    ),
                )],
                reachable: false,
            },
        })
        .collect();
    if std::env::var_os("RDIST_TIMINGS").is_some() {
        eprintln!("timings: pre-flight check {:.3?}", started.elapsed());
    }
    if columns.iter().all(|c| c.reachable && !c.has_errors()) {
        for c in &columns {
            for (row, cell) in c.cells.iter().filter(|(_, c)| c.level == Level::Warn) {
                crate::output::warn(&format!("{}: {row}: {}", c.label, cell.value));
            }
        }
        return None;
    }
    print_table(&columns, args.json, &[]);
    eprintln!(
        "error: the pre-flight check found problems; no tests were run\n\
         hint: `rdist check` shows every check; `--no-check` runs anyway"
    );
    Some(if columns.iter().all(|c| c.reachable) {
        Code::Failed
    } else {
        Code::Interrupted
    })
}

fn request(dest: Option<&Target>, python: &str) -> ProbeRequest {
    ProbeRequest {
        dest: dest.map(|t| t.dest.clone()),
        base: dest.map_or(sync_core::proto::DestBase::Cwd, |t| t.base),
        python: python.to_owned(),
        script: PROBE.to_owned(),
    }
}

/// Asks the agent at the other end of `opened` about `t`.
fn ask(opened: &mut Opened, t: &Target, python: &str) -> Result<Answer, String> {
    let report = opened
        .conn
        .probe(request(Some(t), python))
        .map_err(|e| e.to_string())?;
    Ok(Answer {
        report,
        agent_version: opened.conn.agent_version.clone(),
        received_ns: sync_core::hash::now_ns(),
    })
}

/// Probes a local destination (or the project in place) in this process.
fn ask_here(t: Option<&Target>, python: &str) -> (String, Result<Answer, String>) {
    let label = match t {
        Some(t) => format!("{} python={python}", t.dest_label()),
        None => format!("in place python={python}"),
    };
    let report =
        sync_core::agent::probe::probe(&request(t, python), &crate::commands::agent::options());
    let answer = Answer {
        report,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        received_ns: sync_core::hash::now_ns(),
    };
    (label, Ok(answer))
}

/// The code's imports: from the synced tree, or (in-place runs) a scan of the project.
fn imports(
    args: &RunArgs,
    project_root: &Path,
    tree: Option<&SourceTree>,
) -> Option<layout::Layout> {
    let scanned;
    let tree = match tree {
        Some(t) => t,
        None => {
            let cwd = std::env::current_dir().ok()?;
            let sync_args = crate::commands::run::sync_args_for(
                args,
                project_root,
                vec!["popen//chdir=/nonexistent-rdist-check".to_owned()],
            );
            let s = crate::settings::SyncSettings::from_args(&sync_args, &cwd).ok()?;
            let mut cache = sync_core::hash::HashCache::in_memory();
            scanned = sync_core::scan::scan(project_root, &s.roots, &s.filter, &mut cache).ok()?;
            &scanned
        }
    };
    Some(layout::examine(project_root, &files_of(tree)))
}
