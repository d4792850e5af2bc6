//! The parser: the `N*` prefix, the `//`-separated items, each key, and the rules that span
//! several keys (one gateway, `via=` with `popen`, proxies need an `id=`).

use std::num::NonZeroU32;
use std::ops::Range;

use super::error::{ErrorKind, ParseError};
use super::keys::{self, Key};
use super::{Gateway, XSpec, values};

/// `--tx` specs take an `N*` prefix; `--px` specs take none and need an `id=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tx,
    Px,
}

pub(super) fn parse_tx(input: &str) -> Result<XSpec, ParseError> {
    parse(input, Mode::Tx)
}

pub(super) fn parse_px(input: &str) -> Result<XSpec, ParseError> {
    parse(input, Mode::Px)
}

fn parse(input: &str, mode: Mode) -> Result<XSpec, ParseError> {
    let (count, body_start) = count_prefix(input, mode)?;
    let body = &input[body_start..];
    if body.is_empty() {
        return Err(ParseError::new(body_start..body_start, ErrorKind::Empty));
    }
    let mut state = State {
        spec: XSpec::new(Gateway::Popen),
        seen: Vec::new(),
        gateway: None,
    };
    state.spec.count = count;
    let items = split_items(body, body_start);
    for (index, &(at, item)) in items.iter().enumerate() {
        if item.is_empty() {
            // Point at a separator next to the hole: the one after it, or the trailing one.
            let span = if index + 1 < items.len() {
                at..at + 2
            } else {
                at.saturating_sub(2)..at
            };
            return Err(ParseError::new(span, ErrorKind::EmptyItem));
        }
        state.item(at, item)?;
    }
    state.finish(input, body_start, mode)
}

/// Reads `N*`. A `*` only starts a count when the text before it could not be a key or a value
/// (no `=`, `/` or `:`), so `popen//env:X=a*b` has no count, as in xdist.
fn count_prefix(input: &str, mode: Mode) -> Result<(NonZeroU32, usize), ParseError> {
    let Some(star) = input.find('*') else {
        return Ok((NonZeroU32::MIN, 0));
    };
    let text = &input[..star];
    if text.contains(['=', '/', ':']) {
        return Ok((NonZeroU32::MIN, 0));
    }
    let fail = |span: Range<usize>, kind| Err(ParseError::new(span, kind));
    if mode == Mode::Px {
        let text = text.to_owned();
        return fail(0..star + 1, ErrorKind::CountNotAllowed { text });
    }
    if text.is_empty() {
        return fail(0..1, ErrorKind::MissingCount);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        let text = text.to_owned();
        return fail(0..star, ErrorKind::InvalidCount { text });
    }
    let Ok(count) = text.parse::<u32>() else {
        let text = text.to_owned();
        return fail(0..star, ErrorKind::CountTooLarge { text });
    };
    match NonZeroU32::new(count) {
        Some(count) => Ok((count, star + 1)),
        None => fail(
            0..star,
            ErrorKind::ZeroCount {
                text: text.to_owned(),
            },
        ),
    }
}

/// The items of `body` with their byte offsets in the whole input.
fn split_items(body: &str, base: usize) -> Vec<(usize, &str)> {
    let mut at = base;
    body.split("//")
        .map(|item| {
            let start = at;
            at += item.len() + 2;
            (start, item)
        })
        .collect()
}

struct State {
    spec: XSpec,
    /// Keys given so far with the span of their item, for duplicates and cross-key errors.
    seen: Vec<(Key, Range<usize>)>,
    gateway: Option<Key>,
}

