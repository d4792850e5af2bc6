//! Valid specs: what they parse to, their canonical text, and the helpers on [`XSpec`].

use std::num::NonZeroU32;

use super::{Gateway, NoteLevel, SpecNote, XSpec};

pub(super) fn count(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

pub(super) fn some(text: &str) -> Option<String> {
    Some(text.to_owned())
}

fn popen() -> XSpec {
    XSpec::new(Gateway::Popen)
}

fn ssh(args: &[&str], host: &str) -> XSpec {
    let args = args.iter().map(|arg| arg.to_string()).collect();
    XSpec::new(Gateway::Ssh {
        args,
        host: host.into(),
    })
}

fn socket(host: &str, port: u16) -> XSpec {
    XSpec::new(Gateway::Socket {
        host: host.into(),
        port,
    })
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let pairs = pairs.iter();
    pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub(super) fn tx(input: &str) -> XSpec {
    match input.parse() {
        Ok(spec) => spec,
        Err(error) => panic!("`{input}`: {error}"),
    }
}

pub(super) fn px(input: &str) -> XSpec {
    match XSpec::parse_px(input) {
        Ok(spec) => spec,
        Err(error) => panic!("proxy `{input}`: {error}"),
    }
}

#[test]
fn parses_valid_specs() {
    let cases: Vec<(&str, XSpec)> = vec![
        // The examples of the legacy spec, section 3.6.
        ("popen", popen()),
        (
            "3*popen//python=python3.12",
            XSpec {
                count: count(3),
                python: some("python3.12"),
                ..popen()
            },
        ),
        (
            "popen//chdir=/srv/cache//env:DJANGO_SETTINGS_MODULE=x//nice=10",
            XSpec {
                chdir: some("/srv/cache"),
                env: env(&[("DJANGO_SETTINGS_MODULE", "x")]),
                nice: Some(10),
                ..popen()
            },
        ),
        (
            "ssh=-p 2222 -i ~/.ssh/ci user@host//python=/opt/venv/bin/python//chdir=work",
            XSpec {
                python: some("/opt/venv/bin/python"),
                chdir: some("work"),
                ..ssh(&["-p", "2222", "-i", "~/.ssh/ci"], "user@host")
            },
        ),
        (
            "ssh=host//ssh_config=./ssh_config//python=sudo -u svc python3",
            XSpec {
                ssh_config: some("./ssh_config"),
                python: some("sudo -u svc python3"),
                ..ssh(&[], "host")
            },
        ),
        (
            "socket=10.0.0.5:8888//id=win1",
            XSpec {
                id: some("win1"),
                ..socket("10.0.0.5", 8888)
            },
        ),
        (
            "4*popen//via=box//chdir=rdist",
            XSpec {
                count: count(4),
                via: some("box"),
                chdir: some("rdist"),
                ..popen()
            },
        ),
        (
            "vagrant_ssh=default//python=python3",
            XSpec {
                python: some("python3"),
                ..XSpec::new(Gateway::VagrantSsh {
                    host: "default".into(),
                })
            },
        ),
        // The forms the issue names.
        (
            "ssh=-p 2222 -i key user@host",
            ssh(&["-p", "2222", "-i", "key"], "user@host"),
        ),
        ("socket=[::1]:8888", socket("::1", 8888)),
        (
            "3*popen//chdir=/tmp/w",
            XSpec {
                count: count(3),
                chdir: some("/tmp/w"),
                ..popen()
            },
        ),
        (
            "popen//python=python3.12//env:A=1//env:B=x y",
            XSpec {
                python: some("python3.12"),
                env: env(&[("A", "1"), ("B", "x y")]),
                ..popen()
            },
        ),
        // OpenSSH reading of `ssh=`.
        ("ssh=user@host -p 2222", ssh(&["-p", "2222"], "user@host")),
        ("ssh=-p2222 -vC host", ssh(&["-p2222", "-vC"], "host")),
        ("ssh=-vp 2222 host", ssh(&["-vp", "2222"], "host")),
        ("ssh=-o -x host", ssh(&["-o", "-x"], "host")),
        ("ssh=-- host", ssh(&[], "host")),
        (
            "ssh=-o 'ProxyCommand=ssh -W %h:%p jump' host",
            ssh(&["-o", "ProxyCommand=ssh -W %h:%p jump"], "host"),
        ),
        // Sockets.
        ("socket=[fe80::1%eth0]:1", socket("fe80::1%eth0", 1)),
        ("socket=localhost:65535", socket("localhost", 65535)),
        ("socket=[localhost]:80", socket("localhost", 80)),
        // Other keys and edge cases.
        (
            "execmodel=thread//popen",
            XSpec {
                execmodel: some("thread"),
                ..popen()
            },
        ),
        (
            "popen//env:X=a*b",
            XSpec {
                env: env(&[("X", "a*b")]),
                ..popen()
            },
        ),
        (
            "2*ssh=h//env:X=a*b",
            XSpec {
                count: count(2),
                env: env(&[("X", "a*b")]),
                ..ssh(&[], "h")
            },
        ),
        (
            "popen//env:EMPTY=",
            XSpec {
                env: env(&[("EMPTY", "")]),
                ..popen()
            },
        ),
        (
            "popen//chdir=a=b",
            XSpec {
                chdir: some("a=b"),
                ..popen()
            },
        ),
        (
            "popen//chdir=/srv/",
            XSpec {
                chdir: some("/srv/"),
                ..popen()
            },
        ),
        (
            "07*popen",
            XSpec {
                count: count(7),
                ..popen()
            },
        ),
        (
            "popen//dont_write_bytecode//nice=-5//id=w1//installvia=p",
            XSpec {
                dont_write_bytecode: true,
                nice: Some(-5),
                id: some("w1"),
                installvia: some("p"),
                ..popen()
            },
        ),
    ];
    for (input, want) in cases {
        assert_eq!(tx(input), want, "`{input}`");
        assert_eq!(
            tx(&want.to_string()),
            want,
            "`{input}` displayed as `{want}`"
        );
    }
}

#[test]
fn display_writes_the_canonical_text() {
    let cases = [
        ("popen", "popen"),
        ("1*popen", "popen"),
        (
            "popen//id=a//chdir=x//python=p",
            "popen//python=p//chdir=x//id=a",
        ),
        (
            "installvia=i//execmodel=e//dont_write_bytecode//popen",
            "popen//dont_write_bytecode//execmodel=e//installvia=i",
        ),
        ("ssh=host -p 2222", "ssh=-p 2222 host"),
        (
            "ssh=-o \"ProxyCommand=ssh -W %h:%p j\" host",
            "ssh=-o 'ProxyCommand=ssh -W %h:%p j' host",
        ),
        ("socket=[::1]:8888//id=w", "socket=[::1]:8888//id=w"),
        (
            "popen//env:B=2//env:A=1//nice=+3",
            "popen//nice=3//env:B=2//env:A=1",
        ),
        ("popen//id=x//chdir=/srv/", "popen//id=x//chdir=/srv/"),
        (
            "popen//chdir=x//python=/opt/bin/",
            "popen//chdir=x//python=/opt/bin/",
        ),
        (
            "popen//env:B=2//id=i//env:A=x/",
            "popen//env:B=2//id=i//env:A=x/",
        ),
        ("12*vagrant_ssh=v", "12*vagrant_ssh=v"),
    ];
    for (input, want) in cases {
        let spec = tx(input);
        assert_eq!(spec.to_string(), want, "`{input}`");
        assert_eq!(tx(want), spec, "`{want}`");
    }
}

#[test]
fn expand_gives_one_spec_per_worker() {
    let workers = tx("3*popen//chdir=/tmp/w").expand();
    assert_eq!(workers, vec![tx("popen//chdir=/tmp/w"); 3]);
    assert_eq!(tx("ssh=h").expand(), vec![tx("ssh=h")]);
}

#[test]
fn is_local_means_popen_without_via() {
    let cases = [
        ("popen", true),
        ("4*popen//chdir=x", true),
        ("popen//via=p", false),
        ("ssh=localhost", false),
        ("socket=127.0.0.1:8888", false),
        ("vagrant_ssh=default", false),
    ];
    for (input, want) in cases {
        assert_eq!(tx(input).is_local(), want, "`{input}`");
    }
}

#[test]
fn notes_explain_keys_rdist_treats_differently() {
    let warn = |message: &str| SpecNote {
        level: NoteLevel::Warn,
        message: message.into(),
    };
    let cases = [
        ("popen//chdir=x//python=p", vec![]),
        (
            "popen//execmodel=main_thread_only",
            vec![warn("`execmodel=main_thread_only` is ignored: rdist workers are always separate processes")],
        ),
        (
            "vagrant_ssh=default",
            vec![warn("`vagrant_ssh=default` is reached as `ssh default`: rdist needs the vagrant host in your ssh config (`vagrant ssh-config default >> ~/.ssh/config`)")],
        ),
        (
            "socket=h:1//installvia=gw0",
            vec![SpecNote {
                level: NoteLevel::Error,
                message: "`installvia=gw0` is not supported: start `rdist serve` on the target host and connect with `socket=HOST:PORT`".into(),
            }],
        ),
    ];
    for (input, want) in cases {
        assert_eq!(tx(input).notes(), want, "`{input}`");
    }
    let levels: Vec<_> = tx("vagrant_ssh=v//execmodel=t//installvia=i")
        .notes()
        .iter()
        .map(|n| n.level)
        .collect();
    assert_eq!(levels, [NoteLevel::Warn, NoteLevel::Warn, NoteLevel::Error]);
}
