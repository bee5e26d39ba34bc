"""Packing runs of Work stream messages into batches (perdure._stream)."""

from __future__ import annotations

import asyncio

from perdure import _stream
from perdure.v1 import types_pb2, workers_pb2

BATCH_OF = {"assignment": "assignments", "ack": "acks"}


def assignment(job_id: str, size: int = 0) -> workers_pb2.SidecarMessage:
    return workers_pb2.SidecarMessage(assignment=workers_pb2.Assignment(
        job_id=job_id, attempt=1, payload=types_pb2.Payload(data=b"x" * size)))


def ack(job_id: str) -> workers_pb2.SidecarMessage:
    return workers_pb2.SidecarMessage(ack=workers_pb2.OutcomeAck(job_id=job_id, attempt=1, recorded=True))


def cancel(job_id: str) -> workers_pb2.SidecarMessage:
    return workers_pb2.SidecarMessage(cancel=workers_pb2.CancelAssignment(job_id=job_id, attempt=1))


def unpacked(messages: list[workers_pb2.SidecarMessage]) -> list[tuple[str, str]]:
    """(kind, job id) of every message a batch stands for, in order."""
    flat = []
    for message in messages:
        kind = message.WhichOneof("kind")
        if kind in ("assignments", "acks"):
            single = "assignment" if kind == "assignments" else "ack"
            flat.extend((single, item.job_id) for item in getattr(message, kind).items)
        else:
            flat.append((kind, getattr(message, kind).job_id))
    return flat


def test_runs_of_one_kind_become_one_message_and_the_order_is_kept() -> None:
    messages = [assignment("a"), assignment("b"), ack("c"), ack("d"), cancel("a"), assignment("e")]
    packed = _stream.pack(messages, BATCH_OF)
    assert [m.WhichOneof("kind") for m in packed] == ["assignments", "acks", "cancel", "assignment"]
    assert unpacked(packed) == unpacked(messages)


def test_kinds_without_a_batch_and_lone_messages_go_as_they_are() -> None:
    messages = [cancel("a"), assignment("b"), cancel("c")]
    packed = _stream.pack(messages, BATCH_OF)
    assert packed == messages
    assert _stream.pack([assignment("a"), assignment("b")], {}) == [assignment("a"), assignment("b")]


def test_a_batch_stays_within_its_byte_limit() -> None:
    messages = [assignment(str(n), size=400) for n in range(10)]
    packed = _stream.pack(messages, BATCH_OF, limit=1000)
    assert all(m.ByteSize() <= 1100 for m in packed) and len(packed) == 5  # two per batch
    assert unpacked(packed) == unpacked(messages)
    big = assignment("big", size=5000)  # larger than the limit alone: sent alone
    assert _stream.pack([assignment("a"), big, assignment("b")], BATCH_OF, limit=1000) == [
        assignment("a"), big, assignment("b")]


async def test_ready_takes_everything_queued_now() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in (2, 3):
        queue.put_nowait(n)
    assert _stream.ready(queue, 1) == [1, 2, 3] and queue.empty()
