//! `rdist sync`: scan once, then sync every distinct target concurrently, each through its own
//! agent process, and report.

use std::sync::{Arc, mpsc};
use std::time::Instant;

use anyhow::anyhow;
use sync_core::hash::HashCache;
use sync_core::push::{PushError, PushOptions, PushReport};
use sync_core::scan::{SourceTree, scan};

use crate::cli::SyncArgs;
use crate::exit::{Code, Failure};
use crate::output::{self, Progress};
use crate::settings::{SyncSettings, Target, Transport};
use crate::transport::{self, TargetError};

/// One target's result.
pub struct TargetResult {
    pub target: Target,
    pub result: Result<PushReport, TargetError>,
}

/// Runs `rdist sync`.
///
/// # Errors
/// Usage errors and a failed scan; failed targets are reported and give exit code 1.
pub fn run(args: &SyncArgs) -> Result<Code, Failure> {
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::usage(anyhow!(e).context("no current directory")))?;
    let args = crate::settings::sync_args(args, &cwd)?;
    let settings = SyncSettings::from_args(&args, &cwd)?;
    sync_settings(&settings)
}

/// Syncs per `settings` and reports; exit code 1 when a target or a file failed.
///
/// # Errors
/// A failed scan.
pub fn sync_settings(settings: &SyncSettings) -> Result<Code, Failure> {
    sync_settings_keep(settings, false).map(|(code, _, tree)| {
        // The process exits next: freeing tens of thousands of entries one by one would only
        // delay that by milliseconds.
        std::mem::forget(tree);
        code
    })
}

/// The exit code, the connections kept open (one per remote host), and the scanned tree.
pub type Kept = (Code, Vec<(Transport, transport::Opened)>, Arc<SourceTree>);

/// Like [`sync_settings`]; with `keep`, the connections to remote hosts stay open and are
/// returned (for test workers), one per host, with the scanned tree.
///
/// # Errors
/// A failed scan.
pub fn sync_settings_keep(settings: &SyncSettings, keep: bool) -> Result<Kept, Failure> {
    for n in &settings.notes {
        output::note(n);
    }
    let started = Instant::now();
    let labels: Vec<String> = settings.targets.iter().map(Target::dest_label).collect();
    let progress = Progress::new(&labels);
    // Agents start and examine their destinations while the tree is scanned here. Remote
    // targets on one host share one connection; local ones get an agent each.
    let groups = group_targets(&settings.targets);
    let (tree, results, kept) = std::thread::scope(|scope| {
        let mut feeds = Vec::new();
        let mut handles = Vec::new();
        for group in &groups {
            let (tx, rx) = mpsc::channel::<Option<Arc<SourceTree>>>();
            feeds.push(tx);
            let (s, progress) = (settings, &progress);
            let keep = keep && settings.targets[group[0]].transport != Transport::Local;
            handles.push(scope.spawn(move || sync_group(rx, s, group, progress, keep)));
        }
        let scanned = scan_tree(settings);
        let (tree, cache) = match scanned {
            Ok((tree, cache)) => (Ok(Arc::new(tree)), Some(cache)),
            Err(e) => (Err(e), None),
        };
        for feed in feeds {
            let _ = feed.send(tree.as_ref().ok().cloned());
        }
        // Saved while the agents finish: not before they get the tree, and not while manifests
        // are compared and data is sent either, where on two cores it would take turns with
        // the work the sync waits for. (At most a second later than the tree, though.)
        if let Some(cache) = cache {
            let progress = &progress;
            scope.spawn(move || {
                let until = Instant::now() + std::time::Duration::from_secs(1);
                while !progress.all_sent() && Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                if let Err(e) = cache.save() {
                    output::warn(&format!(
                        "cannot save the hash cache (next run rehashes): {e}"
                    ));
                }
            });
        }
        let mut results: Vec<Option<Result<PushReport, TargetError>>> =
            settings.targets.iter().map(|_| None).collect();
        let mut kept = Vec::new();
        for (h, group) in handles.into_iter().zip(&groups) {
            match h.join() {
                Ok((done, link)) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                    if let Some(l) = link {
                        kept.push((settings.targets[group[0]].transport.clone(), l));
                    }
                }
                Err(_) => {
                    for &i in group {
                        results[i] = Some(Err(TargetError::local(anyhow!(
                            "internal error: the sync thread panicked"
                        ))));
                    }
                }
            }
        }
        let results: Vec<TargetResult> = results
            .into_iter()
            .zip(&settings.targets)
            .map(|(r, t)| TargetResult {
                target: t.clone(),
                result: r.unwrap_or_else(|| {
                    Err(TargetError::local(anyhow!(
                        "internal error: target not synced"
                    )))
                }),
            })
            .collect();
        (tree, results, kept)
    });
    progress.finish();
    let tree = tree?;
    let elapsed = started.elapsed();
    if std::env::var_os("RDIST_TIMINGS").is_some() {
        eprintln!("timings: total {elapsed:.3?}");
    }
    output::report_sync(settings, &tree, &results, elapsed);
    let failed = results.iter().any(|r| r.result.is_err());
    let problems = !tree.problems.is_empty()
        || results.iter().any(|r| {
            r.result
                .as_ref()
                .is_ok_and(|p| !p.outcome.problems.is_empty())
        });
    let code = if failed || problems {
        Code::Failed
    } else {
        Code::Ok
    };
    Ok((code, kept, tree))
}

