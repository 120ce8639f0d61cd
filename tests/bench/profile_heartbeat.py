#!/usr/bin/env python3
"""Drive a steady heartbeat (or Lease renewal) load and take a kube-apiserver CPU profile while it runs.

Needs an API server started with `--profiling=true`. cluster.sh starts it with `--profiling=false`;
`restart-apiserver` SIGKILLs the recorded kube-apiserver (by its pid file only) and starts the same
argv, environment and directory with `--profiling=true` under a new session, appending to its log and
recording the new pid, so `cluster.sh down` stops it (as tests/tests/chaos.rs `restart_component`).

    restart: python3 tests/bench/profile_heartbeat.py restart-apiserver --local-dir /tmp/prof-cluster
    setup:   python3 tests/bench/profile_heartbeat.py setup --kubeconfig K --ns prof --count 200 [--worker-token]
    run:     python3 tests/bench/profile_heartbeat.py run --kubeconfig K --ns prof --kind heartbeat \\
                 --rate 60 --secs 40 --profile /tmp/prof-x/hb.pprof --apiserver-pid P --etcd-pid E [--watchers 1]
    analyse: python3 tests/bench/profile_heartbeat.py analyse --binary .../kube-apiserver --requests N a.pprof

`setup` creates `count` Activities (a one-container template, status Running with attempt 1 and a
podName) and as many coordination.k8s.io Leases. With `--worker-token` it also creates, per the chart's
worker RBAC, a service account, a Role for activities/status, one Pod (never scheduled: it selects a
node that does not exist) named as every Activity's status.podName, and writes a token bound to that
Pod to <ns>.token (a pod-bound token, so the chart's worker status policy matches it).

With `--small-crd` it also installs a Lease-sized status-only custom resource (heartbeats.bench.heartbeat.dev,
no CEL) with one object per Activity, for `--kind small`: the heartbeat's patch of a side object.

`run` sends heartbeats (JSON patch of the status: test attempt, replace lastHeartbeatTime, add
heartbeatDetails; the SDK's patch) or Lease renewals (merge patch of spec.renewTime) at a fixed rate
from a few connections, round-robin over the objects, and for the middle `--profile-secs` of the run
fetches /debug/pprof/profile with the admin credentials. It prints the rate achieved, API server and
etcd CPU per request over the profile window, and PATCH latency percentiles. `--allocs` also takes the window's allocations profile (what drives GC). `--watchers N` keeps N
`watch` requests on all Activities open (each a `kubectl get act -A -w -o json`-like stream read by a
thread) during the run.

`analyse` sorts every sample of the profile into one phase of the request (by the frames on its stack,
the most specific phase first) and prints each phase's share and ms of CPU per request.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import subprocess
import threading
import time

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def api_client(kubeconfig: str, token: str | None, pool: int):
    from kubernetes import client, config

    config.load_kube_config(kubeconfig)
    cfg = client.Configuration.get_default_copy()
    if token:
        cfg.cert_file = cfg.key_file = None
        cfg.api_key = {"authorization": "Bearer " + token}
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


def call(api, method: str, path: str, body=None, content_type="application/json", query=None, stream=False):
    method, url, headers, data, _ = api.param_serialize(
        method,
        path,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        query_params=query or [],
        auth_settings=["BearerToken"],
    )
    r = api.call_api(method, url, header_params=headers, body=data)  # the body is not read yet
    if stream:
        return r.response
    r.read()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {r.data[:400]!r}")
    return r


def template() -> dict:
    return {
        "metadata": {"labels": {"app": "bench"}},
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "image": "ghcr.io/heartbeat-dev/activity-worker:0.1.0",
                    "command": ["activity-worker", "exec", "--", "sh", "-c", "sleep 3600"],
                    "env": [{"name": "MODE", "value": "bench"}, {"name": "ITEMS", "value": "1000"}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                }
            ]
        },
    }


POD = "bench-worker"


def setup(args) -> None:
    api = api_client(args.kubeconfig, None, 16)
    ns = args.ns
    try:
        call(api, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    except RuntimeError as e:
        if ": 409 " not in str(e):
            raise
    acts = f"/apis/heartbeat.dev/v1alpha1/namespaces/{ns}/activities"
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
    for i in range(args.count):
        name = f"a{i}"
        call(api, "POST", acts, {
            "apiVersion": "heartbeat.dev/v1alpha1",
            "kind": "Activity",
            "metadata": {"name": name},
            "spec": {"startToCloseTimeout": "1h", "heartbeatTimeout": "5m", "template": template()},
        })
        status = {"status": {"phase": "Running", "attempt": 1, "attemptStartedTime": now(), "podName": POD}}
        call(api, "PATCH", f"{acts}/{name}/status", status, "application/merge-patch+json")
        call(api, "POST", leases, {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name},
            "spec": {"holderIdentity": f"{name}-worker", "leaseDurationSeconds": 40, "renewTime": now()},
        })
    if args.small_crd:
        setup_small(api, ns, args.count)
    if args.worker_token:
        sa = "bench-worker"
        call(api, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": sa}})
        call(api, "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", {
            "metadata": {"name": sa},
            "rules": [
                {"apiGroups": ["heartbeat.dev"], "resources": ["activities"], "verbs": ["get"]},
                {"apiGroups": ["heartbeat.dev"], "resources": ["activities/status"], "verbs": ["get", "patch"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "patch", "update"]},
                {"apiGroups": [SMALL_GROUP], "resources": ["heartbeats/status"], "verbs": ["get", "patch"]},
            ],
        })
        call(api, "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
        })
        r = call(api, "POST", f"/api/v1/namespaces/{ns}/pods", {
            "metadata": {"name": POD},
            "spec": {
                "serviceAccountName": sa,
                "nodeSelector": {"kubernetes.io/hostname": "no-such-node"},
                "containers": [{"name": "w", "image": "busybox"}],
            },
        })
        uid = json.loads(r.data)["metadata"]["uid"]
        r = call(api, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400, "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": POD, "uid": uid}},
        })
        with open(f"{args.out_dir}/{ns}.token", "w") as f:
            f.write(json.loads(r.data)["status"]["token"])
    print(f"setup: {args.count} activities and leases in {ns}")


SMALL_GROUP = "bench.heartbeat.dev"


def setup_small(api, ns: str, count: int) -> None:
    """A Lease-sized custom resource: status only, no CEL, the heartbeat's fields (a side object)."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"heartbeats.{SMALL_GROUP}"},
        "spec": {
            "group": SMALL_GROUP,
            "names": {"kind": "Heartbeat", "plural": "heartbeats", "singular": "heartbeat"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"activity": {"type": "string"}}},
                    "status": {"type": "object", "properties": {
                        "attempt": {"type": "integer"},
                        "lastHeartbeatTime": {"type": "string", "format": "date-time"},
                        "heartbeatDetails": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    }},
                }}},
            }],
        },
    }
    try:
        call(api, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    except RuntimeError as e:
        if ": 409 " not in str(e):
            raise
    time.sleep(5)
    base = f"/apis/{SMALL_GROUP}/v1alpha1/namespaces/{ns}/heartbeats"
    for i in range(count):
        name = f"a{i}"
        call(api, "POST", base, {"apiVersion": f"{SMALL_GROUP}/v1alpha1", "kind": "Heartbeat",
                                 "metadata": {"name": name}, "spec": {"activity": name}})
        call(api, "PATCH", f"{base}/{name}/status", {"status": {"attempt": 1, "lastHeartbeatTime": now()}},
             "application/merge-patch+json")


def watcher(api, stop: threading.Event, seen: list[int], idx: int) -> None:
    while not stop.is_set():
        r = call(api, "GET", "/apis/heartbeat.dev/v1alpha1/activities", query=[("watch", "true"),
                 ("allowWatchBookmarks", "true"), ("timeoutSeconds", "600")], stream=True)
        for line in r.stream(65536):
            seen[idx] += line.count(b"\n")
            if stop.is_set():
                break
        r.release_conn()


def run(args) -> None:
    token = open(args.token_file).read().strip() if args.token_file else None
    api = api_client(args.kubeconfig, token, args.connections * 2)
    admin = api_client(args.kubeconfig, None, 4 + args.watchers)
    ns = args.ns
    names = [f"a{i}" for i in range(args.count)]
    if args.kind in ("heartbeat", "small"):
        base = (f"/apis/heartbeat.dev/v1alpha1/namespaces/{ns}/activities" if args.kind == "heartbeat"
                else f"/apis/{SMALL_GROUP}/v1alpha1/namespaces/{ns}/heartbeats")

        def one(name: str, i: int) -> None:
            patch = [
                {"op": "test", "path": "/status/attempt", "value": 1},
                {"op": "replace", "path": "/status/lastHeartbeatTime", "value": now()},
                {"op": "add", "path": "/status/heartbeatDetails", "value": {"progress": f"{i}/1000", "offset": i}},
            ]
            call(api, "PATCH", f"{base}/{name}/status", patch, "application/json-patch+json")
    else:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"

        def one(name: str, i: int) -> None:
            call(api, "PATCH", f"{base}/{name}", {"spec": {"renewTime": now()}}, "application/merge-patch+json")

    stop_watch = threading.Event()
    seen = [0] * args.watchers
    wthreads = [threading.Thread(target=watcher, args=(admin, stop_watch, seen, k), daemon=True) for k in range(args.watchers)]
    for t in wthreads:
        t.start()

    start = time.monotonic() + 0.5
    end = start + args.secs
    ticket = [0]
    lock = threading.Lock()
    lat: list[tuple[float, float]] = []  # (send time, seconds)
    errors = [0]

    def loop() -> None:
        while True:
            with lock:
                k = ticket[0]
                ticket[0] += 1
            due = start + k / args.rate
            if due >= end:
                return
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            t0 = time.monotonic()
            try:
                one(names[k % len(names)], k)
            except Exception as e:  # noqa: BLE001 - count and go on
                errors[0] += 1
                if errors[0] < 4:
                    print("error:", e, flush=True)
            with lock:
                lat.append((t0, time.monotonic() - t0))

    threads = [threading.Thread(target=loop) for _ in range(args.connections)]
    for t in threads:
        t.start()
    # The profile window: the middle of the run.
    pw_start = start + (args.secs - args.profile_secs) / 2
    time.sleep(max(0.0, pw_start - time.monotonic()))
    pids = {"kube-apiserver": args.apiserver_pid, "etcd": args.etcd_pid}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    t_prof0 = time.monotonic()
    allocs_thread = None
    if args.allocs:
        def fetch_allocs() -> None:
            r = call(admin, "GET", "/debug/pprof/allocs", query=[("seconds", str(args.profile_secs))], stream=True)
            data = r.read()
            r.release_conn()
            with open(args.allocs, "wb") as f:
                f.write(data)

        allocs_thread = threading.Thread(target=fetch_allocs)
        allocs_thread.start()
    if args.profile:
        r = call(admin, "GET", "/debug/pprof/profile", query=[("seconds", str(args.profile_secs))], stream=True)
        data = r.read()
        r.release_conn()
        with open(args.profile, "wb") as f:
            f.write(data)
    else:
        time.sleep(args.profile_secs)
    if allocs_thread:
        allocs_thread.join()
    t_prof1 = time.monotonic()
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
    for t in threads:
        t.join()
    stop_watch.set()
    in_window = sum(1 for t0, d in lat if t_prof0 <= t0 + d <= t_prof1)
    ds = sorted(d for _, d in lat)
    q = lambda p: ds[min(len(ds) - 1, int(p * len(ds)))] * 1000  # noqa: E731
    res = {
        "kind": args.kind,
        "token": bool(token),
        "watchers": args.watchers,
        "offered_rate": args.rate,
        "done": len(lat),
        "errors": errors[0],
        "rate_in_window": in_window / (t_prof1 - t_prof0),
        "requests_in_window": in_window,
        "window_s": t_prof1 - t_prof0,
        "apiserver_ms_per_req": (cpu1["kube-apiserver"] - cpu0["kube-apiserver"]) * 1000 / max(in_window, 1),
        "etcd_ms_per_req": (cpu1["etcd"] - cpu0["etcd"]) * 1000 / max(in_window, 1),
        "apiserver_cores": (cpu1["kube-apiserver"] - cpu0["kube-apiserver"]) / (t_prof1 - t_prof0),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "watch_lines": seen,
        "profile": args.profile,
    }
    print(json.dumps(res), flush=True)
    if args.result:
        with open(args.result, "a") as f:
            f.write(json.dumps(res) + "\n")


# Phases, most specific first: a sample counts for the first phase one of whose patterns matches a
# frame of its stack (a substring of the function name).
PHASES: list[tuple[str, list[str]]] = [
    ("the profiler itself (writing a profile)", ["runtime/pprof", "net/http/pprof"]),
    ("GC (background mark/sweep)", ["runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge"]),
    ("watch cache: each etcd event decoded (any watchers or none)", ["etcd3.(*watchChan)", "cacher.(*Cacher)", "cacher.(*watchCache)",
                                                                    "tools/cache.(*Reflector)", "cacher.(*Reflector)"]),
    ("watch fan-out to watchers (encode, send)", ["cacher.(*cacheWatcher)", "handlers.serveWatch", "handlers.(*WatchServer)",
                                                  "cacher.(*cachingObject)"]),
    ("admission: ValidatingAdmissionPolicy", ["admission/plugin/policy", "admission/plugin/validatingadmissionpolicy"]),
    ("managedFields (fieldmanager, structured-merge-diff)", ["managedfields", "fieldmanager", "structured-merge-diff"]),
    ("admission: other plugins", ["apiserver/pkg/admission", "pkg/kubeapiserver/admission", "plugin/pkg/admission"]),
    ("CEL (CRD x-kubernetes-validations)", ["apiextensions-apiserver/pkg/apiserver/schema/cel", "cel-go", "apiserver/pkg/cel"]),
    ("schema validation (OpenAPI, ratcheting)", ["kube-openapi/pkg/validation", "apiextensions-apiserver/pkg/apiserver/validation",
                                                "customResourceValidator", "ratcheting"]),
    ("CRD decode coercion (ObjectMeta get/set, pruning, defaulting)", ["unstructuredSchemaCoercer", "schema/objectmeta",
                                                                      "schema/pruning", "schema/defaulting"]),
    ("JSON patch: apply, (un)marshal of the object", ["json-patch", "handlers.(*jsonPatcher)", "handlers.(*smpPatcher)",
                                                      "strategicpatch", "jsonmergepatch"]),
    ("update func: strategy, BeforeUpdate, other", ["registry.(*Store).Update.func1", "rest.BeforeUpdate", "rest.(*defaultUpdatedObjectInfo)",
                                                    "handlers.(*patcher).applyPatch"]),
    ("etcd client/storage (read, decode, encode, txn, grpc)", ["storage/etcd3", "go.etcd.io", "google.golang.org/grpc",
                                                               "storage/value", "storage/cacher"]),
    ("response encoding", ["handlers/responsewriters", "handlers.transformResponseObject", "handlers.transformObject"]),
    ("rest handler: other", ["endpoints/handlers", "registry/generic/registry", "registry/rest", "apiextensions-apiserver/pkg/apiserver.(*crdHandler)"]),
    ("authn/authz", ["apiserver/pkg/authentication", "apiserver/pkg/authorization", "plugin/pkg/auth", "pkg/kubeapiserver/authorizer",
                     "crypto/x509", "/rbac"]),
    ("other filters (APF, audit, metrics, tracing)", ["flowcontrol", "server/filters", "endpoints/filters", "audit",
                                                     "endpoints/metrics", "otelhttp", "component-base/metrics", "filterlatency"]),
    ("HTTP/TLS/network", ["net/http", "crypto/tls", "golang.org/x/net/http2", "net.(*conn)", "internal/poll", "crypto/"]),
    ("runtime only (scheduler, GC assist outside a request)", ["runtime."]),
]


def parse_traces(text: str):
    """Samples of `go tool pprof -traces`: (cpu seconds, [frames leaf first])."""
    out = []
    for block in text.split("-----------+-------------------------------------------------------")[1:]:
        # (an allocations profile heads each sample with a "bytes: <size>" label line)
        lines = [ln for ln in block.strip("\n").split("\n") if ln.strip() and not ln.strip().startswith("bytes:")]
        if not lines:
            continue
        m = re.match(r"\s*(\S+)\s+(\S+)", lines[0])
        if not m:
            continue
        val = m.group(1)
        unit = re.sub(r"^[0-9.]+", "", val)
        if val == "0":
            continue
        secs = float(val[: len(val) - len(unit)]) * {"s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "B": 1,
                                                    "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
        frames = [m.group(2)] + [ln.strip() for ln in lines[1:]]
        out.append((secs, frames))
    return out


def analyse(args) -> None:
    for path in args.profiles:
        # An allocations profile (/debug/pprof/allocs) counts bytes allocated: what drives the GC.
        extra = ["-sample_index=alloc_space"] if path.endswith(".allocs") else []
        text = subprocess.run([args.go, "tool", "pprof", "-traces", *extra, args.binary, path],
                              capture_output=True, text=True, check=True).stdout
        samples = parse_traces(text)
        total = sum(s for s, _ in samples)
        groups: dict[str, float] = collections.defaultdict(float)
        for secs, frames in samples:
            for name, pats in PHASES:
                if any(p in f for f in frames for p in pats):
                    groups[name] += secs
                    break
            else:
                groups["other"] += secs
        if args.explain:
            c: dict[str, float] = collections.defaultdict(float)
            for secs, frames in samples:
                ph = next((name for name, pats in PHASES if any(p in f for f in frames for p in pats)), "other")
                if args.explain in ph:
                    key = " < ".join([f for f in frames if not f.startswith(("runtime.", "encoding/", "sync.", "reflect."))][:4])
                    c[key] += secs
            for k, v in sorted(c.items(), key=lambda kv: -kv[1])[:25]:
                print(f"{v:6.2f}s  {k[:260]}")
        n = args.requests or 1
        # ms of CPU per request, or kB allocated per request
        unit, scale = ("kB allocated", 1e-3) if extra else ("ms CPU", 1e3)
        print(f"\n## {path}: {n} requests, {total * scale / n:.2f} {unit} per request")
        print(f"| phase | % of samples | {unit} per request |")
        print("|---|---:|---:|")
        for name, _ in PHASES + [("other", [])]:
            if groups.get(name):
                print(f"| {name} | {groups[name] * 100 / total:.1f} | {groups[name] * scale / n:.2f} |")
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"profile": path, "requests": n, "total_s": total, "groups": groups}) + "\n")


