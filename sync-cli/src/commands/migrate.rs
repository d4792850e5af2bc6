//! `rdist migrate`: reads pytest-xdist's rsync settings where pytest would (the config file it
//! discovers, `PYTEST_ADDOPTS`, `--command`, dead `conftest.py` globals) and shows their rdist
//! translation: the settings found (file:line), the `rdist.toml` to write, an equivalent
//! `rdist run` line, the edits to the legacy config file (a unified diff) and every behaviour
//! difference. `--write` writes `rdist.toml` and the edits, all or nothing (`migrate::write`);
//! `--check` exits 1 while legacy rsync settings remain; `--json` for tools.

use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use compat::legacy::{self, Migration, NoteLevel};
use serde_json::json;

use crate::cli::{ConfigTarget, MigrateArgs};
use crate::exit::{Code, Failure};

mod write;

/// Runs `rdist migrate`.
///
/// # Errors
/// A legacy config or command line that cannot be read (exit 4, located, with a hint), or an
/// `rdist.toml` that exists with other content (`--write`).
pub fn run(args: &MigrateArgs) -> Result<Code, Failure> {
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::usage(anyhow!(e).context("cannot read the current directory")))?;
    let located = |e: legacy::LegacyError| {
        let failure = Failure::usage(anyhow!("{}", e.located(&cwd)));
        match e.hint() {
            Some(hint) => failure.with_hint(hint),
            None => failure,
        }
    };
    let config = legacy::discover_config(&cwd).map_err(located)?;
    let edit = match &config {
        Some(cfg) if cfg.format != legacy::Format::PyprojectEmpty => {
            let text = std::fs::read_to_string(&cfg.path).map_err(|e| {
                let shown = show_path(&cfg.path, &cwd);
                Failure::failed(anyhow!(e).context(format!("cannot read `{shown}`")))
            })?;
            legacy::edit::plan(cfg, &text).map_err(located)?
        }
        _ => None,
    };
    let scan_root = config.as_ref().map_or(cwd.as_path(), |c| c.dir());
    let dead_globals = legacy::discover::dead_conftest_globals(scan_root);
    let env_addopts = std::env::var("PYTEST_ADDOPTS")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let exists = |p: &Path| p.exists();
    let input = legacy::Input {
        cwd: cwd.clone(),
        config,
        env_addopts,
        command: args.command.clone(),
        dead_globals,
        exists: &exists,
    };
    let mut m = legacy::migrate(&input).map_err(located)?;
    if let Some(edit) = &edit {
        m.notes.extend(edit.notes());
    }
    let mut edits: Vec<legacy::FileEdit> = edit.into_iter().collect();
    if args.into == ConfigTarget::Pyproject {
        into_pyproject(&m, &mut edits)?;
    }
    let edits: Vec<legacy::FileEdit> = edits.into_iter().filter(|e| e.changes()).collect();

    let mut out = std::io::stdout().lock();
    if args.json {
        let value = json!({
            "legacy_rsync": m.has_legacy_rsync(),
            "rdist_toml_path": (args.into == ConfigTarget::RdistToml).then(|| m.rdist_toml_path()),
            "rdist_toml": m.rdist_toml().filter(|_| args.into == ConfigTarget::RdistToml),
            "run_line": m.run.to_string(),
            "edits": edits.iter().map(|e| json!({
                "path": e.path,
                "removed": e.removed,
                "kept": e.kept,
                "diff": e.unified_diff(&show_path(&e.path, &m.cwd)),
            })).collect::<Vec<_>>(),
            "migration": m,
        });
        let _ = writeln!(out, "{value:#}");
    } else if args.check {
        let _ = out.write_all(check_report(&m).as_bytes());
    } else {
        let _ = out.write_all(preview(&m, &edits, args).as_bytes());
    }
    drop(out);

    if args.check {
        return Ok(if m.has_legacy_rsync() {
            Code::Failed
        } else {
            Code::Ok
        });
    }
    if args.write {
        write_all(&m, &edits, args.into)?;
    }
    Ok(Code::Ok)
}

