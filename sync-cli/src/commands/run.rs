//! `rdist run`: sync the project to the workers that need it, start a pytest worker per `--tx`
//! worker (or `-n N` local ones in place), check that their collections agree, hand out tests
//! by the `--dist` policy, and report like pytest, with pytest's exit codes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::anyhow;
use compat::xspec::{Gateway, XSpec};
use serde_json::json;

use crate::cli::{Layout, RunArgs, SyncArgs};
use crate::dispatch::bar::{BarMode, RunBar};
use crate::dispatch::report::{Reporter, rule};
use crate::dispatch::worker::{Place, RemoteHost, WorkerSpec, install_plugin};
use crate::dispatch::{Ending, SessionConfig, run_session};
use crate::exit::{Code, Failure};
use crate::settings::{self, SyncSettings, Transport};

/// Runs `rdist run`.
///
/// # Errors
/// Usage errors, a failed sync, or workers that cannot start.
pub fn run(args: &RunArgs) -> Result<Code, Failure> {
    let cwd = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .map_err(|e| Failure::usage(anyhow!(e).context("no current directory")))?;
    let project_root = settings::find_project_root(&cwd);
    let args = &settings::run_args(args, &cwd)?;
    let (planned, sync_tx) = plan_workers(args, &project_root, &cwd)?;
    let mut kept: Vec<(Transport, crate::transport::Opened)> = Vec::new();
    let mut targets = Vec::new();
    let mut tree = None;
    if !sync_tx.is_empty() {
        let sync_args = sync_args_for(args, &project_root, sync_tx);
        let s = SyncSettings::from_args(&sync_args, &cwd)?;
        let (code, k, t) = crate::commands::sync::sync_settings_keep(&s, true)?;
        kept = k;
        if code != Code::Ok {
            close_opened(kept);
            return Err(Failure::failed(anyhow!(
                "the sync failed; no tests were run"
            )));
        }
        targets = s.targets;
        tree = Some(t);
    }
    if !args.no_check
        && let Some(code) = crate::commands::check::preflight(
            args,
            &project_root,
            &planned,
            &targets,
            &mut kept,
            tree.as_deref(),
        )
    {
        close_opened(kept);
        return Ok(code);
    }
    let hosts: Vec<(Transport, Arc<RemoteHost>)> = kept
        .into_iter()
        .map(|(t, opened)| {
            let label = match &t {
                Transport::Ssh { host, .. } => host.clone(),
                Transport::Socket { host, port } => format!("{host}:{port}"),
                Transport::Local => "local".to_owned(),
            };
            (t, RemoteHost::new(opened, label))
        })
        .collect();
    let python = args.common.from_config.python.as_deref();
    let workers = place_workers(python, planned, &targets, &hosts)?;
    let code = run_workers(args, &cwd, &project_root, workers);
    close_all(&hosts);
    code
}

/// Hangs up kept connections that will carry no workers.
fn close_opened(kept: Vec<(Transport, crate::transport::Opened)>) {
    for (_, o) in kept {
        drop(o.conn);
        if let Some(c) = o.child {
            let _ = c.finish();
        }
    }
}

/// The `rdist sync` arguments that prepare `sync_tx` for a run (or a check).
pub(crate) fn sync_args_for(args: &RunArgs, project_root: &Path, sync_tx: Vec<String>) -> SyncArgs {
    let mut common = args.common.clone();
    if common.rsyncdir.is_empty() {
        common.rsyncdir = vec![project_root.to_owned()];
    }
    common.tx = sync_tx;
    SyncArgs {
        common,
        layout: Layout::Rdist,
        adopt: false,
        dry_run: false,
        fsync: false,
        lock_wait: 60.0,
        verbose: false,
        json: false,
    }
}

fn close_all(hosts: &[(Transport, Arc<RemoteHost>)]) {
    for (_, h) in hosts {
        h.close();
    }
}

/// A worker before the syncs: where it will run.
pub(crate) struct Planned {
    pub(crate) raw: String,
    pub(crate) spec: Option<XSpec>,
    /// `None`: remote, placed once its host's connection exists.
    pub(crate) local_dir: Option<PathBuf>,
}

