//! `rdist run` and `rdist check` lines mix rdist's options with pytest's in any order, as
//! `pytest -d --tx popen//chdir=/w -x tests/ --rsyncdir pkg -k foo` did. Left to clap, the
//! trailing pytest arguments would swallow every rdist option after the first pytest one, so
//! [`reorder`] first moves rdist's options (known from clap's own definition of the subcommand)
//! to the front and pytest's behind a `--`.
//!
//! A token is rdist's when it is one of the subcommand's options (`--tx`, `--tx=SPEC`, `-n4`,
//! `-n=4`, `-d`, a cluster of rdist's flags such as `-vv`), with its value when that is the next
//! token. Anything else is pytest's, and so is the value of a pytest option known to take one
//! (`-k --tx` keeps `--tx` as pytest's expression), and everything after a `--`.

use std::collections::HashMap;
use std::ffi::OsString;

use clap::CommandFactory;

use super::Cli;
use crate::commands::run::option_value;

/// `argv` with the options of `rdist run` / `rdist check` in front of the pytest arguments;
/// other command lines unchanged.
pub fn reorder(argv: Vec<OsString>) -> Vec<OsString> {
    let Some(sub) = argv.get(1).and_then(|a| a.to_str()).map(str::to_owned) else {
        return argv;
    };
    if !matches!(sub.as_str(), "run" | "check") {
        return argv;
    }
    let cli = Cli::command();
    let Some(command) = cli.find_subcommand(&sub) else {
        return argv;
    };
    let options = Options::of(command);
    let mut iter = argv.into_iter();
    let mut out: Vec<OsString> = iter.by_ref().take(2).collect();
    let (ours, pytest) = options.split(iter.collect());
    out.extend(ours);
    if !pytest.is_empty() {
        out.push("--".into());
        out.extend(pytest);
    }
    out
}

/// A subcommand's options: name -> whether it takes a value; a short option's long name.
struct Options {
    long: HashMap<String, bool>,
    short: HashMap<char, (bool, Option<String>)>,
}

impl Options {
    fn of(command: &clap::Command) -> Options {
        let mut long = HashMap::from([("help".to_owned(), false), ("version".to_owned(), false)]);
        let mut short = HashMap::from([('h', (false, None)), ('V', (false, None))]);
        for arg in command.get_arguments().filter(|a| !a.is_positional()) {
            let takes = arg.get_action().takes_values();
            for name in arg.get_long_and_visible_aliases().unwrap_or_default() {
                long.insert(name.to_owned(), takes);
            }
            for c in arg.get_short_and_visible_aliases().unwrap_or_default() {
                short.insert(c, (takes, arg.get_long().map(str::to_owned)));
            }
        }
        Options { long, short }
    }

    /// How clap must see `token`, if it is one of ours.
    fn recognise(&self, token: &str) -> Option<Ours> {
        if let Some(name) = token.strip_prefix("--") {
            return match name.split_once('=') {
                Some((n, _)) => self.long.get(n).map(|_| Ours::Whole),
                None => self.long.get(name).map(|&takes| match takes {
                    true => Ours::ValueNext(token.to_owned()),
                    false => Ours::Whole,
                }),
            };
        }
        let letters = token.strip_prefix('-')?;
        let mut chars = letters.chars();
        let first = chars.next()?;
        let (takes, long) = self.short.get(&first)?;
        if !takes {
            // `-d`, `-vv`, `-dv`: only when every letter is one of our flags.
            return chars
                .all(|c| self.short.get(&c).is_some_and(|(takes, _)| !takes))
                .then_some(Ours::Whole);
        }
        // clap takes `-n4` for a pytest argument: spelled `--numprocesses=4` for it.
        let name = long
            .as_ref()
            .map_or_else(|| format!("-{first}"), |l| format!("--{l}"));
        let rest = &letters[first.len_utf8()..];
        Some(if rest.is_empty() {
            Ours::ValueNext(name)
        } else {
            Ours::Joined(format!("{name}={}", rest.strip_prefix('=').unwrap_or(rest)))
        })
    }

    /// rdist's tokens and pytest's, each in their order.
    fn split(&self, tokens: Vec<OsString>) -> (Vec<OsString>, Vec<OsString>) {
        let (mut ours, mut pytest) = (Vec::new(), Vec::new());
        let mut iter = tokens.into_iter();
        while let Some(token) = iter.next() {
            let Some(text) = token.to_str() else {
                pytest.push(token);
                continue;
            };
            if text == "--" {
                pytest.extend(iter.by_ref());
                break;
            }
            match self.recognise(text) {
                Some(Ours::Whole) => ours.push(token),
                Some(Ours::Joined(t)) => ours.push(t.into()),
                // Joined with `=`, so clap takes a value such as `-x` as the value.
                Some(Ours::ValueNext(name)) => match iter.next() {
                    Some(value) => {
                        let mut joined = OsString::from(format!("{name}="));
                        joined.push(value);
                        ours.push(joined);
                    }
                    None => ours.push(token),
                },
                None => {
                    let pytest_value = text.starts_with('-') && option_value(text).is_some();
                    pytest.push(token);
                    if pytest_value {
                        pytest.extend(iter.next());
                    }
                }
            }
        }
        (ours, pytest)
    }
}

