"""Times as the caller means them, whatever time zone the database runs in."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from perdured.store import Store
from tests.conftest import new_job


def zone_leaving_summer_time_at(moment: datetime) -> str:
    """A POSIX time zone (UTC-3, summer time UTC-2 from the year's start) whose summer time
    ends at `moment` (to the hour)."""
    summer = moment - timedelta(hours=2)
    if summer.year != (datetime.now(UTC) - timedelta(hours=2)).year:
        pytest.skip("the change would fall in the next year; the zone's rule holds within one")
    return f"AAA3BBB,0/0,{summer.timetuple().tm_yday - 1}/{summer.hour}"


async def test_a_delay_of_days__is_that_many_times_24_hours_across_a_change_of_summer_time(database_url, db) -> None:
    zone = zone_leaving_summer_time_at(datetime.now(UTC) + timedelta(hours=12))
    db.execute(sql.SQL("ALTER DATABASE {} SET TimeZone = {}").format(sql.Identifier(db.info.dbname), zone))
    with psycopg.connect(database_url) as session:  # a day in that zone, in a session of its own: 25 hours
        assert session.execute("SELECT (now() + interval '1 day') - now()").fetchone()[0] == timedelta(hours=25)
    store = await Store.open(database_url, 1)
    try:
        ((row, _),) = await store.enqueue([dataclasses.replace(new_job("times", "times:later"), delay=86_400.0)],
                                          sidecar_id="sidecar", lease=30)
    finally:
        await store.close()
    assert row["run_at"] - row["created_at"] == timedelta(days=1)
