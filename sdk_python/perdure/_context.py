"""The job context: what a handler knows about its job, and its checkpointed steps."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from perdure import _serde
from perdure._errors import EventTimeoutError, NotInJobError, StepNotRecordedError
from perdure.v1 import types_pb2, workers_pb2

# Records a step: (name, result payload or None, error or None) -> whether it was written.
Recorder = Callable[[str, types_pb2.Payload | None, types_pb2.JobError | None], Awaitable[bool]]
# Looks an event up by name: its payload, or None if it was never emitted.
EventLookup = Callable[[str], Awaitable[types_pb2.Payload | None]]


class JobContext:
    """Inside a handler, `perdure.context()` returns this for the job being run.

    `job_id` and `attempt` make good idempotency keys for external APIs: an id that stays
    the same across retries (f"{ctx.job_id}:charge") lets the other side drop a duplicate.
    """

    def __init__(self, *, job_id: str, name: str, namespace: str, attempt: int, max_attempts: int,
                 recorded: dict[str, Any], record: Recorder,
                 send: Callable[[workers_pb2.WorkerMessage], None], get_event: EventLookup,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.job_id = job_id
        self.name = name
        self.namespace = namespace
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._recorded = recorded
        self._record = record
        self._send = send
        self._get_event = get_event
        # The event loop the worker runs on: a plain `def` handler's thread hands the durable
        # operations to it (perdure.sync.context()).
        self._loop = loop
        self._seen: dict[str, int] = {}
        self.log = JobLog(self)
        """`ctx.log.info("...")` (and debug, warning, error): kept with the job, streamed to watchers."""

    def heartbeat(self) -> None:
        """Prove the handler is alive: the sidecar extends this attempt's lease at once."""
        self._send(workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(job_id=self.job_id, attempt=self.attempt)))

    def progress(self, current: float, total: float, message: str | None = None) -> None:
        """Report how far the job has come; the last report is kept with the job and streamed."""
        for label, value in (("current", current), ("total", total)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"progress {label} must be a number, got {value!r}")
        self._send(workers_pb2.WorkerMessage(progress=workers_pb2.ReportProgress(
            job_id=self.job_id, attempt=self.attempt,
            progress=types_pb2.Progress(current=current, total=total, message=message or ""))))

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id!r}, name={self.name!r}, attempt={self.attempt})"

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` (sync or async) once for this job, whatever the retries.

        If an earlier attempt recorded this step, its result comes back without calling `fn`.
        Otherwise `fn` runs, its result is committed (JSON, like job results), and only then
        returned. A step that raises is recorded as failed for this attempt, and the error
        propagates. A name used again in one run gets its own checkpoint: "fetch", "fetch#2"...
        """
        key = self._step_key(name)
        if key in self._recorded:
            return self._recorded[key]
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            await self._step_failed(key, exc)
            raise
        return await self._step_succeeded(key, value)

    # The parts of a step, shared with the blocking step of perdure.sync.

    def _step_key(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a step needs a non-empty name, got {name!r}")
        return self._checkpoint(name)

    async def _step_failed(self, key: str, exc: Exception) -> None:
        await self._record(key, None, types_pb2.JobError(type=type(exc).__qualname__, message=str(exc)))

    async def _step_succeeded(self, key: str, value: Any) -> Any:
        try:
            payload = _serde.encode_result(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the result of step {key!r} must be JSON-serialisable: {exc}") from None
        if not await self._record(key, payload, None):
            raise StepNotRecordedError(
                f"step {key!r} of job {self.job_id} was not recorded: attempt {self.attempt} is no longer "
                "the job's current one (it timed out, was cancelled or was taken over)")
        # What a replay would return, so that a first run and a replay see the same value.
        return _serde.decode_result(payload)

    async def sleep(self, seconds: float) -> None:
        """Sleep durably: the job is suspended, its worker slot freed, and it resumes after
        `seconds` on any worker, replaying the steps before this point. Costs nothing meanwhile."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"sleep takes a number of seconds, not negative, got {seconds!r}")
        await self._park("sleep", lambda: time.time() + seconds)

    async def sleep_until(self, when: datetime) -> None:
        """Sleep durably until `when` (an aware datetime); see sleep()."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise ValueError(f"sleep_until takes a datetime with a time zone, got {when!r}")
        await self._park("sleep", when.timestamp)

    async def wait_for_event(self, name: str, timeout: float | None = None) -> Any:
        """Wait durably for the event `name` (see Perdure.emit_event) and return its payload.

        An event emitted earlier, even before this job started, is returned at once. Otherwise
        the job is suspended (holding no worker) until the event is emitted; after `timeout`
        seconds without it, EventTimeoutError is raised. What was received is a checkpoint:
        a retried job gets the same payload, even if the event was emitted again since.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"an event needs a non-empty name, got {name!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
            raise ValueError(f"timeout must be a number of seconds, not negative, got {timeout!r}")
        key = self._checkpoint(f"event:{name}")
        if key in self._recorded:
            return self._recorded[key]
        deadline_key = f"{key}/deadline"
        if deadline_key in self._recorded:
            deadline = self._recorded[deadline_key]
        else:
            deadline = None if timeout is None else round(time.time() + timeout, 3)
            await self._checkpoint_value(deadline_key, deadline)
        payload = await self._get_event(name)
        if payload is not None:
            if not await self._record(key, payload, None):
                raise StepNotRecordedError(f"the receipt of event {name!r} by job {self.job_id} was not recorded")
            return _serde.decode_result(payload)
        if deadline is not None and time.time() >= deadline:
            raise EventTimeoutError(f"event {name!r} did not come within the timeout of job {self.job_id}'s wait")
        raise Suspend(deadline, event=name)

    async def _checkpoint_value(self, key: str, value: Any) -> None:
        if not await self._record(key, _serde.encode_result(value), None):
            raise StepNotRecordedError(f"checkpoint {key!r} of job {self.job_id} was not recorded")

    async def _park(self, name: str, wake_at: Callable[[], float]) -> None:
        # The wake-up time is a checkpoint: a resumed run finds it passed and goes on.
        key = self._checkpoint(name)
        if key in self._recorded:
            wake = float(self._recorded[key])
        else:
            wake = round(wake_at(), 3)
            await self._checkpoint_value(key, wake)
        if wake > time.time():
            raise Suspend(wake)

    def _checkpoint(self, name: str) -> str:
        """The checkpoint name for the n-th use of `name` in this run: name, name#2, ..."""
        count = self._seen[name] = self._seen.get(name, 0) + 1
        return name if count == 1 else f"{name}#{count}"


class JobLog:
    """Log records kept with the job (not only in this process's log)."""

    def __init__(self, context: JobContext) -> None:
        self._context = context

    def debug(self, message: str) -> None:
        self._write(types_pb2.LOG_LEVEL_DEBUG, message)

    def info(self, message: str) -> None:
        self._write(types_pb2.LOG_LEVEL_INFO, message)

    def warning(self, message: str) -> None:
        self._write(types_pb2.LOG_LEVEL_WARNING, message)

    def error(self, message: str) -> None:
        self._write(types_pb2.LOG_LEVEL_ERROR, message)

    def _write(self, level: types_pb2.LogLevel.ValueType, message: str) -> None:
        context = self._context
        context._send(workers_pb2.WorkerMessage(log=workers_pb2.ReportLog(
            job_id=context.job_id,
            record=types_pb2.LogRecord(attempt=context.attempt, level=level, message=str(message)))))


class Suspend(BaseException):
    """Raised by ctx.sleep and ctx.wait_for_event to park the job; a BaseException, so that
    `except Exception` in a handler does not swallow it. The worker turns it into a Suspend
    outcome: until a time, or until an event (at the latest until the time, if any)."""

    def __init__(self, until: float | None, event: str = "") -> None:
        super().__init__(until, event)
        self.until = until
        self.event = event


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("perdure_job_context", default=None)


def context() -> JobContext:
    """The context of the job the calling handler runs for."""
    job = _current.get()
    if job is None:
        raise NotInJobError()
    return job


def current_context() -> JobContext | None:
    return _current.get()
