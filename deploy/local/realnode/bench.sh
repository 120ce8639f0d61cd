#!/usr/bin/env bash
# The real node next to the process node, in one run (docs/benchmarks.md, "Real node"): the chart's
# operator (2 replicas, on the real node) watches two namespaces; N exec-mode Activities
# (`activity-worker exec -- sh -c 'echo ::result …'`, image …/activity-worker) are created at once
# in the first, whose pods go to the real node, then N in the second, whose pods select the process
# node and tolerate its taint. Prints the seconds from `kubectl apply` to all N Succeeded, and where
# the pods ran. Cleans up its namespaces and release afterwards.
#
#   deploy/local/realnode/bench.sh [N]     (default 20; the cluster of ACTIVITY_LOCAL_DIR or .local)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
dir=${ACTIVITY_LOCAL_DIR:-$repo/.local}
n=${1:-20}
bin=$(cat "$dir/bin-dir")
k() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
h() { "$bin/helm" --kubeconfig "$dir/kubeconfig" "$@"; }
version=$(awk '$1 == "appVersion:" {gsub(/"/, "", $2); print $2; exit}' "$repo/charts/activity-operator/Chart.yaml")
cd "$repo"

k get node real-node >/dev/null || { echo "bench: the cluster in $dir has no real node" >&2; exit 1; }
k apply --server-side -f crds/activity.yaml >/dev/null
k wait --for=condition=Established crd/activities.heartbeat.dev >/dev/null
for ns in bench-op bench-real bench-proc; do
  # A previous run's namespace may still be terminating.
  for _ in $(seq 1 120); do k get namespace "$ns" >/dev/null 2>&1 || break; sleep 1; done
  k create namespace "$ns" >/dev/null
done
cleanup() {
  h uninstall bench -n bench-op --wait >/dev/null 2>&1 || true
  k delete namespace bench-op bench-real bench-proc --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT
h install bench charts/activity-operator -n bench-op --set 'watchNamespaces={bench-real,bench-proc}' \
  --set 'workerNamespaces={bench-real,bench-proc}' --wait --timeout 3m >/dev/null
echo "operator pods: $(k get pods -n bench-op -o jsonpath='{range .items[*]}{.metadata.name}@{.spec.nodeName} {end}')"

manifests() { # namespace extra-pod-spec
  local i
  for i in $(seq 1 "$n"); do
    cat <<EOF
apiVersion: heartbeat.dev/v1alpha1
kind: Activity
metadata: {name: a-$i, namespace: $1}
spec:
  startToCloseTimeout: 2m
  retryPolicy: {maximumAttempts: 1}
  template:
    spec:
      $2
      containers:
        - name: worker
          image: ghcr.io/heartbeat-dev/activity-worker:$version
          args: [exec, --, sh, -c, 'echo "::result {\"i\": $i}"']
---
EOF
  done
}

run() { # namespace extra-pod-spec
  local file t0 done_n
  file=$(mktemp)
  manifests "$1" "$2" >"$file"
  t0=$(date +%s.%N)
  k apply -f "$file" >/dev/null
  rm -f "$file"
  while :; do
    done_n=$(k get activities -n "$1" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Succeeded$' || true)
    [[ $done_n == "$n" ]] && break
    sleep 0.2
  done
  printf '%s: %d Activities Succeeded in %.1f s; pods per node: %s\n' "$1" "$n" "$(echo "$(date +%s.%N) - $t0" | bc)" \
    "$(k get pods -n "$1" -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort | uniq -c | awk '{printf "%s %s ", $2, $1}')"
}

run bench-real ""
run bench-proc 'tolerations: [{key: heartbeat.dev/process-node, operator: Exists, effect: NoSchedule}]
      nodeSelector: {kubernetes.io/hostname: local-node}'
