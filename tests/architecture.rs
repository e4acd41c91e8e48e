//! The code's shape, checked: modules import only from their own layer or below (the layers
//! are named at the top of `src/lib.rs`), no file in `src/` holds more than 800 lines of
//! non-test code (past 500 it is named as a warning: split by concept, never to get under a
//! count), and each environment variable's name is written once, as a constant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lines of non-test code past which a file is named as a warning.
const LONG_FILE_LINES: usize = 500;
/// Lines of non-test code no file may pass.
const MAX_NON_TEST_LINES: usize = 800;

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, with its text.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &mut out);
    out.sort();
    assert!(out.len() > 20, "found only {} source files", out.len());
    out
}

/// The file's code before its test module.
fn non_test(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .collect()
}

/// The top-level module a file belongs to (`src/sink/encode.rs` → `sink`).
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix(src()).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// Module → layer, from the numbered list at the top of `src/lib.rs`.
fn layers() -> BTreeMap<String, usize> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut layers = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((number, names)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.parse::<usize>() else {
            continue;
        };
        let names = names.split_once(':').map_or("", |(_, n)| n);
        for module in names.split('`').skip(1).step_by(2) {
            layers.insert(module.to_owned(), layer);
        }
    }
    assert!(layers.len() >= 10, "the layer list in lib.rs: {layers:?}");
    layers
}

/// The top-level modules a line refers to through `crate::`.
fn crate_references(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c}`: the first name of each item.
            let inner = group.split('}').next().unwrap_or("");
            found.extend(
                inner
                    .split(',')
                    .filter_map(|item| item.trim().split("::").next())
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned),
            );
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let layers = layers();
    let mut upward = Vec::new();
    let mut checked = 0;
    for (path, text) in sources() {
        let module = module_of(&path);
        if module == "lib" || module == "main" {
            continue;
        }
        let own = *layers
            .get(&module)
            .unwrap_or_else(|| panic!("module `{module}` is in no layer of src/lib.rs"));
        for (n, line) in text.lines().enumerate() {
            if is_comment(line) {
                continue;
            }
            for target in crate_references(line) {
                checked += 1;
                let theirs = *layers.get(&target).unwrap_or_else(|| {
                    panic!("{}:{}: unknown module {target}", path.display(), n + 1)
                });
                if theirs > own {
                    upward.push(format!(
                        "{}:{}: {module} (layer {own}) imports {target} (layer {theirs})",
                        path.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} crate:: references found");
    assert!(
        upward.is_empty(),
        "imports that run up a layer:\n{}",
        upward.join("\n")
    );
}

/// A file past [`LONG_FILE_LINES`] is named as a warning, to look at whether it holds more
/// than one concept: files are split by concept, never to get under a count. Past
/// [`MAX_NON_TEST_LINES`] it surely mixes several, and the test fails.
#[test]
fn no_source_file_mixes_concepts_past_the_hard_line_limit() {
    let lengths: Vec<(String, usize)> = sources()
        .iter()
        .map(|(path, text)| (path.display().to_string(), non_test(text).len()))
        .collect();
    assert!(
        lengths.len() > 20,
        "only {} source files found",
        lengths.len()
    );
    for (path, lines) in lengths.iter().filter(|(_, l)| *l > LONG_FILE_LINES) {
        eprintln!(
            "warning: {path} holds {lines} lines of non-test code (over {LONG_FILE_LINES}): does it hold one concept?"
        );
    }
    let too_long: Vec<String> = lengths
        .iter()
        .filter(|(_, lines)| *lines > MAX_NON_TEST_LINES)
        .map(|(path, lines)| format!("{path}: {lines}"))
        .collect();
    assert!(
        too_long.is_empty(),
        "files over {MAX_NON_TEST_LINES} lines of non-test code: {too_long:?}"
    );
}

/// The string literals of some code, each with the line it starts on; comments skipped.
fn string_literals(code: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        match chars[i] {
            '\n' => line += 1,
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            // A character literal: `'"'` or `'\''`.
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 2,
            '\'' if chars.get(i + 1) == Some(&'\\') && chars.get(i + 3) == Some(&'\'') => i += 3,
            '"' => {
                // A raw string's closing quote is followed by as many `#` as opened it.
                let hashes = chars[..i].iter().rev().take_while(|c| **c == '#').count();
                let raw = i > hashes && chars[i - hashes - 1] == 'r';
                let start = line;
                let mut text = String::new();
                i += 1;
                while i < chars.len() {
                    let c = chars[i];
                    if c == '\\' && !raw {
                        text.push(c);
                        if let Some(next) = chars.get(i + 1) {
                            text.push(*next);
                            line += usize::from(*next == '\n');
                        }
                        i += 2;
                        continue;
                    }
                    if c == '"' && chars[i + 1..].iter().take(hashes).all(|h| *h == '#') {
                        i += hashes;
                        break;
                    }
                    line += usize::from(c == '\n');
                    text.push(c);
                    i += 1;
                }
                found.push((start, text));
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Names like `CASESTREAM_POLL_INTERVAL` in a string; not `{NAME}`, a constant formatted in.
fn env_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in ["CASESTREAM_", "SNAPENGAGE_", "KAFKA_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '{') {
                continue;
            }
            names.push(name);
        }
    }
    names
}

