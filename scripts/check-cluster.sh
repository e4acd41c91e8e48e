#!/usr/bin/env bash
# Applies the Kustomize overlays to a real Kubernetes API server, started here on 127.0.0.1:
#  - etcd (Debian's etcd-server), kube-apiserver and kube-controller-manager of a pinned release
#    (built from the Go module proxy by scripts/lib/kube-tools.sh, cached under
#    ~/.cache/casestream/kube/<version>), and kubectl of the same release;
#  - for every overlay in deploy/overlays: its namespace, labelled with the `restricted` Pod
#    Security level (enforce and warn), is created first; then a server-side dry run
#    (`kubectl apply --dry-run=server`: admission, defaulting, strict field validation); then a
#    real apply, after which the StatefulSet or Deployment must create its Pods (and the
#    StatefulSet its claim) through the controller manager, under PodSecurity admission; then a
#    second apply must report `unchanged` for every object (no drift for GitOps tools to show);
#    any apply warning fails the check;
#  - manifests broken on purpose must be refused by the server: a misspelt field (strict field
#    validation) and a privileged container (PodSecurity `restricted`).
# There is no kubelet and no scheduler: Pods are created and admitted, never run.
#
# Usage: scripts/check-cluster.sh [--install] [--keep]
#   --install   only build (or find) the Kubernetes binaries
#   --keep      leave the cluster running (prints the KUBECONFIG) and its files
# Environment: CASESTREAM_KUBE_VERSION (default v1.37.2), KUBE_TOOLS_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

KUBE_VERSION=${CASESTREAM_KUBE_VERSION:-v1.37.2}
install_only=0
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --install) install_only=1; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-cluster: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# shellcheck source=scripts/lib/tools.sh
. "$repo/scripts/lib/tools.sh"
# shellcheck source=scripts/lib/kube-tools.sh
. "$repo/scripts/lib/kube-tools.sh"

fail() { echo "check-cluster: FAILED: $*" >&2; exit 1; }

kube_tools
[ "$install_only" = 1 ] && exit 0
command -v etcd >/dev/null 2>&1 || apt_install etcd-server
command -v openssl >/dev/null 2>&1 || apt_install openssl
python3 -c 'import yaml' 2>/dev/null || apt_install python3-yaml
PATH=$kube_bin:$PATH
"$kube_bin/kubectl" version --client | sed -n 1p

