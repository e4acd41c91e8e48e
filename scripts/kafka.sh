#!/usr/bin/env bash
# A local single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1, for
# development and tests. The official Apache Kafka artifacts come from Maven Central through
# Maven (scripts/kafka/pom.xml pins the release), cached so a second run downloads nothing.
#
#   scripts/kafka.sh start    installs if needed, starts, waits; last line: the bootstrap address
#   scripts/kafka.sh stop     stops it (data is kept; `start` resumes it)
#   scripts/kafka.sh status   prints the bootstrap address if running, else exits 1
#   scripts/kafka.sh install  only fetches the artifacts
#   scripts/kafka.sh install-connect   fetches Kafka Connect (runtime, file connector, JSON
#                             converter); last line: the directory of its jars
#   scripts/kafka.sh connect-standalone WORKER CONNECTOR...   a standalone Connect worker
#   scripts/kafka.sh reset    stops it and deletes its data
#   scripts/kafka.sh consume TOPIC   prints a topic's records (key, headers, value) from the start
#   scripts/kafka.sh start-secure    the same broker with secured listeners beside the plain one:
#       port+2 SASL_SSL (SCRAM-SHA-512 and PLAIN, a user created at start), port+3 SSL with
#       client certificates required (mutual TLS), port+4 SASL_SSL whose certificate names
#       another host (for hostname-mismatch tests). A throwaway CA and certificates are made
#       with openssl at every start (nothing downloaded); credentials are new each start. The
#       inter-broker and controller listeners stay plain. Last line, shell-sourceable:
#       SECURE_PLAINTEXT=... SECURE_SASL_SSL=... SECURE_SSL=... SECURE_MISMATCH=... SECURE_CA=... SECURE_OTHER_CA=...
#       SECURE_USER=... SECURE_PASSWORD=... SECURE_CLIENT_CERT=... SECURE_CLIENT_KEY=...
#       SECURE_CLIENT_KEY_PASSWORD=... SECURE_EXPIRED_CERT=... SECURE_EXPIRED_KEY=...
#       (test-only credentials). `stop`, `reset`, `status` work on it with the same variables.
#       Its authorizer allows everything a resource has no ACL for; the plain listener's
#       clients (and the broker itself) are super users, so ACLs only ever bind SASL and TLS
#       clients.
#   scripts/kafka.sh acl ARGS...     kafka-acls (AclCommand) against the plain listener, e.g.
#       acl --add --deny-principal User:casestream-test --operation All --group NAME
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
tls="$dir/tls"
secure_env="$dir/secure.env"
# start-secure's listeners, beside the plain one, and its SASL user.
sasl_ssl_port=$((port + 2))
ssl_port=$((port + 3))
mismatch_port=$((port + 4))
sasl_user=casestream-test

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

# Kafka Connect's runtime, file connector and JSON converter (scripts/kafka/connect-pom.xml),
# apart from the broker's classpath: the consumer examples of docs/consumers.md run it.
connect_pom="$repo/scripts/kafka/connect-pom.xml"
connect_libs="$home/dist/$version/connect-libs"
connect_marker="$connect_libs/.complete-$(sha256sum "$connect_pom" | cut -c1-16)"

