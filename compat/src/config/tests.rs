//! The schema against what `rdist migrate` writes, and every error's exact text.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::legacy::RdistConfig;

fn ok(text: &str) -> Loaded {
    parse(text, Path::new("/p/rdist.toml"))
        .unwrap_or_else(|e| panic!("{}\n{text}", e.located(Path::new("/p"))))
}

/// `file:line: message` and the hint.
fn err(text: &str, file: &str) -> (String, Option<String>) {
    let e = parse(text, &Path::new("/p").join(file)).expect_err(text);
    (e.located(Path::new("/p")), e.hint())
}

/// What a rendered `RdistConfig` must read back as.
fn expected(c: &RdistConfig) -> Config {
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Config {
        sync: SyncConfig {
            roots: list(&c.roots),
            ignore: list(&c.ignore),
            ..SyncConfig::default()
        },
        run: RunConfig {
            tx: if c.tx_inert { None } else { list(&c.tx) },
            px: list(&c.px),
            numprocesses: c.numprocesses.clone(),
            dist: c.dist.clone(),
            ..RunConfig::default()
        },
    }
}

const SPECS: [&str; 6] = [
    "popen",
    "2*popen//chdir=/tmp/w",
    "ssh=-i \"k y\" ci@h//python=python3",
    "socket=[::1]:8888//chdir=w",
    "popen//via=p//env:A=b c",
    "id=x//ssh=h//nice=5",
];

fn text() -> impl Strategy<Value = String> {
    // Quotes, backslashes, control characters, non-ASCII: everything `render` must escape.
    proptest::string::string_regex("[a-z/.*\"\\\\ \t\n\u{1}é{}\\[\\]]{1,12}").unwrap()
}

fn rdist_config() -> impl Strategy<Value = RdistConfig> {
    let texts = || proptest::collection::vec(text(), 0..4);
    let specs = proptest::collection::vec(proptest::sample::select(&SPECS[..]), 0..3);
    let np = proptest::option::of(prop_oneof![
        (1u32..200).prop_map(|n| n.to_string()),
        Just("auto".to_owned()),
        Just("logical".to_owned()),
    ]);
    let dist = proptest::option::of(proptest::sample::select(&DIST_MODES[..]));
    (
        texts(),
        texts(),
        specs,
        any::<bool>(),
        np,
        dist,
        any::<bool>(),
    )
        .prop_map(
            |(roots, ignore, tx, with_px, numprocesses, dist, tx_inert)| RdistConfig {
                roots,
                ignore,
                tx: tx.iter().map(|s| (*s).to_owned()).collect(),
                px: if with_px {
                    vec!["id=p//socket=h:1".to_owned()]
                } else {
                    Vec::new()
                },
                numprocesses,
                dist: dist.map(str::to_owned),
                tx_inert,
            },
        )
}

proptest! {
    #[test]
    fn every_rendered_config_parses_back_to_the_same_settings(c in rdist_config()) {
        let text = c.render("tox.ini [pytest]");
        prop_assert_eq!(ok(&text).config, expected(&c), "{}", text);
    }
}

#[test]
fn the_module_doc_example_of_render_parses() {
    let text = r#"
[sync]
roots = ["src", "tests", "tox.ini"]
ignore = ["*.log", "/build"]

[run]
tx = ["ssh=ci@build1//python=python3", "2*popen//python=python3.12"]
px = ["id=gw//ssh=jump"]
numprocesses = 4
dist = "load"
"#;
    let l = ok(text);
    assert_eq!(
        l.config.sync.roots.as_deref().unwrap(),
        ["src", "tests", "tox.ini"]
    );
    assert_eq!(l.config.run.numprocesses.as_deref(), Some("4"));
    assert_eq!(l.lines["run.dist"], 10);
    assert_eq!(l.origin("run.tx", Path::new("/p")), "rdist.toml:7");
}

