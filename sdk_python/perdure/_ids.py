"""Job ids: UUID version 7 (RFC 9562), so that ids sort by creation time and index well. The
sidecar makes them, and so do the SDKs when they choose the id of a job they enqueue (a retry
then cannot make a second job)."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_last_counter = 0
_COUNTER_BITS = 74  # rand_a (12 bits) and rand_b (62 bits)


def new_job_id() -> uuid.UUID:
    """48 bits of Unix milliseconds, then a random counter: ids from one process always increase."""
    ms, counter = _reserve(1)
    return uuid.UUID(int=_value(ms, counter))


def new_job_ids(count: int) -> list[str]:
    """`count` new ids as text, in increasing order: one clock reading for all of them."""
    ms, first = _reserve(count)
    texts = []
    for counter in range(first, first + count):
        digits = f"{_value(ms, counter):032x}"
        texts.append(f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}")
    return texts


def _reserve(count: int) -> tuple[int, int]:
    """A millisecond and the first of `count` counters in it that no id of this process has."""
    global _last_ms, _last_counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms, counter = _last_ms, _last_counter + 1
            if (counter + count - 1) >> _COUNTER_BITS:
                ms, counter = ms + 1, 0
        else:
            # Start low in the counter space so that many ids fit in one millisecond.
            counter = int.from_bytes(os.urandom(10), "big") >> (80 - _COUNTER_BITS + 1)
        _last_ms, _last_counter = ms, counter + count - 1
    return ms, counter


def _value(ms: int, counter: int) -> int:
    return (ms << 80) | (0x7 << 76) | ((counter >> 62) << 64) | (0x2 << 62) | (counter & ((1 << 62) - 1))
