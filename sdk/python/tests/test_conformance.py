"""The conformance suite (``sdk/conformance/scenarios/*.json``), run by the Python SDK against a
scripted fake API on loopback, once with an ``async def`` activity and once with a sync one."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from fakeapi import ACTIVITY_PATH, NAME, NS, FakeApi
from heartbeat_activity import ApplicationError, activity, parse_duration, run_async

SCENARIOS = Path(__file__).resolve().parents[2] / "conformance" / "scenarios"
STEP_TIMEOUT = 15.0
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
ALLOWED = {"/status/lastHeartbeatTime", "/status/heartbeatDetails", "/status/outcome"}


def load() -> list[dict[str, Any]]:
    files = sorted(SCENARIOS.glob("*.json"))
    assert files, f"no scenario files in {SCENARIOS}"
    return [json.loads(f.read_text()) for f in files]


class Trace:
    """What the activity saw, for the checks after the run."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.cause: str | None = None
        self.returned = False


def _info_matches(expect: dict[str, Any], trace: Trace) -> None:
    info = activity.info()
    seen = {
        "attempt": info.attempt,
        "heartbeatDetails": info.heartbeat_details[0] if info.heartbeat_details else None,
        "input": info.input,
        "heartbeatTimeoutMs": None
        if info.heartbeat_timeout is None
        else round(info.heartbeat_timeout.total_seconds() * 1000),
        "heartbeatIntervalMs": round(info.heartbeat_interval.total_seconds() * 1000),
    }
    for key, want in expect.items():
        if seen[key] != want:
            trace.failures.append(f"info {key}: got {seen[key]!r}, want {want!r}")


def _end(step: Any, trace: Trace) -> Any:
    cause = activity.cancellation_cause()
    trace.cause = cause.value if cause else None
    trace.returned = True
    if trace.failures:
        raise AssertionError("; ".join(trace.failures))
    if step == "canceled":
        return "canceled"
    if "error" in step:
        e = step["error"]
        delay = e.get("nextRetryDelay")
        raise ApplicationError(
            e["message"],
            type=e["type"],
            non_retryable=e.get("nonRetryable", False),
            next_retry_delay=parse_duration(delay) if delay else None,
        )
    return step["result"]


def async_activity(scenario: dict[str, Any], api: FakeApi, trace: Trace) -> Any:
    async def fn() -> Any:
        for step in scenario["worker"]:
            if "heartbeat" in step:
                activity.heartbeat(step["heartbeat"])
            elif "sleepMs" in step:
                await asyncio.sleep(step["sleepMs"] / 1000)
            elif "waitPatches" in step:
                deadline = time.monotonic() + STEP_TIMEOUT
                while len(api.patches()) < step["waitPatches"] and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                if len(api.patches()) < step["waitPatches"]:
                    trace.failures.append(f"only {len(api.patches())} patches, waited for {step['waitPatches']}")
            elif "waitCancelled" in step:
                try:
                    await asyncio.sleep(STEP_TIMEOUT)
                    trace.failures.append(f"not cancelled within {STEP_TIMEOUT}s")
                except asyncio.CancelledError:
                    pass  # what the step waits for: cancellation arrives as CancelledError
            elif "expectCancelled" in step:
                if activity.is_cancelled() != step["expectCancelled"]:
                    trace.failures.append(f"is_cancelled() is {activity.is_cancelled()}")
            elif "expectInfo" in step:
                _info_matches(step["expectInfo"], trace)
            elif "signal" in step:
                os.kill(os.getpid(), getattr(signal, step["signal"]))
            elif "return" in step:
                if _end(step["return"], trace) == "canceled":
                    raise asyncio.CancelledError()
                return _end(step["return"], trace)
        raise AssertionError("the scenario's worker has no return step")

    return fn


