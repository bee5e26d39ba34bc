"""The synchronous SDK (perdure.sync), from plain test functions, against a real sidecar and
PostgreSQL. The sidecar runs on its own event loop in a background thread (`threaded_sidecar`):
the session's loop does not run while a plain test does."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from perdure import (
    EventTimeoutError,
    InvalidArgumentError,
    JobCancelledError,
    JobDeadError,
    JobDetails,
    JobEvent,
    NotStartedError,
    PerdureError,
    ScheduleExistsError,
    ScheduleNotFoundError,
)
from perdure.sync import Perdure, context

APP = Path(__file__).with_name("sync_app.py")
WAIT = 30.0  # the bound of every wait in these tests
T = TypeVar("T")


@pytest.fixture
def make_sync(threaded_sidecar) -> Iterator[object]:
    """Build synchronous clients on the test's sidecar; each is closed after the test."""
    clients: list[Perdure] = []

    def make(**options: object) -> Perdure:
        options.setdefault("address", threaded_sidecar.address)
        client = Perdure(**options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def wait_for(event: threading.Event) -> None:
    assert event.wait(WAIT), "timed out"


# -- the everyday path ---------------------------------------------------------------------


def test_durable_call__enqueues_and_result_blocks_until_the_sync_handler_returns(make_sync) -> None:
    perdure = make_sync()
    threads: list[str] = []

    @perdure.durable("notifications:email:send")
    def send_email(to: str, subject: str = "") -> dict:
        threads.append(threading.current_thread().name)
        return {"sent": True, "to": to, "subject": subject}

    with perdure:  # serves send_email in the background; this thread goes on
        handle = send_email("user@example.com", subject="Welcome!")
        assert handle.name == "notifications:email:send" and not handle.deduplicated
        assert handle.result(timeout=WAIT) == {"sent": True, "to": "user@example.com", "subject": "Welcome!"}
        assert handle.status() == "success"
        details = handle.details()
    assert isinstance(details, JobDetails) and details.id == handle.id
    assert [a.outcome for a in details.attempts] == ["succeeded"]
    assert threads and threads[0].startswith("perdure-handler")


def test_async_handler__runs_on_the_clients_event_loop(make_sync) -> None:
    perdure = make_sync()

    @perdure.durable("math:slow_add")
    async def slow_add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    with perdure:
        assert slow_add(40, 2).result(timeout=WAIT) == 42


def test_failing_handler__result_raises_job_dead_error(make_sync) -> None:
    perdure = make_sync()

    class PaymentDeclined(Exception):
        pass

    @perdure.durable("payments:charge", max_attempts=2, initial_delay=0.01, max_delay=0.02)
    def charge() -> None:
        raise PaymentDeclined("card declined")

    with perdure:
        handle = charge()
        with pytest.raises(JobDeadError) as caught:
            handle.result(timeout=WAIT)
        assert handle.status() == "dead"
    assert caught.value.attempts == 2
    assert caught.value.error_type.endswith("PaymentDeclined") and caught.value.error_message == "card declined"
    assert "PaymentDeclined" in caught.value.traceback


def test_result__raises_timeout_error_when_the_job_does_not_finish_in_time(make_sync) -> None:
    perdure = make_sync()
    handle = perdure.enqueue("nobody:serves:this")
    with pytest.raises(TimeoutError, match="pending"):
        handle.result(timeout=0.05)


def test_refused_request__raises_the_sidecars_error(make_sync) -> None:
    perdure = make_sync()
    with pytest.raises(InvalidArgumentError, match="control characters"):
        perdure.enqueue("bad\x01name")
    with pytest.raises(ValueError, match="unknown status"):
        perdure.list_jobs(status="finished")


def test_cancel__a_pending_job_never_runs(make_sync) -> None:
    perdure = make_sync()
    handle = perdure.enqueue("nobody:serves:this", "x")
    assert handle.cancel() is True
    assert handle.status() == "cancelled"
    assert handle.cancel() is False
    with pytest.raises(JobCancelledError):
        handle.result(timeout=WAIT)


def test_cancel__a_running_sync_handler_is_cancelled_and_its_late_result_ignored(make_sync) -> None:
    perdure = make_sync()
    started, release = threading.Event(), threading.Event()

    @perdure.durable("slow")
    def slow() -> str:
        started.set()
        release.wait(WAIT)  # a thread cannot be interrupted: it returns when released
        return "too late"

    with perdure:
        handle = slow()
        wait_for(started)
        assert handle.cancel() is True
        release.set()
        with pytest.raises(JobCancelledError):
            handle.result(timeout=WAIT)
        assert handle.details().attempts[-1].outcome == "cancelled"


def test_idempotency_key__returns_the_existing_job_from_any_thread(make_sync) -> None:
    perdure = make_sync()
    runs: list[int] = []

    @perdure.durable("welcome")
    def welcome(user_id: int) -> int:
        runs.append(user_id)
        return user_id

    with perdure:
        first = welcome.options(idempotency_key="welcome-7")(7)
        second = welcome.options(idempotency_key="welcome-7")(7)
        assert (first.deduplicated, second.deduplicated) == (False, True)
        assert second.id == first.id
        handles = run_in_threads(8, lambda _: welcome.options(idempotency_key="welcome-8")(8))
        assert len({h.id for h in handles}) == 1
        assert sum(not h.deduplicated for h in handles) == 1
        assert first.result(timeout=WAIT) == 7 and handles[0].result(timeout=WAIT) == 8
    assert sorted(runs) == [7, 8]


def test_many_threads__share_one_client(make_sync) -> None:
    perdure = make_sync(worker_concurrency=4)

    @perdure.durable("math:square")
    def square(x: int) -> int:
        return x * x

    def producer(thread: int) -> list[tuple[int, int]]:
        numbers = [thread * 100 + i for i in range(20)]
        handles = [square(n) for n in numbers]
        return [(n, h.result(timeout=WAIT)) for n, h in zip(numbers, handles, strict=True)]

    with perdure:
        outcomes = run_in_threads(8, producer)
    assert len(outcomes) == 8
    for results in outcomes:
        assert len(results) == 20 and all(result == n * n for n, result in results)


def test_enqueue_by_name__and_a_handle_rebuilt_from_its_id(make_sync) -> None:
    producer, consumer = make_sync(), make_sync()

    @consumer.durable("reports:build")
    def build(quarter: str) -> str:
        return f"report {quarter}"

    handle = producer.enqueue("reports:build", "q3", idempotency_key="r-q3", labels={"team": "x"})
    with consumer:
        assert producer.handle(handle.id).result(timeout=WAIT) == "report q3"
    assert producer.handle(handle.id).details().labels == {"team": "x"}


# -- lifetime -----------------------------------------------------------------------------


def test_client_used_without_start__enqueues_but_serves_nothing_until_started(make_sync, threaded_sidecar) -> None:
    perdure = make_sync()

    @perdure.durable("later")
    def later(x: int) -> int:
        return x + 1

    handle = later(1)  # starts the client, to enqueue only
    assert handle.status() == "pending"
    assert not threaded_sidecar.dispatcher.sessions  # no worker stream from this process
    perdure.start()  # now it serves
    assert handle.result(timeout=WAIT) == 2


def test_close__is_idempotent_and_a_closed_client_says_so(make_sync) -> None:
    perdure = make_sync()

    @perdure.durable("noop")
    def noop() -> None:
        return None

    with perdure:
        handle = noop()
        handle.result(timeout=WAIT)
    perdure.close()
    perdure.stop()
    for call in (noop, lambda: handle.status(), lambda: perdure.enqueue("noop"), perdure.start,
                 lambda: perdure.schedules.list()):
        with pytest.raises(NotStartedError, match="closed"):
            call()


def test_close__wakes_the_threads_waiting_for_results(make_sync) -> None:
    perdure = make_sync()
    handle = perdure.enqueue("nobody:serves:this")
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            handle.result()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert handle.status() == "pending"
    perdure.close()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], NotStartedError)


