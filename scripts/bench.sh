#!/usr/bin/env bash
# Runs the benchmark harness (benches/pipeline.rs) against a local Apache Kafka broker of its
# own and prints the tables; with --write, also records the run at the top of
# docs/benchmarks-history.md and points BENCHMARKS.md's "Latest run" at it.
#
#   bash scripts/bench.sh [--write] [harness flags: --cases N --widgets N --state-sizes A,B ...]
#   bash scripts/bench.sh --small     a quick run (CI uses it to prove the harness still works)
set -euo pipefail
cd "$(dirname "$0")/.."

write=0
args=()
for a in "$@"; do
  case "$a" in
    --write) write=1 ;;
    --small) args+=(--cases 5000 --widgets 2 --state-sizes 20000 --history-days 10 --latency-samples 10 --idle-secs 3) ;;
    *) args+=("$a") ;;
  esac
done

if [ -z "${BENCH_KAFKA_BOOTSTRAP:-}" ]; then
  bench_broker() {
    CASESTREAM_KAFKA_INSTANCE=bench CASESTREAM_KAFKA_PORT=${CASESTREAM_BENCH_KAFKA_PORT:-29092} \
      bash scripts/kafka.sh "$@"
  }
  trap 'bench_broker reset >/dev/null 2>&1 || true' EXIT
  BENCH_KAFKA_BOOTSTRAP=$(bench_broker start | tail -n 1)
  export BENCH_KAFKA_BOOTSTRAP
fi

cmd="cargo bench --locked --bench pipeline -- ${args[*]:-}"
out=$(mktemp)
$cmd | tee "$out"
if [ "$write" = 1 ]; then
  # The run goes at the top of docs/benchmarks-history.md (newest first), and the "Latest run"
  # line of BENCHMARKS.md points at it; the current-figures rows it measured are updated by hand.
  date=$(date -u +%F)
  commit=$(git rev-parse --short HEAD)
  heading="Run of $date at commit $commit"
  run=$(mktemp)
  {
    echo "## $heading"
    echo
    echo "Command: \`bash scripts/bench.sh --write ${args[*]:-}\` (\`$cmd\`)"
    echo
    grep -v '^$' "$out" | sed -n '1,2p' | sed 's/^/- /'
    echo
    sed -n '3,$p' "$out" | sed 's/^## /### /'
    echo
  } >"$run"
  BENCH_RUN="$run" BENCH_HEADING="$heading" BENCH_COMMAND="bash scripts/bench.sh --write ${args[*]:-}" \
    python3 - <<'PY'
import os, re
run = open(os.environ["BENCH_RUN"]).read()
heading = os.environ["BENCH_HEADING"]
marker = "<!-- bench.sh --write inserts the newest run here -->\n"
history = open("docs/benchmarks-history.md").read()
assert marker in history, "docs/benchmarks-history.md lost its insertion marker"
history = history.replace(marker, marker + "\n" + run, 1)
open("docs/benchmarks-history.md", "w").write(history)
# GitHub's anchor of the heading (tests/docs.rs checks it resolves).
anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
latest = "<!-- bench.sh --write replaces the next line -->\n"
bench = open("BENCHMARKS.md").read()
assert latest in bench, "BENCHMARKS.md lost its latest-run marker"
before, after = bench.split(latest, 1)
line = (f"The latest recorded run: [{heading}](docs/benchmarks-history.md#{anchor}) "
        f"(`{os.environ['BENCH_COMMAND'].strip()}`).\n")
open("BENCHMARKS.md", "w").write(before + latest + line + after.split("\n", 1)[1])
PY
  echo "recorded in docs/benchmarks-history.md; BENCHMARKS.md points at it (update the rows it measured)"
fi
