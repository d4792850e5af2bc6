//! Located xspec parse errors: what went wrong ([`ErrorKind`]), where ([`ParseError::span`]),
//! what to do ([`ParseError::hint`]), and a caret rendering of all three.

use std::num::NonZeroU32;
use std::ops::Range;

use super::keys;

/// A spec that does not parse, with the byte range of the offending text in the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    /// Byte range into the parsed input; empty when pointing between characters.
    pub span: Range<usize>,
    pub kind: ErrorKind,
}

/// Why a spec does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("empty spec")]
    Empty,
    #[error("empty item between `//` separators")]
    EmptyItem,
    #[error("missing worker count before `*`")]
    MissingCount,
    #[error("invalid worker count `{text}`: expected a positive integer")]
    InvalidCount { text: String },
    #[error("worker count `{text}` must be at least 1")]
    ZeroCount { text: String },
    #[error("worker count `{text}` is too large, the most is {max}", max = u32::MAX)]
    CountTooLarge { text: String },
    #[error("a proxy spec takes no worker count, got `{text}*`")]
    CountNotAllowed { text: String },
    #[error("empty key in `{item}`")]
    EmptyKey { item: String },
    #[error("unknown key `{key}`")]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    #[error("duplicate key `{key}`")]
    DuplicateKey { key: String },
    #[error("`{key}` needs a value: `{usage}`")]
    MissingValue { key: String, usage: String },
    #[error("`{key}` is a flag and takes no value, got `{value}`")]
    UnexpectedValue { key: String, value: String },
    #[error("`env` needs a variable name: `env:NAME=VALUE`")]
    MissingEnvName,
    #[error("invalid `nice` value `{value}`: expected an integer")]
    InvalidNice { value: String },
    #[error("invalid socket address `{value}`: expected `HOST:PORT`")]
    SocketNoPort { value: String },
    #[error("ipv6 address in `{value}` needs brackets: `[ADDRESS]:PORT`")]
    SocketNeedsBrackets { value: String },
    #[error("missing host in socket address `{value}`")]
    SocketNoHost { value: String },
    #[error("invalid socket host `{host}`")]
    InvalidSocketHost { host: String },
    #[error("invalid port `{port}`: expected a number from 1 to 65535")]
    InvalidPort { port: String },
    #[error("unbalanced quotes in ssh arguments `{value}`")]
    SshQuotes { value: String },
    #[error("no host in ssh arguments `{value}`")]
    SshNoHost { value: String },
    #[error("ssh option `{option}` needs an argument")]
    SshMissingArgument { option: String },
    #[error("unexpected `{word}` after ssh host `{host}`")]
    SshExtraWord { word: String, host: String },
    #[error("ssh host `{host}` must not start with `-`")]
    SshDashHost { host: String },
    #[error("no gateway: a spec needs one of `popen`, `ssh=`, `socket=` or `vagrant_ssh=`")]
    MissingGateway,
    #[error("a spec has one gateway, got both `{first}` and `{second}`")]
    MultipleGateways {
        first: &'static str,
        second: &'static str,
    },
    #[error("`via=` only works with `popen`, not `{gateway}`")]
    ViaNeedsPopen { gateway: &'static str },
    #[error("`python=` cannot be used with `socket=`")]
    PythonWithSocket,
    #[error("`id={id}` names one worker, but the spec asks for {count}")]
    IdWithCount { id: String, count: NonZeroU32 },
    #[error("a proxy spec needs an `id=`")]
    ProxyWithoutId,
    #[error("a proxy spec cannot use `via=`")]
    ProxyWithVia,
}

impl ParseError {
    pub(super) fn new(span: Range<usize>, kind: ErrorKind) -> Self {
        ParseError { span, kind }
    }

    /// What to do about the error, as one lowercase line without the `hint:` prefix.
    pub fn hint(&self) -> Option<String> {
        Some(match &self.kind {
            ErrorKind::Empty => "a local worker is `popen`".to_owned(),
            ErrorKind::EmptyItem => "remove the extra `//`".to_owned(),
            ErrorKind::MissingCount
            | ErrorKind::InvalidCount { .. }
            | ErrorKind::ZeroCount { .. } => {
                "write the worker count first, as in `4*popen`".to_owned()
            }
            ErrorKind::CountNotAllowed { .. } => {
                "start several workers through the proxy with `--tx N*popen//via=ID`".to_owned()
            }
            ErrorKind::UnknownKey { key, .. } if key.starts_with('/') => {
                "a value ending in `/` must be the last item".to_owned()
            }
            ErrorKind::UnknownKey {
                suggestion: Some(s),
                ..
            } => format!("did you mean `{s}`?"),
            ErrorKind::UnknownKey { key, .. } if key.bytes().all(|b| b.is_ascii_digit()) => {
                format!("a worker count needs a `*`, as in `{key}*popen`")
            }
            ErrorKind::UnknownKey { .. } => format!("known keys are {}", keys::known_list()),
            ErrorKind::UnexpectedValue { key, .. } => format!("write `{key}` alone"),
            ErrorKind::SocketNeedsBrackets { .. } => {
                "write `[::1]:8888`, not `::1:8888`".to_owned()
            }
            ErrorKind::SshQuotes { .. } => "close the quote".to_owned(),
            ErrorKind::SshNoHost { .. } => {
                "end the ssh arguments with the host, as in `ssh=-p 2222 user@host`".to_owned()
            }
            ErrorKind::SshExtraWord { .. } => {
                "rdist runs its own remote command; give ssh options and then the host".to_owned()
            }
            ErrorKind::MissingGateway => "add `popen` for a local worker".to_owned(),
            ErrorKind::ViaNeedsPopen { gateway: "ssh" } => {
                "for an ssh jump host use `ssh=-J JUMP HOST`".to_owned()
            }
            ErrorKind::PythonWithSocket => {
                "the socket server's own interpreter runs the worker".to_owned()
            }
            ErrorKind::IdWithCount { .. } => {
                "drop `id=` to get ids `gw0`, `gw1`, ..., or give each worker its own spec"
                    .to_owned()
            }
            ErrorKind::ProxyWithoutId => "name it, as in `--px id=NAME//ssh=HOST`".to_owned(),
            ErrorKind::ProxyWithVia => {
                "a proxy connects directly; for an ssh jump host use `ssh=-J JUMP HOST`".to_owned()
            }
            _ => return None,
        })
    }

    /// The message, the input with a caret line under the span, and a `hint:` line when there
    /// is one. The first line has no `error:` prefix, so a caller can add its own.
    ///
    /// ```text
    /// unknown key `chdri`
    ///   popen//chdri=/tmp
    ///          ^^^^^
    /// hint: did you mean `chdir`?
    /// ```
    pub fn render(&self, input: &str) -> String {
        // Columns count characters; control characters are blanked so they cannot shift them.
        let shown: String = input
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let start = self.span.start.min(input.len());
        let end = self.span.end.clamp(start, input.len());
        let column = input.get(..start).map_or(start, |s| s.chars().count());
        let width = input
            .get(start..end)
            .map_or(0, |s| s.chars().count())
            .max(1);
        let mut out = format!(
            "{self}\n  {shown}\n  {}{}",
            " ".repeat(column),
            "^".repeat(width)
        );
        if let Some(hint) = self.hint() {
            out.push_str("\nhint: ");
            out.push_str(&hint);
        }
        out
    }

    /// Just the two lines of [`ParseError::render`] that show the input and the carets under
    /// the span, for callers that print the message and the hint themselves.
    pub fn carets(&self, input: &str) -> String {
        self.render(input)
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("hint:"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
