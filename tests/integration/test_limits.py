"""Flow control across sidecars: concurrency keys, per-function concurrency and rate limits,
cancellation policies and dead letters, with several sidecars sharing one PostgreSQL.

Handlers write when they start and end to a table (by the database clock); the checks
look at those rows afterwards, never at how long anything took."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta

import psycopg
import pytest

import perdure
from perdure import RateLimit
from perdure.v1 import workers_pb2, workers_pb2_grpc

from ..conftest import start_sidecar


@pytest.fixture
async def three_sidecars(database_url):
    sidecars = [await start_sidecar(database_url, lease=2.0) for _ in range(3)]
    yield sidecars
    for sidecar in sidecars:
        await sidecar.stop()


@pytest.fixture
async def runs(database_url):
    """A table of handler runs, and a connection the handlers write it through."""
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await conn.execute("CREATE TABLE test_runs (job_id text PRIMARY KEY, key text, "
                       "started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz)")

    class Runs:
        async def start(self, key: str | None = None) -> None:
            ctx = perdure.context()
            await conn.execute("INSERT INTO test_runs (job_id, key) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                               (ctx.job_id, key))

        async def end(self) -> None:
            await conn.execute("UPDATE test_runs SET ended_at = clock_timestamp() WHERE job_id = %s",
                               (perdure.context().job_id,))

        async def all(self) -> list[tuple[str, str | None, object, object]]:
            cursor = await conn.execute("SELECT job_id, key, started_at, ended_at FROM test_runs ORDER BY started_at")
            return await cursor.fetchall()

    yield Runs()
    await conn.close()


def most_at_once(intervals) -> int:
    """The largest number of (start, end) intervals that overlap at any moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda edge: (edge[0], edge[1]))  # an end before a start at the same instant
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def workers_on(sidecars, make_client, **options):
    return [make_client(address=sidecar.address, **options) for sidecar in sidecars]


async def test_concurrency_key__one_job_per_key_at_a_time_in_order_across_sidecars(
        three_sidecars, make_client, runs) -> None:
    workers = workers_on(three_sidecars, make_client, worker_concurrency=4)
    for worker in workers:
        @worker.durable("tenant:sync")
        async def sync(tenant: str, n: int) -> None:
            await runs.start(tenant)
            # A durable sleep suspends the job: it keeps its key's slot while it sleeps.
            await perdure.context().sleep(0.05)
            await runs.end()

    enqueued: dict[str, list[str]] = defaultdict(list)
    async with workers[0], workers[1], workers[2]:
        for worker in workers:
            await worker.wait_until_serving()
        handles = []
        for n in range(5):
            for tenant in ("acme", "globex", "initech"):
                # Through each sidecar in turn: the key holds whoever enqueued the job.
                handle = await workers[n % 3].enqueue("tenant:sync", tenant, n, concurrency_key=tenant)
                enqueued[tenant].append(handle.id)
                handles.append(handle)
        for handle in handles:
            await handle.result(timeout=60)
        details = await handles[0].details()

    assert details.concurrency_key == "acme"
    rows = await runs.all()
    assert len(rows) == 15
    for tenant in enqueued:
        mine = [row for row in rows if row[1] == tenant]
        assert most_at_once([(start, end) for _, _, start, end in mine]) == 1, tenant
        assert [job_id for job_id, *_ in mine] == enqueued[tenant]  # in order


async def test_concurrency_key__a_job_waiting_for_its_retry_keeps_its_place(three_sidecars, make_client, runs) -> None:
    workers = workers_on(three_sidecars[:2], make_client, worker_concurrency=3)
    failed_once: set[str] = set()
    for worker in workers:
        @worker.durable("ledger:post", initial_delay=0.2, max_delay=0.2, jitter=0)
        async def post(entry: str) -> str:
            await runs.start(entry)
            if entry == "first" and entry not in failed_once:
                failed_once.add(entry)
                raise RuntimeError("the ledger was busy")
            await runs.end()
            return entry

    async with workers[0], workers[1]:
        for worker in workers:
            await worker.wait_until_serving()
        first = await workers[0].enqueue("ledger:post", "first", concurrency_key="account-9")
        second = await workers[1].enqueue("ledger:post", "second", concurrency_key="account-9")
        assert [await first.result(timeout=30), await second.result(timeout=30)] == ["first", "second"]
        first_details = await first.details()
    assert [a.outcome for a in first_details.attempts] == ["failed", "succeeded"]
    # While the first waited for its retry, the second did not overtake it: its handler
    # started after the first's had ended (both times by the database clock).
    ended = {key: (start, end) for _, key, start, end in await runs.all()}
    assert ended["second"][0] >= ended["first"][1]


