//! The xdist options in a pytest argument list (`addopts`, `PYTEST_ADDOPTS`, a command line),
//! read as pytest's argparse reads them: `--opt VALUE` and `--opt=VALUE`, `-n4`, `-n 4` and
//! `-n=4`, `-o key=value` and `-okey=value`, nothing after `--`. Everything else is kept in order
//! as [`Opt::Other`] for the translated command line.

use serde::Serialize;

use super::{ErrorKind, LegacyError, Origin};

/// One argument with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    pub origin: Origin,
}

/// An xdist option (or another argument).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "option", content = "value", rename_all = "snake_case")]
pub enum Opt {
    /// `-d` / `--distload`: `--dist load`, whatever `--dist` says.
    Distload,
    /// `--dist MODE`.
    Dist(String),
    /// `-n N` / `--numprocesses N`: `N`, `auto` or `logical`.
    Numprocesses(String),
    /// `--tx SPEC`.
    Tx(String),
    /// `--px SPEC`.
    Px(String),
    /// `--rsyncdir DIR`.
    RsyncDir(String),
    /// `--rsyncignore GLOB`.
    RsyncIgnore(String),
    /// `-o rsyncdirs=...` / `-o rsyncignore=...`.
    Override { key: String, value: String },
    /// Any other argument, as written.
    Other(String),
}

/// An option with its origin and its text as written (`--tx ssh=h`, `--tx=ssh=h`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub opt: Opt,
    pub origin: Origin,
    pub text: String,
    /// The value was the next argument rather than joined with `=` (or glued to `-n`).
    pub separate: bool,
}

/// The `--dist` modes xdist accepts.
pub const DIST_MODES: [&str; 7] = [
    "each",
    "load",
    "loadscope",
    "loadfile",
    "loadgroup",
    "worksteal",
    "no",
];

/// The ini options `-o` may override that matter to a migration.
pub const OVERRIDABLE: [&str; 2] = ["rsyncdirs", "rsyncignore"];

#[derive(Clone, Copy)]
enum Kind {
    Distload,
    Dist,
    Numprocesses,
    Tx,
    Px,
    RsyncDir,
    RsyncIgnore,
    Override,
}

fn long(name: &str) -> Option<Kind> {
    Some(match name {
        "--distload" => Kind::Distload,
        "--dist" => Kind::Dist,
        "--numprocesses" => Kind::Numprocesses,
        "--tx" => Kind::Tx,
        "--px" => Kind::Px,
        "--rsyncdir" => Kind::RsyncDir,
        "--rsyncignore" => Kind::RsyncIgnore,
        "--override-ini" => Kind::Override,
        _ => return None,
    })
}

fn short(letter: char) -> Option<Kind> {
    Some(match letter {
        'd' => Kind::Distload,
        'n' => Kind::Numprocesses,
        'o' => Kind::Override,
        _ => return None,
    })
}

/// Splits `text` into a known option and its joined value, if it is one.
fn recognise(text: &str) -> Option<(Kind, &str, Option<&str>)> {
    if text.starts_with("--") {
        let (name, value) = match text.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (text, None),
        };
        return long(name).map(|k| (k, name, value));
    }
    let mut chars = text.chars();
    if chars.next() != Some('-') {
        return None;
    }
    let letter = chars.next()?;
    let kind = short(letter)?;
    let name = &text[..2];
    let rest = &text[2..];
    match kind {
        Kind::Distload if rest.is_empty() => Some((kind, name, None)),
        // `-dv` is `-d` plus other flags pytest knows; left alone (see the module docs).
        Kind::Distload => None,
        _ if rest.is_empty() => Some((kind, name, None)),
        _ => Some((kind, name, Some(rest.strip_prefix('=').unwrap_or(rest)))),
    }
}

/// True when argparse would take `text` as an option rather than a value.
fn looks_like_option(text: &str) -> bool {
    text.starts_with('-') && text.len() > 1 && text[1..].parse::<f64>().is_err()
}

