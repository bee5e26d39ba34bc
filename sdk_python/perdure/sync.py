"""The synchronous Perdure SDK, for code without an event loop: Flask, Django, scripts.

    from perdure.sync import Perdure

    perdure = Perdure()

    @perdure.durable("notifications:email:send", max_attempts=5)
    def send_email(to: str, subject: str) -> dict: ...

    handle = send_email("user@example.com", "Welcome!")     # enqueued (committed) when it returns
    print(handle.result(timeout=30))

The same API as `perdure.Perdure`, blocking. It is the asynchronous SDK, run on a private
event loop in a daemon thread that the client owns: the same options, the same exceptions
(`perdure.JobDeadError`, ...) and the same data classes (`perdure.JobDetails`, ...). One client
is safe to share between threads (a web server's request threads, say).

The client starts on first use, only to enqueue and read; `start()` (or `with perdure:`)
also serves its durable functions, in the background, and `run_worker()` serves them in the
foreground until SIGTERM or SIGINT. Inside a plain `def` handler, `perdure.sync.context()`
gives the job's context with blocking steps, durable sleeps and events.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import functools
import inspect
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Generic, ParamSpec, Protocol, Self, TypeVar, overload

import grpc

from perdure import _context
from perdure._client import DurableFunction as AsyncDurableFunction
from perdure._client import Perdure as AsyncPerdure
from perdure._client import _BoundCall as AsyncBoundCall
from perdure._client import _translate
from perdure._context import JobLog
from perdure._errors import NotStartedError, PerdureError
from perdure._handle import JobDetails
from perdure._handle import JobHandle as AsyncJobHandle
from perdure._loop import Runner, wait
from perdure._options import RateLimit
from perdure._schedules import Schedule
from perdure._worker import JobEvent

__all__ = ["DurableFunction", "JobContext", "JobHandle", "Perdure", "Schedules", "context"]

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
T = TypeVar("T")

log = logging.getLogger("perdure")
CLOSED = "this Perdure client is closed: make a new one to go on"
# What close() allows beyond the shutdown grace: the handlers' cancellation, a spawned sidecar's stop.
_CLOSE_MARGIN = 60.0


class Perdure:
    """Durable execution through a perdured sidecar, for synchronous code.

        Perdure()                               # spawns a local perdured on the embedded PostgreSQL
        Perdure(storage="postgresql://...")     # spawns perdured against that database
        Perdure(address="127.0.0.1:7433")       # uses a running sidecar
        Perdure(address="perdured.internal:7433", token=..., tls_ca="ca.pem")   # one that asks for TLS and a token

    The TLS and token options are those of `perdure.Perdure` (with the same PERDURE_* defaults).
    It starts on first use (to enqueue and read only). `start()`, or `with perdure:`, starts it
    and serves its durable functions in a background thread; `run_worker()` serves them in the
    foreground. `close()` stops it; a client left open is closed when the interpreter exits.
    """

    def __init__(self, *, address: str | None = None, storage: str | None = None,
                 namespace: str = "default", worker_concurrency: int = 10,
                 data_dir: str | Path | None = None, shutdown_grace: float = 10.0,
                 token: str | None = None, tls: bool | None = None, tls_ca: str | Path | None = None,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                 tls_server_name: str | None = None, retry_unavailable: float = 30.0) -> None:
        self._async = AsyncPerdure(address=address, storage=storage, namespace=namespace,
                                   worker_concurrency=worker_concurrency, data_dir=data_dir,
                                   shutdown_grace=shutdown_grace, token=token, tls=tls, tls_ca=tls_ca,
                                   tls_cert=tls_cert, tls_key=tls_key, tls_server_name=tls_server_name,
                                   retry_unavailable=retry_unavailable)
        # Held while starting or beginning to close: one start at a time, none after close().
        self._lock = threading.Lock()
        self._runner: Runner | None = None
        self._started = False
        self._closed = False
        self._close_done = threading.Event()
        # Cron schedules of this namespace: perdure.schedules.create(...), .get, .list, ...
        self.schedules = Schedules(self)

    @property
    def address(self) -> str | None:
        """The sidecar's address (a spawned sidecar's, once started)."""
        return self._async.address

    @property
    def namespace(self) -> str:
        return self._async.namespace

    @property
    def worker_concurrency(self) -> int:
        return self._async.worker_concurrency

    @property
    def shutdown_grace(self) -> float:
        return self._async.shutdown_grace

    @property
    def aio(self) -> AsyncPerdure:
        """The asynchronous client this one runs, for `async def` handlers and callbacks, which
        run on its event loop: `await perdure.aio.emit_event(...)`. Nowhere else."""
        return self._async

    # -- lifetime -------------------------------------------------------------------------

    def start(self, *, serve: bool = True) -> None:
        """Start now and, unless `serve` is false, serve this process's durable functions in the
        background (handlers run in threads; `async def` ones on the client's event loop) while
        the calling thread goes on. Starting again changes nothing, except that a client started
        without serving (by a call) serves from then on."""
        self._start(serve=serve)

    def close(self) -> None:
        """Stop: running handlers get `shutdown_grace` seconds to finish, the others are handed
        back to the sidecar (to run elsewhere), a spawned sidecar is stopped, and calls still
        waiting raise NotStartedError. Closing again does nothing; a closed client stays closed."""
        self._close(wait=True)

    def stop(self) -> None:
        """The same as close()."""
        self._close(wait=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Wait until the worker stream is registered with the sidecar (useful in tests and demos)."""
        self._call(self._async.wait_until_serving, timeout)

    def run_worker(self) -> None:
        """Serve this process's durable functions in the foreground, until SIGTERM or SIGINT (or
        until another thread calls close()); then drain, as close() does, and return.

        For a worker process beside a web app: `python -m myapp.worker`, whose main calls
        `perdure.run_worker()`. While it drains, a second SIGTERM or SIGINT has its usual
        effect (the process ends at once; its unfinished jobs are retried elsewhere).
        """
        if not self._async._functions:
            raise PerdureError("this process defines no durable functions to serve: decorate them with "
                               "@perdure.durable(...) before run_worker()")
        self.start()
        runner = self._runner
        assert runner is not None
        stopping = asyncio.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("perdure worker stopping on %s: running jobs get up to %g s",
                     signal.Signals(signum).name, self.shutdown_grace)
            try:
                runner.loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # closed meanwhile
                pass

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                previous[number] = signal.signal(number, on_signal)
        try:
            self._call(self._serve_until, stopping)
        except NotStartedError:
            if not self._closed:
                raise
        finally:
            # From here a second signal does what it did before: a second Ctrl-C interrupts the drain.
            for restored, handler in previous.items():
                signal.signal(restored, handler)
            self.close()

    async def _serve_until(self, stopping: asyncio.Event) -> None:
        """Until `stopping` is set; raises what ended the worker, if it ended by itself."""
        stop = asyncio.ensure_future(stopping.wait())
        worker = self._async._worker_task
        try:
            await asyncio.wait([stop] if worker is None else [stop, worker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if worker is not None and worker.done() and not worker.cancelled() and worker.exception() is not None:
            failure = worker.exception()
            if isinstance(failure, grpc.aio.AioRpcError):  # the sidecar refused it: say why, in SDK terms
                raise _translate(failure.code(), failure.details() or "") from failure
            raise PerdureError(f"the worker stopped: {failure!r}") from failure

    def _close(self, *, wait: bool) -> None:
        if self._runner is not None and self._runner.in_loop_thread():
            raise PerdureError("close() was called on the client's own event loop, where it would wait for "
                               "itself: close the client from the code that started it")
        with self._lock:
            runner, closed, self._closed = self._runner, self._closed, True
        if closed:
            if wait and runner is not None and os.getpid() == runner.pid:
                self._close_done.wait()
            return
        try:
            if runner is None or os.getpid() != runner.pid:
                return  # never started, or started in the process this one was forked from
            atexit.unregister(self._close_at_exit)
            runner.shutdown(self._async.stop(), timeout=self.shutdown_grace + _CLOSE_MARGIN)
        finally:
            self._close_done.set()

    def _close_at_exit(self) -> None:
        # After the program's threads have ended. Python's executors refuse work by then: a
        # spawned sidecar is signalled to stop but not waited for (it stops by itself).
        try:
            self._close(wait=False)
        except Exception as exc:  # the interpreter is going away; nothing else can be done
            log.debug("closing the Perdure client at exit: %r", exc)

    # -- durable functions ----------------------------------------------------------------

    def durable(self, name: str, *, max_attempts: int | None = None, backoff: str | None = None,
                initial_delay: float | None = None, max_delay: float | None = None,
                timeout: float | None = None, jitter: float | None = None, priority: int | None = None,
                start_within: float | None = None, max_duration: float | None = None,
                concurrency: int | None = None, key_concurrency: int | None = None,
                rate_limit: RateLimit | None = None, key_rate_limit: RateLimit | None = None,
                schedule: str | None = None, timezone: str = "UTC", missed: str = "once",
                ) -> _Decorator:
        """Make a function durable under `name`: calling it enqueues a job and returns a JobHandle
        at once (the job is committed). The options are those of `perdure.Perdure.durable`.

        The handler may be a plain `def` (run in a thread: it may block) or an `async def` (run
        on the client's event loop: it must not block, and it awaits the asynchronous API).
        """
        register = self._async.durable(
            name, max_attempts=max_attempts, backoff=backoff, initial_delay=initial_delay, max_delay=max_delay,
            timeout=timeout, jitter=jitter, priority=priority, start_within=start_within, max_duration=max_duration,
            concurrency=concurrency, key_concurrency=key_concurrency, rate_limit=rate_limit,
            key_rate_limit=key_rate_limit, schedule=schedule, timezone=timezone, missed=missed)

        def decorate(fn: Callable[..., Any]) -> DurableFunction[Any, Any]:
            return DurableFunction(self, register(fn))

        return decorate

    def enqueue(self, name: str, *args: Any, **options: Any) -> JobHandle[Any]:
        """Enqueue a call of `name` by name (its handler may live in another process or language).
        Keyword arguments are job options (idempotency_key, max_attempts, timeout, delay, ...)."""
        return self._enqueue(self._async.enqueue, name, *args, **options)

    def enqueue_many(self, name: str, calls: Iterable[Sequence[Any]], **options: Any) -> list[JobHandle[Any]]:
        """One job of `name` per item of `calls`, in batches of up to 1000 (one commit each)."""
        return [JobHandle(self, h) for h in self._call(self._async.enqueue_many, name, list(calls), **options)]

    def handle(self, job_id: str) -> JobHandle[Any]:
        """A handle on an existing job, e.g. one whose id was stored earlier."""
        return JobHandle(self, self._async.handle(job_id))

    # -- many jobs at once: listing, dead letters --------------------------------------------

    def list_jobs(self, name: str | None = None, *, status: str | list[str] | None = None,
                  labels: dict[str, str] | None = None, error_type: str | None = None,
                  error_contains: str | None = None, limit: int = 100) -> list[JobDetails]:
        """Jobs of this namespace, newest first, at most `limit`, filtered as in
        `perdure.Perdure.list_jobs`. The dead letters: `list_jobs(status="dead")`."""
        return self._call(self._async.list_jobs, name, status=status, labels=labels, error_type=error_type,
                          error_contains=error_contains, limit=limit)

    def retry_jobs(self, name: str | None = None, *, status: str | list[str] = "dead",
                   labels: dict[str, str] | None = None, error_type: str | None = None,
                   error_contains: str | None = None) -> int:
        """Run every dead (or, with status="cancelled", cancelled) job that matches the filter
        again, each with a fresh set of attempts, in one call. Returns how many."""
        return self._call(self._async.retry_jobs, name, status=status, labels=labels, error_type=error_type,
                          error_contains=error_contains)

    def purge_jobs(self, name: str | None = None, *, status: str | list[str] = "dead",
                   labels: dict[str, str] | None = None, error_type: str | None = None,
                   error_contains: str | None = None) -> int:
        """Delete the finished jobs (dead by default) that match the filter, with their history.
        Returns how many."""
        return self._call(self._async.purge_jobs, name, status=status, labels=labels, error_type=error_type,
                          error_contains=error_contains)

    def emit_event(self, name: str, payload: Any = None) -> int:
        """Emit the durable event `name` with a JSON payload (see `perdure.Perdure.emit_event`).
        Returns how many waiting jobs it woke."""
        return self._call(self._async.emit_event, name, payload)

    def on(self, event: str, callback: Callable[[JobEvent], Any]) -> None:
        """Call `callback(JobEvent)` when a handler of this process starts, succeeds, fails an
        attempt (job:error) or fails for good (job:dead). A plain function runs in a thread of
        the client (it may block, and use the client); an `async def` one on its event loop."""
        if inspect.iscoroutinefunction(callback):
            self._async.on(event, callback)
            return

        async def in_thread(info: JobEvent) -> None:
            outcome = await asyncio.to_thread(callback, info)
            if inspect.isawaitable(outcome):
                await outcome

        self._async.on(event, in_thread)

    # -- plumbing -------------------------------------------------------------------------

    def _start(self, *, serve: bool) -> Runner:
        with self._lock:
            if self._closed:
                raise NotStartedError(CLOSED)
            if self._runner is None:
                self._runner = Runner()
                atexit.register(self._close_at_exit)
            self._runner.run(self._async.start(serve=serve), closed_message=CLOSED)
            self._started = True
            return self._runner

    def _runner_for_use(self) -> Runner:
        """The client's runner, started (to enqueue and read only) if need be."""
        runner = self._runner
        if self._started and runner is not None:
            return runner
        return self._start(serve=False)

    def _call(self, fn: Callable[Q, Coroutine[Any, Any, T]], /, *args: Q.args, **kwargs: Q.kwargs) -> T:
        """Run the coroutine function `fn` on the client's loop, in the caller's context, and
        wait for its outcome."""
        runner = self._runner_for_use()
        return runner.run(fn(*args, **kwargs), closed_message=CLOSED)

    def _enqueue(self, fn: Callable[Q, Coroutine[Any, Any, AsyncJobHandle]], /, *args: Q.args,
                 **kwargs: Q.kwargs) -> JobHandle[Any]:
        runner = self._runner_for_use()
        job = _context.current_context()
        if job is not None and job._loop is not None and job._loop is not runner.loop:
            # Its child would be recorded through another client's stream.
            raise PerdureError(f"job {job.job_id} is served by another Perdure client: a handler enqueues jobs "
                               "(its children) through the client that serves it")
        return JobHandle(self, runner.run(fn(*args, **kwargs), closed_message=CLOSED))


class _Decorator(Protocol):
    """What `Perdure.durable(...)` returns: it turns `fn` into a DurableFunction with the same
    parameters, whose handles' result() returns what `fn` returns (or what its coroutine does)."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> DurableFunction[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> DurableFunction[P, R]: ...


class DurableFunction(Generic[P, R]):
    """A function made durable. `f(*args)` enqueues and returns a JobHandle; `f.options(...)(*args)`
    does the same with per-call options; `f.fn` is the plain function; `f.aio` the same durable
    function for `async def` handlers (`await f.aio(*args)`)."""

    def __init__(self, client: Perdure, function: AsyncDurableFunction) -> None:
        self.client = client
        self.aio = function
        self.name: str = function.name
        self.fn: Callable[P, Any] = function.fn
        functools.update_wrapper(self, function.fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        return self.client._enqueue(self.aio, *args, **kwargs)

    def enqueue_many(self, calls: Iterable[Sequence[Any]], **options: Any) -> list[JobHandle[R]]:
        """One job per item of `calls` (each a sequence of positional arguments), in batches."""
        return [JobHandle(self.client, h) for h in self.client._call(self.aio.enqueue_many, list(calls), **options)]

    def options(self, **overrides: Any) -> _BoundCall[P, R]:
        """Per-call options: idempotency_key, delay or run_at, priority, labels, concurrency_key,
        start_within, max_duration, and any retry option or timeout."""
        return _BoundCall(self.client, self.aio.options(**overrides))

    def __repr__(self) -> str:
        return f"<durable function {self.name!r}>"


class _BoundCall(Generic[P, R]):
    def __init__(self, client: Perdure, call: AsyncBoundCall) -> None:
        self._client, self._call = client, call

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        return self._client._enqueue(self._call, *args, **kwargs)


class JobHandle(Generic[R]):
    """A job enqueued through a sidecar. Cheap to make: `perdure.handle(job_id)`."""

    def __init__(self, client: Perdure, handle: AsyncJobHandle) -> None:
        self._client = client
        self._handle = handle
        self.id = handle.id
        self.name = handle.name
        self.deduplicated = handle.deduplicated

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, name={self.name!r})"

    def result(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return its result.

        Raises JobDeadError (with the last error and the attempt count) if it failed for
        good, JobCancelledError if it was cancelled, TimeoutError if `timeout` seconds pass.
        In a handler, on a child it spawned, the parent is suspended until the child ends.
        """
        result: R = self._client._call(self._handle.result, timeout)
        return result

    def status(self) -> str:
        """pending, running, suspended, success, dead or cancelled."""
        return self._client._call(self._handle.status)

    def details(self) -> JobDetails:
        """Everything the sidecar knows about the job, with one record per attempt."""
        return self._client._call(self._handle.details)

    def cancel(self) -> bool:
        """Cancel the job if it has not finished; a running handler is told to stop (a plain
        `def` handler cannot be interrupted: it goes on until it returns, but its outcome no
        longer counts). Returns False when it had already finished."""
        return self._client._call(self._handle.cancel)


class Schedules:
    """The cron schedules of the client's namespace: `perdure.schedules`, as in the
    asynchronous SDK (`perdure.Schedules`), blocking."""

    def __init__(self, client: Perdure) -> None:
        self._client = client

    def create(self, name: str, function: str | DurableFunction[..., Any] | AsyncDurableFunction, cron: str, *,
               timezone: str = "UTC", args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
               missed: str = "once", paused: bool | None = None, replace: bool = False,
               **options: Any) -> Schedule:
        """Create the schedule `name`: a job of `function` (a name, or a durable function whose
        options it takes) at every tick of `cron`, in `timezone`. Raises ScheduleExistsError if
        the name is taken, unless `replace` is set."""
        return self._client._call(self._client._async.schedules.create, name, _unwrap(function), cron,
                                  timezone=timezone, args=args, kwargs=kwargs, missed=missed, paused=paused,
                                  replace=replace, **options)

    def get(self, name: str) -> Schedule:
        """The schedule `name`, with its next run time; ScheduleNotFoundError if there is none."""
        return self._client._call(self._client._async.schedules.get, name)

    def list(self, function: str | DurableFunction[..., Any] | AsyncDurableFunction | None = None,
             ) -> builtins.list[Schedule]:
        """Every schedule of the namespace (of `function` only, if given), by name."""
        return self._client._call(self._client._async.schedules.list, _unwrap(function))

    def update(self, name: str, *, cron: str | None = None, timezone: str | None = None,
               missed: str | None = None, function: str | DurableFunction[..., Any] | AsyncDurableFunction | None = None,
               args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None,
               **options: Any) -> Schedule:
        """Change what is given; what is not given stays as it was. A new cron or time zone moves
        the next tick to the first one from now."""
        return self._client._call(self._client._async.schedules.update, name, cron=cron, timezone=timezone,
                                  missed=missed, function=_unwrap(function), args=args, kwargs=kwargs, **options)

    def pause(self, name: str) -> Schedule:
        """Stop the ticks until `resume`. Pausing a paused schedule changes nothing."""
        return self._client._call(self._client._async.schedules.pause, name)

    def resume(self, name: str) -> Schedule:
        """Tick again, from the first tick after now: ticks that fell during the pause do not run."""
        return self._client._call(self._client._async.schedules.resume, name)

    def delete(self, name: str) -> bool:
        """Delete the schedule (jobs it enqueued stay). Returns False if there was none."""
        return self._client._call(self._client._async.schedules.delete, name)


@overload
def _unwrap(function: None) -> None: ...
@overload
def _unwrap(function: str | DurableFunction[..., Any] | AsyncDurableFunction) -> str | AsyncDurableFunction: ...
def _unwrap(function: Any) -> Any:
    return function.aio if isinstance(function, DurableFunction) else function


# -- inside a handler ---------------------------------------------------------------------


def context() -> JobContext:
    """Inside a plain `def` handler: the context of the job it runs for, whose durable
    operations (steps, sleeps, events) block. Raises NotInJobError elsewhere."""
    return JobContext(_context.context())


class JobContext:
    """The job's context for a plain `def` handler: `perdure.sync.context()`.

    The same as `perdure.JobContext`, blocking: `step`, `sleep`, `sleep_until` and
    `wait_for_event` return when their checkpoint is committed. A durable sleep or wait
    suspends the job by raising out of the handler (a BaseException, which `except Exception`
    lets through): the handler is run again when the job resumes, and the steps it recorded
    come back without running again.
    """

    def __init__(self, job: _context.JobContext) -> None:
        self._job = job

    @property
    def job_id(self) -> str:
        return self._job.job_id

    @property
    def name(self) -> str:
        return self._job.name

    @property
    def namespace(self) -> str:
        return self._job.namespace

    @property
    def attempt(self) -> int:
        return self._job.attempt

    @property
    def max_attempts(self) -> int:
        return self._job.max_attempts

    @property
    def log(self) -> JobLog:
        """`ctx.log.info("...")` (and debug, warning, error): kept with the job, streamed to watchers."""
        return self._job.log

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id!r}, name={self.name!r}, attempt={self.attempt})"

    def heartbeat(self) -> None:
        """Prove the handler is alive: the sidecar extends this attempt's lease at once."""
        self._job.heartbeat()

    def progress(self, current: float, total: float, message: str | None = None) -> None:
        """Report how far the job has come; the last report is kept with the job and streamed."""
        self._job.progress(current, total, message)

    def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once for this job, whatever the retries, in this thread.

        If an earlier attempt recorded this step, its result comes back without calling `fn`.
        Otherwise `fn` runs, its result is committed (JSON), and only then returned. A step
        that raises is recorded as failed for this attempt, and the error propagates. A name
        used again in one run gets its own checkpoint: "fetch", "fetch#2"...
        """
        job = self._job
        key = job._step_key(name)
        if key in job._recorded:
            return job._recorded[key]
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = self._block(_awaited(value))
        except Exception as exc:
            self._block(job._step_failed(key, exc))
            raise
        return self._block(job._step_succeeded(key, value))

    def sleep(self, seconds: float) -> None:
        """Sleep durably: the job is suspended, its worker slot freed, and it resumes after
        `seconds` on any worker, replaying the steps before this point."""
        self._block(self._job.sleep(seconds))

    def sleep_until(self, when: datetime) -> None:
        """Sleep durably until `when` (an aware datetime); see sleep()."""
        self._block(self._job.sleep_until(when))

    def wait_for_event(self, name: str, timeout: float | None = None) -> Any:
        """Wait durably for the event `name` and return its payload; see
        `perdure.JobContext.wait_for_event`. EventTimeoutError after `timeout` seconds."""
        return self._block(self._job.wait_for_event(name, timeout))

    def _block(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run one of the job's coroutines on the loop its worker runs on, and wait for it."""
        loop = self._job._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            coroutine.close()
            raise PerdureError("perdure.sync.context() is for plain def handlers; in an async def handler, "
                               "await the operations of perdure.context()")
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return wait(future, loop.is_running)
        except BaseException:
            future.cancel()
            raise


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