#[test]
fn every_key_has_its_type() {
    let l = ok(r#"
[sync]
roots = ["."]
ignore = []
layout = "xdist"
lock_wait = 0
fsync = true
compress = true
[run]
tx = ["popen//chdir=w"]
px = []
numprocesses = "auto"
dist = "each"
python = "python3.12"
dir = "work/rdist"
connect_timeout = 2.5
ssh_reuse = 0
heartbeat_timeout = 30
max_worker_restart = 0
token_file = "../token"
"#);
    let (s, r) = (&l.config.sync, &l.config.run);
    assert_eq!(s.layout.as_deref(), Some("xdist"));
    assert_eq!((s.lock_wait, s.fsync), (Some(0.0), Some(true)));
    assert_eq!(s.compress, Some(true));
    assert_eq!(s.ignore.as_deref(), Some(&[][..]));
    assert_eq!(r.connect_timeout, Some(2.5));
    assert_eq!(r.ssh_reuse, Some(0));
    assert_eq!(r.heartbeat_timeout, Some(30.0));
    assert_eq!(r.max_worker_restart, Some(0));
    assert_eq!(r.python.as_deref(), Some("python3.12"));
    assert_eq!(r.dir.as_deref(), Some("work/rdist"));
    assert_eq!(r.token_file.as_deref(), Some("../token"));
    assert_eq!(l.dir(), Path::new("/p"));
}

#[test]
fn pyproject_reads_only_tool_rdist() {
    let path = Path::new("/p/pyproject.toml");
    let text = "[project]\nname = \"x\"\n\n[tool.rdist.run]\ntx = [\"popen//chdir=w\"]\n";
    let l = parse(text, path).unwrap();
    assert!(l.in_pyproject);
    assert_eq!(l.config.run.tx.as_deref().unwrap(), ["popen//chdir=w"]);
    assert_eq!(l.lines["run.tx"], 5);
    assert_eq!(l.section("run"), "[tool.rdist.run]");
    // Other tools' tables are not rdist's business; no [tool.rdist] = no settings.
    let l = parse("[tool.black]\nline-length = 1\n", path).unwrap();
    assert!(l.lines.is_empty());
    assert_eq!(l.config, Config::default());
}

#[test]
fn errors_name_the_file_line_and_key() {
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "[run]\ntx = []\nnumprocess = 4\n",
            "rdist.toml",
            "rdist.toml:3: unknown key `numprocess` in [run]",
            Some("did you mean `numprocesses`?"),
        ),
        (
            "[tool.rdist.sync]\nrots = []\n",
            "pyproject.toml",
            "pyproject.toml:2: unknown key `rots` in [tool.rdist.sync]",
            Some("did you mean `roots`?"),
        ),
        (
            "[sync]\nzzz = 1\n",
            "rdist.toml",
            "rdist.toml:2: unknown key `zzz` in [sync]",
            Some("known keys: `roots`, `ignore`, `layout`, `lock_wait`, `fsync`, `compress`"),
        ),
        (
            "[rnu]\ntx = []\n",
            "rdist.toml",
            "rdist.toml:1: unknown table `[rnu]`",
            Some("did you mean `[run]`?"),
        ),
        (
            "tx = [\"popen\"]\n",
            "rdist.toml",
            "rdist.toml:1: `tx` belongs in the [run] table",
            Some("move it below a `[run]` line"),
        ),
        (
            "[tool.rdist]\nroots = [\"src\"]\n",
            "pyproject.toml",
            "pyproject.toml:2: `roots` belongs in the [tool.rdist.sync] table",
            Some("move it below a `[tool.rdist.sync]` line"),
        ),
        (
            "[sync]\nroots = \"src tests\"\n",
            "rdist.toml",
            "rdist.toml:2: `roots` must be a list of strings, not a string",
            Some("write `roots = [\"src\", \"tests\"]`"),
        ),
        (
            "[run]\nconnect_timeout = \"5\"\n",
            "rdist.toml",
            "rdist.toml:2: `connect_timeout` must be a number of seconds, not a string",
            None,
        ),
        (
            "[run]\ndist = \"lod\"\n",
            "rdist.toml",
            "rdist.toml:2: invalid `dist` value `lod`: expected one of `each`, `load`, \
             `loadscope`, `loadfile`, `loadgroup`, `worksteal`, `no`",
            Some("did you mean `load`?"),
        ),
        (
            "[run]\nnumprocesses = 0\n",
            "rdist.toml",
            "rdist.toml:2: invalid `numprocesses` value `0`: expected a positive integer, \
             `auto` or `logical`",
            None,
        ),
        (
            "[sync]\nfsync = 1\n",
            "rdist.toml",
            "rdist.toml:2: `fsync` must be a boolean (`true` or `false`), not an integer",
            None,
        ),
        (
            "sync = 1\n",
            "rdist.toml",
            "rdist.toml:1: `sync` must be a table, not an integer",
            None,
        ),
        (
            "[run]\ntx = [\"popen//chdri=/w\"]\n",
            "rdist.toml",
            "rdist.toml:2: invalid worker spec in `tx`: unknown key `chdri`\n  popen//chdri=/w\n         ^^^^^",
            Some("did you mean `chdir`?"),
        ),
        (
            "[run\n",
            "rdist.toml",
            "rdist.toml:1: invalid TOML: unclosed table, expected `]`",
            Some("fix the TOML syntax at this line"),
        ),
    ];
    for (text, file, message, hint) in cases {
        let (m, h) = err(text, file);
        assert_eq!(&m, message, "{text}");
        assert_eq!(h.as_deref(), *hint, "{text}");
    }
}

#[test]
fn discovery_prefers_rdist_toml_and_says_so() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    assert_eq!(discover(root).unwrap(), None);
    std::fs::write(root.join("pyproject.toml"), "[project]\nname = \"x\"\n").unwrap();
    assert_eq!(discover(root).unwrap(), None);
    std::fs::write(
        root.join("pyproject.toml"),
        "[tool.rdist.sync]\nroots = [\"a\"]\n",
    )
    .unwrap();
    let l = discover(root).unwrap().unwrap();
    assert!(l.in_pyproject && l.notes.is_empty());
    std::fs::write(root.join("rdist.toml"), "[sync]\nroots = [\"b\"]\n").unwrap();
    let l = discover(root).unwrap().unwrap();
    assert!(!l.in_pyproject);
    assert_eq!(l.config.sync.roots.as_deref().unwrap(), ["b"]);
    assert_eq!(l.notes.len(), 1, "{:?}", l.notes);
    assert!(
        l.notes[0].contains("ignoring [tool.rdist]"),
        "{:?}",
        l.notes
    );
}

#[test]
fn the_readme_example_sets_every_key() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("a Configuration section");
    let text = section
        .split("```toml\n")
        .nth(1)
        .and_then(|t| t.split("```").next())
        .expect("a toml block");
    let l = ok(text);
    let documented: Vec<&str> = l.lines.keys().map(String::as_str).collect();
    let mut every: Vec<String> = ["sync", "run"].map(str::to_owned).to_vec();
    every.extend(SYNC_KEYS.iter().map(|k| format!("sync.{k}")));
    every.extend(RUN_KEYS.iter().map(|k| format!("run.{k}")));
    every.sort();
    assert_eq!(documented, every);
}