fn place_workers(
    python: Option<&str>,
    planned: Vec<Planned>,
    targets: &[crate::settings::Target],
    hosts: &[(Transport, Arc<RemoteHost>)],
) -> Result<Vec<WorkerSpec>, Failure> {
    let mut out = Vec::new();
    for p in planned {
        let place = match p.local_dir {
            Some(dir) => Place::Local(dir),
            None => {
                let t = targets
                    .iter()
                    .find(|t| t.specs.contains(&p.raw))
                    .ok_or_else(|| {
                        Failure::failed(anyhow!("internal error: no sync target for `{}`", p.raw))
                    })?;
                let host = hosts
                    .iter()
                    .find(|(tr, _)| *tr == t.transport)
                    .map(|(_, h)| h.clone())
                    .ok_or_else(|| {
                        Failure::failed(anyhow!("no connection to the host of `{}`", p.raw))
                    })?;
                Place::Remote {
                    host,
                    dest: t.dest.clone(),
                    base: t.base,
                }
            }
        };
        let spec = p.spec.as_ref();
        out.push(WorkerSpec {
            spec: p.raw.clone(),
            python: spec
                .and_then(|s| s.python.clone())
                .unwrap_or_else(|| python.unwrap_or("python3").to_owned()),
            place,
            env: spec.map(|s| s.env.clone()).unwrap_or_default(),
            nice: spec.and_then(|s| s.nice),
            dont_write_bytecode: spec.is_some_and(|s| s.dont_write_bytecode),
        });
    }
    Ok(out)
}

fn run_workers(
    args: &RunArgs,
    cwd: &Path,
    project_root: &Path,
    workers: Vec<WorkerSpec>,
) -> Result<Code, Failure> {
    let cache = args
        .common
        .cache_dir
        .clone()
        .or_else(settings::cache_dir)
        .ok_or_else(|| {
            Failure::usage(anyhow!("no cache directory")).with_hint("set `RDIST_CACHE_DIR`")
        })?;
    let plugin_dir = install_plugin(&cache).map_err(|e| {
        Failure::failed(anyhow!(e).context(format!(
            "cannot write the pytest plugin into `{}`",
            cache.display()
        )))
    })?;
    let durations_file = cache
        .join("durations")
        .join(format!("{}.json", settings::project_key(project_root)));
    let durations: HashMap<String, f64> = std::fs::read(&durations_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let cfg = SessionConfig {
        mode: args.dist,
        workers,
        pytest_args: map_args(&args.pytest_args, cwd, project_root),
        plugin_dir,
        run_id: sync_core::auth::new_token()
            .map(|t| t[..12].to_owned())
            .unwrap_or_else(|_| "rdist".to_owned()),
        max_restarts: args.max_worker_restart,
        heartbeat: std::time::Duration::from_secs_f64(args.heartbeat_timeout.max(1.0)),
        durations: durations.clone(),
        maxfail: maxfail(&args.pytest_args),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
    let out: Box<dyn std::io::Write> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let mut rep = Reporter::new(args.verbose, 0, out);
    rep.per_worker = args.dist == crate::dispatch::schedule::Mode::Each;
    match BarMode::detect(args.json) {
        BarMode::Off => {}
        mode => rep.set_bar(RunBar::stderr(), mode == BarMode::Shared),
    }
    rep.line(&rule('=', "test session starts", 80));
    let specs: Vec<String> = cfg
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| format!("gw{i} {}", w.spec))
        .collect();
    rep.line(&format!(
        "rdist {} -- {} workers: {}",
        env!("CARGO_PKG_VERSION"),
        cfg.workers.len(),
        specs.join(", ")
    ));
    rep.line(&format!("rootdir: {}", project_root.display()));
    let started = Instant::now();
    let result = run_session(&cfg, &mut rep, &stop);
    let elapsed = started.elapsed();
    let stopping;
    let (code, why) = match &result.ending {
        Ending::Ran { failed: false } => (Code::Ok, None),
        Ending::Ran { failed: true } => (Code::Failed, None),
        Ending::NoTests => (Code::Empty, None),
        Ending::CollectionErrors => (
            Code::Interrupted,
            Some("Interrupted: errors during collection"),
        ),
        Ending::CollectionMismatch => (
            Code::Failed,
            Some("collections differ between workers; nothing was run"),
        ),
        Ending::WorkersFailed => (Code::Internal, Some("no worker could start pytest")),
        Ending::Usage(msg) => {
            rep.line(msg);
            (Code::Usage, Some("pytest refused the arguments"))
        }
        Ending::Interrupted => (Code::Interrupted, Some("KeyboardInterrupt")),
        Ending::StoppedAfter(n) => {
            stopping = format!("stopping after {n} failures");
            (Code::Failed, Some(stopping.as_str()))
        }
    };
    rep.finish(elapsed, why);
    // pytest's cache here: in the worker's rootdir when the worker ran in this project (in
    // place), else at the same place under the project root (as xdist's controller keeps its own).
    if let Some((rootdir, rel)) = &result.cache_dir {
        let base = if Path::new(rootdir).starts_with(project_root) {
            PathBuf::from(rootdir)
        } else {
            project_root.to_owned()
        };
        if let Err(e) = crate::dispatch::lastfailed::update(&base.join(rel), &rep.outcomes) {
            crate::output::warn(&format!("cannot update pytest's `cache/lastfailed`: {e}"));
        }
    }
    let mut merged = durations;
    merged.extend(result.durations);
    if let Some(dir) = durations_file.parent()
        && std::fs::create_dir_all(dir).is_ok()
        && let Ok(bytes) = serde_json::to_vec(&merged)
    {
        let tmp = durations_file.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &durations_file);
        }
    }
    if let Some(path) = &args.junitxml {
        let xml = crate::dispatch::junit::render(&rep.outcomes, &rep.platforms);
        if let Err(e) = std::fs::write(path, xml) {
            crate::output::warn(&format!("cannot write `{}`: {e}", path.display()));
        }
    }
    if args.json {
        let tests: Vec<_> = rep
            .outcomes
            .iter()
            .map(|o| json!({"nodeid": o.nodeid, "outcome": o.category, "worker": format!("gw{}", o.worker), "duration": o.duration, "message": o.message}))
            .collect();
        let workers: Vec<_> = rep
            .platforms
            .iter()
            .map(|(w, p)| json!({"id": format!("gw{w}"), "platform": p.platform, "python": p.python, "implementation": p.implementation, "executable": p.executable}))
            .collect();
        let counts: serde_json::Map<String, serde_json::Value> = rep
            .counts()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        println!(
            "{}",
            json!({"exit_code": code as u8, "collected": result.collected, "seconds": elapsed.as_secs_f64(), "counts": counts, "workers": workers, "tests": tests})
        );
    }
    if code == Code::Internal {
        return Err(Failure {
            error: anyhow!("no worker could start pytest"),
            hint: Some("is pytest installed for the worker's interpreter? (`python=` in the spec chooses it)".to_owned()),
            code,
        });
    }
    Ok(code)
}

