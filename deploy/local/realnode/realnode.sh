# shellcheck shell=bash
# The real node of the local cluster, sourced by deploy/local/cluster.sh (its functions and variables:
# log, die, start_component, stop_component, wait_until, local_dir, pki, bin_dir, …).
#
# A kubelet built from the pinned kubernetes module, Debian's containerd + runc + CNI plugins (bridge,
# host-local), kube-proxy (iptables mode) and a loopback OCI registry (Debian's docker-registry) that
# containerd uses as the mirror of ghcr.io, docker.io and the few other registries named below.
# Everything it can keep under $rn ($local_dir/realnode) is kept there; what the kubelet, containerd
# and the CNI plugins put on the host anyway is recorded before `up` changes it and undone by `down`
# (realnode_cleanup_host): iptables chains, the bridge, mounts, cgroups, netns entries, /run/containerd,
# /var/lib/cni, /var/log/containers, the sysctls the kubelet and the bridge plugin set.
#
# One real node per machine (the bridge, the cgroup root and the iptables chains are host-wide); the
# bridge carries the owning state directory as its alias, so a second `up` elsewhere refuses.

rn=$local_dir/realnode
real_node_name=real-node
rn_bridge=actbr0
rn_pod_cidr=10.244.0.0/24
rn_gateway=10.244.0.1
rn_cgroup=activity-realnode
# The containerd CRI namespace the kubelet's containers live in.
rn_ns=k8s.io
# Registries whose names containerd resolves to the loopback registry (no other address is contacted).
rn_mirrored=(ghcr.io docker.io registry.k8s.io quay.io gcr.io registry.invalid activity.local)
rn_sandbox_image=activity.local/pause:1
# Sysctls that the kubelet (setupKernelTunables), the bridge plugin (isGateway) or kube-proxy may set.
rn_sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.route_localnet)
# Host paths the kubelet, containerd or the CNI library use whatever the configuration says.
rn_host_paths=(/run/containerd /run/netns /var/lib/cni /var/log/containers /var/log/pods)

# On by default; ACTIVITY_REAL_NODE=0 runs the process node alone.
realnode_wanted() { [[ ${ACTIVITY_REAL_NODE:-1} != 0 ]]; }

# Empty when this machine can run the real node; otherwise one line saying why not.
realnode_unsupported() {
  local t
  [[ $(id -u) == 0 ]] || { echo "not root (the kubelet and containerd need root)"; return; }
  [[ -d /sys/fs/cgroup/memory || -f /sys/fs/cgroup/cgroup.controllers ]] || { echo "no memory cgroup controller under /sys/fs/cgroup"; return; }
  for t in containerd containerd-shim-runc-v2 ctr runc docker-registry skopeo iptables ip buildah; do
    command -v "$t" >/dev/null || { echo "$t is missing (Debian: apt-get install containerd runc docker-registry skopeo buildah iptables iproute2)"; return; }
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
    { echo "the CNI plugins are missing (Debian: apt-get install containernetworking-plugins)"; return; }
  [[ -x $bin_dir/kubelet && -x $bin_dir/kube-proxy ]] || { echo "$bin_dir has no kubelet/kube-proxy"; return; }
  if ip link show "$rn_bridge" >/dev/null 2>&1; then
    local owner
    owner=$(ip -o link show "$rn_bridge" | sed -n 's/.* alias \(.*\)$/\1/p')
    [[ $owner == "$local_dir" ]] || { echo "another real node runs on this machine (bridge $rn_bridge, state ${owner:-unknown}); stop it first: ACTIVITY_LOCAL_DIR=${owner:-…} $0 down"; return; }
  fi
}

realnode_ports() { echo REGISTRY_PORT KUBELET_PORT KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT; }

# Extra kube-apiserver flags: pods reach it as the `kubernetes` Service (10.0.0.1:443), which kube-proxy
# sends to the bridge address; Endpoints may not name loopback, hence the bridge address and the
# wildcard bind (the chain ACTIVITY-REALNODE-IN drops the port on every other interface). The kubelet
# is dialed at its InternalIP (the bridge address): its node name does not resolve on the host.
realnode_apiserver_flags() {
  echo --bind-address=0.0.0.0 "--advertise-address=$rn_gateway" --endpoint-reconciler-type=lease \
    --kubelet-preferred-address-types=InternalIP,Hostname
}

