#!/usr/bin/env bash
# Runs the benchmark harness (benches/pipeline.rs) against a local Apache Kafka broker of its
# own and prints the tables; with --write, also records them in BENCHMARKS.md.
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
  {
    echo
    echo "## Run of $(date -u +%F) at commit $(git rev-parse --short HEAD)"
    echo
    echo "Command: \`bash scripts/bench.sh --write ${args[*]:-}\` (\`$cmd\`)"
    echo
    grep -v '^$' "$out" | sed -n '1,2p' | sed 's/^/- /'
    echo
    sed -n '3,$p' "$out" | sed 's/^## /### /'
  } >>BENCHMARKS.md
  echo "appended to BENCHMARKS.md"
fi
