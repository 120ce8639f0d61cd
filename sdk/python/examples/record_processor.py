"""The seed's record processor on the Python SDK: reads records by offset (100-500 ms each),
heartbeats the offset after each one, resumes from the last heartbeated offset on a retry, and
returns the final offset. Input: ``{"count": 1000, "minDelayMs": 100, "maxDelayMs": 500}`` (all
optional), so that tests can run it fast.

Run it as a worker pod's command: ``python -m record_processor`` (see docs/sdk-python.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from heartbeat_activity import activity, run

log = logging.getLogger("record_processor")


async def process_record(offset: int, delay: float) -> None:
    """Processes the record at ``offset`` (here: takes ``delay`` seconds)."""
    await asyncio.sleep(delay)


async def process_records(input: dict[str, Any] | None) -> int:
    """Processes records ``offset..count`` and returns the final offset."""
    config = input or {}
    count = int(config.get("count", 1000))
    low = float(config.get("minDelayMs", 100)) / 1000
    high = float(config.get("maxDelayMs", 500)) / 1000
    details = activity.info().heartbeat_details
    offset = int(details[0]["offset"]) if details else 0
    log.info("attempt %d: records %d..%d", activity.info().attempt, offset, count)
    while offset < count:
        await process_record(offset, random.uniform(low, high))  # asyncio.CancelledError when canceled
        log.info("processed record %d", offset)
        offset += 1
        activity.heartbeat({"offset": offset, "progress": f"{offset}/{count}"})
    return offset


if __name__ == "__main__":
    run(process_records)