/// Reads the xdist options out of `tokens`.
///
/// # Errors
/// An option without its value, a `--dist` mode or `-n` count xdist rejects, a `-o` without
/// `=`.
pub fn scan(tokens: &[Token]) -> Result<Vec<Found>, LegacyError> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut positional_only = false;
    while i < tokens.len() {
        let token = &tokens[i];
        i += 1;
        let other = || Found {
            opt: Opt::Other(token.text.clone()),
            origin: token.origin.clone(),
            text: token.text.clone(),
            separate: false,
        };
        if positional_only {
            out.push(other());
            continue;
        }
        if token.text == "--" {
            positional_only = true;
            out.push(other());
            continue;
        }
        let Some((kind, name, joined)) = recognise(&token.text) else {
            out.push(other());
            continue;
        };
        let err = |kind: ErrorKind| LegacyError {
            origin: Some(token.origin.clone()),
            kind,
        };
        if let Kind::Distload = kind {
            out.push(Found {
                opt: Opt::Distload,
                origin: token.origin.clone(),
                text: token.text.clone(),
                separate: false,
            });
            continue;
        }
        let (value, text, separate) = match joined {
            Some(v) => (v.to_owned(), token.text.clone(), false),
            None => match tokens.get(i) {
                Some(next) if !looks_like_option(&next.text) => {
                    i += 1;
                    let text = super::translate::join([&token.text, &next.text]);
                    (next.text.clone(), text, true)
                }
                _ => {
                    let option = name.to_owned();
                    return Err(err(ErrorKind::MissingValue { option }));
                }
            },
        };
        let opt = match kind {
            Kind::Distload => unreachable!("handled above"),
            Kind::Dist if !DIST_MODES.contains(&value.as_str()) => {
                return Err(err(ErrorKind::InvalidValue {
                    option: "--dist".to_owned(),
                    value,
                    expected: format!("one of {}", DIST_MODES.join(", ")),
                }));
            }
            Kind::Dist => Opt::Dist(value),
            Kind::Numprocesses if parse_numprocesses(&value).is_none() => {
                return Err(err(ErrorKind::InvalidValue {
                    option: "-n/--numprocesses".to_owned(),
                    value,
                    expected: "a number of workers, `auto` or `logical`".to_owned(),
                }));
            }
            Kind::Numprocesses => Opt::Numprocesses(value),
            Kind::Tx => Opt::Tx(value),
            Kind::Px => Opt::Px(value),
            Kind::RsyncDir => Opt::RsyncDir(value),
            Kind::RsyncIgnore => Opt::RsyncIgnore(value),
            Kind::Override => match value.split_once('=') {
                None => return Err(err(ErrorKind::OverrideSyntax { value })),
                Some((key, v)) if OVERRIDABLE.contains(&key) => Opt::Override {
                    key: key.to_owned(),
                    value: v.to_owned(),
                },
                Some(_) => Opt::Other(text.clone()),
            },
        };
        if let Opt::Other(_) = opt {
            // A `-o` of another ini option: kept as written, as separate arguments.
            out.push(other());
            if separate {
                let next = &tokens[i - 1];
                out.push(Found {
                    opt: Opt::Other(next.text.clone()),
                    origin: next.origin.clone(),
                    text: next.text.clone(),
                    separate: false,
                });
            }
            continue;
        }
        out.push(Found {
            opt,
            origin: token.origin.clone(),
            text,
            separate,
        });
    }
    Ok(out)
}

