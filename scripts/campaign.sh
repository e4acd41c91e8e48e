#!/usr/bin/env bash
# The fault campaign (issue 27, docs/reliability.md): seeded scenarios and fault schedules run
# against the real binaries and a broker of the campaign's own, judged by an oracle.
#
#   bash scripts/campaign.sh [--runs N] [--seed S] [--minutes M]   runs seeds S..S+N-1
#   bash scripts/campaign.sh --seeds 3,7,11                        runs exactly these seeds
#
# --minutes is each run's fault phase (default 1); a run takes about twice that. One line per
# run; the exit status is non-zero if any run violated an invariant. A broker of its own
# (instance `campaign`, port CASESTREAM_CAMPAIGN_KAFKA_PORT, default 29550) is started and reset
# at the end; the development and test brokers are never touched.
set -euo pipefail
cd "$(dirname "$0")/.."

export CASESTREAM_KAFKA_INSTANCE=${CASESTREAM_CAMPAIGN_KAFKA_INSTANCE:-campaign}
export CASESTREAM_KAFKA_PORT=${CASESTREAM_CAMPAIGN_KAFKA_PORT:-29550}
sim_port=${CASESTREAM_CAMPAIGN_SIM_PORT:-$((CASESTREAM_KAFKA_PORT + 10))}

# The dev profile by default: CI has built it already (`--all-targets`), so a short campaign
# costs no build; CASESTREAM_CAMPAIGN_PROFILE=release for long campaigns.
profile=${CASESTREAM_CAMPAIGN_PROFILE:-dev}
cargo build --profile "$profile" --locked --bin casestream --example campaign
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
out=$target/$([ "$profile" = dev ] && echo debug || echo "$profile")

trap 'bash scripts/kafka.sh reset >/dev/null 2>&1 || true' EXIT
bootstrap=$(bash scripts/kafka.sh start | tail -n 1)
echo "== campaign against the broker at $bootstrap (simulator on $sim_port)"
"$out/examples/campaign" --bin "$out/casestream" \
  --bootstrap "$bootstrap" --sim-port "$sim_port" \
  --work "${CASESTREAM_CAMPAIGN_WORK:-${TMPDIR:-/tmp}/casestream-campaign}" "$@"
