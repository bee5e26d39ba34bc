"""Claims: a worker with more free slots than one claim offers (scheduler.CLAIM_LIMIT) is
filled by claims in a row, none larger than the limit."""

from __future__ import annotations

import asyncio

import perdure as sdk
from perdured.scheduler import CLAIM_LIMIT

SLOTS = CLAIM_LIMIT + 88


async def test_a_worker_with_more_slots_than_a_claim_offers__gets_them_all_filled(sidecar, db) -> None:
    async with sdk.Perdure(address=sidecar.address, namespace="claims") as producer:
        await producer.enqueue_many("claims:hold", [(n,) for n in range(SLOTS + 10)])

    started: set[int] = set()
    release = asyncio.Event()
    worker = sdk.Perdure(address=sidecar.address, namespace="claims", worker_concurrency=SLOTS)

    @worker.durable("claims:hold")
    async def hold(n: int) -> None:
        started.add(n)
        await release.wait()

    async with worker:
        # The sidecar's safety poll is set beyond this wait (conftest): only claims made as
        # slots are found free can fill them.
        async with asyncio.timeout(60):
            while len(started) < SLOTS:
                await asyncio.sleep(0.02)
        running = db.execute("SELECT count(*) FROM perdure.jobs WHERE namespace = 'claims' AND state = 'running'")
        assert running.fetchone()[0] == SLOTS  # every slot, and not one job more
        release.set()
        async with asyncio.timeout(60):
            while len(started) < SLOTS + 10:
                await asyncio.sleep(0.02)
    # The attempts of one claim share its transaction's start time.
    claims = db.execute("SELECT count(*) FROM perdure.attempts a JOIN perdure.jobs j ON j.id = a.job_id"
                        " WHERE j.namespace = 'claims' GROUP BY a.started_at ORDER BY 1 DESC").fetchall()
    assert sum(n for n, in claims) == SLOTS + 10  # one attempt each
    assert claims[0][0] == CLAIM_LIMIT  # the first claim was as large as it may be, and none larger
