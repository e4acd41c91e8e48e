//! The documents hold together: every relative link of README.md, BENCHMARKS.md and docs/
//! leads to a file that exists, and every anchor to a heading there; the alerts' runbook URLs
//! (deploy/observability) lead to their headings in docs/operations.md; the README stays a
//! five-minute read; and the README's example events are valid against the schemas.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the project's files are read online: links of this form are checked as files.
const REPO_URL: &str = "https://github.com/casestream/casestream/blob/main/";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, BENCHMARKS.md and every page under docs/, relative to the root.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![PathBuf::from("README.md"), PathBuf::from("BENCHMARKS.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(root()).unwrap().to_owned())
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// The text outside fenced code blocks and inline code spans.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// The targets of the `[text](target)` links in the prose.
fn links(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            found.push(rest[..end].trim().to_owned());
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, inline code marks and punctuation dropped
/// (hyphens and underscores kept), spaces made hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor the headings of a markdown file make (repeated headings get -1, -2, ...).
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// Checks one link, relative to the document at `from` (relative to the root); the problem,
/// if any.
fn check(from: &Path, target: &str) -> Option<String> {
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_owned()
    } else {
        let joined = from.parent().unwrap_or(Path::new("")).join(path);
        normalize(&joined)
    };
    let full = root().join(&file);
    if !full.exists() {
        return Some(format!("{target}: no file {}", file.display()));
    }
    let anchor = anchor?;
    if full.is_dir() || full.extension().is_none_or(|e| e != "md") {
        return Some(format!(
            "{target}: an anchor into a file that is not markdown"
        ));
    }
    let text = std::fs::read_to_string(&full).unwrap();
    (!anchors(&text).contains(anchor))
        .then(|| format!("{target}: no heading in {} makes #{anchor}", file.display()))
}

/// `a/../b/./c` as `b/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn is_external(target: &str) -> bool {
    target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:")
}

#[test]
fn every_relative_link_and_anchor_of_the_documents_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(root().join(&doc)).unwrap();
        for target in links(&text) {
            let problem = if let Some(path) = target.strip_prefix(REPO_URL) {
                check(Path::new(""), path)
            } else if is_external(&target) {
                continue;
            } else {
                check(&doc, &target)
            };
            checked += 1;
            if let Some(problem) = problem {
                problems.push(format!("{}: {problem}", doc.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
    assert!(
        checked > 50,
        "only {checked} links found: is the parser broken?"
    );
}

#[test]
fn every_alert_runbook_url_leads_to_its_heading() {
    let mut problems = Vec::new();
    let mut urls = BTreeSet::new();
    for file in [
        "deploy/observability/prometheusrule.yaml",
        "deploy/observability/tests/rules-test.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for line in text.lines() {
            let Some((_, url)) = line.split_once("runbook_url:") else {
                continue;
            };
            let url = url.trim().trim_matches('"');
            match url.strip_prefix(REPO_URL) {
                Some(path) if path.contains('#') => {
                    if let Some(problem) = check(Path::new(""), path) {
                        problems.push(format!("{file}: {problem}"));
                    }
                    urls.insert(url.to_owned());
                }
                _ => problems.push(format!("{file}: {url} is not {REPO_URL}<page>#<anchor>")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "runbook URLs:\n{}",
        problems.join("\n")
    );
    assert!(
        urls.len() >= 10,
        "only {} runbook URLs: {urls:?}",
        urls.len()
    );
}

#[test]
fn the_parser_sees_links_and_anchors_as_github_does() {
    assert_eq!(
        slug("Admin endpoints (`CASESTREAM_ADMIN_ADDR`, default `0.0.0.0:8080`)"),
        "admin-endpoints-casestream_admin_addr-default-00008080"
    );
    assert_eq!(
        slug("One writer: a `ReadWriteOncePod` state volume"),
        "one-writer-a-readwriteoncepod-state-volume"
    );
    let text =
        "# A\n## A\n```\n# not a heading [x](nowhere.md)\n```\n`[y](nor.md)` [z](b.md#a-1)\n";
    assert_eq!(links(text), vec!["b.md#a-1"]);
    assert_eq!(
        anchors(text),
        HashSet::from(["a".to_owned(), "a-1".to_owned()])
    );
    assert!(check(Path::new("docs/x.md"), "operations.md#alerts").is_none());
    assert!(check(Path::new("docs/x.md"), "operations.md#no-such-heading").is_some());
    assert!(check(Path::new("docs/x.md"), "no-such-page.md").is_some());
    assert!(check(Path::new("README.md"), "docs/configuration.md#settings").is_none());
}

#[test]
fn the_readme_is_a_five_minute_read() {
    let size = std::fs::metadata(root().join("README.md")).unwrap().len();
    assert!(size < 15 * 1024, "README.md is {size} bytes, over 15 KB");
}

/// The README's `json` examples (one event of each type) are valid against the schemas.
#[test]
fn the_readme_example_events_are_valid() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut types = Vec::new();
    for block in readme.split("```json\n").skip(1) {
        let json = block.split("\n```").next().unwrap();
        let event: Value = serde_json::from_str(json).expect("the README's example is JSON");
        let kind = event["type"].as_str().unwrap().to_owned();
        let name = kind.trim_start_matches("com.snapengage.");
        let schema_text =
            std::fs::read_to_string(root().join(format!("schemas/{name}.schema.json"))).unwrap();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&serde_json::from_str(&schema_text).unwrap())
            .unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "the README's {kind} example: {errors:?}");
        types.push(kind);
    }
    assert_eq!(
        types,
        ["com.snapengage.case.created", "com.snapengage.case.survey"]
    );
}
