//! Values with inner structure: `ssh=` arguments, split shell-style and read the way OpenSSH
//! reads its command line, and `socket=` addresses.

use std::ops::Range;

use super::Gateway;
use super::error::{ErrorKind, ParseError};

/// OpenSSH options that take an argument (the `ssh(1)` synopsis); other letters are flags.
const OPTIONS_WITH_ARGUMENT: &str = "BbcDEeFIiJLlmOoPpQRSWw";

/// Parses `ssh=` arguments found at byte `at` of the input.
///
/// Options may come before or after the host, as OpenSSH allows; `--` ends the options. A
/// second non-option word would be a remote command, which rdist supplies itself, so it is an
/// error.
pub(super) fn ssh(value: &str, at: usize) -> Result<Gateway, ParseError> {
    let whole = at..at + value.len();
    let fail = |span: Range<usize>, kind| Err(ParseError::new(span, kind));
    let Ok(words) = shell_words::split(value) else {
        return fail(
            whole,
            ErrorKind::SshQuotes {
                value: value.into(),
            },
        );
    };
    let mut finder = WordFinder {
        value,
        at,
        cursor: 0,
    };
    let mut args = Vec::new();
    let mut host: Option<String> = None;
    let mut options_done = false;
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let span = finder.locate(&word);
        if !options_done && word == "--" {
            options_done = true;
            continue;
        }
        if !options_done && word.len() > 1 && word.starts_with('-') {
            let wanted = option_wanting_next(&word);
            args.push(word);
            if let Some(option) = wanted {
                let Some(argument) = words.next() else {
                    let option = format!("-{option}");
                    return fail(span, ErrorKind::SshMissingArgument { option });
                };
                finder.locate(&argument);
                args.push(argument);
            }
            continue;
        }
        if let Some(host) = &host {
            let host = host.clone();
            return fail(span, ErrorKind::SshExtraWord { word, host });
        }
        if word.is_empty() {
            return fail(
                span,
                ErrorKind::SshNoHost {
                    value: value.into(),
                },
            );
        }
        if word.starts_with('-') {
            return fail(span, ErrorKind::SshDashHost { host: word });
        }
        host = Some(word);
    }
    match host {
        Some(host) => Ok(Gateway::Ssh { args, host }),
        None => fail(
            whole,
            ErrorKind::SshNoHost {
                value: value.into(),
            },
        ),
    }
}

/// For an option word such as `-p` or `-vp`, the option whose argument is the next word; `None`
/// for flags and for an argument glued on (`-p2222`).
fn option_wanting_next(word: &str) -> Option<char> {
    let letters = word.get(1..)?;
    let (index, option) = letters
        .char_indices()
        .find(|&(_, c)| OPTIONS_WITH_ARGUMENT.contains(c))?;
    (index + option.len_utf8() == letters.len()).then_some(option)
}

/// Finds split words back in the raw value to point errors at them. A word changed by quoting
/// is not found, and the error then covers the whole value.
struct WordFinder<'a> {
    value: &'a str,
    at: usize,
    cursor: usize,
}

impl WordFinder<'_> {
    fn locate(&mut self, word: &str) -> Range<usize> {
        if !word.is_empty()
            && let Some(found) = self.value[self.cursor..].find(word)
        {
            let start = self.cursor + found;
            self.cursor = start + word.len();
            return self.at + start..self.at + self.cursor;
        }
        self.at..self.at + self.value.len()
    }
}

/// Parses `HOST:PORT` or `[IPV6]:PORT` found at byte `at` of the input.
pub(super) fn socket(value: &str, at: usize) -> Result<Gateway, ParseError> {
    let whole = at..at + value.len();
    let fail = |span: Range<usize>, kind| Err(ParseError::new(span, kind));
    let no_port = || ErrorKind::SocketNoPort {
        value: value.into(),
    };
    let (host, host_at, port, port_at) = if let Some(rest) = value.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return fail(whole, no_port());
        };
        let Some(port) = after.strip_prefix(':') else {
            return fail(whole, no_port());
        };
        (host, at + 1, port, at + host.len() + 3)
    } else {
        let Some((host, port)) = value.rsplit_once(':') else {
            return fail(whole, no_port());
        };
        if host.contains(':') {
            return fail(
                whole,
                ErrorKind::SocketNeedsBrackets {
                    value: value.into(),
                },
            );
        }
        (host, at, port, at + host.len() + 1)
    };
    let host_span = host_at..host_at + host.len();
    if host.is_empty() {
        return fail(
            host_span,
            ErrorKind::SocketNoHost {
                value: value.into(),
            },
        );
    }
    if host.contains(['[', ']']) {
        return fail(
            host_span,
            ErrorKind::InvalidSocketHost { host: host.into() },
        );
    }
    let number = if port.bytes().all(|b| b.is_ascii_digit()) {
        port.parse::<u16>().ok().filter(|&port| port != 0)
    } else {
        None
    };
    match number {
        Some(port) => Ok(Gateway::Socket {
            host: host.into(),
            port,
        }),
        None => {
            let span = port_at..port_at + port.len();
            fail(span, ErrorKind::InvalidPort { port: port.into() })
        }
    }
}
