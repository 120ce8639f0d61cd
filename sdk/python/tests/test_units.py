"""Unit tests: the throttle with a fake clock, the duration strings, the patches, the error
classification and the stop causes of a heartbeat reply."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from heartbeat_activity import CancelCause, format_duration, parse_duration
from heartbeat_activity._throttle import LIVENESS, GiveUp, RetryAt, Throttle, backoff, interval_for
from heartbeat_activity._wire import (
    MAX_PAYLOAD_BYTES,
    PayloadTooLargeError,
    classify_status,
    heartbeat_patch,
    outcome_patch,
    to_payload,
)
from heartbeat_activity._worker import cancel_in


def test_interval_is_four_fifths_capped_else_30s() -> None:
    assert interval_for(5) == 4
    assert interval_for(10) == 8
    assert interval_for(600) == 60
    assert interval_for(None) == 30
    assert interval_for(0) == 30


def test_first_at_once_then_one_per_interval_latest_wins() -> None:
    t = Throttle(4.0, None)
    assert t.due() is None
    t.record(1)
    assert t.take_due(0.0) == (True, 1)
    t.delivered(0.0)
    t.record(2)
    t.record(3)
    assert t.due() == 4.0
    assert t.take_due(3.999) == (False, None)
    assert t.take_due(4.0) == (True, 3)
    t.delivered(4.0)
    t.record(4)
    t.record(LIVENESS)  # liveness does not replace pending details
    assert t.take_pending() == (True, 4)
    assert t.take_pending() == (False, None)


def test_failed_send_backs_off_and_gives_up_after_the_timeout() -> None:
    t = Throttle(4.0, 5.0)
    t.record(1)
    _, d = t.take_due(0.0)
    t.record(2)  # newer details arrive while the send is in flight
    first = t.failed(d, 0.0, 0.1, None)
    assert isinstance(first, RetryAt) and first.at == pytest.approx(0.3)
    assert t.take_due(first.at - 0.01) == (False, None)
    assert t.take_due(first.at) == (True, 2)  # the failed details did not replace newer ones
    second = t.failed(2, 0.3, 0.4, 3.0)
    assert isinstance(second, RetryAt) and second.at == pytest.approx(3.4)  # the server's Retry-After
    _, d = t.take_due(second.at)
    after = t.failed(d, 3.4, 4.95, None)
    assert isinstance(after, RetryAt) and after.at <= 5.0  # one last try at the limit
    _, d = t.take_due(5.0)
    after = t.failed(d, 5.0, 5.1, None)
    assert isinstance(after, GiveUp) and after.undelivered_for >= 5.0
    assert t.take_pending() == (True, 2)  # kept for the final flush


def test_backoff() -> None:
    assert [backoff(n) for n in (1, 2, 3, 10)] == [0.2, 0.4, 0.8, 5.0]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5), ("1m30s", 90), ("1h30m", 5400), ("1.5s", 1.5), ("0", 0), ("2h0m0s", 7200)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "1x", "s", "1m 2s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.5, "500ms"), (5, "5s"), (90, "1m30s"), (3600, "1h0m0s"), (1.5, "1.5s"), (0, "0s")]
)
def test_format_duration_is_gos(seconds: float, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


def test_patches() -> None:
    ts = datetime(2026, 11, 21, 20, 40, 0, 123456, tzinfo=timezone.utc)
    assert heartbeat_patch(3, ts, {"lastItem": 2}) == [
        {"op": "test", "path": "/status/attempt", "value": 3},
        {"op": "add", "path": "/status/lastHeartbeatTime", "value": "2026-11-21T20:40:00.123456Z"},
        {"op": "add", "path": "/status/heartbeatDetails", "value": {"lastItem": 2}},
    ]
    assert heartbeat_patch(1, ts, LIVENESS) == heartbeat_patch(1, ts, None)[:2]
    outcome = {"attempt": 1, "succeeded": True}
    assert outcome_patch(1, ts, (False, None), outcome) == [
        {"op": "test", "path": "/status/attempt", "value": 1},
        {"op": "add", "path": "/status/outcome", "value": outcome},
    ]


def test_payload_limit() -> None:
    assert to_payload("result", "x" * (MAX_PAYLOAD_BYTES - 2)) == "x" * (MAX_PAYLOAD_BYTES - 2)
    with pytest.raises(PayloadTooLargeError, match="16386 bytes serialized, more than the limit of 16384"):
        to_payload("heartbeat details", "x" * MAX_PAYLOAD_BYTES)
    with pytest.raises(TypeError):
        to_payload("result", object())


def status(code: int, **details: object) -> str:
    return json.dumps({"kind": "Status", "code": code, "message": "m", "details": details})


def test_classify() -> None:
    assert classify_status(422, status(422)).kind == "superseded"
    assert classify_status(422, status(422, causes=[{"message": "bad"}])).kind == "fatal"
    assert classify_status(403, status(403)).kind == "forbidden"
    assert classify_status(404, status(404)).kind == "not_found"
    assert classify_status(429, status(429, retryAfterSeconds=7)).retry_after == 7
    assert classify_status(429, status(429)).retry_after == 1
    for code in (409, 500, 503):
        f = classify_status(code, status(code))
        assert (f.kind, f.retry_after) == ("retryable", None)
    assert classify_status(400, "not json").kind == "fatal"


def test_cancel_in_orders_the_causes() -> None:
    def a(spec: dict[str, Any], status: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Any:
        return {"metadata": meta or {}, "spec": spec, "status": {"attempt": 2, **(status or {})}}

    assert cancel_in(a({}), 2) is None
    assert cancel_in(a({}, {"attempt": 3}), 2) is CancelCause.SUPERSEDED
    assert cancel_in(a({"paused": True}), 2) is CancelCause.PAUSED
    done = {"lastReset": {"requestedAt": "t1"}}
    assert cancel_in(a({"reset": {"requestedAt": "t1"}}, done), 2) is None
    assert cancel_in(a({"reset": {"requestedAt": "t2"}, "paused": True}, done), 2) is CancelCause.RESET
    assert cancel_in(a({"paused": True}, meta={"deletionTimestamp": "x"}), 2) is CancelCause.CANCELED
    assert cancel_in(a({"cancelRequested": True}, {"attempt": 3}), 2) is CancelCause.CANCELED
