"""Database rows and domain values to and from protobuf messages."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from perdure.v1 import admin_pb2, jobs_pb2, types_pb2
from perdured import validation
from perdured.events import JobEvent

STATES = {name: value for value, name in validation.STATE_NAMES.items()}
BACKOFFS = {
    "exponential": types_pb2.BACKOFF_EXPONENTIAL,
    "linear": types_pb2.BACKOFF_LINEAR,
    "fixed": types_pb2.BACKOFF_FIXED,
}
OUTCOMES = {
    "running": types_pb2.ATTEMPT_OUTCOME_RUNNING,
    "succeeded": types_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    "failed": types_pb2.ATTEMPT_OUTCOME_FAILED,
    "timed_out": types_pb2.ATTEMPT_OUTCOME_TIMED_OUT,
    "worker_lost": types_pb2.ATTEMPT_OUTCOME_WORKER_LOST,
    "lease_expired": types_pb2.ATTEMPT_OUTCOME_LEASE_EXPIRED,
    "cancelled": types_pb2.ATTEMPT_OUTCOME_CANCELLED,
    "released": types_pb2.ATTEMPT_OUTCOME_RELEASED,
    "suspended": types_pb2.ATTEMPT_OUTCOME_SUSPENDED,
}
EVENT_KINDS = {
    "enqueued": jobs_pb2.JOB_EVENT_KIND_ENQUEUED,
    "started": jobs_pb2.JOB_EVENT_KIND_STARTED,
    "succeeded": jobs_pb2.JOB_EVENT_KIND_SUCCEEDED,
    "attempt_failed": jobs_pb2.JOB_EVENT_KIND_ATTEMPT_FAILED,
    "dead": jobs_pb2.JOB_EVENT_KIND_DEAD,
    "cancelled": jobs_pb2.JOB_EVENT_KIND_CANCELLED,
    "retried": jobs_pb2.JOB_EVENT_KIND_RETRIED,
    "suspended": jobs_pb2.JOB_EVENT_KIND_SUSPENDED,
    "progress": jobs_pb2.JOB_EVENT_KIND_PROGRESS,
    "log": jobs_pb2.JOB_EVENT_KIND_LOG,
    "resumed": jobs_pb2.JOB_EVENT_KIND_RESUMED,
}
LOG_LEVELS = {value: name.removeprefix("LOG_LEVEL_").lower() for name, value in types_pb2.LogLevel.items() if value}


# Built from the fields directly: protobuf's FromDatetime costs more than twice as much, and
# every job sent out carries several timestamps.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@overload
def timestamp(value: datetime | float) -> Timestamp: ...
@overload
def timestamp(value: None) -> None: ...
def timestamp(value: datetime | float | None) -> Timestamp | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        since = value - (_EPOCH if value.tzinfo is not None else _EPOCH.replace(tzinfo=None))
        return Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)
    message = Timestamp()
    fill_timestamp(message, value)
    return message


def fill_timestamp(target: Timestamp, value: float) -> None:
    """Set `target`, a field of a message, to the Unix time `value` in place: cheaper than
    building a Timestamp and copying it in (once per job assigned)."""
    seconds = math.floor(value)
    target.seconds, target.nanos = seconds, int((value - seconds) * 1e9)


def duration(value: timedelta | float) -> Duration:
    message = Duration()
    if isinstance(value, timedelta):
        message.FromTimedelta(value)
    else:
        message.FromNanoseconds(int(round(value * 1e9)))
    return message


def error(value: dict[str, Any] | None) -> types_pb2.JobError | None:
    if not value:
        return None
    return types_pb2.JobError(
        type=value.get("type") or "", message=value.get("message") or "",
        traceback=value.get("traceback") or "", non_retryable=bool(value.get("non_retryable")),
    )


def storable(text: str) -> str:
    """Text as PostgreSQL can store it (in text and jsonb): without NUL characters."""
    return text.replace("\x00", "\ufffd")


def error_dict(value: types_pb2.JobError) -> dict[str, Any]:
    return {"type": storable(value.type), "message": storable(value.message),
            "traceback": storable(value.traceback), "non_retryable": value.non_retryable}


def attempt(row: dict[str, Any]) -> types_pb2.Attempt:
    return types_pb2.Attempt(
        number=row["number"], worker_id=row["worker_id"] or "", sidecar_id=row["sidecar_id"] or "",
        started_at=timestamp(row["started_at"]), ended_at=timestamp(row["ended_at"]),
        outcome=OUTCOMES[row["outcome"]], error=error(row["error"]),
    )


STEP_STATUSES = {"succeeded": types_pb2.STEP_STATUS_SUCCEEDED, "failed": types_pb2.STEP_STATUS_FAILED}


def step(row: dict[str, Any]) -> types_pb2.Step:
    message = types_pb2.Step(
        name=row["name"], status=STEP_STATUSES[row["status"]], attempt=row["attempt"],
        error=error(row["error"]), recorded_at=timestamp(row["recorded_at"]),
    )
    if row["result_encoding"] is not None:
        message.result.CopyFrom(types_pb2.Payload(data=row["result"] or b"", encoding=row["result_encoding"]))
    return message


def progress(value: dict[str, Any]) -> types_pb2.Progress:
    return types_pb2.Progress(current=value.get("current", 0.0), total=value.get("total", 0.0),
                              message=value.get("message") or "", at=timestamp(value.get("at")))


def log_record(level: str, message: str, attempt: int, at: datetime | float | None) -> types_pb2.LogRecord:
    levels = {name: value for value, name in LOG_LEVELS.items()}
    return types_pb2.LogRecord(attempt=attempt, level=levels.get(level, types_pb2.LOG_LEVEL_UNSPECIFIED),
                               message=message, at=timestamp(at))


def job(row: dict[str, Any], attempts: list[dict[str, Any]] | None = None,
        steps: list[dict[str, Any]] | None = None, logs: list[dict[str, Any]] | None = None,
        children: list[dict[str, Any]] | None = None) -> types_pb2.Job:
    message = types_pb2.Job(
        id=str(row["id"]),
        namespace=row["namespace"],
        name=row["name"],
        state=STATES[row["state"]],
        attempt=row["attempt"],
        payload=types_pb2.Payload(data=row["payload"], encoding=row["payload_encoding"]),
        error=error(row["error"]),
        idempotency_key=row["idempotency_key"] or "",
        retry=types_pb2.RetryPolicy(
            max_attempts=row["max_attempts"], backoff=BACKOFFS[row["backoff"]],
            initial_delay=duration(row["initial_delay"]), max_delay=duration(row["max_delay"]),
            jitter=row["jitter"],
        ),
        timeout=duration(row["timeout"]),
        created_at=timestamp(row["created_at"]),
        run_at=timestamp(row["run_at"]),
        started_at=timestamp(row["started_at"]),
        finished_at=timestamp(row["finished_at"]),
        parent_id=str(row["parent_id"]) if row["parent_id"] else "",
        priority=row.get("priority") or 0,
        labels=row.get("labels") or {},
        concurrency_key=row.get("concurrency_key") or "",
        start_by=timestamp(row.get("start_by")),
        deadline=timestamp(row.get("deadline_at")),
    )
    if row.get("max_duration") is not None:
        message.max_duration.CopyFrom(duration(row["max_duration"]))
    if row["result_encoding"] is not None:
        message.result.CopyFrom(types_pb2.Payload(data=row["result"] or b"", encoding=row["result_encoding"]))
    if attempts:
        message.attempts.extend(attempt(a) for a in attempts)
    if steps:
        message.steps.extend(step(s) for s in steps)
    if row.get("progress"):
        message.progress.CopyFrom(progress(row["progress"]))
    if logs:
        message.logs.extend(log_record(r["level"], r["message"], r["attempt"], r["at"]) for r in logs)
    if row.get("waiting_for") and row["state"] == "suspended":
        waiting = row["waiting_for"]
        message.waiting_for = waiting if waiting.startswith("job:") else f"event:{waiting}"
    if children:
        message.children.extend(job(child) for child in children)
    return message


def enqueue_answers(results: list[tuple[dict[str, Any], bool]], brief: bool) -> jobs_pb2.EnqueueBatchResponse:
    """The answer to a batch enqueue, each job in full or in brief (EnqueueBatchRequest.brief:
    from store.BRIEF_JOB_COLUMNS), filled in place: building each message on its own and
    copying it in cost more than the rest of the answer."""
    response = jobs_pb2.EnqueueBatchResponse()
    add = response.results.add
    if not brief:
        for row, deduplicated in results:
            add(job=job(row), deduplicated=deduplicated)
        return response
    # The jobs of a batch mostly share their run time (one statement's now()): each is converted once.
    stamps: dict[datetime, Timestamp] = {}
    for row, deduplicated in results:
        brief_job(add(deduplicated=deduplicated).job, row, stamps)
    return response


def brief_job(target: types_pb2.Job, row: dict[str, Any], stamps: dict[datetime, Timestamp] | None = None) -> None:
    """Fill `target` with a just enqueued job in brief (EnqueueRequest.brief): id, namespace,
    name, state and run_at; `stamps` keeps run times already converted."""
    target.id = str(row["id"])
    target.namespace = row["namespace"]
    target.name = row["name"]
    target.state = STATES[row["state"]]
    run_at = row["run_at"]
    if stamps is None:
        target.run_at.CopyFrom(timestamp(run_at))
        return
    if (stamp := stamps.get(run_at)) is None:
        stamp = stamps[run_at] = timestamp(run_at)
    target.run_at.CopyFrom(stamp)


def awaited_job(target: types_pb2.Job, row: dict[str, Any]) -> None:
    """Fill `target` with a job in brief for the caller awaiting it (AwaitJobRequest.brief): id,
    namespace, name, state and attempt, its result and its error. A ninth of the work of `job`."""
    target.id = str(row["id"])
    target.namespace = row["namespace"]
    target.name = row["name"]
    target.state = STATES[row["state"]]
    target.attempt = row["attempt"]
    if row["result_encoding"] is not None:
        target.result.data = row["result"] or b""
        target.result.encoding = row["result_encoding"]
    if (failure := error(row["error"])) is not None:
        target.error.CopyFrom(failure)


def event(value: JobEvent) -> jobs_pb2.JobEvent:
    message = jobs_pb2.JobEvent(
        kind=EVENT_KINDS.get(value.kind, jobs_pb2.JOB_EVENT_KIND_UNSPECIFIED),
        job_id=str(value.job_id), namespace=value.namespace, name=value.name,
        attempt=value.attempt, state=STATES.get(value.state, types_pb2.JOB_STATE_UNSPECIFIED),
        at=timestamp(value.at),
    )
    if value.error_type is not None:
        message.error.CopyFrom(types_pb2.JobError(type=value.error_type, message=value.error_message or ""))
    if value.kind in ("enqueued", "attempt_failed", "retried", "suspended", "resumed"):
        message.run_at.FromNanoseconds(int((value.at + value.run_in) * 1e9))
    if value.progress is not None:
        message.progress.CopyFrom(progress(value.progress))
    if value.log is not None:
        message.log.CopyFrom(log_record(value.log["level"], value.log["message"], value.attempt, value.at))
    return message


def function_stats(row: dict[str, Any], window: float) -> admin_pb2.FunctionStats:
    ended = row["succeeded_recently"] + row["dead_recently"] + row["cancelled_recently"]
    attempts_ended = row["succeeded_recently"] + row["failed_recently"]
    message = admin_pb2.FunctionStats(
        namespace=row["namespace"], name=row["name"], pending=row["pending"], running=row["running"],
        suspended=row["suspended"], dead=row["dead"], enqueued_recently=row["enqueued_recently"],
        started_recently=row["started_recently"], succeeded_recently=row["succeeded_recently"],
        failed_recently=row["failed_recently"], dead_recently=row["dead_recently"],
        cancelled_recently=row["cancelled_recently"], throughput=ended / window,
        failure_rate=row["failed_recently"] / attempts_ended if attempts_ended else 0.0,
    )
    if row["oldest_pending_age"] is not None:
        message.oldest_pending_age.CopyFrom(duration(max(row["oldest_pending_age"], 0.0)))
    return message


def worker(row: dict[str, Any]) -> admin_pb2.WorkerInfo:
    return admin_pb2.WorkerInfo(
        id=row["id"], sidecar_id=row["sidecar_id"], namespace=row["namespace"], worker_name=row["worker_name"],
        sdk=row["sdk"], names=row["names"], concurrency=row["concurrency"], in_flight=row["in_flight"],
        connected_at=timestamp(row["connected_at"]), last_seen=timestamp(row["last_seen"]), draining=row["draining"],
    )


ACTIVITY_COUNTS = ("enqueued", "started", "succeeded", "failed", "dead", "cancelled")


def activity(rows: list[dict[str, Any]]) -> admin_pb2.GetActivityResponse:
    """function_activity rows (by namespace, name and minute) as one entry per function."""
    response = admin_pb2.GetActivityResponse(start=timestamp(rows[0]["start"]), at=timestamp(rows[0]["at"]))
    current: admin_pb2.FunctionActivity | None = None
    for row in rows:
        if row["minute"] is None:  # nothing happened within the window
            continue
        if current is None or (current.namespace, current.name) != (row["namespace"], row["name"]):
            current = response.functions.add(namespace=row["namespace"], name=row["name"])
        current.buckets.add(minute=timestamp(row["minute"]), **{count: row[count] for count in ACTIVITY_COUNTS})
    return response
