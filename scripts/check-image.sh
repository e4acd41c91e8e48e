#!/usr/bin/env bash
# Builds the container image from the Dockerfile with podman and runs it, without Docker and
# without an image registry:
#  - installs podman, buildah, skopeo, debootstrap and runc (Debian packages) when missing, and
#    writes a containers.conf of its own (CONTAINERS_CONF): runc (crun refuses the hybrid cgroup
#    layout of these machines), cgroupfs, no network by default, and ulimits within reach of a
#    root without CAP_SYS_RESOURCE;
#  - makes the base images the Dockerfile names when podman's storage lacks them, since no image
#    registry can be reached: debian:bookworm-slim with `debootstrap --variant=minbase`;
#    rust:<version>-bookworm from it plus the C toolchain the official image has (Debian
#    packages) and this machine's Rust toolchain of that version (rustup cannot download one);
#    gcr.io/distroless/cc-debian12:nonroot from the Debian packages distroless ships (libc6,
#    libgcc-s1, libstdc++6, libssl3, tzdata, netbase, base-files, ca-certificates) and its
#    passwd (nonroot = 65532). They stay in podman's storage: made once per machine;
#  - builds the image with `podman build` from the real Dockerfile: the release build runs in
#    the build stage, with no network, this machine's cargo registry mounted read-only and cargo
#    set offline; the build stage's cache mount keeps cargo's target directory between builds;
#  - runs it: `--version`; `demo` read-only as 65532; the simulator (from the image) and `run`
#    on a fresh named volume against the test Kafka broker until /readyz answers 200 and events
#    are published; a second container on the same volume is refused (the state's lock);
#    `podman stop` (SIGTERM) ends `run` with exit 0 within the pods' grace period; after a
#    restart the state is the one it left (known cases kept, nothing announced again);
#  - prints the image's size and the build time; `--export FILE` also writes the image as an
#    OCI archive with skopeo (to push from a machine that reaches a registry).
#
# Usage: scripts/check-image.sh [--export FILE] [--rebuild-bases] [--bases-only] [--keep]
#   --export FILE     write the image to FILE as an OCI archive (skopeo copy)
#   --rebuild-bases   make the local base images again
#   --bases-only      make the base images and stop
#   --keep            leave the containers and the volume of the run for inspection
# Environment: TEST_KAFKA_BOOTSTRAP (default 127.0.0.1:9092) the broker `run` publishes to;
# CASESTREAM_IMAGE (default localhost/casestream:dev) the tag built.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

export_to=""
rebuild_bases=0
bases_only=0
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --export) export_to=$(realpath -m "$2"); shift 2 ;;
    --rebuild-bases) rebuild_bases=1; shift ;;
    --bases-only) bases_only=1; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

