//! Every parse error: its span, its message and, where there is one, its hint.

use super::{ErrorKind, ParseError, XSpec};

fn tx_error(input: &str) -> ParseError {
    match input.parse::<XSpec>() {
        Ok(spec) => panic!("`{input}` parsed as {spec:?}"),
        Err(error) => error,
    }
}

fn px_error(input: &str) -> ParseError {
    match XSpec::parse_px(input) {
        Ok(spec) => panic!("proxy `{input}` parsed as {spec:?}"),
        Err(error) => error,
    }
}

#[test]
fn tx_errors_point_at_the_offending_text() {
    #[rustfmt::skip]
    let cases: &[(&str, std::ops::Range<usize>, &str)] = &[
        ("", 0..0, "empty spec"),
        ("3*", 2..2, "empty spec"),
        ("popen//", 5..7, "empty item between `//` separators"),
        ("popen////chdir=x", 7..9, "empty item between `//` separators"),
        ("//popen", 0..2, "empty item between `//` separators"),
        ("*popen", 0..1, "missing worker count before `*`"),
        ("x*popen", 0..1, "invalid worker count `x`: expected a positive integer"),
        ("-1*popen", 0..2, "invalid worker count `-1`: expected a positive integer"),
        ("+2*popen", 0..2, "invalid worker count `+2`: expected a positive integer"),
        ("0*popen", 0..1, "worker count `0` must be at least 1"),
        ("99999999999*popen", 0..11,
         "worker count `99999999999` is too large, the most is 4294967295"),
        ("=x//popen", 0..2, "empty key in `=x`"),
        ("popen//chdri=x", 7..12, "unknown key `chdri`"),
        ("popen//ENV:A=1", 7..12, "unknown key `ENV:A`"),
        ("12", 0..2, "unknown key `12`"),
        ("popen//_private", 7..15, "unknown key `_private`"),
        ("popen//chdir=/srv///id=x", 19..22, "unknown key `/id`"),
        ("popen//popen", 7..12, "duplicate key `popen`"),
        ("popen//chdir=a//chdir=b", 16..23, "duplicate key `chdir`"),
        ("popen//env:A=1//env:A=2", 16..23, "duplicate key `env:A`"),
        ("popen//chdir", 7..12, "`chdir` needs a value: `chdir=DIR`"),
        ("popen//chdir=", 7..13, "`chdir` needs a value: `chdir=DIR`"),
        ("ssh", 0..3, "`ssh` needs a value: `ssh=[OPTIONS] HOST`"),
        ("popen//env:A", 7..12, "`env:A` needs a value: `env:A=VALUE`"),
        ("popen=1", 5..7, "`popen` is a flag and takes no value, got `1`"),
        ("popen//dont_write_bytecode=true", 26..31,
         "`dont_write_bytecode` is a flag and takes no value, got `true`"),
        ("popen//env=A", 7..10, "`env` needs a variable name: `env:NAME=VALUE`"),
        ("popen//env:=1", 7..13, "`env` needs a variable name: `env:NAME=VALUE`"),
        ("popen//nice=high", 12..16, "invalid `nice` value `high`: expected an integer"),
        ("popen//nice=99999999999", 12..23,
         "invalid `nice` value `99999999999`: expected an integer"),
        ("socket=host", 7..11, "invalid socket address `host`: expected `HOST:PORT`"),
        ("socket=[::1", 7..11, "invalid socket address `[::1`: expected `HOST:PORT`"),
        ("socket=[::1]8888", 7..16, "invalid socket address `[::1]8888`: expected `HOST:PORT`"),
        ("socket=::1:8888", 7..15, "ipv6 address in `::1:8888` needs brackets: `[ADDRESS]:PORT`"),
        ("socket=:8888", 7..7, "missing host in socket address `:8888`"),
        ("socket=[]:8888", 8..8, "missing host in socket address `[]:8888`"),
        ("socket=[a[b]:1", 8..11, "invalid socket host `a[b`"),
        ("socket=h:0", 9..10, "invalid port `0`: expected a number from 1 to 65535"),
        ("socket=h:65536", 9..14, "invalid port `65536`: expected a number from 1 to 65535"),
        ("socket=h:http", 9..13, "invalid port `http`: expected a number from 1 to 65535"),
        ("socket=h:", 9..9, "invalid port ``: expected a number from 1 to 65535"),
        ("socket=[::1]:0", 13..14, "invalid port `0`: expected a number from 1 to 65535"),
        ("ssh='host", 4..9, "unbalanced quotes in ssh arguments `'host`"),
        ("ssh=-p 2222", 4..11, "no host in ssh arguments `-p 2222`"),
        ("ssh=''", 4..6, "no host in ssh arguments `''`"),
        ("ssh=host -p", 9..11, "ssh option `-p` needs an argument"),
        ("ssh=host -vi", 9..12, "ssh option `-i` needs an argument"),
        ("ssh=host python3", 9..16, "unexpected `python3` after ssh host `host`"),
        ("ssh=-- -host", 7..12, "ssh host `-host` must not start with `-`"),
        ("chdir=x", 0..7,
         "no gateway: a spec needs one of `popen`, `ssh=`, `socket=` or `vagrant_ssh=`"),
        ("3*chdir=x", 2..9,
         "no gateway: a spec needs one of `popen`, `ssh=`, `socket=` or `vagrant_ssh=`"),
        ("popen//ssh=h", 7..12, "a spec has one gateway, got both `popen` and `ssh`"),
        ("socket=h:1//vagrant_ssh=v", 12..25,
         "a spec has one gateway, got both `socket` and `vagrant_ssh`"),
        ("ssh=h//via=p", 7..12, "`via=` only works with `popen`, not `ssh`"),
        ("socket=h:1//via=p", 12..17, "`via=` only works with `popen`, not `socket`"),
        ("socket=h:1//python=x", 12..20, "`python=` cannot be used with `socket=`"),
        ("3*popen//id=w", 9..13, "`id=w` names one worker, but the spec asks for 3"),
    ];
    for (input, span, message) in cases {
        let error = tx_error(input);
        assert_eq!(
            (&error.span, error.to_string().as_str()),
            (span, *message),
            "`{input}`"
        );
    }
}