/// xdist's `-n` values: a count (`Some(Some(n))`), `auto` or `logical` (`Some(None)`).
pub fn parse_numprocesses(value: &str) -> Option<Option<u32>> {
    match value {
        "auto" | "logical" => Some(None),
        n => n.parse::<u32>().ok().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(args: &[&str]) -> Vec<Token> {
        args.iter()
            .map(|a| Token {
                text: (*a).to_owned(),
                origin: Origin::Command,
            })
            .collect()
    }

    fn opts(args: &[&str]) -> Vec<Opt> {
        scan(&tokens(args))
            .unwrap()
            .into_iter()
            .map(|f| f.opt)
            .collect()
    }

    fn o(s: &str) -> Opt {
        Opt::Other(s.to_owned())
    }

    #[test]
    fn values_with_and_without_equals() {
        let want = vec![
            Opt::Tx("ssh=h//python=python3".into()),
            Opt::Px("id=p//socket=h:1".into()),
            Opt::RsyncDir("src".into()),
            Opt::RsyncIgnore("*.log".into()),
            Opt::Dist("each".into()),
        ];
        let spaced = [
            "--tx",
            "ssh=h//python=python3",
            "--px",
            "id=p//socket=h:1",
            "--rsyncdir",
            "src",
            "--rsyncignore",
            "*.log",
            "--dist",
            "each",
        ];
        assert_eq!(opts(&spaced), want);
        let joined = [
            "--tx=ssh=h//python=python3",
            "--px=id=p//socket=h:1",
            "--rsyncdir=src",
            "--rsyncignore=*.log",
            "--dist=each",
        ];
        assert_eq!(opts(&joined), want);
    }

    #[test]
    fn short_forms() {
        for args in [&["-n", "4"][..], &["-n4"], &["-n=4"], &["--numprocesses=4"]] {
            assert_eq!(opts(args), [Opt::Numprocesses("4".into())], "{args:?}");
        }
        assert_eq!(opts(&["-d"]), [Opt::Distload]);
        assert_eq!(opts(&["--distload"]), [Opt::Distload]);
        assert_eq!(opts(&["-n", "auto"]), [Opt::Numprocesses("auto".into())]);
    }

    #[test]
    fn overrides_of_rsync_options_only() {
        let want = Opt::Override {
            key: "rsyncdirs".into(),
            value: "src tests".into(),
        };
        assert_eq!(
            opts(&["-o", "rsyncdirs=src tests"]),
            std::slice::from_ref(&want)
        );
        assert_eq!(
            opts(&["-orsyncdirs=src tests"]),
            std::slice::from_ref(&want)
        );
        assert_eq!(opts(&["--override-ini=rsyncdirs=src tests"]), [want]);
        assert_eq!(
            opts(&["-o", "testpaths=x", "-ox=1"]),
            [o("-o"), o("testpaths=x"), o("-ox=1")]
        );
    }

    #[test]
    fn other_arguments_pass_through_in_order() {
        assert_eq!(
            opts(&["-rs", "-v", "--cov", "pkg", "tests/x.py", "-dv"]),
            [
                o("-rs"),
                o("-v"),
                o("--cov"),
                o("pkg"),
                o("tests/x.py"),
                o("-dv")
            ]
        );
        assert_eq!(opts(&["--", "--tx"]), [o("--"), o("--tx")]);
        assert_eq!(opts(&["--txt", "x"]), [o("--txt"), o("x")]);
    }

    #[test]
    fn text_keeps_the_spelling() {
        let found = scan(&tokens(&["--tx", "ssh=-p 22 h", "--rsyncdir=src"])).unwrap();
        assert_eq!(found[0].text, "--tx 'ssh=-p 22 h'");
        assert!(found[0].separate);
        assert_eq!(found[1].text, "--rsyncdir=src");
        assert!(!found[1].separate);
    }

    #[test]
    fn errors() {
        let msg = |args: &[&str]| scan(&tokens(args)).unwrap_err().to_string();
        assert_eq!(msg(&["--tx"]), "`--tx` expects a value");
        assert_eq!(msg(&["--tx", "-d"]), "`--tx` expects a value");
        assert!(msg(&["--dist", "lod"]).starts_with("invalid `--dist` value `lod`"));
        assert!(msg(&["-n", "x"]).starts_with("invalid `-n/--numprocesses` value `x`"));
        assert!(msg(&["-o", "rsyncdirs"]).contains("option=value"));
    }
}
