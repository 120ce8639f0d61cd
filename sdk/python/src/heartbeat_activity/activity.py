"""Functions an activity calls while it runs, like ``temporalio.activity``.

They act on the attempt that :func:`heartbeat_activity.run` is running (in async activities and in
the thread of a sync one); outside of it they raise :class:`RuntimeError`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._errors import CancelCause
from ._worker import Info, Worker, current

__all__ = [
    "CancelCause",
    "Info",
    "cancellation_cause",
    "heartbeat",
    "info",
    "is_cancelled",
    "raise_if_cancelled",
    "wait_for_cancel",
]


def _worker() -> Worker:
    worker = current.get(None)
    if worker is None:
        raise RuntimeError("not in an activity: call this from a function run by heartbeat_activity.run")
    return worker


def heartbeat(*details: Any) -> None:
    """Records a heartbeat with ``details``; never blocks.

    A background task sends it: the first at once, then at most one per 0.8 x ``heartbeatTimeout``
    (30 s without one, never more than 60 s); the latest details win and pending ones are flushed
    before the outcome. One value is stored as it is (a dict interoperates with every SDK); several
    as one JSON array; none sends liveness only and keeps the stored details. Raises
    :class:`ValueError` when the details are larger than 16 KiB serialized, :class:`TypeError` when
    they are not JSON.
    """
    _worker().heartbeat(*details)


def info() -> Info:
    """The attempt: name, namespace, attempt number, input, the previous attempts' heartbeat details
    (``info().heartbeat_details[0]`` to resume), heartbeat timeout and deadlines."""
    return _worker().info


def is_cancelled() -> bool:
    """Whether the worker was told to stop (see :func:`cancellation_cause`)."""
    return _worker().cancelled


def cancellation_cause() -> CancelCause | None:
    """Why the worker was told to stop: ``Canceled``, ``Paused``, ``Reset``, ``Superseded``, ... or None."""
    return _worker().cause


def raise_if_cancelled() -> None:
    """Raises :class:`asyncio.CancelledError` when the worker was told to stop: how a sync activity
    (which cannot be interrupted) ends as canceled."""
    if _worker().cancelled:
        raise asyncio.CancelledError(f"activity cancelled: {_worker().cause}")


async def wait_for_cancel() -> None:
    """Returns once the worker is told to stop (an async activity is cancelled anyway)."""
    worker = _worker()
    done = asyncio.Event()
    worker.on_cancel(done.set)
    await done.wait()
