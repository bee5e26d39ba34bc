"""Group commit: concurrent callers share one statement and one commit.

A caller submits an item and awaits its own result. If a flush may start, it starts at
once with everything queued (a lone caller flushes its item itself, never waiting for
company); while flushes run, new items gather for the next one. No timer, no artificial
delay.
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
        if not self._queue and self._running < self._max_concurrent and len(batch) <= self._max_batch:
            # Nobody to wait for: flush in the caller's own task, saving two trips through
            # the event loop. Items that arrive meanwhile go to the next flush.
            self._running += 1
            await self._run(batch)
        else:
            self._queue.extend(batch)
            self._start_flushes()
            await asyncio.wait([future for _, future in batch])
        return [cast(Exception, future.exception()) or future.result() for _, future in batch]

    def _start_flushes(self) -> None:
        while self._queue and self._running < self._max_concurrent:
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
