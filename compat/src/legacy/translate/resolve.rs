//! One set of xdist options resolved as xdist resolves them: the mode, the workers, the roots
//! and the ignore patterns, each translated for rdist.

use std::path::{Path, PathBuf};

use crate::xspec::XSpec;

use super::super::discover::ConfigFile;
use super::super::options::{Found, OVERRIDABLE, Opt, parse_numprocesses};
use super::super::patterns;
use super::super::render::RdistConfig;
use super::super::values::{self, Mode};
use super::super::{LegacyError, Origin};
use super::{Mapping, Note, NoteLevel, RunLine, lexical, parse_spec, relative_from, relative_to};

/// What resolution needs to know about the surroundings.
pub(super) struct Context<'a> {
    pub cwd: &'a Path,
    pub project_root: &'a Path,
    pub config: Option<&'a ConfigFile>,
    pub exists: &'a dyn Fn(&Path) -> bool,
}

/// A `--tx` or `--px` spec.
pub(super) struct Spec {
    pub text: String,
    pub origin: Origin,
    /// `None` for a spec with a shell variable that does not parse as written.
    pub parsed: Option<XSpec>,
}

pub(super) struct Root {
    pub legacy: String,
    pub origin: Origin,
    pub abs: PathBuf,
    /// Relative to the project root; `None` when outside it.
    pub rel: Option<String>,
    /// From the command line (not `addopts`) as two arguments: `--rsyncdir DIR`.
    pub separate_cli: bool,
}

pub(super) struct Ignore {
    pub legacy: String,
    pub origin: Origin,
    pub rdist: Option<String>,
}

pub(super) struct Resolved {
    pub tx: Vec<Spec>,
    pub px: Vec<Spec>,
    /// The last `--dist` given.
    pub dist_opt: Option<(String, Origin)>,
    pub distload: Option<Origin>,
    /// The last `-n` given.
    pub numprocesses: Option<(String, Origin)>,
    /// The mode after `-d` and `-n`.
    pub dist: String,
    pub roots: Vec<Root>,
    pub ignores: Vec<Ignore>,
    /// Other arguments from the command line, for the translated line.
    pub others: Vec<String>,
    /// Translation caveats for roots and patterns.
    pub notes: Vec<Note>,
}

impl Resolved {
    pub fn new(ctx: &Context<'_>, found: &[Found]) -> Result<Resolved, LegacyError> {
        let mut r = Resolved {
            tx: Vec::new(),
            px: Vec::new(),
            dist_opt: None,
            distload: None,
            numprocesses: None,
            dist: String::new(),
            roots: Vec::new(),
            ignores: Vec::new(),
            others: Vec::new(),
            notes: Vec::new(),
        };
        let mut cli_roots = Vec::new();
        let mut cli_ignores = Vec::new();
        let mut overrides: Vec<(&str, &str, &Origin)> = Vec::new();
        for f in found {
            let origin = f.origin.clone();
            match &f.opt {
                Opt::Distload => r.distload = Some(origin),
                Opt::Dist(d) => r.dist_opt = Some((d.clone(), origin)),
                Opt::Numprocesses(n) => r.numprocesses = Some((n.clone(), origin)),
                Opt::Tx(t) => r.tx.push(spec(t, false, origin)?),
                Opt::Px(p) => r.px.push(spec(p, true, origin)?),
                Opt::RsyncDir(d) => cli_roots.push((d.as_str(), f)),
                Opt::RsyncIgnore(p) => cli_ignores.push((p.as_str(), origin)),
                Opt::Override { key, value } => overrides.push((key, value, &f.origin)),
                Opt::Other(o) if f.origin == Origin::Command => r.others.push(o.clone()),
                Opt::Other(_) => {}
            }
        }
        r.dist = r.dist_opt.as_ref().map_or("no", |(d, _)| d).to_owned();
        match r.count() {
            Some(Some(0)) => r.dist = "no".to_owned(),
            Some(_) if r.dist == "no" => r.dist = "load".to_owned(),
            _ => {}
        }
        if r.distload.is_some() && r.count() != Some(Some(0)) {
            r.dist = "load".to_owned();
        }

        let [ini_roots, ini_ignores] = OVERRIDABLE.map(|key| ini_items(ctx, key, &overrides));
        let ini_dir = ctx.config.map_or(ctx.cwd, |c| c.dir());
        for (item, f) in cli_roots {
            let separate_cli = f.separate && f.origin == Origin::Command;
            r.add_root(ctx, item, ctx.cwd, f.origin.clone(), separate_cli);
        }
        for (item, origin) in ini_roots? {
            r.add_root(ctx, &item, ini_dir, origin, false);
        }
        for (raw, origin) in cli_ignores {
            let t = patterns::translate_cli(raw, ctx.cwd, ctx.project_root);
            r.add_ignore(raw, origin, t);
        }
        for (item, origin) in ini_ignores? {
            let t = patterns::translate_ini(&item, ini_dir, ctx.project_root);
            r.add_ignore(&item, origin, t);
        }
        Ok(r)
    }

