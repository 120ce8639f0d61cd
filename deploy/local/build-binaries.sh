#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl), the real node's kubelet and kube-proxy and Helm from their upstream Go modules, pinned by the go.mod/go.sum files beside this
# script. Binaries go to a cache outside the repository keyed by those pins, so a rebuild happens
# only when a pinned version changes. Prints the binary directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${ACTIVITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/activity-operator}

k8s_version=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit} $2=="k8s.io/kubernetes" {print $3; exit}' "$here/k8s/go.mod")
helm_version=$(awk '$1=="helm.sh/helm/v3" {print $2; exit} $2=="helm.sh/helm/v3" {print $3; exit}' "$here/helm/go.mod")
[[ -n $k8s_version && -n $helm_version ]] || { echo "build-binaries: cannot read pinned versions" >&2; exit 1; }
key=$(cat "$here"/k8s/go.mod "$here"/k8s/go.sum "$here"/k8s/cmd/etcd/main.go "$here"/helm/go.mod "$here"/helm/go.sum \
      <(go env GOVERSION) <(sed -n '/^# BUILD-RECIPE/,$p' "$0") | sha256sum | cut -c1-16)
bin="$cache_root/bin/$k8s_version-$key"
tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy helm)
all_there() { for t in "${tools[@]}"; do [[ -x $bin/$t ]] || return 1; done; }
if all_there; then echo "$bin"; exit 0; fi
# One build at a time: a concurrent caller (another `cluster.sh up`, a test run) waits for the running
# build and then uses its result instead of racing it on the same directory.
mkdir -p "$cache_root/bin"
exec 9>"$cache_root/bin/.build.lock"
if ! flock -n 9; then
  echo "build-binaries: another build of the control plane is running; waiting for it" >&2
  flock 9
fi
if all_there; then echo "$bin"; exit 0; fi

# BUILD-RECIPE (anything below this line is part of the cache key)
mkdir -p "$bin.tmp"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
minor=$(echo "$k8s_version" | cut -d. -f2)
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ver_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ver_flags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ver_flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
done
log() { echo "build-binaries: $*" >&2; }
cd "$here/k8s"
for t in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  log "building $t $k8s_version"
  go build -trimpath -ldflags "-s -w $ver_flags" -o "$bin.tmp/$t" "k8s.io/kubernetes/cmd/$t"
done
log "building etcd"
go build -trimpath -ldflags "-s -w" -o "$bin.tmp/etcd" ./cmd/etcd
cd "$here/helm"
log "building helm $helm_version"
go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  -o "$bin.tmp/helm" helm.sh/helm/v3/cmd/helm
rm -rf "$bin" && mv "$bin.tmp" "$bin"
echo "$bin"
