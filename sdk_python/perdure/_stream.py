"""Batches on the streams, for both of their ends: `Work` (see "Batches" in workers.proto)
and `Jobs.Calls`.

Each message costs gRPC a fixed amount of work, whatever its size. Under load, many are
ready at once; sending a run of them as one message pays that cost once. Nothing waits
to fill a batch: what is ready goes now, so a quiet stream sends single messages.

A client ends a stream by half-closing it and reading until the sidecar ends it, not by
cancelling it: operations of a cancelled call complete in gRPC's threads a moment later,
and when the event loop has closed meanwhile (asyncio.run returned), gRPC hands them to
it anyway: "Event loop is closed" is printed the next time the process uses gRPC in
another loop.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import Any, TypeVar, cast

# How long a client waits for the sidecar to end a stream it half-closed before cancelling it.
END_TIMEOUT = 2.0

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


def split_end(messages: list[M | None]) -> tuple[list[M], bool]:
    """The messages to send, and whether the writer was told to end (a None among them)."""
    if None in messages:
        return [m for m in messages if m is not None], True
    return cast(list[M], messages), False


def chunks(items: list[M], limit: int = BATCH_BYTES) -> list[list[M]]:
    """`items` cut, in order, into lists of at most `limit` bytes (an item larger than
    that alone)."""
    cut: list[list[M]] = []
    size = 0
    for item in items:
        item_size = item.ByteSize()
        if not cut or size + item_size > limit:
            cut.append([])
            size = 0
        cut[-1].append(item)
        size += item_size
    return cut


def pack(messages: list[M], batch_of: Mapping[str, str], limit: int = BATCH_BYTES) -> list[M]:
    """Pack each run of consecutive messages of a kind in `batch_of` (kind -> its batch
    field) into batch messages of at most `limit` bytes; keep the rest, and the order."""
    packed: list[M] = []
    for kind, run in itertools.groupby(messages, key=lambda message: message.WhichOneof("kind")):
        if kind not in batch_of:
            packed.extend(run)
            continue
        for chunk in chunks(list(run), limit):
            if len(chunk) == 1:
                packed.append(chunk[0])
            else:
                batch = type(chunk[0])()
                getattr(batch, batch_of[kind]).items.extend(getattr(message, kind) for message in chunk)
                packed.append(batch)
    return packed
