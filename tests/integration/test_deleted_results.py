"""A job deleted after it succeeded is not found any more, including on the sidecar where it
succeeded, which keeps the rows of its latest successes for a few seconds to answer callers
at once (events.py; the notice of 0014_deleted_jobs_notice.sql)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from perdure.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2

# Well under the RECENT_SECONDS a success is kept: a row still answered after this was kept
# through the deletion.
NOTICE_WAIT = 5.0
SUCCESS = jobs_pb2.JobFilter(states=[types_pb2.JOB_STATE_SUCCESS])


async def _await_job(address: str, job_id: str) -> grpc.StatusCode | int:
    """AwaitJob's answer: the job's state, or the error's code."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await jobs_pb2_grpc.JobsStub(channel).AwaitJob(jobs_pb2.AwaitJobRequest(id=job_id))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return response.job.state


async def _purge(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await jobs_pb2_grpc.JobsStub(channel).PurgeJobs(jobs_pb2.PurgeJobsRequest(filter=SUCCESS))
        return response.purged


async def _succeeded_on(sidecar, make_client) -> str:
    """Run one job to success through `sidecar`, whose answer then comes from the kept row."""
    client = make_client(address=sidecar.address)

    @client.durable("reports:build")
    async def build(n: int) -> int:
        return n * 2

    async with client:
        handle = await build(21)
        assert await handle.result(timeout=30) == 42
    assert await _await_job(sidecar.address, handle.id) == types_pb2.JOB_STATE_SUCCESS
    return handle.id


async def test_purged_on_the_same_sidecar__is_not_found_at_once(two_sidecars, make_client) -> None:
    here, _ = two_sidecars
    job_id = await _succeeded_on(here, make_client)
    assert await _purge(here.address) == 1
    assert await _await_job(here.address, job_id) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("where", ["another sidecar", "by hand"])
async def test_deleted_elsewhere__is_not_found_once_the_notice_arrives(two_sidecars, make_client, db, where) -> None:
    here, there = two_sidecars
    job_id = await _succeeded_on(here, make_client)
    if where == "another sidecar":
        assert await _purge(there.address) == 1
    else:  # as retention or an operator would
        assert db.execute("DELETE FROM perdure.jobs WHERE id = %s", (job_id,)).rowcount == 1
    deadline = asyncio.get_running_loop().time() + NOTICE_WAIT
    while (answer := await _await_job(here.address, job_id)) != grpc.StatusCode.NOT_FOUND:
        assert answer == types_pb2.JOB_STATE_SUCCESS
        assert asyncio.get_running_loop().time() < deadline, "the deleted job is still answered from the kept row"
        await asyncio.sleep(0.05)


def _notices(db, statement: str) -> list[str]:
    """The payloads on the deleted-jobs channel that `statement` sends, before a marker."""
    db.execute("LISTEN perdure_deleted")
    db.execute(statement)
    db.execute("NOTIFY perdure_deleted, 'end'")
    payloads = []
    for notification in db.notifies(timeout=10):
        if notification.payload == "end":
            return payloads
        payloads.append(notification.payload)
    raise AssertionError("the marker never came")


def test_deleted_jobs_notice__one_per_statement_and_only_for_successes(db) -> None:
    db.execute(
        "INSERT INTO perdure.jobs (id, namespace, name, state, payload, payload_encoding, max_attempts, backoff,"
        " initial_delay, max_delay, jitter, timeout, run_at, attempt)"
        " SELECT gen_random_uuid(), 'ns', 'fn', state, '\\x'::bytea, 'json', 3, 'fixed', '1s', '1s', 0, '30s',"
        " now(), 1 FROM unnest(array['dead', 'cancelled', 'success', 'success']) AS state")
    assert _notices(db, "DELETE FROM perdure.jobs WHERE state <> 'success'") == []
    assert _notices(db, "DELETE FROM perdure.jobs") == [""]
