"""How the tables take the writes every job makes (write-ahead log and index entries are
work for PostgreSQL on every job)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from perdured.store import QUERIES, Outcome, Store
from perdured.validation import JobFilter
from tests.conftest import new_job

JOBS = 300  # several pages of attempts


def _pages(db, job_ids: list[object]) -> dict[object, int]:
    """The heap page of each job's attempt row (its live version)."""
    rows = db.execute("SELECT job_id, (ctid::text::point)[0]::int FROM perdure.attempts WHERE job_id = ANY(%s)",
                      (job_ids,)).fetchall()
    return dict(rows)


async def test_an_attempts_end__is_written_in_its_page_without_a_new_index_entry(database_url, db) -> None:
    """0016: each page of attempts keeps room for its rows' second version, so that the end of
    an attempt is a heap-only update beside its start (with the pages packed full, the ends
    went to other pages, each with a new primary key entry)."""
    store = await Store.open(database_url, 1)
    try:
        jobs = [new_job("storage", "storage:noop") for _ in range(JOBS)]
        await store.enqueue(jobs, sidecar_id="sidecar", lease=30)
        claimed = await store.claim("storage", ["storage:noop"], ["worker"] * JOBS, 30, "sidecar")
        ids = [row["id"] for row in claimed]
        started = _pages(db, ids)
        await store.finish([Outcome(row["id"], row["attempt"], "success", "succeeded", result=b"1",
                                    result_encoding="json") for row in claimed])
    finally:
        await store.close()
    ended = _pages(db, ids)
    assert len(started) == JOBS and len(set(started.values())) > 1
    moved = [job_id for job_id, page in ended.items() if page != started[job_id]]
    assert not moved, f"{len(moved)} of {JOBS} moved"


async def test_a_claim__checks_no_key_row_by_row(database_url, db) -> None:
    """0017: a new attempt's job is the one its statement has just updated; a foreign key
    checked it again, a lookup per row through a trigger of its own (a sixth of a claim)."""
    store = await Store.open(database_url, 1)
    try:
        await store.enqueue([new_job("storage", "storage:noop") for _ in range(20)], sidecar_id="sidecar", lease=30)
    finally:
        await store.close()
    params = {"names": ["storage:noop"], "namespace": "storage", "slots": ["worker"] * 20,
              "lease": timedelta(seconds=30), "sidecar_id": "sidecar"}
    with db.transaction(force_rollback=True):
        (plan,) = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["claim"], params).fetchone()[0]
    assert len(db.execute("SELECT 1 FROM perdure.attempts").fetchall()) == 0  # rolled back
    triggers = {trigger["Trigger Name"]: trigger["Calls"] for trigger in plan.get("Triggers", [])}
    assert triggers == {"jobs_notify_state": 1}, triggers


@pytest.mark.parametrize("how", ["purge", "retention", "by hand", "truncate"])
async def test_deleted_jobs__take_their_attempts_along(database_url, db, how) -> None:
    store = await Store.open(database_url, 1)
    try:
        jobs = [new_job("storage", "storage:noop") for _ in range(3)]
        await store.enqueue(jobs, sidecar_id="sidecar", lease=30)
        claimed = await store.claim("storage", ["storage:noop"], ["worker"] * 3, 30, "sidecar")
        await store.finish([Outcome(row["id"], row["attempt"], "success", "succeeded", result=b"1",
                                    result_encoding="json") for row in claimed[:2]])
        kept = claimed[2]["id"]  # still running
        if how == "purge":
            assert await store.purge_jobs(JobFilter("storage"), 100) == 2
        elif how == "retention":
            assert await store.delete_finished(0, 100) == 2
        elif how == "by hand":
            db.execute("DELETE FROM perdure.jobs WHERE state = 'success'")
        else:
            db.execute("TRUNCATE perdure.jobs CASCADE")
    finally:
        await store.close()
    left = [row[0] for row in db.execute("SELECT job_id FROM perdure.attempts").fetchall()]
    assert left == ([] if how == "truncate" else [kept])
