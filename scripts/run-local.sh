#!/usr/bin/env bash
# casestream for real, on this machine: a local Apache Kafka broker, the Logs API simulator
# (with a day of history and surveys that settle within a minute or two), and `casestream run`
# forwarding into snapengage.cases / snapengage.surveys. Ctrl-C stops the forwarder and the
# simulator; the broker keeps running (`scripts/kafka.sh stop` stops it).
#
# Watch the events in another terminal:
#   scripts/kafka.sh consume snapengage.cases
#   scripts/kafka.sh consume snapengage.surveys
set -euo pipefail
cd "$(dirname "$0")/.."

bootstrap=$(bash scripts/kafka.sh start | tail -n 1)
cargo build --release --locked
bin=target/release/casestream

"$bin" simulate --listen 127.0.0.1:8089 --history 1d --cases-per-hour 120 \
  --survey-delay 20s --survey-spread 1m --survey-late-max 10m &
sim=$!
trap 'kill $sim 2>/dev/null || true' EXIT

export SNAPENGAGE_API_URL=http://127.0.0.1:8089
export SNAPENGAGE_ORG_ID=demo
export SNAPENGAGE_API_TOKEN=demo-token
export SNAPENGAGE_WIDGET_IDS=w1,w2
export KAFKA_BOOTSTRAP_SERVERS=$bootstrap
export CASESTREAM_STATE_DIR=${CASESTREAM_STATE_DIR:-.casestream-state}
export CASESTREAM_SINCE=${CASESTREAM_SINCE:-$(date -u -d yesterday +%F)}
export CASESTREAM_POLL_INTERVAL=${CASESTREAM_POLL_INTERVAL:-10s}
export CASESTREAM_SETTLE=${CASESTREAM_SETTLE:-20s}
export CASESTREAM_ADMIN_ADDR=${CASESTREAM_ADMIN_ADDR:-127.0.0.1:8080}
"$bin" run --log-format text
