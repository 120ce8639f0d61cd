#!/usr/bin/env bash
# The local cluster: etcd, kube-apiserver, kube-controller-manager and kube-scheduler (upstream builds
# from build-binaries.sh) on loopback, the process node (deploy/local/node) and a real node
# (deploy/local/realnode/realnode.sh: kubelet, containerd, runc, CNI, kube-proxy, a loopback registry
# serving the images of deploy/local/images.sh). Pods run on the real node; the process node is
# tainted and takes only pods that tolerate it (the benchmarks' thousands of pods).
#
#   cluster.sh up        start everything; idempotent (a healthy cluster is left alone, the leftovers
#                        of a killed run are stopped and wiped, then a fresh cluster starts)
#   cluster.sh down      stop everything this checkout started, by recorded pid; idempotent
#   cluster.sh status    what runs: pids, ports, memory, health
#   cluster.sh running   exit 0 when the control plane is up and healthy (quiet)
#   cluster.sh env       prints exports for a shell: eval "$(deploy/local/cluster.sh env)"
#   cluster.sh selftest  up / down / restart / killed-run recovery checks on a second, isolated
#                        cluster (in .local/selftest); it does not touch the main cluster
#   cluster.sh registry  prints the loopback registry's HOST:PORT while it runs (real node only)
#   cluster.sh images    pushes the images of `images.sh build` to that registry; the real node
#                        drops its copies of the project's images (its next pods pull the new build)
#   cluster.sh realnode-check  exit 0 when the real node is wanted and this machine can run it;
#                        otherwise prints why not
#
# State lives in .local/ (ACTIVITY_LOCAL_DIR overrides): kubeconfig (admin), node.kubeconfig, bin-dir,
# cluster.env (ports), pki/, logs/<component>.log, pids/<component>.pid, etcd/, node/, realnode/.
# Knobs (environment):
#   ACTIVITY_CLUSTER_TIMEOUT  seconds to wait for the control plane, and again for the node (default 60)
#   ACTIVITY_NODE=skip        run without the process node
#   ACTIVITY_NODE_BUILD=0     start target/debug/process-node as it is, without `cargo build` first
#   ACTIVITY_REAL_NODE=0      no real node: the process node alone, untainted. The default (1) runs
#                             the real node where the machine can (root, cgroups, the Debian packages
#                             of .ci/run, no other real node on the machine); where it cannot, `up`
#                             says why in one line and runs the process node alone. With the real
#                             node the process node is tainted heartbeat.dev/process-node=true:NoSchedule.
#                             A healthy cluster started the other way is left alone unless
#                             ACTIVITY_REAL_NODE is set explicitly (then it is restarted).
#   ACTIVITY_SELFTEST_DIR     the selftest's state directory (default .local/selftest)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
local_dir=${ACTIVITY_LOCAL_DIR:-$repo/.local}
[[ $local_dir == /* ]] || local_dir=$PWD/$local_dir
target_dir=${CARGO_TARGET_DIR:-$repo/target}
[[ $target_dir == /* ]] || target_dir=$repo/$target_dir
pids=$local_dir/pids
logs=$local_dir/logs
pki=$local_dir/pki
timeout=${ACTIVITY_CLUSTER_TIMEOUT:-60}
node_name=local-node
sa_issuer=https://kubernetes.default.svc.cluster.local
control_plane=(etcd kube-apiserver kube-controller-manager kube-scheduler)
# Stop order: the nodes first (they stop their pods), then the control plane from the top down.
# The real node's four components stop together (realnode_stop), in their own order.
stop_order=(process-node kubelet kube-proxy containerd registry kube-scheduler kube-controller-manager kube-apiserver etcd)

log() { echo "cluster: $*" >&2; }
# shellcheck source=deploy/local/realnode/realnode.sh
source "$here/realnode/realnode.sh"
warn() { echo "cluster: WARNING: $*" >&2; }
# Set while `up` starts processes: a failure then stops what it started (logs stay for a look).
stop_on_failure=0
die() {
  echo "cluster: ERROR: $*" >&2
  if ((stop_on_failure)); then
    stop_on_failure=0
    echo "cluster: stopping what this run started (logs stay in $logs)" >&2
    stop_all >&2 || true
  fi
  exit 1
}

# ---------------------------------------------------------------------------------------------------
# Processes. Every component runs in its own session and process group (setsid), its pid recorded in
# pids/<component>.pid. A recorded pid only counts as ours while the process is alive (zombies do not
# count: nothing may reap orphans here) and its command line carries the component's marker argument,
# a path inside this state directory, so a recycled pid is never signalled.

marker() {
  case $1 in
    etcd) echo "--data-dir=$local_dir/etcd" ;;
    kube-apiserver) echo "--client-ca-file=$pki/ca.crt" ;;
    kube-controller-manager) echo "--kubeconfig=$pki/kube-controller-manager.kubeconfig" ;;
    kube-scheduler) echo "--kubeconfig=$pki/kube-scheduler.kubeconfig" ;;
    process-node) echo "$local_dir/node.kubeconfig" ;;
    registry) echo "$local_dir/realnode/registry.yml" ;;
    containerd) echo "$local_dir/realnode/containerd.toml" ;;
    kubelet) echo "--config=$local_dir/realnode/kubelet.yaml" ;;
    kube-proxy) echo "--config=$local_dir/realnode/kube-proxy.yaml" ;;
    *) die "internal: unknown component $1" ;;
  esac
}

# The fields of /proc/<pid>/stat after the command name: [0]=state [2]=pgrp [19]=starttime.
proc_stat() {
  local line
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  echo "${line##*) }"
}

alive() {
  local stat
  stat=$(proc_stat "$1") || return 1
  [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

has_arg() { # pid exact-argument
  local args
  args=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  grep -qxF -- "$2" <<<"$args"
}

first_arg() { # pid -> argv[0] of its command line
  local arg
  { IFS= read -r -d '' arg <"/proc/$1/cmdline"; } 2>/dev/null || return 1
  echo "$arg"
}

recorded_pid() { # component -> its recorded pid (fails when none is recorded)
  local pid
  [[ -f $pids/$1.pid ]] || return 1
  read -r pid <"$pids/$1.pid" || return 1
  [[ $pid =~ ^[0-9]+$ ]] && ((pid > 1)) || return 1
  echo "$pid"
}

component_running() { # component -> pid, when the recorded process is alive and ours
  local pid
  pid=$(recorded_pid "$1") || return 1
  alive "$pid" && has_arg "$pid" "$(marker "$1")" || return 1
  echo "$pid"
}

group_members() { # pgid -> the live pids of that process group
  local f line fields
  kill -0 -- "-$1" 2>/dev/null || return 0
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    read -ra fields <<<"${line##*) }"
    [[ ${fields[2]} == "$1" && ${fields[0]} != Z && ${fields[0]} != X ]] && echo "${f:6:-5}"
  done
  return 0
}

group_alive() { [[ -n $(group_members "$1") ]]; }

wait_group_gone() { # pgid seconds
  local deadline=$((SECONDS + $2))
  while group_alive "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

terminate_group() { # pgid grace-seconds description
  # Never 0 or 1 ('kill -- -1' would signal every process), never our own process group.
  if [[ ! $1 =~ ^[0-9]+$ ]] || (($1 <= 1)); then die "internal: refusing to signal process group '$1'"; fi
  [[ $1 != "$(proc_stat $$ | cut -d' ' -f3)" ]] || die "internal: refusing to signal our own process group $1"
  kill -TERM -- "-$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null || true
  wait_group_gone "$1" "$2" && return 0
  warn "$3 still running ${2}s after SIGTERM; sending SIGKILL"
  kill -KILL -- "-$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null || true
  wait_group_gone "$1" 5 || die "could not stop $3 (process group $1): $(group_members "$1" | tr '\n' ' ')"
}

start_component() { # component command...
  local comp=$1 pid deadline=$((SECONDS + 5)) marker
  shift
  marker=$(marker "$comp")
  setsid "$@" >"$logs/$comp.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$pids/$comp.pid"
  # The child is the forked shell, then setsid (whose arguments carry the marker too), then the
  # component; while an exec is under way its command line can read empty. A check before the
  # last exec would take the component for dead, so wait (bounded) until argv[0] is the command.
  # A child that exits ends the wait.
  while alive "$pid" && ! { [[ $(first_arg "$pid") == "$1" ]] && has_arg "$pid" "$marker"; } &&
    ((SECONDS < deadline)); do
    sleep 0.05
  done
}

stop_component() { # component grace-seconds
  local pid
  pid=$(recorded_pid "$1") || return 0
  if alive "$pid" && has_arg "$pid" "$(marker "$1")"; then
    log "stopping $1 (pid $pid)"
    terminate_group "$pid" "$2" "$1"
  elif group_alive "$pid" && ! alive "$pid"; then
    # The leader is gone but its process group lives on; a group id cannot be reused while it does.
    log "stopping what is left of $1 (process group $pid)"
    terminate_group "$pid" "$2" "$1"
  fi
  rm -f "$pids/$1.pid"
}

# The node records each pod process group it runs as node/pids/<pgid>, holding "<start ticks of the
# leader> <label>". They should be gone once the node has stopped; whatever is not is killed here. A
# live leader must still be the recorded process (same start ticks), so a recycled pid is left alone;
# a group whose leader has exited is the recorded one (a pgid is not reused while its group lives).
stop_pod_groups() {
  local f pgid recorded fields stat
  [[ -d $local_dir/node/pids ]] || return 0
  for f in "$local_dir"/node/pids/*; do
    [[ -f $f ]] || continue
    pgid=${f##*/}
    [[ $pgid =~ ^[0-9]+$ ]] || continue
    ((pgid > 1)) || continue
    group_alive "$pgid" || continue
    if alive "$pgid"; then
      recorded=0
      { read -r recorded _ <"$f"; } 2>/dev/null || true
      stat=$(proc_stat "$pgid") || continue
      read -ra fields <<<"$stat"
      if [[ $recorded =~ ^[0-9]+$ && $recorded != 0 && $recorded != "${fields[19]}" ]]; then
        log "pod record $f: pid $pgid now belongs to an unrelated process; leaving it alone"
        continue
      fi
    fi
    log "stopping pod process group $pgid left behind by the node"
    terminate_group "$pgid" 5 "pod process group $pgid"
  done
}