/// `--into pyproject`: rdist's settings as `[tool.rdist.*]` tables at the end of the project's
/// `pyproject.toml`, on top of that file's own edits if it is the legacy config file.
fn into_pyproject(m: &Migration, edits: &mut Vec<legacy::FileEdit>) -> Result<(), Failure> {
    if m.config.is_empty() {
        return Ok(());
    }
    let path = m.project_root.join("pyproject.toml");
    let shown = show_path(&path, &m.cwd);
    if m.rdist_toml_path().exists() {
        return Err(Failure::usage(anyhow!(
            "`{}` exists and would win over [tool.rdist]",
            show_path(&m.rdist_toml_path(), &m.cwd)
        ))
        .with_hint("leave out `--into pyproject`, or remove `rdist.toml`"));
    }
    let tables = m.config.render_tool(&m.source_label());
    let index = edits.iter().position(|e| e.path == path);
    let base = match index {
        Some(i) => edits[i].after.clone(),
        None => match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(
                    Failure::usage(anyhow!("no `{shown}` to write [tool.rdist] into"))
                        .with_hint("leave out `--into pyproject` to write `rdist.toml`"),
                );
            }
            Err(e) => {
                return Err(Failure::failed(
                    anyhow!(e).context(format!("cannot read `{shown}`")),
                ));
            }
        },
    };
    let after = legacy::edit::append_tool_rdist(&base, &tables).map_err(|e| {
        Failure::usage(anyhow!("{e}"))
            .with_hint("merge the preview into it by hand, or leave out `--into pyproject`")
    })?;
    match index {
        Some(i) => edits[i].after = after,
        None => edits.push(legacy::FileEdit {
            path,
            before: base,
            after,
            removed: Vec::new(),
            kept: Vec::new(),
        }),
    }
    Ok(())
}

