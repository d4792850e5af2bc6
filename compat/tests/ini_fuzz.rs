//! Arbitrary text through the ini reader, pytest's value splitting and the edits (ini and
//! TOML): nothing panics, every ini error names a line of the text, and an edited file reads
//! back without rsync settings and edits to itself.

use std::path::PathBuf;

use compat::legacy::discover::{ConfigFile, Format};
use compat::legacy::{edit, ini, values};
use proptest::prelude::*;

/// Text made mostly of the pieces ini files are made of, so parsing gets past the first line.
fn ini_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[pytest]".to_owned()),
        Just("[tool:pytest]".to_owned()),
        Just("addopts = ".to_owned()),
        Just("rsyncdirs =".to_owned()),
        Just("rsyncignore: ".to_owned()),
        Just("    ".to_owned()),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just("# c".to_owned()),
        Just("; c".to_owned()),
        Just("-d --tx=popen ".to_owned()),
        Just("--tx ssh=h ".to_owned()),
        Just("-n 4 --dist each ".to_owned()),
        Just("--rsyncdir src ".to_owned()),
        Just("'a b' \"c\\\" d\" ".to_owned()),
        "[ -~]{0,12}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

proptest! {
    #[test]
    fn ini_reader_never_panics_and_errors_name_a_line(text in prop_oneof![ini_like(), ".{0,200}"]) {
        let lines = text.lines().count().max(1);
        match ini::parse(&text) {
            Ok(parsed) => {
                for section in &parsed.sections {
                    for entry in &section.entries {
                        prop_assert!(entry.line >= 1 && entry.last_line() <= lines);
                        let _ = values::shlex_split(&entry.value);
                    }
                }
            }
            Err(e) => prop_assert!(e.line >= 1 && e.line <= lines, "{e:?} in {lines} lines"),
        }
    }

    #[test]
    fn shlex_words_agree_with_shlex_split(text in ".{0,80}") {
        let split = values::shlex_split(&text);
        let words = values::shlex_words(&text);
        prop_assert_eq!(
            split.clone().ok(),
            words.clone().ok().map(|w| w.into_iter().map(|(s, _)| s).collect::<Vec<_>>())
        );
        if let Ok(words) = words {
            for (word, range) in words {
                prop_assert_eq!(values::shlex_split(&text[range]).unwrap(), vec![word]);
            }
        }
    }

    #[test]
    fn edits_read_back_clean_and_are_idempotent(text in ini_like()) {
        let cfg = ConfigFile {
            path: PathBuf::from("/p/pytest.ini"),
            format: Format::PytestIni,
            entries: Vec::new(),
        };
        let Ok(Some(first)) = edit::plan(&cfg, &text) else { return Ok(()) };
        let parsed = ini::parse(&first.after).expect("an edited file parses");
        if let Some(section) = parsed.section("pytest") {
            prop_assert!(section.get("rsyncdirs").is_none());
            prop_assert!(section.get("rsyncignore").is_none());
        }
        match edit::plan(&cfg, &first.after) {
            Ok(Some(second)) => prop_assert!(!second.changes(), "{:?}", second.after),
            Ok(None) => {}
            Err(e) => prop_assert!(false, "the edited file no longer reads: {e}"),
        }
    }
}

fn addopts_words() -> impl Strategy<Value = Vec<String>> {
    let word = prop_oneof![
        Just("-d"),
        Just("--tx"),
        Just("popen//chdir=/w"),
        Just("--tx=ssh=h"),
        Just("--dist"),
        Just("each"),
        Just("-n"),
        Just("4"),
        Just("--rsyncdir=src"),
        Just("-rs"),
        Just("-v"),
        Just("a b"),
    ];
    prop::collection::vec(word.prop_map(str::to_owned), 0..10)
}

proptest! {
    #[test]
    fn toml_edits_read_back_clean_and_are_idempotent(words in addopts_words(), list in any::<bool>()) {
        let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
        let (format, text) = if list {
            let text = format!("[pytest]\nrsyncdirs = [\"src\"]  # roots\naddopts = [{}]\n", quoted.join(", "));
            (Format::PytestToml, text)
        } else {
            let shell: Vec<String> = words
                .iter()
                .map(|w| if w.contains(' ') { format!("'{w}'") } else { w.clone() })
                .collect();
            let text = format!(
                "[project]\nname = \"x\"\n\n[tool.pytest.ini_options]\naddopts = {:?}\n",
                shell.join(" ")
            );
            (Format::PyprojectIni, text)
        };
        let cfg = ConfigFile { path: PathBuf::from("/p/x.toml"), format, entries: Vec::new() };
        // Some word lists are not valid xdist options (`--tx` before `-d`): those are errors.
        let Ok(first) = edit::plan(&cfg, &text) else { return Ok(()) };
        let after = first.map_or(text.clone(), |e| e.after);
        prop_assert!(toml_edit::Document::parse(after.as_str()).is_ok(), "{after}");
        prop_assert!(!after.contains("rsyncdirs") && !after.contains("--tx") && !after.contains("rsyncdir="));
        match edit::plan(&cfg, &after) {
            Ok(Some(second)) => prop_assert!(!second.changes(), "{:?}", second.after),
            Ok(None) => {}
            Err(e) => prop_assert!(false, "the edited file no longer reads: {e}"),
        }
    }
}
