"""The everyday path through the Python SDK, against a real sidecar and PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import uuid

import psycopg
import pytest

from perdure import JobCancelledError, JobDeadError, NonRetryableError, PerdureError


async def test_durable_call__enqueues_and_returns_the_handlers_result(make_client) -> None:
    perdure = make_client()

    @perdure.durable("notifications:email:send")
    async def send_email(to: str, subject: str) -> dict:
        return {"sent": True, "to": to, "subject": subject}

    async with perdure:
        handle = await send_email("user@example.com", "Welcome!")
        assert await handle.result(timeout=30) == {"sent": True, "to": "user@example.com", "subject": "Welcome!"}
        assert await handle.status() == "success"


async def test_sync_handler__runs_in_a_thread_with_kwargs(make_client) -> None:
    perdure = make_client()
    threads: list[str] = []

    @perdure.durable("math:add")
    def add(a: int, b: int = 0) -> int:
        threads.append(threading.current_thread().name)
        return a + b

    async with perdure:
        assert await (await add(2, b=40)).result(timeout=30) == 42
    assert threads and threads[0].startswith("perdure-handler")


async def test_failing_handler__is_retried_until_it_succeeds(make_client) -> None:
    perdure = make_client()
    calls = 0

    @perdure.durable("flaky", max_attempts=4, initial_delay=0.01, max_delay=0.05)
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"try {calls} failed")
        return "ok"

    async with perdure:
        handle = await flaky()
        assert await handle.result(timeout=30) == "ok"
        details = await handle.details()
    assert details.attempt == 3
    assert [a.outcome for a in details.attempts] == ["failed", "failed", "succeeded"]
    assert details.attempts[0].error.type == "ConnectionError"
    assert details.attempts[0].error.message == "try 1 failed"
    assert all(a.worker_id and a.sidecar_id and a.started_at and a.ended_at for a in details.attempts)


async def test_always_failing_handler__ends_dead_with_its_last_error(make_client) -> None:
    perdure = make_client()

    class PaymentDeclined(Exception):
        pass

    @perdure.durable("payments:charge", max_attempts=3, initial_delay=0.01, max_delay=0.02)
    async def charge() -> None:
        raise PaymentDeclined("card declined")

    async with perdure:
        handle = await charge()
        with pytest.raises(JobDeadError) as caught:
            await handle.result(timeout=30)
        assert await handle.status() == "dead"
    error = caught.value
    assert error.attempts == 3
    assert error.error_type.endswith("PaymentDeclined")
    assert error.error_message == "card declined"
    assert "card declined" in str(error) and "PaymentDeclined" in error.traceback


async def test_non_retryable_error__goes_dead_after_one_attempt(make_client) -> None:
    perdure = make_client()

    @perdure.durable("validate", max_attempts=5, initial_delay=0.01)
    async def validate() -> None:
        raise NonRetryableError("the order is malformed")

    async with perdure:
        handle = await validate()
        with pytest.raises(JobDeadError) as caught:
            await handle.result(timeout=30)
    assert caught.value.attempts == 1
    assert caught.value.error_message == "the order is malformed"


async def test_idempotency_key__returns_the_existing_job(make_client) -> None:
    perdure = make_client()
    runs = 0

    @perdure.durable("welcome")
    async def welcome(user_id: int) -> int:
        nonlocal runs
        runs += 1
        return user_id

    async with perdure:
        first = await welcome.options(idempotency_key="welcome-7")(7)
        second = await welcome.options(idempotency_key="welcome-7")(7)
        assert (first.deduplicated, second.deduplicated) == (False, True)
        assert second.id == first.id
        # Many at once, in one group commit or several: still one job.
        handles = await asyncio.gather(*(welcome.options(idempotency_key="welcome-8")(8) for _ in range(20)))
        assert len({h.id for h in handles}) == 1
        assert sum(not h.deduplicated for h in handles) == 1
        assert await first.result(timeout=30) == 7
        assert await handles[0].result(timeout=30) == 8
    assert runs == 2


async def test_cancel__a_pending_job_never_runs(make_client) -> None:
    producer = make_client()
    async with producer:
        handle = await producer.enqueue("nobody:serves:this")
        assert await handle.cancel() is True
        assert await handle.status() == "cancelled"
        assert await handle.cancel() is False
        with pytest.raises(JobCancelledError):
            await handle.result(timeout=10)


async def test_cancel__a_running_handler_is_cancelled(make_client) -> None:
    perdure = make_client()
    started, cancelled = asyncio.Event(), asyncio.Event()

    @perdure.durable("slow")
    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with perdure:
        handle = await slow()
        await asyncio.wait_for(started.wait(), 30)
        assert await handle.cancel() is True
        await asyncio.wait_for(cancelled.wait(), 30)
        details = await handle.details()
    assert details.status == "cancelled"
    assert details.attempts[-1].outcome == "cancelled"


async def test_process_without_handlers__takes_no_work(make_client, sidecar) -> None:
    producer = make_client()
    async with producer:
        handle = await producer.enqueue("reports:build", "q3", idempotency_key="r-q3")
        assert producer._worker is None
        assert not sidecar.dispatcher.sessions
        consumer = make_client()

        @consumer.durable("reports:build")
        async def build(quarter: str) -> str:
            return f"report {quarter}"

        async with consumer:
            rebuilt = producer.handle(handle.id)
            assert await rebuilt.result(timeout=30) == "report q3"


async def test_durable_function_awaiting_another__links_parent_and_child(make_client) -> None:
    perdure = make_client()
    children: list[str] = []

    @perdure.durable("payments:charge")
    async def charge(amount: int) -> dict:
        return {"charged": amount}

    @perdure.durable("orders:fulfil")
    async def fulfil(order_id: str) -> dict:
        handle = await charge(100)
        children.append(handle.id)
        return {"order": order_id, "payment": await handle.result(timeout=30)}

    async with perdure:
        parent = await fulfil("o-1")
        assert await parent.result(timeout=30) == {"order": "o-1", "payment": {"charged": 100}}
        child = await perdure.handle(children[0]).details()
    assert child.parent_id == parent.id


async def test_lifecycle_callbacks__see_start_success_error_and_dead(make_client) -> None:
    perdure = make_client()
    seen: list[tuple[str, str, int]] = []
    dead = asyncio.Event()
    for event in ("job:start", "job:success", "job:error", "job:dead"):
        perdure.on(event, lambda info, event=event: seen.append((event, info.name, info.attempt)))
    perdure.on("job:dead", lambda info: dead.set())

    @perdure.durable("ok")
    async def ok() -> int:
        return 1

    @perdure.durable("bad", max_attempts=2, initial_delay=0.01)
    async def bad() -> None:
        raise RuntimeError("no")

    async with perdure:
        await (await ok()).result(timeout=30)
        with pytest.raises(JobDeadError):
            await (await bad()).result(timeout=30)
        await asyncio.wait_for(dead.wait(), 30)  # callbacks run after the ack, just after the result
    assert ("job:start", "ok", 1) in seen and ("job:success", "ok", 1) in seen
    assert ("job:error", "bad", 1) in seen and ("job:error", "bad", 2) in seen
    assert ("job:dead", "bad", 2) in seen and ("job:dead", "bad", 1) not in seen


async def test_stop__hands_unfinished_jobs_back_without_spending_an_attempt(make_client) -> None:
    leaving = make_client(shutdown_grace=0.1)
    started = asyncio.Event()

    @leaving.durable("long", max_attempts=2, initial_delay=0.01, jitter=0)
    async def long() -> None:
        started.set()
        await asyncio.sleep(3600)

    async with leaving:
        handle = await long()
        await asyncio.wait_for(started.wait(), 30)
    # Handed back as it stopped: the next worker still has both attempts.
    staying = make_client()

    @staying.durable("long")
    async def broken() -> None:
        raise RuntimeError("still broken")

    async with staying:
        with pytest.raises(JobDeadError):
            await staying.handle(handle.id).result(timeout=30)
        details = await staying.handle(handle.id).details()
    assert [a.outcome for a in details.attempts] == ["released", "failed", "failed"]


async def test_timed_out_attempts__fire_error_then_dead_callbacks_in_the_worker(make_client) -> None:
    perdure = make_client()
    seen: list[tuple[str, str, int]] = []
    dead = asyncio.Event()
    perdure.on("job:error", lambda info: seen.append(("error", info.error.type, info.attempt)))
    perdure.on("job:dead", lambda info: (seen.append(("dead", info.error.type, info.attempt)), dead.set()))

    @perdure.durable("hangs", timeout=0.2, max_attempts=2, initial_delay=0.01, jitter=0)
    async def hangs() -> None:
        await asyncio.sleep(3600)

    async with perdure:
        with pytest.raises(JobDeadError) as caught:
            await (await hangs()).result(timeout=30)
        await asyncio.wait_for(dead.wait(), 30)
    assert caught.value.error_type == "perdure.Timeout"
    assert seen == [("error", "perdure.Timeout", 1), ("error", "perdure.Timeout", 2), ("dead", "perdure.Timeout", 2)]


async def test_context__tells_a_handler_which_job_and_attempt_it_runs(make_client) -> None:
    import perdure as sdk

    perdure = make_client()

    @perdure.durable("whoami", max_attempts=2, initial_delay=0.01)
    async def whoami() -> dict:
        ctx = sdk.context()
        if ctx.attempt == 1:
            raise RuntimeError("once more")
        return {"id": ctx.job_id, "name": ctx.name, "attempt": ctx.attempt}

    async with perdure:
        handle = await whoami()
        assert await handle.result(timeout=30) == {"id": handle.id, "name": "whoami", "attempt": 2}
    with pytest.raises(sdk.NotInJobError, match="only available inside"):
        sdk.context()


async def test_start_without_serving__enqueues_only_until_started_to_serve(make_client, sidecar) -> None:
    perdure = make_client()

    @perdure.durable("later")
    async def later(x: int) -> int:
        return x + 1

    await perdure.start(serve=False)  # a web process: its jobs run elsewhere
    handle = await later(1)
    assert not sidecar.dispatcher.sessions and await handle.status() == "pending"

    @perdure.durable("defined:late")
    async def defined_late() -> None:
        return None

    await perdure.start()  # now it serves both
    assert await handle.result(timeout=30) == 2
    assert await (await defined_late()).result(timeout=30) is None
    with pytest.raises(PerdureError, match="before Perdure starts serving"):
        perdure.durable("too:late")(defined_late.fn)


async def test_result_asked_while_the_outcome_is_being_committed__is_that_outcome(make_client, sidecar,
                                                                                 database_url) -> None:
    client = make_client()
    release = asyncio.Event()

    @client.durable("basics:answer")
    async def answer() -> int:
        await release.wait()
        return 42

    async with client:
        await client.wait_until_serving()
        handle = await answer()
        while await handle.status() != "running":
            await asyncio.sleep(0.01)
        async with await psycopg.AsyncConnection.connect(database_url) as blocker:
            # Another transaction holds the job's row: the outcome's commit waits for it.
            await blocker.execute("SELECT 1 FROM perdure.jobs WHERE id = %s FOR UPDATE", (handle.id,))
            release.set()
            assignment = sidecar.dispatcher._by_job[uuid.UUID(handle.id)]
            while not assignment.finishing:
                await asyncio.sleep(0.01)
            waiting = asyncio.create_task(handle.result(timeout=10))
            await asyncio.sleep(0.3)  # the result is asked for while the commit waits
            assert not waiting.done()
        # The blocker's transaction ends (rolled back) with its connection: the outcome commits.
        assert await waiting == 42


# One process, one event loop after another (scripts, per-test loops): each client serves,
# enqueues and awaits, then stops, and asyncio.run() closes its loop.
LOOPS_SCRIPT = """
import asyncio, sys
from perdure import Perdure

async def once(address):
    perdure = Perdure(address=address, namespace="loops")

    @perdure.durable("loops:noop")
    async def noop():
        return 1

    async with perdure:
        await perdure.wait_until_serving()
        for _ in range(20):
            assert await (await noop()).result(timeout=30) == 1

for _ in range(15):
    asyncio.run(once(sys.argv[1]))
"""


def test_clients_in_loop_after_loop__leave_gRPC_nothing_to_hand_to_a_closed_loop(perdured) -> None:
    # A stream cancelled at stop leaves operations that complete a moment later, after
    # asyncio.run() has closed the loop; gRPC hands them to it anyway, and the next loop to
    # use gRPC prints "Event loop is closed". Streams end by half-closing instead.
    sidecar = perdured()
    done = subprocess.run([sys.executable, "-c", LOOPS_SCRIPT, sidecar.address], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Event loop is closed" not in done.stderr
    assert "Traceback" not in done.stderr