/// Writes `rdist.toml` (refusing to replace a different one) and the edits, all or nothing.
fn write_all(m: &Migration, edits: &[legacy::FileEdit], into: ConfigTarget) -> Result<(), Failure> {
    let path = m.rdist_toml_path();
    let shown = show_path(&path, &m.cwd);
    let mut changes = Vec::new();
    match m.rdist_toml().filter(|_| into == ConfigTarget::RdistToml) {
        None => {}
        Some(text) => match std::fs::read_to_string(&path) {
            Ok(existing) if existing == text => eprintln!("`{shown}` is up to date"),
            Ok(_) => {
                return Err(
                    Failure::usage(anyhow!("`{shown}` exists with other content")).with_hint(
                        "merge the preview into it by hand, or remove it and run again; nothing \
                         was changed",
                    ),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => changes.push(write::Change {
                path: path.clone(),
                before: None,
                after: text,
            }),
            Err(e) => {
                return Err(Failure::failed(
                    anyhow!(e).context(format!("cannot read `{shown}`")),
                ));
            }
        },
    }
    for e in edits {
        changes.push(write::Change {
            path: e.path.clone(),
            before: Some(e.before.clone()),
            after: e.after.clone(),
        });
    }
    if changes.is_empty() {
        if m.rdist_toml().is_none() {
            match existing_config(&m.project_root) {
                Some(where_) => eprintln!("nothing to write: rdist's settings are in {where_}"),
                None => {
                    eprintln!("nothing to write: no rdist settings in the legacy configuration")
                }
            }
        }
        return Ok(());
    }
    write::apply(&changes, &|p| show_path(p, &m.cwd))?;
    for c in &changes {
        let verb = if c.before.is_some() {
            "edited"
        } else {
            "wrote"
        };
        eprintln!("{verb} `{}`", show_path(&c.path, &m.cwd));
    }
    Ok(())
}

fn show_path(path: &Path, cwd: &Path) -> String {
    path.strip_prefix(cwd).unwrap_or(path).display().to_string()
}

fn settings_lines(m: &Migration, rsync_only: bool) -> String {
    let mut out = String::new();
    for s in m.settings.iter().filter(|s| s.rsync || !rsync_only) {
        out.push_str(&format!(
            "  {}: {}\n",
            s.origin.display_from(&m.cwd),
            s.text
        ));
    }
    out
}

/// `--check`: the legacy rsync settings that remain (and dead globals, which do not count).
fn check_report(m: &Migration) -> String {
    let mut out = if m.has_legacy_rsync() {
        format!(
            "legacy rsync settings remain:\n{}run `rdist migrate` to see their rdist \
             translation\n",
            settings_lines(m, true)
        )
    } else {
        "no legacy rsync settings\n".to_owned()
    };
    for s in m.settings.iter().filter(|s| s.dead) {
        out.push_str(&format!(
            "warning: {}: `{}` is dead (ignored by pytest-xdist since 1.5); delete it\n",
            s.origin.display_from(&m.cwd),
            s.text
        ));
    }
    out
}

/// The default output: everything a migration would do.
/// Where rdist's own settings already are (after an earlier `--write`), for messages.
fn existing_config(project_root: &Path) -> Option<String> {
    let loaded = compat::config::discover(project_root).ok()??;
    Some(if loaded.in_pyproject {
        "`[tool.rdist]` of `pyproject.toml`".to_owned()
    } else {
        "`rdist.toml`".to_owned()
    })
}

fn preview(m: &Migration, edits: &[legacy::FileEdit], args: &MigrateArgs) -> String {
    let writing = args.write;
    let mut out = String::new();
    match &m.config_file {
        Some(path) => {
            let section = m.config_format.map_or("", |f| f.section());
            out.push_str(&format!(
                "pytest config: {} {section}\n",
                show_path(path, &m.cwd)
            ));
        }
        None => out.push_str("pytest config: none found\n"),
    }
    if m.settings.is_empty() {
        out.push_str("\nno legacy xdist settings found\n");
    } else {
        out.push_str("\nlegacy settings:\n");
        out.push_str(&settings_lines(m, false));
    }
    let mappings = |title: &str, list: &[legacy::Mapping], out: &mut String| {
        if list.is_empty() {
            return;
        }
        out.push_str(&format!("\n{title}:\n"));
        for map in list {
            let to = map
                .rdist
                .as_deref()
                .map_or("(left out)".to_owned(), |p| format!("`{p}`"));
            out.push_str(&format!(
                "  `{}` ({}) -> {to}\n",
                map.legacy,
                map.origin.display_from(&m.cwd)
            ));
        }
    };
    mappings("roots", &m.roots, &mut out);
    mappings("ignore patterns", &m.ignores, &mut out);
    let target = show_path(&m.rdist_toml_path(), &m.cwd);
    match m.rdist_toml() {
        Some(_) if args.into == ConfigTarget::Pyproject => {
            let action = if writing { "adding" } else { "`--write` adds" };
            out.push_str(&format!(
                "\n[tool.rdist] ({action} it to `pyproject.toml`, in the diff below)\n"
            ));
        }
        Some(text) => {
            let action = if writing {
                "writing"
            } else {
                "`rdist migrate --write` writes"
            };
            out.push_str(&format!("\nrdist.toml ({action} `{target}`):\n"));
            for line in text.lines() {
                out.push_str(&format!("    {line}\n").replace("    \n", "\n"));
            }
        }
        None => match existing_config(&m.project_root) {
            Some(where_) => out.push_str(&format!(
                "\nrdist.toml: nothing to write (rdist's settings are in {where_})\n"
            )),
            None => out.push_str("\nrdist.toml: nothing to write\n"),
        },
    }
    for e in edits {
        let shown = show_path(&e.path, &m.cwd);
        let action = if writing {
            "editing"
        } else {
            "`rdist migrate --write` edits"
        };
        out.push_str(&format!("\nedits ({action} `{shown}`):\n"));
        for line in e.unified_diff(&shown).lines() {
            out.push_str(format!("    {line}").trim_end());
            out.push('\n');
        }
    }
    out.push_str(&format!("\nequivalent command line:\n    {}\n", m.run));
    if !m.notes.is_empty() {
        out.push_str("\nnotes:\n");
        for n in &m.notes {
            let level = match n.level {
                NoteLevel::Info => "note",
                NoteLevel::Warn => "warning",
            };
            let at = n
                .origin
                .as_ref()
                .map(|o| format!("{}: ", o.display_from(&m.cwd)))
                .unwrap_or_default();
            out.push_str(&format!("  {level}: {at}{}\n", n.message));
        }
    }
    out
}