work=$(mktemp -d "${TMPDIR:-/tmp}/casestream-cluster.XXXXXX")
pids=()
cleanup() {
  if [ "$keep" = 1 ]; then
    echo "kept: the cluster runs (pids ${pids[*]}); export KUBECONFIG=$work/kubeconfig"
    return
  fi
  local pid i
  # The controller manager, the API server, then etcd; SIGKILL what has not ended in 10 s.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  for i in $(seq 1 20); do
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && break; done
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
etcd_port=$(free_port)
peer_port=$(free_port)
api_port=$(free_port)

echo "== etcd $(etcd --version | awk '/etcd Version/ {print $3}') on 127.0.0.1:$etcd_port"
etcd --name check --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "check=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
pids+=($!)

openssl genrsa -out "$work/sa.key" 2048 2>/dev/null
openssl rsa -in "$work/sa.key" -pubout -out "$work/sa.pub" 2>/dev/null
token=$(openssl rand -hex 16)
echo "$token,admin,admin,system:masters" >"$work/tokens.csv"
cat >"$work/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: check
    cluster: {server: "https://127.0.0.1:$api_port", insecure-skip-tls-verify: true}
users:
  - name: admin
    user: {token: "$token"}
contexts:
  - name: check
    context: {cluster: check, user: admin}
current-context: check
EOF
chmod 600 "$work/kubeconfig" "$work/tokens.csv"
export KUBECONFIG=$work/kubeconfig

echo "== kube-apiserver $KUBE_VERSION on 127.0.0.1:$api_port (RBAC, default admission plugins: PodSecurity included)"
kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
  --cert-dir "$work/certs" --token-auth-file "$work/tokens.csv" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$work/sa.pub" --service-account-signing-key-file "$work/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
  --endpoint-reconciler-type none \
  >"$work/kube-apiserver.log" 2>&1 &
pids+=($!)
for i in $(seq 1 120); do
  kubectl get --raw /readyz >/dev/null 2>&1 && break
  [ "$i" = 120 ] && { tail -30 "$work/kube-apiserver.log" >&2; tail -5 "$work/etcd.log" >&2; fail "kube-apiserver was not ready within 60 s"; }
  sleep 0.5
done
echo "kube-apiserver ready: $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"

echo "== kube-controller-manager $KUBE_VERSION (the StatefulSet, Deployment, ReplicaSet, ServiceAccount and namespace controllers)"
kube-controller-manager --kubeconfig "$work/kubeconfig" --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port "$(free_port)" --cert-dir "$work/kcm-certs" \
  --service-account-private-key-file "$work/sa.key" --use-service-account-credentials=false \
  >"$work/kube-controller-manager.log" 2>&1 &
pids+=($!)

rendered=$work/rendered
mkdir -p "$rendered"
status=0
for dir in deploy/overlays/*/; do
  overlay=$(basename "$dir")
  out=$rendered/$overlay.yaml
  kubectl kustomize "$dir" >"$out"
  # The overlay's namespace, or one made here for an overlay applied to the current namespace.
  ns=$(python3 - "$out" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
names = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
names.discard(None)
print(names.pop() if len(names) == 1 else "")
PY
)
  if [ -z "$ns" ]; then
    ns=casestream-$overlay
    echo "== overlay $overlay (no namespace of its own: applied to namespace $ns)"
    kubectl create namespace "$ns" >/dev/null
  else
    echo "== overlay $overlay (namespace $ns)"
    # A server-side dry run creates nothing, the overlay's Namespace included: before the
    # namespace exists it fails (the overlay's comment says to apply namespace.yaml first).
    if kubectl apply --dry-run=server -f "$out" >"$work/dry.log" 2>&1; then
      fail "overlay $overlay: a server-side dry run passed before namespace $ns existed; has the check changed?"
    fi
    grep -q "namespaces \"$ns\" not found" "$work/dry.log" || { cat "$work/dry.log" >&2; fail "overlay $overlay: the dry run without the namespace failed otherwise"; }
    echo "  without the namespace, as expected: $(grep -m1 "not found" "$work/dry.log")"
    python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Namespace"]
yaml.safe_dump_all(docs, sys.stdout)' "$out" | kubectl apply -f - | sed 's/^/  /'
  fi
  enforce=$(kubectl get namespace "$ns" -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')
  if [ "$enforce" != restricted ]; then
    echo "  namespace $ns: enforce=${enforce:-<none>}; labelling it restricted for the check"
  fi
  kubectl label --overwrite namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/warn=restricted >/dev/null

  echo "-- kubectl apply --dry-run=server"
  if ! kubectl apply -n "$ns" --dry-run=server -f "$out" >"$work/dry.log" 2>&1; then
    sed 's/^/  /' "$work/dry.log" >&2
    fail "overlay $overlay: the server-side dry run fails"
  fi
  sed 's/^/  /' "$work/dry.log"
  grep -qi '^warning' "$work/dry.log" && fail "overlay $overlay: the server warns (above)"

  echo "-- kubectl apply"
  kubectl apply -n "$ns" -f "$out" >"$work/apply.log" 2>&1 \
    || { sed 's/^/  /' "$work/apply.log" >&2; fail "overlay $overlay: kubectl apply fails"; }
  sed 's/^/  /' "$work/apply.log"
  grep -qi '^warning' "$work/apply.log" && fail "overlay $overlay: the server warns (above)"

  # The workload's controller creates its Pods (and claims), admitted under `restricted`.
  want=$(python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] in ("StatefulSet", "Deployment")]
print(sum(d["spec"].get("replicas", 1) for d in docs))' "$out")
  for i in $(seq 1 120); do
    pods=$(kubectl get pods -n "$ns" --no-headers 2>/dev/null | wc -l)
    [ "$pods" -ge "$want" ] && break
    if [ "$i" = 120 ]; then
      kubectl get events -n "$ns" >&2 || true
      fail "overlay $overlay: $pods of $want Pods created in 60 s (events above)"
    fi
    sleep 0.5
  done
  echo "-- created by the controllers (no kubelet: Pending, never run)"
  kubectl get statefulsets,deployments,replicasets,pods,persistentvolumeclaims -n "$ns" -o name | sed 's/^/  /'
  if kubectl get events -n "$ns" -o jsonpath='{range .items[*]}{.reason} {.message}{"\n"}{end}' | grep -E '^FailedCreate'; then
    fail "overlay $overlay: a controller failed to create an object (above)"
  fi

  echo "-- kubectl apply, again: every object must be unchanged"
  kubectl apply -n "$ns" -f "$out" >"$work/again.log" 2>&1 \
    || { cat "$work/again.log" >&2; fail "overlay $overlay: the second apply fails"; }
  sed 's/^/  /' "$work/again.log"
  if grep -v ' unchanged$' "$work/again.log" | grep -q .; then
    kubectl get -n "$ns" -f "$out" -o yaml >"$work/live-$overlay.yaml" 2>/dev/null || true
    echo "check-cluster: overlay $overlay drifts: the lines above not 'unchanged' are objects the server changed after the apply (live objects: $work/live-$overlay.yaml)" >&2
    keep=1
    status=1
  fi
done
[ "$status" = 0 ] || fail "drift (above)"

# The drift check must catch drift: the claim template as it was before issue 28 (without what
# the server adds to it) is reported `configured` on every apply.
echo "== self-check: the StatefulSet's claim template without apiVersion, kind, volumeMode and status must drift"
kubectl create namespace casestream-drift >/dev/null
python3 - "$rendered/example.yaml" >"$work/drift.yaml" <<'PY'
import sys, yaml
sts = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "StatefulSet")
sts["metadata"]["namespace"] = "casestream-drift"
for t in sts["spec"]["volumeClaimTemplates"]:
    for key in ("apiVersion", "kind", "status"):
        t.pop(key, None)
    t["spec"].pop("volumeMode", None)
yaml.safe_dump(sts, sys.stdout)
PY
kubectl apply -f "$work/drift.yaml" >/dev/null
again=$(kubectl apply -f "$work/drift.yaml")
[ "$again" = "statefulset.apps/casestream configured" ] \
  || fail "the claim template without what the server adds did not drift: $again"
echo "self-check: $again (on every apply), as expected"

# The server must refuse broken manifests, for the right reason: created afresh in a namespace
# of their own (labelled restricted), so the errors are those of a first apply.
echo "== manifests broken on purpose must be refused"
kubectl create namespace casestream-refusals >/dev/null
kubectl label namespace casestream-refusals pod-security.kubernetes.io/enforce=restricted >/dev/null
kubectl create serviceaccount casestream -n casestream-refusals >/dev/null
refused() { # refused <what> <expected error> <file>
  if kubectl apply -n casestream-refusals --dry-run=server -f "$3" >"$work/refused.log" 2>&1; then
    cat "$work/refused.log" >&2
    fail "the server accepted $1"
  elif ! grep -qF "$2" "$work/refused.log"; then
    cat "$work/refused.log" >&2
    fail "the server refused $1, but not with \"$2\""
  fi
  echo "refused: $1: $(grep -m1 -F "$2" "$work/refused.log" | cut -c1-300)"
}
broken() { # broken <kind> <python statement on obj>: the example overlay's object, changed
  python3 - "$rendered/example.yaml" "$1" "$2" <<'PY'
import sys, yaml
path, kind, change = sys.argv[1:4]
obj = next(d for d in yaml.safe_load_all(open(path)) if d and d["kind"] == kind)
obj["metadata"]["namespace"] = "casestream-refusals"
exec(change)
yaml.safe_dump(obj, sys.stdout)
PY
}
broken StatefulSet 'spec = obj["spec"]["template"]["spec"]; spec["enableServiceLink"] = spec.pop("enableServiceLinks")' \
  >"$work/misspelt.yaml"
refused "a misspelt field (enableServiceLink)" 'unknown field "spec.template.spec.enableServiceLink"' "$work/misspelt.yaml"
# The StatefulSet's Pod template as a Pod (its claim as an emptyDir), the container privileged.
broken StatefulSet '
spec = obj["spec"]["template"]["spec"]
spec["volumes"].append({"name": "state", "emptyDir": {}})
spec["containers"][0]["securityContext"].update(privileged=True, allowPrivilegeEscalation=True)
obj = {"apiVersion": "v1", "kind": "Pod", "spec": spec,
       "metadata": {"name": "privileged", "namespace": "casestream-refusals"}}' >"$work/privileged.yaml"
refused "a privileged container" 'violates PodSecurity "restricted:latest": ' "$work/privileged.yaml"
# The same Pod, unbroken, is admitted: the refusal above is the privileged container's.
broken StatefulSet '
spec = obj["spec"]["template"]["spec"]
spec["volumes"].append({"name": "state", "emptyDir": {}})
obj = {"apiVersion": "v1", "kind": "Pod", "spec": spec,
       "metadata": {"name": "unprivileged", "namespace": "casestream-refusals"}}' >"$work/pod.yaml"
kubectl apply -n casestream-refusals --dry-run=server -f "$work/pod.yaml" >"$work/pod.log" 2>&1 \
  || { cat "$work/pod.log" >&2; fail "the StatefulSet's Pod template, as a Pod, is refused"; }
echo "admitted: the same Pod without the privileged container: $(cat "$work/pod.log")"
echo "check-cluster: ok (Kubernetes $KUBE_VERSION)"
