#!/usr/bin/env python3
"""API server and etcd CPU per Activity create and per heartbeat PATCH, for two CRD schemas side by side.

Installs a copy of a second CRD file under another API group (`<label>.heartbeat.dev`) beside the
cluster's own `heartbeat.dev` CRD, then alternates rounds A, B, A, B, … of the same work on each:
create activities with a one-container template, then JSON-patch their status (a heartbeat: `test`
of the attempt, `lastHeartbeatTime`, `heartbeatDetails`) from a few connections for a fixed time.
Alternating rounds in one run cancels most of the noise of a shared machine.

    python3 tests/bench/schema_cost.py --kubeconfig .local/kubeconfig \\
        --apiserver-pid $(cat .local/pids/kube-apiserver.pid) --etcd-pid $(cat .local/pids/etcd.pid) \\
        --other-crd /tmp/old-crd.yaml --label old

`--other-policy FILE` installs a copy of the ValidatingAdmissionPolicies (and bindings) in FILE for the
other group too (`helm template … --show-only templates/spec-policy.yaml`), so creates of both pay
the same admission. Prints each schema's CRD size, the min / median / max per request, and every
round's pair (the other schema's cost minus the installed one's, measured back to back).

Needs the `kubernetes` Python client (the SDK's venv has it). Uses the kubeconfig's credentials, so it
measures the CRD (schema, CEL, pruning) and policies that match any user, not the worker policy.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import statistics
import threading
import time

import yaml
from kubernetes import client, config

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


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


class Group:
    def __init__(self, api: client.ApiClient, group: str, ns: str):
        self.api, self.group, self.ns = api, group, ns
        self.base = f"/apis/{group}/v1alpha1/namespaces/{ns}/activities"

    def call(self, method: str, path: str, body: object, content_type: str = "application/json") -> None:
        method, url, headers, data, _ = self.api.param_serialize(
            method,
            path,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=data)
        response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {response.data[:300]!r}")

    def create(self, name: str) -> None:
        body = {
            "apiVersion": f"{self.group}/v1alpha1",
            "kind": "Activity",
            "metadata": {"name": name},
            "spec": {"startToCloseTimeout": "1h", "heartbeatTimeout": "5m", "template": template()},
        }
        self.call("POST", self.base, body)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        status = {"status": {"phase": "Running", "attempt": 1, "attemptStartedTime": now, "podName": f"{name}-1"}}
        self.call("PATCH", f"{self.base}/{name}/status", status, "application/merge-patch+json")

    def heartbeat(self, name: str, i: int) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        patch = [
            {"op": "test", "path": "/status/attempt", "value": 1},
            {"op": "replace", "path": "/status/lastHeartbeatTime", "value": now},
            {"op": "add", "path": "/status/heartbeatDetails", "value": {"progress": f"{i}/1000", "offset": i}},
        ]
        self.call("PATCH", f"{self.base}/{name}/status", patch, "application/json-patch+json")


def measure(pids: dict[str, int], work) -> tuple[int, dict[str, float]]:
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    n = work()
    after = {k: cpu_seconds(p) for k, p in pids.items()}
    return n, {k: (after[k] - before[k]) * 1000.0 / max(n, 1) for k in pids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--apiserver-pid", type=int, required=True)
    ap.add_argument("--etcd-pid", type=int, required=True)
    ap.add_argument("--other-crd", required=True, help="the CRD YAML to compare with the installed one")
    ap.add_argument("--other-policy", help="ValidatingAdmissionPolicy YAML to install for the other group too")
    ap.add_argument("--label", default="other", help="name of the other schema (becomes its API group prefix)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--creates", type=int, default=100, help="activities created per round")
    ap.add_argument("--patch-secs", type=float, default=20.0)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()

    config.load_kube_config(args.kubeconfig)
    api = client.ApiClient()
    api.configuration.connection_pool_maxsize = args.connections * 2
    ext = client.ApiextensionsV1Api(api)
    core = client.CoreV1Api(api)

    other_group = f"{args.label}.heartbeat.dev"
    with open(args.other_crd) as f:
        crd = next(d for d in yaml.safe_load_all(f) if d)
    crd["metadata"] = {"name": f"activities.{other_group}"}
    crd["spec"]["group"] = other_group
    try:
        ext.create_custom_resource_definition(crd)
    except client.ApiException as e:
        if e.status != 409:
            raise
    installed = api.sanitize_for_serialization(ext.read_custom_resource_definition("activities.heartbeat.dev"))
    sizes = {
        "installed": len(json.dumps(installed["spec"])),
        args.label: len(json.dumps(crd["spec"])),
    }
    policies = []
    if args.other_policy:
        admission = client.CustomObjectsApi(api)
        with open(args.other_policy) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                doc["metadata"]["name"] = f"{args.label}-{doc['metadata']['name']}"[:63]
                if doc["kind"] == "ValidatingAdmissionPolicy":
                    for rule in doc["spec"]["matchConstraints"]["resourceRules"]:
                        rule["apiGroups"] = [other_group]
                    plural = "validatingadmissionpolicies"
                else:
                    doc["spec"]["policyName"] = f"{args.label}-{doc['spec']['policyName']}"[:63]
                    plural = "validatingadmissionpolicybindings"
                admission.create_cluster_custom_object("admissionregistration.k8s.io", "v1", plural, doc)
                policies.append((plural, doc["metadata"]["name"]))
    ns = f"schema-cost-{os.getpid()}"
    core.create_namespace({"metadata": {"name": ns}})
    time.sleep(5)  # both CRDs established and served

    pids = {"kube-apiserver": args.apiserver_pid, "etcd": args.etcd_pid}
    groups = {"installed": Group(api, "heartbeat.dev", ns), args.label: Group(api, other_group, ns)}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    pool = concurrent.futures.ThreadPoolExecutor(args.connections)
    try:
        for r in range(args.rounds):
            order = list(groups.items()) if r % 2 == 0 else list(reversed(groups.items()))
            for label, g in order:
                names = [f"r{r}-{i}" for i in range(args.creates)]

                def creates(g: Group = g, names: list[str] = names) -> int:
                    list(pool.map(g.create, names))
                    return len(names)

                n, per = measure(pids, creates)
                results.setdefault((label, "create"), []).append(per)

                def patches(g: Group = g, names: list[str] = names) -> int:
                    stop = time.monotonic() + args.patch_secs
                    count = [0]
                    lock = threading.Lock()

                    def loop(k: int) -> None:
                        i = 0
                        while time.monotonic() < stop:
                            g.heartbeat(names[(k + i * args.connections) % len(names)], i)
                            i += 1
                            with lock:
                                count[0] += 1

                    list(pool.map(loop, range(args.connections)))
                    return count[0]

                n, per = measure(pids, patches)
                per["rate"] = n / args.patch_secs
                results.setdefault((label, "patch"), []).append(per)
                print(f"round {r} {label}: create and {n} heartbeat PATCHes", flush=True)
    finally:
        core.delete_namespace(ns)
        ext.delete_custom_resource_definition(f"activities.{other_group}")
        for plural, name in policies:
            client.CustomObjectsApi(api).delete_cluster_custom_object(
                "admissionregistration.k8s.io", "v1", plural, name
            )

    print("\n| schema | request | kube-apiserver ms CPU each (min / median / max) | etcd ms CPU each (median) |")
    print("|---|---|---:|---:|")
    for (label, kind), rows in sorted(results.items()):
        a = [x["kube-apiserver"] for x in rows]
        e = [x["etcd"] for x in rows]
        print(
            f"| {label} | {kind} | {min(a):.2f} / {statistics.median(a):.2f} / {max(a):.2f} | "
            f"{statistics.median(e):.2f} |"
        )
    print("\nCRD spec, JSON bytes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    print(f"\nPer round, kube-apiserver ms CPU each ({args.label} − installed):")
    for kind in ("create", "patch"):
        pairs = zip(results[("installed", kind)], results[(args.label, kind)])
        diffs = [o["kube-apiserver"] - i["kube-apiserver"] for i, o in pairs]
        print(f"  {kind}: " + " ".join(f"{d:+.2f}" for d in diffs) + f"  (median {statistics.median(diffs):+.2f})")
    print(json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()}))


if __name__ == "__main__":
    main()