async def test_key_concurrency__at_most_k_per_key(three_sidecars, make_client, runs) -> None:
    workers = workers_on(three_sidecars, make_client, worker_concurrency=5)
    for worker in workers:
        @worker.durable("video:encode", key_concurrency=2)
        async def encode(user: str, n: int) -> None:
            await runs.start(user)
            await asyncio.sleep(0.05)
            await runs.end()

    async with workers[0], workers[1], workers[2]:
        for worker in workers:
            await worker.wait_until_serving()
        handles = [await workers[n % 3].enqueue("video:encode", user, n, concurrency_key=user)
                   for n in range(8) for user in ("ann", "bob")]
        for handle in handles:
            await handle.result(timeout=60)

    rows = await runs.all()
    for user in ("ann", "bob"):
        assert most_at_once([(start, end) for _, key, start, end in rows if key == user]) <= 2


async def test_function_concurrency__never_more_than_the_limit_whatever_the_workers(
        three_sidecars, make_client, runs) -> None:
    workers = workers_on(three_sidecars, make_client, worker_concurrency=4)
    for worker in workers:
        @worker.durable("reports:generate", concurrency=2)
        async def generate(n: int) -> int:
            await runs.start()
            await asyncio.sleep(0.05)
            await runs.end()
            return n

    async with workers[0], workers[1], workers[2]:
        for worker in workers:
            await worker.wait_until_serving()
        handles = [await workers[n % 3].enqueue("reports:generate", n) for n in range(12)]
        assert [await handle.result(timeout=60) for handle in handles] == list(range(12))

    rows = await runs.all()
    assert len(rows) == 12
    assert most_at_once([(start, end) for _, _, start, end in rows]) <= 2


async def test_function_concurrency__a_job_that_ends_lets_a_waiting_one_start_at_once(sidecar, make_client) -> None:
    """The end's notification wakes the claim (the safety poll is two minutes away): here a
    cancellation, which frees the function's only slot while the worker still has room."""
    worker = make_client(worker_concurrency=2)
    started: list[int] = []

    @worker.durable("limited:hold", concurrency=1)
    async def hold(n: int) -> int:
        started.append(n)
        if n == 1:
            await asyncio.Event().wait()  # until cancelled
        return n

    async with worker:
        await worker.wait_until_serving()
        first = await worker.enqueue("limited:hold", 1)
        while started != [1]:
            await asyncio.sleep(0.02)
        second = await worker.enqueue("limited:hold", 2)
        await asyncio.sleep(0.3)
        assert await second.status() == "pending"  # the limit holds it back
        assert await first.cancel()
        assert await second.result(timeout=10) == 2


async def test_rate_limit__never_more_starts_per_period_across_sidecars(three_sidecars, make_client, db) -> None:
    workers = workers_on(three_sidecars[:2], make_client, worker_concurrency=5)
    for worker in workers:
        @worker.durable("partner:call", rate_limit=RateLimit(3, per=0.5), key_rate_limit=RateLimit(2, per=0.5))
        async def call(n: int) -> int:
            return n

    async with workers[0], workers[1]:
        for worker in workers:
            await worker.wait_until_serving()
        handles = [await workers[n % 2].enqueue("partner:call", n, concurrency_key="k1" if n < 4 else None)
                   for n in range(10)]
        for handle in handles:
            await handle.result(timeout=60)

    # The attempts' start times are the database's, the very ones the limit counted.
    starts = db.execute("SELECT a.started_at, j.concurrency_key FROM perdure.attempts a "
                        "JOIN perdure.jobs j ON j.id = a.job_id WHERE j.name = 'partner:call' "
                        "ORDER BY a.started_at").fetchall()
    assert len(starts) == 10
    period = timedelta(seconds=0.5)
    times = [at for at, _ in starts]
    # No window of one period holds more than 3 starts: the 4th after any start is a period later.
    assert all(later - earlier >= period for earlier, later in zip(times, times[3:], strict=False))
    keyed = [at for at, key in starts if key == "k1"]
    assert all(later - earlier >= period for earlier, later in zip(keyed, keyed[2:], strict=False))


async def test_limits_change_with_the_registration__the_last_one_wins(sidecar, make_client, db) -> None:
    first = make_client()

    @first.durable("limits:changing", concurrency=3, rate_limit=RateLimit(10, per=60))
    async def changing() -> None: ...

    async with first:
        await first.wait_until_serving()
    row = db.execute("SELECT concurrency, key_concurrency, rate_limit, rate_period FROM perdure.functions "
                     "WHERE name = 'limits:changing'").fetchone()
    assert row == (3, 1, 10, timedelta(seconds=60))

    second = make_client()

    @second.durable("limits:changing")
    async def unlimited() -> None: ...

    async with second:
        await second.wait_until_serving()
    row = db.execute("SELECT concurrency, key_concurrency, rate_limit, rate_period FROM perdure.functions "
                     "WHERE name = 'limits:changing'").fetchone()
    assert row == (None, 1, None, None)


async def test_registration__limits_must_name_registered_functions(sidecar) -> None:
    import grpc

    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        call = workers_pb2_grpc.WorkersStub(channel).Work()
        await call.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(
            names=["a"], concurrency=1, limits=[workers_pb2.FunctionLimits(name="b", concurrency=1)])))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "register.limits[0].name" in raised.value.details()


