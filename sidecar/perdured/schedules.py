"""Cron schedules: the Schedules service, and the loop that fires their ticks.

A schedule is a cron expression evaluated in a time zone, and a job template (a serialized
EnqueueRequest). Every sidecar runs `ScheduleRunner`. Each round it locks the due schedules
that no other sidecar holds (FOR UPDATE SKIP LOCKED), inserts the jobs of their ticks with
the same statement as Enqueue, and moves them to their next tick, in one transaction: a tick
makes one job however many sidecars run. Each job also carries the idempotency key
`schedule:<name>:<tick>`, so that even a tick fired twice could not make a second job.

Between rounds the loop sleeps until the earliest next tick of any schedule, at most the
safety-poll interval, and this sidecar's API wakes it when a schedule changes.

Missed ticks. A tick is missed when it is fired more than MISSED_GRACE seconds after its
time, or when a later tick is already due too: that only happens when no sidecar could fire
it (all were down, or the database was unreachable). The schedule's `missed` policy says
what happens then:

    once  (default) one job, for the most recent due tick; then on schedule again.
    skip  no job for missed ticks; on schedule again from the next tick (the most recent
          due tick still runs if it is itself less than MISSED_GRACE late).
    all   one job per missed tick, oldest first (at most CATCH_UP_BATCH per schedule and
          round, so that a long outage is caught up in steps).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, cast
from zoneinfo import ZoneInfo

import grpc
from croniter import CroniterBadDateError, CroniterError, croniter
from google.protobuf.message import DecodeError

from perdure.v1 import jobs_pb2, schedules_pb2, schedules_pb2_grpc
from perdured import convert, validation
from perdured.api import _errors_as_status
from perdured.logs import log
from perdured.rpc import abort
from perdured.store import ScheduleTicks, Store
from perdured.validation import InvalidArgument, NewJob

MISSED_GRACE = 60.0  # seconds a tick may be late before it counts as missed
CATCH_UP_BATCH = 100  # ticks per schedule and round, for `missed = all`
ROUND_SIZE = 100  # schedules per round (one transaction)
MAX_SCHEDULE_NAME = 200  # leaves room for the tick in the idempotency key
MAX_CRON_LENGTH = 255
MAX_TIMEZONE_LENGTH = 64
DEFAULT_TIMEZONE = "UTC"
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
SCHEDULE_LABEL = "schedule"

MISSED_POLICIES = {
    schedules_pb2.MISSED_TICK_POLICY_UNSPECIFIED: "once",
    schedules_pb2.MISSED_TICK_POLICY_ONCE: "once",
    schedules_pb2.MISSED_TICK_POLICY_SKIP: "skip",
    schedules_pb2.MISSED_TICK_POLICY_ALL: "all",
}
MISSED_VALUES = {
    "once": schedules_pb2.MISSED_TICK_POLICY_ONCE,
    "skip": schedules_pb2.MISSED_TICK_POLICY_SKIP,
    "all": schedules_pb2.MISSED_TICK_POLICY_ALL,
}
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_FORMAT = ("five fields (minute hour day-of-month month day-of-week), or six with seconds first, "
               "e.g. '*/5 * * * *'")


# -- cron and time zones ---------------------------------------------------------------------------


def cron_expression(value: str, field: str = "cron") -> str:
    """A cron expression croniter reads, with its whitespace normalised."""
    text = " ".join(value.split())
    if not text:
        raise InvalidArgument(field, f"must not be empty; use {CRON_FORMAT}")
    if len(text) > MAX_CRON_LENGTH:
        raise InvalidArgument(field, f"is {len(text)} characters long; at most {MAX_CRON_LENGTH}")
    if text.startswith("@"):
        if text.lower() not in CRON_ALIASES:
            raise InvalidArgument(field, f"unknown shorthand {text!r}; expected one of {', '.join(CRON_ALIASES)}")
    elif len(text.split()) not in (5, 6):
        raise InvalidArgument(field, f"{text!r} has {len(text.split())} fields; use {CRON_FORMAT}")
    try:
        # strict: refuse dates that never come, like 31 February.
        croniter.expand(text, strict=True, second_at_beginning=True)
    except (CroniterError, ValueError, TypeError, IndexError) as exc:
        raise InvalidArgument(field, f"{text!r} is not a valid cron expression ({exc}); use {CRON_FORMAT}") from None
    return text


def timezone_name(value: str, field: str = "timezone") -> str:
    name = value or DEFAULT_TIMEZONE
    if len(name) > MAX_TIMEZONE_LENGTH:
        raise InvalidArgument(field, f"is {len(name)} characters long; IANA names are at most {MAX_TIMEZONE_LENGTH}")
    try:
        ZoneInfo(name)
    except (ValueError, LookupError, OSError):
        raise InvalidArgument(field, f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris' or 'UTC'") from None
    return name


def missed_policy(value: int, field: str = "missed") -> str:
    policy = MISSED_POLICIES.get(value)  # type: ignore[call-overload]
    if policy is None:
        raise InvalidArgument(field, f"unknown missed-tick policy {value}; expected ONCE, SKIP or ALL")
    return cast(str, policy)


def schedule_name(value: str, field: str = "name") -> str:
    name = validation.function_name(value, field)
    if len(name) > MAX_SCHEDULE_NAME:
        raise InvalidArgument(field, f"is {len(name)} characters long; at most {MAX_SCHEDULE_NAME}")
    return name


def _cron(cron: str, start: datetime, zone: ZoneInfo) -> croniter:
    return croniter(cron, start.astimezone(zone), ret_type=datetime, second_at_beginning=True)


def ticks_after(cron: str, timezone: str, start: datetime) -> Iterator[datetime]:
    """The ticks strictly after `start`, as UTC datetimes, computed in the time zone (so that
    "0 9 * * *" is 9:00 local time, summer and winter)."""
    zone = ZoneInfo(timezone)
    schedule = _cron(cron, start, zone)
    while True:
        yield schedule.get_next().astimezone(UTC)


def next_tick(cron: str, timezone: str, after: datetime, field: str = "cron") -> datetime:
    try:
        return next(ticks_after(cron, timezone, after))
    except CroniterBadDateError:
        raise InvalidArgument(field, f"{cron!r} matches no date in the next 50 years") from None


def _latest_tick(cron: str, timezone: str, now: datetime) -> datetime | None:
    """The last tick at or before `now`, or None if there is none in the last 50 years."""
    try:
        previous = _cron(cron, now + timedelta(microseconds=1), ZoneInfo(timezone)).get_prev()
    except CroniterBadDateError:
        return None
    return previous.astimezone(UTC)


@dataclass(frozen=True)
class TickPlan:
    fire: list[datetime]  # the ticks to enqueue a job for, oldest first
    next_run_at: datetime  # the tick to wait for next (still due when a catch-up is under way)
    missed: bool  # some due ticks were missed


def plan_ticks(cron: str, timezone: str, missed: str, due: datetime, now: datetime,
               limit: int = CATCH_UP_BATCH) -> TickPlan:
    """Which ticks to fire now for a schedule whose next tick, `due`, has come (`due <= now`),
    following its missed-tick policy; see the module's docstring."""
    if missed == "all":
        fire, upcoming = [due], ticks_after(cron, timezone, due)
        following = next(upcoming)
        while following <= now and len(fire) < limit:
            fire.append(following)
            following = next(upcoming)
        return TickPlan(fire, following, missed=len(fire) > 1 or (now - due).total_seconds() > MISSED_GRACE)
    # once, skip: only the most recent due tick matters. Found from now rather than walked to
    # from `due`, which may be a long outage ago; then checked forward, since around a
    # daylight-saving fold croniter's previous tick can be one short.
    latest = max(due, _latest_tick(cron, timezone, now) or due)
    upcoming = ticks_after(cron, timezone, latest)
    following = next(upcoming)
    while following <= now:
        latest, following = following, next(upcoming)
    on_time = (now - latest).total_seconds() <= MISSED_GRACE
    if latest == due and on_time:
        return TickPlan([due], following, missed=False)
    if missed == "once" or on_time:
        return TickPlan([latest], following, missed=True)
    return TickPlan([], following, missed=True)


