"""What a handler says while it runs: heartbeats, progress and log records."""

from __future__ import annotations

import asyncio

import grpc

import perdure as sdk
from perdure.v1 import jobs_pb2, jobs_pb2_grpc


async def test_progress_and_logs__are_kept_with_the_job_and_streamed_to_watchers(make_client, sidecar) -> None:
    perdure = make_client()

    @perdure.durable("import:rows")
    async def import_rows(rows: int) -> int:
        ctx = sdk.context()
        ctx.log.info("starting")
        for done in range(1, rows + 1):
            ctx.progress(done, rows, f"row {done}")
        ctx.log.warning("row 2 had a blank field")
        ctx.log.error("done, with one warning")
        return rows

    async with grpc.aio.insecure_channel(sidecar.address) as channel, perdure:
        watch = jobs_pb2_grpc.JobsStub(channel).WatchJobs(jobs_pb2.WatchJobsRequest(name="import:rows"))
        await watch.initial_metadata()
        handle = await import_rows(3)
        assert await handle.result(timeout=30) == 3
        progress, logs = [], []
        async for event in watch:
            if event.kind == jobs_pb2.JOB_EVENT_KIND_PROGRESS:
                progress.append((event.progress.current, event.progress.total, event.progress.message))
            elif event.kind == jobs_pb2.JOB_EVENT_KIND_LOG:
                logs.append(event.log.message)
            if len(logs) == 3 and progress and progress[-1][0] == 3:
                break
        watch.cancel()
        details = await handle.details()
    assert logs == ["starting", "row 2 had a blank field", "done, with one warning"]
    assert progress[-1] == (3, 3, "row 3")
    assert (details.progress.current, details.progress.total, details.progress.message) == (3, 3, "row 3")
    assert [(r.level, r.message, r.attempt) for r in details.logs] == [
        ("info", "starting", 1), ("warning", "row 2 had a blank field", 1), ("error", "done, with one warning", 1)]


async def test_heartbeat__extends_the_lease_at_once(make_client, db) -> None:
    perdure = make_client()
    beat, finish = asyncio.Event(), asyncio.Event()

    @perdure.durable("long:step")
    async def long_step() -> str:
        await beat.wait()
        sdk.context().heartbeat()
        await finish.wait()
        return "done"

    async with perdure:
        handle = await long_step()
        lease = None
        while lease is None:
            lease = db.execute("SELECT lease_expires_at FROM perdure.jobs WHERE id = %s", (handle.id,)).fetchone()[0]
            await asyncio.sleep(0.01)
        beat.set()
        for _ in range(500):
            renewed = db.execute("SELECT lease_expires_at FROM perdure.jobs WHERE id = %s", (handle.id,)).fetchone()[0]
            if renewed > lease:
                break
            await asyncio.sleep(0.01)
        assert renewed > lease
        finish.set()
        assert await handle.result(timeout=30) == "done"


async def test_progress__refuses_what_is_not_a_number(make_client) -> None:
    perdure = make_client()

    @perdure.durable("bad:progress", max_attempts=1)
    async def bad() -> None:
        sdk.context().progress("half", 2)

    async with perdure:
        try:
            await (await bad()).result(timeout=30)
        except sdk.JobDeadError as exc:
            assert "progress current must be a number" in exc.error_message
        else:
            raise AssertionError("the job should be dead")


async def test_sync_handler__reports_progress_and_logs_from_its_thread(make_client) -> None:
    perdure = make_client()

    @perdure.durable("sync:report")
    def report() -> str:
        ctx = sdk.context()
        ctx.heartbeat()
        ctx.progress(1, 1, "all done")
        ctx.log.info("from a thread")
        return "ok"

    async with perdure:
        handle = await report()
        assert await handle.result(timeout=30) == "ok"
        for _ in range(500):  # progress and logs are written just after, in the background
            details = await handle.details()
            if details.logs and details.progress:
                break
            await asyncio.sleep(0.01)
    assert details.progress.message == "all done"
    assert [r.message for r in details.logs] == ["from a thread"]
