//! Everything rdist prints. stdout carries data (`--json`, `-v` listings, dry-run listings);
//! stderr carries progress, warnings, errors and the summary line. Progress bars are drawn only
//! on a terminal; nothing depends on colour.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sync_core::scan::SourceTree;

use crate::commands::sync::TargetResult;
use crate::exit::Failure;
use crate::settings::SyncSettings;

/// Prints a fatal failure: `error:`, its causes, the hint.
pub fn print_failure(f: &Failure) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {}", f.error);
    for cause in f.error.chain().skip(1) {
        let _ = writeln!(err, "  Caused by: {cause}");
    }
    if let Some(h) = &f.hint {
        let _ = writeln!(err, "hint: {h}");
    }
}

pub fn note(msg: &str) {
    eprintln!("note: {msg}");
}

pub fn warn(msg: &str) {
    eprintln!("warning: {msg}");
}

/// Bytes in binary units, as people read them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A count with thousands separators.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The sync progress display: one line per target (connecting, waiting for the scan, syncing
/// with files and bytes sent, up to date, done, failed). Drawn only when stderr is a terminal.
pub struct Progress {
    _multi: MultiProgress,
    lines: Vec<ProgressBar>,
    files: Vec<std::sync::atomic::AtomicU64>,
    /// Targets that have been sent all their data, or are done.
    sent: std::sync::atomic::AtomicUsize,
    all_sent: Vec<std::sync::atomic::AtomicBool>,
}

impl Progress {
    pub fn new(labels: &[String]) -> Progress {
        let draw = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(draw);
        let style = ProgressStyle::with_template("{spinner} {prefix}: {msg} {bytes} {elapsed}")
            .expect("valid template");
        let lines = labels
            .iter()
            .map(|l| {
                let bar = multi.add(ProgressBar::no_length());
                bar.set_style(style.clone());
                bar.set_prefix(l.clone());
                bar.set_message("connecting");
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            })
            .collect();
        Progress {
            _multi: multi,
            files: labels.iter().map(|_| Default::default()).collect(),
            sent: Default::default(),
            all_sent: labels.iter().map(|_| Default::default()).collect(),
            lines,
        }
    }

    fn sent_all_to(&self, i: usize) {
        use std::sync::atomic::Ordering;
        if !self.all_sent[i].swap(true, Ordering::Relaxed) {
            self.sent.fetch_add(1, Ordering::Release);
        }
    }

    /// Whether every target has been sent all its data (or is done): then only the agents are
    /// still at work, finishing, and this process's own work no longer competes with the sync.
    pub fn all_sent(&self) -> bool {
        self.sent.load(std::sync::atomic::Ordering::Acquire) >= self.lines.len()
    }

    /// Sets target `i`'s state text.
    pub fn state(&self, i: usize, msg: &str) {
        self.lines[i].set_message(msg.to_owned());
    }

    /// Counts data sent to target `i`.
    pub fn add(&self, i: usize, files: u64, bytes: u64) {
        if files == 0 && bytes == 0 {
            // Everything asked for has been sent (see `sync_core::push::Progress`).
            self.sent_all_to(i);
        }
        let n = self.files[i].fetch_add(files, std::sync::atomic::Ordering::Relaxed) + files;
        if files > 0 {
            self.lines[i].set_message(format!("syncing, {} files sent,", count(n)));
        }
        if bytes > 0 {
            self.lines[i].inc(bytes);
        }
    }

    /// Ends target `i`'s line with `msg`.
    pub fn done(&self, i: usize, msg: &str) {
        self.sent_all_to(i);
        self.lines[i].finish_with_message(msg.to_owned());
    }

    pub fn finish(&self) {
        for l in &self.lines {
            l.finish_and_clear();
        }
    }
}

/// Problems shown before the rest are summarised (all with `-v`).
const MAX_PROBLEMS_SHOWN: usize = 20;

fn print_problems(verbose: bool, problems: impl ExactSizeIterator<Item = String>) {
    let total = problems.len();
    let limit = if verbose {
        usize::MAX
    } else {
        MAX_PROBLEMS_SHOWN
    };
    for p in problems.take(limit) {
        warn(&p);
    }
    if total > limit {
        warn(&format!(
            "... and {} more (`-v` shows all, `--json` lists all)",
            total - limit
        ));
    }
}

