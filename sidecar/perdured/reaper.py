"""Upkeep: renew our leases in one statement, reclaim those a dead sidecar left behind,
apply the cancellation policies, delete old finished jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

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
    async def reclaim() -> int:
        rows = await store.reclaim_expired(RECLAIM_BATCH, LEASE_EXPIRED)
        for row in rows:
            log.warning("job.lease_expired", job_id=str(row["id"]), attempt=row["attempt"], state=row["state"])
        return len(rows)

    await _in_batches_forever(reclaim, lease, "leases.reclaim_failed")


async def cancel_overdue_forever(store: Store, lease: float) -> None:
    """The cancellation policies: cancel jobs not started in time, or not ended by their
    deadline. Every sidecar runs this, as often as the reaper; SKIP LOCKED keeps them apart."""
    async def cancel() -> int:
        rows = await store.cancel_overdue(RECLAIM_BATCH)
        for row in rows:
            log.info("job.cancelled_by_policy", job_id=str(row["id"]), name=row["name"], reason=row["reason"])
        return len(rows)

    await _in_batches_forever(cancel, lease, "policies.cancel_failed")


async def _in_batches_forever(batch: Callable[[], Awaitable[int]], lease: float, failure: str) -> None:
    """Run `batch` a few times per lease, and again at once while it comes back full."""
    interval = min(max(lease / 4, 0.2), 10.0)
    while True:
        await asyncio.sleep(interval)
        try:
            while await batch() >= RECLAIM_BATCH:
                pass
        except Exception as exc:
            log.error(failure, error=str(exc))


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


async def workers_and_activity_forever(dispatcher: Dispatcher, lease: float) -> None:
    """Keep the cluster's list of workers current: ours are still here (three times per lease),
    and those of sidecars that died have expired. Old activity rows go too."""
    rounds = 0
    while True:
        await asyncio.sleep(lease / 3)
        try:
            await dispatcher.touch_workers()
            await dispatcher.store.delete_expired_workers()
            rounds += 1
            if rounds % 100 == 0:
                await dispatcher.store.delete_old_activity()
        except Exception as exc:
            log.error("workers.update_failed", error=str(exc))


QUEUE_DEPTH_INTERVAL = 10.0


async def queue_depth_forever(store: Store) -> None:
    """Refresh the queue-depth gauges (only while metrics are served)."""
    gauge = store.metrics.queue_depth
    while True:
        try:
            rows = await store.function_stats(None, 60.0)
            gauge.clear()
            for row in rows:
                for state in ("pending", "running", "suspended"):
                    gauge.labels(row["namespace"], row["name"], state).set(row[state])
        except Exception as exc:
            log.error("metrics.queue_depth_failed", error=str(exc))
        await asyncio.sleep(QUEUE_DEPTH_INTERVAL)
