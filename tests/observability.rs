//! The dashboard and the alerts in `deploy/observability/` use only metrics the code exports:
//! every metric name in every panel query, template query and alert expression is one of
//! [`casestream::metrics::exported_series`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

fn observability() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/observability")
}

/// Modifiers whose parenthesised list holds label names.
const LABEL_LIST_MODIFIERS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The other PromQL keywords: words that are not metric names either.
const KEYWORDS: &[&str] = &["bool", "and", "or", "unless", "offset", "inf", "nan"];

/// The metric names a PromQL expression (or a Grafana template query) selects.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut depth_braces = 0;
    // After `by`/`without`/`on`/`ignoring`/`group_*`, the parenthesised list holds labels.
    let mut label_list = false;
    let mut in_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => {
                depth_braces += 1;
                i += 1;
            }
            '}' => {
                depth_braces -= 1;
                i += 1;
            }
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            '(' => {
                in_label_list = label_list;
                label_list = false;
                i += 1;
            }
            ')' => {
                in_label_list = false;
                i += 1;
            }
            '$' => {
                // A Grafana variable: `$widget`, `$__rate_interval`, `${datasource}`.
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                // An aggregation written `sum by (label) (...)` is followed by its modifier.
                let next: String = chars[j..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                let call = (j < chars.len() && chars[j] == '(')
                    || matches!(next.as_str(), "by" | "without");
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_MODIFIERS.contains(&lower.as_str()) {
                    label_list = true;
                } else if depth_braces == 0
                    && !in_label_list
                    && !call
                    && !KEYWORDS.contains(&lower.as_str())
                {
                    // A label name inside a template function's arguments (`label_values(m, widget)`)
                    // follows a comma: only the first argument is a metric.
                    let before = chars[..start].iter().rev().find(|c| !c.is_whitespace());
                    if before != Some(&',') {
                        names.insert(word);
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations (`5m`, `1e3`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every `expr` and template `query` in the dashboard, with where it is.
fn dashboard_queries(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let here = format!("{at}.{key}");
                // A template variable's `query` is PromQL only for a `query` variable (a
                // `datasource` variable's names the data source type).
                let promql_variable = map.get("type").and_then(Value::as_str) == Some("query");
                match (key.as_str(), v) {
                    ("expr", Value::String(q)) => out.push((here, q.clone())),
                    ("query", _) if !promql_variable => {}
                    ("query", Value::String(q)) => out.push((here, q.clone())),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(q)) = q.get("query") {
                            out.push((here, q.clone()));
                        }
                    }
                    _ => dashboard_queries(v, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (n, v) in items.iter().enumerate() {
                dashboard_queries(v, &format!("{at}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Every `expr:` of the rule file (plain or a `|`/`>` block), with its line.
fn rule_exprs(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some((indent, rest)) = line.split_once("expr:") else {
            continue;
        };
        if !indent.trim().is_empty() && indent.trim() != "-" {
            continue;
        }
        let rest = rest.trim();
        let expr = if rest.starts_with('|') || rest.starts_with('>') {
            let own = line.len() - line.trim_start().len();
            lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > own)
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            rest.trim_matches(|c| c == '"' || c == '\'').to_owned()
        };
        out.push((format!("prometheusrule.yaml line {}", n + 1), expr));
    }
    out
}

fn check(queries: &[(String, String)], what: &str) {
    let exported: BTreeSet<String> = casestream::metrics::exported_series().into_iter().collect();
    assert!(!queries.is_empty(), "no queries found in the {what}");
    let mut unknown = Vec::new();
    for (at, query) in queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "{at}: `{query}` selects no metric");
        for name in names {
            if !exported.contains(&name) {
                unknown.push(format!("{at}: `{name}` in `{query}`"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the {what} uses metrics the code does not export:\n{}\nexported: {exported:?}",
        unknown.join("\n")
    );
}

#[test]
fn every_dashboard_query_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(observability().join("dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, "dashboard", &mut queries);
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "a panel per subject the issue names");
    check(&queries, "dashboard");
}

#[test]
fn every_alert_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(observability().join("prometheusrule.yaml")).unwrap();
    let exprs = rule_exprs(&text);
    assert!(
        exprs.len() >= 5,
        "an alert per condition the issue names: {exprs:?}"
    );
    check(&exprs, "alert rules");
}

#[test]
fn the_metric_name_reader_sees_names_and_only_names() {
    let names = |q: &str| metric_names(q).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (widget) (rate(casestream_api_requests_total{status="429", widget=~"$widget"}[$__rate_interval])) > 0"#
        ),
        ["casestream_api_requests_total"]
    );
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (le) (rate(casestream_api_request_seconds_bucket[5m])))"
        ),
        ["casestream_api_request_seconds_bucket"]
    );
    assert_eq!(
        names("label_values(casestream_widget_staleness_intervals, widget)"),
        ["casestream_widget_staleness_intervals"]
    );
    assert_eq!(
        names(
            "casestream_state_volume_free_bytes / casestream_state_volume_size_bytes < 0.1 and up offset 5m"
        ),
        [
            "casestream_state_volume_free_bytes",
            "casestream_state_volume_size_bytes",
            "up"
        ],
        "a metric the code does not export (`up`) is seen, to be refused"
    );
}
