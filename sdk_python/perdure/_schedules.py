"""Cron schedules: `perdure.schedules.create(...)` and friends, and `durable(..., schedule=...)`.

A schedule enqueues one job of a function at every tick of a cron expression, evaluated in
a time zone, whichever sidecars are running (exactly one job per tick).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from perdure import _serde
from perdure._errors import NotStartedError, ScheduleExistsError, ScheduleNotFoundError
from perdure._options import BACKOFFS, JobOptions
from perdure.v1 import jobs_pb2, schedules_pb2, schedules_pb2_grpc

if TYPE_CHECKING:
    from perdure._client import DurableFunction, Perdure

MISSED = {
    "once": schedules_pb2.MISSED_TICK_POLICY_ONCE,
    "skip": schedules_pb2.MISSED_TICK_POLICY_SKIP,
    "all": schedules_pb2.MISSED_TICK_POLICY_ALL,
}
_MISSED_NAMES = {value: name for name, value in MISSED.items()} | {schedules_pb2.MISSED_TICK_POLICY_UNSPECIFIED: "once"}
_BACKOFF_NAMES = {value: name for name, value in BACKOFFS.items()}
# Options each tick sets for itself.
_PER_TICK = ("idempotency_key", "delay", "run_at")


@dataclass(frozen=True)
class Schedule:
    """A cron schedule as the sidecar holds it. Times are aware datetimes (UTC)."""

    name: str
    function: str
    cron: str
    timezone: str
    # What happens to ticks missed while no sidecar could fire them: once, skip or all.
    missed: str
    paused: bool
    # The next tick; None while paused.
    next_run_at: datetime | None
    # The last tick that enqueued a job, and that job's id.
    last_run_at: datetime | None
    last_job_id: str | None
    # The arguments and options of each tick's job.
    args: list[Any]
    kwargs: dict[str, Any]
    options: JobOptions
    namespace: str
    created_at: datetime | None
    updated_at: datetime | None
    # Why the last tick enqueued no job, if it enqueued none.
    last_error: str | None


@dataclass(frozen=True)
class ScheduleSpec:
    """`durable(..., schedule=..., timezone=..., missed=...)`: kept with the function until the
    process starts serving it."""

    cron: str
    timezone: str
    missed: str


def check_spec(name: str, cron: Any, timezone: Any, missed: Any) -> ScheduleSpec:
    if not isinstance(cron, str) or not cron.strip():
        raise ValueError(f"the schedule of {name!r} must be a cron expression such as '*/5 * * * *', got {cron!r}")
    if not isinstance(timezone, str) or not timezone:
        raise ValueError(f"the time zone of {name!r} must be an IANA name such as 'Europe/Paris', got {timezone!r}")
    _missed(missed)
    return ScheduleSpec(cron, timezone, missed)


class Schedules:
    """The cron schedules of the client's namespace: `perdure.schedules`.

        await perdure.schedules.create("nightly-report", build_report, "0 3 * * *",
                                       timezone="Europe/Paris", args=("daily",))

    Each tick enqueues one job of `function` with `args`/`kwargs` and the job options given
    (max_attempts, timeout, priority, labels, ...), run at the tick, labelled
    `schedule=<name>`. Ticks missed while no sidecar was running follow `missed`:
    "once" (the default: one job for the most recent missed tick), "skip" (none) or "all"
    (one per missed tick). A tick counts as missed when it is fired more than 60 seconds
    late, or when a later tick is due too.
    """

    def __init__(self, client: Perdure) -> None:
        self._client = client
        self._stub: schedules_pb2_grpc.SchedulesStub | None = None
        self._channel: grpc.aio.Channel | None = None

    async def create(self, name: str, function: str | DurableFunction, cron: str, *, timezone: str = "UTC",
                     args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, missed: str = "once",
                     paused: bool | None = None, replace: bool = False, **options: Any) -> Schedule:
        """Create the schedule `name`: a job of `function` (a name, or a durable function whose
        options it takes) at every tick of `cron`, in `timezone`.

        `cron` has five fields (minute hour day-of-month month day-of-week), or six with
        seconds first ("*/10 * * * * *": every ten seconds); @hourly, @daily and the like work
        too. Raises ScheduleExistsError if the name is taken, unless `replace` is set: then the
        schedule takes the new settings, and keeps its next tick if its cron and time zone are
        unchanged (so that creating it on every start is harmless). `paused` creates it paused;
        when replacing, None (the default) keeps it as it is.
        """
        function_name, job_options = _function(function, options)
        request = schedules_pb2.CreateScheduleRequest(
            namespace=self._client.namespace, name=_name(name), cron=_text(cron, "cron"),
            timezone=_text(timezone, "timezone"), missed=_missed(missed), replace=bool(replace),
            job=self._template(function_name, args, kwargs, job_options),
        )
        if paused is not None:
            request.paused = bool(paused)
        response = await self._call("CreateSchedule", request)
        return schedule_from(response.schedule)

    async def get(self, name: str) -> Schedule:
        """The schedule `name`, with its next run time; ScheduleNotFoundError if there is none."""
        response = await self._call("GetSchedule", schedules_pb2.GetScheduleRequest(
            namespace=self._client.namespace, name=_name(name)))
        return schedule_from(response.schedule)

    async def list(self, function: str | DurableFunction | None = None) -> list[Schedule]:
        """Every schedule of the namespace (of `function` only, if given), by name."""
        function_name = function if isinstance(function, str) or function is None else function.name
        schedules: list[Schedule] = []
        token = ""
        while True:
            response = await self._call("ListSchedules", schedules_pb2.ListSchedulesRequest(
                namespace=self._client.namespace, function=function_name or "", page_size=1000, page_token=token))
            schedules.extend(schedule_from(s) for s in response.schedules)
            token = response.next_page_token
            if not token:
                return schedules

    async def update(self, name: str, *, cron: str | None = None, timezone: str | None = None,
                     missed: str | None = None, function: str | DurableFunction | None = None,
                     args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
                     **options: Any) -> Schedule:
        """Change what is given. A new cron or time zone moves the next tick to the first one
        from now. `function`, `args`, `kwargs` and job options change the job of the next ticks;
        what is not given stays as it was."""
        request = schedules_pb2.UpdateScheduleRequest(namespace=self._client.namespace, name=_name(name))
        if cron is not None:
            request.cron = _text(cron, "cron")
        if timezone is not None:
            request.timezone = _text(timezone, "timezone")
        if missed is not None:
            request.missed = _missed(missed)
        if function is not None or args is not None or kwargs is not None or options:
            current = (await self._call("GetSchedule", schedules_pb2.GetScheduleRequest(
                namespace=self._client.namespace, name=request.name))).schedule.job
            current_args, current_kwargs = _serde.decode_call(current.payload)
            base = _options_from(current)
            if function is None:
                function_name, job_options = current.name, base.merged(**options)
            else:
                function_name, job_options = _function(function, options, base)
            request.job.CopyFrom(self._template(function_name, current_args if args is None else args,
                                                current_kwargs if kwargs is None else kwargs, job_options))
        response = await self._call("UpdateSchedule", request)
        return schedule_from(response.schedule)

    async def pause(self, name: str) -> Schedule:
        """Stop the ticks until `resume`. Pausing a paused schedule changes nothing."""
        response = await self._call("PauseSchedule", schedules_pb2.PauseScheduleRequest(
            namespace=self._client.namespace, name=_name(name)))
        return schedule_from(response.schedule)

    async def resume(self, name: str) -> Schedule:
        """Tick again, from the first tick after now: ticks that fell during the pause do not run."""
        response = await self._call("ResumeSchedule", schedules_pb2.ResumeScheduleRequest(
            namespace=self._client.namespace, name=_name(name)))
        return schedule_from(response.schedule)

    async def delete(self, name: str) -> bool:
        """Delete the schedule (jobs it enqueued stay). Returns False if there was none."""
        response = await self._call("DeleteSchedule", schedules_pb2.DeleteScheduleRequest(
            namespace=self._client.namespace, name=_name(name)))
        return response.deleted

    # -- plumbing ---------------------------------------------------------------------------------

    def _template(self, function: str, args: Iterable[Any], kwargs: dict[str, Any] | None,
                  options: JobOptions) -> jobs_pb2.EnqueueRequest:
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict, got {kwargs!r}")
        payload = _serde.encode_call(function, tuple(args), kwargs or {})
        return options.request(namespace=self._client.namespace, name=function, payload=payload)

    async def _call(self, method: str, request: Any) -> Any:
        from perdure._client import _translate

        channel = self._client._channel
        if channel is None:
            raise NotStartedError()
        if self._stub is None or self._channel is not channel:
            self._stub, self._channel = schedules_pb2_grpc.SchedulesStub(channel), channel
        try:
            return await getattr(self._stub, method)(request, timeout=30.0, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise ScheduleNotFoundError(exc.details()) from None
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                raise ScheduleExistsError(exc.details()) from None
            raise _translate(exc.code(), exc.details() or "") from None


def schedule_from(message: schedules_pb2.Schedule) -> Schedule:
    args, kwargs = _serde.decode_call(message.job.payload)
    return Schedule(
        name=message.name, function=message.job.name, cron=message.cron, timezone=message.timezone,
        missed=_MISSED_NAMES.get(message.missed, "once"), paused=message.paused,
        next_run_at=_time(message, "next_run_at"), last_run_at=_time(message, "last_run_at"),
        last_job_id=message.last_job_id or None, args=args, kwargs=kwargs, options=_options_from(message.job),
        namespace=message.namespace, created_at=_time(message, "created_at"),
        updated_at=_time(message, "updated_at"), last_error=message.last_error or None,
    )


def _function(function: Any, options: dict[str, Any], base: JobOptions | None = None) -> tuple[str, JobOptions]:
    """The function's name and the job options of its ticks: its own (a durable function's),
    then `options`."""
    from perdure._client import DurableFunction

    per_tick = sorted(set(options) & set(_PER_TICK))
    if per_tick:
        raise ValueError(f"a schedule's jobs cannot take {', '.join(per_tick)}: each tick sets its own")
    base = base or JobOptions()
    if isinstance(function, DurableFunction):
        own = {f: v for f, v in vars(function.default_options).items() if v is not None}
        return function.name, base.merged(**own).merged(**options)
    if not isinstance(function, str) or not function.strip():
        raise ValueError(f"function must be a durable function or a non-empty name, got {function!r}")
    return function, base.merged(**options)


def _options_from(job: jobs_pb2.EnqueueRequest) -> JobOptions:
    retry = job.retry
    return JobOptions(
        max_attempts=retry.max_attempts if retry.HasField("max_attempts") else None,
        backoff=_BACKOFF_NAMES.get(retry.backoff),
        initial_delay=retry.initial_delay.ToNanoseconds() / 1e9 if retry.HasField("initial_delay") else None,
        max_delay=retry.max_delay.ToNanoseconds() / 1e9 if retry.HasField("max_delay") else None,
        jitter=retry.jitter if retry.HasField("jitter") else None,
        timeout=job.timeout.ToNanoseconds() / 1e9 if job.HasField("timeout") else None,
        priority=job.priority or None,
        labels=dict(job.labels) or None,
    )


def _missed(value: Any) -> schedules_pb2.MissedTickPolicy.ValueType:
    if value not in MISSED:
        raise ValueError(f"missed must be one of {', '.join(MISSED)}, got {value!r}")
    return MISSED[value]


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a schedule needs a non-empty name, got {value!r}")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a string, got {value!r}")
    return value


def _time(message: Any, field: str) -> datetime | None:
    return getattr(message, field).ToDatetime(tzinfo=UTC) if message.HasField(field) else None