realnode_pki() {
  sign_cert realnode "/O=system:nodes/CN=system:node:$real_node_name" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth,serverAuth\nsubjectAltName=IP:$rn_gateway,IP:127.0.0.1,DNS:$real_node_name"
  sign_cert kube-proxy "/CN=system:kube-proxy" 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth'
}

# ---------------------------------------------------------------------------------------------------
# Configuration files

realnode_write_configs() {
  local r
  mkdir -p "$rn"/{containerd,certs.d,cni/net.d,cni/ipam,kubelet,pod-logs,registry-data,runc}
  cat >"$rn/registry.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $rn/registry-data}
  delete: {enabled: true}
http: {addr: "127.0.0.1:$REGISTRY_PORT"}
EOF
  # One hosts.toml per mirrored registry: the loopback registry is both its mirror and its server, so
  # on a miss containerd never falls back to the real registry (containerd 1.6 rejects a file
  # without a [host] table).
  for r in "${rn_mirrored[@]}"; do
    mkdir -p "$rn/certs.d/$r"
    printf 'server = "http://127.0.0.1:%s"\n\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve"]\n' \
      "$REGISTRY_PORT" "$REGISTRY_PORT" >"$rn/certs.d/$r/hosts.toml"
  done
  cat >"$rn/containerd.toml" <<EOF
version = 2
root = "$rn/containerd/root"
state = "$rn/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$rn/containerd.sock"
[ttrpc]
  address = "$rn/containerd.ttrpc.sock"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "$rn/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$rn_sandbox_image"
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower a container's oom_score_adj below its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$rn/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$rn/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$rn/certs.d"
EOF
  # No masquerade: pod traffic never leaves the machine (ACTIVITY-REALNODE-FWD drops it otherwise).
  cat >"$rn/cni/net.d/10-activity.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "activity-local",
  "plugins": [
    {
      "type": "bridge", "bridge": "$rn_bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$rn/cni/ipam",
        "ranges": [[{"subnet": "$rn_pod_cidr", "gateway": "$rn_gateway"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  # Pods get no DNS server: nothing here serves cluster DNS, and no lookup may leave the machine.
  echo "# the local cluster has no DNS" >"$rn/resolv.conf"
  cat >"$rn/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $rn_gateway
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/realnode.crt
tlsPrivateKeyFile: $pki/realnode.key
containerRuntimeEndpoint: unix://$rn/containerd.sock
# cgroup v1 here (hybrid layout), no systemd as PID 1.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$rn_cgroup
cgroupsPerQOS: true
failSwapOn: false
podLogsDir: $rn/pod-logs
resolvConf: $rn/resolv.conf
clusterDomain: cluster.local
registerNode: true
serializeImagePulls: false
# Images come from the loopback registry and are small; keep them (no GC while the node lives).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%"}
maxPods: 110
EOF
  cat >"$rn/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $rn/kube-proxy.kubeconfig}
hostnameOverride: $real_node_name
mode: iptables
clusterCIDR: $rn_pod_cidr
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: ["$rn_gateway/32"]
# No route_localnet and no conntrack sysctls: nothing on the host beyond its own chains.
iptables: {localhostNodePorts: false, masqueradeAll: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  write_kubeconfig "$rn/kubelet.kubeconfig" "system:node:$real_node_name" realnode
  write_kubeconfig "$rn/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
}

# ---------------------------------------------------------------------------------------------------
# Host changes: recorded before, undone after

realnode_record_host() {
  local s p
  [[ -f $rn/host.env ]] && return 0 # a run that died: keep what the first one recorded
  mkdir -p "$rn"
  {
    for s in "${rn_sysctls[@]}"; do echo "sysctl $s $(sysctl -n "$s" 2>/dev/null || echo -)"; done
    for p in "${rn_host_paths[@]}"; do [[ -e $p ]] && echo "path $p"; done
    for p in /run/netns/*; do [[ -e $p ]] && echo "netns $p"; done
    ip link show "$rn_bridge" >/dev/null 2>&1 && echo "bridge $rn_bridge"
  } >"$rn/host.env.tmp"
  mv "$rn/host.env.tmp" "$rn/host.env"
}

# iptables and ip6tables: every KUBE-* chain (the kubelet's and kube-proxy's; only one real node runs
# on a machine) and our own ACTIVITY-REALNODE-* chains, with the rules that jump to them.
realnode_chains() { # -> "tool table chain" lines that exist now
  local ipt table
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$ipt" -w -t "$table" -S 2>/dev/null | awk -v t="$ipt $table" '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^ACTIVITY-REALNODE/) {print t, $2}'
    done
  done
}

realnode_remove_chains() {
  local ipt table chain rule
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle raw; do
      # The jumps first (a chain that is referenced cannot be deleted).
      while read -r rule; do
        [[ -n $rule ]] || continue
        eval "\"$ipt\" -w -t $table ${rule/-A /-D }" 2>/dev/null || true
      done < <("$ipt" -w -t "$table" -S 2>/dev/null | grep -E '^-A .* -j (KUBE-|ACTIVITY-REALNODE)' || true)
      for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^ACTIVITY-REALNODE/) {print $2}'); do
        "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^ACTIVITY-REALNODE/) {print $2}'); do
        "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || warn "could not delete $ipt -t $table chain $chain"
      done
    done
  done
}

realnode_mounts() { # -> mount points of ours, deepest first
  awk '{print $5}' /proc/self/mountinfo | sed 's/\\040/ /g' |
    grep -E "^($rn/|/run/containerd/|/run/netns/cni-)" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2- || true
}

realnode_cgroup_dirs() { # -> our cgroup roots that exist, one per hierarchy
  local d
  for d in /sys/fs/cgroup/*/"$rn_cgroup" /sys/fs/cgroup/"$rn_cgroup"; do
    [[ -d $d ]] && echo "$d"
  done
  return 0
}

realnode_cgroup_procs() { # -> pids in our cgroup trees
  local d
  for d in $(realnode_cgroup_dirs); do
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

realnode_cleanup_host() {
  local pids p m d line kind value recorded_netns="" recorded_paths="" deadline
  # Container processes that outlived their shims (killed with containerd): everything in our cgroups.
  pids=$(realnode_cgroup_procs)
  if [[ -n $pids ]]; then
    log "real node: killing $(wc -w <<<"$pids") process(es) left in the cgroup /$rn_cgroup"
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $pids 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while [[ -n $(realnode_cgroup_procs) ]] && ((SECONDS < deadline)); do sleep 0.2; done
  fi
  # Shims whose containerd is gone (they name our socket in their arguments).
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p != "$$" ]] && alive "$p" && grep -qF -- "$rn/" "/proc/$p/cmdline" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  done
  realnode_remove_chains
  while read -r m; do
    [[ -n $m ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "could not unmount $m"
  done < <(realnode_mounts)
  if [[ -f $rn/host.env ]]; then
    while read -r kind value line; do
      case $kind in
        netns) recorded_netns+=" $value " ;;
        path) recorded_paths+=" $value " ;;
      esac
    done <"$rn/host.env"
  fi
  for p in /run/netns/cni-*; do
    [[ -f $rn/host.env && -e $p && $recorded_netns != *" $p "* ]] || continue
    umount "$p" 2>/dev/null || true
    rm -f "$p"
  done
  ip link show "$rn_bridge" >/dev/null 2>&1 && { ip link delete "$rn_bridge" || warn "could not delete the bridge $rn_bridge"; }
  # The cgroup trees, leaves first (a cgroup with children or processes cannot be removed).
  for d in $(realnode_cgroup_dirs); do
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d $d ]] && warn "cgroup $d could not be removed: $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')"
  done
  # The kubelet's links into our pod logs directory; the host paths that were not there before.
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$rn/*" -delete 2>/dev/null || true
  fi
  # Without the record (never started here) no host path is known to be ours.
  for p in "${rn_host_paths[@]}"; do
    [[ -f $rn/host.env && -e $p && $recorded_paths != *" $p "* ]] || continue
    if [[ $p == /run/netns || $p == /var/log/containers || $p == /var/log/pods ]]; then
      rmdir "$p" 2>/dev/null || warn "$p is not empty; left in place"
    else
      rm -rf "$p"
    fi
  done
  if [[ -f $rn/host.env ]]; then
    while read -r kind value line; do
      [[ $kind == sysctl && $line != - ]] || continue
      [[ $(sysctl -n "$value" 2>/dev/null) == "$line" ]] || sysctl -qw "$value=$line" >/dev/null 2>&1 || warn "could not restore $value=$line"
    done <"$rn/host.env"
    rm -f "$rn/host.env"
  fi
  return 0
}

# What `down` must not leave behind; one line per leftover (empty when clean). The selftest checks it.
realnode_leftovers() {
  local p
  realnode_chains | sed 's/^/iptables chain: /'
  ip link show "$rn_bridge" >/dev/null 2>&1 && echo "bridge: $rn_bridge"
  realnode_mounts | sed 's/^/mount: /'
  realnode_cgroup_dirs | sed 's/^/cgroup: /'
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    alive "$p" || continue
    grep -qF -- "$rn/" "/proc/$p/cmdline" 2>/dev/null && echo "process: $p $(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-100)"
  done
  return 0
}

# ---------------------------------------------------------------------------------------------------
# Start and stop

realnode_running() { # all four components up and Node Ready
  local c
  for c in registry containerd kubelet kube-proxy; do component_running "$c" >/dev/null || return 1; done
  node_ready_named "$real_node_name"
}

node_ready_named() {
  local status
  status=$("$bin_dir/kubectl" --kubeconfig "$local_dir/kubeconfig" get node "$1" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || return 1
  [[ $status == True ]]
}

# start_component (which waits until the child has exec'd), failing at once when it did not start.
realnode_launch() { # component command...
  local comp=$1
  start_component "$@"
  component_running "$comp" >/dev/null || { log_tail "$comp"; die "$comp did not start; its log: $logs/$comp.log"; }
}

realnode_ctr() { ctr --address "$rn/containerd.sock" --namespace "$rn_ns" "$@"; }

realnode_cgroup_setup() {
  local c d parent
  for c in /sys/fs/cgroup/*; do
    [[ -d $c && -f $c/cgroup.procs ]] || continue
    d=$c/$rn_cgroup
    mkdir -p "$d"
    # A new v1 cpuset has no cpus and no memory nodes: inherit the parent's, or nothing can run there.
    if [[ -f $d/cpuset.cpus && -z $(<"$d/cpuset.cpus") ]]; then
      parent=$c
      cat "$parent/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$parent/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
  # Pure cgroup v2: one hierarchy, the kubelet creates its root itself.
  [[ -f /sys/fs/cgroup/cgroup.controllers ]] && mkdir -p "/sys/fs/cgroup/$rn_cgroup"
  return 0
}

realnode_push_images() {
  local images
  images=$("$here/images.sh" dir)
  if [[ ! -f $images/version ]]; then
    if [[ ${ACTIVITY_NODE_BUILD:-1} == 0 ]]; then
      warn "real node: no images built yet ($images); run 'make images' (pods of the project's images will fail to pull)"
      return 0
    fi
    log "real node: building the images (deploy/local/images.sh build)"
    "$here/images.sh" build >"$logs/images-build.log" 2>&1 || { tail -n 20 "$logs/images-build.log" >&2; die "images.sh build failed; its log: $logs/images-build.log"; }
  fi
  "$here/images.sh" push "127.0.0.1:$REGISTRY_PORT" 2>"$logs/images-push.log" || { cat "$logs/images-push.log" >&2; die "pushing the images to the loopback registry failed"; }
}

# `cluster.sh images`: pushes the images built last (deploy/local/images.sh build) to the running
# registry and drops the node's copies of the project's images, so the next pod pulls the new build
# (containerd keeps a pulled tag; the kubelet pulls a tag other than :latest only when it is missing).
realnode_refresh_images() {
  local ref
  component_running registry >/dev/null || die "no registry runs (no real node in $local_dir)"
  realnode_push_images
  component_running containerd >/dev/null || return 0
  for ref in $(realnode_ctr images ls -q 2>/dev/null | grep -E '^(ghcr\.io/heartbeat-dev/|docker\.io/library/busybox:)' || true); do
    realnode_ctr images rm "$ref" >/dev/null 2>&1 || warn "could not drop the node's copy of $ref"
  done
}

# Starts the real node when this cluster was set up for one (REAL_NODE=1 in cluster.env: wanted and
# supported when the control plane started; cmd_up said why not otherwise).
realnode_start() {
  local started=$SECONDS deadline why
  [[ ${REAL_NODE:-0} == 1 ]] || return 0
  why=$(realnode_unsupported)
  if [[ -n $why ]]; then
    log "real node: not started: $why; running with the process node alone"
    return 0
  fi
  if realnode_running; then
    return 0
  fi
  # Leftovers of a run that died, then a fresh start.
  realnode_stop
  rm -rf "$rn"
  mkdir -p "$rn"
  realnode_record_host
  realnode_write_configs
  deadline=$((started + timeout))
  log "real node: starting the registry (127.0.0.1:$REGISTRY_PORT), containerd, the kubelet and kube-proxy"
  realnode_launch registry docker-registry serve "$rn/registry.yml"
  registry_up() { curl -fsS --max-time 2 "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null 2>&1; }
  wait_until "$deadline" registry_up registry || { log_tail registry; die "the registry did not answer within ${timeout}s"; }
  realnode_push_images

  # The bridge before the kubelet: its address is the node's InternalIP and where the kubelet serves.
  ip link add "$rn_bridge" type bridge || die "cannot create the bridge $rn_bridge"
  ip link set "$rn_bridge" alias "$local_dir"
  ip addr add "$rn_gateway/${rn_pod_cidr#*/}" dev "$rn_bridge"
  ip link set "$rn_bridge" up
  # The API server's port only on loopback and the bridge; pod traffic stays on the bridge.
  iptables -w -N ACTIVITY-REALNODE-IN
  iptables -w -A ACTIVITY-REALNODE-IN -i lo -j RETURN
  iptables -w -A ACTIVITY-REALNODE-IN -i "$rn_bridge" -j RETURN
  iptables -w -A ACTIVITY-REALNODE-IN -p tcp --dport "$APISERVER_PORT" -j DROP
  iptables -w -A ACTIVITY-REALNODE-IN -p tcp --dport "$KUBELET_PORT" -j DROP
  iptables -w -I INPUT 1 -j ACTIVITY-REALNODE-IN
  iptables -w -N ACTIVITY-REALNODE-FWD
  iptables -w -A ACTIVITY-REALNODE-FWD -s "$rn_pod_cidr" ! -d "$rn_pod_cidr" -j DROP
  iptables -w -A ACTIVITY-REALNODE-FWD -d "$rn_pod_cidr" ! -s "$rn_pod_cidr" -j DROP
  iptables -w -I FORWARD 1 -j ACTIVITY-REALNODE-FWD
  realnode_cgroup_setup

  realnode_launch containerd containerd --config "$rn/containerd.toml"
  containerd_up() { realnode_ctr version >/dev/null 2>&1; }
  wait_until "$deadline" containerd_up containerd registry || { log_tail containerd; die "containerd did not answer within ${timeout}s"; }

  realnode_launch kubelet "$bin_dir/kubelet" "--config=$rn/kubelet.yaml" "--kubeconfig=$rn/kubelet.kubeconfig" \
    "--root-dir=$rn/kubelet" "--hostname-override=$real_node_name" "--node-ip=$rn_gateway" --v=1
  real_ready() { node_ready_named "$real_node_name"; }
  wait_until "$deadline" real_ready containerd kubelet registry ||
    { log_tail kubelet; die "Node $real_node_name not Ready within ${timeout}s; kubelet log: $logs/kubelet.log"; }
  realnode_restore_tunables
  realnode_launch kube-proxy "$bin_dir/kube-proxy" "--config=$rn/kube-proxy.yaml"
  proxy_up() { [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" 2>/dev/null) == *'"lastUpdated"'* ]] && realnode_service_programmed; }
  wait_until "$deadline" proxy_up kube-proxy kubelet containerd registry ||
    { log_tail kube-proxy; die "kube-proxy did not program the kubernetes Service within ${timeout}s; its log: $logs/kube-proxy.log"; }
  log "real node ready in $((SECONDS - started))s (Node $real_node_name, containerd $(containerd --version | awk '{print $3}'), pods on $rn_bridge $rn_pod_cidr)"
}

# The kubelet sets vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1 (and the keys
# quotas) once at start; on a shared machine the host's own values are put back right away (a kernel
# oops must not panic everyone's VM). ip_forward stays: the bridge plugin sets it on every pod.
realnode_restore_tunables() {
  local kind name value
  while read -r kind name value; do
    [[ $kind == sysctl && $name != net.* && $value != - ]] || continue
    [[ $(sysctl -n "$name" 2>/dev/null) == "$value" ]] || sysctl -qw "$name=$value" >/dev/null 2>&1 || warn "could not restore $name=$value"
  done <"$rn/host.env"
}

# kube-proxy has written the rule that sends the `kubernetes` Service to the API server.
realnode_service_programmed() { iptables -w -t nat -S KUBE-SERVICES 2>/dev/null | grep -q 'default/kubernetes:https'; }

realnode_stop() {
  local ids id any=0 c
  for c in kubelet kube-proxy containerd registry; do recorded_pid "$c" >/dev/null && any=1; done
  [[ -d $rn ]] || ((any)) || return 0
  # The kubelet first, so nothing restarts the containers stopped next.
  stop_component kubelet 20
  if component_running containerd >/dev/null; then
    ids=$(realnode_ctr tasks ls -q 2>/dev/null || true)
    for id in $ids; do realnode_ctr tasks kill --all --signal SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $ids; do realnode_ctr tasks delete --force "$id" >/dev/null 2>&1 || true; done
  fi
  stop_component kube-proxy 10
  stop_component containerd 20
  stop_component registry 10
  # kube-proxy's own cleanup of its rules (the chains are removed below either way).
  if [[ -x ${bin_dir:-}/kube-proxy ]] && iptables -w -t nat -S 2>/dev/null | grep -q '^-N KUBE-SERVICES'; then
    timeout 30 "$bin_dir/kube-proxy" --cleanup >"$logs/kube-proxy-cleanup.log" 2>&1 || true
  fi
  realnode_cleanup_host
}

realnode_taint_process_node() {
  # Only pods that tolerate it (the benchmarks') land on the process node while a real node runs.
  "$bin_dir/kubectl" --kubeconfig "$local_dir/kubeconfig" taint node "$node_name" \
    heartbeat.dev/process-node=true:NoSchedule --overwrite >/dev/null ||
    die "cannot taint Node $node_name"
}

realnode_status() {
  local c pid
  for c in registry containerd kubelet kube-proxy; do
    if pid=$(component_running "$c"); then
      printf '%-24s %-8s %-8s %-7s %s\n' "$c" "$pid" running "$(realnode_port_of "$c")" "$(rss_of "$pid")"
    elif pid=$(recorded_pid "$c"); then
      printf '%-24s %-8s %-8s\n' "$c" "$pid" dead
    fi
  done
}

realnode_port_of() {
  case $1 in
    registry) echo "${REGISTRY_PORT:--}" ;;
    kubelet) echo "${KUBELET_PORT:--}" ;;
    kube-proxy) echo "${PROXY_HEALTHZ_PORT:--}" ;;
    *) echo - ;;
  esac
}
