//! `RelPath`: a validated, `/`-separated path relative to a sync root.
//!
//! Every path that crosses the wire or names a place inside a destination is a `RelPath`, and
//! the only way to build one is through [`RelPath::new`], so a peer cannot smuggle in `..`, an
//! absolute path, a NUL byte or an empty component. Deserialisation goes through the same check.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a string is not a valid relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelPathError {
    #[error("path is empty")]
    Empty,
    #[error("path `{0}` is absolute")]
    Absolute(String),
    #[error("path `{0}` contains a NUL byte")]
    Nul(String),
    #[error("path `{0}` has an empty, `.` or `..` component")]
    BadComponent(String),
    #[error("path `{0}` contains a backslash")]
    Backslash(String),
    #[error("path is longer than {max} bytes")]
    TooLong { max: usize },
}

/// The longest path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// A relative path with `/` separators and only normal components.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct RelPath(String);

/// Encoded as its text, without the copy that `#[serde(into = "String")]` would make.
impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl RelPath {
    /// Validates `s` as a relative path.
    ///
    /// # Errors
    /// When `s` is empty, absolute, too long, or has a NUL, a backslash, or an empty, `.` or `..`
    /// component.
    pub fn new(s: impl Into<String>) -> Result<Self, RelPathError> {
        let s = s.into();
        if s.is_empty() {
            return Err(RelPathError::Empty);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(RelPathError::TooLong { max: MAX_PATH_LEN });
        }
        if s.starts_with('/') {
            return Err(RelPathError::Absolute(s));
        }
        match check_bytes(s.as_bytes()) {
            Ok(()) => Ok(RelPath(s)),
            Err(Bad::Nul) => Err(RelPathError::Nul(s)),
            Err(Bad::Backslash) => Err(RelPathError::Backslash(s)),
            Err(Bad::Component) => Err(RelPathError::BadComponent(s)),
        }
    }

    /// Builds a path from a native relative path, refusing non-UTF-8 names.
    ///
    /// # Errors
    /// When the path is not UTF-8 or not a valid `RelPath`.
    pub fn from_path(p: &Path) -> Result<Self, RelPathError> {
        match p.to_str() {
            Some(s) => RelPath::new(s),
            None => Err(RelPathError::BadComponent(p.to_string_lossy().into_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `self/name`; `name` must be a single valid component.
    ///
    /// # Errors
    /// When `name` is not a single valid component.
    pub fn join(&self, name: &str) -> Result<Self, RelPathError> {
        // `self` is valid already: only the new component and the total length need checking.
        if name.is_empty() || name.contains('/') {
            return Err(RelPathError::BadComponent(name.to_owned()));
        }
        let len = self.0.len() + 1 + name.len();
        if len > MAX_PATH_LEN {
            return Err(RelPathError::TooLong { max: MAX_PATH_LEN });
        }
        let mut s = String::with_capacity(len);
        s.push_str(&self.0);
        s.push('/');
        s.push_str(name);
        let at = self.0.len() + 1;
        match check_bytes(&s.as_bytes()[at..]) {
            Ok(()) => Ok(RelPath(s)),
            Err(Bad::Nul) => Err(RelPathError::Nul(s)),
            Err(Bad::Backslash) => Err(RelPathError::Backslash(s)),
            Err(Bad::Component) => Err(RelPathError::BadComponent(s)),
        }
    }

    /// `prefix/self`, or `self` when `prefix` is `None`.
    pub fn under(&self, prefix: Option<&RelPath>) -> RelPath {
        match prefix {
            Some(p) => RelPath(format!("{}/{}", p.0, self.0)),
            None => self.clone(),
        }
    }

    /// The last component.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent path, or `None` at the top level.
    pub fn parent(&self) -> Option<RelPath> {
        self.parent_str().map(|p| RelPath(p.to_owned()))
    }

    /// The parent path as text (no allocation), or `None` at the top level.
    pub fn parent_str(&self) -> Option<&str> {
        self.0.rfind('/').map(|i| &self.0[..i])
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// Every proper ancestor, outermost first.
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0
            .match_indices('/')
            .map(|(i, _)| RelPath(self.0[..i].to_owned()))
    }

    /// This path below `base`, as a native path.
    pub fn to_native(&self, base: &Path) -> PathBuf {
        base.join(&self.0)
    }
}

enum Bad {
    Nul,
    Backslash,
    Component,
}

/// One pass over a `/`-separated path: no NUL, no backslash (a legal byte in a Unix name, but a
/// separator on a Windows peer, so refused rather than risk a path meaning two things), and no
/// empty, `.` or `..` component; reported in that order of precedence.
fn check_bytes(b: &[u8]) -> Result<(), Bad> {
    let (mut nul, mut backslash, mut component) = (false, false, false);
    let mut start = 0;
    for i in 0..=b.len() {
        match b.get(i).copied().unwrap_or(b'/') {
            0 => nul = true,
            b'\\' => backslash = true,
            b'/' => {
                component |= matches!(&b[start..i], b"" | b"." | b"..");
                start = i + 1;
            }
            _ => {}
        }
    }
    if nul {
        Err(Bad::Nul)
    } else if backslash {
        Err(Bad::Backslash)
    } else if component {
        Err(Bad::Component)
    } else {
        Ok(())
    }
}

impl TryFrom<String> for RelPath {
    type Error = RelPathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RelPath::new(s)
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        let ok = [
            "a",
            "a/b",
            "dir with space/ünïcødé.py",
            "a.b/..c",
            "...",
            ".hidden",
        ];
        for s in ok {
            assert_eq!(RelPath::new(s).unwrap().as_str(), s);
        }
        let bad: &[(&str, RelPathError)] = &[
            ("", RelPathError::Empty),
            ("/etc/passwd", RelPathError::Absolute("/etc/passwd".into())),
            ("a/../b", RelPathError::BadComponent("a/../b".into())),
            ("..", RelPathError::BadComponent("..".into())),
            ("./a", RelPathError::BadComponent("./a".into())),
            ("a//b", RelPathError::BadComponent("a//b".into())),
            ("a/", RelPathError::BadComponent("a/".into())),
            ("a\0b", RelPathError::Nul("a\0b".into())),
            ("a\\..\\b", RelPathError::Backslash("a\\..\\b".into())),
        ];
        for (s, e) in bad {
            assert_eq!(RelPath::new(*s).unwrap_err(), *e, "{s:?}");
        }
        assert!(RelPath::new("x".repeat(MAX_PATH_LEN + 1)).is_err());
    }

    #[test]
    fn deserialising_validates() {
        let bytes = postcard::to_stdvec(&"../escape".to_string()).unwrap();
        assert!(postcard::from_bytes::<RelPath>(&bytes).is_err());
        let bytes = postcard::to_stdvec(&"ok/path".to_string()).unwrap();
        assert_eq!(
            postcard::from_bytes::<RelPath>(&bytes).unwrap().as_str(),
            "ok/path"
        );
    }

    #[test]
    fn navigation() {
        let p = RelPath::new("a/b/c.py").unwrap();
        assert_eq!(p.name(), "c.py");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.depth(), 3);
        let anc: Vec<_> = p.ancestors().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert!(RelPath::new("top").unwrap().parent().is_none());
        assert!(p.join("x/y").is_err());
    }
}
