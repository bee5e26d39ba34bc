"""The Node.js SDK's worker, driven from here through a real sidecar and database."""

from __future__ import annotations

import psycopg

from perdure import Perdure
from tests.e2e.test_failures import WAIT, eventually


async def test_node_worker__a_slot_is_free_once_answered_while_the_outcome_is_committed(
        sidecar, node_worker, database_url, db) -> None:
    """"At most `concurrency` unanswered" (workers.proto): with one slot, the next job runs as
    soon as the last one's outcome is sent, not once the sidecar has acknowledged its commit
    (held up here by a lock on the job's row)."""
    worker = await node_worker(sidecar.address, 1)
    async with Perdure(address=sidecar.address) as client:
        held = await client.enqueue("reconnect:hold", "first")
        await eventually(lambda: worker.started("first") == 1, "the first job to start")
        echo = await client.enqueue("reconnect:echo", 2)
        with psycopg.connect(database_url) as locker:  # in a transaction until the block ends
            locker.execute("SELECT FROM perdure.jobs WHERE id = %s FOR UPDATE", (held.id,))
            (worker.directory / "release-first").touch()
            # Well within the sidecar's lock wait (2 s), after which the finish would give up.
            assert await echo.result(timeout=1.5) == {"value": 2, "pid": worker.pid}
            assert db.execute("SELECT state FROM perdure.jobs WHERE id = %s", (held.id,)).fetchone() == ("running",)
        assert await held.result(timeout=WAIT) == {"token": "first", "pid": worker.pid}
