//! `rdist migrate`: reads pytest-xdist's rsync settings where pytest would (the config file it
//! discovers, `PYTEST_ADDOPTS`, `--command`, dead `conftest.py` globals) and shows their rdist
//! translation: the settings found (file:line), the `rdist.toml` to write, an equivalent
//! `rdist run` line and every behaviour difference. `--write` writes `rdist.toml`; `--check`
//! exits 1 while legacy rsync settings remain; `--json` for tools. Legacy files are not edited
//! yet (the preview says so).

use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use compat::legacy::{self, Migration, NoteLevel};
use serde_json::json;

use crate::cli::MigrateArgs;
use crate::exit::{Code, Failure};

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
    let m = legacy::migrate(&input).map_err(located)?;

    let mut out = std::io::stdout().lock();
    if args.json {
        let value = json!({
            "legacy_rsync": m.has_legacy_rsync(),
            "rdist_toml_path": m.rdist_toml_path(),
            "rdist_toml": m.rdist_toml(),
            "run_line": m.run.to_string(),
            "migration": m,
        });
        let _ = writeln!(out, "{value:#}");
    } else if args.check {
        let _ = out.write_all(check_report(&m).as_bytes());
    } else {
        let _ = out.write_all(preview(&m, args.write).as_bytes());
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
        write_config(&m)?;
    }
    Ok(Code::Ok)
}

/// Writes `rdist.toml`, refusing to replace a different one.
fn write_config(m: &Migration) -> Result<(), Failure> {
    let path = m.rdist_toml_path();
    let shown = show_path(&path, &m.cwd);
    let Some(text) = m.rdist_toml() else {
        eprintln!("nothing to write: no rdist settings in the legacy configuration");
        return Ok(());
    };
    match std::fs::read_to_string(&path) {
        Ok(existing) if existing == text => {
            eprintln!("`{shown}` is up to date");
            return Ok(());
        }
        Ok(_) => {
            return Err(
                Failure::usage(anyhow!("`{shown}` exists with other content"))
                    .with_hint("merge the preview into it by hand, or remove it and run again"),
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Failure::failed(
                anyhow!(e).context(format!("cannot read `{shown}`")),
            ));
        }
    }
    std::fs::write(&path, text)
        .map_err(|e| Failure::failed(anyhow!(e).context(format!("cannot write `{shown}`"))))?;
    eprintln!("wrote `{shown}`");
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

/// `--check`: the legacy rsync settings that remain.
fn check_report(m: &Migration) -> String {
    if !m.has_legacy_rsync() {
        return "no legacy rsync settings\n".to_owned();
    }
    format!(
        "legacy rsync settings remain:\n{}run `rdist migrate` to see their rdist translation\n",
        settings_lines(m, true)
    )
}

/// The default output: everything a migration would do.
fn preview(m: &Migration, writing: bool) -> String {
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
        None => out.push_str("\nrdist.toml: nothing to write\n"),
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
