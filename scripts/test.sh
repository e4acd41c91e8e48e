#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit, property and integration tests
# against a real Apache Kafka broker. Works on a fresh machine: the broker comes from the
# project's own script (scripts/kafka.sh: Apache Kafka from Maven Central, run with Java 17).
#
# TEST_KAFKA_BOOTSTRAP set: the tests use that broker and none is started here; the secured
# Kafka tests then need the SECURE_* variables of `scripts/kafka.sh start-secure` too.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add rustfmt clippy >/dev/null 2>&1 || true
# CI builds each target once: incremental caches would only take disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
echo "== disk free at start: $(df -h --output=avail . | tail -n 1 | tr -d ' ')"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== deployment files"
bash scripts/check-deploy.sh
# promtool (for the alert rules) is a Go build of several minutes on a cold cache: it runs in
# the background at the lowest priority while Rust builds and tests, and is checked at the end.
promtool_log=$(mktemp)
nice -n 19 bash scripts/check-observability.sh --install-promtool >"$promtool_log" 2>&1 &
promtool_build=$!
# The consumer examples' prerequisites (tests/consumers.rs): PostgreSQL through apt-get, Python's
# CloudEvents SDK from PyPI into .cache/, Kafka Connect from Maven Central; beside the build.
consumers_log=$(mktemp)
bash scripts/consumers.sh install >"$consumers_log" 2>&1 &
consumers_install=$!
# kube-apiserver, kube-controller-manager and kubectl for scripts/check-cluster.sh: a Go build of
# about 6 minutes of CPU on a cold cache (~/.cache/casestream/kube), in the background likewise.
kube_log=$(mktemp)
nice -n 19 bash scripts/check-cluster.sh --install >"$kube_log" 2>&1 &
kube_build=$!
echo "== cargo build --all-targets"
cargo build --all-targets --locked

if [ -z "${TEST_KAFKA_BOOTSTRAP:-}" ]; then
  # A broker of the tests' own, apart from a development broker on 9092.
  test_broker() {
    CASESTREAM_KAFKA_INSTANCE=test CASESTREAM_KAFKA_PORT=${CASESTREAM_TEST_KAFKA_PORT:-19092} \
      bash scripts/kafka.sh "$@"
  }
  trap 'test_broker reset || true' EXIT
  echo "== starting a local Apache Kafka broker for the tests (plain, SASL_SSL and mTLS listeners)"
  # The last line holds the secured listeners and throwaway credentials (SECURE_*).
  secure_line=$(test_broker start-secure | tail -n 1)
  set -a
  eval "$secure_line"
  set +a
  TEST_KAFKA_BOOTSTRAP=$SECURE_PLAINTEXT
  export TEST_KAFKA_BOOTSTRAP
fi
wait "$consumers_install" || { echo "installing the consumer examples' prerequisites failed:"; cat "$consumers_log"; exit 1; }
echo "== cargo test (Kafka at $TEST_KAFKA_BOOTSTRAP)"
log=$(mktemp)
cargo test --locked --all-targets 2>&1 | tee "$log"
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
echo "== benchmark harness, small size (proves it works; the numbers mean nothing in a debug build)"
BENCH_KAFKA_BOOTSTRAP=$TEST_KAFKA_BOOTSTRAP cargo test --locked --bench pipeline -- --bench \
  --cases 3000 --widgets 2 --state-sizes 20000 --history-days 10 --latency-samples 5 --idle-secs 2
BENCH_KAFKA_BOOTSTRAP=$TEST_KAFKA_BOOTSTRAP cargo test --locked --bench pipeline -- --bench \
  --only-exactly-once --cases 3000 --widgets 2 --rebuild-sizes 20000
BENCH_KAFKA_BOOTSTRAP=$TEST_KAFKA_BOOTSTRAP cargo test --locked --bench pipeline -- --bench \
  --economy-small
echo "== fault campaign, CI's fixed seeds (docs/reliability.md: together they inject every kind)"
bash scripts/campaign.sh --seeds 394,170,3,393,9 --minutes 0.5
echo "== the container image, built and run with podman (scripts/check-image.sh)"
bash scripts/check-image.sh
echo "== the manifests on a real Kubernetes API server (scripts/check-cluster.sh)"
wait "$kube_build" || { echo "building the Kubernetes binaries failed:"; cat "$kube_log"; exit 1; }
bash scripts/check-cluster.sh
echo "== alerts and dashboard (deploy/observability)"
wait "$promtool_build" || { echo "building promtool failed:"; cat "$promtool_log"; }
bash scripts/check-observability.sh
# What the run left on disk (a CI machine once ran out while linking).
echo "== disk free at the end: $(df -h --output=avail . | tail -n 1 | tr -d ' '); taken:"
go_caches=$(command -v go >/dev/null 2>&1 && go env GOMODCACHE GOCACHE || true)
# shellcheck disable=SC2086 # the Go caches are two paths, split on purpose
du -sh target .kafka .cache ~/.m2 ~/.cargo/registry $go_caches 2>/dev/null || true
echo "tests: $passed passed, 0 failed"
