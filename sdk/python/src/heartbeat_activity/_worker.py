"""One attempt of one Activity, seen from its worker: the first read, the background heartbeat
sender, cancellation from the heartbeat reply or a signal, and the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from . import _wire
from ._duration import format_duration, parse_duration
from ._errors import CancelCause, WorkerError
from ._throttle import LIVENESS, GiveUp, Throttle, backoff

log = logging.getLogger("heartbeat_activity")

REQUEST_TIMEOUT = 10.0
"""Longest wait (seconds) for one API request."""
STARTUP_BUDGET = 30.0
"""How long the worker keeps trying to read its Activity at start."""
REPORT_BUDGET = 60.0
"""How long the worker keeps trying to deliver its outcome."""
DEFAULT_GRACE_PERIOD = timedelta(seconds=30)

EXIT_SUCCESS, EXIT_FAILURE, EXIT_CANCELED = 0, 1, 143

current: contextvars.ContextVar[Worker] = contextvars.ContextVar("heartbeat_activity_worker")


@dataclass(frozen=True)
class Info:
    """What the activity knows about its attempt (``activity.info()``)."""

    name: str
    """The Activity's name."""
    namespace: str
    """The Activity's namespace."""
    attempt: int
    """This attempt's number, from 1."""
    input: Any
    """``spec.input`` (None when unset)."""
    heartbeat_details: Sequence[Any]
    """The previous attempts' last heartbeat details, to resume from: ``[]`` when there are none,
    else one element (several details of one heartbeat are stored as one JSON array)."""
    heartbeat_timeout: timedelta | None
    """``spec.heartbeatTimeout`` (None when unset or zero)."""
    heartbeat_interval: timedelta
    """At most one heartbeat is sent per this interval (0.8 x the heartbeat timeout, at most 60 s; 30 s without)."""
    cancellation_grace_period: timedelta
    """``spec.cancellationGracePeriod``: how long a canceled worker may take to stop."""
    maximum_attempts: int
    """``spec.retryPolicy.maximumAttempts`` (0 = unlimited)."""
    attempt_deadline: datetime | None
    """When this attempt times out (start-to-close), as computed at start; None when unlimited."""
    schedule_to_close_deadline: datetime | None
    """When the whole activity times out (schedule-to-close), as computed at start; None when unlimited."""


def cancel_in(activity: dict[str, Any], attempt: int) -> CancelCause | None:
    """The stop an Activity read from the API server asks for, if any.

    Cancel beats a changed attempt; then reset beats pause, as the contract orders them.
    """
    metadata = _dict(activity.get("metadata"))
    spec = _dict(activity.get("spec"))
    status = _dict(activity.get("status"))
    if metadata.get("deletionTimestamp") or spec.get("cancelRequested") is True:
        return CancelCause.CANCELED
    current_attempt = status.get("attempt")
    if isinstance(current_attempt, int) and current_attempt != attempt:
        return CancelCause.SUPERSEDED
    requested = _dict(spec.get("reset")).get("requestedAt")
    if requested and requested != _dict(status.get("lastReset")).get("requestedAt"):
        return CancelCause.RESET
    if spec.get("paused") is True:
        return CancelCause.PAUSED
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _duration_field(spec: dict[str, Any], field: str) -> timedelta | None:
    value = spec.get(field)
    if value is None:
        return None
    try:
        return parse_duration(str(value))
    except ValueError as e:
        raise WorkerError(f"invalid spec.{field} {value!r} in the Activity: {e}") from e


def _forbidden(verb: str, resource: str, namespace: str, name: str, message: str) -> str:
    return (
        f"forbidden: cannot {verb} {resource} of Activity {namespace}/{name}: {message}. The worker's service "
        "account needs the Role `activity-worker` (verbs: get on activities, patch on activities/status, "
        f"apiGroup heartbeat.dev) bound in namespace {namespace}: see worker-image/rbac/worker-role.yaml"
    )