stop_all() {
  local comp grace
  for comp in "${stop_order[@]}"; do
    case $comp in
      kubelet)
        realnode_stop
        continue
        ;;
      kube-proxy | containerd | registry) continue ;;
    esac
    grace=10
    [[ $comp == process-node ]] && grace=20
    stop_component "$comp" "$grace"
    [[ $comp == process-node ]] && stop_pod_groups
  done
  return 0
}

# ---------------------------------------------------------------------------------------------------
# Ports, certificates, kubeconfigs

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() {
  local name port taken=" "
  : >"$local_dir/cluster.env.tmp"
  for name in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT $(realnode_ports); do
    while :; do
      # Below the kernel's ephemeral range (32768+), so outgoing connections never hold them.
      port=$((20000 + RANDOM % 12000))
      [[ $taken != *" $port "* ]] && port_free "$port" && break
    done
    taken+="$port "
    echo "$name=$port" >>"$local_dir/cluster.env.tmp"
  done
  # The API server's flags differ with a real node (realnode_apiserver_flags): `up` restarts on a change.
  echo "REAL_NODE=${want_real:-0}" >>"$local_dir/cluster.env.tmp" # cmd_up's choice
  mv "$local_dir/cluster.env.tmp" "$local_dir/cluster.env"
}

load_env() {
  [[ -f $local_dir/cluster.env ]] || return 1
  # shellcheck source=/dev/null
  source "$local_dir/cluster.env"
  [[ -n ${APISERVER_PORT:-} && -n ${ETCD_PORT:-} && -n ${KCM_PORT:-} && -n ${SCHEDULER_PORT:-} ]]
}

