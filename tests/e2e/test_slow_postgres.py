"""Another client holds locks the sidecar needs (rows of jobs, a schedule's row, the advisory
lock of a controlled function's claims), as a slow transaction or an operator's open psql
session would. Unrelated work goes on through the same real perdured process: jobs enqueue,
get claimed and finish; a call that needs a locked row answers UNAVAILABLE (it says the row is
locked) within the caller's deadline instead of hanging; waiters never take every pooled
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import psycopg
import pytest

from perdure import Perdure
from perdure.v1 import jobs_pb2, jobs_pb2_grpc, schedules_pb2, schedules_pb2_grpc, types_pb2, workers_pb2
from perdured.config import Settings

from ..integration.test_grpc_contract import RawWorker

POOL = Settings().pool_size
DEADLINE = 20.0  # the callers' deadline, far beyond the sidecar's wait for a lock
CALLERS = 2 * POOL  # more callers waiting on locked rows than the pool has connections


@pytest.fixture
async def channel(perdured) -> AsyncIterator[tuple[grpc.aio.Channel, str]]:
    sidecar = perdured()
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        yield channel, sidecar.address


@contextlib.contextmanager
def holding(database_url: str, statement: str, params: tuple[object, ...] = ()):
    """A transaction of another client that holds what `statement` locks until the block ends."""
    with psycopg.connect(database_url) as holder:
        holder.execute(statement, params)
        yield
        holder.rollback()


async def unrelated_work_finishes(address: str, count: int = 20) -> None:
    """Jobs of another function enqueue, run and succeed through this sidecar."""
    client = Perdure(address=address, worker_concurrency=4)

    @client.durable("unrelated:double")
    async def double(n: int) -> int:
        return 2 * n

    async with client:
        handles = [await double(n) for n in range(count)]
        assert [await h.result(timeout=60) for h in handles] == [2 * n for n in range(count)]


async def answers_that_it_is_locked(calls: list[asyncio.Future[object]]) -> None:
    """Every call on a locked row ends before its deadline with UNAVAILABLE saying so."""
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        assert isinstance(outcome, grpc.aio.AioRpcError), outcome
        assert outcome.code() == grpc.StatusCode.UNAVAILABLE, f"{outcome.code()}: {outcome.details()}"
        assert "locked" in (outcome.details() or "")


async def test_locked_job_rows__callers_hear_so_and_other_jobs_run(channel, database_url) -> None:
    channel, address = channel
    jobs = jobs_pb2_grpc.JobsStub(channel)
    locked = [(await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="nobody:serves"))).job.id for _ in range(3)]
    with holding(database_url, "SELECT id FROM perdure.jobs WHERE id = ANY(%s::uuid[]) FOR UPDATE", (locked,)):
        calls = [asyncio.ensure_future(jobs.CancelJob(jobs_pb2.CancelJobRequest(id=locked[i % 3]), timeout=DEADLINE))
                 for i in range(CALLERS)]
        await unrelated_work_finishes(address)
        await answers_that_it_is_locked(calls)
        # Reads do not wait for row locks.
        assert (await jobs.GetJob(jobs_pb2.GetJobRequest(id=locked[0]))).job.id == locked[0]
    # Once the lock is gone, the same call goes through.
    assert (await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=locked[0]), timeout=DEADLINE)).cancelled


async def test_locked_schedule_row__changes_to_it_hear_so_and_other_work_goes_on(channel, database_url) -> None:
    channel, address = channel
    schedules = schedules_pb2_grpc.SchedulesStub(channel)
    await schedules.CreateSchedule(schedules_pb2.CreateScheduleRequest(
        name="nightly", cron="0 3 * * *", job=jobs_pb2.EnqueueRequest(name="nightly:run")))
    with holding(database_url, "SELECT * FROM perdure.schedules WHERE name = 'nightly' FOR UPDATE"):
        calls = [asyncio.ensure_future(schedules.PauseSchedule(schedules_pb2.PauseScheduleRequest(name="nightly"),
                                                               timeout=DEADLINE)) for _ in range(CALLERS)]
        await unrelated_work_finishes(address)
        await answers_that_it_is_locked(calls)
    assert (await schedules.PauseSchedule(schedules_pb2.PauseScheduleRequest(name="nightly"))).schedule.paused


async def test_held_claim_lock_of_a_controlled_function__does_not_stop_other_claims(channel, database_url) -> None:
    """The claims of a function under flow control take an advisory lock: while another client
    holds it, that function's jobs wait, and the others of the same worker still run."""
    _, address = channel
    client = Perdure(address=address, worker_concurrency=4)

    @client.durable("controlled:job", concurrency=2)
    async def controlled() -> str:
        return "controlled"

    lock = "SELECT pg_advisory_lock(hashtextextended('default' || chr(31) || 'controlled:job', 11))"
    async with client:
        with holding(database_url, lock):
            waiting = await controlled()
            await unrelated_work_finishes(address)
            assert await waiting.status() == "pending"
        assert await waiting.result(timeout=60) == "controlled"