/// One of rdist's options, as clap must see it.
enum Ours {
    /// The token as it is.
    Whole,
    /// This text instead.
    Joined(String),
    /// This option name, joined with the next token as its value.
    ValueNext(String),
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Command;
    use crate::dispatch::schedule::Mode;

    /// `rdist ARGS` parsed after [`reorder`], as `rdist run`'s options.
    fn parse(line: &str) -> crate::cli::RunArgs {
        let argv: Vec<OsString> = std::iter::once("rdist".to_owned())
            .chain(shell_words::split(line).unwrap())
            .map(OsString::from)
            .collect();
        let cli = Cli::try_parse_from(reorder(argv)).unwrap_or_else(|e| panic!("{line}: {e}"));
        match cli.command {
            Command::Run(a) => a,
            Command::Check(a) => a.run,
            other => panic!("{line}: {other:?}"),
        }
    }

    /// (line, tx, px, rsyncdir, rsyncignore, -n, dist, -d, pytest args)
    type Row = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
        Option<&'static str>,
        Mode,
        bool,
        &'static [&'static str],
    );

    #[test]
    fn legacy_lines_parse_with_options_anywhere() {
        let rows: &[Row] = &[
            (
                "run -x --tx popen//chdir=/tmp/w --rsyncdir pkg tests/ -k foo",
                &["popen//chdir=/tmp/w"],
                &[],
                &["pkg"],
                &[],
                None,
                Mode::Load,
                false,
                &["-x", "tests/", "-k", "foo"],
            ),
            (
                "run -d --tx=ssh=h//python=python3 --tx 2*popen --dist=each tests -v",
                &["ssh=h//python=python3", "2*popen"],
                &[],
                &[],
                &[],
                None,
                Mode::Each,
                true,
                &["tests"],
            ),
            (
                "run tests/ --dist loadfile --px id=p//socket=h:1 --tx 3*popen//via=p \
                 --rsyncdir=src --rsyncignore '*.log' --rsyncignore=build -rA",
                &["3*popen//via=p"],
                &["id=p//socket=h:1"],
                &["src"],
                &["*.log", "build"],
                None,
                Mode::Loadfile,
                false,
                &["tests/", "-rA"],
            ),
            (
                "run -n 4 -x",
                &[],
                &[],
                &[],
                &[],
                Some("4"),
                Mode::Load,
                false,
                &["-x"],
            ),
            (
                "run -x -n4",
                &[],
                &[],
                &[],
                &[],
                Some("4"),
                Mode::Load,
                false,
                &["-x"],
            ),
            (
                "run -k slow -n=3",
                &[],
                &[],
                &[],
                &[],
                Some("3"),
                Mode::Load,
                false,
                &["-k", "slow"],
            ),
            (
                "run --numprocesses=auto",
                &[],
                &[],
                &[],
                &[],
                Some("auto"),
                Mode::Load,
                false,
                &[],
            ),
            (
                // The value of a pytest option stays pytest's, even when it looks like ours.
                "run -k --tx -m -d tests",
                &[],
                &[],
                &[],
                &[],
                None,
                Mode::Load,
                false,
                &["-k", "--tx", "-m", "-d", "tests"],
            ),
            (
                // After `--`, everything is pytest's.
                "run --tx popen -- --tx x -n 2",
                &["popen"],
                &[],
                &[],
                &[],
                None,
                Mode::Load,
                false,
                &["--tx", "x", "-n", "2"],
            ),
            (
                // A cluster with a pytest flag is pytest's; one of rdist's flags only is ours.
                "run -xv -dv tests/test_a.py::test_b",
                &[],
                &[],
                &[],
                &[],
                None,
                Mode::Load,
                true,
                &["-xv", "tests/test_a.py::test_b"],
            ),
            (
                "check tests --tx popen//chdir=w --fix",
                &["popen//chdir=w"],
                &[],
                &[],
                &[],
                None,
                Mode::Load,
                false,
                &["tests"],
            ),
        ];
        for (line, tx, px, rsyncdir, rsyncignore, n, dist, d, rest) in rows {
            let a = parse(line);
            assert_eq!(a.common.tx, *tx, "{line}");
            assert_eq!(a.common.px, *px, "{line}");
            let dirs: Vec<String> = a
                .common
                .rsyncdir
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            assert_eq!(dirs, *rsyncdir, "{line}");
            assert_eq!(a.common.rsyncignore, *rsyncignore, "{line}");
            assert_eq!(a.numprocesses.as_deref(), *n, "{line}");
            assert_eq!(a.dist, *dist, "{line}");
            assert_eq!(a.distribute, *d, "{line}");
            assert_eq!(a.pytest_args, *rest, "{line}");
        }
        assert!(parse("run -vv tests").verbose == 2);
    }

    #[test]
    fn other_commands_are_left_alone() {
        let argv: Vec<OsString> = ["rdist", "sync", "-n", "--tx", "popen//chdir=w", "x"]
            .map(OsString::from)
            .to_vec();
        assert_eq!(reorder(argv.clone()), argv);
    }
}