openssl_quiet() {
  local out
  out=$(openssl "$@" 2>&1) || die "openssl $1 failed: $out"
}

new_key() { openssl_quiet genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

sign_cert() { # name subject extensions [ca-name]
  local ca=${4:-ca}
  new_key "$pki/$1.key"
  openssl_quiet req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
  printf '%b\n' "$3" >"$pki/$1.ext"
  openssl_quiet x509 -req -in "$pki/$1.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
    -CAserial "$pki/$ca.srl" -days 825 -sha256 -extfile "$pki/$1.ext" -out "$pki/$1.crt"
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}

gen_pki() {
  local client='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth'
  mkdir -p "$pki"
  chmod 700 "$pki"
  new_key "$pki/ca.key"
  openssl_quiet req -x509 -new -key "$pki/ca.key" -subj "/CN=activity-operator-local-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$pki/ca.crt"
  sign_cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign_cert admin "/O=system:masters/CN=admin" "$client"
  sign_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  sign_cert kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  sign_cert kube-scheduler "/CN=system:kube-scheduler" "$client"
  # The node's identity; also valid as its serving certificate on 127.0.0.1 should it serve one.
  sign_cert node "/O=system:nodes/CN=system:node:$node_name" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth,serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:$node_name"
  # The front proxy (aggregation layer) has its own CA, as in kubeadm: the API server trusts its
  # identity headers only from a client certificate of that CA.
  new_key "$pki/front-proxy-ca.key"
  openssl_quiet req -x509 -new -key "$pki/front-proxy-ca.key" -subj "/CN=activity-operator-local-front-proxy-ca" \
    -days 3650 -sha256 -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$pki/front-proxy-ca.crt"
  sign_cert front-proxy-client "/CN=front-proxy-client" "$client" front-proxy-ca
  realnode_pki
  openssl_quiet genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
  openssl_quiet pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
}

write_kubeconfig() { # file user cert-name
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: activity-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$3.crt")
    client-key-data: $(base64 -w0 <"$pki/$3.key")
contexts:
- name: activity-local
  context:
    cluster: activity-local
    user: $2
current-context: activity-local
EOF
  chmod 600 "$1.tmp"
  mv "$1.tmp" "$1"
}

# ---------------------------------------------------------------------------------------------------
# Health

api_get() { # path -> body; fails on non-2xx
  curl -fsS --max-time 3 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT$1" 2>/dev/null
}

apiserver_ready() { [[ $(api_get /readyz) == ok ]]; }
default_sa_exists() { api_get /api/v1/namespaces/default/serviceaccounts/default >/dev/null; }
healthz_ok() { [[ $(curl -ksS --max-time 3 "https://127.0.0.1:$1/healthz" 2>/dev/null) == ok ]]; }

node_ready() {
  local status
  status=$("$bin_dir/kubectl" --kubeconfig "$local_dir/kubeconfig" get node "$node_name" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || return 1
  [[ $status == True ]]
}

log_tail() { # component
  echo "---- last lines of $logs/$1.log ----" >&2
  tail -n 25 "$logs/$1.log" >&2 2>/dev/null || true
  echo "----" >&2
}

# Fails with a message naming the component when one of `components` has exited.
check_started() {
  local comp
  for comp in "$@"; do
    if ! component_running "$comp" >/dev/null; then
      log_tail "$comp"
      die "$comp exited during startup; its log: $logs/$comp.log"
    fi
  done
}

# Waits (bounded) for `check` to succeed while `components` keep running.
wait_until() { # deadline check-function components...
  local deadline=$1 check=$2
  shift 2
  until "$check"; do
    check_started "$@"
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 0.2
  done
}

control_plane_healthy() {
  local comp
  load_env || return 1
  for comp in "${control_plane[@]}"; do
    component_running "$comp" >/dev/null || return 1
  done
  apiserver_ready
}

any_state() {
  [[ -d $pids && -n $(ls -A "$pids" 2>/dev/null) ]] || [[ -d $local_dir/node/pids && -n $(ls -A "$local_dir/node/pids" 2>/dev/null) ]] ||
    [[ -f $local_dir/realnode/host.env ]]
}

# ---------------------------------------------------------------------------------------------------
# up

get_bin_dir() {
  bin_dir=$("$here/build-binaries.sh") || die "deploy/local/build-binaries.sh failed (see its output above)"
  local t
  for t in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x $bin_dir/$t ]] || die "build-binaries.sh printed $bin_dir, which has no $t"
  done
}

