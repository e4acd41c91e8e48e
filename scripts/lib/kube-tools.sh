# Sourced by scripts/check-cluster.sh: kube-apiserver, kube-controller-manager and kubectl of one
# pinned Kubernetes release, built from the Go module proxy and cached outside the repository.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod maps every staging module
# (k8s.io/api, k8s.io/apiserver, ...) to ./staging/src/..., a replace only the main module may
# use. So a throwaway main module requires k8s.io/kubernetes and maps each of those staging
# modules (read from k8s.io/kubernetes' own go.mod) to its published v0.X.Y instead, then builds
# the three commands. Cold: about 6 minutes of CPU on 2 cores and ~3 GB of Go build cache;
# cached: nothing to do (the binaries are kept under $KUBE_TOOLS_CACHE/<version>/bin).
# Set `repo` and KUBE_VERSION (v1.X.Y) before sourcing; sets kube_bin.

KUBE_TOOLS_CACHE=${KUBE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/casestream/kube}

kube_tools() { # builds (or finds) the binaries; sets kube_bin
  kube_bin=$KUBE_TOOLS_CACHE/$KUBE_VERSION/bin
  local tool missing=0
  for tool in kube-apiserver kube-controller-manager kubectl; do
    [ -x "$kube_bin/$tool" ] || missing=1
  done
  [ "$missing" = 0 ] && return 0
  command -v go >/dev/null 2>&1 || apt_install golang-go
  local src=$KUBE_TOOLS_CACHE/$KUBE_VERSION/src start=$SECONDS staging log
  local minor=v0.${KUBE_VERSION#v1.}
  rm -rf "$src" && mkdir -p "$src" "$kube_bin"
  log=$src/build.log
  echo "building kube-apiserver, kube-controller-manager and kubectl $KUBE_VERSION from the Go module proxy (about 6 min of CPU on a cold Go cache)" >&2
  (
    set -e
    cd "$src"
    export GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
    go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >download.json
    # The staging modules k8s.io/kubernetes replaces with its ./staging/src copies.
    staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z-]*\) => \./staging/src/.*#\1#p' \
      "$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBE_VERSION.mod")
    [ -n "$staging" ] || { echo "no staging modules found in k8s.io/kubernetes@$KUBE_VERSION's go.mod" >&2; exit 1; }
    {
      echo "module casestream.local/kube-tools"
      echo
      echo "go 1.26.0"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      for m in $staging; do echo "replace $m => $m $minor"; done
    } >go.mod
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kubectl@$KUBE_VERSION"
    # The version the binaries report (a release build stamps it the same way).
    local major=${KUBE_VERSION#v} pkg flags=""
    major=${major%%.*}
    local minor_n=${KUBE_VERSION#v*.}
    minor_n=${minor_n%%.*}
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      flags="$flags -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor_n -X $pkg.gitTreeState=clean"
    done
    CGO_ENABLED=0 go build -trimpath -ldflags "$flags" -o "$kube_bin/" k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
  ) >"$log" 2>&1 || { tail -20 "$log" >&2; echo "building the Kubernetes $KUBE_VERSION binaries failed (log: $log)" >&2; return 1; }
  echo "Kubernetes $KUBE_VERSION binaries built in $((SECONDS - start)) s" >&2
}
