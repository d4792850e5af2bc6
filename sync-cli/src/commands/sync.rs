//! `rdist sync`: scan once, then sync every distinct target concurrently, each through its own
//! agent process, and report.

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use anyhow::anyhow;
use sync_core::hash::HashCache;
use sync_core::push::{PushError, PushOptions, PushReport, Session};
use sync_core::scan::{SourceTree, scan};

use crate::cli::SyncArgs;
use crate::exit::{Code, Failure};
use crate::output::{self, Progress};
use crate::settings::{SyncSettings, Target, TargetKind};
use crate::transport::popen::AgentChild;

/// One target's result.
pub struct TargetResult {
    pub target: Target,
    pub result: Result<PushReport, TargetError>,
}

/// A target that failed, with what its agent said on stderr.
#[derive(Debug)]
pub struct TargetError {
    pub error: anyhow::Error,
    pub hint: Option<String>,
    pub stderr: String,
    /// The agent reported the error itself (so its stderr only repeats it).
    pub remote: bool,
}

/// Runs `rdist sync`.
///
/// # Errors
/// Usage errors and a failed scan; failed targets are reported and give exit code 1.
pub fn run(args: &SyncArgs) -> Result<Code, Failure> {
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::usage(anyhow!(e).context("no current directory")))?;
    let settings = SyncSettings::from_args(args, &cwd)?;
    for n in &settings.notes {
        output::note(n);
    }
    let started = Instant::now();
    let progress = Progress::new(settings.targets.len());
    // Agents start and examine their destinations while the tree is scanned here.
    let (tree, results) = std::thread::scope(|scope| {
        let mut feeds = Vec::new();
        let mut handles = Vec::new();
        for t in &settings.targets {
            let (tx, rx) = mpsc::channel::<Option<Arc<SourceTree>>>();
            feeds.push(tx);
            let (s, progress) = (&settings, &progress);
            handles.push(scope.spawn(move || sync_one(rx, s, t, progress)));
        }
        let tree = scan_tree(&settings).map(Arc::new);
        for feed in feeds {
            let _ = feed.send(tree.as_ref().ok().cloned());
        }
        let results: Vec<TargetResult> = handles
            .into_iter()
            .zip(&settings.targets)
            .map(|(h, t)| TargetResult {
                target: t.clone(),
                result: h.join().unwrap_or_else(|_| {
                    Err(TargetError::local(anyhow!(
                        "internal error: the sync thread panicked"
                    )))
                }),
            })
            .collect();
        (tree, results)
    });
    progress.finish();
    let tree = tree?;
    let elapsed = started.elapsed();
    if std::env::var_os("RDIST_TIMINGS").is_some() {
        eprintln!("timings: total {elapsed:.3?}");
    }
    output::report_sync(&settings, &tree, &results, elapsed);
    let failed = results.iter().any(|r| r.result.is_err());
    let problems = !tree.problems.is_empty()
        || results.iter().any(|r| {
            r.result
                .as_ref()
                .is_ok_and(|p| !p.outcome.problems.is_empty())
        });
    Ok(if failed || problems {
        Code::Failed
    } else {
        Code::Ok
    })
}

fn scan_tree(settings: &SyncSettings) -> Result<SourceTree, Failure> {
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
    if let Err(e) = cache.save() {
        output::warn(&format!(
            "cannot save the hash cache (next run rehashes): {e}"
        ));
    }
    if std::env::var_os("RDIST_TIMINGS").is_some() {
        eprintln!(
            "timings: scan {:.3?} ({} files hashed)",
            t0.elapsed(),
            tree.hashed_files
        );
    }
    Ok(tree)
}

impl TargetError {
    fn local(error: anyhow::Error) -> TargetError {
        TargetError {
            error,
            hint: None,
            stderr: String::new(),
            remote: false,
        }
    }
}

fn push_options(s: &SyncSettings, dest: &Path) -> PushOptions {
    PushOptions {
        dest: dest.display().to_string(),
        ignore: s.agent_ignore.clone(),
        dry_run: s.dry_run,
        fsync: s.fsync,
        adopt: s.adopt,
        lock_wait_ms: s.lock_wait_ms,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn sync_one(
    tree: mpsc::Receiver<Option<Arc<SourceTree>>>,
    s: &SyncSettings,
    t: &Target,
    progress: &Progress,
) -> Result<PushReport, TargetError> {
    let TargetKind::Popen { dest } = &t.kind;
    let (agent, stdin, stdout) = AgentChild::spawn().map_err(|e| {
        TargetError::local(
            anyhow!(e).context("cannot start the local agent (`rdist agent --stdio`)"),
        )
    })?;
    // The session owns and finally drops both pipes, so the agent sees end-of-stream and exits.
    let res = Session::open(stdout, stdin, push_options(s, dest)).and_then(|session| {
        match tree.recv() {
            Ok(Some(tree)) => session.sync(&tree, &|f, b| progress.add(f, b)),
            // The scan failed and is reported by the caller; just hang up.
            _ => Err(PushError::Proto(sync_core::proto::ProtoError::Closed)),
        }
    });
    let (_, stderr) = agent.finish();
    if std::env::var_os("RDIST_TIMINGS").is_some() && !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    res.map_err(|e| {
        let hint = match &e {
            PushError::Remote { hint, .. } => hint.clone(),
            _ => None,
        };
        TargetError {
            remote: matches!(e, PushError::Remote { .. }),
            error: anyhow!(e),
            hint,
            stderr,
        }
    })
}
