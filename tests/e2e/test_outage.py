"""PostgreSQL goes down under a running sidecar, then comes back: the sidecar stays up, calls
answer UNAVAILABLE before the caller's deadline, workers keep their streams, an SDK enqueue
made during the outage is retried safely (one job, not two), and everything resumes by itself.

The database here is a PostgreSQL of this test's own, stopped (fast shutdown) and started
again; the suite's shared server is not touched."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from bench.harness import RestartablePostgres, restartable_postgres
from perdure import Perdure
from perdure.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2
from perdured.migrate import migrate

from ..conftest import spawn_perdured


@pytest.fixture
def postgres() -> Iterator[RestartablePostgres]:
    with restartable_postgres() as database:
        yield database


async def test_outage__unavailable_meanwhile_and_everything_resumes_by_itself(postgres) -> None:
    async with await psycopg.AsyncConnection.connect(postgres.url) as conn:
        await migrate(conn)
    sidecar = spawn_perdured(postgres.url, "--lease", "5")
    client = Perdure(address=sidecar.address, retry_unavailable=60)

    @client.durable("outage:echo")
    async def echo(value: int) -> int:
        return value

    try:
        async with client, grpc.aio.insecure_channel(sidecar.address) as channel:
            await client.wait_until_serving()
            worker_id = client._worker.worker_id  # type: ignore[union-attr]
            assert await (await echo(1)).result(timeout=30) == 1

            postgres.stop()
            jobs = jobs_pb2_grpc.JobsStub(channel)
            request = jobs_pb2.EnqueueRequest(name="outage:echo",
                                              payload=types_pb2.Payload(data=b'{"args": [2]}', encoding="json"))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await jobs.Enqueue(request, timeout=20)  # answered before this deadline
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
            assert "database" in raised.value.details()

            # An enqueue while the database is down: the SDK keeps trying (with the job's own id).
            pending = asyncio.create_task(echo(3))
            await asyncio.sleep(1.0)  # let it meet the outage at least once
            assert not pending.done()
            postgres.start()
            handle = await asyncio.wait_for(pending, 90)
            assert await handle.result(timeout=60) == 3
            assert sidecar.process.poll() is None  # the sidecar stayed up throughout
            assert client._worker.worker_id == worker_id  # type: ignore[union-attr]  # same stream
    finally:
        await client.stop()
        sidecar.terminate()
    async with await psycopg.AsyncConnection.connect(postgres.url) as conn:
        cursor = await conn.execute("SELECT payload FROM perdure.jobs WHERE name = 'outage:echo' ORDER BY id")
        calls = [json.loads(bytes(row[0]))["args"] for row in await cursor.fetchall()]
    assert calls.count([3]) == 1  # retried, never duplicated
