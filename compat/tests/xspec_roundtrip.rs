//! Property tests for the xspec grammar: `parse(display(x)) == x` for every spec the grammar can
//! spell, and parsing any text never panics and reports a span inside the input.

use std::num::NonZeroU32;

use compat::xspec::{Gateway, XSpec};
use proptest::prelude::*;

/// Printable text, spaces, quotes and a non-ASCII letter; no `//`, no trailing `/` (a value
/// ending in `/` must be the last item, and `chdir` gets that place below).
fn text(min: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~é]{{{min},10}}"))
        .unwrap_or_else(|error| panic!("bad regex: {error}"))
        .prop_filter("no `//` or trailing `/`", |s| {
            !s.contains("//") && !s.ends_with('/')
        })
}

fn value() -> impl Strategy<Value = String> {
    text(1)
}

fn hostname() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9.-]{0,12}"
}

/// A host for `ssh=`: anything that is not an option, quoting included.
fn ssh_host() -> impl Strategy<Value = String> {
    prop_oneof![
        hostname(),
        "[a-z]{1,5}@[a-z0-9.]{1,8}",
        value().prop_filter("not an option", |s| !s.starts_with('-')),
    ]
}

/// One OpenSSH option as words: a flag cluster, an option with a glued argument, or an option
/// followed by its argument word.
fn ssh_option() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        "-[46AaCfGgKkMNnqsTtVvXxYy]{1,3}".prop_map(|flags| vec![flags]),
        ("[BbcDEeFIiJLlmOoPpQRSWw]", value()).prop_map(|(o, arg)| vec![format!("-{o}{arg}")]),
        ("[BbcDEeFIiJLlmOoPpQRSWw]", text(0)).prop_map(|(o, arg)| vec![format!("-{o}"), arg]),
    ]
}

fn gateway() -> impl Strategy<Value = Gateway> {
    let ssh = (prop::collection::vec(ssh_option(), 0..4), ssh_host()).prop_map(|(args, host)| {
        let args = args.into_iter().flatten().collect();
        Gateway::Ssh { args, host }
    });
    let ipv6 = "[0-9a-f]{0,4}:[0-9a-f:]{0,8}";
    let socket = (prop_oneof![hostname(), ipv6], 1..=u16::MAX)
        .prop_map(|(host, port)| Gateway::Socket { host, port });
    let vagrant = value().prop_map(|host| Gateway::VagrantSsh { host });
    prop_oneof![Just(Gateway::Popen), ssh, socket, vagrant]
}

fn env() -> impl Strategy<Value = Vec<(String, String)>> {
    let pairs = prop::collection::vec(("[A-Za-z_][A-Za-z0-9_.*-]{0,6}", text(0)), 0..4);
    pairs.prop_map(|pairs| {
        let mut distinct: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            if !distinct.iter().any(|(seen, _)| *seen == name) {
                distinct.push((name, value));
            }
        }
        distinct
    })
}

prop_compose! {
    fn xspec()(
        gateway in gateway(),
        count in prop_oneof![Just(1u32), 2..10u32, 1..=u32::MAX],
        ssh_config in proptest::option::of(value()),
        python in proptest::option::of(value()),
        chdir in proptest::option::of(prop_oneof![value(), "/([a-z]{1,3}/){0,3}"]),
        nice in proptest::option::of(any::<i32>()),
        env in env(),
        id in proptest::option::of(value()),
        via in proptest::option::of(value()),
        dont_write_bytecode in any::<bool>(),
        execmodel in proptest::option::of(value()),
        installvia in proptest::option::of(value()),
    ) -> XSpec {
        let popen = gateway == Gateway::Popen;
        let socket = matches!(gateway, Gateway::Socket { .. });
        XSpec {
            // An `id=` names one worker, so a spec with one starts one.
            count: NonZeroU32::new(if id.is_some() { 1 } else { count }).unwrap_or(NonZeroU32::MIN),
            python: python.filter(|_| !socket),
            via: via.filter(|_| popen),
            gateway,
            ssh_config,
            chdir,
            nice,
            env,
            id,
            dont_write_bytecode,
            execmodel,
            installvia,
        }
    }
}

/// Pieces of the grammar, so random text often gets past the first check.
fn fragments() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("popen"),
        Just("ssh="),
        Just("socket="),
        Just("vagrant_ssh="),
        Just("//"),
        Just("="),
        Just("*"),
        Just("3"),
        Just("0"),
        Just("env:"),
        Just("[::1]"),
        Just(":80"),
        Just(" "),
        Just("'"),
        Just("-p"),
        Just("chdir"),
        Just("id=x"),
        Just("via=y"),
        Just("é"),
        Just("/"),
        Just("--"),
        Just("nice=1"),
        Just("dont_write_bytecode"),
        Just("["),
        Just("]"),
    ];
    prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_of_display_gives_the_spec_back(spec in xspec()) {
        let text = spec.to_string();
        prop_assert_eq!(text.parse::<XSpec>(), Ok(spec), "text: `{}`", text);
    }

    #[test]
    fn display_of_parsed_text_is_stable(input in fragments()) {
        if let Ok(spec) = input.parse::<XSpec>() {
            let text = spec.to_string();
            prop_assert_eq!(text.parse::<XSpec>(), Ok(spec), "`{}` displayed as `{}`", input, text);
        }
    }

    #[test]
    fn errors_point_inside_the_input(input in prop_oneof![fragments(), ".{0,30}"]) {
        for result in [input.parse::<XSpec>(), XSpec::parse_px(&input)] {
            if let Err(error) = result {
                prop_assert!(input.get(error.span.clone()).is_some(), "`{}`: {:?}", input, error);
                prop_assert!(!error.to_string().is_empty());
                let rendered = error.render(&input);
                prop_assert!(rendered.lines().count() >= 3, "{}", rendered);
            }
        }
    }
}
