#!/usr/bin/env bash
# Checks the Prometheus alerts and the Grafana dashboard in deploy/observability, without a
# cluster, a Prometheus or a Grafana:
#  - the project's rules (Python, below): every metric an alert, a panel or a template query
#    selects is one src/metrics.rs exports (histograms as _bucket/_sum/_count), with labels that
#    metric has; a `status` matcher names a value the Logs API client emits (a 429 is
#    "rate_limited", not "429"); every alert has `for`, labels.severity, annotations.summary,
#    .description and a runbook_url whose anchor is the alert's heading in docs/operations.md;
#    the dashboard
#    is JSON with uid "casestream", a datasource and a widget variable, and rates over
#    $__rate_interval;
#  - `promtool check rules` (with every lint, fatal) on the PrometheusRule's spec, and
#    `promtool test rules` with deploy/observability/tests/rules-test.yaml (promtool reads plain
#    rule files, so the spec is written to a temporary rules.yaml first);
#  - `kubectl kustomize deploy/observability` renders the rule and the dashboard's ConfigMap;
#  - negative self-checks: each check must reject a file that breaks it.
# promtool is built with `go install` from the Go module proxy (Prometheus 3.x's Go module tags
# are v0.3XX.Y for release 3.XX.Y) into .cache/promtool/<version>/ (not committed): about 7 min
# on a cold Go cache and 2 cores, instant afterwards. Set PROMTOOL to use another binary. When
# promtool cannot be had, the script says so loudly and checks the structure only; with
# CASESTREAM_REQUIRE_PROMTOOL=1 it fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# Prometheus 3.16.0.
PROMTOOL_VERSION=${CASESTREAM_PROMTOOL_VERSION:-v0.316.0}
obs=deploy/observability

# shellcheck source=scripts/lib/tools.sh
. "$repo/scripts/lib/tools.sh"

python3 -c 'import yaml' 2>/dev/null || apt_install python3-yaml

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The project's rules for the alert file and the dashboard; exits 1 naming every problem.
check_files() { # check_files <prometheusrule.yaml> <dashboard.json>
  python3 - "$1" "$2" <<'PY'
import json, re, sys
import yaml

rules_path, dashboard_path = sys.argv[1:3]
problems = []
RUNBOOK = "https://github.com/casestream/casestream/blob/main/docs/operations.md#"
# Labels the scrape adds to every series (the usual kubernetes-pods job, the rule tests).
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "atan2"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile", "limitk", "limit_ratio"}

# What the code exports: name -> declared labels (src/metrics.rs).
src = open("src/metrics.rs").read()
declared = re.findall(
    r'metric\(\s*"([a-z0-9_]+)",\s*(Counter|Gauge|Histogram),\s*[^,]+,\s*"[^"]*",\s*&\[([^\]]*)\]', src)
exported = {}
for name, kind, labels in declared:
    names = re.findall(r'"([a-z_]+)"', labels)
    if kind == "Histogram":
        exported[name + "_bucket"] = set(names) | {"le"}
        exported[name + "_sum"] = set(names)
        exported[name + "_count"] = set(names)
    else:
        exported[name] = set(names)
if len(declared) < 20:
    problems.append(f"src/metrics.rs: found only {len(declared)} metric declarations; has their form changed?")
# The Logs API client's status label: "ok" or the error's kind().
kind_fn = open("src/snapengage/error.rs").read().split("pub fn kind", 1)[-1].split("\n    }\n", 1)[0]
statuses = {"ok"} | set(re.findall(r'=> "([a-z_]+)"', kind_fn))
if "rate_limited" not in statuses:
    problems.append(f"src/snapengage/error.rs: no \"rate_limited\" kind among {sorted(statuses)}")


def metric_names(expr):
    """Identifiers that select series: not in strings, label matchers, ranges or label lists,
    not functions, aggregations or keywords."""
    s = re.sub(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?[A-Za-z0-9_]+(:[a-z]+)?\}?", "", s)
    s = re.sub(r"(?<![A-Za-z0-9_:])[0-9.][A-Za-z0-9.+-]*", "", s)  # numbers, durations
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word, rest = m.group(0), s[m.end():].lstrip()
        if word.lower() in KEYWORDS or rest.startswith("("):
            continue
        if word in AGGREGATIONS and re.match(r"(by|without)\b", rest):
            continue
        names.add(word)
    return names


def check_expr(where, expr, dashboard=False):
    names = metric_names(expr)
    if not any(n.startswith("casestream_") for n in names):
        problems.append(f"{where}: `{expr}` selects no casestream metric")
    allowed = set(TARGET_LABELS) | {"le"}
    for n in sorted(names):
        if n not in exported:
            problems.append(f"{where}: `{n}` is not a metric src/metrics.rs exports")
        else:
            allowed |= exported[n]
    for n, body in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            if n in exported and label not in exported[n] | TARGET_LABELS:
                problems.append(f"{where}: `{n}` has no label `{label}` (it has {sorted(exported[n])})")
            if label == "status" and op == "=" and value not in statuses:
                problems.append(f"{where}: status=\"{value}\" is never emitted (statuses: {sorted(statuses)})")
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (l.strip() for l in group.split(","))):
            if label not in allowed:
                problems.append(f"{where}: no metric of `{expr}` has the label `{label}`")
    if dashboard:
        for rng in re.findall(r"\[([^\]]*)\]", expr):
            if rng not in ("$__rate_interval", "$__range"):
                problems.append(f"{where}: range [{rng}]: use [$__rate_interval] (or [$__range])")