#[test]
fn px_errors_point_at_the_offending_text() {
    let cases: &[(&str, std::ops::Range<usize>, &str)] = &[
        (
            "2*id=p//popen",
            0..2,
            "a proxy spec takes no worker count, got `2*`",
        ),
        (
            "*id=p//popen",
            0..1,
            "a proxy spec takes no worker count, got `*`",
        ),
        (
            "socket=127.0.0.1:8888",
            0..21,
            "a proxy spec needs an `id=`",
        ),
        (
            "id=p//popen//via=q",
            13..18,
            "a proxy spec cannot use `via=`",
        ),
        ("id=p//chdri=x", 6..11, "unknown key `chdri`"),
    ];
    for (input, span, message) in cases {
        let error = px_error(input);
        assert_eq!(
            (&error.span, error.to_string().as_str()),
            (span, *message),
            "`{input}`"
        );
    }
}

#[test]
fn hints_say_what_to_do() {
    let cases: &[(&str, Option<&str>)] = &[
        ("", Some("a local worker is `popen`")),
        ("popen//", Some("remove the extra `//`")),
        (
            "0*popen",
            Some("write the worker count first, as in `4*popen`"),
        ),
        ("popen//chdri=x", Some("did you mean `chdir`?")),
        ("popen//pyhton=x", Some("did you mean `python`?")),
        (
            "popen//dont_write_bytecodes",
            Some("did you mean `dont_write_bytecode`?"),
        ),
        ("popen//ENV:A=1", Some("did you mean `env:A`?")),
        ("popen//envv=1", Some("did you mean `env:NAME`?")),
        ("12", Some("a worker count needs a `*`, as in `12*popen`")),
        ("popen=1", Some("write `popen` alone")),
        (
            "popen//chdir=/srv///id=x",
            Some("a value ending in `/` must be the last item"),
        ),
        (
            "socket=::1:8888",
            Some("write `[::1]:8888`, not `::1:8888`"),
        ),
        (
            "ssh=host ls",
            Some("rdist runs its own remote command; give ssh options and then the host"),
        ),
        ("chdir=x", Some("add `popen` for a local worker")),
        (
            "ssh=h//via=p",
            Some("for an ssh jump host use `ssh=-J JUMP HOST`"),
        ),
        ("socket=h:1//via=p", None),
        ("popen//popen", None),
        ("99999999999*popen", None),
    ];
    for (input, hint) in cases {
        assert_eq!(tx_error(input).hint().as_deref(), *hint, "`{input}`");
    }
    let unknown = tx_error("popen//qqq").hint().unwrap_or_default();
    assert!(
        unknown.starts_with("known keys are `popen`, `ssh`"),
        "{unknown}"
    );
    assert!(unknown.ends_with("`installvia`, `env:NAME`"), "{unknown}");
    let proxy = px_error("popen").hint();
    assert_eq!(
        proxy.as_deref(),
        Some("name it, as in `--px id=NAME//ssh=HOST`")
    );
}

#[test]
fn unknown_key_gives_the_suggestion_in_the_kind() {
    let error = tx_error("popen//chdri=x");
    let want = ErrorKind::UnknownKey {
        key: "chdri".into(),
        suggestion: Some("chdir".into()),
    };
    assert_eq!(error.kind, want);
}

#[test]
fn render_draws_a_caret_under_the_span_and_the_hint() {
    let input = "popen//chdri=/tmp";
    let want =
        "unknown key `chdri`\n  popen//chdri=/tmp\n         ^^^^^\nhint: did you mean `chdir`?";
    assert_eq!(tx_error(input).render(input), want);
}

#[test]
fn render_without_hint_counts_characters_not_bytes() {
    let input = "popen//env:É=1//env:É=2";
    let error = tx_error(input);
    let want = "duplicate key `env:É`\n  popen//env:É=1//env:É=2\n                  ^^^^^^^";
    assert_eq!(error.render(input), want);
}

#[test]
fn render_marks_an_empty_span_with_one_caret() {
    let input = "3*";
    let want = "empty spec\n  3*\n    ^\nhint: a local worker is `popen`";
    assert_eq!(tx_error(input).render(input), want);
}

#[test]
fn render_survives_a_span_outside_the_input() {
    let error = tx_error("popen//chdri=x");
    let rendered = error.render("po\tp");
    assert!(rendered.contains("\n  po p\n      ^\n"), "{rendered}");
}
