"""Handles on enqueued jobs: wait for the result, read the status and history, cancel."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from perdure import _serde
from perdure._context import Suspend, current_context
from perdure._errors import JobCancelledError, JobDeadError
from perdure.v1 import jobs_pb2, types_pb2

if TYPE_CHECKING:
    from perdure._client import Perdure
    from perdure._context import JobContext

STATES = {value: name.removeprefix("JOB_STATE_").lower() for name, value in types_pb2.JobState.items() if value}
OUTCOMES = {value: name.removeprefix("ATTEMPT_OUTCOME_").lower()
            for name, value in types_pb2.AttemptOutcome.items()}
STEP_STATUSES = {value: name.removeprefix("STEP_STATUS_").lower() for name, value in types_pb2.StepStatus.items()}
LOG_LEVELS = {value: name.removeprefix("LOG_LEVEL_").lower() for name, value in types_pb2.LogLevel.items()}
BACKOFFS = {value: name.removeprefix("BACKOFF_").lower() for name, value in types_pb2.Backoff.items()}
# AwaitJob blocks at most this long per call; result() loops.
_AWAIT_SLICE = 60.0


@dataclass(frozen=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str = ""
    non_retryable: bool = False


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    outcome: str  # running | succeeded | failed | timed_out | worker_lost | lease_expired | cancelled | released
    started_at: datetime | None
    ended_at: datetime | None
    worker_id: str
    sidecar_id: str
    error: ErrorInfo | None


@dataclass(frozen=True)
class StepInfo:
    name: str
    status: str  # succeeded | failed
    attempt: int
    result: Any
    error: ErrorInfo | None
    recorded_at: datetime | None


@dataclass(frozen=True)
class ProgressInfo:
    current: float
    total: float
    message: str
    at: datetime | None


@dataclass(frozen=True)
class LogInfo:
    attempt: int
    level: str  # debug | info | warning | error
    message: str
    at: datetime | None


@dataclass(frozen=True)
class JobDetails:
    """Everything GetJob returns, in Python terms (times as aware datetimes, durations in seconds)."""

    id: str
    namespace: str
    name: str
    status: str
    attempt: int
    max_attempts: int
    backoff: str
    initial_delay: float
    max_delay: float
    jitter: float
    timeout: float
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any
    error: ErrorInfo | None
    idempotency_key: str | None
    parent_id: str | None
    created_at: datetime | None
    run_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    attempts: list[AttemptRecord]
    steps: list[StepInfo]
    progress: ProgressInfo | None
    logs: list[LogInfo]
    # A suspended job's wait: "event:<name>", "job:<child id>", or None (a sleep, until run_at).
    waiting_for: str | None
    children: list[JobDetails]
    priority: int
    labels: dict[str, str]
    concurrency_key: str | None
    # The cancellation policies: cancelled if not started by start_by, or not ended by
    # deadline (max_duration after its first start).
    start_by: datetime | None
    max_duration: float | None
    deadline: datetime | None


def _time(job: Any, field: str) -> datetime | None:
    return getattr(job, field).ToDatetime(tzinfo=UTC) if job.HasField(field) else None


def _error(job: Any) -> ErrorInfo | None:
    if not job.HasField("error"):
        return None
    e = job.error
    return ErrorInfo(e.type, e.message, e.traceback, e.non_retryable)


def details_from(job: types_pb2.Job) -> JobDetails:
    args, kwargs = _serde.decode_call(job.payload)
    return JobDetails(
        id=job.id, namespace=job.namespace, name=job.name, status=STATES.get(job.state, "unknown"),
        attempt=job.attempt, max_attempts=job.retry.max_attempts, backoff=BACKOFFS[job.retry.backoff],
        initial_delay=job.retry.initial_delay.ToNanoseconds() / 1e9,
        max_delay=job.retry.max_delay.ToNanoseconds() / 1e9, jitter=job.retry.jitter,
        timeout=job.timeout.ToNanoseconds() / 1e9, args=args, kwargs=kwargs,
        result=_serde.decode_result(job.result) if job.HasField("result") else None,
        error=_error(job), idempotency_key=job.idempotency_key or None, parent_id=job.parent_id or None,
        created_at=_time(job, "created_at"), run_at=_time(job, "run_at"),
        started_at=_time(job, "started_at"), finished_at=_time(job, "finished_at"),
        attempts=[
            AttemptRecord(
                number=a.number, outcome=OUTCOMES.get(a.outcome, "unknown"),
                started_at=_time(a, "started_at"), ended_at=_time(a, "ended_at"),
                worker_id=a.worker_id, sidecar_id=a.sidecar_id, error=_error(a),
            )
            for a in job.attempts
        ],
        steps=[
            StepInfo(
                name=step.name, status=STEP_STATUSES.get(step.status, "unknown"), attempt=step.attempt,
                result=_serde.decode_result(step.result) if step.HasField("result") else None,
                error=_error(step), recorded_at=_time(step, "recorded_at"),
            )
            for step in job.steps
        ],
        progress=ProgressInfo(job.progress.current, job.progress.total, job.progress.message,
                              _time(job.progress, "at")) if job.HasField("progress") else None,
        logs=[LogInfo(r.attempt, LOG_LEVELS.get(r.level, "info"), r.message, _time(r, "at")) for r in job.logs],
        waiting_for=job.waiting_for or None,
        children=[details_from(child) for child in job.children],
        priority=job.priority,
        labels=dict(job.labels),
        concurrency_key=job.concurrency_key or None,
        start_by=_time(job, "start_by"),
        max_duration=job.max_duration.ToNanoseconds() / 1e9 if job.HasField("max_duration") else None,
        deadline=_time(job, "deadline"),
    )


class JobHandle:
    """A job enqueued through a sidecar. Cheap to make: `perdure.handle(job_id)`."""

    def __init__(self, client: Perdure, job_id: str, *, name: str = "", deduplicated: bool = False,
                 parent: JobContext | None = None) -> None:
        self._client = client
        self.id = job_id
        self.name = name
        self.deduplicated = deduplicated
        # Set when a handler spawned this job: awaiting it there suspends the parent.
        self._parent = parent

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, name={self.name!r})"

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Raises JobDeadError (with the last error and the attempt count) if it failed for
        good, JobCancelledError if it was cancelled, TimeoutError if `timeout` seconds pass.
        """
        if self._parent is not None and current_context() is self._parent:
            return await self._await_as_parent()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            wait = _AWAIT_SLICE if deadline is None else max(0.0, min(_AWAIT_SLICE, deadline - loop.time()))
            request = jobs_pb2.AwaitJobRequest(id=self.id, namespace=self._client.namespace, brief=True)
            request.wait.FromNanoseconds(int(wait * 1e9))
            response = await self._client._call("AwaitJob", request, timeout=wait + 30)
            if response.done:
                return self._outcome(response.job)
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"job {self.id} did not finish within {timeout} s "
                                   f"(it is {STATES.get(response.job.state, 'unknown')})")

    async def _await_as_parent(self) -> Any:
        """A parent awaiting its child: the outcome is a checkpoint; until the child ends the
        parent is suspended, holding no worker slot, and it is woken when the child ends."""
        parent = self._parent
        assert parent is not None
        key = f"await:{self.id}"
        if key not in parent._recorded:
            request = jobs_pb2.AwaitJobRequest(id=self.id, namespace=self._client.namespace, brief=True)
            request.wait.FromNanoseconds(0)
            response = await self._client._call("AwaitJob", request)
            if not response.done:
                raise Suspend(None, event=f"job:{self.id}")
            job = response.job
            outcome = {"state": STATES.get(job.state), "id": job.id, "name": job.name, "attempt": job.attempt,
                       "result": _serde.decode_result(job.result) if job.HasField("result") else None,
                       "error": {"type": job.error.type, "message": job.error.message,
                                 "traceback": job.error.traceback}}
            await parent._checkpoint_value(key, outcome)
            parent._recorded[key] = outcome
        outcome = parent._recorded[key]
        if outcome["state"] == "success":
            return outcome["result"]
        error = outcome["error"]
        info = dict(job_id=outcome["id"], attempts=outcome["attempt"], error_type=error["type"],
                    error_message=error["message"], traceback=error["traceback"])
        if outcome["state"] == "cancelled":
            raise JobCancelledError(f"job {outcome['id']} ({outcome['name']}) was cancelled", **info)
        raise JobDeadError(f"job {outcome['id']} ({outcome['name']}) is dead after {outcome['attempt']} attempt(s): "
                           f"{error['type']}: {error['message']}", **info)

    def _outcome(self, job: types_pb2.Job) -> Any:
        if job.state == types_pb2.JOB_STATE_SUCCESS:
            return _serde.decode_result(job.result)
        kind, message = (
            (JobCancelledError, f"job {job.id} ({job.name}) was cancelled")
            if job.state == types_pb2.JOB_STATE_CANCELLED
            else (JobDeadError, f"job {job.id} ({job.name}) is dead after {job.attempt} attempt(s): "
                                f"{job.error.type}: {job.error.message}")
        )
        raise kind(message, job_id=job.id, attempts=job.attempt, error_type=job.error.type,
                   error_message=job.error.message, traceback=job.error.traceback)

    async def status(self) -> str:
        """pending, running, suspended, success, dead or cancelled."""
        return (await self.details()).status

    async def details(self) -> JobDetails:
        response = await self._client._call(
            "GetJob", jobs_pb2.GetJobRequest(id=self.id, namespace=self._client.namespace))
        return details_from(response.job)

    async def cancel(self) -> bool:
        """Cancel the job if it has not finished; a running handler is told to stop.
        Returns False when it had already finished."""
        response = await self._client._call(
            "CancelJob", jobs_pb2.CancelJobRequest(id=self.id, namespace=self._client.namespace))
        return response.cancelled

