//! pytest-xdist itself as the oracle of `rdist migrate`'s reading: for every fixture project, a
//! tiny plugin (`ORACLE`) asks real pytest and xdist (`--collect-only`, so no worker starts)
//! which config file they use, the `--tx`/`-n`/`--dist` they end up with, the roots
//! `NodeManager` syncs and which files `HostRSync` sends; rdist's `migrate --json` must agree,
//! file by file under its own ignore rules (`sync_core::filter`). A difference must be listed
//! in `ANNOUNCED` with the note that announces it. Fixtures rdist refuses must be refused by pytest too. After
//! `rdist migrate --write`, pytest must still read the edited file, and xdist find no roots
//! and no `--tx` workers (`-n` workers stay).
//! pytest and xdist are the harness's ([`rdist_tests::python`]: pinned, in a venv); skipped
//! with a note where it cannot be built, a failure in CI.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use rdist_tests::{have_pytest, python, rdist_bin, show};
use serde_json::Value;
use sync_core::filter::Filter;

const ORACLE: &str = r#"
import json, os, types
import pytest
# Imported before any conftest.py can put a fixture's own `execnet` package on sys.path.
import execnet
from xdist.workermanage import NodeManager, HostRSync

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    opt = config.option
    # pytest's own errors (a string where native TOML needs a list) stop here, as in xdist.
    config.getini("rsyncdirs")
    config.getini("rsyncignore")
    out = {
        "inipath": str(config.inipath) if config.inipath else None,
        "tx": list(opt.tx or []),
        "px": list(getattr(opt, "px", None) or []),
        "dist": opt.dist,
        "numprocesses": opt.numprocesses,
        "roots": None,
        "files": [],
    }
    # NodeManager's own methods on a stand-in: a real one would open the --px gateways.
    nm = types.SimpleNamespace(
        config=config,
        specs=[execnet.XSpec("popen//chdir=/nonexistent")],
        DEFAULT_IGNORES=NodeManager.DEFAULT_IGNORES,
    )
    try:
        roots = NodeManager._getrsyncdirs(nm)[2:]  # without pytest and _pytest
    except pytest.UsageError as e:
        out["roots_error"] = str(e)
        roots = []
    out["roots"] = [str(r) for r in roots]
    rsync = HostRSync(os.getcwd(), ignores=NodeManager._getrsyncoptions(nm)["ignores"])

    def walk(path):
        # execnet's RSync._send_directory: the root itself is never filtered.
        for name in sorted(os.listdir(path)):
            p = os.path.join(path, name)
            if not rsync.filter(p):
                continue
            if os.path.isdir(p) and not os.path.islink(p):
                walk(p)
            else:
                out["files"].append(p)

    for root in roots:
        if root.is_dir():
            walk(str(root))
        else:
            out["files"].append(str(root))
    with open(os.environ["RDIST_ORACLE_OUT"], "w") as f:
        json.dump(out, f)
"#;

