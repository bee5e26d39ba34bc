"""The peer, in the same run on the same PostgreSQL: pgqueuer (from PyPI) draining N no-op
jobs with one process, as our own drain does, in its fastest set-up (the asyncpg driver,
dequeuing 100 jobs at a time). Its tables live beside ours, under its own names."""

from __future__ import annotations

import asyncio
import time

BATCH = 100


async def drain_rate(url: str, jobs: int) -> float:
    """Jobs per second for pgqueuer to drain `jobs` no-op jobs enqueued beforehand."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.has_table("pgqueuer"):
            await queries.install()
        await queries.clear_queue()
        for start in range(0, jobs, 10_000):
            count = min(10_000, jobs - start)
            await queries.enqueue(["bench_noop"] * count, [None] * count, [0] * count)
        manager = QueueManager(queries)
        done = 0

        @manager.entrypoint("bench_noop")
        async def noop(job: object) -> None:
            nonlocal done
            done += 1

        begin = time.perf_counter()
        await manager.run(mode=QueueExecutionMode.drain, batch_size=BATCH)
        elapsed = time.perf_counter() - begin
        await queries.uninstall()
    finally:
        await conn.close()
    if done != jobs:
        raise RuntimeError(f"pgqueuer ran {done} of {jobs} jobs")
    return jobs / elapsed


def measure(url: str, jobs: int) -> float | None:
    """pgqueuer's drain rate (jobs/s), or None, saying why, when it is not installed."""
    try:
        import asyncpg  # noqa: F401
        import pgqueuer  # noqa: F401
    except ImportError:
        print("peer: pgqueuer (with asyncpg) is not installed: pip install -e '.[bench]'; no peer figure")
        return None
    return asyncio.run(drain_rate(url, jobs))
