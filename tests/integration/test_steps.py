"""Checkpointed steps: a recorded step never runs again, whatever the retries."""

from __future__ import annotations

import asyncio

import pytest

import perdure as sdk
from perdure import JobDeadError


async def test_steps__recorded_ones_are_replayed_not_run_again_on_retry(make_client) -> None:
    perdure = make_client()
    runs: dict[str, int] = {}

    def count(step: str, value: object) -> object:
        runs[step] = runs.get(step, 0) + 1
        return value

    async def reserve(order: str) -> dict:
        await asyncio.sleep(0)
        return {"reserved": order, "runs": count("reserve", runs.get("reserve", 0) + 1)}

    @perdure.durable("orders:fulfil", max_attempts=3, initial_delay=0.01, jitter=0)
    async def fulfil(order: str) -> dict:
        ctx = sdk.context()
        charge = await ctx.step("charge", count, "charge", {"charged": order})  # sync function
        reservation = await ctx.step("reserve", reserve, order)  # async function
        if ctx.attempt == 1:
            raise ConnectionError("the shipping service is down")
        shipment = await ctx.step("ship", count, "ship", f"shipped {order}")
        return {"charge": charge, "reservation": reservation, "shipment": shipment}

    async with perdure:
        handle = await fulfil("o-7")
        result = await handle.result(timeout=30)
        details = await handle.details()
    assert result == {"charge": {"charged": "o-7"}, "reservation": {"reserved": "o-7", "runs": 1},
                      "shipment": "shipped o-7"}
    assert runs == {"charge": 1, "reserve": 1, "ship": 1}
    assert [(s.name, s.status, s.attempt) for s in details.steps] == [
        ("charge", "succeeded", 1), ("reserve", "succeeded", 1), ("ship", "succeeded", 2)]
    assert details.steps[1].result == {"reserved": "o-7", "runs": 1}


async def test_steps__a_name_repeated_in_a_loop_checkpoints_every_iteration(make_client) -> None:
    perdure = make_client()
    runs: list[int] = []

    def visit(i: int) -> int:
        runs.append(i)
        return i * i

    @perdure.durable("loop", max_attempts=2, initial_delay=0.01, jitter=0)
    async def loop() -> list[int]:
        ctx = sdk.context()
        squares = [await ctx.step("visit", visit, i) for i in range(10)]
        if ctx.attempt == 1:
            raise RuntimeError("crash after the loop")
        return squares

    async with perdure:
        handle = await loop()
        assert await handle.result(timeout=30) == [i * i for i in range(10)]
        names = [s.name for s in (await handle.details()).steps]
    assert runs == list(range(10))
    assert names == ["visit"] + [f"visit#{n}" for n in range(2, 11)]


async def test_failed_step__is_recorded_for_its_attempt_and_runs_again_next_time(make_client) -> None:
    perdure = make_client()
    tries = 0

    async def flaky() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise TimeoutError("the bank did not answer")
        return "paid"

    @perdure.durable("pay", max_attempts=2, initial_delay=0.01, jitter=0)
    async def pay() -> str:
        return await sdk.context().step("charge", flaky)


    async with perdure:
        handle = await pay()
        assert await handle.result(timeout=30) == "paid"
        details = await handle.details()
    seen_failed = [a.error.type for a in details.attempts if a.error]
    assert tries == 2 and seen_failed == ["TimeoutError"]
    assert [(s.name, s.status, s.attempt) for s in details.steps] == [("charge", "succeeded", 2)]


async def test_failed_step__shows_as_failed_while_the_job_is_dead(make_client) -> None:
    perdure = make_client()

    async def broken() -> None:
        raise ValueError("no such account")

    @perdure.durable("pay:broken", max_attempts=1)
    async def pay() -> None:
        await sdk.context().step("charge", broken)

    async with perdure:
        handle = await pay()
        with pytest.raises(JobDeadError):
            await handle.result(timeout=30)
        steps = (await handle.details()).steps
    assert [(s.name, s.status, s.error.type, s.error.message) for s in steps] == [
        ("charge", "failed", "ValueError", "no such account")]


async def test_step_result__must_be_json(make_client) -> None:
    perdure = make_client()

    @perdure.durable("bad:step", max_attempts=1)
    async def bad() -> None:
        await sdk.context().step("object", lambda: object())

    async with perdure:
        with pytest.raises(JobDeadError, match="must be JSON-serialisable"):
            await (await bad()).result(timeout=30)


async def test_steps__survive_the_database_connections_being_cut_between_them(make_client, db) -> None:
    """What a PostgreSQL restart does to a running multi-step job: its recorded steps hold."""
    perdure = make_client()
    runs: list[str] = []
    first_done, go_on = asyncio.Event(), asyncio.Event()

    @perdure.durable("two:steps")
    async def two_steps() -> list:
        ctx = sdk.context()
        first = await ctx.step("first", runs.append, "first")
        first_done.set()
        await go_on.wait()
        second = await ctx.step("second", runs.append, "second")
        return [first, second]

    async with perdure:
        handle = await two_steps()
        await asyncio.wait_for(first_done.wait(), 30)
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        go_on.set()
        assert await handle.result(timeout=30) == [None, None]
        steps = [(s.name, s.status) for s in (await handle.details()).steps]
    assert runs == ["first", "second"]
    assert steps == [("first", "succeeded"), ("second", "succeeded")]
