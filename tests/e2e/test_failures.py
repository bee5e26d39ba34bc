"""The failure model, proved with real processes: perdured sidecars and application processes
(tests/e2e/app.py) that are killed with SIGKILL, hang, or crash their own process.

The test follows the other processes through files they write and through the job's status
and attempt history read back with the SDK; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from perdure import JobDeadError, JobDetails, JobHandle, Perdure

POLL = 0.05  # seconds between looks at a file or a job
WAIT = 15.0  # the most any single step of a test may take


async def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll `check` (plain or async) until it returns something truthy, and return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(POLL)


async def file_appears(path: Path) -> None:
    await eventually(path.exists, f"{path.name} to appear")


async def details_when(handle: JobHandle, condition: Callable[[JobDetails], bool], what: str) -> JobDetails:
    async def check() -> JobDetails | None:
        details = await handle.details()
        return details if condition(details) else None

    return await eventually(check, what)


def words(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def outcomes(details: JobDetails) -> list[str]:
    return [attempt.outcome for attempt in details.attempts]


async def test_app_killed__its_job_is_put_back_at_once_and_completes_on_another_worker(perdured, app, shared_dir) -> None:
    # The default lease (30 s) is far longer than this test may wait: only the dropped stream
    # can bring the job back in time.
    sidecar = perdured()
    doomed = await app(sidecar.address, "e2e:hold")
    async with Perdure(address=sidecar.address) as client:
        handle = await client.enqueue("e2e:hold", "job-1")
        await file_appears(shared_dir / f"started-job-1-{doomed.pid}")
        doomed.kill()

        # Back to pending with nobody else connected: the sidecar did it on its own.
        lost = await details_when(handle, lambda d: d.status == "pending", "the job to be put back")
        assert outcomes(lost) == ["worker_lost"]
        assert lost.attempts[0].error is not None and lost.attempts[0].error.type == "perdure.WorkerLost"

        (shared_dir / "release-job-1").touch()
        successor = await app(sidecar.address, "e2e:hold")
        assert await handle.result(timeout=WAIT) == {"token": "job-1", "pid": successor.pid}
        details = await handle.details()

    assert details.status == "success"
    assert details.attempt == 2
    assert outcomes(details) == ["worker_lost", "succeeded"]
    assert details.attempts[0].worker_id != details.attempts[1].worker_id
    assert [(e.event, e.attempt) for e in doomed.journal()] == [("start", 1)]
    assert [(e.event, e.attempt) for e in successor.journal()] == [("start", 2)]


async def test_sidecar_killed__another_sidecar_reclaims_the_job_when_its_lease_expires(perdured, app, shared_dir) -> None:
    doomed = perdured("--lease", "1")
    survivor = perdured("--lease", "1")
    stranded = await app(doomed.address, "e2e:hold")
    async with Perdure(address=survivor.address) as client:
        handle = await client.enqueue("e2e:hold", "job-2")
        await file_appears(shared_dir / f"started-job-2-{stranded.pid}")
        doomed.kill()

        # Nobody renews the lease any more; the survivor's reaper puts the job back.
        reclaimed = await details_when(handle, lambda d: d.status == "pending", "the expired lease to be reclaimed")
        assert outcomes(reclaimed)[-1] == "lease_expired"
        assert reclaimed.attempts[-1].error is not None
        assert reclaimed.attempts[-1].error.type == "perdure.LeaseExpired"

        (shared_dir / "release-job-2").touch()
        rescuer = await app(survivor.address, "e2e:hold")
        assert await handle.result(timeout=WAIT) == {"token": "job-2", "pid": rescuer.pid}
        details = await handle.details()

    assert details.status == "success"
    assert outcomes(details)[0] == "lease_expired"
    assert outcomes(details)[-1] == "succeeded"
    assert details.attempts[0].sidecar_id != details.attempts[-1].sidecar_id
    assert [e.name for e in rescuer.journal()] == ["e2e:hold"]


async def test_poison_job__that_kills_its_worker_every_time_ends_dead(perdured, app, shared_dir) -> None:
    max_attempts = 3
    sidecar = perdured()
    async with Perdure(address=sidecar.address) as client:
        handle = await client.enqueue("e2e:poison", "job-3", max_attempts=max_attempts)
        victims = []
        # Bounded: one round more than the attempts allow, which a looping job would use.
        for _ in range(max_attempts + 1):
            details = await details_when(handle, lambda d: d.status != "running", "the lost attempt to be recorded")
            if details.status != "pending":
                break
            victim = await app(sidecar.address, "e2e:poison", wait_ready=False)
            assert await victim.exited(timeout=WAIT) == -signal.SIGKILL
            victims.append(victim)

        assert details.status == "dead"
        assert len(victims) == max_attempts
        assert details.attempt == max_attempts
        assert outcomes(details) == ["worker_lost"] * max_attempts
        assert details.error is not None and details.error.type == "perdure.WorkerLost"
        assert [[e.attempt for e in v.journal()] for v in victims] == [[1], [2], [3]]
        with pytest.raises(JobDeadError) as caught:
            await handle.result(timeout=WAIT)
        assert caught.value.attempts == max_attempts

        # A new process serving the same name stays up: the dead job is not handed out again.
        survivor = await app(sidecar.address, "e2e:poison", "e2e:echo")
        assert await (await client.enqueue("e2e:echo", "after")).result(timeout=WAIT) == {
            "value": "after", "pid": survivor.pid}
        assert survivor.process.poll() is None
        assert [e.name for e in survivor.journal()] == ["e2e:echo"]
        assert (await handle.details()).attempt == max_attempts


async def test_attempt_timeout__hanging_handler_is_cancelled_and_retried(perdured, app, shared_dir) -> None:
    sidecar = perdured()
    worker = await app(sidecar.address, "e2e:hang_once")
    async with Perdure(address=sidecar.address) as client:
        handle = await client.enqueue("e2e:hang_once", "job-4", timeout=1.0, max_attempts=3, initial_delay=0.05)
        assert await handle.result(timeout=WAIT) == {"token": "job-4", "pid": worker.pid}
        details = await handle.details()

    assert outcomes(details) == ["timed_out", "succeeded"]
    first = details.attempts[0]
    assert first.error is not None and first.error.type == "perdure.Timeout"
    # The sidecar told the worker to stop the hung handler, it did not just stop waiting for it.
    cancelled = shared_dir / "cancelled-job-4"
    await file_appears(cancelled)
    assert words(cancelled) == [str(worker.pid)]


async def test_attempt_timeout__handler_that_always_hangs_ends_dead(perdured, app, shared_dir) -> None:
    sidecar = perdured()
    worker = await app(sidecar.address, "e2e:hang_always")
    async with Perdure(address=sidecar.address) as client:
        handle = await client.enqueue("e2e:hang_always", "job-5", timeout=0.5, max_attempts=2, initial_delay=0.05)
        with pytest.raises(JobDeadError) as caught:
            await handle.result(timeout=WAIT)
        details = await handle.details()

    assert caught.value.attempts == 2
    assert caught.value.error_type == "perdure.Timeout"
    assert details.status == "dead"
    assert outcomes(details) == ["timed_out", "timed_out"]
    cancelled = shared_dir / "cancelled-job-5"
    await eventually(lambda: len(words(cancelled)) == 2, "both hung attempts to be cancelled on the worker")
    assert words(cancelled) == [str(worker.pid)] * 2


async def test_await_result__through_another_sidecar_is_woken_by_the_notification(perdured, app, shared_dir) -> None:
    runner = perdured()
    caller = perdured()
    worker = await app(runner.address, "e2e:hold")
    async with Perdure(address=caller.address) as client:
        handle = await client.enqueue("e2e:hold", "job-6")
        await file_appears(shared_dir / f"started-job-6-{worker.pid}")
        # Without a timeout, result() asks the caller's sidecar to wait a full minute. That
        # sidecar runs no worker: only PostgreSQL's notification can wake it within WAIT.
        waiting = asyncio.create_task(asyncio.wait_for(handle.result(), WAIT))
        with pytest.raises(TimeoutError):  # a shorter await there: the job is still in flight
            await handle.result(timeout=0.2)
        assert not waiting.done()

        (shared_dir / "release-job-6").touch()
        assert await waiting == {"token": "job-6", "pid": worker.pid}
        assert await handle.status() == "success"


async def test_claim__a_worker_never_receives_jobs_of_names_it_did_not_register(perdured, app, shared_dir) -> None:
    sidecar = perdured()
    elsewhere = perdured()
    # Idle workers with free slots, on the same sidecar as the right worker and on another.
    bystanders = [await app(sidecar.address, "e2e:other", concurrency=4),
                  await app(elsewhere.address, "e2e:other", concurrency=4)]
    async with Perdure(address=sidecar.address) as client:
        # Queued before any worker serves them, while the bystanders wait for work.
        echo_jobs = [await client.enqueue("e2e:echo", n) for n in range(8)]
        other_jobs = [await client.enqueue("e2e:other", n) for n in range(8)]
        other_results = [await h.result(timeout=WAIT) for h in other_jobs]
        assert {r["pid"] for r in other_results} <= {b.pid for b in bystanders}
        # The bystanders were awake and had room, yet the echo jobs waited for their own worker.
        assert all(d.status == "pending" and d.attempt == 0 for d in [await h.details() for h in echo_jobs])

        worker = await app(sidecar.address, "e2e:echo", concurrency=4)
        echo_results = [await h.result(timeout=WAIT) for h in echo_jobs]
        echo_details = [await h.details() for h in echo_jobs]

    assert echo_results == [{"value": n, "pid": worker.pid} for n in range(8)]
    assert all(outcomes(d) == ["succeeded"] for d in echo_details)
    assert {e.name for e in worker.journal()} == {"e2e:echo"}
    received = [e for b in bystanders for e in b.journal()]
    assert {e.name for e in received} == {"e2e:other"}
    assert len(received) == len(other_jobs)


async def test_sidecar_sigterm__finishes_in_the_grace_period_then_hands_the_rest_back(perdured, app, shared_dir) -> None:
    sidecar = perdured("--shutdown-grace", "1")
    worker = await app(sidecar.address, "e2e:hold", concurrency=2)
    async with Perdure(address=sidecar.address) as client:
        finishing = await client.enqueue("e2e:hold", "finishes")
        stuck = await client.enqueue("e2e:hold", "stuck")
        await file_appears(shared_dir / f"started-finishes-{worker.pid}")
        await file_appears(shared_dir / f"started-stuck-{worker.pid}")
    sidecar.process.send_signal(signal.SIGTERM)
    (shared_dir / "release-finishes").touch()  # finishes within the grace period; "stuck" never does
    assert await asyncio.to_thread(sidecar.process.wait, WAIT) == 0

    reader = perdured()
    async with Perdure(address=reader.address) as client:
        done = await client.handle(finishing.id).details()
        back = await client.handle(stuck.id).details()
    assert done.status == "success" and outcomes(done) == ["succeeded"]
    assert back.status == "pending" and outcomes(back) == ["released"]


@pytest.mark.parametrize(("function", "expected_effects", "result"), [
    ("e2e:three_steps", ["one", "two", "three"], ["one done", "two done", "three done"]),
    ("e2e:fifty_steps", [str(i) for i in range(50)], 50),
])
async def test_steps__app_killed_after_a_checkpoint_resumes_without_running_recorded_steps_again(
        perdured, app, shared_dir, function, expected_effects, result) -> None:
    sidecar = perdured()
    first = await app(sidecar.address, function)
    async with Perdure(address=sidecar.address) as client:
        handle = await client.enqueue(function, "t")
        await file_appears(shared_dir / "held-t")  # the first run sits right after a committed step
        first.kill()
        await app(sidecar.address, function)
        assert await handle.result(timeout=WAIT) == result
        details = await handle.details()
    # Every side effect happened exactly once, across the two processes.
    assert words(shared_dir / "effects-t") == expected_effects
    assert outcomes(details) == ["worker_lost", "succeeded"]
    assert len(details.steps) == len(expected_effects)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_sleep__spans_a_restart_of_the_sidecar(perdured, app, shared_dir) -> None:
    listen = f"127.0.0.1:{free_port()}"
    sidecar = perdured("--listen", listen)
    worker = await app(sidecar.address, "e2e:nap")
    async with Perdure(address=sidecar.address) as client:
        handle = await client.enqueue("e2e:nap", "t", 1.0)
        await details_when(handle, lambda d: d.status == "suspended", "the job to fall asleep")
    sidecar.kill()
    restarted = perdured("--listen", listen)  # the app's worker reconnects to the same address
    async with Perdure(address=restarted.address) as client:
        handle = client.handle(handle.id)
        assert await handle.result(timeout=WAIT) == {"token": "t", "pid": worker.pid}
        details = await handle.details()
    assert words(shared_dir / "effects-t") == ["before", "after"]
    assert outcomes(details) == ["suspended", "succeeded"]


async def test_sleep__wakes_on_another_worker_when_its_own_is_gone(perdured, app, shared_dir) -> None:
    sidecar = perdured()
    first = await app(sidecar.address, "e2e:nap")
    async with Perdure(address=sidecar.address) as client:
        handle = await client.enqueue("e2e:nap", "t", 1.0)
        await details_when(handle, lambda d: d.status == "suspended", "the job to fall asleep")
        first.kill()
        second = await app(sidecar.address, "e2e:nap")
        assert await handle.result(timeout=WAIT) == {"token": "t", "pid": second.pid}
    assert words(shared_dir / "effects-t") == ["before", "after"]


async def test_parent_killed_while_awaiting__resumes_with_the_same_child(perdured, app, shared_dir) -> None:
    sidecar = perdured()
    first = await app(sidecar.address, "e2e:parent", "e2e:hold", concurrency=2)
    async with Perdure(address=sidecar.address) as client:
        parent = await client.enqueue("e2e:parent", "t")
        await file_appears(shared_dir / f"started-t-{first.pid}")  # the child runs here
        await details_when(parent, lambda d: d.status == "suspended", "the parent to suspend on its child")
        first.kill()  # the child's worker dies with it; the parent waits in the database
        (shared_dir / "release-t").touch()
        second = await app(sidecar.address, "e2e:parent", "e2e:hold", concurrency=2)
        result = await parent.result(timeout=WAIT)
        details = await parent.details()
    child_ids = words(shared_dir / "spawned-t")
    assert len(set(child_ids)) == 1 and [c.id for c in details.children] == child_ids[:1]
    assert result == {"child": child_ids[0], "result": {"token": "t", "pid": second.pid}}
    assert outcomes(details)[-1] == "succeeded"


async def test_concurrency_key__held_by_a_job_whose_sidecar_died_until_its_lease_expires(
        perdured, app, shared_dir) -> None:
    doomed = perdured("--lease", "1")
    survivor = perdured("--lease", "1")
    stranded = await app(doomed.address, "e2e:hold", concurrency=2)
    async with Perdure(address=survivor.address) as client:
        first = await client.enqueue("e2e:hold", "key-1", concurrency_key="tenant-7")
        await file_appears(shared_dir / f"started-key-1-{stranded.pid}")
        rescuer = await app(survivor.address, "e2e:hold", concurrency=2)
        second = await client.enqueue("e2e:hold", "key-2", concurrency_key="tenant-7")
        doomed.kill()

        # The key stays taken by the first job until its lease expires and it is put back;
        # then the first job (ahead in order) runs again, on the rescuer, still alone.
        await file_appears(shared_dir / f"started-key-1-{rescuer.pid}")
        assert not list(shared_dir.glob("started-key-2-*"))
        (shared_dir / "release-key-1").touch()
        assert (await first.result(timeout=WAIT))["pid"] == rescuer.pid
        (shared_dir / "release-key-2").touch()
        assert (await second.result(timeout=WAIT))["pid"] == rescuer.pid
        first_details, second_details = await first.details(), await second.details()

    assert outcomes(first_details) == ["lease_expired", "succeeded"]
    assert outcomes(second_details) == ["succeeded"]
    assert [e.job_id for e in rescuer.journal() if e.event == "start"] == [first.id, second.id]


async def test_workers__of_a_killed_sidecar_leave_the_list_when_their_entry_expires(perdured, app) -> None:
    import grpc

    from perdure.v1 import admin_pb2, admin_pb2_grpc

    doomed = perdured("--lease", "1")
    survivor = perdured("--lease", "1")
    await app(doomed.address, "e2e:echo")
    async with grpc.aio.insecure_channel(survivor.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)

        async def listed() -> list[str]:
            return [w.sidecar_id for w in (await admin.ListWorkers(admin_pb2.ListWorkersRequest())).workers]

        [sidecar_id] = await listed()
        doomed.kill()  # nobody removes the entry: it expires
        await eventually(lambda: _empty(listed()), "the dead sidecar's worker to expire")
    assert sidecar_id != ""


async def _empty(listing: Any) -> bool:
    return not await listing
