//! `rdist migrate` through the real binary on the fixture projects in `tests/fixtures/migrate/`:
//! one per legacy config form and per real-world configuration quoted in the xdist legacy spec
//! (section 7.3). Each case copies its fixture to a temporary directory, runs the binary there
//! and checks the exit code and key lines of stdout/stderr. A guard fails if a fixture is unused.

use std::path::{Path, PathBuf};
use std::process::Output;

use rdist_tests::{rdist_bin, show};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/migrate")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A fixture copied to a fresh temporary directory.
struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Project {
    fn new(fixture: &str) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(fixture);
        copy_tree(&fixtures().join(fixture), &dir);
        Project { _tmp: tmp, dir }
    }

    fn migrate(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = std::process::Command::new(rdist_bin());
        c.arg("migrate")
            .args(args)
            .current_dir(&self.dir)
            .env_remove("PYTEST_ADDOPTS");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run rdist")
    }
}

struct Case {
    fixture: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    code: i32,
    stdout: &'static [&'static str],
    stderr: &'static [&'static str],
}

const fn case(fixture: &'static str, args: &'static [&'static str], code: i32) -> Case {
    Case {
        fixture,
        args,
        env: &[],
        code,
        stdout: &[],
        stderr: &[],
    }
}

const CASES: &[Case] = &[
    // The config forms of section 7.2.
    Case {
        stdout: &[
            "pytest config: pytest.ini [pytest]",
            "  pytest.ini:3: rsyncdirs = pytest.ini src tests",
            "  pytest.ini:4: rsyncignore = *.log build",
            "  pytest.ini:2: --tx ssh=ci@build1//python=python3",
            "  `build` (pytest.ini:4) -> `/build`",
            "    roots = [\"pytest.ini\", \"src\", \"tests\"]",
            "    ignore = [\"*.log\", \"/build\"]",
            "    tx = [\"ssh=ci@build1//python=python3\", \"2*popen//python=python3.12\"]",
            "    dist = \"load\"",
            "    rdist run --tx ssh=ci@build1//python=python3 --tx '2*popen//python=python3.12' \
             --rsyncdir pytest.ini --rsyncdir src --rsyncdir tests --rsyncignore '*.log' \
             --rsyncignore /build",
            "`pyexecnetcache`",
            "`pytest` and `_pytest` packages",
            "edits (`rdist migrate --write` edits `pytest.ini`):",
            "    -addopts = -d --tx ssh=ci@build1//python=python3 --tx 2*popen//python=python3.12",
        ],
        ..case("pytest-ini", &[], 0)
    },
    Case {
        stdout: &[
            "pytest config: .pytest.ini [pytest]",
            "  .pytest.ini:3: rsyncdirs = src tests",
            "    tx = [\"popen//chdir=/tmp/rdist-fixture-w1\"]",
            "did not sync `.pytest.ini`",
        ],
        ..case("dot-pytest-ini", &[], 0)
    },
    Case {
        stdout: &[
            "pytest config: pytest.toml [pytest]",
            "  pytest.toml:2: rsyncdirs = [\"src\"]",
            "  pytest.toml:3: --tx=popen//chdir=/tmp/rdist-fixture-w1",
            "    rdist run --tx popen//chdir=/tmp/rdist-fixture-w1 --rsyncdir src",
        ],
        ..case("pytest-toml", &[], 0)
    },
    Case {
        stdout: &[
            "pytest config: .pytest.toml [pytest]",
            "    roots = [\"src\", \"my dir\"]",
            "    ignore = [\"*.tmp\"]",
            "no `--tx` workers found",
        ],
        ..case("dot-pytest-toml", &[], 0)
    },
    Case {
        stdout: &[
            "pytest config: pyproject.toml [tool.pytest.ini_options]",
            "  pyproject.toml:5: rsyncdirs = src tests",
            "  pyproject.toml:6: --tx ssh=h//python=python3",
            "    rdist run --tx ssh=h//python=python3 --rsyncdir src --rsyncdir tests",
        ],
        ..case("pyproject-ini-options", &[], 0)
    },
    Case {
        stdout: &[
            "pytest config: pyproject.toml [tool.pytest]",
            "  pyproject.toml:5: rsyncdirs = [\"src\", \"tests\"]",
            "    tx = [\"popen//chdir=/srv/cache\"]",
        ],
        ..case("pyproject-native", &[], 0)
    },
    Case {
        stderr: &[
            "error: pyproject.toml:3: config option `rsyncdirs` expects a list for type `paths`, \
             got str: `src tests`",
            "hint: write a list: `[\"src\", \"tests\"]`",
        ],
        ..case("pyproject-native-string", &[], 4)
    },
    Case {
        stderr: &[
            "error: pyproject.toml:2: cannot use both [tool.pytest]",
            "hint: ",
        ],
        ..case("pyproject-both-tables", &[], 4)
    },
    Case {
        stdout: &[
            "pytest config: setup.cfg [tool:pytest]",
            "  setup.cfg:5: rsyncdirs = src tests",
            "  setup.cfg:8: --rsyncdir=src",
            "    rdist run --tx socket=10.0.0.5:8888 --rsyncdir src --rsyncdir tests",
        ],
        ..case("setup-cfg", &[], 0)
    },
    Case {
        stderr: &[
            "error: setup.cfg:4: [pytest] section in setup.cfg files is no longer supported, \
             change to [tool:pytest] instead",
            "hint: rename the section to `[tool:pytest]`",
        ],
        ..case("setup-cfg-pytest-section", &[], 4)
    },
    Case {
        stderr: &["error: tox.ini:6: unexpected line: `junk line`", "hint: "],
        ..case("ini-parse-error", &[], 4)
    },
    Case {
        stdout: &[
            "  `sub` (tox.ini:4) -> `/sub`",
            "  `pkg/*.tmp` (tox.ini:4) -> `pkg/**/*.tmp`",
            "    ignore = [\"/sub\", \"*.log\", \"pkg/**/*.tmp\", \"/a*b\"]",
            "warning: tox.ini:4: `a*b` has no exact rdist equivalent",
            "roots land at their path relative to the project root (`.`)",
        ],
        ..case("patterns", &[], 0)
    },
    Case {
        stdout: &["    numprocesses = 4", "    rdist run -n 4"],
        ..case("no-rsync", &[], 0)
    },
    Case {
        stdout: &["no legacy rsync settings"],
        ..case("no-rsync", &["--check"], 0)
    },
    // PYTEST_ADDOPTS sits between addopts and the command line; `-d` (from addopts) wins over
    // any `--dist`, as in xdist.
    Case {
        env: &[("PYTEST_ADDOPTS", "--dist each")],
        stdout: &[
            "  pyproject.toml:6: -d\n  PYTEST_ADDOPTS: --dist each\n  command line: --tx popen//chdir=/w",
            "    rdist run --tx popen//chdir=/srv/cache --tx popen//chdir=/w --rsyncdir src",
            "note: pyproject.toml:6: `-d` means `--dist load` and overrides `--dist each`",
        ],
        ..case(
            "pyproject-native",
            &["--command", "pytest --tx popen//chdir=/w"],
            0,
        )
    },
    // The real-world examples of section 7.3.
    Case {
        stdout: &[
            "pytest config: tox.ini [pytest]",
            "  tox.ini:6: rsyncdirs = devpi testing",
            "  tox.ini:7: rsyncignore = .tox",
            "    ignore = [\"/.tox\"]",
            "    rdist run --rsyncdir devpi --rsyncdir testing --rsyncignore /.tox",
        ],
        ..case("devpi-client", &[], 0)
    },
    Case {
        stdout: &[
            "legacy rsync settings remain:",
            "  tox.ini:6: rsyncdirs = devpi testing",
        ],
        ..case("devpi-client", &["--check"], 1)
    },
    Case {
        stdout: &[
            "    roots = [\"tox.ini\", \"doc\", \"src\", \"testing\"]",
            "    rdist run --tx ssh=h --rsyncdir tox.ini --rsyncdir doc",
        ],
        ..case("pytest-tox-2020", &["--command", "pytest -d --tx ssh=h"], 0)
    },
    Case {
        stdout: &[
            "  tox.ini:8: rsyncdirs = execnet testing",
            "  testing/conftest.py:4: rsyncdirs = [\"conftest.py\", \"execnet\", \"testing\", \"doc\"]",
            "warning: testing/conftest.py:4: `rsyncdirs` in conftest.py is dead",
        ],
        ..case("execnet", &[], 0)
    },
    Case {
        stdout: &[
            "    pytest --cov ignite tests/ignite/engine",
            "is inert in pytest-xdist",
        ],
        ..case(
            "ignite-script",
            &[
                "--command",
                "pytest --tx 4*popen//python=python --cov ignite tests/ignite/engine",
            ],
            0,
        )
    },
    Case {
        stdout: &[
            "    rdist run --tx \"$WORLD_SIZE*popen//python=python\" --dist each --cov ignite \
             --cov-append tests/ignite/engine -m distributed -vvv",
            "holds a shell variable",
        ],
        ..case(
            "ignite-script",
            &[
                "--command",
                "pytest --cov ignite --cov-append --dist=each --tx $WORLD_SIZE*popen//python=python \
                 tests/ignite/engine -m distributed -vvv",
            ],
            0,
        )
    },
    Case {
        stdout: &[
            "--rsyncdir myproj --rsyncdir tests --cov myproj --rsync examples",
            "warning: command line: `--rsync` is not an option",
            "`--rsyncdir myproj` (an existing relative path as a separate argument)",
        ],
        ..case(
            "pytest-cov-docs",
            &[
                "--command",
                "pytest --cov myproj -d --tx ssh=memedough@host1//chdir=testenv1 --tx \
                 ssh=memedough@host2//chdir=/tmp/testenv2//python=/tmp/env1/bin/python \
                 --rsyncdir myproj --rsyncdir tests --rsync examples",
            ],
            0,
        )
    },
    Case {
        stdout: &[
            "    # tx = [\"id=debian-latest-192.168.9.111//ssh=-i docker/ssh-config/id_rsa \
             192.168.9.111 -l root//python=python3\"]",
            "    roots = [\".\"]",
            "    pytest",
        ],
        ..case("issue-413", &[], 0)
    },
    Case {
        stdout: &[
            "    rdist run --tx socket=localhost:8888 --dist loadscope --rsyncdir .",
            "rdist.toml: nothing to write",
        ],
        ..case(
            "issue-752",
            &[
                "--command",
                "pytest --dist loadscope --tx socket=localhost:8888 --rsyncdir .",
            ],
            0,
        )
    },
    Case {
        stdout: &[
            "    rdist run --tx ssh=admin@test-host-ip --dist loadfile tests",
            "root `/tmp/autotests_rsync` is outside the project root",
        ],
        ..case(
            "issue-872",
            &[
                "--command",
                "pytest --dist=loadfile --tx ssh=admin@test-host-ip --rsyncdir \
                 /tmp/autotests_rsync tests",
            ],
            0,
        )
    },
    Case {
        stdout: &[
            "  tox.ini:2: --tx ssh=myhost//python=python3.9",
            "    # tx = [\"ssh=myhost//python=python3.9\", \"ssh=myhost//python=python3.6\"]",
            "    roots = [\".\", \"mypkg\", \"helperpkg\"]",
            "  `.hg` (tox.ini:4) -> `/.hg`",
            "is inert in pytest-xdist",
        ],
        ..case("xdist-docs", &[], 0)
    },
    Case {
        stdout: &[
            "    rdist run --tx \"socket=${names[1]}:8888\" --tx \"socket=${names[2]}:8888\" \
             --rsyncdir tests --show-capture=no tests/",
            "`docker exec -i \"${names[0]}\"` before `pytest`",
        ],
        ..case(
            "api-autotest",
            &[
                "--command",
                "docker exec -i ${names[0]} pytest --show-capture=no -d --tx \
                 socket=${names[1]}:8888 --tx socket=${names[2]}:8888 --rsyncdir tests/ tests/ \
                 --alluredir=allure-results --clean-alluredir --reruns=1",
            ],
            0,
        )
    },
    Case {
        stderr: &[
            "error: command line: invalid worker spec: unknown key `chdri`",
            "         ^^^^^",
            "hint: did you mean `chdir`?",
        ],
        ..case(
            "api-autotest",
            &["--command", "pytest -d --tx popen//chdri=/w"],
            4,
        )
    },
];

fn check(c: &Case) {
    let project = Project::new(c.fixture);
    let o = project.migrate(c.args, c.env);
    let what = format!("{} {:?}", c.fixture, c.args);
    assert_eq!(o.status.code(), Some(c.code), "{what}\n{}", show(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    for want in c.stdout {
        assert!(
            stdout.contains(want),
            "{what}: stdout lacks {want:?}\n{}",
            show(&o)
        );
    }
    for want in c.stderr {
        assert!(
            stderr.contains(want),
            "{what}: stderr lacks {want:?}\n{}",
            show(&o)
        );
    }
}

#[test]
fn preview_check_and_errors_on_every_fixture() {
    for c in CASES {
        check(c);
    }
}

#[test]
fn write_creates_rdist_toml_and_edits_once_and_refuses_a_different_one() {
    let project = Project::new("setup-cfg");
    let o = project.migrate(&["--write"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrote `rdist.toml`"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("edited `setup.cfg`"));
    let cfg = std::fs::read_to_string(project.dir.join("setup.cfg")).unwrap();
    assert_eq!(cfg, "[metadata]\nname = demo\n\n[tool:pytest]\n");
    let o = project.migrate(&["--check"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let path = project.dir.join("rdist.toml");
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written.contains("\nroots = [\"src\", \"tests\"]\n"),
        "{written}"
    );
    assert!(
        written.contains("\ntx = [\"socket=10.0.0.5:8888\"]\n"),
        "{written}"
    );

    // Idempotent: the second run changes nothing.
    let o = project.migrate(&["--write"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
    assert_eq!(
        std::fs::read_to_string(project.dir.join("setup.cfg")).unwrap(),
        cfg
    );
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("nothing to write: rdist's settings are in `rdist.toml`"),
        "{}",
        show(&o)
    );

    // A different rdist.toml: refused before anything is written.
    let project = Project::new("setup-cfg");
    let path = project.dir.join("rdist.toml");
    std::fs::write(&path, "[sync]\nroots = [\"other\"]\n").unwrap();
    let o = project.migrate(&["--write"], &[]);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("error: `rdist.toml` exists with other content"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "[sync]\nroots = [\"other\"]\n"
    );
    let fixture = std::fs::read_to_string(fixtures().join("setup-cfg/setup.cfg")).unwrap();
    let now = std::fs::read_to_string(project.dir.join("setup.cfg")).unwrap();
    assert_eq!(now, fixture, "the legacy file is untouched");
    let o = project.migrate(&["--check"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}

#[test]
fn write_keeps_the_file_mode_and_leaves_no_temp_files() {
    use std::os::unix::fs::PermissionsExt;
    let project = Project::new("devpi-client");
    let ini = project.dir.join("tox.ini");
    std::fs::set_permissions(&ini, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = project.migrate(&["--write"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let mode = std::fs::metadata(&ini).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let names: Vec<String> = std::fs::read_dir(&project.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn write_failure_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    if running_as_root() {
        eprintln!("skipped: running as root, a read-only directory does not stop writes");
        return;
    }
    let project = Project::new("devpi-client");
    let dir = &project.dir;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let o = project.migrate(&["--write"], &[]);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("hint: nothing was changed"), "{stderr}");
    assert!(!dir.join("rdist.toml").exists());
    let fixture = std::fs::read_to_string(fixtures().join("devpi-client/tox.ini")).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("tox.ini")).unwrap(),
        fixture
    );
}

#[test]
fn write_stops_before_writing_when_a_file_cannot_be_read() {
    let project = Project::new("devpi-client");
    std::fs::create_dir(project.dir.join("rdist.toml")).unwrap();
    let o = project.migrate(&["--write"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("error: cannot read `rdist.toml`"),
        "{stderr}"
    );
    let fixture = std::fs::read_to_string(fixtures().join("devpi-client/tox.ini")).unwrap();
    let now = std::fs::read_to_string(project.dir.join("tox.ini")).unwrap();
    assert_eq!(now, fixture);
}

#[test]
fn write_into_pyproject_adds_tool_rdist_tables_once() {
    let project = Project::new("pyproject-ini-options");
    let o = project.migrate(&["--into", "pyproject", "--write"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(!project.dir.join("rdist.toml").exists());
    let path = project.dir.join("pyproject.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("[project]\nname = \"demo\"\n\n[tool.pytest.ini_options]\n\n"));
    let loaded = compat::config::read(&path).unwrap();
    assert!(loaded.in_pyproject);
    let roots = loaded.config.sync.roots.clone().unwrap();
    assert_eq!(roots, ["src", "tests"]);
    assert_eq!(
        loaded.config.run.tx.clone().unwrap(),
        ["ssh=h//python=python3"]
    );
    let o = project.migrate(&["--into", "pyproject", "--write"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let o = project.migrate(&["--check"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // -n stays in setup.cfg, so the settings are there on every run: written once.
    let project = Project::new("no-rsync");
    let o = project.migrate(&["--into", "pyproject", "--write"], &[]);
    assert_eq!(o.status.code(), Some(4), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("error: no `pyproject.toml`"));
    std::fs::write(
        project.dir.join("pyproject.toml"),
        "[project]\nname = \"x\"",
    )
    .unwrap();
    let o = project.migrate(&["--into", "pyproject", "--write"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let once = std::fs::read_to_string(project.dir.join("pyproject.toml")).unwrap();
    assert!(once.contains("\"x\"\n\n# rdist configuration"), "{once}");
    let o = project.migrate(&["--into", "pyproject", "--write"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let twice = std::fs::read_to_string(project.dir.join("pyproject.toml")).unwrap();
    assert_eq!(twice, once);
}

/// Root ignores directory permissions.
fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn write_with_nothing_to_migrate_writes_nothing() {
    let project = Project::new("issue-752");
    let o = project.migrate(&["--write"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(!project.dir.join("rdist.toml").exists());
}

#[test]
fn json_carries_the_settings_the_config_and_the_command_line() {
    let project = Project::new("devpi-client");
    let o = project.migrate(&["--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["legacy_rsync"], true);
    assert_eq!(
        v["run_line"],
        "rdist run --rsyncdir devpi --rsyncdir testing --rsyncignore /.tox"
    );
    assert_eq!(v["migration"]["config"]["roots"][1], "testing");
    assert_eq!(v["migration"]["settings"][0]["origin"]["line"], 6);
    assert!(v["rdist_toml"].as_str().unwrap().contains("[sync]"));
    let edit = &v["edits"][0];
    assert!(edit["path"].as_str().unwrap().ends_with("tox.ini"));
    assert_eq!(
        edit["removed"],
        serde_json::json!(["rsyncdirs", "rsyncignore"])
    );
    let diff = edit["diff"].as_str().unwrap();
    assert!(
        diff.contains("\n-rsyncdirs = devpi testing\n-rsyncignore = .tox\n"),
        "{diff}"
    );
}

/// Fixtures used by the tests above besides `CASES`.
const OTHER_USES: &[&str] = &[
    "setup-cfg",
    "issue-752",
    "devpi-client",
    "pyproject-ini-options",
    "no-rsync",
];

#[test]
fn every_fixture_is_used() {
    let used: Vec<&str> = CASES
        .iter()
        .map(|c| c.fixture)
        .chain(OTHER_USES.iter().copied())
        .collect();
    let mut unused = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !used.contains(&name.as_str()) {
            unused.push(name);
        }
    }
    assert!(unused.is_empty(), "fixtures no test uses: {unused:?}");
}