# -- job templates ----------------------------------------------------------------------------------


def job_template(request: jobs_pb2.EnqueueRequest, namespace: str, name: str, max_payload_bytes: int,
                 field: str = "job") -> bytes:
    """Check a schedule's job template (as a tick will use it) and serialise it."""
    if not request.name:
        raise InvalidArgument(f"{field}.name", "must name the function each tick enqueues")
    if request.namespace and request.namespace != namespace:
        raise InvalidArgument(f"{field}.namespace", f"must be the schedule's ({namespace!r}) or empty")
    for per_tick in ("idempotency_key", "parent_id"):
        if getattr(request, per_tick):
            raise InvalidArgument(f"{field}.{per_tick}", "must be empty: each tick sets its own")
    for per_tick in ("run_at", "delay"):
        if request.HasField(per_tick):  # type: ignore[arg-type]
            raise InvalidArgument(f"{field}.{per_tick}", "must be unset: each tick's job runs at the tick")
    template = jobs_pb2.EnqueueRequest()
    template.CopyFrom(request)
    template.namespace = namespace
    tick_job(template, name, datetime.now(UTC), max_payload_bytes, field)  # validated as a tick will be
    return template.SerializeToString(deterministic=True)


def tick_job(template: jobs_pb2.EnqueueRequest, schedule: str, tick: datetime, max_payload_bytes: int,
             field: str = "job") -> NewJob:
    """The job of one tick, validated exactly like an Enqueue call."""
    request = jobs_pb2.EnqueueRequest()
    request.CopyFrom(template)
    request.idempotency_key = f"schedule:{schedule}:{_iso(tick)}"
    request.run_at.FromDatetime(tick)
    request.labels[SCHEDULE_LABEL] = schedule
    try:
        return validation.enqueue_request(request, max_payload_bytes)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{field}.{exc.field}", str(exc).removeprefix(f"{exc.field}: ")) from None


