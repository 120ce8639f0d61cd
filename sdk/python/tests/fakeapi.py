"""A scripted fake Kubernetes API server on loopback that serves one Activity and records every
PATCH, driven by the language-neutral scenario files of ``sdk/conformance/scenarios``."""

from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NS, NAME = "ns", "a"
ACTIVITY_PATH = f"/apis/heartbeat.dev/v1alpha1/namespaces/{NS}/activities/{NAME}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def status_body(answer: dict[str, Any]) -> dict[str, Any]:
    """A ``Status`` failure body for a scripted non-200 answer."""
    details: dict[str, Any] = {}
    if "retryAfterSeconds" in answer:
        details["retryAfterSeconds"] = answer["retryAfterSeconds"]
    if "causes" in answer:
        details["causes"] = answer["causes"]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": answer.get("message", ""),
        "code": answer["status"],
        "details": details,
    }


@dataclass
class Request:
    """One request the fake API received."""

    at: float
    method: str
    path: str
    query: str
    content_type: str
    body: Any


class FakeApi:
    """Serves the scenario's Activity; answers GETs and PATCHes as the scenario scripts them."""

    def __init__(self, scenario: dict[str, Any]) -> None:
        attempt = scenario.get("attempt", 1)
        served = copy.deepcopy(scenario.get("activity", {}))
        activity: dict[str, Any] = {
            "apiVersion": "heartbeat.dev/v1alpha1",
            "kind": "Activity",
            "metadata": {"name": NAME, "namespace": NS, **served.get("metadata", {})},
            "spec": served.get("spec", {}),
            "status": {"attempt": attempt, **served.get("status", {})},
        }
        self.activity = activity
        self.get_answers: list[dict[str, Any]] = list(scenario.get("get", []))
        self.patch_answers: list[dict[str, Any]] = list(scenario.get("patch", []))
        self.patch_default: dict[str, Any] = scenario.get("patchDefault", {"status": 200})
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                code, reply = api.answer(
                    Request(
                        time.monotonic(),
                        self.command,
                        path,
                        query,
                        self.headers.get("Content-Type", ""),
                        body,
                    )
                )
                data = json.dumps(reply).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _serve
            do_PATCH = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, req: Request) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(req)
            if req.method == "GET":
                n = sum(1 for r in self.requests if r.method == "GET") - 1
                answer = self.get_answers[n] if n < len(self.get_answers) else {"status": 200}
            else:
                n = sum(1 for r in self.requests if r.method == "PATCH") - 1
                answer = self.patch_answers[n] if n < len(self.patch_answers) else self.patch_default
            if answer["status"] != 200:
                return answer["status"], status_body(answer)
            if "mutate" in answer:
                self.activity = merge_patch(self.activity, answer["mutate"])
            return 200, copy.deepcopy(self.activity)

    def patches(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == "PATCH"]

    def gets(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == "GET"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
