"""Durable sleep: the job parks, frees its worker, and resumes later replaying its steps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

import perdure as sdk


async def test_sleep__suspends_frees_the_slot_and_resumes_after_replaying_steps(make_client) -> None:
    perdure = make_client(worker_concurrency=1)
    effects: list[str] = []
    other_ran = asyncio.Event()

    @perdure.durable("remind", max_attempts=1)
    async def remind(user: str) -> str:
        ctx = sdk.context()
        await ctx.step("before", effects.append, f"before {user}")
        await ctx.sleep(0.5)
        await ctx.step("after", effects.append, f"after {user}")
        return f"reminded {user}"

    @perdure.durable("other")
    async def other() -> None:
        other_ran.set()

    async with perdure:
        handle = await remind("ann")
        while await handle.status() != "suspended":
            await asyncio.sleep(0.02)
        # The only slot is free while the first job sleeps.
        await (await other()).result(timeout=30)
        assert other_ran.is_set() and await handle.status() == "suspended"
        assert await handle.result(timeout=30) == "reminded ann"
        details = await handle.details()
    assert effects == ["before ann", "after ann"]
    # Suspending did not spend the only attempt.
    assert [a.outcome for a in details.attempts] == ["suspended", "succeeded"]
    assert [s.name for s in details.steps] == ["before", "sleep", "after"]


async def test_sleep_until__a_time_in_the_past_goes_straight_on(make_client) -> None:
    perdure = make_client()

    @perdure.durable("late")
    async def late() -> int:
        ctx = sdk.context()
        await ctx.sleep_until(datetime.now(UTC) - timedelta(seconds=5))
        await ctx.sleep(0)
        return ctx.attempt

    async with perdure:
        handle = await late()
        assert await handle.result(timeout=30) == 1
        assert [a.outcome for a in (await handle.details()).attempts] == ["succeeded"]


async def test_sleep__refuses_bad_durations(make_client) -> None:
    perdure = make_client()

    @perdure.durable("bad:sleep", max_attempts=1)
    async def bad(kind: str) -> None:
        ctx = sdk.context()
        if kind == "negative":
            await ctx.sleep(-1)
        else:
            await ctx.sleep_until(datetime(2030, 1, 1))  # no time zone

    async with perdure:
        with pytest.raises(sdk.JobDeadError, match="not negative"):
            await (await bad("negative")).result(timeout=30)
        with pytest.raises(sdk.JobDeadError, match="time zone"):
            await (await bad("naive")).result(timeout=30)


async def test_cancel__a_sleeping_job_never_wakes(make_client) -> None:
    perdure = make_client()
    woke = False

    @perdure.durable("nap")
    async def nap() -> None:
        nonlocal woke
        await sdk.context().sleep(3600)
        woke = True

    async with perdure:
        handle = await nap()
        while await handle.status() != "suspended":
            await asyncio.sleep(0.02)
        assert await handle.cancel() is True
        with pytest.raises(sdk.JobCancelledError):
            await handle.result(timeout=10)
    assert not woke
