#!/usr/bin/env bash
# Renders deploy/manifests/activity-operator.yaml, the plain-manifest install, from the Helm chart
# with its default values into namespace activity-system: the Namespace, the CRD, then every
# object of the chart. tests/tests/chart.rs fails when the committed file drifts from the chart.
#
#   deploy/render-manifests.sh            rewrite deploy/manifests/activity-operator.yaml
#   deploy/render-manifests.sh --stdout   print the manifests instead
#   deploy/render-manifests.sh --check    exit 1 (with a diff) when the committed file is out of date
#
# helm: $HELM, else the local cluster's pinned build (.local/bin-dir), else helm on the PATH.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart=$repo/charts/activity-operator
out=$repo/deploy/manifests/activity-operator.yaml
release=activity-operator
namespace=activity-system

mode=write
case "${1:-}" in
  "") ;;
  --stdout) mode=stdout ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--stdout|--check]" >&2; exit 2 ;;
esac

helm=${HELM:-}
if [[ -z $helm ]]; then
  if [[ -f $repo/.local/bin-dir ]] && [[ -x $(cat "$repo/.local/bin-dir")/helm ]]; then
    helm=$(cat "$repo/.local/bin-dir")/helm
  elif command -v helm >/dev/null 2>&1; then
    helm=helm
  else
    echo "render-manifests: no helm (set HELM, or run deploy/local/build-binaries.sh / make cluster)" >&2
    exit 1
  fi
fi

version=$(sed -n 's/^version: *//p' "$chart/Chart.yaml")

render() {
  cat <<HEADER
# activity-operator $version: plain manifests, rendered from charts/activity-operator with its
# default values (release $release, namespace $namespace) by deploy/render-manifests.sh.
# Do not edit: change the chart and run deploy/render-manifests.sh.
#
#   kubectl apply -f deploy/manifests/activity-operator.yaml
#
# Contents: the namespace, the Activity CRD, the operator (2 replicas, leader election), its RBAC
# (cluster-wide), the worker service account with its Role in namespace default, and the worker
# status policy (a ValidatingAdmissionPolicy and its binding). See docs/install.md.
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/part-of: activity-operator
    # The operator's pods meet the restricted Pod Security Standard.
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
HEADER
  "$helm" template "$release" "$chart" --namespace "$namespace" --include-crds
}

case $mode in
  stdout) render ;;
  write)
    mkdir -p "$(dirname "$out")"
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    render >"$tmp"
    mv "$tmp" "$out"
    chmod 0644 "$out"
    trap - EXIT
    echo "wrote ${out#"$repo"/}" >&2
    ;;
  check)
    if ! diff -u "$out" <(render); then
      echo "render-manifests: ${out#"$repo"/} is out of date: run deploy/render-manifests.sh" >&2
      exit 1
    fi
    ;;
esac
