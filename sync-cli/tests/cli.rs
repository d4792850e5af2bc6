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
