"""Claims stay cheap after a large enqueue, whatever PostgreSQL's statistics say: the claimed
jobs are found by primary key, and a sidecar that enqueued many jobs refreshes the statistics
itself (scheduler.ANALYZE_AFTER) rather than wait for autovacuum."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg

import perdure as sdk
from perdured.scheduler import ANALYZE_AFTER
from perdured.store import QUERIES

NEW_JOB = ("INSERT INTO perdure.jobs (id, namespace, name, state, payload, payload_encoding, max_attempts, backoff, "
           "initial_delay, max_delay, jitter, timeout, run_at, finished_at) "
           "SELECT gen_random_uuid(), %s, 'plans:noop', %s, '', 'json', 1, 'fixed', '1 s', '1 s', 0, '1 s', now(), "
           "CASE WHEN %s = 'success' THEN now() END FROM generate_series(1, %s)")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_claim__finds_its_jobs_by_primary_key_with_statistics_from_before_a_backlog(db) -> None:
    db.execute("ALTER TABLE perdure.jobs SET (autovacuum_enabled = false)")  # the statistics stay as taken
    db.execute(NEW_JOB, ("history", "success", "success", 20_000))
    db.execute("ANALYZE perdure.jobs")  # a moment when no job was runnable
    db.execute(NEW_JOB, ("backlog", "pending", "pending", 5_000))
    params = {"names": ["plans:noop"], "namespace": "backlog", "slots": ["worker"] * 256,
              "lease": timedelta(seconds=30), "sidecar_id": "sidecar"}
    with db.transaction(force_rollback=True):
        (plan,) = db.execute("EXPLAIN (FORMAT JSON) " + QUERIES["claim"], params).fetchone()[0]
    update = next(node for node in _nodes(plan["Plan"]) if node.get("Operation") == "Update")
    reads = [(node["Node Type"], node.get("Index Name")) for node in _nodes(update)
             if node.get("Alias") == "j" and "Scan" in node["Node Type"]]
    assert reads == [("Index Scan", "jobs_pkey")], json.dumps(update, indent=1)[:3000]


async def test_a_large_enqueue__has_the_sidecar_refresh_the_statistics(sidecar, database_url) -> None:
    def analyses() -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT analyze_count FROM pg_stat_user_tables "
                               "WHERE schemaname = 'perdure' AND relname = 'jobs'").fetchone()
            return int(row[0]) if row else 0

    async with sdk.Perdure(address=sidecar.address, namespace="plans") as client:
        await client.enqueue_many("plans:noop", [() for _ in range(ANALYZE_AFTER - 1)])
        await asyncio.sleep(1)
        assert analyses() == 0  # not yet: fewer jobs than that are no reason
        await client.enqueue("plans:noop")
        async with asyncio.timeout(30):
            while analyses() == 0:
                await asyncio.sleep(0.1)