/// The workers to start, and the `--tx` specs whose directories need a sync first.
pub(crate) fn plan_workers(
    args: &RunArgs,
    project_root: &Path,
    cwd: &Path,
) -> Result<(Vec<Planned>, Vec<String>), Failure> {
    let in_place = |n: usize| -> Vec<Planned> {
        (0..n)
            .map(|_| Planned {
                raw: "popen".to_owned(),
                spec: None,
                local_dir: Some(project_root.to_owned()),
            })
            .collect()
    };
    if let Some(n) = &args.numprocesses {
        let count = match n.as_str() {
            "auto" | "logical" => std::thread::available_parallelism().map_or(2, |n| n.get()),
            other => other
                .parse::<usize>()
                .ok()
                .filter(|&c| c > 0)
                .ok_or_else(|| {
                    Failure::usage(anyhow!("`-n {other}` is not a number of workers"))
                        .with_hint("give a positive number or `auto`")
                })?,
        };
        if !args.common.tx.is_empty() {
            crate::output::note("`-n` replaces `--tx`, as in pytest-xdist");
        }
        return Ok((in_place(count), Vec::new()));
    }
    if args.common.tx.is_empty() {
        return Ok((
            in_place(std::thread::available_parallelism().map_or(2, |n| n.get())),
            Vec::new(),
        ));
    }
    let mut out = Vec::new();
    let mut sync = Vec::new();
    for raw in &args.common.tx {
        let spec: XSpec = raw.parse().map_err(|e: compat::xspec::ParseError| {
            let carets: Vec<String> = e
                .render(raw)
                .lines()
                .skip(1)
                .filter(|l| !l.starts_with("hint:"))
                .map(str::to_owned)
                .collect();
            Failure::usage(anyhow!("invalid worker spec: {e}\n{}", carets.join("\n")))
        })?;
        let local_dir = match (&spec.gateway, &spec.via, &spec.chdir) {
            (Gateway::Popen, None, None) => Some(project_root.to_owned()),
            (Gateway::Popen, None, Some(d)) => {
                sync.push(raw.clone());
                Some(settings::normalize(&cwd.join(d)))
            }
            _ => {
                sync.push(raw.clone());
                None
            }
        };
        for _ in 0..spec.count.get() {
            out.push(Planned {
                raw: raw.clone(),
                spec: Some(spec.clone()),
                local_dir: local_dir.clone(),
            });
        }
    }
    Ok((out, sync))
}