start_control_plane() {
  local started=$SECONDS deadline
  # Keep the previous run's logs for a look after a failure; wipe all other state.
  rm -rf "$local_dir/etcd" "$pki" "$local_dir/node" "$pids" "$local_dir/logs.prev" "$local_dir/realnode" \
    "$local_dir/kubeconfig" "$local_dir/node.kubeconfig" "$local_dir/cluster.env"
  [[ -d $logs ]] && mv "$logs" "$local_dir/logs.prev"
  mkdir -p "$pids" "$logs" "$local_dir/node"
  echo "$bin_dir" >"$local_dir/bin-dir"
  pick_ports
  load_env || die "internal: cannot read $local_dir/cluster.env"
  gen_pki
  write_kubeconfig "$local_dir/kubeconfig" admin admin
  write_kubeconfig "$local_dir/node.kubeconfig" "system:node:$node_name" node
  write_kubeconfig "$pki/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager
  write_kubeconfig "$pki/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
  log "starting etcd and kube-apiserver (https://127.0.0.1:$APISERVER_PORT); logs in $logs"
  deadline=$((started + timeout))

  start_component etcd "$bin_dir/etcd" --name local "--data-dir=$local_dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn

  local net_flags=(--advertise-address=127.0.0.1 --bind-address=127.0.0.1 --endpoint-reconciler-type=none)
  # shellcheck disable=SC2207 # flags without spaces
  [[ $REAL_NODE == 1 ]] && net_flags=($(realnode_apiserver_flags))
  start_component kube-apiserver "$bin_dir/kube-apiserver" \
    "${net_flags[@]}" "--secure-port=$APISERVER_PORT" \
    "--etcd-servers=http://127.0.0.1:$ETCD_PORT" \
    "--client-ca-file=$pki/ca.crt" "--tls-cert-file=$pki/apiserver.crt" "--tls-private-key-file=$pki/apiserver.key" \
    "--kubelet-client-certificate=$pki/apiserver-kubelet-client.crt" "--kubelet-client-key=$pki/apiserver-kubelet-client.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    "--service-account-issuer=$sa_issuer" "--api-audiences=$sa_issuer" \
    "--service-account-key-file=$pki/sa.pub" "--service-account-signing-key-file=$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    "--requestheader-client-ca-file=$pki/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    "--proxy-client-cert-file=$pki/front-proxy-client.crt" "--proxy-client-key-file=$pki/front-proxy-client.key" \
    "--cert-dir=$pki/kube-apiserver" --profiling=false

  # The controller manager and the scheduler read RBAC-protected configuration at startup and exit
  # when they cannot, so they start once the API server is ready (its RBAC bootstrap included).
  wait_until "$deadline" apiserver_ready etcd kube-apiserver ||
    { log_tail kube-apiserver && die "kube-apiserver not ready after ${timeout}s; its log: $logs/kube-apiserver.log (etcd: $logs/etcd.log)"; }
  log "kube-apiserver ready after $((SECONDS - started))s; starting kube-controller-manager and kube-scheduler"

  start_component kube-controller-manager "$bin_dir/kube-controller-manager" \
    "--kubeconfig=$pki/kube-controller-manager.kubeconfig" \
    "--authentication-kubeconfig=$pki/kube-controller-manager.kubeconfig" \
    "--authorization-kubeconfig=$pki/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 "--secure-port=$KCM_PORT" "--cert-dir=$pki/kube-controller-manager" \
    --use-service-account-credentials=true "--service-account-private-key-file=$pki/sa.key" \
    "--root-ca-file=$pki/ca.crt" "--cluster-signing-cert-file=$pki/ca.crt" "--cluster-signing-key-file=$pki/ca.key" \
    --leader-elect=false --profiling=false

  start_component kube-scheduler "$bin_dir/kube-scheduler" \
    "--kubeconfig=$pki/kube-scheduler.kubeconfig" \
    "--authentication-kubeconfig=$pki/kube-scheduler.kubeconfig" \
    "--authorization-kubeconfig=$pki/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 "--secure-port=$SCHEDULER_PORT" "--cert-dir=$pki/kube-scheduler" \
    --leader-elect=false --profiling=false

  kcm_healthy() { healthz_ok "$KCM_PORT"; }
  scheduler_healthy() { healthz_ok "$SCHEDULER_PORT"; }
  wait_until "$deadline" kcm_healthy "${control_plane[@]}" ||
    { log_tail kube-controller-manager && die "kube-controller-manager not healthy after ${timeout}s; its log: $logs/kube-controller-manager.log"; }
  wait_until "$deadline" scheduler_healthy "${control_plane[@]}" ||
    { log_tail kube-scheduler && die "kube-scheduler not healthy after ${timeout}s; its log: $logs/kube-scheduler.log"; }
  wait_until "$deadline" default_sa_exists "${control_plane[@]}" ||
    { log_tail kube-controller-manager && die "the default ServiceAccount was not created within ${timeout}s; kube-controller-manager log: $logs/kube-controller-manager.log"; }
  log "control plane ready in $((SECONDS - started))s"
}

