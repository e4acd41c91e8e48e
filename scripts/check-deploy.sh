#!/usr/bin/env bash
# Checks the deployment files without a cluster or a Docker engine: docker-compose.yml with
# `docker-compose config`, the Kustomize base and overlay rendered with `kubectl kustomize`
# and checked by scripts/check-manifests.py. Installs what is missing from Debian's packages
# (kustomize falls back to the Go module proxy when kubectl is absent).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null; }
}

command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
python3 -c 'import yaml' 2>/dev/null || apt_install python3-yaml

kustomize() {
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$1"
  else
    go run sigs.k8s.io/kustomize/kustomize/v5@v5.5.0 build "$1"
  fi
}

docker-compose -f docker-compose.yml config -q
echo "docker-compose.yml: valid"
for dir in deploy/base deploy/overlays/example; do
  printf '%s: ' "$dir"
  kustomize "$dir" | python3 scripts/check-manifests.py
done
# The check itself must catch a broken manifest.
if kustomize deploy/base | sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/' \
  | python3 scripts/check-manifests.py >/dev/null; then
  echo "check-manifests.py accepted a writable root filesystem" >&2
  exit 1
fi
