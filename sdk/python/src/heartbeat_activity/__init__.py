"""Worker SDK for ``heartbeat.dev`` Activities, shaped like Temporal's Python SDK.

.. code-block:: python

    from heartbeat_activity import activity, run, ApplicationError

    async def process(input: dict) -> int:
        details = activity.info().heartbeat_details
        offset = details[0]["offset"] if details else 0
        while offset < input["count"]:
            await handle(offset)            # asyncio.CancelledError here when canceled
            offset += 1
            activity.heartbeat({"offset": offset})
        return offset

    run(process)

See ``docs/sdk-python.md``.
"""

from . import activity
from ._duration import format_duration, parse_duration
from ._errors import ApplicationError, CancelCause, WorkerError
from ._run import load_configuration, run, run_async
from ._wire import MAX_PAYLOAD_BYTES, PayloadTooLargeError
from ._worker import EXIT_CANCELED, EXIT_FAILURE, EXIT_SUCCESS, Info

__all__ = [
    "EXIT_CANCELED",
    "EXIT_FAILURE",
    "EXIT_SUCCESS",
    "MAX_PAYLOAD_BYTES",
    "ApplicationError",
    "CancelCause",
    "Info",
    "PayloadTooLargeError",
    "WorkerError",
    "activity",
    "format_duration",
    "load_configuration",
    "parse_duration",
    "run",
    "run_async",
]