node_binary_defined() {
  local dir=$repo/deploy/local/node
  [[ -f $dir/src/main.rs || -f $dir/src/bin/process-node.rs ]] || grep -q '^\[\[bin\]\]' "$dir/Cargo.toml" 2>/dev/null
}

ensure_node() {
  local exe=$target_dir/debug/process-node started deadline pid
  if [[ ${ACTIVITY_NODE:-} == skip ]]; then
    log "not starting the process node (ACTIVITY_NODE=skip)"
    return 0
  fi
  if pid=$(component_running process-node); then
    node_ready || die "the process node runs but Node $node_name is not Ready; its log: $logs/process-node.log"
    # Not restarted by itself: that would stop the pods of whoever is using the cluster.
    if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == *" (deleted)" ]]; then
      log "note: the running process node is an older build than $exe; to run the new one: $0 down && $0 up"
    fi
    return 0
  fi
  if ! node_binary_defined; then
    warn "deploy/local/node has no process-node binary yet: running without a node (pods stay Pending)"
    return 0
  fi
  if [[ ${ACTIVITY_NODE_BUILD:-1} != 0 ]]; then
    log "building the process node: cargo build -p process-node (waits while another cargo holds the build lock)"
    if ! (cd "$repo" && cargo build -p process-node --bin process-node) >"$logs/process-node-build.log" 2>&1; then
      tail -n 20 "$logs/process-node-build.log" >&2
      warn "process-node does not compile yet: running without a node (pods stay Pending); build log: $logs/process-node-build.log"
      return 0
    fi
  fi
  [[ -x $exe ]] || die "$exe does not exist (build it with: cargo build -p process-node)"
  mkdir -p "$local_dir/node"
  started=$SECONDS
  start_component process-node "$exe" --kubeconfig "$local_dir/node.kubeconfig" --node-name "$node_name" \
    --state-dir "$local_dir/node" --log-dir "$logs" --bin-dir "$target_dir/debug"
  deadline=$((started + timeout))
  if ! wait_until "$deadline" node_ready process-node; then
    log_tail process-node
    stop_component process-node 20
    stop_pod_groups
    die "Node $node_name did not become Ready within ${timeout}s; process node log: $logs/process-node.log"
  fi
  log "process node ready in $((SECONDS - started))s (Node $node_name)"
}

