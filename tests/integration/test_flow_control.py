"""Delayed jobs, priorities and labels, with two sidecars sharing one PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from perdure.v1 import jobs_pb2, jobs_pb2_grpc

from ..conftest import start_sidecar


async def test_priority__higher_runs_first_whichever_sidecar_enqueued(two_sidecars, make_client) -> None:
    producer_side, worker_side = two_sidecars
    producer = make_client(address=producer_side.address)
    order: list[str] = []

    async with producer:
        for name, priority in [("low", -5), ("normal", 0), ("urgent", 100), ("high", 10), ("normal2", 0)]:
            await producer.enqueue("tasks:run", name, priority=priority)
        worker = make_client(address=worker_side.address, worker_concurrency=1)

        @worker.durable("tasks:run")
        async def run(name: str) -> None:
            order.append(name)

        async with worker:
            while len(order) < 5:
                await asyncio.sleep(0.02)
    assert order == ["urgent", "high", "normal", "normal2", "low"]


async def test_priority__orders_the_jobs_of_every_function_a_worker_serves_together(two_sidecars, make_client) -> None:
    producer_side, worker_side = two_sidecars
    producer = make_client(address=producer_side.address)
    order: list[str] = []

    async with producer:
        for name, label, priority in [("tasks:a", "low", -1), ("tasks:b", "urgent", 50), ("tasks:a", "high", 10),
                                      ("tasks:b", "normal", 0), ("tasks:a", "normal2", 0)]:
            await producer.enqueue(name, label, priority=priority)
        worker = make_client(address=worker_side.address, worker_concurrency=1)
        for name in ("tasks:a", "tasks:b"):
            worker.durable(name)(order.append)
        async with worker:
            while len(order) < 5:
                await asyncio.sleep(0.02)
    assert order == ["urgent", "high", "normal", "normal2", "low"]


async def test_run_at__the_job_does_not_start_before_its_time(two_sidecars, make_client) -> None:
    producer_side, worker_side = two_sidecars
    worker = make_client(address=worker_side.address)
    started: list[float] = []

    @worker.durable("later")
    async def later() -> None:
        started.append(1.0)  # it ran

    producer = make_client(address=producer_side.address)
    async with worker, producer:
        await worker.wait_until_serving()
        not_before = datetime.now(UTC) + timedelta(seconds=0.5)
        delayed = await producer.enqueue("later", run_at=not_before)
        soon = await producer.enqueue("later", delay=0.3)
        await delayed.result(timeout=30)
        await soon.result(timeout=30)
        delayed_details, soon_details = await delayed.details(), await soon.details()
    # Neither started early (the database's own clock says so); timers on the worker's sidecar,
    # set from the enqueue notifications, started them.
    assert delayed_details.started_at >= not_before
    assert soon_details.started_at >= soon_details.created_at + timedelta(seconds=0.3)
    assert len(started) == 2


async def test_run_at__a_later_job_starts_on_time_though_every_slot_was_busy_at_the_earlier_ones_time(
        sidecar, make_client) -> None:
    """The sidecar keeps a timer for the earliest run_at only, and looks the next one up when a
    claim comes back short. Here the worker's only slot is busy when the first timer fires:
    the look-up must wait for a claim of that worker's, not be spent on the round that passed
    it by (the next timer would then come from the safety poll, minutes away in the tests)."""
    worker = make_client(worker_concurrency=1)
    release = asyncio.Event()
    started: list[str] = []

    @worker.durable("timers:run")
    async def run(label: str) -> None:
        started.append(label)
        if label == "hold":
            await release.wait()

    async with worker:
        await worker.wait_until_serving()
        hold = await worker.enqueue("timers:run", "hold")
        while started != ["hold"]:
            await asyncio.sleep(0.02)
        soon = await worker.enqueue("timers:run", "soon", delay=0.3)
        later = await worker.enqueue("timers:run", "later", delay=1.5)
        await asyncio.sleep(0.8)  # the first timer has fired, the slot still busy
        release.set()
        await hold.result(timeout=10)
        await soon.result(timeout=10)
        await later.result(timeout=10)
    assert started == ["hold", "soon", "later"]


async def test_labels__are_kept_and_filter_list_jobs(two_sidecars, make_client) -> None:
    first, second = two_sidecars
    client = make_client(address=first.address)
    async with client, grpc.aio.insecure_channel(second.address) as channel:
        acme = await client.enqueue("reports:build", labels={"tenant": "acme", "tier": "gold"})
        await client.enqueue("reports:build", labels={"tenant": "globex"})
        await client.enqueue("reports:build")
        jobs = jobs_pb2_grpc.JobsStub(channel)
        listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest(labels={"tenant": "acme"}))
        assert [job.id for job in listed.jobs] == [acme.id]
        assert dict(listed.jobs[0].labels) == {"tenant": "acme", "tier": "gold"}
        assert (await acme.details()).labels == {"tenant": "acme", "tier": "gold"}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="x", labels={"": "empty key"}))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details().startswith("labels: ")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="x", priority=5000))
        assert caught.value.details().startswith("priority: ")


def test_options__refuse_bad_priority_run_at_and_labels() -> None:
    from perdure import JobOptions

    with pytest.raises(ValueError, match="priority must be an integer"):
        JobOptions().merged(priority=1.5)
    with pytest.raises(ValueError, match="run_at must be a datetime with a time zone"):
        JobOptions().merged(run_at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="either delay or run_at"):
        JobOptions().merged(delay=5, run_at=datetime.now(UTC))
    with pytest.raises(ValueError, match="labels must be a dict of strings"):
        JobOptions().merged(labels={"tenant": 7})


async def test_retention__deletes_only_finished_jobs_older_than_it_with_their_history(database_url, db) -> None:
    def fabricate(state: str, finished_ago: str | None) -> str:
        row = db.execute(
            """INSERT INTO perdure.jobs (id, namespace, name, state, payload, payload_encoding, attempt, max_attempts,
                                         backoff, initial_delay, max_delay, jitter, timeout, run_at, finished_at)
               VALUES (gen_random_uuid(), 'default', 'old', %s, '', 'json', 1, 3, 'fixed', '1s', '1s', 0, '30s',
                       now(), now() - %s::interval) RETURNING id""", (state, finished_ago)).fetchone()
        db.execute("INSERT INTO perdure.attempts (job_id, number) VALUES (%s, 1)", (row[0],))
        return str(row[0])

    old = [fabricate(state, "2 hours") for state in ("success", "dead", "cancelled")]
    recent = fabricate("success", "10 minutes")
    unfinished = fabricate("pending", None)
    # Two sidecars with a one-hour retention: one at a time deletes, and only what is due.
    sidecars = [await start_sidecar(database_url, retention=3600.0, retention_interval=0.1) for _ in range(2)]
    try:
        for _ in range(500):
            if db.execute("SELECT count(*) FROM perdure.jobs WHERE id = ANY(%s::uuid[])", (old,)).fetchone()[0] == 0:
                break
            await asyncio.sleep(0.02)
    finally:
        for sidecar in sidecars:
            await sidecar.stop()
    left = {str(r[0]) for r in db.execute("SELECT id FROM perdure.jobs").fetchall()}
    assert left == {recent, unfinished}
    assert db.execute("SELECT count(*) FROM perdure.attempts WHERE job_id = ANY(%s::uuid[])", (old,)).fetchone()[0] == 0