async def test_locked_running_job__does_not_cost_the_others_their_leases(perdured, database_url) -> None:
    """Leases are renewed in one statement: a running job's row locked elsewhere must not
    hold up the renewal of the others until they expire and are taken away."""
    lease = 1.5
    sidecar = perdured("--lease", str(lease))
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        worker = RawWorker(channel)
        await worker.register("held", concurrency=3)
        ids = [(await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="held"))).job.id for _ in range(3)]
        attempts = {(a := await worker.next("assignment")).job_id: a.attempt for _ in ids}  # type: ignore[attr-defined]
        with psycopg.connect(database_url, autocommit=True) as db, \
                holding(database_url, "SELECT id FROM perdure.jobs WHERE id = %s FOR UPDATE", (ids[0],)):
            # Until the locked job's lease has been expired for a whole lease: without renewals
            # the others' would have expired too, and the reaper would have taken them.
            while not db.execute("SELECT lease_expires_at + %s < now() FROM perdure.jobs WHERE id = %s",
                                 (timedelta(seconds=lease), ids[0])).fetchone()[0]:
                await asyncio.sleep(0.1)
        for job_id in ids[1:]:
            ack = await worker.answer(job_id, attempts[job_id], success=types_pb2.Payload(data=b"1", encoding="json"))
            assert ack.recorded and ack.state == types_pb2.JOB_STATE_SUCCESS
        worker.call.cancel()


async def test_locked_job_among_outcomes_sent_together__the_others_are_still_recorded(channel, database_url) -> None:
    """Outcomes that come in one message are recorded in one statement; one job whose row is
    locked elsewhere must not cost the others their acknowledgement."""
    channel, _ = channel
    jobs = jobs_pb2_grpc.JobsStub(channel)
    ids = [r.job.id for r in (await jobs.EnqueueBatch(jobs_pb2.EnqueueBatchRequest(
        jobs=[jobs_pb2.EnqueueRequest(name="together") for _ in range(3)]))).results]
    worker = RawWorker(channel)
    await worker.register("together", concurrency=3, batches=True)
    assignments = list((await worker.next("assignments")).items)  # type: ignore[attr-defined]
    locked = ids[0]
    with psycopg.connect(database_url, autocommit=True) as db, \
            holding(database_url, "SELECT id FROM perdure.jobs WHERE id = %s FOR UPDATE", (locked,)):
        await worker.call.write(workers_pb2.WorkerMessage(outcomes=workers_pb2.Outcomes(items=[
            workers_pb2.Outcome(job_id=a.job_id, attempt=a.attempt, success=types_pb2.Payload(data=b"1", encoding="json"))
            for a in assignments])))
        acks: list[workers_pb2.OutcomeAck] = []
        while len(acks) < 2:
            message = await asyncio.wait_for(worker.inbox.get(), DEADLINE)
            acks.extend([message.ack] if message.HasField("ack") else message.acks.items)
        assert sorted(a.job_id for a in acks) == sorted(ids[1:])
        assert all(a.recorded and a.state == types_pb2.JOB_STATE_SUCCESS for a in acks)
        states = dict(db.execute("SELECT id::text, state FROM perdure.jobs").fetchall())
        assert states == {ids[0]: "running", ids[1]: "success", ids[2]: "success"}
    worker.call.cancel()