    /// The `-n` value: `Some(Some(n))`, `Some(None)` for `auto`, `None` without `-n`.
    pub fn count(&self) -> Option<Option<u32>> {
        let (n, _) = self.numprocesses.as_ref()?;
        parse_numprocesses(n)
    }

    /// `-n` with a count above 0 or `auto`.
    pub fn local_workers(&self) -> bool {
        matches!(self.count(), Some(n) if n != Some(0))
    }

    /// xdist distributed: the mode is not `no` and there are workers.
    pub fn active(&self) -> bool {
        self.dist != "no" && (self.local_workers() || !self.tx.is_empty())
    }

    /// xdist synced roots to some worker (a spec it cannot read counts as one).
    pub fn syncs(&self) -> bool {
        self.active()
            && !self.local_workers()
            && self
                .tx
                .iter()
                .any(|s| s.parsed.as_ref().is_none_or(super::syncs))
    }

    fn add_root(
        &mut self,
        ctx: &Context<'_>,
        item: &str,
        base: &Path,
        origin: Origin,
        separate_cli: bool,
    ) {
        let abs = lexical(&base.join(item));
        if self.roots.iter().any(|r| r.abs == abs) {
            return;
        }
        let rel = relative_to(&abs, ctx.project_root)
            .map(|r| if r.is_empty() { ".".to_owned() } else { r });
        if rel.is_none() {
            self.note(
                NoteLevel::Warn,
                &origin,
                format!(
                    "root `{item}` is outside the project root `{}`: rdist syncs only inside \
                     it, so it is left out",
                    ctx.project_root.display()
                ),
            );
        }
        if !(ctx.exists)(&abs) {
            self.note(
                NoteLevel::Warn,
                &origin,
                format!("root `{item}` does not exist: pytest-xdist stopped with `rsyncdir doesn't exist`"),
            );
        }
        self.roots.push(Root {
            legacy: item.to_owned(),
            origin,
            abs,
            rel,
            separate_cli,
        });
    }

    fn add_ignore(&mut self, legacy: &str, origin: Origin, t: patterns::Translated) {
        if let Some(note) = t.note {
            self.note(NoteLevel::Warn, &origin, note);
        }
        let fixed = sync_fixed(t.pattern.as_deref());
        if fixed {
            self.note(
                NoteLevel::Info,
                &origin,
                format!("`{legacy}` is one of rdist's fixed ignores and is not written"),
            );
        }
        let rdist = t.pattern.filter(|_| !fixed);
        let seen = self
            .ignores
            .iter()
            .any(|i| i.rdist.is_some() && i.rdist == rdist);
        self.ignores.push(Ignore {
            legacy: legacy.to_owned(),
            origin,
            rdist: if seen { None } else { rdist },
        });
    }

    fn note(&mut self, level: NoteLevel, origin: &Origin, message: String) {
        self.notes.push(Note {
            level,
            origin: Some(origin.clone()),
            message,
        });
    }