def restart_apiserver(args) -> None:
    import signal
    import socket

    d = args.local_dir
    with open(f"{d}/pids/kube-apiserver.pid") as f:
        pid = int(f.read().split()[0])
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")[:-1]
    if f"--client-ca-file={d}/pki/ca.crt".encode() not in argv:
        raise SystemExit(f"pid {pid} is not this cluster's kube-apiserver")
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    cwd = os.readlink(f"/proc/{pid}/cwd")
    argv = [b"--profiling=true" if a == b"--profiling=false" else a for a in argv]
    if b"--profiling=true" not in argv:
        argv.append(b"--profiling=true")
    os.kill(pid, signal.SIGKILL)
    # Start again only once the old one has let go of its port: a killed process's leader turns
    # zombie before its other threads have exited and its sockets are closed.
    opts = dict(a.decode().split("=", 1) for a in argv[1:] if a.startswith(b"--") and b"=" in a)
    addr = (opts.get("--bind-address", "0.0.0.0"), int(opts.get("--secure-port", "6443")))
    deadline = time.monotonic() + 30
    while True:
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{addr} still in use 30 s after SIGKILL of {pid}")
            time.sleep(0.2)
        finally:
            probe.close()
    log = open(f"{d}/logs/kube-apiserver.log", "ab")
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    with open(f"{d}/pids/kube-apiserver.pid", "w") as f:
        f.write(f"{p.pid}\n")
    print(f"kube-apiserver {pid} killed; {p.pid} started with --profiling=true")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ra = sub.add_parser("restart-apiserver")
    ra.add_argument("--local-dir", required=True, help="cluster.sh's state directory (ACTIVITY_LOCAL_DIR)")
    s = sub.add_parser("setup")
    s.add_argument("--kubeconfig", required=True)
    s.add_argument("--ns", default="prof")
    s.add_argument("--count", type=int, default=200)
    s.add_argument("--worker-token", action="store_true")
    s.add_argument("--small-crd", action="store_true", help="also a status-only custom resource per activity (kind small)")
    s.add_argument("--out-dir", default="/tmp")
    r = sub.add_parser("run")
    r.add_argument("--kubeconfig", required=True)
    r.add_argument("--ns", default="prof")
    r.add_argument("--count", type=int, default=200)
    r.add_argument("--kind", choices=["heartbeat", "lease", "small"], default="heartbeat")
    r.add_argument("--rate", type=float, default=60)
    r.add_argument("--secs", type=float, default=40)
    r.add_argument("--profile-secs", type=int, default=30)
    r.add_argument("--profile")
    r.add_argument("--allocs", help="also write the allocations (delta /debug/pprof/allocs) of the profile window here")
    r.add_argument("--connections", type=int, default=8)
    r.add_argument("--watchers", type=int, default=0)
    r.add_argument("--token-file")
    r.add_argument("--apiserver-pid", type=int, required=True)
    r.add_argument("--etcd-pid", type=int, required=True)
    r.add_argument("--result")
    a = sub.add_parser("analyse")
    a.add_argument("--binary", required=True)
    a.add_argument("--go", default="go")
    a.add_argument("--requests", type=int)
    a.add_argument("--json")
    a.add_argument("--explain", help="print the commonest leaf-most frames outside runtime/encoding of this phase (a substring)")
    a.add_argument("profiles", nargs="+")
    args = ap.parse_args()
    {"restart-apiserver": restart_apiserver, "setup": setup, "run": run, "analyse": analyse}[args.cmd](args)


if __name__ == "__main__":
    main()