class Api:
    """The two requests a worker makes, through the official ``kubernetes`` client (run in a thread)."""

    def __init__(self, api_client: Any, namespace: str, name: str) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api_client)
        self.namespace, self.name = namespace, name

    def get(self, timeout: float) -> dict[str, Any]:
        """Reads the Activity."""
        result = self._custom.get_namespaced_custom_object(
            _wire.GROUP, _wire.VERSION, self.namespace, _wire.PLURAL, self.name, _request_timeout=timeout
        )
        return _dict(result)

    def patch_status(self, patch: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
        """One JSON Patch of ``activities/status`` with the worker's field manager; returns the reply."""
        result = self._custom.patch_namespaced_custom_object_status(
            _wire.GROUP,
            _wire.VERSION,
            self.namespace,
            _wire.PLURAL,
            self.name,
            patch,
            field_manager=_wire.FIELD_MANAGER,
            _content_type="application/json-patch+json",
            _request_timeout=timeout,
        )
        return _dict(result)


def _classify(e: BaseException) -> _wire.ApiFailure:
    """API answers by status code; everything else (timeouts, connection errors) is retryable."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ApiException) and isinstance(e.status, int) and e.status > 0:
        return _wire.classify_status(e.status, e.body)
    return _wire.ApiFailure("retryable", f"{type(e).__name__}: {e}")


class Worker:
    """The state of one attempt; shared by the activity (through ``activity.*``) and the sender task."""

    def __init__(self, api: Api, attempt: int, activity: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.api = api
        self.attempt = attempt
        self.loop = loop
        spec = _dict(activity.get("spec"))
        status = _dict(activity.get("status"))
        metadata = _dict(activity.get("metadata"))
        hb_timeout = _duration_field(spec, "heartbeatTimeout")
        self.heartbeat_timeout = hb_timeout if hb_timeout and hb_timeout > timedelta(0) else None
        self.throttle = Throttle.for_heartbeat_timeout(
            self.heartbeat_timeout.total_seconds() if self.heartbeat_timeout else None
        )
        details = status.get("heartbeatDetails")
        retry = _dict(spec.get("retryPolicy"))
        max_attempts = retry.get("maximumAttempts")
        now = datetime.now(timezone.utc)
        s2c = _duration_field(spec, "scheduleToCloseTimeout")
        start_to_close = _duration_field(spec, "startToCloseTimeout") or s2c
        started = _wire.parse_time(status.get("startedTime")) or now
        clock_start = _wire.parse_time(_dict(status.get("lastReset")).get("time"))
        if clock_start is None:
            created = _wire.parse_time(metadata.get("creationTimestamp"))
            delay = _duration_field(spec, "startDelay") or timedelta(0)
            clock_start = created + delay if created else None
        self.info = Info(
            name=api.name,
            namespace=api.namespace,
            attempt=attempt,
            input=spec.get("input"),
            heartbeat_details=[] if details is None else [details],
            heartbeat_timeout=self.heartbeat_timeout,
            heartbeat_interval=timedelta(seconds=self.throttle.interval),
            cancellation_grace_period=_duration_field(spec, "cancellationGracePeriod") or DEFAULT_GRACE_PERIOD,
            maximum_attempts=max_attempts if isinstance(max_attempts, int) else 0,
            attempt_deadline=started + start_to_close if start_to_close else None,
            schedule_to_close_deadline=clock_start + s2c if clock_start and s2c else None,
        )
        self._lock = threading.Lock()  # guards the throttle and the cause: heartbeat() may run in a thread
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self.cause: CancelCause | None = None
        self.fatal_message: str | None = None
        self._cancelled = threading.Event()
        self._on_cancel: list[Callable[[], None]] = []
        self.reported = False
        self._sender: asyncio.Task[None] | None = None
        log.info(
            "starting attempt %d of Activity %s/%s (heartbeat interval %s, resume from %s)",
            attempt,
            api.namespace,
            api.name,
            format_duration(self.info.heartbeat_interval),
            "none" if details is None else details,
        )
        self.inspect(activity)

    @classmethod
    async def connect(cls, api: Api, attempt: int) -> Worker:
        """Reads the Activity (retrying transient errors for up to 30 s) and starts the heartbeat sender."""
        start = time.monotonic()
        failures = 0
        while True:
            try:
                activity = await asyncio.to_thread(api.get, REQUEST_TIMEOUT)
                break
            except Exception as e:
                failure = _classify(e)
            where = f"{api.namespace}/{api.name}"
            if failure.kind == "forbidden":
                raise WorkerError(_forbidden("get", "activities", api.namespace, api.name, failure.message))
            if failure.kind == "not_found":
                raise WorkerError(f"Activity {where} does not exist: {failure.message}")
            if failure.kind != "retryable":
                raise WorkerError(f"cannot read Activity {where}: {failure.message}")
            failures += 1
            elapsed = time.monotonic() - start
            if elapsed >= STARTUP_BUDGET:
                raise WorkerError(
                    f"gave up after {elapsed:.1f}s trying to read Activity {where}; last error: {failure.message}"
                )
            wait = min(failure.retry_after or backoff(failures), STARTUP_BUDGET - elapsed)
            log.warning("cannot read the Activity yet (retrying in %.1fs): %s", wait, failure.message)
            await asyncio.sleep(wait)
        worker = cls(api, attempt, activity, asyncio.get_running_loop())
        worker._sender = asyncio.create_task(worker._heartbeat_loop())
        return worker

    # --- cancellation -------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """Whether the worker was told to stop."""
        return self._cancelled.is_set()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` (on the event loop) when the worker is told to stop, or now if it was."""
        if self.cancelled:
            callback()
        else:
            self._on_cancel.append(callback)

    def cancel(self, cause: CancelCause, message: str | None = None) -> None:
        """Tells the activity to stop; the first cause wins. Must run on the event loop."""
        with self._lock:
            if self.cause is not None:
                return
            self.cause = cause
            self.fatal_message = message if cause.is_fatal else None
        if cause.is_fatal:
            log.error("stopping: %s", message or cause.value)
        else:
            log.info("canceled: %s%s", cause.value, f" ({message})" if message else "")
        self._cancelled.set()
        callbacks, self._on_cancel = self._on_cancel, []
        for cb in callbacks:
            cb()

    def inspect(self, activity: dict[str, Any]) -> None:
        """Acts on an Activity read from the API server (the first read or a heartbeat reply)."""
        cause = cancel_in(activity, self.attempt)
        if cause is not None:
            self.cancel(cause)

    # --- heartbeats ----------------------------------------------------------------------------

    def heartbeat(self, *details: Any) -> None:
        """Records a heartbeat; never blocks. Thread-safe."""
        if not details:
            value: Any = LIVENESS
        elif len(details) == 1:
            value = _wire.to_payload("heartbeat details", details[0])
        else:
            value = _wire.to_payload("heartbeat details", list(details))
        with self._lock:
            self.throttle.record(value)
        # A closed loop means the attempt is over: nothing will be sent.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._wake.set)

    async def _patch_once(self, patch: list[dict[str, Any]]) -> dict[str, Any] | _wire.ApiFailure:
        timeout = REQUEST_TIMEOUT
        if self.heartbeat_timeout is not None:
            timeout = min(max(self.heartbeat_timeout.total_seconds(), 1.0), REQUEST_TIMEOUT)
        try:
            return await asyncio.to_thread(self.api.patch_status, patch, timeout)
        except Exception as e:
            return _classify(e)

    def _react(self, failure: _wire.ApiFailure) -> bool:
        """Acts on a failure that stops the worker; True when it did."""
        if failure.kind == "superseded":
            log.warning("write refused: status.attempt is no longer %d (%s)", self.attempt, failure.message)
            self.cancel(CancelCause.SUPERSEDED)
        elif failure.kind == "not_found":
            log.warning("write refused: the Activity is gone (%s)", failure.message)
            self.cancel(CancelCause.NOT_FOUND)
        elif failure.kind == "forbidden":
            msg = _forbidden("patch", "activities/status", self.api.namespace, self.api.name, failure.message)
            self.cancel(CancelCause.FORBIDDEN, msg)
        else:
            return False
        return True

    async def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            # Cleared before reading the throttle, so a heartbeat recorded meanwhile is not missed.
            self._wake.clear()
            with self._lock:
                due = self.throttle.due()
            if due is None or due > time.monotonic():
                timeout = None if due is None else due - time.monotonic()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                    continue
                except asyncio.TimeoutError:
                    pass
            async with self._send_lock:
                if self._stop.is_set():
                    return
                sent_at = time.monotonic()
                with self._lock:
                    taken, details = self.throttle.take_due(sent_at)
                if not taken:
                    continue
                result = await self._patch_once(
                    _wire.heartbeat_patch(self.attempt, datetime.now(timezone.utc), details)
                )
                if isinstance(result, dict):
                    with self._lock:
                        self.throttle.delivered(sent_at)
                    self.inspect(result)
                    continue
                if self._react(result):
                    return
                if result.kind == "fatal":
                    # Not retried (the same patch would be refused again); the next details may pass.
                    log.error("heartbeat refused by the API server, dropped: %s", result.message)
                    continue
                now = time.monotonic()
                with self._lock:
                    after = self.throttle.failed(details, sent_at, now, result.retry_after)
                if isinstance(after, GiveUp):
                    timeout_s = self.heartbeat_timeout.total_seconds() if self.heartbeat_timeout else 0.0
                    msg = (
                        f"heartbeat of Activity {self.api.namespace}/{self.api.name} could not be delivered for "
                        f"{after.undelivered_for:.1f}s, longer than the heartbeat timeout "
                        f"{format_duration(timedelta(seconds=timeout_s))}; stopping (last error: {result.message})"
                    )
                    self.cancel(CancelCause.HEARTBEAT_UNDELIVERABLE, msg)
                    return
                log.warning(
                    "heartbeat not delivered (retrying in %.1fs): %s",
                    max(after.at - now, 0.0),
                    result.message,
                )

    # --- the outcome ---------------------------------------------------------------------------

    def _refusal(self) -> tuple[int, str] | None:
        """The exit code and message when the cause forbids further writes."""
        cause = self.cause
        where = f"Activity {self.api.namespace}/{self.api.name}"
        if cause is CancelCause.SUPERSEDED:
            return EXIT_CANCELED, f"attempt {self.attempt} of {where} is superseded; its writes are refused"
        if cause is CancelCause.NOT_FOUND:
            return EXIT_CANCELED, f"{where} does not exist any more"
        if cause is not None and cause.is_fatal:
            return EXIT_FAILURE, self.fatal_message or cause.value
        return None

    async def report(self, outcome: dict[str, Any], exit_code: int) -> int:
        """Flushes pending details and writes the outcome in one PATCH (retrying 409/429/5xx for up to
        60 s); returns the process exit code. One outcome per attempt."""
        if self.reported:
            raise WorkerError(f"the outcome of attempt {self.attempt} has already been reported")
        self.reported = True
        self._stop.set()
        self._wake.set()
        async with self._send_lock:
            refusal = self._refusal()
            if refusal is not None:
                code, msg = refusal
                (log.error if code == EXIT_FAILURE else log.warning)("outcome not written: %s", msg)
                return code
            with self._lock:
                flushed = self.throttle.take_pending()
            start = time.monotonic()
            failures = 0
            while True:
                patch = _wire.outcome_patch(self.attempt, datetime.now(timezone.utc), flushed, outcome)
                result = await self._patch_once(patch)
                if isinstance(result, dict):
                    log.info("reported outcome of attempt %d: %s", self.attempt, _describe(outcome))
                    return exit_code
                if self._react(result):
                    refusal = self._refusal()
                    code, msg = refusal if refusal else (EXIT_FAILURE, result.message)
                    (log.error if code == EXIT_FAILURE else log.warning)("outcome not written: %s", msg)
                    return code
                if result.kind == "fatal":
                    log.error("outcome not written: refused by the API server: %s", result.message)
                    return exit_code
                failures += 1
                elapsed = time.monotonic() - start
                if elapsed >= REPORT_BUDGET:
                    log.error("outcome not written after %.0fs; last error: %s", elapsed, result.message)
                    return exit_code
                wait = min(result.retry_after or backoff(failures), REPORT_BUDGET - elapsed)
                log.warning("cannot report the outcome yet (retrying in %.1fs): %s", wait, result.message)
                await asyncio.sleep(wait)

    async def close(self) -> None:
        """Stops the heartbeat sender."""
        self._stop.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender


def _describe(outcome: dict[str, Any]) -> str:
    if outcome.get("succeeded"):
        return "succeeded"
    if outcome.get("canceled"):
        return f"canceled ({outcome.get('cause', 'not asked by the operator')})"
    failure = _dict(outcome.get("failure"))
    return f"failed: {failure.get('type')}: {failure.get('message')}"
