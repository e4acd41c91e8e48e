#!/usr/bin/env bash
# The fault campaign (issue 27, docs/reliability.md): seeded scenarios and fault schedules run
# against the real binaries and a broker of the campaign's own, judged by an oracle.
#
#   bash scripts/campaign.sh [--runs N] [--seed S] [--minutes M]   runs seeds S..S+N-1
#   bash scripts/campaign.sh --seeds 3,7,11                        runs exactly these seeds
#   bash scripts/campaign.sh --jobs J [...]                        J runs at a time
#
# --minutes is each run's fault phase (default 1); a run takes about twice that. One line per
# run; the exit status is non-zero if any run violated an invariant. A broker of its own
# (instance `campaign`, port CASESTREAM_CAMPAIGN_KAFKA_PORT, default 29550) is started and reset
# at the end; the development and test brokers are never touched. With --jobs, job k has a
# broker of its own (instance campaign-k, port + 100 k) and every J-th seed; the binaries are
# copied first, so a build during a long campaign does not change what it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=1
runner_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs=$2; shift 2 ;;
    *) runner_args+=("$1"); shift ;;
  esac
done

# The dev profile by default: CI has built it already (`--all-targets`), so a short campaign
# costs no build; CASESTREAM_CAMPAIGN_PROFILE=release for long campaigns.
profile=${CASESTREAM_CAMPAIGN_PROFILE:-dev}
cargo build --profile "$profile" --locked --bin casestream --example campaign
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
out=$target/$([ "$profile" = dev ] && echo debug || echo "$profile")
work=${CASESTREAM_CAMPAIGN_WORK:-${TMPDIR:-/tmp}/casestream-campaign}
base_port=${CASESTREAM_CAMPAIGN_KAFKA_PORT:-29550}

# One stream of runs against a broker of its own: instance name, Kafka port, the build's output
# directory (the product binary at its top, the runner under examples/), runner arguments.
stream() {
  local instance=$1 port=$2 bin=$3
  shift 3
  export CASESTREAM_KAFKA_INSTANCE=$instance CASESTREAM_KAFKA_PORT=$port
  local sim_port=${CASESTREAM_CAMPAIGN_SIM_PORT:-$((port + 10))}
  trap 'bash scripts/kafka.sh reset >/dev/null 2>&1 || true' EXIT
  local bootstrap
  bootstrap=$(bash scripts/kafka.sh start | tail -n 1)
  echo "== campaign against the broker at $bootstrap (simulator on $sim_port)"
  "$bin/examples/campaign" --bin "$bin/casestream" --bootstrap "$bootstrap" \
    --sim-port "$sim_port" "$@"
}

if [ "$jobs" -le 1 ]; then
  (stream "${CASESTREAM_CAMPAIGN_KAFKA_INSTANCE:-campaign}" "$base_port" "$out" \
    --work "$work" "${runner_args[@]}")
  exit
fi

# --jobs: the seeds, dealt round-robin to the jobs.
seed=1 runs=1 seeds=""
rest=()
set -- "${runner_args[@]}"
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
[ -n "$seeds" ] || seeds=$(seq -s, "$seed" $((seed + runs - 1)))
IFS=, read -r -a all <<<"$seeds"
bin=$(mktemp -d "${TMPDIR:-/tmp}/casestream-campaign-bin.XXXXXX")
mkdir -p "$bin/examples"
cp "$out/casestream" "$bin/casestream"
cp "$out/examples/campaign" "$bin/examples/campaign"
pids=()
for k in $(seq 0 $((jobs - 1))); do
  mine=()
  for i in "${!all[@]}"; do
    [ $((i % jobs)) -eq "$k" ] && mine+=("${all[$i]}")
  done
  [ ${#mine[@]} -gt 0 ] || continue
  list=$(IFS=,; echo "${mine[*]}")
  (stream "campaign-$k" $((base_port + 100 * k)) "$bin" --work "$work/job-$k" \
    --seeds "$list" "${rest[@]}" >"$work.job-$k.out") &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
cat "$work".job-*.out | grep '^seed=' || true
# The totals of every job, summed.
cat "$work".job-*.out | grep '^campaign:' | awk '
  { runs += $2; bad += $4
    for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) n[kv[1]] += kv[2] }
  END { line = sprintf("campaign: %d run(s), %d with violations; faults injected:", runs, bad)
        for (k in n) line = line " " k "=" n[k]; print line }'
rm -rf "$bin"
exit "$status"