/// Differences between xdist and rdist that a fixture shows on purpose: (fixture, the text of
/// the note that announces it). None so far: rdist reads every fixture as xdist does.
const ANNOUNCED: &[(&str, &str)] = &[];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/migrate")
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The files rdist syncs under its roots (relative to the project root), not entering ignored
/// directories; a root itself is not filtered, as in xdist.
fn rdist_files(project: &Path, roots: &[String], ignore: &[String]) -> BTreeSet<String> {
    let filter = Filter::new(ignore).expect("rdist patterns compile");
    let mut out = BTreeSet::new();
    fn walk(project: &Path, rel: &str, filter: &Filter, out: &mut BTreeSet<String>) {
        let dir = project.join(rel);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let is_dir = entry.file_type().unwrap().is_dir();
            if filter.is_ignored_str(&path, &name, is_dir) {
                continue;
            }
            if is_dir {
                walk(project, &path, filter, out);
            } else {
                out.insert(path);
            }
        }
    }
    for root in roots {
        let rel = if root == "." { "" } else { root.as_str() };
        if project.join(rel).is_dir() {
            walk(project, rel, &filter, &mut out);
        } else {
            out.insert(rel.to_owned());
        }
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn xdist_reads_every_fixture_as_rdist_migrate_does() {
    // The harness's Python has pinned pytest and pytest-xdist.
    if !have_pytest() {
        return;
    }
    let plugin_dir = tempfile::tempdir().unwrap();
    std::fs::write(plugin_dir.path().join("rdist_oracle.py"), ORACLE).unwrap();
    // A script, not `python -m pytest`: the project directory must not come first on sys.path
    // (the execnet fixture has its own `execnet` package).
    let run = plugin_dir.path().join("run_pytest.py");
    std::fs::write(&run, "import sys, pytest\nsys.exit(pytest.main())\n").unwrap();
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut failures = Vec::new();
    for name in names {
        let tmp = tempfile::tempdir().unwrap();
        // Resolved: pytest reports real paths.
        let tmp_path = tmp.path().canonicalize().unwrap();
        let dir = tmp_path.join(&name);
        copy(&fixtures().join(&name), &dir);
        let out_file = tmp_path.join("oracle.json");
        let ask_xdist = || {
            let _ = std::fs::remove_file(&out_file);
            Command::new(python::python())
                .arg(&run)
                .args(["--collect-only", "-q", "-p", "no:cacheprovider"])
                .args(["-p", "rdist_oracle", "-W", "ignore::DeprecationWarning"])
                .current_dir(&dir)
                .env("RDIST_ORACLE_OUT", &out_file)
                .env_remove("PYTEST_ADDOPTS")
                .env_remove("PYTEST_PLUGINS")
                .output()
                .unwrap()
        };
        let py = ask_xdist();
        let rd = Command::new(rdist_bin())
            .args(["migrate", "--json"])
            .current_dir(&dir)
            .env_remove("PYTEST_ADDOPTS")
            .output()
            .unwrap();
        if rd.status.code() != Some(0) {
            // rdist refuses it: so must pytest.
            if out_file.exists() {
                failures.push(format!(
                    "{name}: rdist refuses the config, pytest reads it\n{}",
                    show(&rd)
                ));
            }
            continue;
        }
        let Ok(oracle) = std::fs::read(&out_file) else {
            failures.push(format!(
                "{name}: pytest did not configure, rdist did\n{}",
                show(&py)
            ));
            continue;
        };
        let x: Value = serde_json::from_slice(&oracle).unwrap();
        let r: Value = serde_json::from_slice(&rd.stdout).unwrap();
        let m = &r["migration"];
        let mut diffs = Vec::new();

        let ini = x["inipath"].as_str().map(PathBuf::from);
        let rdist_ini = m["config_file"].as_str().map(PathBuf::from);
        // pytest 9 names a pyproject.toml without a pytest table as its inipath too.
        let rdist_sees = rdist_ini.clone().or_else(|| {
            (m["config_format"] == "pyproject_empty").then(|| dir.join("pyproject.toml"))
        });
        if ini != rdist_sees && !(ini.is_none() && m["config_format"] == "pyproject_empty") {
            diffs.push(format!("config file: xdist {ini:?}, rdist {rdist_ini:?}"));
        }
        let config = &m["config"];
        let numprocesses = x["numprocesses"].as_u64();
        match config["numprocesses"].as_str() {
            Some(n) => {
                let want = n.parse::<u64>().ok();
                if want.is_some() && want != numprocesses {
                    diffs.push(format!("-n: xdist {numprocesses:?}, rdist {n}"));
                }
            }
            None => {
                let (xtx, rtx) = (strings(&x["tx"]), strings(&config["tx"]));
                if xtx != rtx {
                    diffs.push(format!("tx: xdist {xtx:?}, rdist {rtx:?}"));
                }
            }
        }
        if let Some(d) = config["dist"].as_str()
            && x["dist"] != d
        {
            diffs.push(format!("dist: xdist {}, rdist {d}", x["dist"]));
        }
        if strings(&x["px"]) != strings(&config["px"]) {
            diffs.push(format!("px: xdist {}, rdist {}", x["px"], config["px"]));
        }

        let xroots: Vec<String> = strings(&x["roots"])
            .iter()
            .map(|r| {
                let rel = Path::new(r).strip_prefix(&dir).map(|p| p.to_string_lossy());
                match rel {
                    Ok(p) if p.is_empty() => ".".to_owned(),
                    Ok(p) => p.into_owned(),
                    Err(_) => r.clone(),
                }
            })
            .collect();
        let rroots = strings(&config["roots"]);
        if xroots != rroots {
            diffs.push(format!("roots: xdist {xroots:?}, rdist {rroots:?}"));
        }
        let xfiles: BTreeSet<String> = strings(&x["files"])
            .iter()
            .filter_map(|f| Path::new(f).strip_prefix(&dir).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let rfiles = rdist_files(&dir, &rroots, &strings(&config["ignore"]));
        let only_x: Vec<&String> = xfiles.difference(&rfiles).collect();
        let only_r: Vec<&String> = rfiles.difference(&xfiles).collect();
        if !only_x.is_empty() || !only_r.is_empty() {
            diffs.push(format!(
                "files: only xdist syncs {only_x:?}, only rdist syncs {only_r:?}"
            ));
        }
        // A difference passes only when listed in ANNOUNCED and the migration's notes carry it.
        let notes = m["notes"].to_string();
        let announced = ANNOUNCED
            .iter()
            .any(|(f, note)| *f == name && notes.contains(note));
        eprintln!(
            "{name}: tx {:?} dist {} roots {xroots:?}, {} files synced by both",
            strings(&x["tx"]),
            x["dist"],
            xfiles.intersection(&rfiles).count()
        );
        // After --write, pytest still reads the edited file, and xdist finds nothing to sync.
        let w = Command::new(rdist_bin())
            .args(["migrate", "--write"])
            .current_dir(&dir)
            .env_remove("PYTEST_ADDOPTS")
            .output()
            .unwrap();
        assert_eq!(w.status.code(), Some(0), "{name}\n{}", show(&w));
        let py = ask_xdist();
        match std::fs::read(&out_file) {
            Err(_) => failures.push(format!(
                "{name}: pytest cannot read the edited config\n{}",
                show(&py)
            )),
            Ok(after) => {
                let a: Value = serde_json::from_slice(&after).unwrap();
                let local = a["numprocesses"].as_u64().is_some();
                if !strings(&a["roots"]).is_empty() || (!local && !strings(&a["tx"]).is_empty()) {
                    failures.push(format!("{name}: xdist still syncs after --write: {a}"));
                }
            }
        }
        if !diffs.is_empty() && !announced {
            failures.push(format!("{name}: unannounced differences: {diffs:#?}"));
        } else if !diffs.is_empty() {
            eprintln!("{name}: announced differences: {diffs:?}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
