"""The errors an activity raises and the causes of a cancellation."""

from __future__ import annotations

import enum
from datetime import timedelta


class CancelCause(str, enum.Enum):
    """Why the worker was told to stop (``activity.cancellation_cause()``).

    ``CANCELED``, ``PAUSED``, ``RESET`` and ``SUPERSEDED`` come from the heartbeat reply (see the
    contract); the others from the worker itself.
    """

    CANCELED = "Canceled"
    """``kubectl delete`` (``metadata.deletionTimestamp``) or ``spec.cancelRequested: true``."""
    PAUSED = "Paused"
    """``spec.paused: true``: the attempt stops; unpausing starts a new one."""
    RESET = "Reset"
    """A new ``spec.reset.requestedAt``: the attempt stops; a new one starts."""
    SUPERSEDED = "Superseded"
    """The patch was refused: the attempt timed out or a newer one runs. Nothing more is written."""
    NOT_FOUND = "NotFound"
    """The Activity no longer exists. Nothing more is written."""
    SIGNAL = "Signal"
    """The process got SIGTERM (its pod is deleted) or SIGINT."""
    FORBIDDEN = "Forbidden"
    """The service account may not patch ``activities/status``. Fatal: exit 1."""
    HEARTBEAT_UNDELIVERABLE = "HeartbeatUndeliverable"
    """Heartbeats could not be delivered for longer than the heartbeat timeout. Fatal: exit 1."""

    @property
    def can_report(self) -> bool:
        """Whether the worker may still write its outcome after this cause."""
        return self in (CancelCause.CANCELED, CancelCause.PAUSED, CancelCause.RESET, CancelCause.SIGNAL)

    @property
    def is_fatal(self) -> bool:
        """Fatal causes stop the worker with exit code 1 and no outcome."""
        return self in (CancelCause.FORBIDDEN, CancelCause.HEARTBEAT_UNDELIVERABLE)


class ApplicationError(Exception):
    """A failure of the activity, reported as the attempt's outcome.

    ``type`` is matched exactly against ``retryPolicy.nonRetryableErrorTypes``;
    ``non_retryable=True`` fails the activity at once; ``next_retry_delay`` starts the next attempt
    after that delay instead of the retry policy's backoff (as Temporal's ``next_retry_delay``).
    """

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,
        non_retryable: bool = False,
        next_retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type or "ApplicationError"
        self.non_retryable = non_retryable
        self.next_retry_delay = next_retry_delay


class WorkerError(Exception):
    """The worker cannot go on: it cannot read its Activity, lacks a permission, or its writes are refused."""
