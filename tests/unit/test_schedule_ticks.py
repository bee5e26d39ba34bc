"""Cron ticks, time zones and the missed-tick policies, with the clock given (no waiting)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from perdure.v1 import jobs_pb2, types_pb2
from perdured import schedules
from perdured.schedules import MISSED_GRACE, plan_ticks, ticks_after
from perdured.validation import InvalidArgument

T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)  # a Monday, on the minute


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def refused(check, *args: object) -> str:
    with pytest.raises(InvalidArgument) as caught:
        check(*args)
    return str(caught.value)


def test_cron_expression__takes_five_fields_six_with_seconds_first_and_shorthands() -> None:
    assert schedules.cron_expression("  */5   * * * * ") == "*/5 * * * *"
    assert schedules.cron_expression("30 * * * * *") == "30 * * * * *"
    assert schedules.cron_expression("@daily") == "@daily"
    assert list(islice(ticks_after("30 * * * * *", "UTC", T0), 2)) == [at(seconds=30), at(seconds=90)]
    assert next(ticks_after("@hourly", "UTC", T0)) == at(hours=1)


@pytest.mark.parametrize(("cron", "problem"), [
    ("", "cron: must not be empty"),
    ("* * *", "cron: '* * *' has 3 fields; use five fields"),
    ("0 0 1 1 * 2030", "cron: '0 0 1 1 * 2030' is not a valid cron expression"),  # seconds 0..59 first
    ("* * * * * * *", "cron: '* * * * * * *' has 7 fields"),
    ("61 * * * *", "cron: '61 * * * *' is not a valid cron expression"),
    ("0 0 31 2 *", "cron: '0 0 31 2 *' is not a valid cron expression"),  # never comes
    ("every minute", "cron: 'every minute' has 2 fields"),
    ("@reboot", "cron: unknown shorthand '@reboot'"),
])
def test_cron_expression__refusals_name_the_field_and_the_problem(cron: str, problem: str) -> None:
    assert refused(schedules.cron_expression, cron).startswith(problem)


def test_timezone__is_an_iana_name_utc_by_default() -> None:
    assert schedules.timezone_name("") == "UTC"
    assert schedules.timezone_name("Asia/Kolkata") == "Asia/Kolkata"
    for bad in ("Mars/Olympus", "Europe", "../etc/passwd", "/etc/localtime"):
        assert refused(schedules.timezone_name, bad).startswith(f"timezone: unknown time zone {bad!r}")
    assert refused(schedules.timezone_name, "Europe/" * 100).startswith("timezone: is 700 characters long")


def test_ticks__follow_the_time_zone_across_daylight_saving_changes() -> None:
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    winter, summer = datetime(2030, 1, 10, tzinfo=UTC), datetime(2030, 7, 10, tzinfo=UTC)
    assert next(ticks_after("0 9 * * *", "Europe/Paris", winter)) == datetime(2030, 1, 10, 8, tzinfo=UTC)
    assert next(ticks_after("0 9 * * *", "Europe/Paris", summer)) == datetime(2030, 7, 10, 7, tzinfo=UTC)
    # Half-hour offsets too: 09:00 in Kolkata is 03:30 UTC.
    assert next(ticks_after("0 9 * * *", "Asia/Kolkata", winter)) == datetime(2030, 1, 10, 3, 30, tzinfo=UTC)
    # An interval keeps its pace in real time through the change (31 March 2030, 01:00 UTC).
    ticks = list(islice(ticks_after("*/30 * * * *", "Europe/Paris", datetime(2030, 3, 31, 0, 15, tzinfo=UTC)), 4))
    assert [t - ticks[0] for t in ticks] == [timedelta(minutes=30 * i) for i in range(4)]


def test_plan__a_tick_fired_on_time_runs_whatever_the_policy() -> None:
    for policy in ("once", "skip", "all"):
        plan = plan_ticks("* * * * *", "UTC", policy, due=T0, now=at(seconds=0.004))
        assert (plan.fire, plan.next_run_at, plan.missed) == ([T0], at(minutes=1), False)


def test_plan__a_late_tick_alone_runs_once_and_all_but_not_skip() -> None:
    now = at(seconds=MISSED_GRACE + 1)
    assert plan_ticks("0 * * * *", "UTC", "once", due=T0, now=now).fire == [T0]
    assert plan_ticks("0 * * * *", "UTC", "all", due=T0, now=now).fire == [T0]
    skipped = plan_ticks("0 * * * *", "UTC", "skip", due=T0, now=now)
    assert (skipped.fire, skipped.next_run_at, skipped.missed) == ([], at(hours=1), True)


def test_plan__after_an_outage_once_runs_the_latest_tick_skip_none_all_each() -> None:
    now = at(hours=5, minutes=30)  # ticks at 12:00 .. 17:00 passed unfired
    once = plan_ticks("0 * * * *", "UTC", "once", due=T0, now=now)
    assert (once.fire, once.next_run_at, once.missed) == ([at(hours=5)], at(hours=6), True)
    skip = plan_ticks("0 * * * *", "UTC", "skip", due=T0, now=now)
    assert (skip.fire, skip.next_run_at) == ([], at(hours=6))
    every = plan_ticks("0 * * * *", "UTC", "all", due=T0, now=now)
    assert (every.fire, every.next_run_at) == ([at(hours=h) for h in range(6)], at(hours=6))


def test_plan__skip_still_runs_a_latest_tick_that_is_not_itself_late() -> None:
    now = at(minutes=10, seconds=2)  # ten missed minutes; 12:10 is two seconds old
    assert plan_ticks("* * * * *", "UTC", "skip", due=T0, now=now).fire == [at(minutes=10)]


def test_plan__a_second_due_tick_makes_the_first_missed_even_within_the_grace() -> None:
    now = at(seconds=1.5)
    assert plan_ticks("* * * * * *", "UTC", "once", due=T0, now=now).fire == [at(seconds=1)]
    assert plan_ticks("* * * * * *", "UTC", "all", due=T0, now=now).fire == [T0, at(seconds=1)]


def test_plan__all_catches_up_a_long_outage_in_bounded_steps() -> None:
    now = at(days=3)  # 259,200 per-second ticks
    plan = plan_ticks("* * * * * *", "UTC", "all", due=T0, now=now, limit=100)
    assert plan.fire == [at(seconds=s) for s in range(100)]
    assert plan.next_run_at == at(seconds=100)  # still due: the next round goes on from there
    # once and skip do not walk the outage tick by tick.
    assert plan_ticks("* * * * * *", "UTC", "once", due=T0, now=now).fire == [now]


def test_plan__once_finds_the_latest_tick_around_a_daylight_saving_fold() -> None:
    # 27 October 2030, Paris: 02:30 happens twice (00:30 and 01:30 UTC).
    first, second = datetime(2030, 10, 27, 0, 30, tzinfo=UTC), datetime(2030, 10, 27, 1, 30, tzinfo=UTC)
    day_before = first - timedelta(days=1)
    plan = plan_ticks("30 2 * * *", "Europe/Paris", "once", due=day_before, now=second + timedelta(seconds=1))
    assert plan.fire == [second]
    assert plan.next_run_at == datetime(2030, 10, 28, 1, 30, tzinfo=UTC)


def test_job_template__refuses_what_each_tick_sets_and_validates_like_enqueue() -> None:
    def template(**fields: object) -> jobs_pb2.EnqueueRequest:
        fields.setdefault("name", "reports:build")
        return jobs_pb2.EnqueueRequest(**fields)  # type: ignore[arg-type]

    def check(request: jobs_pb2.EnqueueRequest) -> bytes:
        return schedules.job_template(request, "default", "nightly", 1024)

    assert refused(check, template(name="")).startswith("job.name: must name the function")
    assert refused(check, template(idempotency_key="k")).startswith("job.idempotency_key: must be empty")
    assert refused(check, template(delay={"seconds": 5})).startswith("job.delay: must be unset")
    assert refused(check, template(namespace="other")).startswith("job.namespace: must be the schedule's")
    assert refused(check, template(priority=5000)).startswith("job.priority: must be between")
    assert refused(check, template(payload=types_pb2.Payload(data=b"{", encoding="json"))).startswith(
        "job.payload.data: is not valid UTF-8 JSON")
    too_many = {f"k{i}": "v" for i in range(32)}  # 32 is the limit, and the tick adds "schedule"
    assert refused(check, template(labels=too_many)).startswith("job.labels: has 33 labels")
    stored = jobs_pb2.EnqueueRequest.FromString(check(template(labels={"team": "data"})))
    assert stored.namespace == "default"


def test_tick_job__runs_at_the_tick_labelled_and_keyed_by_it() -> None:
    template = jobs_pb2.EnqueueRequest(name="reports:build", labels={"team": "data"}, priority=7)
    job = schedules.tick_job(template, "nightly", T0, 1024)
    assert (job.name, job.run_at, job.priority) == ("reports:build", T0, 7)
    assert job.labels == {"team": "data", "schedule": "nightly"}
    assert job.idempotency_key == "schedule:nightly:2030-01-07T12:00:00Z"


def test_ticks__a_missing_local_time_runs_after_the_gap_and_a_repeated_one_runs_twice() -> None:
    # Paris, 31 March 2030: 02:00-03:00 does not exist; 27 October 2030: 02:00-03:00 happens twice.
    spring = list(islice(ticks_after("30 2 * * *", "Europe/Paris", datetime(2030, 3, 30, 12, tzinfo=UTC)), 2))
    assert spring == [datetime(2030, 3, 31, 1, 0, tzinfo=UTC), datetime(2030, 4, 1, 0, 30, tzinfo=UTC)]
    autumn = list(islice(ticks_after("30 2 * * *", "Europe/Paris", datetime(2030, 10, 26, 12, tzinfo=UTC)), 3))
    assert autumn == [datetime(2030, 10, 27, 0, 30, tzinfo=UTC), datetime(2030, 10, 27, 1, 30, tzinfo=UTC),
                      datetime(2030, 10, 28, 1, 30, tzinfo=UTC)]
