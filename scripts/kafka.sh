#!/usr/bin/env bash
# A local single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1, for
# development and tests. The official Apache Kafka artifacts come from Maven Central through
# Maven (scripts/kafka/pom.xml pins the release), cached so a second run downloads nothing.
#
#   scripts/kafka.sh start    installs if needed, starts, waits; last line: the bootstrap address
#   scripts/kafka.sh stop     stops it (data is kept; `start` resumes it)
#   scripts/kafka.sh status   prints the bootstrap address if running, else exits 1
#   scripts/kafka.sh install  only fetches the artifacts
#   scripts/kafka.sh reset    stops it and deletes its data
#   scripts/kafka.sh consume TOPIC   prints a topic's records (key, headers, value) from the start
#
# Environment: CASESTREAM_KAFKA_PORT (default 9092), CASESTREAM_KAFKA_CONTROLLER_PORT (default +1),
# CASESTREAM_KAFKA_INSTANCE (default "default": separate data and process per name),
# CASESTREAM_KAFKA_HOME (default .kafka in the repository).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
pom="$repo/scripts/kafka/pom.xml"
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
home=${CASESTREAM_KAFKA_HOME:-$repo/.kafka}
libs="$home/dist/$version/libs"
# The cache is valid for exactly this pom.
marker="$libs/.complete-$(sha256sum "$pom" | cut -c1-16)"
instance=${CASESTREAM_KAFKA_INSTANCE:-default}
port=${CASESTREAM_KAFKA_PORT:-9092}
controller_port=${CASESTREAM_KAFKA_CONTROLLER_PORT:-$((port + 1))}
dir="$home/instances/$instance"
pidfile="$dir/kafka.pid"
log="$dir/kafka.log"
bootstrap="127.0.0.1:$port"

say() { printf 'kafka.sh: %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 || { say "$1 is required ($2)"; exit 1; }
}

install() {
  if [ -f "$marker" ]; then return; fi
  need java "Java 17 or newer runs the broker"
  need mvn "Maven fetches the Apache Kafka artifacts from Maven Central"
  say "fetching Apache Kafka $version from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -B -q -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs" >&2
  touch "$marker"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

kafka_java() {
  java -Xms128m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info \
    -Dorg.slf4j.simpleLogger.showDateTime=true \
    -cp "$libs/*" "$@"
}

write_properties() {
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
}

start() {
  if running; then
    say "already running (pid $(cat "$pidfile"))"
    echo "$bootstrap"
    return
  fi
  need java "Java 17 or newer runs the broker"
  install
  if port_open "$port" || port_open "$controller_port"; then
    say "port $port or $controller_port is taken by another process; set CASESTREAM_KAFKA_PORT"
    exit 1
  fi
  write_properties
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
      >>"$log" 2>&1 || { say "formatting storage failed; see $log"; exit 1; }
  fi
  say "starting Apache Kafka $version ($instance) on $bootstrap; log: $log"
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info \
    -Dorg.slf4j.simpleLogger.showDateTime=true \
    -cp "$libs/*" kafka.Kafka "$dir/server.properties" >>"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 180); do
    if ! running; then
      say "broker exited during start-up; last lines of $log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    if port_open "$port" && grep -q "Kafka Server started" "$log"; then
      echo "$bootstrap"
      return
    fi
    sleep 0.5
  done
  say "broker did not become ready within 90 s; see $log"
  exit 1
}

stop() {
  if ! running; then
    rm -f "$pidfile"
    say "not running"
    return
  fi
  local pid
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped"; return; }
    sleep 0.5
  done
  say "broker did not stop within 60 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "$bootstrap"; else exit 1; fi ;;
  reset) stop; rm -rf "$dir" ;;
  consume)
    [ -n "${2:-}" ] || { echo "usage: $0 consume TOPIC" >&2; exit 2; }
    install
    kafka_java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
      org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$bootstrap" \
      --topic "$2" --from-beginning --property print.key=true --property print.headers=true
    ;;
  *) echo "usage: $0 install|start|stop|status|reset|consume TOPIC" >&2; exit 2 ;;
esac
