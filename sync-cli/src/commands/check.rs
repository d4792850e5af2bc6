//! `rdist check`: the pre-flight report. Same worker options as `rdist run`. Every target is
//! handled by its own thread: connect, probe (system, clock, destination, Python), sync the
//! project there when the probe found a place for it, and collect there; meanwhile this machine
//! probes its own Python and collects. The answer is a table (a row per check, a column per
//! host), `hint:` lines for each problem, `--json`, and exit 0 (all good), 1 (errors), 2 (a host
//! could not be checked). [`preflight`] is the fast subset `rdist run` runs after its sync.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use sync_core::proto::ProbeRequest;
use sync_core::scan::SourceTree;

use crate::check::collect::{Collection, collect, drift_cell};
use crate::check::host::{
    Answer, host_cells, local_facts, local_python, python_cells, remote_facts,
};
use crate::check::report::{Column, print_table};
use crate::check::{Cell, Level, PROBE, PyFacts, layout};
use crate::cli::CheckArgs;
use crate::commands::run::{Planned, map_args, plan_workers, sync_args_for};
use crate::dispatch::worker::{Place, RemoteHost, WorkerSpec, install_plugin};
use crate::exit::{Code, Failure};
use crate::settings::{self, SyncSettings, Target, Transport};

mod preflight;
pub(crate) use preflight::preflight;

/// How long a worker may take to collect.
const COLLECT_LIMIT: Duration = Duration::from_secs(120);

/// What one target's thread found.
struct Examined {
    label: String,
    /// Time to connect, or why the host could not be asked.
    reachable: Result<Duration, Cell>,
    answer: Option<Answer>,
    /// The worker's collection; `Err`: why it was not collected (`skipped`: not an error).
    collection: Option<Result<Collection, String>>,
    skipped: Option<String>,
}

/// What a collection needs besides the worker.
struct Collecting<'a> {
    tree: &'a SourceTree,
    need: u64,
    plugin_dir: Option<&'a Path>,
    pytest_args: &'a [String],
    /// The config file's `python`, for specs without `python=`.
    python: Option<&'a str>,
}

/// Runs `rdist check`.
///
/// # Errors
/// Usage errors, or a project tree that cannot be read.
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
    let mut cache = match &sync_settings.cache_file {
        Some(f) => sync_core::hash::HashCache::load(f.clone()),
        None => sync_core::hash::HashCache::in_memory(),
    };
    let tree = sync_core::scan::scan(
        &project_root,
        &sync_settings.roots,
        &sync_settings.filter,
        &mut cache,
    )
    .map_err(Failure::failed)?;
    let _ = cache.save();
    let lay = layout::examine(&project_root, &files_of(&tree));
    if args.fix && !lay.no_init.is_empty() {
        for d in &lay.no_init {
            let p = project_root.join(d).join("__init__.py");
            eprintln!("creating {}", p.display());
            std::fs::write(&p, b"").map_err(|e| {
                Failure::failed(anyhow!(e).context(format!("cannot create `{}`", p.display())))
            })?;
        }
    }
    // One probe per distinct place: local in-place workers, and each sync target.
    let (targets, s) = if sync_tx.is_empty() {
        (Vec::new(), None)
    } else {
        let s = SyncSettings::from_args(&sync_args_for(run, &project_root, sync_tx), &cwd)?;
        (s.targets.clone(), Some(s))
    };
    let plugin_dir = run
        .common
        .cache_dir
        .clone()
        .or_else(settings::cache_dir)
        .and_then(|c| install_plugin(&c).ok());
    let pytest_args = map_args(&run.pytest_args, &cwd, &project_root);
    let job = Collecting {
        tree: &tree,
        need: lay.bytes,
        plugin_dir: plugin_dir.as_deref(),
        pytest_args: &pytest_args,
        python: run.common.from_config.python.as_deref(),
    };
    let (local, here, examined) = std::thread::scope(|scope| {
        let facts = scope.spawn(local_facts);
        let here = (!targets.is_empty()).then(|| {
            let spec = worker_spec(
                "local",
                local_python(),
                None,
                Place::Local(project_root.clone()),
            );
            let (plugin_dir, args) = (job.plugin_dir, job.pytest_args);
            scope.spawn(move || match plugin_dir {
                Some(p) => collect(&spec, p, args, COLLECT_LIMIT),
                None => Err("no cache directory for the pytest plugin".to_owned()),
            })
        });
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                let (s, planned, job) = (s.as_ref(), &planned, &job);
                scope.spawn(move || examine(t, s.expect("targets imply settings"), planned, job))
            })
            .collect();
        let examined: Vec<Examined> = handles
            .into_iter()
            .zip(&targets)
            .map(|(h, t)| {
                h.join().unwrap_or_else(|_| Examined {
                    label: t.dest_label(),
                    reachable: Err(Cell::error("internal error", "report this")),
                    answer: None,
                    collection: None,
                    skipped: None,
                })
            })
            .collect();
        let local = facts
            .join()
            .unwrap_or_else(|_| Err("internal error".to_owned()));
        let here = here.map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("internal error".to_owned()))
        });
        (local, here, examined)
    });
    let imported = imported_dists(&local, &lay);
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
    for e in examined {
        columns.push(column_of(e, &local, &imported, lay.bytes, here.as_ref()));
    }
    let layout_cells = layout_cells(&lay, args.fix);
    for c in &mut columns {
        c.cells.extend(layout_cells.iter().cloned());
    }
    print_table(&columns, run.json, &["module names", "__init__.py"]);
    Ok(if columns.iter().any(|c| !c.reachable) {
        Code::Interrupted
    } else if columns.iter().any(Column::has_errors) {
        Code::Failed
    } else {
        Code::Ok
    })
}

