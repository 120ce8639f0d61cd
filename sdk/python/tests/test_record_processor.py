"""The record processor example over two attempts: the first is killed (SIGTERM, as when its pod
is deleted) mid-run; the second resumes from the last heartbeated offset and returns the count."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from fakeapi import FakeApi
from heartbeat_activity import EXIT_CANCELED, EXIT_SUCCESS, run_async

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import record_processor


def outcome_of(api: FakeApi) -> Any:
    last = api.patches()[-1].body
    return last[-1]["value"] if last[-1]["path"] == "/status/outcome" else None


def test_killed_mid_run_resumes_from_the_last_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    processed: list[int] = []

    async def process_record(offset: int, delay: float) -> None:
        await asyncio.sleep(delay)
        processed.append(offset)

    monkeypatch.setattr(record_processor, "process_record", process_record)
    spec = {"heartbeatTimeout": "1s", "input": {"count": 40, "minDelayMs": 20, "maxDelayMs": 40}}

    # Attempt 1: SIGTERM once a few heartbeats went out.
    first = FakeApi({"activity": {"spec": spec}})
    configuration = client.Configuration()
    configuration.host = first.url

    def kill_after_heartbeats() -> None:
        deadline = time.monotonic() + 20
        while len(first.patches()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=kill_after_heartbeats)
    killer.start()
    try:
        code = asyncio.run(
            run_async(
                record_processor.process_records, name="a", namespace="ns", attempt=1, configuration=configuration
            )
        )
    finally:
        killer.join()
        first.close()
    assert code == EXIT_CANCELED
    assert outcome_of(first) == {"attempt": 1, "succeeded": False, "canceled": True}
    # The canceled outcome's patch flushed the last offset: that is what the next attempt gets.
    flushed = [op["value"] for op in first.patches()[-1].body if op["path"] == "/status/heartbeatDetails"]
    last = flushed[0] if flushed else first.patches()[-2].body[2]["value"]
    assert 0 < last["offset"] < 40, last
    assert last["offset"] == len(processed), (last, processed)

    # Attempt 2 resumes from it.
    before = len(processed)
    second = FakeApi({"attempt": 2, "activity": {"spec": spec, "status": {"heartbeatDetails": last}}})
    configuration.host = second.url
    try:
        code = asyncio.run(
            run_async(
                record_processor.process_records, name="a", namespace="ns", attempt=2, configuration=configuration
            )
        )
    finally:
        second.close()
    assert code == EXIT_SUCCESS
    assert processed[before] == last["offset"], "attempt 2 did not start at the last heartbeated offset"
    assert sorted(processed) == list(range(40)), "every record processed exactly once"
    out = outcome_of(second)
    assert out == {"attempt": 2, "succeeded": True, "result": 40}
    details = [op["value"] for op in second.patches()[-1].body if op["path"] == "/status/heartbeatDetails"]
    assert details in ([], [{"offset": 40, "progress": "40/40"}])
