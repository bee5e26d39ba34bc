"""Leases, reclaiming, shutdown and migrations: the recovery promises, on fabricated and real state."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from perdure import JobDeadError
from perdured.metrics import Metrics
from perdured.migrate import SchemaTooNew, load_migrations, migrate
from perdured.store import Outcome, Store

from ..conftest import new_job, start_sidecar


def fabricate_running(db, name: str, *, attempt: int, max_attempts: int, expired: bool) -> str:
    """A job that some sidecar claimed and then stopped renewing (or still renews)."""
    row = db.execute(
        """INSERT INTO perdure.jobs (id, namespace, name, state, payload, payload_encoding, attempt, max_attempts,
                                     backoff, initial_delay, max_delay, jitter, timeout, run_at,
                                     lease_expires_at, sidecar_id, worker_id)
           VALUES (gen_random_uuid(), 'default', %s, 'running', '', 'json', %s, %s, 'fixed', '1s', '1s', 0, '30s',
                   now(), now() + CASE WHEN %s THEN interval '-1 second' ELSE interval '1 hour' END, 'gone', 'w')
           RETURNING id""", (name, attempt, max_attempts, expired)).fetchone()
    db.execute("INSERT INTO perdure.attempts (job_id, number, sidecar_id) VALUES (%s, %s, 'gone')", (row[0], attempt))
    return str(row[0])


async def wait_for_state(db, job_id: str, states: set[str], timeout: float = 30) -> str:
    for _ in range(int(timeout / 0.05)):
        state = db.execute("SELECT state FROM perdure.jobs WHERE id = %s", (job_id,)).fetchone()[0]
        if state in states:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}")


async def test_expired_lease__is_reclaimed_by_a_live_sidecars_reaper(database_url, db, make_client) -> None:
    sidecar = await start_sidecar(database_url, lease=0.5)
    try:
        expired = fabricate_running(db, "reports:build", attempt=1, max_attempts=3, expired=True)
        held = fabricate_running(db, "reports:build", attempt=1, max_attempts=3, expired=False)
        exhausted = fabricate_running(db, "reports:build", attempt=3, max_attempts=3, expired=True)
        assert await wait_for_state(db, expired, {"pending"}) == "pending"
        assert await wait_for_state(db, exhausted, {"dead"}) == "dead"
        # A lease that is still valid is left alone.
        assert db.execute("SELECT state FROM perdure.jobs WHERE id = %s", (held,)).fetchone()[0] == "running"
        outcome, error = db.execute("SELECT outcome, error->>'type' FROM perdure.attempts WHERE job_id = %s",
                                    (expired,)).fetchone()
        assert (outcome, error) == ("lease_expired", "perdure.LeaseExpired")

        perdure = make_client(address=sidecar.address)

        @perdure.durable("reports:build")
        async def build() -> str:
            return "rebuilt"

        async with perdure:
            assert await perdure.handle(expired).result(timeout=30) == "rebuilt"
            with pytest.raises(JobDeadError) as caught:
                await perdure.handle(exhausted).result(timeout=5)
            assert caught.value.error_type == "perdure.LeaseExpired"
    finally:
        await sidecar.stop()


async def test_running_jobs__keep_their_lease_while_the_stream_lives(database_url, db, make_client) -> None:
    sidecar = await start_sidecar(database_url, lease=0.6)
    try:
        perdure = make_client(address=sidecar.address)
        release = asyncio.Event()
        started = asyncio.Event()

        @perdure.durable("long", timeout=60)
        async def long() -> str:
            started.set()
            await release.wait()
            return "done"

        async with perdure:
            handle = await long()
            await asyncio.wait_for(started.wait(), 30)
            first = db.execute("SELECT lease_expires_at FROM perdure.jobs WHERE id = %s", (handle.id,)).fetchone()[0]
            # Several lease periods pass; renewals push the expiry on and nobody reclaims the job.
            for _ in range(200):
                now = db.execute("SELECT lease_expires_at FROM perdure.jobs WHERE id = %s", (handle.id,)).fetchone()[0]
                if now is not None and (now - first).total_seconds() > 1.5:
                    break
                await asyncio.sleep(0.05)
            assert (now - first).total_seconds() > 1.5
            release.set()
            assert await handle.result(timeout=30) == "done"
            assert [a.outcome for a in (await handle.details()).attempts] == ["succeeded"]
    finally:
        await sidecar.stop()


async def test_sigterm__lets_handlers_finish_within_the_grace_then_releases_the_rest(database_url, db, make_client) -> None:
    sidecar = await start_sidecar(database_url, shutdown_grace=0.5)
    perdure = make_client(address=sidecar.address, worker_concurrency=2)
    quick_started, stuck_started = asyncio.Event(), asyncio.Event()
    finish_quick = asyncio.Event()

    @perdure.durable("quick")
    async def quick() -> str:
        quick_started.set()
        await finish_quick.wait()
        return "finished in the grace period"

    @perdure.durable("stuck", max_attempts=2, initial_delay=0.01, jitter=0)
    async def stuck() -> None:
        stuck_started.set()
        await asyncio.sleep(3600)

    async with perdure:
        await quick()
        stuck_job = await stuck()
        await asyncio.wait_for(asyncio.gather(quick_started.wait(), stuck_started.wait()), 30)
        stopping = asyncio.ensure_future(sidecar.stop())
        while sidecar.dispatcher.accepting:  # shutdown has begun: no new work is taken
            await asyncio.sleep(0.01)
        finish_quick.set()
        await stopping
    # The quick one was acknowledged and committed; the stuck one is back.
    rows = dict(db.execute("SELECT name, state FROM perdure.jobs").fetchall())
    assert rows == {"quick": "success", "stuck": "pending"}

    # The release did not spend one of its two attempts: a new worker that fails it twice kills it.
    replacement = await start_sidecar(database_url)
    try:
        again = make_client(address=replacement.address)

        @again.durable("stuck")
        async def failing_now() -> None:
            raise RuntimeError("broken for real")

        async with again:
            with pytest.raises(JobDeadError):
                await again.handle(stuck_job.id).result(timeout=30)
            details = await again.handle(stuck_job.id).details()
    finally:
        await replacement.stop()
    assert [a.outcome for a in details.attempts] == ["released", "failed", "failed"]
    assert details.attempts[0].error.type == "perdure.Released"


async def test_await_job__on_one_sidecar_wakes_when_another_finishes_it(database_url, make_client) -> None:
    worker_side, reader_side = await start_sidecar(database_url), await start_sidecar(database_url)
    try:
        worker = make_client(address=worker_side.address)
        reader = make_client(address=reader_side.address)
        gate = asyncio.Event()

        @worker.durable("echo")
        async def echo(value: str) -> str:
            await gate.wait()
            return value

        async with worker, reader:
            handle = await reader.enqueue("echo", "across")
            result = asyncio.ensure_future(handle.result(timeout=30))
            await asyncio.sleep(0.1)
            assert not result.done()
            gate.set()
            assert await result == "across"
    finally:
        await worker_side.stop()
        await reader_side.stop()


async def test_migrate__many_sidecars_at_once_apply_each_migration_once(empty_database_url) -> None:
    async def one() -> list[int]:
        async with await psycopg.AsyncConnection.connect(empty_database_url) as conn:
            return await migrate(conn)

    results = await asyncio.gather(*(one() for _ in range(6)))
    latest = len(load_migrations())
    assert sorted(results, key=len) == [[]] * 5 + [list(range(1, latest + 1))]
    async with await psycopg.AsyncConnection.connect(empty_database_url) as conn:
        rows = await (await conn.execute("SELECT version FROM perdure.schema_migrations ORDER BY 1")).fetchall()
    assert [r[0] for r in rows] == list(range(1, latest + 1))


async def test_migrate__refuses_a_schema_newer_than_it_knows(database_url) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO perdure.schema_migrations (version, name, checksum) VALUES (999, 'future', '')")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(SchemaTooNew, match="schema is at version 999.*upgrade perdured"):
            await migrate(conn)


async def test_store_queries__all_parse_and_run(database_url) -> None:
    store = await Store.open(database_url, 2)
    try:
        assert await store.next_run_in("default", ["x"]) is None
        assert await store.reclaim_expired(10, {"type": "t"}) == []
        assert await store.renew_leases([], 1.0, "s") == set()
    finally:
        await store.close()


async def test_database_connections_cut__sidecar_reconnects_and_loses_nothing(sidecar, make_client, db) -> None:
    """What a PostgreSQL restart does to a sidecar: every connection, LISTEN included, is cut."""
    perdure = make_client()

    @perdure.durable("echo")
    async def echo(value: int) -> int:
        return value

    async with perdure:
        assert await (await echo(1)).result(timeout=30) == 1
        cut = db.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
        assert cut >= 2  # the pool and the listener
        handles = [await echo(n) for n in range(2, 6)]
        assert [await h.result(timeout=30) for h in handles] == [2, 3, 4, 5]
    assert db.execute("SELECT count(*) FROM perdure.jobs WHERE state = 'success'").fetchone()[0] == 5


async def test_migrate__refuses_a_migration_changed_after_it_was_applied(database_url) -> None:
    from dataclasses import replace

    from perdured.migrate import SchemaMismatch

    changed = [replace(m, sql=m.sql + "\n-- edited") if m.version == 1 else m for m in load_migrations()]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(SchemaMismatch, match="0001_core.sql differs from the one applied"):
            await migrate(conn, changed)
        assert await migrate(conn) == []  # the real files still match


async def test_store__a_statement_aborted_to_break_a_deadlock_is_run_again(database_url, db) -> None:
    first, second = sorted(fabricate_running(db, "x", attempt=1, max_attempts=3, expired=False) for _ in range(2))
    outcomes = [Outcome(uuid.UUID(job_id), 1, "success", "succeeded", result=b"1", result_encoding="json")
                for job_id in (second, first)]
    store = await Store.open(database_url, 2, metrics=Metrics(served=True))
    try:
        async with await psycopg.AsyncConnection.connect(database_url) as other:
            # The other client holds `second`; the finish takes `first` (rows go in id order) and
            # waits for `second`; then the other client asks for `first`: a deadlock. The other
            # client waits longer before checking for one, so PostgreSQL aborts the finish.
            await other.execute("SET deadlock_timeout = '30s'")
            await other.execute("SELECT 1 FROM perdure.jobs WHERE id = %s FOR UPDATE", (second,))
            finish = asyncio.create_task(store.finish(outcomes))
            while not db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()[0]:
                await asyncio.sleep(0.01)
            await other.execute("SELECT 1 FROM perdure.jobs WHERE id = %s FOR UPDATE", (first,))
            await other.commit()
        finished = await finish
        assert {row["state"] for row in finished.values()} == {"success"} and len(finished) == 2
        assert store.metrics.registry.get_sample_value("perdure_database_errors_total") == 1  # it happened, once
    finally:
        await store.close()


async def test_store_finish__returns_whole_rows_only_of_the_jobs_asked_for(database_url) -> None:
    """The rest come in brief (what the sidecar itself uses), their other columns null."""
    store = await Store.open(database_url, 1)
    try:
        jobs = [new_job("finish", "finish:noop") for _ in range(2)]
        await store.enqueue(jobs, sidecar_id="sidecar", lease=30)
        claimed = await store.claim("finish", ["finish:noop"], ["worker"] * 2, 30, "sidecar")
        rows = await store.finish([Outcome(row["id"], row["attempt"], "success", "succeeded", result=b"1",
                                           result_encoding="json") for row in claimed],
                                  whole=lambda job_id: job_id == jobs[0].id)
    finally:
        await store.close()
    awaited, other = rows[(jobs[0].id, 1)], rows[(jobs[1].id, 1)]
    assert awaited["whole"] and awaited["payload"] == b"[]" and awaited["result"] == b"1"
    assert awaited["created_at"] is not None and awaited["labels"] == {}
    assert not other["whole"] and (other["namespace"], other["name"], other["state"]) == ("finish", "finish:noop", "success")
    assert other["payload"] is None and other["result"] is None and other["created_at"] is None
