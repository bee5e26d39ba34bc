"""Cron schedules against a real PostgreSQL and real sidecars: one job per tick with several
sidecars, the SDK and the contract, missed ticks, time zones, and durable(..., schedule=...).

Nothing here waits for a time to pass and checks what happened by then: tests wait for a
condition (a job, a moved next_run_at) with a generous timeout, and per-second schedules
make that quick."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest
from croniter import croniter

from perdure import (
    InvalidArgumentError,
    Perdure,
    Schedule,
    ScheduleExistsError,
    ScheduleNotFoundError,
    context,
)
from perdure.v1 import jobs_pb2, schedules_pb2, schedules_pb2_grpc

from ..conftest import start_sidecar

WAIT = 60.0


async def until(condition: Callable[[], object], timeout: float = WAIT, what: str = "the condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def ticks_of(db, schedule: str) -> list[datetime]:
    """The run_at of every job the schedule enqueued, oldest first."""
    rows = db.execute("SELECT run_at FROM perdure.jobs WHERE labels @> jsonb_build_object('schedule', %s::text) "
                      "ORDER BY run_at", (schedule,)).fetchall()
    return [row[0].astimezone(UTC) for row in rows]


def expected_next(cron: str, timezone: str, before: datetime, after: datetime) -> set[datetime]:
    """The next tick computed independently, from just before and just after the call (a tick
    may pass in between)."""
    zone = ZoneInfo(timezone)
    return {croniter(cron, moment.astimezone(zone), second_at_beginning=True).get_next(datetime).astimezone(UTC)
            for moment in (before, after)}


def db_now(db) -> datetime:
    return db.execute("SELECT now()").fetchone()[0].astimezone(UTC)


# -- exactly once per tick -----------------------------------------------------------------------


async def test_per_second_schedule__three_sidecars_enqueue_exactly_one_job_per_tick(database_url, db) -> None:
    sidecars = [await start_sidecar(database_url)]
    client = Perdure(address=sidecars[0].address)
    try:
        async with client:
            every = await client.schedules.create("every-second", "ticks:record", "* * * * * *", missed="all")
            # The default policy too: a tick never makes two jobs, whatever it skips.
            default = await client.schedules.create("every-second-once", "ticks:record", "* * * * * *")
            # Two more sidecars on the same database find the schedules as they start.
            sidecars += [await start_sidecar(database_url), await start_sidecar(database_url)]
            await until(lambda: len(ticks_of(db, "every-second")) >= 6 and len(ticks_of(db, "every-second-once")) >= 6,
                        what="six ticks of each schedule")
            await client.schedules.pause("every-second")
            await client.schedules.pause("every-second-once")
            last = await client.schedules.get("every-second")
    finally:
        for sidecar in sidecars:
            await sidecar.stop()

    ticks = ticks_of(db, "every-second")
    assert max(Counter(ticks).values()) == 1  # one job per tick
    assert ticks[0] == every.next_run_at  # from the first tick on...
    assert [b - a for a, b in zip(ticks, ticks[1:], strict=False)] == [timedelta(seconds=1)] * (len(ticks) - 1)  # ...none left out
    assert last.last_run_at == ticks[-1]
    assert str(last.last_job_id) == str(db.execute(
        "SELECT id FROM perdure.jobs WHERE labels @> '{\"schedule\": \"every-second\"}' AND run_at = %s",
        (ticks[-1],)).fetchone()[0])
    others = ticks_of(db, "every-second-once")
    assert others[0] == default.next_run_at and max(Counter(others).values()) == 1
    # No sidecar ever fired a tick another had fired (the idempotency key would have hidden it).
    assert sum(s.schedules.duplicates for s in sidecars) == 0
    assert sum(s.schedules.fired for s in sidecars) == len(ticks) + len(others)
    keys = db.execute("SELECT idempotency_key, name, state FROM perdure.jobs WHERE run_at = %s AND "
                      "labels @> '{\"schedule\": \"every-second\"}'", (ticks[0],)).fetchone()
    assert keys == (f"schedule:every-second:{ticks[0].isoformat().replace('+00:00', 'Z')}", "ticks:record", "pending")


# -- the SDK -------------------------------------------------------------------------------------


async def test_schedules__create_get_list_update_pause_resume_delete(sidecar, make_client, db) -> None:
    client = make_client()
    async with client:
        before = db_now(db)
        created = await client.schedules.create(
            "reports:nightly", "reports:build", "0 3 * * *", args=("daily",), kwargs={"format": "pdf"},
            max_attempts=5, timeout=60, priority=3, labels={"team": "data"})
        after = db_now(db)
        assert isinstance(created, Schedule)
        assert (created.name, created.function, created.cron, created.timezone, created.missed, created.paused) == (
            "reports:nightly", "reports:build", "0 3 * * *", "UTC", "once", False)
        assert (created.args, created.kwargs) == (["daily"], {"format": "pdf"})
        assert (created.options.max_attempts, created.options.timeout, created.options.priority,
                created.options.labels) == (5, 60.0, 3, {"team": "data"})
        assert created.next_run_at in expected_next("0 3 * * *", "UTC", before, after)
        assert (created.last_run_at, created.last_job_id, created.last_error) == (None, None, None)

        assert await client.schedules.get("reports:nightly") == created
        await client.schedules.create("cleanup", "files:clean", "@hourly")
        assert [s.name for s in await client.schedules.list()] == ["cleanup", "reports:nightly"]
        assert [s.name for s in await client.schedules.list(function="files:clean")] == ["cleanup"]

        # A new cron moves the next tick; the job stays as it was.
        before = db_now(db)
        moved = await client.schedules.update("reports:nightly", cron="*/10 * * * *")
        after = db_now(db)
        assert moved.cron == "*/10 * * * *" and moved.next_run_at in expected_next("*/10 * * * *", "UTC", before, after)
        assert (moved.args, moved.options.max_attempts) == (["daily"], 5)
        # New arguments and options; the rest of the job stays, and so does the next tick.
        changed = await client.schedules.update("reports:nightly", args=("weekly",), max_attempts=2, missed="skip")
        assert (changed.args, changed.kwargs, changed.missed) == (["weekly"], {"format": "pdf"}, "skip")
        assert (changed.options.max_attempts, changed.options.timeout, changed.options.labels) == (2, 60.0, {"team": "data"})
        assert changed.next_run_at == moved.next_run_at

        # Paused: no next run, and nothing fires even once its tick is long due.
        paused = await client.schedules.pause("reports:nightly")
        assert paused.paused and paused.next_run_at is None
        assert (await client.schedules.pause("reports:nightly")).updated_at == paused.updated_at  # nothing to do
        db.execute("UPDATE perdure.schedules SET next_run_at = now() - interval '3 days' WHERE name = 'reports:nightly'")
        # A per-second probe: once it has fired, the loop has looked at every due schedule
        # (earliest first), and would have fired the paused one before it.
        await client.schedules.create("probe", "probes:run", "* * * * * *")
        await until(lambda: len(ticks_of(db, "probe")) >= 1, what="the probe's first job")
        assert ticks_of(db, "reports:nightly") == []

        # Resumed: from the next tick after now; the ticks of the pause do not run.
        probes = len(ticks_of(db, "probe"))
        before = db_now(db)
        resumed = await client.schedules.resume("reports:nightly")
        after = db_now(db)
        assert not resumed.paused and resumed.next_run_at in expected_next("*/10 * * * *", "UTC", before, after)
        await until(lambda: len(ticks_of(db, "probe")) > probes + 1, what="two more probe ticks")
        # Only a tick of the new cron after the resume may have run (if the clock passed one meanwhile).
        assert [tick for tick in ticks_of(db, "reports:nightly")
                if tick < before or tick.minute % 10 or tick.second or tick.microsecond] == []

        assert await client.schedules.delete("reports:nightly") is True
        assert await client.schedules.delete("reports:nightly") is False
        with pytest.raises(ScheduleNotFoundError, match="no schedule 'reports:nightly' in namespace 'default'"):
            await client.schedules.get("reports:nightly")
        with pytest.raises(ScheduleNotFoundError):
            await client.schedules.pause("reports:nightly")
        await client.schedules.delete("probe")


async def test_schedules__bad_input_is_refused_and_nothing_is_written(sidecar, make_client, db) -> None:
    client = make_client()
    async with client:
        original = await client.schedules.create("nightly", "reports:build", "0 3 * * *")
        rows = db.execute("SELECT * FROM perdure.schedules").fetchall()

        with pytest.raises(InvalidArgumentError, match=r"^cron: '0 25 \* \* \*' is not a valid cron expression"):
            await client.schedules.create("bad-cron", "reports:build", "0 25 * * *")
        with pytest.raises(InvalidArgumentError, match=r"^cron: '\* \* \*' has 3 fields; use five fields"):
            await client.schedules.create("bad-cron", "reports:build", "* * *")
        with pytest.raises(InvalidArgumentError, match="^timezone: unknown time zone 'Europe/Atlantis'"):
            await client.schedules.create("bad-zone", "reports:build", "0 3 * * *", timezone="Europe/Atlantis")
        with pytest.raises(ValueError, match="missed must be one of once, skip, all, got 'sometimes'"):
            await client.schedules.create("bad-policy", "reports:build", "0 3 * * *", missed="sometimes")
        with pytest.raises(ValueError, match="cannot take idempotency_key: each tick sets its own"):
            await client.schedules.create("bad-option", "reports:build", "0 3 * * *", idempotency_key="k")
        with pytest.raises(ScheduleExistsError, match="a schedule named 'nightly' exists in namespace 'default'"):
            await client.schedules.create("nightly", "reports:other", "*/5 * * * *")
        with pytest.raises(InvalidArgumentError, match="^cron: "):
            await client.schedules.update("nightly", cron="0 3 * *")
        with pytest.raises(InvalidArgumentError, match="^timezone: "):
            await client.schedules.update("nightly", timezone="Nowhere")
        with pytest.raises(ScheduleNotFoundError):
            await client.schedules.update("missing", cron="0 4 * * *")
        with pytest.raises(InvalidArgumentError, match="^job.payload.data: is .* bytes; the limit is"):
            await client.schedules.create("huge", "reports:build", "0 3 * * *", args=("x" * 5_000_000,))

        assert db.execute("SELECT * FROM perdure.schedules").fetchall() == rows
        assert await client.schedules.get("nightly") == original

        # Asked for, a replacement takes the new settings and a new next tick.
        replaced = await client.schedules.create("nightly", "reports:other", "*/5 * * * *", replace=True)
        assert (replaced.function, replaced.cron, replaced.created_at) == ("reports:other", "*/5 * * * *",
                                                                          original.created_at)
        assert replaced.next_run_at != original.next_run_at or replaced.cron != original.cron


async def test_contract__schedules_service_through_raw_grpc(sidecar, db) -> None:
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        stub = schedules_pb2_grpc.SchedulesStub(channel)
        job = jobs_pb2.EnqueueRequest(name="reports:build")

        async def refused(request: schedules_pb2.CreateScheduleRequest) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateSchedule(request)
            return caught.value.code(), caught.value.details()

        invalid = grpc.StatusCode.INVALID_ARGUMENT
        code, detail = await refused(schedules_pb2.CreateScheduleRequest(name="s", cron="* * * * *"))
        assert (code, detail.split(":")[0]) == (invalid, "job")
        code, detail = await refused(schedules_pb2.CreateScheduleRequest(name="s", cron="* * * * *", job=job, missed=99))
        assert (code, detail) == (invalid, "missed: unknown missed-tick policy 99; expected ONCE, SKIP or ALL")
        code, detail = await refused(schedules_pb2.CreateScheduleRequest(
            name="s", cron="* * * * *", job=jobs_pb2.EnqueueRequest(name="x", idempotency_key="k")))
        assert (code, detail) == (invalid, "job.idempotency_key: must be empty: each tick sets its own")
        code, detail = await refused(schedules_pb2.CreateScheduleRequest(name="s" * 201, cron="* * * * *", job=job))
        assert (code, detail) == (invalid, "name: is 201 characters long; at most 200")
        assert db.execute("SELECT count(*) FROM perdure.schedules").fetchone()[0] == 0

        created = await stub.CreateSchedule(schedules_pb2.CreateScheduleRequest(
            name="s", cron="0 3 * * *", job=job, paused=True))
        assert created.created and created.schedule.paused and not created.schedule.HasField("next_run_at")
        code, _ = await refused(schedules_pb2.CreateScheduleRequest(name="s", cron="0 3 * * *", job=job))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        # Replaced without `paused`: it stays paused (a deploy does not resume what an operator paused).
        replaced = await stub.CreateSchedule(schedules_pb2.CreateScheduleRequest(
            name="s", cron="0 4 * * *", job=job, replace=True))
        assert not replaced.created and replaced.schedule.paused and replaced.schedule.cron == "0 4 * * *"
        resumed = await stub.CreateSchedule(schedules_pb2.CreateScheduleRequest(
            name="s", cron="0 4 * * *", job=job, replace=True, paused=False))
        assert not resumed.schedule.paused and resumed.schedule.HasField("next_run_at")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetSchedule(schedules_pb2.GetScheduleRequest(name="nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await stub.ListSchedules(schedules_pb2.ListSchedulesRequest(page_size=1))
        assert [s.name for s in listed.schedules] == ["s"] and listed.next_page_token == ""


# -- missed ticks --------------------------------------------------------------------------------


async def test_missed_ticks__once_runs_the_latest_skip_none_all_each(database_url, db) -> None:
    # A daily tick twelve hours from now: the last one was about twelve hours ago.
    noon_ish = datetime.now(UTC) + timedelta(hours=12)
    cron = f"{noon_ish.minute} {noon_ish.hour} * * *"
    first = await start_sidecar(database_url)
    async with Perdure(address=first.address) as client:
        for policy in ("once", "skip", "all"):
            await client.schedules.create(f"daily-{policy}", "reports:build", cron, missed=policy)
    await first.stop()

    # Every sidecar is down, for four ticks.
    now = db_now(db)
    past = croniter(cron, now)
    missed = sorted(past.get_prev(datetime).astimezone(UTC) for _ in range(4))
    db.execute("UPDATE perdure.schedules SET next_run_at = %s", (missed[0],))

    back = await start_sidecar(database_url)
    try:
        await until(lambda: db.execute("SELECT bool_and(next_run_at > now()) FROM perdure.schedules").fetchone()[0],
                    what="every schedule to reach its next tick")
        rows = {r[0]: r[1:] for r in db.execute(
            "SELECT name, next_run_at, last_run_at, last_job_id FROM perdure.schedules").fetchall()}
    finally:
        await back.stop()

    assert ticks_of(db, "daily-once") == [missed[-1]]
    assert ticks_of(db, "daily-skip") == []
    assert ticks_of(db, "daily-all") == missed
    upcoming = croniter(cron, now).get_next(datetime).astimezone(UTC)
    assert {name: row[0] for name, row in rows.items()} == {name: upcoming for name in rows}
    assert rows["daily-once"][1] == missed[-1] and rows["daily-all"][1] == missed[-1]
    assert rows["daily-skip"][1:] == (None, None)


async def test_missed_ticks__a_template_that_no_longer_validates_is_reported_not_retried(database_url, db) -> None:
    first = await start_sidecar(database_url)
    async with Perdure(address=first.address) as client:
        await client.schedules.create("big", "reports:build", "* * * * * *", args=("x" * 4000,))
        await client.schedules.pause("big")
    await first.stop()
    # A second of the cron may have begun between the create and the pause: that tick ran
    # under the first sidecar's limit, and is not what this test is about.
    db.execute("DELETE FROM perdure.jobs")
    db.execute("UPDATE perdure.schedules SET paused = false, next_run_at = now()")
    # A sidecar with a smaller payload limit cannot enqueue the template any more.
    strict = await start_sidecar(database_url, max_payload_bytes=1024)
    try:
        await until(lambda: db.execute("SELECT last_error FROM perdure.schedules").fetchone()[0], what="the error")
        async with Perdure(address=strict.address) as client:
            schedule = await client.schedules.get("big")
    finally:
        await strict.stop()
    assert schedule.last_error is not None and "job.payload.data: is" in schedule.last_error
    assert ticks_of(db, "big") == [] and not schedule.paused


# -- time zones ----------------------------------------------------------------------------------


async def test_time_zone__next_run_at_is_the_local_time_in_that_zone(sidecar, make_client, db) -> None:
    client = make_client()
    async with client:
        for zone in ("Asia/Kolkata", "America/New_York"):
            before = db_now(db)
            schedule = await client.schedules.create(f"standup-{zone}", "standup:remind", "0 9 * * 1-5", timezone=zone)
            after = db_now(db)
            assert schedule.timezone == zone
            assert schedule.next_run_at in expected_next("0 9 * * 1-5", zone, before, after)
            local = schedule.next_run_at.astimezone(ZoneInfo(zone))
            assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True)
        kolkata = await client.schedules.get("standup-Asia/Kolkata")
        assert kolkata.next_run_at is not None and (kolkata.next_run_at.hour, kolkata.next_run_at.minute) == (3, 30)
        # Changing the zone moves the next tick to that zone's 9:00.
        moved = await client.schedules.update("standup-Asia/Kolkata", timezone="Europe/Paris")
        assert moved.next_run_at is not None and moved.next_run_at.astimezone(ZoneInfo("Europe/Paris")).hour == 9


# -- durable(..., schedule=...) --------------------------------------------------------------------


async def test_durable_schedule__workers_create_it_once_and_its_jobs_run_through_the_handler(make_client, db) -> None:
    ran: list[str] = []

    def worker(cron: str) -> Perdure:
        client = make_client()

        @client.durable("heartbeat:ping", schedule=cron, missed="all", max_attempts=2)
        async def ping() -> str:
            ran.append(context().job_id)
            return "pong"

        return client

    first, second = worker("* * * * * *"), worker("* * * * * *")
    async with first:
        await until(lambda: len(ran) >= 2, what="two ticks to run")
        created = await first.schedules.get("heartbeat:ping")
        # Another worker (a second replica, a redeploy) starting with the same code changes nothing.
        async with second:
            [again] = await second.schedules.list()
        job = await first.handle(ran[0]).details()
    assert (created.function, created.cron, created.missed, created.options.max_attempts) == (
        "heartbeat:ping", "* * * * * *", "all", 2)
    assert (again.created_at, again.updated_at) == (created.created_at, created.updated_at)
    assert (job.status, job.result, job.labels, job.max_attempts) == ("success", "pong", {"schedule": "heartbeat:ping"}, 2)

    # A deploy that changes the cron replaces the schedule's timing.
    async with worker("*/2 * * * * *") as third:
        [replaced] = await third.schedules.list()
    assert replaced.cron == "*/2 * * * * *" and replaced.created_at == created.created_at


async def test_durable_schedule__a_bad_cron_fails_the_start(make_client) -> None:
    client = make_client()

    @client.durable("broken", schedule="every five minutes")
    async def broken() -> None: ...

    with pytest.raises(InvalidArgumentError, match="^cron: 'every five minutes' has 3 fields"):
        await client.start()
    with pytest.raises(ValueError, match="missed must be one of"):
        client.durable("other", schedule="* * * * *", missed="never")
    with pytest.raises(ValueError, match="timezone and missed only apply with schedule="):
        client.durable("other", timezone="Europe/Paris")