cmd_up() {
  local started=$SECONDS
  mkdir -p "$local_dir"
  get_bin_dir
  local want_real=0 why
  if realnode_wanted; then
    why=$(realnode_unsupported)
    if [[ -z $why ]]; then
      want_real=1
    else
      log "real node: not started: $why; running with the process node alone"
    fi
  fi
  # A cluster started without the real node while the default wants one (e.g. another checkout's real
  # node ran then) is kept as it is; an explicit ACTIVITY_REAL_NODE restarts it the asked way.
  if [[ -z ${ACTIVITY_REAL_NODE:-} ]] && control_plane_healthy && [[ ${REAL_NODE:-0} == 0 && $want_real == 1 ]]; then
    log "note: this cluster runs without the real node (started so); to add it: $0 down && $0 up"
    want_real=0
  fi
  if control_plane_healthy && [[ $(cat "$local_dir/bin-dir" 2>/dev/null) == "$bin_dir" ]] &&
    [[ ${REAL_NODE:-0} == "$want_real" ]] &&
    { ! recorded_pid process-node >/dev/null || component_running process-node >/dev/null; }; then
    log "control plane already running (API server https://127.0.0.1:$APISERVER_PORT)"
  else
    if any_state; then
      log "found an earlier cluster that is not (entirely) running or uses other binaries: stopping what is left and starting fresh"
      stop_all
    fi
    stop_on_failure=1
    start_control_plane
  fi
  ensure_node
  realnode_start
  if [[ $want_real == 1 ]] && component_running process-node >/dev/null; then
    realnode_taint_process_node
  fi
  stop_on_failure=0
  log "up in $((SECONDS - started))s; KUBECONFIG=$local_dir/kubeconfig"
}

# ---------------------------------------------------------------------------------------------------
# down, status, env

cmd_down() {
  bin_dir=$(cat "$local_dir/bin-dir" 2>/dev/null) || bin_dir=""
  if ! any_state; then
    log "nothing running"
    return 0
  fi
  stop_all
  rm -rf "$pids"
  log "stopped"
}

rss_of() { awk '/^VmRSS:/ {printf "%d MiB", $2 / 1024}' "/proc/$1/status" 2>/dev/null || true; }

cmd_status() {
  local comp pid port="" n=0 f
  load_env || true
  printf '%-24s %-8s %-8s %-7s %s\n' COMPONENT PID STATE PORT RSS
  for comp in "${control_plane[@]}" process-node; do
    case $comp in
      etcd) port=${ETCD_PORT:-} ;;
      kube-apiserver) port=${APISERVER_PORT:-} ;;
      kube-controller-manager) port=${KCM_PORT:-} ;;
      kube-scheduler) port=${SCHEDULER_PORT:-} ;;
      process-node) port=- ;;
    esac
    if pid=$(component_running "$comp"); then
      printf '%-24s %-8s %-8s %-7s %s\n' "$comp" "$pid" running "$port" "$(rss_of "$pid")"
    elif pid=$(recorded_pid "$comp"); then
      printf '%-24s %-8s %-8s\n' "$comp" "$pid" dead
    else
      printf '%-24s %-8s %-8s\n' "$comp" - stopped
    fi
  done
  if [[ -d $local_dir/node/pids ]]; then
    for f in "$local_dir"/node/pids/*; do
      [[ -f $f ]] && group_alive "${f##*/}" && n=$((n + 1))
    done
  fi
  realnode_status
  echo "pod process groups alive: $n"
  if control_plane_healthy; then
    echo "API server: https://127.0.0.1:$APISERVER_PORT (readyz ok); KUBECONFIG=$local_dir/kubeconfig"
    if bin_dir=$(cat "$local_dir/bin-dir" 2>/dev/null) && node_ready; then
      echo "Node $node_name: Ready"
    else
      echo "Node $node_name: not Ready"
    fi
    if [[ ${REAL_NODE:-0} == 1 ]]; then
      if node_ready_named "$real_node_name"; then echo "Node $real_node_name: Ready (real node)"; else echo "Node $real_node_name: not Ready (real node)"; fi
    fi
  else
    echo "API server: not ready"
  fi
}