# The alerts.
doc = yaml.safe_load(open(rules_path))
if doc.get("apiVersion") != "monitoring.coreos.com/v1" or doc.get("kind") != "PrometheusRule":
    problems.append("prometheusrule.yaml: not a monitoring.coreos.com/v1 PrometheusRule")
if (doc.get("metadata") or {}).get("name") != "casestream":
    problems.append("prometheusrule.yaml: metadata.name is not casestream")
groups = (doc.get("spec") or {}).get("groups") or []
if len(groups) != 1:
    problems.append(f"prometheusrule.yaml: {len(groups)} groups, not one")
alerts = []
for group in groups:
    for n, rule in enumerate(group.get("rules") or []):
        name = rule.get("alert")
        where = f"alert {name or '#' + str(n)}"
        if not name:
            problems.append(f"{where}: no `alert` (recording rules do not belong here)")
            continue
        alerts.append(name)
        if not re.fullmatch(r"Casestream[A-Za-z]+", name):
            problems.append(f"{where}: name it Casestream<Something>")
        if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
            problems.append(f"{where}: no expr")
        else:
            check_expr(where, rule["expr"])
        if not re.fullmatch(r"([0-9]+[smhdwy])+", str(rule.get("for", ""))):
            problems.append(f"{where}: no `for` duration")
        if (rule.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"{where}: labels.severity must be critical, warning or info")
        notes = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not str(notes.get(key, "")).strip():
                problems.append(f"{where}: no annotations.{key}")
        if "runbook_url" in notes and notes["runbook_url"] != RUNBOOK + name.lower():
            problems.append(f"{where}: runbook_url must be {RUNBOOK + name.lower()} (its heading in docs/operations.md)")
dupes = sorted({a for a in alerts if alerts.count(a) > 1})
if dupes:
    problems.append(f"alerts named twice: {dupes}")
# The runbook anchors are headings `### <Alert>` under `## Alerts` in docs/operations.md
# (tests/docs.rs checks every link and anchor of the docs, these URLs included).
runbooks = open("docs/operations.md").read()
if not re.search(r"^## Alerts\s*$", runbooks, re.M):
    problems.append("docs/operations.md: no `## Alerts` section (the runbook_url anchors)")
for name in alerts:
    if not re.search(rf"^### {name}\s*$", runbooks, re.M):
        problems.append(f"docs/operations.md: no `### {name}` heading under Alerts (its runbook_url anchor)")

# The dashboard.
try:
    dash = json.load(open(dashboard_path))
except ValueError as e:
    problems.append(f"dashboard.json is not JSON: {e}")
    dash = {}
