"""Cron schedules with real perdured processes: sidecars killed with SIGKILL while a
per-second schedule ticks leave every tick with exactly one job."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from perdure import Perdure

from .test_failures import eventually


def ticks(db) -> list[datetime]:
    rows = db.execute("SELECT run_at FROM perdure.jobs WHERE labels @> '{\"schedule\": \"e2e:every-second\"}' "
                      "ORDER BY run_at").fetchall()
    return [row[0].astimezone(UTC) for row in rows]


async def test_schedule__sidecars_killed_mid_schedule_leave_one_job_per_tick(perdured, db) -> None:
    first = perdured()
    async with Perdure(address=first.address) as client:
        created = await client.schedules.create("e2e:every-second", "e2e:echo", "* * * * * *", missed="all")
    second, third = perdured(), perdured()  # they find the schedule as they start

    await eventually(lambda: len(ticks(db)) >= 3, "three ticks")
    first.kill()
    seen = len(ticks(db))
    await eventually(lambda: len(ticks(db)) >= seen + 3, "three ticks after the first kill")
    second.kill()
    seen = len(ticks(db))
    await eventually(lambda: len(ticks(db)) >= seen + 3, "three ticks after the second kill")
    async with Perdure(address=third.address) as client:
        await client.schedules.pause("e2e:every-second")

    fired = ticks(db)
    assert max(Counter(fired).values()) == 1
    assert fired[0] == created.next_run_at
    assert [b - a for a, b in zip(fired, fired[1:], strict=False)] == [timedelta(seconds=1)] * (len(fired) - 1)
