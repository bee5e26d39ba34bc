"""Group commit: concurrent callers share one statement and one commit.

A caller submits an item and awaits its own result. If a flush may start, it starts with
everything queued once the callers already scheduled in this turn of the event loop have
submitted theirs (the calls of one message arrive as tasks started together: they share a
statement); while flushes run, new items gather for the next one. No timer: a lone caller
waits for one turn of the loop, never for company.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R | Exception]]], *,
                 max_batch: int = 500, max_concurrent: int = 2) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._max_concurrent = max_concurrent
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0
        self._gathering = False  # a caller lets the others of its turn queue, then flushes
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        (result,) = await self.submit_many([item])
        if isinstance(result, Exception):
            raise result
        return result

    async def submit_many(self, items: list[T]) -> list[R | Exception]:
        """Submit items that arrived together: they share a flush (max_batch permitting).
        Returns each item's result, or the exception that failed it."""
        loop = asyncio.get_running_loop()
        batch = [(item, loop.create_future()) for item in items]
        lead = not self._queue and not self._gathering and self._running < self._max_concurrent
        self._queue.extend(batch)
        if lead:
            # Let the callers scheduled in this same turn queue their items too (they run
            # before this task resumes); items that arrive later go to the next flush.
            self._gathering = True
            try:
                await asyncio.sleep(0)
            except BaseException:
                self._gathering = False
                self._start_flushes()  # what was queued, this caller's items too, still goes
                raise
            self._gathering = False
            if len(self._queue) == len(batch) <= self._max_batch:
                # Alone: flush in this task, saving two trips through the event loop. (Others'
                # items go in a task of their own: cancelling this caller must not fail them.)
                self._queue = []
                self._running += 1
                await self._run(batch)
        self._start_flushes()
        if not all(future.done() for _, future in batch):
            await asyncio.wait([future for _, future in batch])
        return [cast(Exception, future.exception()) or future.result() for _, future in batch]

    def _start_flushes(self) -> None:
        while self._queue and self._running < self._max_concurrent and not self._gathering:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
            self._running += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):  # the flush failed this item alone
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except BaseException as exc:  # every waiter must hear about it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running -= 1
            self._start_flushes()