/// The scanned tree, and the hash cache to save.
fn scan_tree(settings: &SyncSettings) -> Result<(SourceTree, HashCache), Failure> {
    let t0 = Instant::now();
    let mut cache = match &settings.cache_file {
        Some(f) => HashCache::load(f.clone()),
        None => HashCache::in_memory(),
    };
    let tree = scan(
        &settings.project_root,
        &settings.roots,
        &settings.filter,
        &mut cache,
    )
    .map_err(Failure::failed)?;
    if std::env::var_os("RDIST_TIMINGS").is_some() {
        eprintln!(
            "timings: scan {:.3?} ({} files hashed, {} directories not read)",
            t0.elapsed(),
            tree.hashed_files,
            tree.reused_dirs
        );
    }
    Ok((tree, cache))
}

pub(crate) fn push_options(s: &SyncSettings, t: &Target) -> PushOptions {
    PushOptions {
        dest: t.dest.clone(),
        ignore: s.agent_ignore.clone(),
        dry_run: s.dry_run,
        fsync: s.fsync,
        adopt: s.adopt,
        lock_wait_ms: s.lock_wait_ms,
        base: t.base,
        delta_min: match t.transport {
            Transport::Local => sync_core::delta::DELTA_MIN_SIZE,
            _ => sync_core::delta::DELTA_MIN_SIZE_REMOTE,
        },
        token: match (&t.transport, &s.token) {
            (Transport::Socket { .. }, Some(tok)) => Some(sync_core::auth::Key::from_token(tok)),
            _ => None,
        },
        version: env!("CARGO_PKG_VERSION").to_owned(),
        compress: s.compress && t.transport != Transport::Local,
        leaves: t.transport == Transport::Local,
        local_sources: t.transport == Transport::Local,
    }
}

/// Indices of targets that share a connection: one group per remote host, one per local target.
fn group_targets(targets: &[Target]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let shared = t.transport != Transport::Local;
        match groups
            .iter_mut()
            .find(|g| shared && targets[g[0]].transport == t.transport)
        {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// Syncs a group of targets over one connection, reconnecting after a failed one.
type GroupResult = (
    Vec<(usize, Result<PushReport, TargetError>)>,
    Option<transport::Opened>,
);

fn sync_group(
    tree: mpsc::Receiver<Option<Arc<SourceTree>>>,
    s: &SyncSettings,
    group: &[usize],
    progress: &Progress,
    keep: bool,
) -> GroupResult {
    let mut out = Vec::new();
    let mut tree_cell: Option<Option<Arc<SourceTree>>> = None;
    let mut link: Option<transport::Opened> = None;
    for &i in group {
        let t = &s.targets[i];
        let opts = push_options(s, t);
        let opened = match link.take() {
            Some(l) => l,
            None => match transport::open(t, s, opts.clone()) {
                Ok(l) => l,
                Err(e) => {
                    progress.done(i, "failed");
                    out.push((i, Err(e)));
                    continue;
                }
            },
        };
        let transport::Opened { conn, child } = opened;
        let res = conn.begin(opts).and_then(|session| {
            progress.state(i, "waiting for the scan");
            let tree = tree_cell.get_or_insert_with(|| tree.recv().ok().flatten());
            progress.state(i, "comparing");
            match tree {
                Some(tree) => session.sync_reuse(tree, &|f, b| progress.add(i, f, b)),
                // The scan failed and is reported by the caller; just hang up.
                None => Err(PushError::Proto(sync_core::proto::ProtoError::Closed)),
            }
        });
        match res {
            Ok((report, conn)) => {
                progress.done(
                    i,
                    if report.up_to_date {
                        "up to date"
                    } else {
                        "done"
                    },
                );
                out.push((i, Ok(report)));
                link = Some(transport::Opened { conn, child });
            }
            Err(e) => {
                progress.done(i, "failed");
                let stderr = child.map(|c| c.finish().1).unwrap_or_default();
                out.push((
                    i,
                    Err(transport::lost(t, TargetError::from_push(e, stderr))),
                ));
            }
        }
    }
    if keep {
        return (out, link);
    }
    if let Some(transport::Opened { conn, child }) = link {
        // Closing the connection ends the agent.
        drop(conn);
        if let Some(c) = child {
            let (_, stderr) = c.finish();
            if std::env::var_os("RDIST_TIMINGS").is_some() && !stderr.is_empty() {
                eprintln!("{stderr}");
            }
        }
    }
    (out, None)
}