#[test]
fn the_string_scanner_sees_strings_and_skips_comments() {
    let code = "// \"CASESTREAM_A\"\nconst X: &str = \"CASESTREAM_B\"; let c = '\"';\n\
                let y = format!(\"{KAFKA_ENV_PREFIX}SASL and \\\"CASESTREAM_C\\\"\");\n\
                let r = r#\"SNAPENGAGE_D \"quoted\"\"#;";
    let strings = string_literals(code);
    let names: Vec<(usize, Vec<String>)> = strings
        .iter()
        .map(|(line, text)| (*line, env_names(text)))
        .collect();
    assert_eq!(
        names,
        [
            (2, vec!["CASESTREAM_B".to_owned()]),
            (3, vec!["CASESTREAM_C".to_owned()]),
            (4, vec!["SNAPENGAGE_D".to_owned()]),
        ]
    );
}

#[test]
fn each_environment_variable_name_is_written_once_as_a_constant() {
    let mut written: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (path, text) in sources() {
        let code = non_test(&text).join("\n");
        let lines: Vec<&str> = code.lines().collect();
        for (line, literal) in string_literals(&code) {
            for name in env_names(&literal) {
                let place = format!("{}:{line}", path.display());
                let source = lines[line - 1].trim().to_owned();
                written.entry(name).or_default().push((place, source));
            }
        }
    }
    for expected in ["CASESTREAM_POLL_INTERVAL", "SNAPENGAGE_ORG_ID", "KAFKA_"] {
        assert!(
            written.contains_key(expected),
            "{expected} not found: {written:?}"
        );
    }
    let mut problems = Vec::new();
    for (name, places) in &written {
        // A constant, or one entry of a constant list (the JVM tools' variables we ignore).
        let defined = |source: &str| {
            (source.contains("const ") && source.ends_with(&format!("= \"{name}\";")))
                || source == format!("\"{name}\",")
        };
        if places.len() != 1 || !defined(&places[0].1) {
            let shown: Vec<String> = places.iter().map(|(p, s)| format!("{p}: {s}")).collect();
            problems.push(format!("{name}:\n  {}", shown.join("\n  ")));
        }
    }
    assert!(
        problems.is_empty(),
        "environment names written other than once, as a constant:\n{}",
        problems.join("\n")
    );
}

/// Metrics are emitted only through `src/metrics.rs`'s helpers, so each name, description and
/// label set is written once: no other file calls the `metrics` macros itself.
#[test]
fn metrics_are_emitted_only_through_the_metrics_module() {
    let mut outside = Vec::new();
    for (path, text) in sources() {
        if path.ends_with("metrics.rs") {
            continue;
        }
        for (n, line) in non_test(&text).into_iter().enumerate() {
            let emits = ["counter!(", "gauge!(", "histogram!("]
                .iter()
                .any(|m| line.contains(m));
            if !is_comment(line) && emits {
                outside.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        outside.is_empty(),
        "metrics emitted outside src/metrics.rs:\n{}",
        outside.join("\n")
    );
}
