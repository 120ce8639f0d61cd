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
# Two recipes, each keyed by its pins, the Go version and its own text (below): a change to Helm's
# rebuilds only Helm (the Kubernetes binaries are linked from the directory of the same k8s key).
recipe() { sed -n "/^# $1-RECIPE/,/^# END-$1-RECIPE/p" "$0"; }
k8s_key=$(cat "$here"/k8s/go.mod "$here"/k8s/go.sum "$here"/k8s/cmd/etcd/main.go <(go env GOVERSION) <(recipe K8S) |
  sha256sum | cut -c1-12)
helm_key=$(cat "$here"/helm/go.mod "$here"/helm/go.sum <(go env GOVERSION) <(recipe HELM) | sha256sum | cut -c1-8)
bin="$cache_root/bin/$k8s_version-$k8s_key-$helm_key"
k8s_tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
tools=("${k8s_tools[@]}" helm)
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

rm -rf "$bin.tmp" && mkdir -p "$bin.tmp"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
log() { echo "build-binaries: $*" >&2; }
# The Kubernetes binaries of another directory with the same k8s key (only Helm's recipe differed).
for other in "$cache_root/bin/$k8s_version-$k8s_key"-*; do
  [[ -d $other && $other != "$bin" && $other != *.tmp ]] || continue
  for t in "${k8s_tools[@]}"; do [[ -x $other/$t ]] && ln -f "$other/$t" "$bin.tmp/$t"; done
done

# K8S-RECIPE (part of the Kubernetes binaries' cache key)
minor=$(echo "$k8s_version" | cut -d. -f2)
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ver_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ver_flags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ver_flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
done
cd "$here/k8s"
for t in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  [[ -x $bin.tmp/$t ]] && continue
  log "building $t $k8s_version"
  go build -trimpath -ldflags "-s -w $ver_flags" -o "$bin.tmp/$t" "k8s.io/kubernetes/cmd/$t"
done
if [[ ! -x $bin.tmp/etcd ]]; then
  log "building etcd"
  go build -trimpath -ldflags "-s -w" -o "$bin.tmp/etcd" ./cmd/etcd
fi
# END-K8S-RECIPE

# HELM-RECIPE (part of Helm's cache key)
# As Helm's own release build (its Makefile): the version, and the Kubernetes version that `helm
# template` and `helm lint` assume without a cluster, from the client-go Helm is built with (left
# unset it is v1.20.0, which a chart's kubeVersion of >=1.30 refuses).
cd "$here/helm"
client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go) # v0.37.0 -> Kubernetes 1.37
helm_kube_minor=$(echo "$client_go" | cut -d. -f2)
log "building helm $helm_version (default Kubernetes version 1.$helm_kube_minor)"
helm_flags="-X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_kube_minor"
done
go build -trimpath -ldflags "-s -w $helm_flags" -o "$bin.tmp/helm" helm.sh/helm/v3/cmd/helm
# END-HELM-RECIPE
rm -rf "$bin" && mv "$bin.tmp" "$bin"
echo "$bin"