def sync_activity(scenario: dict[str, Any], api: FakeApi, trace: Trace) -> Any:
    def fn() -> Any:
        for step in scenario["worker"]:
            if "heartbeat" in step:
                activity.heartbeat(step["heartbeat"])
            elif "sleepMs" in step:
                time.sleep(step["sleepMs"] / 1000)
            elif "waitPatches" in step:
                deadline = time.monotonic() + STEP_TIMEOUT
                while len(api.patches()) < step["waitPatches"] and time.monotonic() < deadline:
                    time.sleep(0.01)
                if len(api.patches()) < step["waitPatches"]:
                    trace.failures.append(f"only {len(api.patches())} patches, waited for {step['waitPatches']}")
            elif "waitCancelled" in step:
                deadline = time.monotonic() + STEP_TIMEOUT
                while not activity.is_cancelled() and time.monotonic() < deadline:
                    time.sleep(0.01)
                if not activity.is_cancelled():
                    trace.failures.append(f"not cancelled within {STEP_TIMEOUT}s")
            elif "expectCancelled" in step:
                if activity.is_cancelled() != step["expectCancelled"]:
                    trace.failures.append(f"is_cancelled() is {activity.is_cancelled()}")
            elif "expectInfo" in step:
                _info_matches(step["expectInfo"], trace)
            elif "signal" in step:
                os.kill(os.getpid(), getattr(signal, step["signal"]))
            elif "return" in step:
                if _end(step["return"], trace) == "canceled":
                    activity.raise_if_cancelled()
                    raise AssertionError("returning canceled, but the worker was not cancelled")
                return _end(step["return"], trace)
        raise AssertionError("the scenario's worker has no return step")

    return fn


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_patch(i: int, req: Any, matcher: dict[str, Any], attempt: int) -> list[str]:
    out = []
    where = f"patch {i}"
    if req.path != ACTIVITY_PATH + "/status":
        out.append(f"{where}: path {req.path}")
    if "fieldManager=activity-worker" not in req.query.split("&"):
        out.append(f"{where}: query {req.query!r} lacks fieldManager=activity-worker")
    if req.content_type.split(";")[0].strip() != "application/json-patch+json":
        out.append(f"{where}: content type {req.content_type!r}")
    ops = req.body if isinstance(req.body, list) else []
    if not ops or ops[0] != {"op": "test", "path": "/status/attempt", "value": attempt}:
        out.append(f"{where}: does not start with the test of the attempt: {req.body}")
        return out
    by_path: dict[str, Any] = {}
    for op in ops[1:]:
        if op.get("op") != "add" or op.get("path") not in ALLOWED:
            out.append(f"{where}: unexpected op {op}")
        by_path[op.get("path")] = op.get("value")
    paths = [op.get("path") for op in ops[1:]]
    want = []
    if "heartbeatDetails" in matcher:
        want += ["/status/lastHeartbeatTime", "/status/heartbeatDetails"]
    if "outcome" in matcher:
        want.append("/status/outcome")
    if paths != want:
        out.append(f"{where}: ops {paths}, want {want}: {ops}")
        return out
    if "heartbeatDetails" in matcher:
        if not TIME.match(str(by_path["/status/lastHeartbeatTime"])):
            out.append(f"{where}: lastHeartbeatTime {by_path['/status/lastHeartbeatTime']!r} is not RFC 3339 µs UTC")
        if by_path["/status/heartbeatDetails"] != matcher["heartbeatDetails"]:
            out.append(f"{where}: details {by_path['/status/heartbeatDetails']}, want {matcher['heartbeatDetails']}")
    if "outcome" in matcher and by_path["/status/outcome"] != matcher["outcome"]:
        out.append(f"{where}: outcome {by_path['/status/outcome']}, want {matcher['outcome']}")
    return out


def run_scenario(scenario: dict[str, Any], mode: str) -> None:
    api = FakeApi(scenario)
    attempt = scenario.get("attempt", 1)
    trace = Trace()
    make = async_activity if mode == "async" else sync_activity
    configuration = client.Configuration()
    configuration.host = api.url
    errors = Errors()
    logger = logging.getLogger("heartbeat_activity")
    logger.addHandler(errors)
    try:
        code = asyncio.run(
            run_async(
                make(scenario, api, trace),
                name=NAME,
                namespace=NS,
                attempt=attempt,
                configuration=configuration,
            )
        )
    finally:
        logger.removeHandler(errors)
        api.close()
    expect = scenario["expect"]
    problems: list[str] = list(trace.failures)
    if code != expect["exit"]:
        problems.append(f"exit code {code}, want {expect['exit']}")
    if expect.get("started", True):
        if not trace.returned:
            problems.append("the activity did not reach its return step")
        elif trace.cause != expect.get("cause"):
            problems.append(f"cause {trace.cause}, want {expect.get('cause')}")
    elif trace.returned:
        problems.append("the activity ran, but the worker should not have started")
    for text in expect.get("errorContains", []):
        if not any(text in m for m in errors.messages):
            problems.append(f"no error log contains {text!r}: {errors.messages}")
    gets = api.gets()
    if "gets" in expect and len(gets) != expect["gets"]:
        problems.append(f"{len(gets)} GETs, want {expect['gets']}")
    for g in gets:
        if g.path != ACTIVITY_PATH:
            problems.append(f"GET of {g.path}")
    patches = api.patches()
    listed = expect.get("patches", [])
    more = expect.get("morePatches")
    if more is None and len(patches) != len(listed):
        problems.append(f"{len(patches)} patches, want {len(listed)}: {[p.body for p in patches]}")
    if len(patches) < max(len(listed), expect.get("minPatches", 0)):
        problems.append(f"{len(patches)} patches, want at least {max(len(listed), expect.get('minPatches', 0))}")
    for i, req in enumerate(patches):
        matcher = listed[i] if i < len(listed) else more
        if matcher is not None:
            problems += check_patch(i, req, matcher, attempt)
    for gap in expect.get("gaps", []):
        if gap["to"] < len(patches):
            seen = (patches[gap["to"]].at - patches[gap["from"]].at) * 1000
            if seen < gap["atLeastMs"]:
                problems.append(f"patches {gap['from']}→{gap['to']} {seen:.0f}ms apart, want ≥ {gap['atLeastMs']}ms")
    assert not problems, f"{scenario['name']} ({mode}): " + "; ".join(problems)


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("scenario", load(), ids=lambda s: s["name"])
def test_conformance(scenario: dict[str, Any], mode: str) -> None:
    run_scenario(scenario, mode)
