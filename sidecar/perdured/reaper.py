"""Lease upkeep: renew ours in one statement, reclaim those a dead sidecar left behind."""

from __future__ import annotations

import asyncio

from perdured.dispatch import Dispatcher
from perdured.logs import log
from perdured.store import Store

RECLAIM_BATCH = 500
LEASE_EXPIRED = {
    "type": "perdure.LeaseExpired",
    "message": "the sidecar running this attempt stopped renewing its lease (it died or lost the database)",
    "traceback": "",
    "non_retryable": False,
}


async def renew_leases_forever(dispatcher: Dispatcher, lease: float) -> None:
    # Three renewals per lease: one late or failed renewal does not lose a job.
    while True:
        await asyncio.sleep(lease / 3)
        try:
            await dispatcher.renew_leases()
        except Exception as exc:
            log.error("leases.renew_failed", error=str(exc))


async def reclaim_forever(store: Store, lease: float) -> None:
    """Every sidecar runs this; SKIP LOCKED keeps them from stepping on each other."""
    interval = min(max(lease / 4, 0.2), 10.0)
    while True:
        await asyncio.sleep(interval)
        try:
            while True:
                rows = await store.reclaim_expired(RECLAIM_BATCH, LEASE_EXPIRED)
                for row in rows:
                    log.warning("job.lease_expired", job_id=str(row["id"]), attempt=row["attempt"], state=row["state"])
                if len(rows) < RECLAIM_BATCH:
                    break
        except Exception as exc:
            log.error("leases.reclaim_failed", error=str(exc))


RETENTION_BATCH = 1000


async def delete_old_jobs_forever(store: Store, retention: float, interval: float) -> None:
    """Keep the hot tables small: delete finished jobs older than `retention` seconds, in
    batches, one sidecar at a time (the others find the lock taken and skip their turn)."""
    while True:
        await asyncio.sleep(interval)
        try:
            while (deleted := await store.delete_finished(retention, RETENTION_BATCH)) is not None and deleted:
                log.info("retention.deleted", jobs=deleted)
                if deleted < RETENTION_BATCH:
                    break
        except Exception as exc:
            log.error("retention.failed", error=str(exc))
