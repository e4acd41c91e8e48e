#!/usr/bin/env bash
# Installs what the consumer examples of docs/consumers.md need, for tests/consumers.rs (which
# runs every example there) and for anyone trying them by hand:
#  - PostgreSQL (Debian's `postgresql`, through apt-get when its server binaries are missing);
#    the test starts its own cluster on 127.0.0.1 in a temporary directory;
#  - Python's CloudEvents SDK and a Kafka client (confluent-kafka) from PyPI, in a venv under
#    .cache/consumers-venv (not committed);
#  - Kafka Connect (runtime, file connector, JSON converter) from Maven Central, through
#    `scripts/kafka.sh install-connect`.
#
#   bash scripts/consumers.sh install   installs what is missing; idempotent
#   bash scripts/consumers.sh env       prints where each one is, as VAR=value lines
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the versions the examples are tested with.
cloudevents_version=2.2.0
confluent_kafka_version=2.16.1
venv=.cache/consumers-venv

say() { printf 'consumers.sh: %s\n' "$*" >&2; }

postgres_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && { echo "$dir"; return 0; }
  done
  return 1
}

install_postgres() {
  if postgres_bin >/dev/null; then return; fi
  command -v apt-get >/dev/null || { say "PostgreSQL is missing and there is no apt-get: install Debian's postgresql"; exit 1; }
  say "installing PostgreSQL (Debian's postgresql) with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
  postgres_bin >/dev/null || { say "apt-get installed postgresql but no server binaries were found"; exit 1; }
}

install_python() {
  local stamp="$venv/.complete-$cloudevents_version-$confluent_kafka_version"
  if [ -f "$stamp" ]; then return; fi
  command -v python3 >/dev/null || { say "python3 is required for the CloudEvents SDK example"; exit 1; }
  say "installing cloudevents $cloudevents_version and confluent-kafka $confluent_kafka_version into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "cloudevents==$cloudevents_version" "confluent-kafka==$confluent_kafka_version" >&2
  touch "$stamp"
}

case "${1:-}" in
  install)
    install_postgres
    install_python
    bash scripts/kafka.sh install-connect >/dev/null
    say "ready: $(postgres_bin), $venv, Kafka Connect"
    ;;
  env)
    echo "CONSUMERS_POSTGRES_BIN=$(postgres_bin || true)"
    echo "CONSUMERS_PYTHON=$PWD/$venv/bin/python"
    ;;
  *) echo "usage: $0 install|env" >&2; exit 2 ;;
esac
