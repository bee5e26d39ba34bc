"""How the tables take the writes every job makes (write-ahead log and index entries are
work for PostgreSQL on every job)."""

from __future__ import annotations

from perdured.store import Outcome, Store
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