/// Project-relative paths and sizes of the tree's files.
pub(crate) fn files_of(tree: &SourceTree) -> Vec<(String, u64)> {
    tree.manifest
        .entries()
        .iter()
        .filter_map(|e| match e.kind {
            sync_core::manifest::Kind::File { size, .. } => Some((e.path.to_string(), size)),
            _ => None,
        })
        .collect()
}

/// The distributions that provide the modules the code imports.
pub(crate) fn imported_dists(
    local: &Result<PyFacts, String>,
    lay: &layout::Layout,
) -> BTreeSet<String> {
    match local {
        Ok(l) => lay
            .imports
            .iter()
            .flat_map(|m| l.modules.get(m).cloned().unwrap_or_default())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn layout_cells(lay: &layout::Layout, fixed: bool) -> Vec<(&'static str, Cell)> {
    let names = if lay.clashes.is_empty() {
        Cell::ok("no clashes")
    } else {
        let first: Vec<String> = lay
            .clashes
            .iter()
            .take(3)
            .map(|(n, v)| format!("{n} ({})", v.join(", ")))
            .collect();
        Cell::error(
            format!("same basename: {}", first.join("; ")),
            "add `__init__.py` to those test directories (`rdist check --fix`) or rename the modules; otherwise pytest fails with \"import file mismatch\"",
        )
    };
    let inits = if lay.no_init.is_empty() {
        Cell::ok("present")
    } else if fixed {
        Cell::ok("created")
    } else {
        let dirs: Vec<String> = lay
            .no_init
            .iter()
            .take(3)
            .map(|d| d.display().to_string())
            .collect();
        Cell::warn(
            format!(
                "missing in {} test dir(s): {}",
                lay.no_init.len(),
                dirs.join(", ")
            ),
            "pytest imports these test modules by basename (`rdist check --fix` adds the files)",
        )
    };
    vec![("module names", names), ("__init__.py", inits)]
}

fn column_of(
    e: Examined,
    local: &Result<PyFacts, String>,
    imported: &BTreeSet<String>,
    need: u64,
    here: Option<&Result<Collection, String>>,
) -> Column {
    let reachable = match e.reachable {
        Ok(d) => Cell::ok(format!("{:.2} s", d.as_secs_f64())),
        Err(cell) => {
            return Column {
                label: e.label,
                cells: vec![("reachable", cell)],
                reachable: false,
            };
        }
    };
    let mut cells = vec![("reachable", reachable)];
    if let Some(a) = &e.answer {
        cells.extend(host_cells(a, local, imported, Some(need)));
    }
    let collection = match (&e.collection, &e.skipped, here) {
        (Some(remote), _, Some(here)) => drift_cell(here, remote),
        (_, Some(why), _) => Cell {
            level: Level::Warn,
            value: format!("not collected: {why}"),
            hint: None,
            details: Vec::new(),
        },
        _ => Cell::warn("not collected", "report this"),
    };
    cells.push(("collection", collection));
    Column {
        label: e.label,
        cells,
        reachable: e.answer.is_some(),
    }
}

/// A worker for spec `raw` with `python` at `place`, as `rdist run` would start it.
fn worker_spec(raw: &str, python: String, planned: Option<&Planned>, place: Place) -> WorkerSpec {
    let spec = planned.and_then(|p| p.spec.as_ref());
    WorkerSpec {
        spec: raw.to_owned(),
        python,
        place,
        env: spec.map(|s| s.env.clone()).unwrap_or_default(),
        nice: spec.and_then(|s| s.nice),
        dont_write_bytecode: spec.is_some_and(|s| s.dont_write_bytecode),
    }
}

/// The `python=` of the first of `specs`, else `default` (the config file's), else `python3`.
pub(crate) fn python_of(planned: &[Planned], specs: &[String], default: Option<&str>) -> String {
    planned
        .iter()
        .find(|p| specs.contains(&p.raw))
        .and_then(|p| p.spec.as_ref().and_then(|s| s.python.clone()))
        .or_else(|| default.map(str::to_owned))
        .unwrap_or_else(|| "python3".to_owned())
}

/// Connects to `t`, probes it, and when the probe found room and pytest there, syncs the tree
/// and collects on it.
fn examine(t: &Target, s: &SyncSettings, planned: &[Planned], job: &Collecting<'_>) -> Examined {
    let mut out = Examined {
        label: t.dest_label(),
        reachable: Err(Cell::error("not asked", "report this")),
        answer: None,
        collection: None,
        skipped: None,
    };
    let python = python_of(planned, &t.specs, job.python);
    let started = Instant::now();
    let opts = crate::commands::sync::push_options(s, t);
    let mut opened = match crate::transport::open(t, s, opts.clone()) {
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
            out.reachable = Err(cell);
            return out;
        }
    };
    out.reachable = Ok(started.elapsed());
    let req = ProbeRequest {
        dest: Some(t.dest.clone()),
        base: t.base,
        python: python.clone(),
        script: PROBE.to_owned(),
    };
    let answer = match opened.conn.probe(req) {
        Ok(report) => Answer {
            report,
            agent_version: opened.conn.agent_version.clone(),
            received_ns: sync_core::hash::now_ns(),
        },
        Err(e) => {
            out.reachable = Err(Cell::error(
                format!("probe failed: {e}"),
                "is the agent on the host the same rdist version?",
            ));
            close(opened);
            return out;
        }
    };
    let rep = &answer.report;
    let no_room = rep
        .disk_free
        .is_some_and(|free| free < job.need + job.need / 10);
    out.skipped = if rep.not_writable.is_some() {
        Some("the destination is not writable".to_owned())
    } else if no_room {
        Some("not enough space for the tree".to_owned())
    } else if !remote_facts(rep).is_ok_and(|f| f.pytest.is_some()) {
        Some("no pytest there".to_owned())
    } else if job.plugin_dir.is_none() {
        Some("no cache directory for the pytest plugin".to_owned())
    } else {
        None
    };
    out.answer = Some(answer);
    if out.skipped.is_some() {
        close(opened);
        return out;
    }
    let crate::transport::Opened { conn, child } = opened;
    let synced = conn
        .begin(opts)
        .and_then(|session| session.sync_reuse(job.tree, &|_, _| {}));
    let conn = match synced {
        Ok((_, conn)) => conn,
        Err(e) => {
            out.collection = Some(Err(format!("the sync failed: {e}")));
            if let Some(c) = child {
                let _ = c.finish();
            }
            return out;
        }
    };
    let opened = crate::transport::Opened { conn, child };
    let first = planned.iter().find(|p| t.specs.contains(&p.raw));
    let plugin_dir = job.plugin_dir.expect("checked above");
    out.collection = Some(
        match (&t.transport, first.and_then(|p| p.local_dir.clone())) {
            (Transport::Local, Some(dir)) => {
                close(opened);
                let spec = worker_spec(&t.specs[0], python, first, Place::Local(dir));
                collect(&spec, plugin_dir, job.pytest_args, COLLECT_LIMIT)
            }
            _ => {
                let host = RemoteHost::new(opened, out.label.clone());
                let place = Place::Remote {
                    host: host.clone(),
                    dest: t.dest.clone(),
                    base: t.base,
                };
                let spec = worker_spec(&t.specs[0], python, first, place);
                let got = collect(&spec, plugin_dir, job.pytest_args, COLLECT_LIMIT);
                host.close();
                got
            }
        },
    );
    out
}

/// Hangs up (ending the agent) and reaps its process.
fn close(opened: crate::transport::Opened) {
    drop(opened.conn);
    if let Some(c) = opened.child {
        let _ = c.finish();
    }
}