cmd_env() {
  local dir
  dir=$(cat "$local_dir/bin-dir" 2>/dev/null) || dir=$("$here/build-binaries.sh")
  # shellcheck disable=SC2016 # $PATH is for the shell that evaluates this
  printf 'export KUBECONFIG=%q; export PATH=%q:$PATH\n' "$local_dir/kubeconfig" "$dir"
}

# ---------------------------------------------------------------------------------------------------
# selftest: a second cluster in its own state directory (own ports, own node state), so it runs
# beside the main cluster without disturbing it.

cmd_selftest() {
  # ACTIVITY_SELFTEST_DIR: another directory, so two selftests (one with the real node) can run at once.
  local dir=${ACTIVITY_SELFTEST_DIR:-$repo/.local/selftest} self t0 pid victim api_port before after with_node=0 with_real=0
  [[ -z ${ACTIVITY_LOCAL_DIR:-} ]] || die "selftest uses its own state directory; unset ACTIVITY_LOCAL_DIR"
  self=$here/cluster.sh
  st() { ACTIVITY_LOCAL_DIR=$dir "$self" "$@"; }
  kc() { "$(cat "$dir/bin-dir")/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }
  fail() {
    echo "cluster: selftest FAILED: $*" >&2
    st down || true
    echo "cluster: selftest state and logs kept in $dir" >&2
    exit 1
  }
  # Every live process with an argument inside the selftest directory, or in a pod process group
  # the selftest node recorded.
  strays() {
    local p args f
    for p in /proc/[0-9]*; do
      p=${p#/proc/}
      alive "$p" || continue
      args=$(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null) || continue
      grep -qF -- "$dir/" <<<"$args" && echo "$p"
    done
    for f in "$dir"/node/pids/*; do
      [[ -f $f ]] && group_members "${f##*/}"
    done
    return 0
  }
  snapshot() { # -> "component=pid ..." of the recorded pids
    local c out=""
    for c in "${stop_order[@]}"; do
      [[ -f $dir/pids/$c.pid ]] && out+="$c=$(<"$dir/pids/$c.pid") "
    done
    echo "$out"
  }
  expect_gone() { # when pids...
    local when=$1 p
    shift
    for p in "$@"; do
      alive "$p" && fail "pid $p ($(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100)) still runs $when"
    done
    return 0
  }
  # With a node: a pod whose process must go away with the cluster. With the real node it runs
  # there (the process node is tainted) in a real container.
  run_pod() {
    ((with_node)) || return 0
    kc run selftest-sleep --image=busybox --restart=Never --command -- sleep 3600 >/dev/null ||
      fail "cannot create a pod"
    kc wait --for=condition=Ready pod/selftest-sleep --timeout=60s >/dev/null ||
      fail "pod selftest-sleep not Ready within 60s (logs: $dir/logs/)"
    if ((with_real)); then
      [[ $(kc get pod selftest-sleep -o 'jsonpath={.spec.nodeName} {.status.containerStatuses[0].containerID}') == "$real_node_name containerd://"* ]] ||
        fail "pod selftest-sleep is not in a container on $real_node_name"
    else
      [[ -n $(find "$dir/node/pids" -type f 2>/dev/null) ]] || fail "the node recorded no pod process group"
    fi
  }
  # With the real node: nothing of it may be left on the host (chains, bridge, mounts, cgroups).
  expect_host_clean() { # when
    ((with_real)) || return 0
    local left
    left=$(ACTIVITY_LOCAL_DIR=$dir "$self" leftovers) || fail "real node leftovers $1: $left"
  }

  st down >/dev/null 2>&1 || true
  rm -rf "$dir"
  # Build the node (at most) once: every `up` below then runs the same binary.
  if [[ ${ACTIVITY_NODE_BUILD:-1} != 0 && ${ACTIVITY_NODE:-} != skip ]] && node_binary_defined; then
    log "selftest: cargo build -p process-node"
    (cd "$repo" && cargo build -p process-node --bin process-node) || fail "cargo build -p process-node"
  fi
  export ACTIVITY_NODE_BUILD=0

  log "selftest 1/6: up (a second cluster in $dir)"
  t0=$SECONDS
  st up || fail "up"
  log "selftest: up took $((SECONDS - t0))s"
  [[ -f $dir/pids/process-node.pid ]] && with_node=1
  [[ -f $dir/pids/kubelet.pid ]] && with_real=1 && with_node=1
  ((with_real)) && log "selftest: with the real node ($real_node_name)"
  run_pod

  log "selftest 2/6: up again leaves the running cluster alone"
  before=$(snapshot)
  t0=$SECONDS
  st up || fail "second up"
  after=$(snapshot)
  [[ $before == "$after" ]] || fail "second up restarted processes: before [$before] after [$after]"
  log "selftest: idempotent up took $((SECONDS - t0))s"

  log "selftest 3/6: down stops every process$( ((with_node)) && echo ", pods included")"
  before=$(strays)
  [[ -n $before ]] || fail "no processes found for the selftest cluster"
  api_port=$(sed -n 's/^APISERVER_PORT=//p' "$dir/cluster.env")
  st down || fail "down"
  # shellcheck disable=SC2086 # word splitting of the pid list is intended
  expect_gone "after down" $before
  after=$(strays)
  [[ -z $after ]] || fail "processes left after down: $after"
  port_free "$api_port" || fail "port $api_port still listening after down"
  expect_host_clean "after down"
  log "selftest: all $(wc -w <<<"$before") processes gone; API port $api_port closed"

  log "selftest 4/6: down again is a no-op"
  st down || fail "second down"

  log "selftest 5/6: up after down"
  t0=$SECONDS
  st up || fail "up after down"
  log "selftest: up after down took $((SECONDS - t0))s"
  run_pod

  victim=kube-scheduler
  ((with_node)) && victim=process-node
  # containerd killed leaves its shims and containers running: the recovering up must clear them.
  ((with_real)) && victim=containerd
  log "selftest 6/6: a killed run (SIGKILL to $victim) is cleaned up and restarted by up"
  pid=$(<"$dir/pids/$victim.pid")
  before=$(strays)
  # A dead real node is restarted alone (the control plane stays): its processes must be replaced.
  ((with_real)) && before=$(for p in $before; do grep -qF -- "$dir/realnode/" "/proc/$p/cmdline" 2>/dev/null && echo "$p"; done)
  kill -KILL "$pid"
  ACTIVITY_LOCAL_DIR=$dir "$self" running && fail "'running' reports a healthy cluster with $victim killed"
  t0=$SECONDS
  st up || fail "up after a killed component"
  log "selftest: recovering up took $((SECONDS - t0))s"
  # shellcheck disable=SC2086 # word splitting of the pid list is intended
  expect_gone "after the recovering up" $before
  ACTIVITY_LOCAL_DIR=$dir "$self" running || fail "not healthy after the recovering up"
  st down || fail "final down"
  after=$(strays)
  [[ -z $after ]] || fail "processes left after the final down: $after"
  expect_host_clean "after the final down"
  rm -rf "$dir"
  log "selftest: ok"
}

cmd_running() {
  local comp
  control_plane_healthy || return 1
  for comp in "${stop_order[@]}"; do
    if recorded_pid "$comp" >/dev/null && ! component_running "$comp" >/dev/null; then
      return 1
    fi
  done
}

cmd_images() {
  load_env && bin_dir=$(cat "$local_dir/bin-dir") || die "the cluster in $local_dir is not running"
  realnode_refresh_images
}

# Exit 0 when this machine can run the real node and it is wanted (ACTIVITY_REAL_NODE is not 0);
# otherwise one line saying why not, exit 1.
cmd_realnode_check() {
  local why
  realnode_wanted || { echo "ACTIVITY_REAL_NODE=0"; return 1; }
  get_bin_dir
  why=$(realnode_unsupported)
  [[ -z $why ]] || { echo "$why"; return 1; }
}

cmd_registry() {
  load_env && component_running registry >/dev/null || return 1
  echo "127.0.0.1:$REGISTRY_PORT"
}

usage() {
  sed -n '2,35p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  running) cmd_running ;;
  env) cmd_env ;;
  registry) cmd_registry ;;
  images) cmd_images ;;
  realnode-check) cmd_realnode_check ;;
  leftovers) # what the real node left on the host; exit 1 when anything (used by selftest)
    left=$(realnode_leftovers)
    [[ -z $left ]] || { echo "$left"; exit 1; }
    ;;
  selftest) cmd_selftest ;;
  *) usage ;;
esac
