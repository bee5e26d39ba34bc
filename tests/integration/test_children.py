"""Child jobs: spawned and awaited as checkpoints, with the parent suspended while it waits."""

from __future__ import annotations

import asyncio

import pytest

import perdure as sdk
from perdure import JobDeadError


async def test_parent_with_parallel_children__completes_with_a_single_worker_slot(make_client) -> None:
    perdure = make_client(worker_concurrency=1)

    @perdure.durable("square")
    async def square(n: int) -> int:
        return n * n

    @perdure.durable("sum:squares")
    async def sum_squares(ns: list[int]) -> int:
        children = [await square(n) for n in ns]
        return sum(await asyncio.gather(*(child.result() for child in children)))

    async with perdure:
        handle = await sum_squares([1, 2, 3])
        assert await handle.result(timeout=30) == 14
        details = await handle.details()
    assert details.attempts[-1].outcome == "succeeded"
    assert "suspended" in [a.outcome for a in details.attempts]  # it let its children run
    assert sorted(s.name for s in details.steps if s.name.startswith("spawn:")) == [
        "spawn:square", "spawn:square#2", "spawn:square#3"]


async def test_dead_child__raises_in_the_parent_which_can_catch_it(make_client) -> None:
    perdure = make_client(worker_concurrency=1)

    @perdure.durable("payments:charge", max_attempts=1)
    async def charge(amount: int) -> None:
        raise RuntimeError(f"card declined for {amount}")

    @perdure.durable("orders:place")
    async def place() -> dict:
        try:
            await (await charge(50)).result()
        except JobDeadError as exc:
            return {"placed": False, "reason": exc.error_message}
        return {"placed": True}

    async with perdure:
        assert await (await place()).result(timeout=30) == {"placed": False, "reason": "card declined for 50"}


async def test_retried_parent__gets_the_same_children_instead_of_spawning_again(make_client) -> None:
    perdure = make_client()
    runs: list[str] = []

    @perdure.durable("child")
    async def child(tag: str) -> str:
        runs.append(tag)
        return tag.upper()

    @perdure.durable("parent", max_attempts=2, initial_delay=0.01, jitter=0)
    async def parent() -> list:
        first = await child("a")
        second = await child("b")
        results = [await first.result(), await second.result()]
        if sdk.context().attempt <= 2 and "crashed" not in runs:
            runs.append("crashed")
            raise ConnectionError("lost the connection after awaiting")
        return [first.id, second.id, *results]

    async with perdure:
        handle = await parent()
        first_id, second_id, *results = await handle.result(timeout=30)
        children = {s.name: s.result for s in (await handle.details()).steps if s.name.startswith("spawn:")}
    assert results == ["A", "B"]
    assert runs == ["a", "b", "crashed"]  # each child ran once, though the parent ran again
    assert children == {"spawn:child": first_id, "spawn:child#2": second_id}


async def test_cancelling_a_parent__cancels_its_unfinished_descendants(make_client) -> None:
    perdure = make_client()
    spawned: list[str] = []
    grandchild_waiting = asyncio.Event()

    @perdure.durable("grandchild")
    async def grandchild() -> None:
        await sdk.context().wait_for_event("never")

    @perdure.durable("child")
    async def child() -> None:
        handle = await grandchild()
        spawned.append(handle.id)
        grandchild_waiting.set()
        await handle.result()

    @perdure.durable("parent")
    async def parent() -> None:
        handle = await child()
        spawned.append(handle.id)
        await handle.result()

    async with perdure:
        root = await parent()
        await asyncio.wait_for(grandchild_waiting.wait(), 30)
        while len(spawned) < 2:
            await asyncio.sleep(0.02)
        assert await root.cancel() is True
        statuses = [await perdure.handle(job_id).status() for job_id in spawned]
        with pytest.raises(sdk.JobCancelledError):
            await root.result(timeout=5)
    assert statuses == ["cancelled", "cancelled"]


async def test_details__show_children_and_what_a_suspended_job_waits_for(make_client) -> None:
    perdure = make_client()

    @perdure.durable("slow:child")
    async def slow_child() -> None:
        await sdk.context().wait_for_event("go")

    @perdure.durable("waiting:parent")
    async def waiting_parent() -> None:
        await (await slow_child()).result()

    async with perdure:
        parent = await waiting_parent()
        details = await parent.details()
        while details.status != "suspended" or not details.children or details.children[0].status != "suspended":
            await asyncio.sleep(0.02)
            details = await parent.details()
        child = details.children[0]
        assert details.waiting_for == f"job:{child.id}" and child.name == "slow:child"
        assert (await perdure.handle(child.id).details()).waiting_for == "event:go"
        await perdure.emit_event("go")
        await parent.result(timeout=30)
        assert (await parent.details()).waiting_for is None


async def test_children_in_a_task_group__suspend_the_parent_like_gather_does(make_client) -> None:
    perdure = make_client(worker_concurrency=1)

    @perdure.durable("double")
    async def double(n: int) -> int:
        return 2 * n

    @perdure.durable("sum:doubles")
    async def sum_doubles(ns: list[int]) -> int:
        children = [await double(n) for n in ns]
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(child.result()) for child in children]
        return sum(task.result() for task in tasks)

    async with perdure:
        handle = await sum_doubles([1, 2, 3])
        assert await handle.result(timeout=30) == 12
        outcomes = {a.outcome for a in (await handle.details()).attempts}
    assert outcomes == {"suspended", "succeeded"}  # suspended, never failed
