"""The heartbeat throttle: a pure state machine that decides when heartbeat details go out.

Like Temporal's SDKs (and the Rust SDK's ``throttle.rs``): the first heartbeat is sent at once, later
ones at most once per interval (counted from the start of the last delivered send); in between, the
latest details win. A failed send is retried with backoff (or after the server's Retry-After) and
gives up when the heartbeat could not be delivered for longer than the heartbeat timeout.

No method reads the clock: callers pass ``now`` (monotonic seconds), so tests use a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_INTERVAL = 30.0
"""Interval (seconds) when the activity has no heartbeat timeout."""
MAX_INTERVAL = 60.0
"""Heartbeats are never throttled to more than this many seconds apart."""
RETRY_MIN = 0.2
"""First retry delay after a failed send; doubled per consecutive failure."""
RETRY_MAX = 5.0
"""Cap on the retry delay (a server's Retry-After may ask for more)."""


class Liveness:
    """Pending heartbeat without details: only ``lastHeartbeatTime`` is sent (details are kept)."""

    def __repr__(self) -> str:
        return "LIVENESS"


LIVENESS = Liveness()


def interval_for(heartbeat_timeout: float | None) -> float:
    """0.8 x the heartbeat timeout when one is set (never more than 60 s), else 30 s."""
    if heartbeat_timeout is None or heartbeat_timeout <= 0:
        return DEFAULT_INTERVAL
    return min(heartbeat_timeout * 0.8, MAX_INTERVAL)


def backoff(failures: int) -> float:
    """Retry delay after ``failures`` consecutive failures: 0.2 s, 0.4 s, ... capped at 5 s."""
    exp = min(max(failures - 1, 0), 16)
    return float(min(RETRY_MIN * (1 << exp), RETRY_MAX))


@dataclass(frozen=True)
class RetryAt:
    """After a failed send: the details are pending again; try again at ``at``."""

    at: float


@dataclass(frozen=True)
class GiveUp:
    """After a failed send: undelivered for longer than the heartbeat timeout; stop the worker."""

    undelivered_for: float


class Throttle:
    """The throttle state; see the module documentation."""

    def __init__(self, interval: float, give_up_after: float | None) -> None:
        self.interval = interval
        self.give_up_after = give_up_after
        self._pending: Any = None
        self._has_pending = False
        self._last_sent: float | None = None
        self._retry_at: float | None = None
        self.failures = 0
        self._failing_since: float | None = None

    @classmethod
    def for_heartbeat_timeout(cls, heartbeat_timeout: float | None) -> Throttle:
        """A throttle for an activity with this heartbeat timeout in seconds (None or 0: disabled)."""
        give_up = heartbeat_timeout if heartbeat_timeout and heartbeat_timeout > 0 else None
        return cls(interval_for(heartbeat_timeout), give_up)

    def record(self, details: Any) -> None:
        """Records new details; they replace pending ones (the latest win). A liveness-only
        heartbeat does not replace pending details."""
        if details is LIVENESS and self._has_pending:
            return
        self._pending = details
        self._has_pending = True

    @property
    def has_pending(self) -> bool:
        """Whether details wait to be sent."""
        return self._has_pending

    def due(self) -> float | None:
        """When the pending details are due (monotonic seconds; ``-inf`` = now), or None when idle."""
        if not self._has_pending:
            return None
        if self._retry_at is not None:
            return self._retry_at
        if self._last_sent is not None:
            return self._last_sent + self.interval
        return float("-inf")

    def take_due(self, now: float) -> tuple[bool, Any]:
        """``(True, details)`` when pending details are due at ``now``; the caller sends them and then
        calls :meth:`delivered` or :meth:`failed`."""
        at = self.due()
        if at is None or at > now:
            return False, None
        return self.take_pending()

    def take_pending(self) -> tuple[bool, Any]:
        """The pending details regardless of the interval: the flush before the outcome."""
        if not self._has_pending:
            return False, None
        details, self._pending, self._has_pending = self._pending, None, False
        return True, details

    def delivered(self, sent_at: float) -> None:
        """A send that started at ``sent_at`` was accepted."""
        self._last_sent = sent_at
        self._retry_at = None
        self.failures = 0
        self._failing_since = None

    def failed(self, details: Any, sent_at: float, now: float, retry_after: float | None) -> RetryAt | GiveUp:
        """A send of ``details`` started at ``sent_at`` failed at ``now`` with a retryable error. The
        details become pending again unless newer ones were recorded meanwhile."""
        if not self._has_pending:
            self._pending, self._has_pending = details, True
        self.failures += 1
        if self._failing_since is None:
            self._failing_since = sent_at
        since = self._failing_since
        at = now + (retry_after if retry_after is not None else backoff(self.failures))
        if self.give_up_after is not None:
            undelivered_for = now - since
            if undelivered_for >= self.give_up_after:
                self._retry_at = None
                return GiveUp(undelivered_for)
            # One last try right at the limit rather than after it.
            at = min(at, since + self.give_up_after)
        self._retry_at = at
        return RetryAt(at)
