"""How PostgreSQL plans the sidecar's statements.

Claims stay cheap after a large enqueue, whatever PostgreSQL's statistics say: the claimed
jobs are found by primary key, and a sidecar that enqueued many jobs refreshes the statistics
itself (scheduler.ANALYZE_AFTER) rather than wait for autovacuum. The statements run for every
job are planned once per connection (store.GENERIC_PLANS), and those plans read by index."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import perdure as sdk
from perdured.scheduler import ANALYZE_AFTER
from perdured.store import GENERIC_PLANS, QUERIES, Outcome, Store, _filter_values
from perdured.validation import JobFilter
from tests.conftest import new_job

NEW_JOB = ("INSERT INTO perdure.jobs (id, namespace, name, state, payload, payload_encoding, max_attempts, backoff, "
           "initial_delay, max_delay, jitter, timeout, run_at, finished_at) "
           "SELECT gen_random_uuid(), %s, 'plans:noop', %s, '', 'json', 1, 'fixed', '1 s', '1 s', 0, '1 s', now(), "
           "CASE WHEN %s = 'success' THEN now() END FROM generate_series(1, %s)")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_claim__finds_its_jobs_by_primary_key_with_statistics_from_before_a_backlog(db) -> None:
    db.execute(NO_AUTOVACUUM)  # the statistics stay as taken
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


@pytest.mark.parametrize("query", ["list_jobs", "purge_jobs"])
def test_a_filter_by_labels__reads_the_labels_index(db, query) -> None:
    """The labels index holds only jobs with labels (0015): a filter by labels must say that it
    implies some, or the planner cannot use the index and reads every job of the namespace."""
    db.execute(NEW_JOB, ("labels", "dead", "dead", 20_000))
    db.execute("UPDATE perdure.jobs SET labels = %s WHERE id IN (SELECT id FROM perdure.jobs ORDER BY id LIMIT 3)",
               (json.dumps({"team": "a"}),))
    db.execute("ANALYZE perdure.jobs")
    params = _filter_values(JobFilter("labels", states=["dead"], labels={"team": "a"})) | {
        "before": None, "limit": 100, "id": None, "finished_before": datetime.now(UTC)}
    with db.transaction(force_rollback=True):
        (plan,) = db.execute("EXPLAIN (FORMAT JSON) " + QUERIES[query], params).fetchone()[0]
    indexes = {node.get("Index Name") for node in _nodes(plan["Plan"])}
    assert "jobs_labels" in indexes, json.dumps(plan, indent=1)[:3000]


# An autovacuum analysis of the new jobs in the last 10 s would spare the sidecar its own
# (scheduler.ANALYZE_INTERVAL), and the tests that wait for it would wait in vain.
NO_AUTOVACUUM = "ALTER TABLE perdure.jobs SET (autovacuum_enabled = false)"


def _analyses(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT analyze_count FROM pg_stat_user_tables "
                           "WHERE schemaname = 'perdure' AND relname = 'jobs'").fetchone()
        return int(row[0]) if row else 0


async def test_a_large_enqueue__has_the_sidecar_refresh_the_statistics(sidecar, database_url, db) -> None:
    def analyses() -> int:
        return _analyses(database_url)

    db.execute(NO_AUTOVACUUM)
    async with sdk.Perdure(address=sidecar.address, namespace="plans") as client:
        await client.enqueue_many("plans:noop", [() for _ in range(ANALYZE_AFTER - 1)])
        await asyncio.sleep(1)
        assert analyses() == 0  # not yet: fewer jobs than that are no reason
        await client.enqueue("plans:noop")
        async with asyncio.timeout(30):
            while analyses() == 0:
                await asyncio.sleep(0.1)


def _numbered(sql: str) -> str:
    """A statement with psycopg's %(name)s placeholders as PostgreSQL's $1, $2, ..."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)[sb]", number, sql)


def test_statements_planned_once__read_and_join_by_index(db) -> None:
    """A generic plan cannot see the values it will run with: each must still find its rows by
    index among many (a statement whose generic plan reads a whole table is left out). And it
    guesses that an array holds 10 elements, so a join of two lists of the statement's own rows
    may become a nested loop that reads one list again for every row of the other: harmless at
    10, quadratic at a batch of hundreds (a finish of 256 compared 65,000 pairs). Every nested
    loop must look its inner rows up by index."""
    if db.info.server_version < 160000:
        pytest.skip("EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16")
    db.execute(NEW_JOB, ("history", "success", "success", 30_000))
    db.execute(NEW_JOB, ("backlog", "pending", "pending", 30_000))  # in the statistics too
    db.execute("INSERT INTO perdure.attempts (job_id, number, sidecar_id, outcome, ended_at) "
               "SELECT id, 1, 'sidecar', 'succeeded', now() FROM perdure.jobs WHERE state = 'success'")
    db.execute("INSERT INTO perdure.steps (job_id, name, status, attempt) "
               "SELECT id, 'step', 'succeeded', 1 FROM perdure.jobs WHERE state = 'success'")
    db.execute("ANALYZE")
    large = {"jobs", "attempts", "steps"}
    # Which join a plan takes between rows guessed 1 and 10 is a toss-up the statistics decide:
    # with nested loops alone, every join is checked.
    db.execute("SET enable_hashjoin = off")
    db.execute("SET enable_mergejoin = off")
    for name in sorted(GENERIC_PLANS):
        (plan,) = db.execute("EXPLAIN (GENERIC_PLAN, FORMAT JSON) " + _numbered(QUERIES[name])).fetchone()[0]
        whole = [node["Relation Name"] for node in _nodes(plan["Plan"])
                 if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in large]
        assert not whole, f"{name}: its generic plan reads all of {whole}"
        for loop in (node for node in _nodes(plan["Plan"]) if node["Node Type"] == "Nested Loop"):
            inner = next(child for child in loop["Plans"] if child.get("Parent Relationship") == "Inner")
            assert any("Index" in node["Node Type"] for node in _nodes(inner)), \
                f"{name}: a nested loop reads {inner['Node Type']} again for every row\n" + json.dumps(loop)[:3000]