IMAGE=${CASESTREAM_IMAGE:-localhost/casestream:dev}
KAFKA=${TEST_KAFKA_BOOTSTRAP:-127.0.0.1:9092}
MIRROR=${CASESTREAM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/casestream/image
mkdir -p "$cache"

# shellcheck source=scripts/lib/tools.sh
. "$repo/scripts/lib/tools.sh"

fail() { echo "check-image: FAILED: $*" >&2; exit 1; }

missing=()
for tool in podman buildah skopeo debootstrap runc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  apt_install podman buildah skopeo debootstrap runc uidmap
fi

cat >"$cache/containers.conf" <<'EOF'
# Written by scripts/check-image.sh.
[containers]
# No CAP_SYS_RESOURCE here: podman's defaults (1048576 open files) cannot be set.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
# The default bridge network is never made on these machines: --network host or none only.
netns = "none"

[engine]
# crun refuses the hybrid cgroup v1 layout of these machines.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$cache/containers.conf

# The base images, as the Dockerfile names them.
rust_image=$(sed -n 's/^FROM[[:space:]]\{1,\}\(rust:[^[:space:]]*\).*/\1/p' Dockerfile | sed -n 1p)
runtime_image=$(sed -n 's/^FROM[[:space:]]\{1,\}\(gcr\.io\/distroless\/[^[:space:]]*\).*/\1/p' Dockerfile | sed -n 1p)
[ -n "$rust_image" ] || fail "the Dockerfile's build stage is not FROM rust:<version>-<debian>; this script makes only that one"
[ "$runtime_image" = gcr.io/distroless/cc-debian12:nonroot ] \
  || fail "the Dockerfile's runtime stage is FROM ${runtime_image:-?}; this script makes only gcr.io/distroless/cc-debian12:nonroot"
rust_version=${rust_image#rust:}
rust_version=${rust_version%%-*}
suite=${rust_image##*-}
[ "$suite" = bookworm ] || fail "$rust_image: only bookworm (Debian 12) is made here"
debian_image=docker.io/library/debian:bookworm-slim
rust_image=docker.io/library/$rust_image

have_image() { [ "$rebuild_bases" = 0 ] && podman image exists "$1"; }

if ! have_image "$debian_image"; then
  echo "== making $debian_image with debootstrap --variant=minbase ($MIRROR)"
  start=$SECONDS
  root=$(mktemp -d "$cache/debian.XXXXXX")
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; rm -rf "$root"; fail "debootstrap of bookworm failed (log: $cache/debootstrap.log)"; }
  cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
  tar -C "$root" --numeric-owner -cf - . \
    | podman import --quiet --change 'CMD ["bash"]' - "$debian_image" >/dev/null
  rm -rf "$root"
  echo "$debian_image made in $((SECONDS - start)) s"
fi

if ! have_image "$rust_image"; then
  echo "== making $rust_image: $debian_image + the C toolchain + Rust $rust_version from this machine"
  start=$SECONDS
  sysroot=""
  for toolchain in "+$rust_version" "+$rust_version.0" ""; do
    candidate=$(rustc ${toolchain:+"$toolchain"} --print sysroot 2>/dev/null || true)
    if [ -n "$candidate" ] && [[ "$("$candidate/bin/rustc" --version)" == "rustc $rust_version"[.\ ]* ]]; then
      sysroot=$candidate
      break
    fi
  done
  [ -n "$sysroot" ] || fail "$rust_image needs Rust $rust_version on this machine (rustup toolchain install $rust_version)"
  ctr=$(buildah from --pull-never "$debian_image")
  # What the official image's buildpack-deps base brings that a Rust build may use.
  buildah run --network host "$ctr" -- sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends ca-certificates curl git gcc g++ make libc6-dev \
    binutils dpkg-dev perl pkg-config libssl-dev zlib1g-dev file patch xz-utils procps \
    && rm -rf /var/lib/apt/lists/*' >"$cache/rust-image.log" 2>&1 \
    || { tail -20 "$cache/rust-image.log" >&2; buildah rm "$ctr" >/dev/null; fail "installing the C toolchain into $rust_image failed"; }
  # The toolchain without its documentation; CARGO_HOME and the PATH as the official image has.
  buildah run "$ctr" -- mkdir -p /usr/local/rust /usr/local/cargo/bin /usr/local/rustup
  for part in bin lib libexec etc; do
    [ -e "$sysroot/$part" ] && buildah copy --quiet "$ctr" "$sysroot/$part" "/usr/local/rust/$part" >/dev/null
  done
  buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$rust_version" --cmd bash "$ctr"
  buildah run "$ctr" -- cargo --version >/dev/null || fail "cargo does not run in $rust_image"
  buildah commit --quiet --rm "$ctr" "$rust_image" >/dev/null
  echo "$rust_image made in $((SECONDS - start)) s"
fi

if ! have_image "$runtime_image"; then
  echo "== making $runtime_image from the Debian packages distroless ships"
  start=$SECONDS
  debs=$(mktemp -d "$cache/debs.XXXXXX")
  root=$(mktemp -d "$cache/distroless.XXXXXX")
  (cd "$debs" && apt-get download -q libc6 libgcc-s1 libstdc++6 gcc-12-base libssl3 tzdata netbase \
    base-files ca-certificates >"$cache/distroless.log" 2>&1) \
    || { apt-get update -q >/dev/null && (cd "$debs" && apt-get download -q libc6 libgcc-s1 \
      libstdc++6 gcc-12-base libssl3 tzdata netbase base-files ca-certificates >"$cache/distroless.log" 2>&1); } \
    || fail "apt-get download of the distroless packages failed (log: $cache/distroless.log)"
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  # ca-certificates' bundle is made by its postinst; distroless ships the made one.
  mkdir -p "$root/etc/ssl/certs"
  cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
tty:x:5:
staff:x:50:
nobody:x:65534:
nonroot:x:65532:
EOF
  mkdir -p "$root/home/nonroot" "$root/root" "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  chmod 700 "$root/root" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  rm -rf "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian"
  ldconfig -r "$root"
  tar -C "$root" --numeric-owner -cf - . | podman import --quiet \
    --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' - "$runtime_image" >/dev/null
  rm -rf "$root" "$debs"
  echo "$runtime_image made in $((SECONDS - start)) s"
fi
echo "base images: $debian_image, $rust_image, $runtime_image (made locally)"
[ "$bases_only" = 1 ] && exit 0

# ---- the build -------------------------------------------------------------------------------
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# The crates the build needs, in this machine's registry cache (the build runs offline).
cargo fetch --locked >/dev/null 2>&1 || cargo fetch --locked
printf '[net]\noffline = true\n' >"$cache/cargo-offline.toml"
echo "== podman build -t $IMAGE (the Dockerfile's release build, offline)"
podman images -q --no-trunc --filter dangling=true >"$cache/dangling-before"
start=$SECONDS
if ! podman build --pull=never --network none --layers \
  -v "$cargo_home/registry:/usr/local/cargo/registry:ro" \
  -v "$cache/cargo-offline.toml:/usr/local/cargo/config.toml:ro" \
  -f Dockerfile -t "$IMAGE" . >"$cache/build.log" 2>&1; then
  tail -40 "$cache/build.log" >&2
  fail "podman build of the Dockerfile failed (log: $cache/build.log)"
fi
build_secs=$((SECONDS - start))
# The build stage's image (1.4 GB, untagged) keeps the layer cache for a rebuild of the same
# sources; those of earlier runs are superseded: removed, so the disk does not fill run by run.
stages=$cache/build-stage-images
new_stages=$(comm -13 <(sort -u "$cache/dangling-before") <(podman images -q --no-trunc --filter dangling=true | sort -u))
if [ -f "$stages" ] && [ -n "$new_stages" ]; then
  dangling=$(podman images -q --no-trunc --filter dangling=true)
  while read -r old; do
    # Only what is still untagged (a cached build may have tagged an old image again).
    if ! grep -qx "$old" <<<"$new_stages" && grep -qx "$old" <<<"$dangling"; then
      podman rmi "$old" >/dev/null 2>&1 || true
    fi
  done <"$stages"
fi
printf '%s\n' "$new_stages" "$(cat "$stages" 2>/dev/null)" | grep . | sort -u \
  | while read -r id; do podman image exists "$id" && echo "$id"; done >"$stages.new" || true
mv "$stages.new" "$stages"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE in $build_secs s; image size $((size / 1000000)) MB ($size bytes)"
# 46 MB today (distroless 25 MB + the stripped binary 21 MB): a much larger image is a mistake
# (an unstripped binary, a build tool in the runtime stage).
max_mb=${CASESTREAM_IMAGE_MAX_MB:-60}
[ $((size / 1000000)) -le "$max_mb" ] || fail "the image is $((size / 1000000)) MB, more than $max_mb MB"

if [ -n "$export_to" ]; then
  rm -f "$export_to"
  skopeo copy --quiet "containers-storage:$IMAGE" "oci-archive:$export_to:casestream:dev"
  echo "exported $IMAGE to $export_to (OCI archive, $(du -h "$export_to" | cut -f1))"
fi

# ---- the runs --------------------------------------------------------------------------------
run_id=check-image-$$
volume=$run_id-state
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
sim_port=$(free_port)
admin_port=$(free_port)
cleanup() {
  if [ "$keep" = 1 ]; then
    echo "kept: containers $run_id-*, volume $volume"
    return
  fi
  local name
  for name in "$run_id-sim" "$run_id-run" "$run_id-second"; do
    podman rm -f -v -i "$name" >/dev/null 2>&1 || true
  done
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== podman run $IMAGE --version"
podman run --rm --network none "$IMAGE" --version

echo "== demo, read-only root filesystem, as 65532, no network"
podman run --rm --network none --read-only --user 65532:65532 "$IMAGE" demo --duration 20s \
  >"$cache/demo.log" 2>&1 || { tail -20 "$cache/demo.log" >&2; fail "demo failed in the image"; }
grep -Eq ' created ' "$cache/demo.log" || { tail -20 "$cache/demo.log" >&2; fail "demo printed no event"; }
echo "demo: $(grep -c ' created ' "$cache/demo.log") cases created, $(grep -c ' survey ' "$cache/demo.log" || true) surveys; e.g.:"
grep -m2 -E ' (created|survey) ' "$cache/demo.log" | sed 's/^/  /'

# docker-compose.yml's simulator and casestream services, as `docker-compose config` reads them:
# the same image, command, environment, read-only root and state volume run here, with host
# addresses for the service names (--network host) and topics of this run's own.
command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
python3 -c 'import yaml' 2>/dev/null || apt_install python3-yaml
docker-compose -f docker-compose.yml config >"$cache/compose.yaml" 2>"$cache/compose.err" \
  || { cat "$cache/compose.err" >&2; fail "docker-compose config rejects docker-compose.yml"; }
compose() { # compose <what>: one fact of the compose file's services, checked
  python3 - "$cache/compose.yaml" "$1" "$IMAGE" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
what, image = sys.argv[2], sys.argv[3]
svc = doc["services"]
def fail(msg):
    sys.exit(f"check-image: FAILED: docker-compose.yml: {msg}")
short = image.split("/", 1)[1] if image.startswith("localhost/") else image
for name in ("casestream", "simulator"):
    if svc[name].get("image") != short:
        fail(f"service {name} runs image {svc[name].get('image')!r}, not {short!r}, the image built here")
cs = svc["casestream"]
if what == "env":
    for k, v in sorted(cs.get("environment", {}).items()):
        print(f"{k}={'' if v is None else v}")
elif what == "sim-command":
    cmd = list(svc["simulator"]["command"])
    i = cmd.index("--listen")
    print("\n".join(cmd[:i + 1] + ["LISTEN"] + cmd[i + 2:]))
elif what == "volume":
    if not cs.get("read_only"):
        fail("the casestream service is not read_only: true")
    vols = cs.get("volumes", [])
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in vols]
    if targets != ["/var/lib/casestream"]:
        fail(f"the casestream service mounts {targets}, not the state volume at /var/lib/casestream")
    print(targets[0])
PY
}
state_dir=$(compose volume)
[ "$state_dir" = "$(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed -n 's/^CASESTREAM_STATE_DIR=//p')" ] \
  || fail "docker-compose.yml mounts the state at $state_dir, the image's CASESTREAM_STATE_DIR differs"
mapfile -t sim_command < <(compose sim-command | sed "s/^LISTEN$/127.0.0.1:$sim_port/")
echo "== simulator (docker-compose.yml's command, from the image): ${sim_command[*]}"
podman run -d --name "$run_id-sim" --network host --read-only --tmpfs /var/lib/casestream "$IMAGE" "${sim_command[@]}" >/dev/null

prefix=casestream-image-check.$$.$(date +%s)
run_args=(--network host --read-only -v "$volume:$state_dir")
while IFS= read -r kv; do
  case $kv in
    SNAPENGAGE_API_URL=*) kv=SNAPENGAGE_API_URL=http://127.0.0.1:$sim_port ;;
    KAFKA_BOOTSTRAP_SERVERS=*) kv=KAFKA_BOOTSTRAP_SERVERS=$KAFKA ;;
  esac
  run_args+=(-e "$kv")
done < <(compose env)
run_args+=(-e CASESTREAM_ADMIN_ADDR="127.0.0.1:$admin_port"
  -e CASESTREAM_TOPIC_CASES="$prefix.cases" -e CASESTREAM_TOPIC_SURVEYS="$prefix.surveys"
  -e CASESTREAM_TOPIC_DEADLETTER="$prefix.deadletter")
for i in $(seq 1 50); do
  curl -fsS -o /dev/null -H 'Authorization: demo-token' \
    "http://127.0.0.1:$sim_port/api/v2/demo/logs?widgetId=w1&start=$(date -u +%F)&end=$(date -u +%F)" && break
  [ "$i" = 50 ] && { podman logs "$run_id-sim" | tail -20 >&2; fail "the simulator in the image does not answer"; }
  sleep 0.2
done
[ "$(podman inspect --format '{{.State.Running}}' "$run_id-sim")" = true ] \
  || { podman logs "$run_id-sim" 2>&1 | tail -5 >&2; fail "the simulator's container exited (port $sim_port taken?)"; }

metric() { # metric <name>: the sum of its series on /metrics
  curl -fsS "http://127.0.0.1:$admin_port/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}
wait_ready() { # wait_ready <what>: /readyz 200 and events published, within 90 s
  local i
  for i in $(seq 1 180); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/readyz")" = 200 ]; then
      return 0
    fi
    [ "$(podman inspect --format '{{.State.Running}}' "$run_id-run")" = true ] \
      || { podman logs "$run_id-run" 2>&1 | tail -20 >&2; fail "$1: the container exited"; }
    sleep 0.5
  done
  podman logs "$run_id-run" 2>&1 | tail -20 >&2
  curl -s "http://127.0.0.1:$admin_port/readyz" >&2 || true
  fail "$1: /readyz never answered 200 within 90 s"
}

echo "== run: read-only, fresh volume $volume, Kafka $KAFKA, topics $prefix.*"
podman volume create "$volume" >/dev/null
podman run -d --name "$run_id-run" "${run_args[@]}" "$IMAGE" run >/dev/null
wait_ready "run"
echo "/readyz: 200 $(curl -s "http://127.0.0.1:$admin_port/readyz")"
published=0
for _ in $(seq 1 60); do
  published=$(metric casestream_events_published_total)
  [ "${published%.*}" -gt 0 ] && break
  sleep 1
done
[ "${published%.*}" -gt 0 ] || fail "run published no event in 60 s"
sleep 3
published=$(metric casestream_events_published_total)
known=$(metric casestream_known_cases)
echo "run: $published events published to Kafka, $known cases known"

echo "== a second container on the same volume must be refused (the state's lock)"
if podman run --name "$run_id-second" "${run_args[@]}" -e CASESTREAM_ADMIN_ADDR=127.0.0.1:0 \
  "$IMAGE" run >"$cache/second.log" 2>&1; then
  cat "$cache/second.log" >&2
  fail "a second forwarder ran on the volume of a running one"
fi
echo "refused, exit $(podman inspect --format '{{.State.ExitCode}}' "$run_id-second"): $(grep -m1 -io '[^"]*lock[^"]*' "$cache/second.log" || tail -1 "$cache/second.log")"
podman rm -f -v "$run_id-second" >/dev/null

grace=$(sed -n 's/^ *terminationGracePeriodSeconds: *\([0-9]*\).*/\1/p' deploy/base/statefulset.yaml)
echo "== podman stop (SIGTERM, then SIGKILL after the pods' grace period: ${grace} s)"
start=$SECONDS
podman stop --time "$grace" "$run_id-run" >/dev/null
stop_secs=$((SECONDS - start))
code=$(podman inspect --format '{{.State.ExitCode}}' "$run_id-run")
[ "$code" = 0 ] || { podman logs "$run_id-run" 2>&1 | tail -20 >&2; fail "run exited $code on SIGTERM"; }
[ "$stop_secs" -lt "$grace" ] || fail "run took ${stop_secs} s to stop: the grace period is $grace s"
echo "stopped in $stop_secs s, exit 0; last log line: $(podman logs "$run_id-run" 2>&1 | tail -1 | cut -c1-200)"

echo "== the state after a restart"
state() { podman run --rm --network none --read-only -v "$volume:$state_dir" "$IMAGE" state "$@"; }
known_before=$(state summary --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["known_cases"])')
# One case the first run announced, and what the state says it published for it.
case_id=$(state export 2>/dev/null | python3 -c '
import json, sys
ids = [json.loads(line).get("key", "") for line in sys.stdin]
print(next((k.split("/", 1)[1] for k in ids if k.startswith("case/")), ""))')
[ -n "$case_id" ] || fail "the state of the first run holds no case"
events_of() { state case "$case_id" --json | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["events"], sort_keys=True))'; }
case_before=$(events_of)
podman start "$run_id-run" >/dev/null
wait_ready "restart"
sleep 5
echo "restarted on the same volume: /readyz 200; $(metric casestream_known_cases) cases known"
podman stop --time "$grace" "$run_id-run" >/dev/null
[ "$(podman inspect --format '{{.State.ExitCode}}' "$run_id-run")" = 0 ] || fail "the restarted run exited non-zero on SIGTERM"
known_after=$(state summary --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["known_cases"])')
case_after=$(events_of)
[ "$known_after" -ge "$known_before" ] || fail "the restart forgot cases: $known_before known before, $known_after after"
[ "$case_after" = "$case_before" ] \
  || fail "case $case_id was announced again after the restart: before $case_before, after $case_after"
echo "state kept: $known_before cases known before the restart, $known_after after; case $case_id's events unchanged: $(printf '%s' "$case_before" | cut -c1-200)"
echo "check-image: ok ($IMAGE, $((size / 1000000)) MB, built in $build_secs s)"