if dash:
    if dash.get("uid") != "casestream":
        problems.append("dashboard: uid is not casestream")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append("dashboard: schemaVersion below 36")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    ds = variables.get("datasource") or {}
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard: no `datasource` variable of type datasource for prometheus")
    widget = variables.get("widget") or {}
    wq = widget.get("query")
    wq = wq.get("query") if isinstance(wq, dict) else wq
    if widget.get("type") != "query" or wq != "label_values(casestream_widget_staleness_intervals, widget)":
        problems.append("dashboard: no `widget` variable from label_values(casestream_widget_staleness_intervals, widget)")
    else:
        check_expr("dashboard variable widget", wq.removeprefix("label_values(").rsplit(",", 1)[0])
    panels = list(dash.get("panels") or [])
    for p in list(panels):
        panels += p.get("panels") or []
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        problems.append("dashboard: panel ids are not unique")
    graphs = [p for p in panels if p.get("type") != "row"]
    if len(graphs) < 8:
        problems.append(f"dashboard: only {len(graphs)} panels")
    for p in graphs:
        where = f"dashboard panel {p.get('title')!r}"
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource is not ${{datasource}}")
        if not p.get("targets"):
            problems.append(f"{where}: no targets")
        for t in p.get("targets") or []:
            if not t.get("expr"):
                problems.append(f"{where}: a target without expr")
            else:
                check_expr(f"{where} target {t.get('refId')}", t["expr"], dashboard=True)

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"{len(alerts)} alerts and {len(graphs)} dashboard panels use only exported metrics and labels")
PY
}

# The PrometheusRule's spec as a plain rule file, for promtool.
spec_of() { # spec_of <prometheusrule.yaml> <out.yaml>
  python3 -c 'import sys, yaml; yaml.safe_dump(yaml.safe_load(open(sys.argv[1]))["spec"], open(sys.argv[2], "w"), sort_keys=False)' "$1" "$2"
}

# promtool: $PROMTOOL, else the cached build, else `go install` from the Go module proxy.
find_promtool() {
  if [ -n "${PROMTOOL:-}" ]; then
    promtool=$PROMTOOL
    return
  fi
  promtool=$repo/.cache/promtool/$PROMTOOL_VERSION/promtool
  [ -x "$promtool" ] && return
  command -v go >/dev/null 2>&1 || apt_install golang-go || true
  if command -v go >/dev/null 2>&1; then
    echo "installing promtool $PROMTOOL_VERSION with go install (a few minutes on a cold Go cache)" >&2
    local start=$SECONDS
    if GOBIN=$(dirname "$promtool") GOTOOLCHAIN=auto \
      go install "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION" >"$work/go-install.log" 2>&1; then
      echo "promtool $PROMTOOL_VERSION installed in $((SECONDS - start)) s" >&2
      return
    fi
    tail -5 "$work/go-install.log" >&2
  fi
  promtool=""
}

# `--install-promtool`: only build promtool into the cache (scripts/test.sh runs this in the
# background, at low priority, while the Rust tests run).
if [ "${1:-}" = --install-promtool ]; then
  find_promtool
  [ -n "$promtool" ]
  exit
fi

check_files "$obs/prometheusrule.yaml" "$obs/dashboard.json"

find_promtool
spec_of "$obs/prometheusrule.yaml" "$work/rules.yaml"
cp "$obs/tests/rules-test.yaml" "$work/rules-test.yaml"
if [ -n "$promtool" ]; then
  "$promtool" --version 2>&1 | head -1
  "$promtool" check rules --lint=all --lint-fatal "$work/rules.yaml"
  (cd "$work" && "$promtool" test rules rules-test.yaml)
else
  {
    echo "############################################################################"
    echo "# WARNING: promtool is not available (no Go toolchain, or go install failed):"
    echo "# the alert expressions were NOT parsed and the rule unit tests did NOT run."
    echo "# Only the structural checks above ran. Install Go, or set PROMTOOL."
    echo "############################################################################"
  } >&2
  [ "${CASESTREAM_REQUIRE_PROMTOOL:-0}" = 1 ] && exit 1
fi

# Renders; the ConfigMap carries the dashboard as it is, under a fixed name.
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize "$obs" >"$work/rendered.yaml"
else
  go run sigs.k8s.io/kustomize/kustomize/v5@v5.5.0 build "$obs" >"$work/rendered.yaml"
