//! The Python the tests run pytest with: a venv the harness creates once per build, under the
//! cargo target directory (`target/rdist-test-python/`), holding pinned pytest and
//! pytest-xdist, so the suite does not depend on what the machine's `python3` has installed.
//!
//! nextest runs every test in its own process, many at once, so creation is serialised by a
//! file lock, and a venv counts as built only once its `complete` marker exists (written last,
//! by rename): a venv left half-built by a killed run has no marker and is built again. The
//! marker also records where the venv's interpreter resolves to, so a replaced base Python
//! (another pyenv version, a distribution upgrade) rebuilds it too.
//!
//! `RDIST_TEST_PYTHON` names an existing interpreter instead (a venv's `bin/python`): its
//! directory goes first on `PATH` of the commands the tests start, so `python3` there must be
//! the same environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// What the venv holds; the venv's directory is named after it, so a change builds a new one.
pub const PINS: [&str; 2] = ["pytest==9.2.0", "pytest-xdist==3.8.0"];

/// The interpreter with pytest and pytest-xdist, or `None` after a note when it cannot be had
/// (no `python3`, no `venv` module, no network for pip). In CI (`CI` set) that is a panic
/// instead: a skip there would hide a broken setup.
pub fn test_python() -> Option<&'static Path> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PY.get_or_init(resolve) {
        Ok(p) => Some(p),
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("no Python with pytest for the tests, and CI is set: {why}")
        }
        Err(why) => {
            eprintln!("note: skipping a test that needs pytest: {why}");
            None
        }
    }
}

/// Whether the tests' Python ([`test_python`]) is there. Tests that need pytest start with
/// `if !have_pytest() { return; }`.
pub fn have_pytest() -> bool {
    test_python().is_some()
}

/// The tests' Python; panics when [`have_pytest`] was not checked first.
pub fn python() -> &'static Path {
    test_python().expect("the tests' Python: check `have_pytest()` first")
}

/// The directory holding the tests' Python (the venv's `bin/`).
pub fn python_dir() -> &'static Path {
    python().parent().expect("the interpreter's directory")
}

/// `PATH` with [`python_dir`] first, so that `python3` (rdist's default interpreter) is the
/// tests' Python for whatever runs with it.
pub fn path_with_python() -> OsString {
    let mut dirs = vec![python_dir().to_owned()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH without `:` in its directories")
}

/// Sets `PATH` of `cmd` to [`path_with_python`]: the way a user with an activated venv runs
/// rdist. Leaves it alone when there is no such Python (the test skips, see [`test_python`]).
pub fn use_test_python(cmd: &mut Command) -> &mut Command {
    if test_python().is_some() {
        cmd.env("PATH", path_with_python());
    }
    cmd
}

/// `//python=<the tests' Python>`, to append to a spec whose host does not have it on `PATH`
/// (the harness's sshd logs in with the system's default `PATH`).
pub fn python_key() -> String {
    format!("//python={}", python().display())
}

fn resolve() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("RDIST_TEST_PYTHON") {
        let p = PathBuf::from(p);
        // What the tests run is `python3` from this directory (PATH first) and this file.
        let python3 = p.parent().map(|d| d.join("python3")).unwrap_or_default();
        for py in [&p, &python3] {
            imports_pytest(py).map_err(|e| format!("RDIST_TEST_PYTHON: {e}"))?;
        }
        return Ok(p);
    }
    let root = target_dir()?.join("rdist-test-python");
    let venv = root.join(venv_name());
    if is_complete(&venv) {
        return Ok(venv.join("bin/python"));
    }
    std::fs::create_dir_all(&root)
        .map_err(|e| format!("cannot create `{}`: {e}", root.display()))?;
    let lock_path = root.join("lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create `{}`: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock `{}`: {e}", lock_path.display()))?;
    // Another test process may have built it while this one waited.
    if !is_complete(&venv) {
        build(&venv)?;
    }
    Ok(venv.join("bin/python"))
}

/// `venv-pytest-9.2.0-pytest-xdist-3.8.0`.
fn venv_name() -> String {
    let mut name = String::from("venv");
    for pin in PINS {
        name.push('-');
        name.push_str(&pin.replace("==", "-"));
    }
    name
}

/// The cargo target directory: the test executable is `<target>/<profile>/deps/<name>`.
fn target_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no test executable path: {e}"))?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_owned)
        .ok_or_else(|| format!("`{}` is not in <target>/<profile>/deps", exe.display()))
}

fn marker(venv: &Path) -> PathBuf {
    venv.join("complete")
}

/// What the marker holds: the pins and where the venv's interpreter resolves to.
fn marker_text(venv: &Path) -> Option<String> {
    let real = std::fs::canonicalize(venv.join("bin/python")).ok()?;
    Some(format!("{}\n{}\n", PINS.join(" "), real.display()))
}

fn is_complete(venv: &Path) -> bool {
    match (std::fs::read_to_string(marker(venv)), marker_text(venv)) {
        (Ok(have), Some(want)) => have == want,
        _ => false,
    }
}

/// Builds the venv from scratch (under the lock): `python3 -m venv`, `pip install` the pins,
/// an import check, then the marker.
fn build(venv: &Path) -> Result<(), String> {
    let start = std::time::Instant::now();
    eprintln!(
        "note: building the tests' Python at `{}` ({})",
        venv.display(),
        PINS.join(", ")
    );
    if venv.exists() {
        std::fs::remove_dir_all(venv)
            .map_err(|e| format!("cannot remove the unfinished `{}`: {e}", venv.display()))?;
    }
    let python = venv.join("bin/python");
    run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(PINS))?;
    imports_pytest(&python)?;
    let text = marker_text(venv).ok_or_else(|| format!("`{}` is missing", python.display()))?;
    let tmp = venv.join("complete.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, marker(venv)))
        .map_err(|e| format!("cannot write `{}`: {e}", marker(venv).display()))?;
    eprintln!(
        "note: built the tests' Python in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `cmd`; its output (kept off the test's) explains a failure.
fn run(cmd: &mut Command) -> Result<(), String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn imports_pytest(python: &Path) -> Result<(), String> {
    run(Command::new(python).args(["-c", "import pytest, xdist"]))
}
