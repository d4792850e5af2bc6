//! `--junitxml`: results as JUnit XML, one `<testsuite>` per worker (in every `--dist` mode), so
//! CI systems show which worker (and platform) each result came from.

use std::fmt::Write as _;

use super::report::{Outcome, Platform};

/// XML-escapes text for attributes and element content; drops characters XML cannot hold.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

/// `classname` and `name` as pytest's junitxml writes them: `tests/test_x.py::C::t` ->
/// (`tests.test_x.C`, `t`).
fn split_id(nodeid: &str) -> (String, String) {
    let mut parts: Vec<&str> = nodeid.split("::").collect();
    let name = parts.pop().unwrap_or(nodeid).to_owned();
    let mut class: Vec<String> = Vec::new();
    if let Some(file) = parts.first() {
        class.push(file.trim_end_matches(".py").replace('/', "."));
    }
    class.extend(parts.iter().skip(1).map(|s| (*s).to_owned()));
    (class.join("."), name)
}

/// The document for `outcomes` of `workers` (worker index -> platform).
pub fn render(
    outcomes: &[Outcome],
    workers: &std::collections::BTreeMap<usize, Platform>,
) -> String {
    let mut doc =
        String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites name=\"rdist\">\n");
    let mut ids: Vec<usize> = workers.keys().copied().collect();
    for o in outcomes {
        if !ids.contains(&o.worker) {
            ids.push(o.worker);
        }
    }
    ids.sort_unstable();
    for w in ids {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.worker == w).collect();
        let count = |c: &str| mine.iter().filter(|o| o.category == c).count();
        let time: f64 = mine.iter().map(|o| o.duration).sum();
        let plat = workers.get(&w);
        let _ = writeln!(
            doc,
            "  <testsuite name=\"gw{w}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{time:.3}\" hostname=\"{}\">",
            mine.len(),
            count("failed"),
            count("error"),
            count("skipped") + count("xfailed"),
            esc(&plat
                .map(|p| format!("{} Python {}", p.platform, p.python))
                .unwrap_or_default()),
        );
        for o in mine {
            let (class, name) = split_id(&o.nodeid);
            let _ = write!(
                doc,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                esc(&class),
                esc(&name),
                o.duration
            );
            let inner = match o.category {
                "failed" => format!(
                    "<failure message=\"{}\">{}</failure>",
                    esc(&o.message),
                    esc(&o.text)
                ),
                "error" => format!(
                    "<error message=\"{}\">{}</error>",
                    esc(&o.message),
                    esc(&o.text)
                ),
                "skipped" => format!(
                    "<skipped type=\"pytest.skip\" message=\"{}\"/>",
                    esc(&o.message)
                ),
                "xfailed" => format!(
                    "<skipped type=\"pytest.xfail\" message=\"{}\"/>",
                    esc(&o.message)
                ),
                _ => String::new(),
            };
            if inner.is_empty() {
                doc.push_str("/>\n");
            } else {
                let _ = writeln!(doc, ">{inner}</testcase>");
            }
        }
        doc.push_str("  </testsuite>\n");
    }
    doc.push_str("</testsuites>\n");
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(worker: usize, nodeid: &str, category: &'static str, text: &str) -> Outcome {
        Outcome {
            worker,
            nodeid: nodeid.to_owned(),
            category,
            duration: 0.5,
            message: "m<1>".to_owned(),
            text: text.to_owned(),
        }
    }

    #[test]
    fn one_suite_per_worker_with_escaped_failures() {
        let outcomes = [
            o(0, "tests/test_x.py::C::test_a", "passed", ""),
            o(
                1,
                "tests/test_x.py::test_b",
                "failed",
                "assert 1 < 2 & \"x\"\u{1}",
            ),
            o(1, "tests/test_x.py::test_c", "skipped", ""),
        ];
        let xml = render(&outcomes, &Default::default());
        assert!(xml.contains("<testsuite name=\"gw0\" tests=\"1\" failures=\"0\""));
        assert!(xml.contains(
            "<testsuite name=\"gw1\" tests=\"2\" failures=\"1\" errors=\"0\" skipped=\"1\""
        ));
        assert!(
            xml.contains("<testcase classname=\"tests.test_x.C\" name=\"test_a\" time=\"0.500\"/>")
        );
        assert!(xml.contains(
            "<failure message=\"m&lt;1&gt;\">assert 1 &lt; 2 &amp; &quot;x&quot;</failure>"
        ));
        assert!(xml.contains("<skipped type=\"pytest.skip\""));
    }
}