def _iso(tick: datetime) -> str:
    return tick.astimezone(UTC).isoformat().replace("+00:00", "Z")


def schedule_message(row: dict[str, Any]) -> schedules_pb2.Schedule:
    message = schedules_pb2.Schedule(
        namespace=row["namespace"], name=row["name"], cron=row["cron"], timezone=row["timezone"],
        job=jobs_pb2.EnqueueRequest.FromString(row["job"]), missed=MISSED_VALUES[row["missed"]],
        paused=row["paused"], last_run_at=convert.timestamp(row["last_run_at"]),
        last_job_id=str(row["last_job_id"]) if row["last_job_id"] else "",
        created_at=convert.timestamp(row["created_at"]), updated_at=convert.timestamp(row["updated_at"]),
        last_error=row["last_error"] or "",
    )
    if not row["paused"]:
        message.next_run_at.FromDatetime(row["next_run_at"])
    return message


def _settings(row: dict[str, Any]) -> dict[str, Any]:
    """The columns update_schedule writes, as they are."""
    return {key: row[key] for key in ("function", "cron", "timezone", "job", "missed", "paused", "next_run_at")}


# -- the service ------------------------------------------------------------------------------------


class SchedulesService(schedules_pb2_grpc.SchedulesServicer):
    def __init__(self, store: Store, runner: ScheduleRunner, *, max_payload_bytes: int) -> None:
        self.store = store
        self.runner = runner
        self.max_payload_bytes = max_payload_bytes

    @_errors_as_status
    async def CreateSchedule(self, request: schedules_pb2.CreateScheduleRequest,
                             context: grpc.aio.ServicerContext) -> schedules_pb2.CreateScheduleResponse:
        namespace, name = validation.namespace(request.namespace), schedule_name(request.name)
        cron, timezone = cron_expression(request.cron), timezone_name(request.timezone)
        missed = missed_policy(request.missed)
        if not request.HasField("job"):
            raise InvalidArgument("job", "is required: the job each tick enqueues (its name is the function)")
        job = job_template(request.job, namespace, name, self.max_payload_bytes)
        next_run_at = next_tick(cron, timezone, await self.store.now())
        row = await self.store.create_schedule(
            {"namespace": namespace, "name": name, "function": request.job.name, "cron": cron, "timezone": timezone,
             "job": job, "missed": missed, "next_run_at": next_run_at},
            paused=request.paused if request.HasField("paused") else None, replace=request.replace)
        if row is None:
            await abort(context, grpc.StatusCode.ALREADY_EXISTS,
                        f"a schedule named {name!r} exists in namespace {namespace!r}; set replace to replace it")
        self.runner.wake()
        log.info("schedule.created" if row["created"] else "schedule.replaced", namespace=namespace, schedule=name,
                 cron=cron, timezone=timezone, next_run_at=row["next_run_at"].isoformat())
        return schedules_pb2.CreateScheduleResponse(schedule=schedule_message(row), created=row["created"])

    @_errors_as_status
    async def GetSchedule(self, request: schedules_pb2.GetScheduleRequest,
                          context: grpc.aio.ServicerContext) -> schedules_pb2.GetScheduleResponse:
        namespace, name = validation.namespace(request.namespace), schedule_name(request.name)
        row = await self.store.get_schedule(namespace, name)
        if row is None:
            await self._not_found(context, namespace, name)
        return schedules_pb2.GetScheduleResponse(schedule=schedule_message(row))

    @_errors_as_status
    async def ListSchedules(self, request: schedules_pb2.ListSchedulesRequest,
                            context: grpc.aio.ServicerContext) -> schedules_pb2.ListSchedulesResponse:
        namespace = validation.namespace(request.namespace)
        function = validation.function_name(request.function, "function") if request.function else None
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 for the default)")
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        rows = await self.store.list_schedules(namespace, function, request.page_token or None, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return schedules_pb2.ListSchedulesResponse(schedules=[schedule_message(r) for r in rows],
                                                   next_page_token=rows[-1]["name"] if more else "")

    @_errors_as_status
    async def UpdateSchedule(self, request: schedules_pb2.UpdateScheduleRequest,
                             context: grpc.aio.ServicerContext) -> schedules_pb2.UpdateScheduleResponse:
        namespace, name = validation.namespace(request.namespace), schedule_name(request.name)
        changes: dict[str, Any] = {}
        if request.HasField("cron"):
            changes["cron"] = cron_expression(request.cron)
        if request.HasField("timezone"):
            changes["timezone"] = timezone_name(request.timezone)
        if request.HasField("missed"):
            changes["missed"] = missed_policy(request.missed)
        if request.HasField("job"):
            changes["job"] = job_template(request.job, namespace, name, self.max_payload_bytes)
            changes["function"] = request.job.name

        def change(row: dict[str, Any]) -> dict[str, Any] | None:
            values = _settings(row) | changes
            if (values["cron"], values["timezone"]) != (row["cron"], row["timezone"]):
                values["next_run_at"] = next_tick(values["cron"], values["timezone"], row["now"])
            return None if values == _settings(row) else values

        row = await self.store.change_schedule(namespace, name, change)
        if row is None:
            await self._not_found(context, namespace, name)
        self.runner.wake()
        log.info("schedule.updated", namespace=namespace, schedule=name, changed=sorted(changes))
        return schedules_pb2.UpdateScheduleResponse(schedule=schedule_message(row))

    @_errors_as_status
    async def PauseSchedule(self, request: schedules_pb2.PauseScheduleRequest,
                            context: grpc.aio.ServicerContext) -> schedules_pb2.PauseScheduleResponse:
        namespace, name = validation.namespace(request.namespace), schedule_name(request.name)

        def pause(row: dict[str, Any]) -> dict[str, Any] | None:
            return None if row["paused"] else _settings(row) | {"paused": True}

        row = await self.store.change_schedule(namespace, name, pause)
        if row is None:
            await self._not_found(context, namespace, name)
        log.info("schedule.paused", namespace=namespace, schedule=name)
        return schedules_pb2.PauseScheduleResponse(schedule=schedule_message(row))

    @_errors_as_status
    async def ResumeSchedule(self, request: schedules_pb2.ResumeScheduleRequest,
                             context: grpc.aio.ServicerContext) -> schedules_pb2.ResumeScheduleResponse:
        namespace, name = validation.namespace(request.namespace), schedule_name(request.name)

        def resume(row: dict[str, Any]) -> dict[str, Any] | None:
            if not row["paused"]:
                return None
            # From now on: the ticks that fell during the pause do not run.
            return _settings(row) | {"paused": False,
                                     "next_run_at": next_tick(row["cron"], row["timezone"], row["now"])}

        row = await self.store.change_schedule(namespace, name, resume)
        if row is None:
            await self._not_found(context, namespace, name)
        self.runner.wake()
        log.info("schedule.resumed", namespace=namespace, schedule=name, next_run_at=row["next_run_at"].isoformat())
        return schedules_pb2.ResumeScheduleResponse(schedule=schedule_message(row))

    @_errors_as_status
    async def DeleteSchedule(self, request: schedules_pb2.DeleteScheduleRequest,
                             context: grpc.aio.ServicerContext) -> schedules_pb2.DeleteScheduleResponse:
        namespace, name = validation.namespace(request.namespace), schedule_name(request.name)
        deleted = await self.store.delete_schedule(namespace, name)
        if deleted:
            log.info("schedule.deleted", namespace=namespace, schedule=name)
        return schedules_pb2.DeleteScheduleResponse(deleted=deleted)

    async def _not_found(self, context: grpc.aio.ServicerContext, namespace: str, name: str) -> NoReturn:
        await abort(context, grpc.StatusCode.NOT_FOUND, f"no schedule {name!r} in namespace {namespace!r}")


# -- the firing loop --------------------------------------------------------------------------------


class ScheduleRunner:
    """Fires due ticks, on every sidecar; see the module's docstring."""

    def __init__(self, store: Store, *, sidecar_id: str, lease: float, poll_interval: float,
                 max_payload_bytes: int) -> None:
        self.store = store
        self.sidecar_id = sidecar_id
        self.lease = lease
        self.poll_interval = poll_interval
        self.max_payload_bytes = max_payload_bytes
        self._wake = asyncio.Event()
        # Jobs this sidecar enqueued for ticks; and ticks it found enqueued already, which the
        # row locks make impossible and the idempotency key harmless (counted so that it shows).
        self.fired = 0
        self.duplicates = 0

    def wake(self) -> None:
        """Look at the schedules again now (one was created, changed or resumed)."""
        self._wake.set()

    async def run(self) -> None:
        contended = 0.0
        while True:
            self._wake.clear()  # before looking: a change made meanwhile wakes the next wait
            try:
                while await self.fire_round():
                    pass
                wait = await self.store.next_schedule_in()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("schedules.round_failed", error=str(exc))
                wait = min(self.poll_interval, 1.0)
            if wait is not None and wait <= 0:
                # Due, yet not ours: another sidecar is firing it. Look again shortly.
                contended = min(max(contended * 2, 0.001), 0.1)
                wait = contended
            else:
                contended = 0.0
            timeout = self.poll_interval if wait is None else min(wait + 0.001, self.poll_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def fire_round(self) -> bool:
        """Fire the due ticks of up to ROUND_SIZE schedules in one transaction; returns whether
        another round may have work at once."""
        fired = await self.store.fire_due_schedules(ROUND_SIZE, self._plan, sidecar_id=self.sidecar_id,
                                                    lease=self.lease)
        again = len(fired) == ROUND_SIZE
        for schedule in fired:
            row, ticks = schedule.schedule, schedule.ticks
            for (job, deduplicated), new in zip(schedule.enqueued, ticks.jobs, strict=True):
                if deduplicated:
                    self.duplicates += 1
                    log.warning("schedule.tick_duplicate", namespace=row["namespace"], schedule=row["name"],
                                tick=_iso(new.run_at or row["now"]), job_id=str(job["id"]), sidecar_id=self.sidecar_id)
                else:
                    self.fired += 1
                    log.debug("schedule.fired", namespace=row["namespace"], schedule=row["name"], job_id=str(job["id"]),
                              tick=_iso(new.run_at or row["now"]), sidecar_id=self.sidecar_id)
            again = again or (not ticks.pause and ticks.next_run_at <= row["now"])
        return again

    def _plan(self, row: dict[str, Any]) -> ScheduleTicks:
        name, now = row["name"], row["now"]
        try:
            plan = plan_ticks(row["cron"], row["timezone"], row["missed"], row["next_run_at"], now)
        except Exception as exc:  # stored, so once valid: a changed cron library or time zone database
            log.error("schedule.unreadable", namespace=row["namespace"], schedule=name, cron=row["cron"],
                      timezone=row["timezone"], error=str(exc))
            return ScheduleTicks([], row["next_run_at"], pause=True,
                                 error=f"paused: its cron expression or time zone can no longer be read ({exc})")
        if plan.missed:
            log.warning("schedule.ticks_missed", namespace=row["namespace"], schedule=name, policy=row["missed"],
                        since=_iso(row["next_run_at"]), firing=[_iso(t) for t in plan.fire][-3:])
        try:
            template = jobs_pb2.EnqueueRequest.FromString(row["job"])
            jobs = [tick_job(template, name, tick, self.max_payload_bytes) for tick in plan.fire]
        except (InvalidArgument, DecodeError) as exc:
            log.error("schedule.tick_failed", namespace=row["namespace"], schedule=name, error=str(exc))
            return ScheduleTicks([], plan.next_run_at, error=f"no job was enqueued: the job template is invalid ({exc})")
        return ScheduleTicks(jobs, plan.next_run_at)