install_connect() {
  if [ -f "$connect_marker" ]; then return; fi
  need java "Java 17 or newer runs Kafka Connect"
  need mvn "Maven fetches Kafka Connect from Maven Central"
  say "fetching Kafka Connect $version from Maven Central into $connect_libs"
  rm -rf "$connect_libs"
  mkdir -p "$connect_libs"
  mvn -B -q -f "$connect_pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$connect_libs" >&2
  touch "$connect_marker"
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

# A random token of letters and digits (test-only credentials).
random_secret() {
  head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20
}

# A throwaway CA, the broker's certificates and the clients' (one valid, one expired), made
# with openssl. Every start makes new ones; nothing is downloaded. Uses $store_pw and $key_pw.
make_certificates() {
  need openssl "openssl makes the throwaway CA and certificates"
  rm -rf "$tls"
  mkdir -p "$tls"
  (
    cd "$tls"
    ossl() { openssl "$@" >/dev/null 2>&1 || { say "openssl $1 failed"; exit 1; }; }
    # cert <name> <CN> <extensions> <key option...>: a key and a certificate of the test CA
    cert() {
      local name=$1 cn=$2
      printf '%s\n' "$3" >"$name.ext"
      shift 3
      ossl req -newkey rsa:2048 "$@" -keyout "$name.key" -out "$name.csr" -subj "/CN=$cn"
      ossl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3 \
        -extfile "$name.ext" -out "$name.pem"
    }
    ossl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3 \
      -subj "/CN=casestream test CA"
    ossl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 3 \
      -subj "/CN=an untrusted CA"
    # Broker certificates: one naming 127.0.0.1, one naming another host only.
    cert broker broker $'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth' -nodes
    cert mismatch mismatch $'subjectAltName=DNS:kafka.elsewhere.example\nextendedKeyUsage=serverAuth,clientAuth' -nodes
    for name in broker mismatch; do
      ossl pkcs12 -export -in "$name.pem" -inkey "$name.key" -certfile ca.pem -name "$name" \
        -out "$name.p12" -passout "pass:$store_pw"
    done
    # The client's certificate, its key encrypted with a password.
    cert client casestream-client extendedKeyUsage=clientAuth -passout "pass:$key_pw"
    # An expired client certificate: `openssl ca` can set dates in the past.
    mkdir -p ca-db
    : >ca-db/index.txt
    printf '1000\n' >ca-db/serial
    cat >ca-db/ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
certificate = ca.pem
private_key = ca.key
default_md = sha256
policy = any
email_in_dn = no
[any]
commonName = supplied
CNF
    ossl req -newkey rsa:2048 -nodes -keyout expired.key -out expired.csr -subj "/CN=casestream-expired"
    ossl ca -batch -config ca-db/ca.cnf -in expired.csr -out expired.pem -notext \
      -startdate 20200101000000Z -enddate 20200102000000Z -extfile client.ext
  )
}

# The secured listeners' TLS and SASL settings (their addresses are in write_properties).
secure_properties() {
  cat <<PROPS
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=true
super.users=User:ANONYMOUS
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.mismatch.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$sasl_password";
listener.name.mismatch.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$sasl_password";
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$store_pw
ssl.key.password=$store_pw
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
listener.name.ssl.ssl.client.auth=required
listener.name.mismatch.ssl.keystore.type=PKCS12
listener.name.mismatch.ssl.keystore.location=$tls/mismatch.p12
listener.name.mismatch.ssl.keystore.password=$store_pw
listener.name.mismatch.ssl.key.password=$store_pw
PROPS
}

write_properties() {
  mkdir -p "$dir/data"
  local secured="" secured_map="" secured_settings=""
  if [ "${secure:-}" = 1 ]; then
    secured=",SASL_SSL://127.0.0.1:$sasl_ssl_port,SSL://127.0.0.1:$ssl_port,MISMATCH://127.0.0.1:$mismatch_port"
    secured_map=",SASL_SSL:SASL_SSL,SSL:SSL,MISMATCH:SASL_SSL"
    secured_settings=$(secure_properties)
  fi
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port$secured
advertised.listeners=PLAINTEXT://127.0.0.1:$port$secured
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$secured_map
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
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
$secured_settings
PROPS
}

start() {
  if running; then
    say "already running (pid $(cat "$pidfile"))"
    if [ "${secure:-}" = 1 ]; then
      [ -f "$secure_env" ] || { say "instance $instance runs without secured listeners; stop it first"; exit 1; }
      cat "$secure_env"
    else
      echo "$bootstrap"
    fi
    return
  fi
  need java "Java 17 or newer runs the broker"
  install
  local ports="$port $controller_port" p
  if [ "${secure:-}" = 1 ]; then ports+=" $sasl_ssl_port $ssl_port $mismatch_port"; fi
  for p in $ports; do
    if port_open "$p"; then say "port $p is taken by another process; set CASESTREAM_KAFKA_PORT"; exit 1; fi
  done
  rm -f "$secure_env"
  if [ "${secure:-}" = 1 ]; then
    # Keys, passwords (server.properties, secure.env): this user's only, whatever the umask.
    mkdir -p "$dir"
    chmod 700 "$dir"
    store_pw=$(random_secret)
    key_pw=$(random_secret)
    sasl_password=$(random_secret)
    make_certificates
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
      if [ "${secure:-}" = 1 ]; then
        create_scram_user
        write_secure_env
        cat "$secure_env"
      else
        echo "$bootstrap"
      fi
      return
    fi
    sleep 0.5
  done
  say "broker did not become ready within 90 s; see $log"
  exit 1
}

# The SCRAM user, created through the plain listener (SCRAM credentials live in the cluster
# metadata; PLAIN's user is in the listener's JAAS line). The credential reaches the listeners
# through metadata: then a SCRAM login over SASL_SSL is tried until it works (each try is one
# JVM start, under 2 s; the first normally succeeds).
create_scram_user() {
  local client="$tls/scram-client.properties" _
  kafka_java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn kafka.admin.ConfigCommand \
    --bootstrap-server "$bootstrap" --alter --entity-type users --entity-name "$sasl_user" \
    --add-config "SCRAM-SHA-512=[password=$sasl_password]" >>"$log" 2>&1 \
    || { say "creating the SCRAM user failed; see $log"; exit 1; }
  cat >"$client" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$sasl_user" password="$sasl_password";
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
PROPS
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if kafka_java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn kafka.admin.ConfigCommand \
      --bootstrap-server "127.0.0.1:$sasl_ssl_port" --command-config "$client" \
      --describe --entity-type users --entity-name "$sasl_user" >>"$log" 2>&1; then
      return
    fi
    sleep 0.5
  done
  say "a SCRAM login on 127.0.0.1:$sasl_ssl_port still fails after 10 tries; see $log"
  exit 1
}

# The last line of start-secure: shell-sourceable, values quoted with %q (printf applies the
# format to each name/value pair in turn).
write_secure_env() {
  local line
  printf -v line 'SECURE_%s=%q ' \
    PLAINTEXT "$bootstrap" SASL_SSL "127.0.0.1:$sasl_ssl_port" SSL "127.0.0.1:$ssl_port" \
    MISMATCH "127.0.0.1:$mismatch_port" CA "$tls/ca.pem" OTHER_CA "$tls/other-ca.pem" \
    USER "$sasl_user" PASSWORD "$sasl_password" \
    CLIENT_CERT "$tls/client.pem" CLIENT_KEY "$tls/client.key" CLIENT_KEY_PASSWORD "$key_pw" \
    EXPIRED_CERT "$tls/expired.pem" EXPIRED_KEY "$tls/expired.key"
  printf '%s\n' "${line% }" >"$secure_env"
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
  start-secure) secure=1 start ;;
  stop) stop ;;
  status)
    if ! running; then exit 1; fi
    if [ -f "$secure_env" ]; then cat "$secure_env"; else echo "$bootstrap"; fi
    ;;
  reset) stop; rm -rf "$dir" ;;
  acl)
    shift
    install
    kafka_java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn org.apache.kafka.tools.AclCommand \
      --bootstrap-server "$bootstrap" "$@"
    ;;
  consume)
    [ -n "${2:-}" ] || { echo "usage: $0 consume TOPIC" >&2; exit 2; }
    install
    kafka_java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
      org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$bootstrap" \
      --topic "$2" --from-beginning --property print.key=true --property print.headers=true
    ;;
  install-connect) install_connect; echo "$connect_libs" ;;
  connect-standalone)
    # What Kafka's bin/connect-standalone.sh runs: a standalone worker and its connectors.
    shift
    [ $# -ge 2 ] || { echo "usage: $0 connect-standalone WORKER.properties CONNECTOR.properties..." >&2; exit 2; }
    install_connect
    exec java -Xms64m -Xmx512m -Djava.awt.headless=true \
      -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
      -cp "$connect_libs/*" org.apache.kafka.connect.cli.ConnectStandalone "$@"
    ;;
  *) echo "usage: $0 install|install-connect|start|start-secure|stop|status|reset|consume TOPIC|acl ARGS...|connect-standalone WORKER CONNECTOR..." >&2; exit 2 ;;
esac