/// Prints per-target errors and problems, listings, the summary line, and `--json`.
pub fn report_sync(
    s: &SyncSettings,
    tree: &SourceTree,
    results: &[TargetResult],
    elapsed: Duration,
) {
    let files_scanned = tree
        .manifest
        .entries()
        .iter()
        .filter(|e| matches!(e.kind, sync_core::manifest::Kind::File { .. }))
        .count() as u64;
    let mut stdout = std::io::stdout().lock();
    print_problems(s.verbose, tree.problems.iter().map(ToString::to_string));
    let (mut sent, mut deleted, mut literal, mut delta, mut wire, mut up_to_date) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let multi = results.len() > 1;
    for r in results {
        let label = r.target.dest_label();
        match &r.result {
            Ok(rep) => {
                sent += if s.dry_run {
                    rep.plan.transfers.len()
                } else {
                    rep.sent.len()
                } as u64;
                literal += rep.literal_bytes;
                delta += rep.delta_bytes;
                wire += rep.wire_sent + rep.wire_received;
                up_to_date += u64::from(rep.up_to_date);
                deleted += if s.dry_run {
                    rep.plan.deleted.len() as u64
                } else {
                    rep.outcome.deleted
                };
                let listing = s.dry_run || (s.verbose && !s.json);
                if listing {
                    let prefix = if multi {
                        format!("{label}: ")
                    } else {
                        String::new()
                    };
                    let paths: Vec<u32> = if s.dry_run {
                        rep.plan.transfers.clone()
                    } else {
                        rep.sent.clone()
                    };
                    let verb = if s.dry_run { "would send" } else { "sent" };
                    let mut out: Box<dyn Write> = if s.json {
                        Box::new(std::io::stderr())
                    } else {
                        Box::new(&mut stdout)
                    };
                    for i in paths {
                        let _ = writeln!(
                            out,
                            "{prefix}{verb} {}",
                            tree.manifest.entries()[i as usize].path
                        );
                    }
                    let verb = if s.dry_run { "would delete" } else { "deleted" };
                    for p in rep
                        .plan
                        .deleted
                        .iter()
                        .filter(|p| !rep.outcome.kept.contains(p))
                    {
                        let _ = writeln!(out, "{prefix}{verb} {p}");
                    }
                }
                print_problems(
                    s.verbose,
                    rep.outcome
                        .problems
                        .iter()
                        .map(|(path, msg)| format!("{label}: `{path}`: {msg}")),
                );
            }
            Err(e) => {
                eprintln!("error: sync to `{label}` failed: {:#}", e.error);
                if !e.stderr.is_empty() && !e.remote {
                    eprintln!(
                        "  agent stderr: {}",
                        e.stderr.replace('\n', "\n  agent stderr: ")
                    );
                }
                if let Some(h) = &e.hint {
                    eprintln!("hint: {h}");
                }
            }
        }
    }
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    let ok = results.len() - failed;
    let what = if s.dry_run { "dry run" } else { "synced" };
    let mut line = format!(
        "rdist: {what} {ok} of {} target{} in {:.2}s: {} files scanned",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        elapsed.as_secs_f64(),
        count(files_scanned),
    );
    if up_to_date == ok as u64 && ok > 0 {
        line.push_str(", all up to date");
    } else {
        let (s_verb, d_verb) = if s.dry_run {
            ("to send", "to delete")
        } else {
            ("sent", "deleted")
        };
        line.push_str(&format!(
            ", {} {s_verb} ({} literal, {} by delta), {} {d_verb}",
            count(sent),
            human_bytes(literal),
            human_bytes(delta),
            count(deleted)
        ));
        // Compression applies to remote workers only.
        if s.compress
            && s.targets
                .iter()
                .any(|t| t.transport != crate::settings::Transport::Local)
        {
            line.push_str(&format!(", {} on the wire", human_bytes(wire)));
        }
    }
    eprintln!("{line}");
    if s.json {
        let targets: Vec<_> = results
            .iter()
            .map(|r| match &r.result {
                Ok(rep) => json!({
                    "specs": r.target.specs,
                    "workers": r.target.workers,
                    "dest": r.target.dest_label(),
                    "ok": true,
                    "up_to_date": rep.up_to_date,
                    "files_sent": if s.dry_run { rep.plan.transfers.len() } else { rep.sent.len() },
                    "files_deleted": if s.dry_run { rep.plan.deleted.len() as u64 } else { rep.outcome.deleted },
                    "literal_bytes": rep.literal_bytes,
                    "delta_bytes": rep.delta_bytes,
                    "delta_files": rep.delta_files,
                    "local_copies": rep.plan.local_copies,
                    "wire_bytes": rep.wire_sent + rep.wire_received,
                    "agent_version": rep.agent_version,
                    "problems": rep.outcome.problems.iter().map(|(p, m)| json!({"path": p, "message": m})).collect::<Vec<_>>(),
                }),
                Err(e) => json!({
                    "specs": r.target.specs,
                    "workers": r.target.workers,
                    "dest": r.target.dest_label(),
                    "ok": false,
                    "error": format!("{:#}", e.error),
                    "hint": e.hint,
                    "agent_stderr": e.stderr,
                }),
            })
            .collect();
        let doc = json!({
            "dry_run": s.dry_run,
            "files_scanned": files_scanned,
            "entries": tree.manifest.len(),
            "hashed_files": tree.hashed_files,
            "files_sent": sent,
            "files_deleted": deleted,
            "literal_bytes": literal,
            "delta_bytes": delta,
            "wire_bytes": wire,
            "seconds": elapsed.as_secs_f64(),
            "targets": targets,
            "problems": tree.problems.iter().map(|p| json!({"path": p.path, "message": p.message})).collect::<Vec<_>>(),
        });
        let _ = writeln!(stdout, "{doc}");
    }
}
