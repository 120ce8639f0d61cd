"""``run(fn)``: the process entry of a worker: connect, run the activity, report its outcome, exit."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from . import _wire
from ._duration import format_duration
from ._errors import ApplicationError, CancelCause, WorkerError
from ._worker import EXIT_CANCELED, EXIT_FAILURE, EXIT_SUCCESS, Api, Worker, current, log

ENV_NAME, ENV_NAMESPACE, ENV_ATTEMPT = "ACTIVITY_NAME", "ACTIVITY_NAMESPACE", "ACTIVITY_ATTEMPT"


def load_configuration() -> Any:
    """A ``kubernetes.client.Configuration`` like ``kubectl``'s: ``KUBECONFIG`` when set, else the pod's
    service account, else ``~/.kube/config``."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if not os.environ.get("KUBECONFIG") and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def _accepts_input(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return bool(positional)


def _outcome(worker: Worker, error: BaseException | None, result: Any) -> tuple[dict[str, Any], int]:
    attempt = worker.attempt
    if error is None:
        try:
            value = _wire.to_payload("result", result)
        except (TypeError, ValueError) as e:
            log.error("%s", e)
            failure = {
                "type": "ResultTooLarge" if isinstance(e, _wire.PayloadTooLargeError) else "ResultError",
                "message": str(e),
                "nonRetryable": True,
            }
            return {"attempt": attempt, "succeeded": False, "failure": failure}, EXIT_FAILURE
        out: dict[str, Any] = {"attempt": attempt, "succeeded": True}
        if value is not None:
            out["result"] = value
        return out, EXIT_SUCCESS
    if isinstance(error, asyncio.CancelledError) and worker.cancelled:
        out = {"attempt": attempt, "succeeded": False, "canceled": True}
        if worker.cause in (CancelCause.CANCELED, CancelCause.PAUSED, CancelCause.RESET):
            out["cause"] = worker.cause.value
        return out, EXIT_CANCELED
    if isinstance(error, ApplicationError):
        failure = {"type": error.type, "message": error.message, "nonRetryable": error.non_retryable}
        if error.next_retry_delay is not None:
            failure["nextRetryDelay"] = format_duration(error.next_retry_delay)
    else:
        log.error("activity raised %s", type(error).__name__, exc_info=error)
        failure = {"type": type(error).__name__, "message": str(error), "nonRetryable": False}
    return {"attempt": attempt, "succeeded": False, "failure": failure}, EXIT_FAILURE


async def run_async(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    namespace: str | None = None,
    attempt: int | None = None,
    configuration: Any = None,
    handle_signals: bool = True,
) -> int:
    """Runs one attempt of ``fn`` and returns the process exit code: 0 success, 1 failure or a fatal
    error (missing permission, heartbeats undeliverable), 143 canceled (also superseded or gone).

    ``fn`` is an ``async def`` or a plain function (run in a thread), with no parameter or one
    (``spec.input``, decoded from JSON). ``name``, ``namespace`` and ``attempt`` default to
    ``ACTIVITY_NAME``, ``ACTIVITY_NAMESPACE`` and ``ACTIVITY_ATTEMPT``; ``configuration`` (a
    ``kubernetes.client.Configuration``) to :func:`load_configuration`. With ``handle_signals``,
    SIGTERM and SIGINT cancel the activity (cause ``Signal``).
    """
    from kubernetes import client

    try:
        name = name or _env(ENV_NAME)
        namespace = namespace or _env(ENV_NAMESPACE)
        if attempt is None:
            raw = _env(ENV_ATTEMPT)
            try:
                attempt = int(raw)
            except ValueError:
                raise WorkerError(f"environment variable {ENV_ATTEMPT}={raw!r} is not an attempt number") from None
        if attempt < 1:
            raise WorkerError(f"attempt {attempt} is not an attempt number ≥ 1")
        if configuration is None:
            try:
                configuration = load_configuration()
            except Exception as e:
                raise WorkerError(
                    f"cannot configure the Kubernetes client (set KUBECONFIG, or run in a pod with a "
                    f"service account): {e}"
                ) from e
        # The worker retries by itself, bounded by the heartbeat timeout: no urllib3 retries.
        configuration.retries = False
        api_client = client.ApiClient(configuration)
        worker = await Worker.connect(Api(api_client, namespace, name), attempt)
    except WorkerError as e:
        log.error("cannot start the worker: %s", e)
        return EXIT_FAILURE

    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, worker.cancel, CancelCause.SIGNAL, f"received {sig.name}")
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError) as e:
                log.warning("cannot watch %s: %s", sig.name, e)
    token = current.set(worker)
    try:
        error: BaseException | None = None
        result: Any = None
        args = (worker.info.input,) if _accepts_input(fn) else ()
        try:
            if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
                task: asyncio.Task[Any] = asyncio.ensure_future(fn(*args))
                # Let the activity start before a cancel that arrived with the first read reaches it:
                # it then sees CancelledError at its first await, with activity.info() available.
                await asyncio.sleep(0)

                def cancel_task() -> None:
                    task.cancel()

                worker.on_cancel(cancel_task)
                result = await task
            else:
                result = await asyncio.to_thread(functools.partial(fn, *args))
        except asyncio.CancelledError as e:
            if not worker.cancelled:
                raise  # the worker itself is being cancelled from outside, not the activity
            error = e
        except Exception as e:
            error = e
        outcome, code = _outcome(worker, error, result)
        return await worker.report(outcome, code)
    finally:
        current.reset(token)
        for sig in installed:
            loop.remove_signal_handler(sig)
        await worker.close()
        api_client.close()  # type: ignore[no-untyped-call]


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise WorkerError(
            f"environment variable {name} is not set (the operator sets it on every container of a worker pod)"
        )
    return value


def run(fn: Callable[..., Any], **kwargs: Any) -> NoReturn:
    """Runs one attempt of the activity ``fn`` in this process and exits with its exit code.

    Logs to stderr at INFO unless logging is configured. Keyword arguments go to :func:`run_async`.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(asyncio.run(run_async(fn, **kwargs)))