async def test_statements_run_for_every_job__are_planned_once_per_connection(database_url) -> None:
    """Jobs enqueued, claimed and finished one at a time: PostgreSQL, left to choose, would plan
    each finish anew (an array of one element looks cheaper with its value in sight)."""
    store = await Store.open(database_url, 1)  # one connection: every statement runs on it
    try:
        for _ in range(10):
            await store.enqueue([new_job("plans", "plans:noop")], sidecar_id="sidecar", lease=30)
            (claimed,) = await store.claim("plans", ["plans:noop"], ["worker"], 30, "sidecar")
            await store.finish([Outcome(claimed["id"], claimed["attempt"], "success", "succeeded",
                                        result=b"null", result_encoding="json")])
        async with store.pool.connection() as conn:
            cursor = await conn.execute("SELECT statement, custom_plans, generic_plans FROM pg_prepared_statements")
            plans = {name[1]: (row["custom_plans"], row["generic_plans"]) for row in await cursor.fetchall()
                     if (name := re.search(r"perdured:(\w+)", row["statement"]))}
        for name in ("enqueue_one", "finish"):
            custom, generic = plans[name]
            assert custom == 0 and generic > 0, (name, plans)
        assert plans["claim"][0] > 0  # its plan depends on its values: PostgreSQL's choice
    finally:
        await store.close()


async def test_other_statements__keep_postgresqls_choice_of_plan(database_url) -> None:
    """The connection is set back for a statement not in GENERIC_PLANS, and set again after."""
    store = await Store.open(database_url, 1)

    async def mode() -> str:
        async with store.pool.connection() as conn:
            row = await (await conn.execute("SHOW plan_cache_mode")).fetchone()
            return str(row["plan_cache_mode"])

    try:
        assert await mode() == "auto"
        await store.get_job(uuid.uuid4(), "plans")
        assert await mode() == "force_generic_plan"
        await store.list_jobs(JobFilter(namespace="plans"), None, 10)
        assert await mode() == "auto"
        # In a transaction: its statements are PostgreSQL's choice.
        await store.enqueue_batch([new_job("plans", "plans:noop")], sidecar_id="sidecar", lease=30)
        assert await mode() == "auto"
        await store.renew_leases([uuid.uuid4()], 30, "sidecar")
        assert await mode() == "force_generic_plan"
    finally:
        await store.close()


async def test_jobs_enqueued_in_the_applications_transactions__count_toward_the_refresh(sidecar, database_url,
                                                                                       db) -> None:
    """No sidecar inserted them: the sidecar hears of them (their notifications) all the same."""
    db.execute(NO_AUTOVACUUM)
    db.execute("SELECT perdure.enqueue('plans:noop') FROM generate_series(1, %s)", (ANALYZE_AFTER - 1,))
    await asyncio.sleep(1)
    assert _analyses(database_url) == 0
    db.execute("SELECT perdure.enqueue('plans:noop')")
    async with asyncio.timeout(30):
        while _analyses(database_url) == 0:
            await asyncio.sleep(0.1)


def _database_clock(db) -> float:
    return float(db.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])


async def test_statistics_refreshed_after_the_enqueues__are_not_refreshed_again(database_url, db) -> None:
    """Every sidecar hears of the same enqueues: the first to refresh spares the others."""
    store = await Store.open(database_url, 1)
    try:
        before = _database_clock(db)
        assert await store.analyze_jobs(unless_since=before) is True
        assert _analyses(database_url) == 1
        assert await store.analyze_jobs(unless_since=before) is False  # analysed after them
        assert await store.analyze_jobs(unless_since=_database_clock(db)) is True  # enqueues since
        assert _analyses(database_url) == 2
    finally:
        await store.close()


async def test_a_backlog_enqueued_just_after_an_analysis__has_the_statistics_refreshed(sidecar, database_url,
                                                                                      db) -> None:
    """Statistics taken a moment before the enqueues do not know of them: they are refreshed
    all the same (claims would otherwise read the whole backlog, every one, until autovacuum)."""
    db.execute(NO_AUTOVACUUM)
    db.execute("ANALYZE perdure.jobs")
    assert _analyses(database_url) == 1
    db.execute("SELECT perdure.enqueue('plans:noop') FROM generate_series(1, %s)", (ANALYZE_AFTER,))
    async with asyncio.timeout(30):
        while _analyses(database_url) == 1:
            await asyncio.sleep(0.1)
