"""A worker process of the chaos soak (bench/chaos.py): it serves the soak's durable functions
through one sidecar, as an application would. The side effect of every checkpointed step (the
steps named "effect-...") is a row of chaos.effects (job id, step, attempt) in the soak's
database, so that the soak can count how often each step really ran.

    python -m bench.chaos_app --address HOST:PORT --database-url URL [--concurrency N]

It prints `ready` once its stream is registered, then serves until SIGTERM (or kill -9).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
from typing import Any

from psycopg_pool import AsyncConnectionPool

from perdure import NonRetryableError, Perdure, context

# Job options of every soak job: kills cost attempts, so there are many of them and they come
# back fast; only a job whose own logic asks for it may end dead.
RETRIES: dict[str, Any] = {"max_attempts": 50, "initial_delay": 0.1, "max_delay": 1.0}
EFFECTS_TABLE = """
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE TABLE IF NOT EXISTS chaos.effects (
    job_id  uuid NOT NULL,
    step    text NOT NULL,
    attempt integer NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)"""


async def busy() -> None:
    """A moment of work, so that kills find jobs in flight."""
    await asyncio.sleep(random.uniform(0.05, 0.3))


def define(perdure: Perdure, effects: AsyncConnectionPool) -> None:
    async def effect(step: str) -> str:
        ctx = context()
        async with effects.connection() as conn:
            await conn.execute("INSERT INTO chaos.effects (job_id, step, attempt) VALUES (%s, %s, %s)",
                               (ctx.job_id, step, ctx.attempt))
        return step

    @perdure.durable("chaos:plain", **RETRIES)
    async def plain(n: int) -> int:
        await busy()
        return n

    @perdure.durable("chaos:retried", **RETRIES)
    async def retried(n: int, failures: int) -> int:
        await busy()
        if context().attempt <= failures:
            raise RuntimeError(f"attempt {context().attempt} fails on purpose")
        return n

    @perdure.durable("chaos:steps", **RETRIES)
    async def steps(n: int, count: int) -> int:
        for k in range(count):
            await context().step(f"effect-{k}", effect, f"effect-{k}")
            await busy()
        return n

    @perdure.durable("chaos:sleeper", **RETRIES)
    async def sleeper(n: int, seconds: float) -> int:
        await context().step("effect-before", effect, "effect-before")
        await context().sleep(seconds)
        await context().step("effect-after", effect, "effect-after")
        return n

    @perdure.durable("chaos:child", **RETRIES)
    async def child(n: int, k: int) -> int:
        await busy()
        return k

    @perdure.durable("chaos:parent", **RETRIES)
    async def parent(n: int, children: int) -> int:
        handles = [await child(n, k) for k in range(children)]
        return sum([await handle.result() for handle in handles])

    @perdure.durable("chaos:refused", **RETRIES)
    async def refused(n: int) -> None:
        await busy()
        raise NonRetryableError("this job asks to end dead")

    @perdure.durable("chaos:exhausted", **RETRIES)  # enqueued with max_attempts=2
    async def exhausted(n: int) -> None:
        await busy()
        raise RuntimeError("this job fails every attempt")


async def serve(address: str, database_url: str, concurrency: int) -> None:
    perdure = Perdure(address=address, worker_concurrency=concurrency, shutdown_grace=1.0)
    # Connections are checked as they are taken (PostgreSQL restarts under us), and waited for
    # briefly: while it is down, a step fails (and is retried) rather than outliving its attempt.
    async with AsyncConnectionPool(database_url, min_size=1, max_size=4, timeout=5.0, kwargs={"autocommit": True},
                                   check=AsyncConnectionPool.check_connection, open=False) as effects:
        define(perdure, effects)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with perdure:
            await perdure.wait_until_serving(timeout=60)
            print("ready", flush=True)
            await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.database_url, args.concurrency))


if __name__ == "__main__":
    main()
