//! The `rdist.toml` a migration writes.
//!
//! ```toml
//! # rdist configuration, written by `rdist migrate` from tox.ini [pytest].
//!
//! [sync]
//! # Directories and files to mirror, relative to this file's directory.
//! roots = ["src", "tests", "tox.ini"]
//! # rdist ignore patterns: no `/` = a name at any depth; with `/` = a path from this
//! # directory (`*` within one component, `**` across several); trailing `/` = directories.
//! # `.*`, `*.pyc`, `*.pyo` and `*~` are always ignored.
//! ignore = ["*.log", "/build"]
//!
//! [run]
//! # Workers, in pytest-xdist's `--tx` spec grammar, and `--px` proxies.
//! tx = ["ssh=ci@build1//python=python3", "2*popen//python=python3.12"]
//! px = ["id=gw//ssh=jump"]
//! # Local workers in place (`-n`): a count or "auto"; replaces `tx`.
//! numprocesses = 4
//! # How tests are distributed: load, loadscope, loadfile, loadgroup, worksteal, each, no.
//! dist = "load"
//! ```
//!
//! Empty keys and sections are left out. Workers that xdist never started (a `--tx` without
//! `-d`, `--dist` or `-n`) are written as a comment, so nothing starts distributing by surprise.

use serde::Serialize;

/// rdist's settings from one legacy configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RdistConfig {
    /// Sync roots, `/`-separated, relative to the project root (`.` for the root itself).
    pub roots: Vec<String>,
    /// rdist ignore patterns.
    pub ignore: Vec<String>,
    /// `--tx` specs as written.
    pub tx: Vec<String>,
    /// `--px` specs as written.
    pub px: Vec<String>,
    /// `-n`: a count, `auto` or `logical`.
    pub numprocesses: Option<String>,
    /// `--dist` mode; `None` when the legacy configuration did not distribute.
    pub dist: Option<String>,
    /// `tx` was inert in xdist and is written as a comment.
    pub tx_inert: bool,
}

impl RdistConfig {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
            && self.ignore.is_empty()
            && self.tx.is_empty()
            && self.px.is_empty()
            && self.numprocesses.is_none()
            && self.dist.is_none()
    }

    /// The file's text; `source` names where it came from (`tox.ini [pytest]`).
    pub fn render(&self, source: &str) -> String {
        let mut out = format!("# rdist configuration, written by `rdist migrate` from {source}.\n");
        if !self.roots.is_empty() || !self.ignore.is_empty() {
            out.push_str("\n[sync]\n");
            if !self.roots.is_empty() {
                out.push_str(
                    "# Directories and files to mirror, relative to this file's directory.\n",
                );
                out.push_str(&format!("roots = {}\n", array(&self.roots)));
            }
            if !self.ignore.is_empty() {
                out.push_str(
                    "# rdist ignore patterns: no `/` = a name at any depth; with `/` = a path \
                     from this\n# directory (`*` within one component, `**` across several); \
                     trailing `/` = directories.\n# `.*`, `*.pyc`, `*.pyo` and `*~` are always \
                     ignored.\n",
                );
                out.push_str(&format!("ignore = {}\n", array(&self.ignore)));
            }
        }
        let run = !self.tx.is_empty()
            || !self.px.is_empty()
            || self.numprocesses.is_some()
            || self.dist.is_some();
        if run {
            out.push_str("\n[run]\n");
            if !self.tx.is_empty() || !self.px.is_empty() {
                out.push_str(
                    "# Workers, in pytest-xdist's `--tx` spec grammar, and `--px` proxies.\n",
                );
            }
            if self.tx_inert && !self.tx.is_empty() {
                out.push_str(
                    "# Inert in pytest-xdist (no -d, --dist or -n with them); uncomment to use.\n",
                );
                out.push_str(&format!("# tx = {}\n", array(&self.tx)));
            } else if !self.tx.is_empty() {
                out.push_str(&format!("tx = {}\n", array(&self.tx)));
            }
            if !self.px.is_empty() {
                out.push_str(&format!("px = {}\n", array(&self.px)));
            }
            if let Some(n) = &self.numprocesses {
                out.push_str("# Local workers in place (`-n`); replaces `tx`.\n");
                match n.parse::<u32>() {
                    Ok(count) => out.push_str(&format!("numprocesses = {count}\n")),
                    Err(_) => out.push_str(&format!("numprocesses = {}\n", string(n))),
                }
            }
            if let Some(dist) = &self.dist {
                out.push_str(
                    "# How tests are distributed: load, loadscope, loadfile, loadgroup, \
                     worksteal, each, no.\n",
                );
                out.push_str(&format!("dist = {}\n", string(dist)));
            }
        }
        out
    }
}

impl RdistConfig {
    /// The same text with `[tool.rdist.sync]` / `[tool.rdist.run]` headers, for a
    /// `pyproject.toml`.
    pub fn render_tool(&self, source: &str) -> String {
        let mut out = String::new();
        for line in self.render(source).lines() {
            out.push_str(match line {
                "[sync]" => "[tool.rdist.sync]",
                "[run]" => "[tool.rdist.run]",
                other => other,
            });
            out.push('\n');
        }
        out
    }
}

fn array(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|i| string(i)).collect();
    format!("[{}]", items.join(", "))
}

/// A TOML basic string.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(doc: &toml_edit::Document<&str>, table: &str, key: &str) -> Vec<String> {
        let array = doc[table][key].as_array().expect("an array");
        array
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn rendered_text_parses_back_to_the_same_values() {
        let config = RdistConfig {
            roots: vec!["src".into(), "my dir".into(), "q\"uote".into()],
            ignore: vec!["\\{x\\}".into(), "*.log".into()],
            tx: vec!["ssh=-i \"k\" h//python=python3".into()],
            px: vec!["id=p//socket=h:1".into()],
            numprocesses: None,
            dist: Some("each".into()),
            tx_inert: false,
        };
        let text = config.render("tox.ini [pytest]");
        let doc = toml_edit::Document::parse(text.as_str()).unwrap();
        assert_eq!(strings(&doc, "sync", "roots"), config.roots);
        assert_eq!(strings(&doc, "sync", "ignore"), config.ignore);
        assert_eq!(strings(&doc, "run", "tx"), config.tx);
        assert_eq!(strings(&doc, "run", "px"), config.px);
        assert_eq!(doc["run"]["dist"].as_str(), Some("each"));
    }

    #[test]
    fn inert_workers_are_a_comment_and_empty_sections_are_left_out() {
        let config = RdistConfig {
            tx: vec!["4*popen".into()],
            tx_inert: true,
            ..RdistConfig::default()
        };
        let text = config.render("pytest.ini [pytest]");
        assert!(text.contains("\n# tx = [\"4*popen\"]\n"), "{text}");
        assert!(!text.contains("[sync]"), "{text}");
        let doc = toml_edit::Document::parse(text.as_str()).unwrap();
        assert!(doc["run"].as_table().unwrap().is_empty());
    }

    #[test]
    fn numprocesses_is_a_number_or_a_word() {
        let mut config = RdistConfig {
            numprocesses: Some("4".into()),
            ..RdistConfig::default()
        };
        assert!(config.render("x").contains("\nnumprocesses = 4\n"));
        config.numprocesses = Some("auto".into());
        assert!(config.render("x").contains("\nnumprocesses = \"auto\"\n"));
    }
}
