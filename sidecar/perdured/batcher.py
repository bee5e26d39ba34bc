"""Group commit: concurrent callers share one statement and one commit.

A caller submits an item and awaits its own result. If a flush may start, it starts at
once with everything queued (a lone caller flushes its item itself, never waiting for
company); while flushes run, new items gather for the next one. No timer, no artificial
delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R]]], *,
                 max_batch: int = 500, max_concurrent: int = 2) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._max_concurrent = max_concurrent
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if not self._queue and self._running < self._max_concurrent:
            # Nobody to wait for: flush in the caller's own task, saving two trips through
            # the event loop. Items that arrive meanwhile go to the next flush.
            self._running += 1
            await self._run([(item, future)])
            return future.result()
        self._queue.append((item, future))
        self._start_flushes()
        return await future

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
                if not future.done():
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
