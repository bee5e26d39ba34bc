"""Transactional enqueue: a job enqueued in the application's own transaction exists if and
only if that transaction commits, and runs like any other."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from perdure.transactional import enqueue, enqueue_async


async def test_committed__the_job_runs_and_rolled_back__there_is_no_job(database_url, make_client) -> None:
    client = make_client()

    @client.durable("orders:confirm")
    async def confirm(order_id: str, *, express: bool = False) -> dict:
        return {"order": order_id, "express": express}

    async with client:
        await client.wait_until_serving()
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            async with conn.transaction():
                await conn.execute("CREATE TABLE orders (id text PRIMARY KEY)")
                await conn.execute("INSERT INTO orders VALUES ('o-1')")
                kept = await enqueue_async(conn, "orders:confirm", "o-1", kwargs={"express": True}, max_attempts=5)
            with pytest.raises(RuntimeError, match="changed my mind"):
                async with conn.transaction():
                    await conn.execute("INSERT INTO orders VALUES ('o-2')")
                    lost = await enqueue_async(conn, "orders:confirm", "o-2")
                    raise RuntimeError("changed my mind")
            cursor = await conn.execute("SELECT count(*) FROM perdure.jobs WHERE id = %s", (lost,))
            assert (await cursor.fetchone())[0] == 0
        handle = client.handle(kept)
        assert await handle.result(timeout=30) == {"order": "o-1", "express": True}
        details = await handle.details()
        listed = [job.id for job in await client.list_jobs("orders:confirm")]
    assert details.max_attempts == 5 and details.args == ["o-1"] and details.kwargs == {"express": True}
    assert uuid.UUID(kept).version == 7  # ids sort by creation time, like the sidecar's
    assert listed == [kept]  # o-2 never existed


async def test_defaults__are_the_sidecars(database_url, make_client) -> None:
    client = make_client()
    async with client:
        through_sidecar = await (await client.enqueue("defaults:compare")).details()
        with psycopg.connect(database_url) as conn:
            job_id = enqueue(conn, "defaults:compare")
        through_sql = await client.handle(job_id).details()

    def policy(d):
        return (d.max_attempts, d.backoff, d.initial_delay, d.max_delay, d.jitter, d.timeout, d.priority, d.labels)

    assert policy(through_sql) == policy(through_sidecar)


async def test_options__carry_over_and_the_idempotency_key_is_shared_with_the_sidecar(database_url, make_client) -> None:
    client = make_client()
    async with client:
        first = await client.enqueue("imports:run", idempotency_key="import-7")
        with psycopg.connect(database_url) as conn:
            same = enqueue(conn, "imports:run", idempotency_key="import-7")
            keyed = enqueue(conn, "imports:run", priority=7, labels={"tenant": "acme"}, concurrency_key="acme",
                            delay=3600, start_within=7200, max_duration=60)
        details = await client.handle(keyed).details()
    assert same == first.id
    assert (details.priority, details.labels, details.concurrency_key) == (7, {"tenant": "acme"}, "acme")
    assert details.start_by is not None and details.max_duration == 60
    assert (details.run_at - details.created_at).total_seconds() >= 3599


def test_bad_input__is_refused_and_nothing_is_written(database_url) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(ValueError, match="max_attempts must be an integer of at least 1"):
            enqueue(conn, "x:y", max_attempts=0)  # the SDK's own check, before any SQL
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown option 'retries'"):
            conn.execute("SELECT perdure.enqueue('x:y', options => '{\"retries\": 3}')")
        conn.rollback()
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="name must be 1 to 255 characters"):
            conn.execute("SELECT perdure.enqueue('')")
        conn.rollback()
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="bad options"):
            conn.execute("SELECT perdure.enqueue('x:y', options => '{\"jitter\": 2}')")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM perdure.jobs").fetchone()[0] == 0