def test_forked_process__refuses_clients_rather_than_hang(make_sync, threaded_sidecar) -> None:
    perdure = make_sync()
    perdure.enqueue("nobody:serves:this")  # started in this process
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what the calls raised, and leave at once
        try:
            os.close(read_end)
            messages = []
            for client in (perdure, Perdure(address=threaded_sidecar.address)):
                try:
                    client.enqueue("nobody:serves:this")
                    messages.append("no error")
                except PerdureError as exc:
                    messages.append(str(exc))
                client.close()  # harmless: nothing of the parent's is this process's to stop
            os.write(write_end, "\n".join(messages).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        assert select.select([read_end], [], [], WAIT)[0], "the child said nothing"
        messages = os.read(read_end, 65536).decode().split("\n")
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert len(messages) == 2
    for message in messages:  # the client started before the fork, and a new one
        assert f"started in process {os.getpid()}, which this process was forked from" in message
        assert "post_fork" in message
    assert perdure.enqueue("nobody:serves:this").status() == "pending"  # the parent's still works


# -- handlers: context, steps, sleeps, events, children, callbacks -----------------------------


def test_sync_context__steps_sleeps_and_events_in_a_plain_handler(make_sync) -> None:
    perdure = make_sync()
    effects: list[str] = []
    waiting = threading.Event()

    def charge(order: str) -> dict:
        effects.append(f"charge {order}")
        return {"charged": order}

    @perdure.durable("orders:process")
    def process(order: str) -> dict:
        ctx = context()
        ctx.progress(1, 3, "charging")
        ctx.log.info(f"processing {order} (attempt {ctx.attempt})")
        ctx.heartbeat()
        payment = ctx.step("charge", charge, order)  # once, whatever the resumptions
        ctx.sleep(0.01)  # suspended, then resumed: this handler runs again from the top
        waiting.set()
        approval = ctx.wait_for_event(f"approve:{order}", timeout=WAIT)
        return {"payment": payment, "approval": approval, "job": ctx.job_id}

    with perdure:
        handle = process("o-1")
        wait_for(waiting)
        perdure.emit_event("approve:o-1", {"by": "alice"})
        assert handle.result(timeout=WAIT) == {"payment": {"charged": "o-1"}, "approval": {"by": "alice"},
                                               "job": handle.id}
        details = handle.details()
    assert effects == ["charge o-1"]
    assert [s.name for s in details.steps][:1] == ["charge"]
    assert details.progress is not None and details.progress.message == "charging"
    assert details.logs and details.logs[0].message == "processing o-1 (attempt 1)"


def test_sync_context__a_failed_step_runs_again_on_the_next_attempt(make_sync) -> None:
    perdure = make_sync()
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("down")
        return "up"

    @perdure.durable("flaky:step", max_attempts=2, initial_delay=0.01, jitter=0)
    def job() -> str:
        return context().step("call", flaky)

    with perdure:
        handle = job()
        assert handle.result(timeout=WAIT) == "up"
        details = handle.details()
    assert len(calls) == 2
    assert [a.error.type for a in details.attempts if a.error] == ["ConnectionError"]
    assert [(s.name, s.status, s.attempt) for s in details.steps] == [("call", "succeeded", 2)]


def test_sync_context__wait_for_event_times_out(make_sync) -> None:
    perdure = make_sync()

    @perdure.durable("waits", max_attempts=1)
    def waits() -> None:
        context().wait_for_event("never", timeout=0.01)

    with perdure, pytest.raises(JobDeadError) as caught:
        waits().result(timeout=WAIT)
    assert caught.value.error_type == f"{EventTimeoutError.__module__}.{EventTimeoutError.__qualname__}"


async def test_sync_context__works_in_plain_handlers_of_the_async_client(make_client) -> None:
    perdure = make_client()
    runs: list[int] = []

    @perdure.durable("async:client:plain")
    def plain(x: int) -> int:
        return context().step("triple", lambda: runs.append(x) or 3 * x)

    async with perdure:
        assert await (await plain(7)).result(timeout=WAIT) == 21
    assert runs == [7]


def test_child_jobs__a_plain_handler_spawns_and_awaits_them_suspended(make_sync) -> None:
    perdure = make_sync(worker_concurrency=1)  # the parent must free its slot for its child
    children: list[str] = []

    @perdure.durable("payments:charge")
    def charge(amount: int) -> dict:
        return {"charged": amount}

    @perdure.durable("orders:fulfil")
    def fulfil(order: str) -> dict:
        child = charge(100)
        children.append(child.id)
        return {"order": order, "payment": child.result()}

    with perdure:
        parent = fulfil("o-1")
        assert parent.result(timeout=WAIT) == {"order": "o-1", "payment": {"charged": 100}}
        child = perdure.handle(children[0]).details()
    assert child.parent_id == parent.id
    assert len(set(children)) == 1  # the resumed parent got the same child back


def test_async_handler__awaits_the_async_api_and_is_stopped_from_blocking_its_loop(make_sync) -> None:
    perdure = make_sync()

    @perdure.durable("inner")
    def inner(x: int) -> int:
        return x * 3

    @perdure.durable("outer")
    async def outer(x: int) -> int:
        return await (await inner.aio(x)).result()

    @perdure.durable("blocks", max_attempts=1)
    async def blocks() -> int:
        return inner(1).result()  # a blocking call on the loop it would need

    @perdure.durable("blocks:context", max_attempts=1)
    async def blocks_context() -> None:
        context().sleep(1)

    @perdure.durable("closes", max_attempts=1)
    async def closes() -> None:
        perdure.close()

    with perdure:
        assert outer(5).result(timeout=WAIT) == 15
        for function, message in ((blocks, "would wait for itself"), (blocks_context, "plain def handlers"),
                                  (closes, "would wait for itself")):
            with pytest.raises(JobDeadError) as caught:
                function().result(timeout=WAIT)
            assert message in caught.value.error_message
        assert outer(1).result(timeout=WAIT) == 3  # still open


def test_callbacks__plain_ones_run_in_a_thread_and_may_use_the_client(make_sync) -> None:
    perdure = make_sync()
    seen: list[tuple[str, str, str]] = []
    done = threading.Event()

    def on_success(info: JobEvent) -> None:
        status = perdure.handle(info.job_id).status()  # blocking: fine off the loop
        seen.append(("success", info.name, status))
        done.set()

    async def on_start(info: JobEvent) -> None:
        seen.append(("start", info.name, threading.current_thread().name))

    perdure.on("job:success", on_success)
    perdure.on("job:start", on_start)
    with pytest.raises(ValueError, match="unknown event"):
        perdure.on("job:finished", on_success)

    @perdure.durable("noted")
    def noted() -> int:
        return 1

    with perdure:
        noted().result(timeout=WAIT)
        wait_for(done)
    assert seen == [("start", "noted", "perdure-sync"), ("success", "noted", "success")]


# -- many jobs, schedules ------------------------------------------------------------------


def test_dead_letters__listed_retried_and_purged(make_sync) -> None:
    perdure = make_sync()
    broken = True

    @perdure.durable("import:row", max_attempts=1)
    def import_row(row: int) -> int:
        if broken:
            raise ValueError(f"row {row} is malformed")
        return row

    with perdure:
        handles = [import_row(i) for i in range(3)]
        for handle in handles:
            with pytest.raises(JobDeadError):
                handle.result(timeout=WAIT)
        dead = perdure.list_jobs("import:row", status="dead", error_type="ValueError")
        assert sorted(job.id for job in dead) == sorted(h.id for h in handles)
        broken = False
        assert perdure.retry_jobs("import:row", error_contains="malformed") == 3
        assert sorted(h.result(timeout=WAIT) for h in handles) == [0, 1, 2]
        assert perdure.purge_jobs("import:row", status="success") == 3
        assert perdure.list_jobs("import:row") == []


def test_schedules__managed_through_the_sync_client(make_sync) -> None:
    perdure = make_sync()

    @perdure.durable("files:clean", timeout=120)
    def clean(path: str) -> None:
        return None

    created = perdure.schedules.create("cleanup:tmp", clean, "*/15 * * * *", args=("/tmp",), missed="skip")
    assert created.function == "files:clean" and created.options.timeout == 120 and created.next_run_at
    assert perdure.schedules.get("cleanup:tmp").args == ["/tmp"]
    assert [s.name for s in perdure.schedules.list(clean)] == ["cleanup:tmp"]
    assert perdure.schedules.update("cleanup:tmp", cron="*/5 * * * *", max_attempts=2).options.max_attempts == 2
    assert perdure.schedules.pause("cleanup:tmp").paused
    assert not perdure.schedules.resume("cleanup:tmp").paused
    with pytest.raises(ScheduleExistsError):
        perdure.schedules.create("cleanup:tmp", "files:clean", "@daily")
    assert perdure.schedules.delete("cleanup:tmp") is True
    with pytest.raises(ScheduleNotFoundError):
        perdure.schedules.get("cleanup:tmp")


def test_durable_schedule__is_created_when_the_client_starts_serving(make_sync) -> None:
    perdure = make_sync()

    @perdure.durable("reports:nightly", schedule="0 3 * * *", timezone="Europe/Paris")
    def nightly() -> None:
        return None

    perdure.start(serve=False)
    assert perdure.schedules.list() == []
    perdure.start()
    assert perdure.schedules.get("reports:nightly").timezone == "Europe/Paris"


# -- worker processes -----------------------------------------------------------------------


class App:
    """tests/integration/sync_app.py in its own process, with pipes to talk to it."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(APP), *args], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[str] = []

    def expect(self, prefix: str) -> str:
        """The next line starting with `prefix` (other lines are kept in self.lines)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + WAIT
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and select.select([self.process.stdout], [], [], remaining)[0], \
                f"no line {prefix!r} from the app; it said {self.lines}"
            line = self.process.stdout.readline()
            assert line, f"the app ended before saying {prefix!r}; it said {self.lines}"
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> int:
        """Wait for the process to end; its exit status. The rest of its output goes to self.lines."""
        assert self.process.stdout is not None
        status = self.process.wait(WAIT * 2)
        self.lines += [line.strip() for line in self.process.stdout.read().splitlines()]
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def apps() -> Iterator[object]:
    started: list[App] = []

    def start(*args: str) -> App:
        app = App(*args)
        started.append(app)
        return app

    yield start
    for app in started:
        app.kill()


def test_run_worker__in_its_own_process_finishes_running_jobs_on_sigterm(make_sync, threaded_sidecar, apps) -> None:
    namespace = f"worker-{uuid.uuid4().hex[:8]}"
    app = apps("worker", threaded_sidecar.address, namespace, "30")
    app.expect("serving")
    web = make_sync(namespace=namespace)  # a web process: it enqueues, the worker process serves
    handle = web.enqueue("sync:hold", "t1")
    app.expect("started t1")
    app.process.send_signal(signal.SIGTERM)
    app.expect("perdure worker stopping on SIGTERM")
    app.send("release t1")  # the running job may finish: it has 30 s
    assert app.finish() == 0
    assert app.lines[-1] == "stopped"
    assert handle.result(timeout=WAIT) == {"released": "t1"}
    assert [a.outcome for a in handle.details().attempts] == ["succeeded"]


def test_run_worker__hands_back_what_outlives_the_grace_on_sigint(make_sync, threaded_sidecar, apps) -> None:
    namespace = f"worker-{uuid.uuid4().hex[:8]}"
    app = apps("worker", threaded_sidecar.address, namespace, "0.1")
    app.expect("serving")
    web = make_sync(namespace=namespace)
    handle = web.enqueue("sync:hold_async", "t2", max_attempts=1)
    app.expect("started t2")
    app.process.send_signal(signal.SIGINT)
    assert app.finish() == 0
    assert "stopped" in app.lines
    details = handle.details()  # handed back: pending again, its only attempt not spent
    assert details.status == "pending"
    assert [a.outcome for a in details.attempts] == ["released"]


def test_forgotten_close__the_client_is_closed_at_interpreter_exit(database_url, apps) -> None:
    # A spawned sidecar too (storage=): everything the client owns has to go without a hang.
    app = apps("forget", database_url, "default")
    app.expect("serving")
    assert app.expect("result") == "result 42"
    assert app.finish() == 0


# -- helpers --------------------------------------------------------------------------------


def run_in_threads(count: int, work: Callable[[int], T]) -> list[T]:
    """Run work(i) in `count` threads at once; their results, in order. Re-raises the first error."""
    results: dict[int, T] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            barrier.wait(WAIT)
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not any(thread.is_alive() for thread in threads), "threads still running"
    if errors:
        raise errors[0]
    return [results[i] for i in range(count)]