impl State {
    fn item(&mut self, at: usize, item: &str) -> Result<(), ParseError> {
        let span = at..at + item.len();
        let (key, value) = match item.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (item, None),
        };
        let key_span = at..at + key.len();
        let value_at = key_span.end + 1;
        let fail = |span: Range<usize>, kind| Err(ParseError::new(span, kind));
        if key.is_empty() {
            return fail(span, ErrorKind::EmptyKey { item: item.into() });
        }
        if key == "env" {
            return fail(key_span, ErrorKind::MissingEnvName);
        }
        if let Some(name) = key.strip_prefix("env:") {
            return self.env(name, value, span);
        }
        let Some(known) = Key::lookup(key) else {
            let suggestion = keys::suggest(key);
            let key = key.to_owned();
            return fail(key_span, ErrorKind::UnknownKey { key, suggestion });
        };
        if self.seen.iter().any(|(seen, _)| *seen == known) {
            return fail(span, ErrorKind::DuplicateKey { key: key.into() });
        }
        self.seen.push((known, span.clone()));
        let value = match (known.usage(), value) {
            (None, None) => "",
            (None, Some(value)) => {
                let kind = ErrorKind::UnexpectedValue {
                    key: key.into(),
                    value: value.into(),
                };
                return fail(key_span.end..span.end, kind);
            }
            (Some(usage), None | Some("")) => {
                let kind = ErrorKind::MissingValue {
                    key: key.into(),
                    usage: usage.into(),
                };
                return fail(span, kind);
            }
            (Some(_), Some(value)) => value,
        };
        if known.is_gateway() {
            if let Some(first) = self.gateway {
                let kind = ErrorKind::MultipleGateways {
                    first: first.name(),
                    second: known.name(),
                };
                return fail(span, kind);
            }
            self.gateway = Some(known);
        }
        let text = || Some(value.to_owned());
        let spec = &mut self.spec;
        match known {
            Key::Popen => spec.gateway = Gateway::Popen,
            Key::Ssh => spec.gateway = values::ssh(value, value_at)?,
            Key::Socket => spec.gateway = values::socket(value, value_at)?,
            Key::VagrantSsh => spec.gateway = Gateway::VagrantSsh { host: value.into() },
            Key::SshConfig => spec.ssh_config = text(),
            Key::Python => spec.python = text(),
            Key::Chdir => spec.chdir = text(),
            Key::Nice => match value.parse() {
                Ok(nice) => spec.nice = Some(nice),
                Err(_) => {
                    let kind = ErrorKind::InvalidNice {
                        value: value.into(),
                    };
                    return fail(value_at..span.end, kind);
                }
            },
            Key::Id => spec.id = text(),
            Key::Via => spec.via = text(),
            Key::DontWriteBytecode => spec.dont_write_bytecode = true,
            Key::Execmodel => spec.execmodel = text(),
            Key::Installvia => spec.installvia = text(),
        }
        Ok(())
    }

    /// `env:NAME=VALUE`; unlike other keys an empty value is fine (it sets the variable empty).
    fn env(
        &mut self,
        name: &str,
        value: Option<&str>,
        span: Range<usize>,
    ) -> Result<(), ParseError> {
        let key = format!("env:{name}");
        let kind = if name.is_empty() {
            ErrorKind::MissingEnvName
        } else if let Some(value) = value {
            if !self.spec.env.iter().any(|(seen, _)| seen == name) {
                self.spec.env.push((name.to_owned(), value.to_owned()));
                return Ok(());
            }
            ErrorKind::DuplicateKey { key }
        } else {
            let usage = format!("{key}=VALUE");
            ErrorKind::MissingValue { key, usage }
        };
        Err(ParseError::new(span, kind))
    }

    fn span_of(&self, key: Key) -> Option<Range<usize>> {
        let (_, span) = self.seen.iter().find(|(seen, _)| *seen == key)?;
        Some(span.clone())
    }

    fn finish(self, input: &str, body_start: usize, mode: Mode) -> Result<XSpec, ParseError> {
        let fail = |span: Range<usize>, kind| Err(ParseError::new(span, kind));
        let Some(gateway) = self.gateway else {
            return fail(body_start..input.len(), ErrorKind::MissingGateway);
        };
        if let Some(span) = self.span_of(Key::Via) {
            if mode == Mode::Px {
                return fail(span, ErrorKind::ProxyWithVia);
            }
            if gateway != Key::Popen {
                let kind = ErrorKind::ViaNeedsPopen {
                    gateway: gateway.name(),
                };
                return fail(span, kind);
            }
        }
        if gateway == Key::Socket
            && let Some(span) = self.span_of(Key::Python)
        {
            return fail(span, ErrorKind::PythonWithSocket);
        }
        let id_span = self.span_of(Key::Id);
        let spec = self.spec;
        if let (Some(id), Some(span)) = (&spec.id, id_span)
            && spec.count.get() > 1
        {
            let kind = ErrorKind::IdWithCount {
                id: id.clone(),
                count: spec.count,
            };
            return fail(span, kind);
        }
        if mode == Mode::Px && spec.id.is_none() {
            return fail(0..input.len(), ErrorKind::ProxyWithoutId);
        }
        Ok(spec)
    }
}