    pub fn to_config(&self) -> RdistConfig {
        let active = self.active();
        RdistConfig {
            roots: self.roots.iter().filter_map(|r| r.rel.clone()).collect(),
            ignore: self
                .ignores
                .iter()
                .filter_map(|i| i.rdist.clone())
                .collect(),
            tx: self.tx.iter().map(|s| s.text.clone()).collect(),
            px: self.px.iter().map(|s| s.text.clone()).collect(),
            numprocesses: self
                .numprocesses
                .as_ref()
                .filter(|_| self.local_workers())
                .map(|(n, _)| n.clone()),
            dist: active.then(|| self.dist.clone()),
            tx_inert: !active && !self.tx.is_empty(),
        }
    }

    pub fn run_line(&self, cwd: &Path) -> RunLine {
        if !self.active() && !self.tx.is_empty() {
            return RunLine {
                program: vec!["pytest".to_owned()],
                args: self.others.clone(),
            };
        }
        let mut args = Vec::new();
        let mut push = |flag: &str, value: String| {
            args.push(flag.to_owned());
            args.push(value);
        };
        match &self.numprocesses {
            Some((n, _)) if self.local_workers() => push("-n", n.clone()),
            _ => self.tx.iter().for_each(|s| push("--tx", s.text.clone())),
        }
        self.px.iter().for_each(|s| push("--px", s.text.clone()));
        if self.active() && self.dist != "load" {
            push("--dist", self.dist.clone());
        }
        if !self.local_workers() {
            for r in self.roots.iter().filter(|r| r.rel.is_some()) {
                push("--rsyncdir", relative_from(&r.abs, cwd));
            }
            for p in self.ignores.iter().filter_map(|i| i.rdist.clone()) {
                push("--rsyncignore", p);
            }
        }
        args.extend(self.others.iter().cloned());
        RunLine {
            program: vec!["rdist".to_owned(), "run".to_owned()],
            args,
        }
    }

    pub fn root_mappings(&self) -> Vec<Mapping> {
        let roots = self.roots.iter();
        roots
            .map(|r| Mapping {
                origin: r.origin.clone(),
                legacy: r.legacy.clone(),
                rdist: r.rel.clone(),
            })
            .collect()
    }

    pub fn ignore_mappings(&self) -> Vec<Mapping> {
        let ignores = self.ignores.iter();
        ignores
            .map(|i| Mapping {
                origin: i.origin.clone(),
                legacy: i.legacy.clone(),
                rdist: i.rdist.clone(),
            })
            .collect()
    }
}

/// True for a pattern rdist always applies (`.*`, `*.pyc`, `*.pyo`, `*~`).
fn sync_fixed(pattern: Option<&str>) -> bool {
    matches!(pattern, Some(".*" | "*.pyc" | "*.pyo" | "*~"))
}

fn spec(text: &str, proxy: bool, origin: Origin) -> Result<Spec, LegacyError> {
    Ok(Spec {
        text: text.to_owned(),
        parsed: parse_spec(text, proxy, &origin)?,
        origin,
    })
}

/// The items of ini option `key`: the last `-o key=...` override, else the config file's.
fn ini_items(
    ctx: &Context<'_>,
    key: &str,
    overrides: &[(&str, &str, &Origin)],
) -> Result<Vec<(String, Origin)>, LegacyError> {
    let split = |value: &values::Value, mode: Mode, origin: &Origin| {
        values::split_value(key, "paths", value, mode).map_err(|e| LegacyError {
            origin: Some(origin.clone()),
            kind: e.into(),
        })
    };
    if let Some(&(_, value, origin)) = overrides.iter().rev().find(|(k, _, _)| *k == key) {
        let items = split(&values::Value::Str(value.to_owned()), Mode::Ini, origin)?;
        return Ok(items.into_iter().map(|i| (i, origin.clone())).collect());
    }
    let Some(cfg) = ctx.config else {
        return Ok(Vec::new());
    };
    let Some(entry) = cfg.get(key) else {
        return Ok(Vec::new());
    };
    let origin = cfg.origin(entry);
    let items = split(&entry.value, cfg.format.mode(), &origin)?;
    Ok(items.into_iter().map(|i| (i, origin.clone())).collect())
}
