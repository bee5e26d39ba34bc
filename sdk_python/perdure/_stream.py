"""Batches on the `Work` stream (see "Batches" in workers.proto), for both of its ends.

Each message costs gRPC a fixed amount of work, whatever its size. Under load, many are
ready at once; sending a run of them as one message pays that cost once. Nothing waits
to fill a batch: what is ready goes now, so a quiet stream sends single messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, TypeVar

# Far below every message size limit on the stream (the sidecar's is payload + 1 MiB), and
# large enough that the per-message cost is negligible.
BATCH_BYTES = 256 * 1024

M = TypeVar("M", bound=Any)  # WorkerMessage or SidecarMessage


def ready(queue: asyncio.Queue[M], first: M) -> list[M]:
    """`first`, and everything else the queue holds right now."""
    messages = [first]
    while not queue.empty():
        messages.append(queue.get_nowait())
    return messages


def pack(messages: list[M], batch_of: Mapping[str, str], limit: int = BATCH_BYTES) -> list[M]:
    """Pack each run of consecutive messages of a kind in `batch_of` (kind -> its batch
    field) into one batch message of at most `limit` bytes; keep the rest, and the order."""
    packed: list[M] = []
    run: list[M] = []
    run_bytes = 0

    def close_run() -> None:
        if len(run) == 1:
            packed.append(run[0])
        elif run:
            kind = run[0].WhichOneof("kind")
            batch = type(run[0])()
            getattr(batch, batch_of[kind]).items.extend(getattr(message, kind) for message in run)
            packed.append(batch)
        run.clear()

    for message in messages:
        kind = message.WhichOneof("kind")
        if kind not in batch_of:
            close_run()
            packed.append(message)
            continue
        size = getattr(message, kind).ByteSize()
        if run and (run[0].WhichOneof("kind") != kind or run_bytes + size > limit):
            close_run()
        if not run:
            run_bytes = 0
        run.append(message)
        run_bytes += size
    close_run()
    return packed
