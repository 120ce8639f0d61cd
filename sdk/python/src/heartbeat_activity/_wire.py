"""The wire protocol: the JSON Patches of ``activities/status`` a worker sends (each guarded by a
``test`` of ``status.attempt``), and what an API error means to the worker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ._throttle import Liveness

MAX_PAYLOAD_BYTES = 16 * 1024
"""Largest heartbeat details or result, serialized."""
FIELD_MANAGER = "activity-worker"
"""The field manager of every worker write."""
GROUP, VERSION, PLURAL = "heartbeat.dev", "v1alpha1", "activities"
TOO_MANY_REQUESTS_WAIT = 1.0
"""Seconds to wait after a 429 that names no Retry-After."""


class PayloadTooLargeError(ValueError):
    """Heartbeat details or a result larger than :data:`MAX_PAYLOAD_BYTES` serialized."""


def format_time(t: datetime) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-21T20:40:00.123456Z``."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 time from the API server, or None when absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def to_payload(what: str, value: Any) -> Any:
    """Checks that ``value`` serializes to JSON of at most :data:`MAX_PAYLOAD_BYTES` bytes."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cannot serialize {what} to JSON: {e}") from e
    size = len(text.encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes serialized, more than the limit of {MAX_PAYLOAD_BYTES} bytes"
        )
    return json.loads(text)


def test_attempt(attempt: int) -> dict[str, Any]:
    """The ``test`` op that makes every write conditional on the attempt."""
    return {"op": "test", "path": "/status/attempt", "value": attempt}


def heartbeat_ops(time: datetime, details: Any) -> list[dict[str, Any]]:
    """The ops of a heartbeat; a liveness-only heartbeat leaves ``heartbeatDetails`` as it is."""
    ops: list[dict[str, Any]] = [{"op": "add", "path": "/status/lastHeartbeatTime", "value": format_time(time)}]
    if not isinstance(details, Liveness):
        ops.append({"op": "add", "path": "/status/heartbeatDetails", "value": details})
    return ops


def heartbeat_patch(attempt: int, time: datetime, details: Any) -> list[dict[str, Any]]:
    """A heartbeat: test the attempt, set ``lastHeartbeatTime`` and ``heartbeatDetails``."""
    return [test_attempt(attempt), *heartbeat_ops(time, details)]


def outcome_patch(
    attempt: int, time: datetime, flushed: tuple[bool, Any], outcome: dict[str, Any]
) -> list[dict[str, Any]]:
    """An outcome: test the attempt, the flushed heartbeat (when details were pending), the outcome."""
    ops = [test_attempt(attempt)]
    if flushed[0]:
        ops.extend(heartbeat_ops(time, flushed[1]))
    ops.append({"op": "add", "path": "/status/outcome", "value": outcome})
    return ops


@dataclass(frozen=True)
class ApiFailure:
    """What a failed API request means to the worker.

    ``kind`` is ``superseded`` (a failed ``test``: never retried), ``forbidden`` (403),
    ``not_found`` (404), ``retryable`` (409, 429, 5xx, timeouts, connection errors; after
    ``retry_after`` seconds or with backoff) or ``fatal`` (any other answer: not retried).
    """

    kind: str
    message: str
    retry_after: float | None = None


def classify_status(code: int, body: str | bytes | None) -> ApiFailure:
    """Classifies an API answer by its status code and its ``Status`` body.

    A failed JSON Patch ``test`` is a 422 without ``details.causes`` (found by experiment against
    kube-apiserver 1.36); a schema validation failure is a 422 that lists its causes.
    """
    status: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else {}
        if isinstance(parsed, dict):
            status = parsed
    except ValueError:
        pass
    message = str(status.get("message") or (body.decode() if isinstance(body, bytes) else body) or "")
    details = status.get("details")
    details = details if isinstance(details, dict) else {}
    causes = details.get("causes")
    causes = causes if isinstance(causes, list) else []
    for cause in causes:
        if isinstance(cause, dict) and cause.get("message"):
            message += f"; {cause['message']}"
    if code == 422 and not causes:
        return ApiFailure("superseded", message)
    if code == 403:
        return ApiFailure("forbidden", message)
    if code == 404:
        return ApiFailure("not_found", message)
    if code == 429:
        seconds = details.get("retryAfterSeconds")
        wait = float(seconds) if isinstance(seconds, int) and seconds > 0 else TOO_MANY_REQUESTS_WAIT
        return ApiFailure("retryable", message, wait)
    if code == 409 or 500 <= code <= 599:
        return ApiFailure("retryable", message)
    return ApiFailure("fatal", f"{code}: {message}")
