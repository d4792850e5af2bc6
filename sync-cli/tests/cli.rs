//! The binary's own surface: help, version, usage errors. (Scenarios live in the workspace's
//! `tests/` crate; this file also makes cargo build the binary for them.)

use std::process::Command;

fn rdist(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rdist"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_documents_the_ignore_rules() {
    let o = rdist(&["sync", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    // Compare with line wrapping folded away.
    let help = String::from_utf8(o.stdout)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for needle in [
        "--rsyncdir",
        "--rsyncignore",
        "`.*`, `*.pyc`, `*.pyo` and `*~` are always ignored",
        "never deleted there",
        "--tx",
        "--dry-run",
        "--json",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

#[test]
fn usage_errors_exit_4() {
    let o = rdist(&["sync", "--rsyncdir", "."]);
    assert_eq!(o.status.code(), Some(4));
    let o = rdist(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(4));
}

#[test]
fn version_prints() {
    let o = rdist(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("rdist "));
}

/// The allocator's one-arena setting is part of the binary, however it was built: from the
/// repository, with `--manifest-path` from elsewhere, or by `cargo install rdist` from the
/// registry (none of which but the first would see a `.cargo/config.toml`).
#[cfg(target_os = "linux")]
#[test]
fn the_binary_runs_jemalloc_with_one_arena() {
    let o = Command::new(env!("CARGO_BIN_EXE_rdist"))
        .arg("--version")
        // Read by the prefixed jemalloc at start-up; prints its options at exit, on stderr.
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let stats = String::from_utf8_lossy(&o.stderr);
    assert!(
        stats.lines().any(|l| l.trim() == "opt.narenas: 1"),
        "jemalloc runs with more than one arena:\n{}",
        stats
            .lines()
            .filter(|l| l.contains("narenas") || l.contains("malloc_conf"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