/// Test paths are given relative to where rdist runs; workers run at the project root (or its
/// mirror), so existing paths (before any `::`) are rewritten relative to the project root.
/// Without any path, a run from a subdirectory runs that subdirectory, as pytest would.
pub(crate) fn map_args(args: &[String], cwd: &Path, project_root: &Path) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut any_path = false;
    let mut iter = args.iter().peekable();
    while let Some(a) = iter.next() {
        if a.starts_with('-') {
            out.push(a.clone());
            match option_value(a) {
                // The next token is this option's value: a path for `--ignore`, `--deselect`...
                Some(true) => {
                    if let Some(v) = iter.next() {
                        out.push(map_path(v, cwd, project_root).unwrap_or_else(|| v.clone()));
                    }
                }
                // ... or an expression for `-k`, `-m`, `-p`...: never a test path.
                Some(false) => out.extend(iter.next().cloned()),
                None => {}
            }
            continue;
        }
        match map_path(a, cwd, project_root) {
            Some(p) => {
                any_path = true;
                out.push(p);
            }
            None => out.push(a.clone()),
        }
    }
    if !any_path
        && cwd != project_root
        && let Ok(rel) = cwd.strip_prefix(project_root)
    {
        out.push(rel.display().to_string());
    }
    out
}

/// Whether pytest option `opt` takes the next token as its value (`Some(true)`: a path).
pub(crate) fn option_value(opt: &str) -> Option<bool> {
    const PATHS: [&str; 7] = [
        "--ignore",
        "--ignore-glob",
        "--deselect",
        "--rootdir",
        "--confcutdir",
        "--basetemp",
        "-c",
    ];
    const VALUES: [&str; 20] = [
        "-k",
        "-m",
        "-p",
        "-o",
        "-W",
        "-r",
        "--maxfail",
        "--tb",
        "--durations",
        "--log-level",
        "--log-file",
        "--junitxml",
        "--junit-xml",
        "--override-ini",
        "--capture",
        "--import-mode",
        "--cov",
        "--timeout",
        "--pyargs-root",
        "--color",
    ];
    if opt.contains('=') {
        return None;
    }
    if PATHS.contains(&opt) {
        Some(true)
    } else if VALUES.contains(&opt) {
        Some(false)
    } else {
        None
    }
}

/// `arg` (a path, maybe with `::` parts) relative to the project root, if it exists.
fn map_path(arg: &str, cwd: &Path, project_root: &Path) -> Option<String> {
    let (path, rest) = match arg.split_once("::") {
        Some((p, r)) => (p, Some(r)),
        None => (arg, None),
    };
    let abs = settings::normalize(&cwd.join(path));
    let rel = abs
        .strip_prefix(project_root)
        .ok()
        .filter(|_| abs.exists())?;
    let rel = if rel.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        rel.display().to_string()
    };
    Some(match rest {
        Some(r) => format!("{rel}::{r}"),
        None => rel,
    })
}

/// `-x`, `--exitfirst`, `--maxfail=N`, `--maxfail N` among pytest's arguments.
fn maxfail(args: &[String]) -> usize {
    let mut n = 0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-x" | "--exitfirst" => n = 1,
            "--maxfail" => n = it.next().and_then(|v| v.parse().ok()).unwrap_or(n),
            other => {
                if let Some(v) = other.strip_prefix("--maxfail=") {
                    n = v.parse().unwrap_or(n);
                }
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxfail_follows_pytest_options() {
        let v = |a: &[&str]| maxfail(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["-x"]), 1);
        assert_eq!(v(&["--maxfail=3"]), 3);
        assert_eq!(v(&["--maxfail", "2", "-k", "x"]), 2);
        assert_eq!(v(&["-k", "x"]), 0);
    }

    #[test]
    fn relative_test_paths_map_to_the_project_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("tests/unit")).unwrap();
        std::fs::write(root.join("tests/unit/test_x.py"), "").unwrap();
        let cwd = root.join("tests");
        let args: Vec<String> = ["unit/test_x.py::test_a", "-k", "slow", "unit"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            map_args(&args, &cwd, root),
            ["tests/unit/test_x.py::test_a", "-k", "slow", "tests/unit"]
        );
        assert_eq!(map_args(&[], &cwd, root), ["tests"]);
        // Option values are not test paths, except where they are paths.
        let args: Vec<String> = ["-k", "unit", "--ignore", "unit"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            map_args(&args, &cwd, root),
            ["-k", "unit", "--ignore", "tests/unit", "tests"]
        );
        assert_eq!(map_args(&[], root, root), Vec::<String>::new());
    }
}
