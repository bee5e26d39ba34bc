"""The event loop on which synchronous clients (perdure.sync) run the asynchronous SDK.

One loop per process, in a daemon thread, from the first client's start to the interpreter's
exit. Each blocking call submits a coroutine to it and waits for the outcome, which comes
back as it is: the result, or the very exception raised.

Why one loop for every client, never closed: gRPC's asyncio stack routes every completion
event of the process through one poller, to the loop that made the call. A loop closed while
gRPC still has events for it (those of calls cancelled at close) makes gRPC fail while
handing them over, which can hold up the events of other loops. A loop that lives as long
as the process has none of that, and one thread serves all clients.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from perdure._errors import NotStartedError, PerdureError

T = TypeVar("T")
# How often a caller waiting for an outcome checks that the loop still runs.
_LIVENESS_CHECK = 1.0
FORKED = ("Perdure was started in process {pid}, which this process was forked from; gRPC's asyncio stack "
          "does not survive a fork: start clients after the fork (e.g. in gunicorn's post_fork hook), or let "
          "them start on first use, in each process")

_lock = threading.Lock()
_shared: LoopThread | None = None


class LoopThread:
    """An event loop running in a daemon thread until the interpreter exits."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        # For the loop's thread-hopping work (to_thread: the sync callbacks, a spawned sidecar).
        self.loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(thread_name_prefix=f"{name}-executor"))
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        # Registered before any client's cleanup, so run after all of them.
        atexit.register(self._stop_at_exit)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def _stop_at_exit(self) -> None:
        if os.getpid() == self.pid and self.alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


def shared_loop() -> LoopThread:
    """This process's loop, started if need be."""
    global _shared
    with _lock:
        if _shared is not None and _shared.pid != os.getpid():
            raise PerdureError(FORKED.format(pid=_shared.pid))
        if _shared is None or not _shared.alive():
            _shared = LoopThread("perdure-sync")
        return _shared


class Runner:
    """One client's calls on the shared loop: each blocks its caller until done, and all of
    them can be refused and cancelled at once, when the client closes."""

    def __init__(self) -> None:
        self._thread = shared_loop()
        self.pid = self._thread.pid
        self.loop = self._thread.loop
        # Taken to submit a call or to begin the shutdown: nothing is submitted after it begins.
        self._lock = threading.Lock()
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()  # only touched on the loop

    def in_loop_thread(self) -> bool:
        return self._thread.in_loop_thread()

    def check_caller(self) -> None:
        if os.getpid() != self.pid:
            raise PerdureError(FORKED.format(pid=self.pid))
        if self.in_loop_thread():
            raise PerdureError(
                "a blocking call of the synchronous client on its own event loop (in an async def handler "
                "or callback) would wait for itself forever: there, await the asynchronous API instead "
                "(durable_function.aio(...), perdure.aio, perdure.context())")

    def run(self, coroutine: Coroutine[Any, Any, T], *, closed_message: str) -> T:
        """Run `coroutine` on the loop, in the caller's context (its context variables too), and
        return its result or raise its exception. Raises NotStartedError(closed_message) once
        the shutdown has begun. A caller interrupted (KeyboardInterrupt) cancels the coroutine."""
        try:
            self.check_caller()
        except BaseException:
            coroutine.close()
            raise
        context = contextvars.copy_context()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def begin() -> None:
            if future.cancelled():
                coroutine.close()
                return
            task = self.loop.create_task(coroutine, context=context)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda done: _settle(future, done))
            # A caller that gives up stops the work too.
            future.add_done_callback(lambda f: self.loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None)

        with self._lock:
            if self._closing:
                coroutine.close()
                raise NotStartedError(closed_message)
            self.loop.call_soon_threadsafe(begin)
        try:
            return wait(future, self._thread.alive)
        except (concurrent.futures.CancelledError, NotStartedError):
            if self._closing:  # cancelled by the shutdown, or its client stopped under it
                raise NotStartedError(closed_message) from None
            raise
        except BaseException:
            future.cancel()
            raise

    def shutdown(self, final: Coroutine[Any, Any, None], timeout: float) -> None:
        """Refuse new calls, run `final` (at most `timeout` seconds), then cancel this client's
        calls still running: their callers raise NotStartedError. Raises what `final` raised."""
        with self._lock:
            if self._closing or not self._thread.alive():
                self._closing = True
                final.close()
                return
            self._closing = True
            finished = asyncio.run_coroutine_threadsafe(self._shutdown(final, timeout), self.loop)
        try:
            wait(finished, self._thread.alive)
        except TimeoutError:
            raise PerdureError(f"the Perdure client did not stop within {timeout:g} s") from None

    async def _shutdown(self, final: Coroutine[Any, Any, None], timeout: float) -> None:
        try:
            await asyncio.wait_for(final, timeout)
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)


def wait(future: concurrent.futures.Future[T], alive: Callable[[], bool]) -> T:
    """The outcome of `future`, waiting as long as `alive()` says its loop still runs."""
    while True:
        try:
            return future.result(timeout=_LIVENESS_CHECK)
        except concurrent.futures.TimeoutError:
            if future.done():  # done meanwhile, or its outcome is a TimeoutError: that outcome
                return future.result()
            if not alive():
                future.cancel()
                raise NotStartedError("the event loop of Perdure's synchronous clients has stopped") from None


def _settle(future: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    if future.cancelled():
        return
    try:
        if task.cancelled():
            future.cancel()
        elif (exc := task.exception()) is not None:
            future.set_exception(exc)
        else:
            future.set_result(task.result())
    except concurrent.futures.InvalidStateError:  # the caller cancelled it meanwhile
        pass
