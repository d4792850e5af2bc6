//! The behaviour differences a migration explains: what xdist did with these settings that
//! rdist does differently, and settings that never did what they say.

use std::collections::HashSet;

use crate::xspec::{Gateway, NoteLevel as SpecLevel};

use super::super::options::{Found, Opt};
use super::super::{Format, Origin};
use super::resolve::{Context, Resolved};
use super::{Input, Note, NoteLevel};

pub(super) fn collect(
    ctx: &Context<'_>,
    all: &Resolved,
    found: &[Found],
    input: &Input<'_>,
    prefix: &[String],
) -> Vec<Note> {
    let mut notes = Vec::new();
    let mut add = |level, origin: Option<&Origin>, message: String| {
        notes.push(Note {
            level,
            origin: origin.cloned(),
            message,
        });
    };
    let python_m = prefix.len() == 2 && prefix[1] == "-m";
    if !prefix.is_empty() && !python_m {
        add(
            NoteLevel::Info,
            Some(&Origin::Command),
            format!(
                "`{}` before `pytest` is not part of the translation: run the `rdist run` line \
                 where pytest ran",
                super::join(prefix)
            ),
        );
    }

    const LONG: [&str; 6] = [
        "--rsyncdir",
        "--rsyncignore",
        "--distload",
        "--numprocesses",
        "--override-ini",
        "--dist",
    ];
    for f in found {
        let Opt::Other(text) = &f.opt else { continue };
        let name = text.split('=').next().unwrap_or(text);
        let full: Vec<&str> = LONG
            .into_iter()
            .filter(|l| name.len() >= 5 && l.len() > name.len() && l.starts_with(name))
            .collect();
        if name.starts_with("--") && !full.is_empty() {
            add(
                NoteLevel::Warn,
                Some(&f.origin),
                format!(
                    "`{name}` is not an option: pytest takes no abbreviations and stops with \
                     `unrecognized arguments`; did you mean `{}`?",
                    full.join("` or `")
                ),
            );
        }
    }

    // Workers and mode.
    let first_tx = all.tx.first().map(|s| &s.origin);
    if let Some((n, origin)) = &all.numprocesses
        && all.count() == Some(Some(0))
    {
        add(
            NoteLevel::Info,
            Some(origin),
            format!("`-n {n}` turns distribution off in pytest-xdist"),
        );
    }
    if !all.active() && !all.tx.is_empty() {
        add(
            NoteLevel::Warn,
            first_tx,
            "`--tx` without `-d`, `--dist` or `-n` is inert in pytest-xdist: the tests ran \
             in-process and these workers were never started; the equivalent is plain `pytest` \
             (add `-d` to distribute with `rdist run`)"
                .to_owned(),
        );
    }
    if all.local_workers()
        && !all.tx.is_empty()
        && let Some((n, origin)) = &all.numprocesses
    {
        add(
            NoteLevel::Info,
            Some(origin),
            format!(
                "`-n {n}` replaces the `--tx` workers, as in pytest-xdist: they were never used"
            ),
        );
    }
    if let (Some(origin), Some((mode, _))) = (&all.distload, &all.dist_opt)
        && mode != "load"
        && mode != "no"
    {
        add(
            NoteLevel::Info,
            Some(origin),
            format!("`-d` means `--dist load` and overrides `--dist {mode}`, as in pytest-xdist"),
        );
    }
    let mut seen = HashSet::new();
    for spec in all.tx.iter().chain(&all.px) {
        let Some(parsed) = &spec.parsed else {
            add(
                NoteLevel::Info,
                Some(&spec.origin),
                format!(
                    "`{}` holds a shell variable: kept as written and checked when rdist runs",
                    spec.text
                ),
            );
            continue;
        };
        for n in parsed.notes() {
            let level = match n.level {
                SpecLevel::Warn => NoteLevel::Info,
                SpecLevel::Error => NoteLevel::Warn,
            };
            add(level, Some(&spec.origin), n.message);
        }
        let remote = !matches!(parsed.gateway, Gateway::Popen);
        if all.syncs() && remote && parsed.chdir.is_none() && seen.insert(spec.text.clone()) {
            add(
                NoteLevel::Info,
                Some(&spec.origin),
                format!(
                    "`{}` has no `chdir=`: pytest-xdist synced into `pyexecnetcache` (under the \
                     login directory, or the socket server's directory), shared by every \
                     project; rdist uses a per-project directory in its cache on the host (add \
                     `//chdir=pyexecnetcache` to keep the old place)",
                    spec.text
                ),
            );
        }
    }

    // Roots.
    if all.syncs() {
        add(
            NoteLevel::Info,
            None,
            "pytest-xdist also copied its own `pytest` and `_pytest` packages to every synced \
             worker (shadowing the worker's pytest, without its dependencies); rdist does not: \
             install pytest on the workers"
                .to_owned(),
        );
        let moved: Vec<&str> = all
            .roots
            .iter()
            .filter_map(|r| r.rel.as_deref())
            .filter(|rel| *rel == "." || rel.contains('/'))
            .collect();
        if !moved.is_empty() {
            add(
                NoteLevel::Info,
                None,
                format!(
                    "roots land at their path relative to the project root (`{}`), not at \
                     `<chdir>/<basename>` as in pytest-xdist, so test ids match local ones; \
                     `rdist sync --layout xdist` keeps the old placement",
                    moved.join("`, `")
                ),
            );
        }
        if let Some(cfg) = ctx.config
            && cfg.format != Format::PyprojectEmpty
            && !all.roots.is_empty()
        {
            let name = cfg.path.file_name().unwrap_or_default().to_string_lossy();
            let synced = all.roots.iter().any(|r| {
                r.rel
                    .as_deref()
                    .is_some_and(|rel| rel == "." || rel == name)
            });
            if !synced {
                add(
                    NoteLevel::Info,
                    None,
                    format!(
                        "pytest-xdist did not sync `{name}` (not among the roots), so workers ran \
                         without its settings; rdist always syncs the project's config files"
                    ),
                );
            }
        }
        add(
            NoteLevel::Info,
            None,
            "entries the ignore rules match are no longer deleted on the workers (pytest-xdist \
             deleted a worker's `.venv` or `build.log` on every sync)"
                .to_owned(),
        );
        for r in all.roots.iter().filter(|r| r.separate_cli) {
            if (input.exists)(&r.abs) && !r.legacy.starts_with('/') {
                add(
                    NoteLevel::Info,
                    Some(&r.origin),
                    format!(
                        "`--rsyncdir {}` (an existing relative path as a separate argument) made \
                         pytest-xdist 3.x stop with an INTERNALERROR (`make_reltoroot`); rdist \
                         accepts it",
                        r.legacy
                    ),
                );
            }
        }
    } else if all.active() && !all.local_workers() && !all.roots.is_empty() {
        add(
            NoteLevel::Info,
            None,
            "every worker is a local `popen` without `chdir=`: pytest-xdist synced nothing, and \
             `rdist run` runs them in place too"
                .to_owned(),
        );
    }
    let has_sync_settings = !all.roots.is_empty() || !all.ignores.is_empty();
    if has_sync_settings && all.tx.is_empty() && all.numprocesses.is_none() {
        add(
            NoteLevel::Info,
            None,
            "no `--tx` workers found: these roots served the `--tx` specs of the pytest command \
             line; add them to the `rdist run` line (or translate that command with `rdist \
             migrate --command '...'`); without `--tx`, `rdist run` starts one local worker per \
             CPU in place"
                .to_owned(),
        );
    }

    // Leftovers `rdist migrate --write` does not edit.
    for g in &input.dead_globals {
        let origin = Origin::File {
            path: g.path.clone(),
            line: g.line,
        };
        add(
            NoteLevel::Warn,
            Some(&origin),
            format!(
                "`{}` in conftest.py is dead: pytest-xdist ignores conftest globals since 1.5 \
                 (2010); delete it by hand (`--write` does not edit Python code, where the name \
                 may still be used; `--check` does not count it)",
                g.name
            ),
        );
    }
    let from_env: Vec<&str> = found
        .iter()
        .filter(|f| f.origin == Origin::Env && is_rsync(&f.opt))
        .map(|f| f.text.as_str())
        .collect();
    if !from_env.is_empty() {
        add(
            NoteLevel::Info,
            Some(&Origin::Env),
            format!(
                "`PYTEST_ADDOPTS` is not edited: remove `{}` where it is set",
                from_env.join("`, `")
            ),
        );
    }
    notes
}

/// A deprecated option `rdist migrate --write` removes from `addopts`.
fn is_rsync(opt: &Opt) -> bool {
    matches!(
        opt,
        Opt::Tx(_) | Opt::Px(_) | Opt::RsyncDir(_) | Opt::RsyncIgnore(_) | Opt::Override { .. }
    )
}