fi
python3 - "$work/rendered.yaml" "$obs/dashboard.json" "$obs/prometheusrule.yaml" <<'PY'
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
assert sorted(docs) == ["ConfigMap", "PrometheusRule"], f"rendered kinds: {sorted(docs)}"
cm = docs["ConfigMap"]
assert cm["metadata"]["name"] == "casestream-dashboard", cm["metadata"]["name"]
assert cm["metadata"]["labels"].get("grafana_dashboard") == "1", cm["metadata"]["labels"]
assert list(cm["data"].values()) == [open(sys.argv[2]).read()], "the ConfigMap's dashboard differs from dashboard.json"
assert docs["PrometheusRule"]["spec"] == yaml.safe_load(open(sys.argv[3]))["spec"]
print("deploy/observability: renders (PrometheusRule casestream, ConfigMap casestream-dashboard)")
PY

# The checks themselves must catch a broken file, for the right reason.
rejects() { # rejects <what> <expected output> <command...>: the command must fail naming it
  local what=$1 expect=$2 out
  shift 2
  if out=$("$@" 2>&1); then
    echo "self-check FAILED: accepted $what" >&2
    exit 1
  elif [[ $out != *"$expect"* ]]; then
    printf '%s\n' "$out" >&2
    echo "self-check FAILED: rejected $what, but without naming \"$expect\"" >&2
    exit 1
  fi
  echo "self-check: $what is rejected"
}
bad=$work/bad.yaml
rules_with() { # rules_with <sed script>: a broken copy of the alerts in $bad
  sed "$1" "$obs/prometheusrule.yaml" >"$bad"
}
rules_with 's/expr: rate(casestream_kafka_delivery_errors_total\[5m\]) > 0/expr: rate(casestream_kafka_delivery_errors_total[5m]) > 0 and on() up == 1/'
rejects "an alert on a metric casestream does not export (up)" "\`up\` is not a metric" check_files "$bad" "$obs/dashboard.json"
rules_with 's/status="rate_limited"/status="429"/'
rejects "429s selected as status=\"429\"" 'status="429" is never emitted' check_files "$bad" "$obs/dashboard.json"
rules_with 's/casestream_widget_staleness_intervals > 10/casestream_widget_staleness_intervals{reason_code="x"} > 10/'
rejects "a label the metric does not have" "has no label \`reason_code\`" check_files "$bad" "$obs/dashboard.json"
rules_with '/runbook_url: .*#casestreamdeadletters$/d'
rejects "an alert without a runbook_url" "CasestreamDeadLetters: no annotations.runbook_url" check_files "$bad" "$obs/dashboard.json"
sed 's/\[$__rate_interval\]/[5m]/' "$obs/dashboard.json" >"$work/bad.json"
rejects "a panel rate over a fixed range" "use [\$__rate_interval]" check_files "$obs/prometheusrule.yaml" "$work/bad.json"
if [ -n "$promtool" ]; then
  rules_with 's/expr: casestream_widget_staleness_intervals > 10/expr: casestream_widget_staleness_intervals >/'
  spec_of "$bad" "$work/bad-rules.yaml"
  rejects "an expression promtool cannot parse" "could not parse expression" "$promtool" check rules "$work/bad-rules.yaml"
  # Without its second half, CasestreamDeadLetters misses a dead-letter series' first record.
  python3 - "$obs/prometheusrule.yaml" "$work/bad.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for rule in doc["spec"]["groups"][0]["rules"]:
    if rule.get("alert") == "CasestreamDeadLetters":
        rule["expr"] = "increase(casestream_dead_letters_total[15m]) > 0"
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False)
PY
  mkdir -p "$work/bad" && cp "$obs/tests/rules-test.yaml" "$work/bad/"
  spec_of "$bad" "$work/bad/rules.yaml"
  rejects "a dead-letter alert blind to a new series" "alertname: CasestreamDeadLetters, time: 12m" \
    sh -c 'cd "$1" && "$2" test rules rules-test.yaml' _ "$work/bad" "$promtool"
fi
echo "deploy/observability: checked"