# -- cancellation policies ----------------------------------------------------------------------


async def test_start_within__a_job_nobody_starts_in_time_is_cancelled(three_sidecars, make_client) -> None:
    client = make_client(address=three_sidecars[0].address)
    async with client:
        # Nothing serves this function: the job cannot start.
        late = await client.enqueue("nobody:serves", start_within=0.3)
        with pytest.raises(perdure.JobCancelledError):
            await late.result(timeout=30)
        details = await late.details()
    assert details.error.type == "perdure.StartTimeout"
    assert details.started_at is None


async def test_max_duration__running_or_suspended_too_long_is_cancelled(three_sidecars, make_client) -> None:
    worker = make_client(address=three_sidecars[1].address)
    stopped = asyncio.Event()

    @worker.durable("slow:task", max_duration=0.5)
    async def slow(mode: str) -> None:
        if mode == "sleep":
            await perdure.context().sleep(60)  # suspended
            return
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    @worker.durable("quick:task", start_within=30, max_duration=30)
    async def quick() -> str:
        return "done"

    async with worker:
        await worker.wait_until_serving()
        # Through the functions: their defaults carry the policies.
        running = await slow("run")
        suspended = await slow("sleep")
        in_time = await quick()
        for handle in (running, suspended):
            with pytest.raises(perdure.JobCancelledError):
                await handle.result(timeout=30)
            assert (await handle.details()).error.type == "perdure.DeadlineExceeded"
        await asyncio.wait_for(stopped.wait(), 30)  # the running handler was told to stop
        assert await in_time.result(timeout=30) == "done"
        details = await in_time.details()
    assert details.start_by is None and details.deadline is not None and details.max_duration == 30


# -- dead letters -------------------------------------------------------------------------------


async def test_dead_letters__list_by_error_retry_by_filter_and_purge(sidecar, make_client) -> None:
    fixed: set[str] = set()
    client = make_client()

    @client.durable("import:row", max_attempts=1)
    async def import_row(row: str, error: str) -> str:
        if row in fixed:
            return row
        raise {"value": ValueError, "key": KeyError}[error](f"row {row} is broken")

    @client.durable("import:other", max_attempts=1)
    async def other() -> None:
        raise ValueError("other broke")

    async with client:
        await client.wait_until_serving()
        handles = [await import_row(str(n), "value" if n < 3 else "key") for n in range(5)]
        handles.append(await other())
        for handle in handles:
            with pytest.raises(perdure.JobDeadError):
                await handle.result(timeout=30)

        dead = await client.list_jobs("import:row", status="dead")
        assert len(dead) == 5
        value_errors = await client.list_jobs("import:row", status="dead", error_type="ValueError")
        assert sorted(job.args[0] for job in value_errors) == ["0", "1", "2"]
        assert len(await client.list_jobs(status="dead", error_contains="ROW 4 IS")) == 1
        assert len(await client.list_jobs(status="dead", error_type="ValueError")) == 4  # both functions

        fixed.update({"0", "1", "2"})
        assert await client.retry_jobs("import:row", error_type="ValueError") == 3
        for handle in handles[:3]:
            assert await handle.result(timeout=30) == handle_arg(await handle.details())
        assert await client.retry_jobs("import:row", error_type="ValueError") == 0  # nothing left

        assert await client.purge_jobs("import:row") == 2  # the two KeyErrors
        assert await client.list_jobs("import:row", status="dead") == []
        assert len(await client.list_jobs("import:other", status="dead")) == 1  # not matched: kept
        assert len(await client.list_jobs("import:row", status="success")) == 3

        with pytest.raises(perdure.InvalidArgumentError, match="states"):
            await client.purge_jobs(status="running")
        with pytest.raises(perdure.InvalidArgumentError, match="states"):
            await client.retry_jobs(status="success")
        with pytest.raises(ValueError, match="unknown status"):
            await client.list_jobs(status="deceased")
        assert len(await client.list_jobs("import:row", status="success")) == 3  # nothing changed


def handle_arg(details: perdure.JobDetails) -> str:
    return details.args[0]


async def test_max_duration__cancels_the_overdue_job_with_its_unfinished_children(three_sidecars, make_client) -> None:
    worker = make_client(address=three_sidecars[0].address)
    spawned: list[str] = []

    @worker.durable("orchestrate:slowly", max_duration=0.5)
    async def orchestrate() -> None:
        child = await worker.enqueue("nobody:serves:child")  # a child nobody runs: the parent waits
        spawned.append(child.id)
        await child.result()

    async with worker:
        await worker.wait_until_serving()
        parent = await orchestrate()
        with pytest.raises(perdure.JobCancelledError):
            await parent.result(timeout=30)
        child = worker.handle(spawned[0])
        assert await child.status() == "cancelled"  # cancelled with it, not left pending forever
        parent_details, child_details = await parent.details(), await child.details()
    assert parent_details.error.type == "perdure.DeadlineExceeded"
    assert child_details.error is None  # its own error says nothing: it was not overdue itself
