"""Job ids made by the SDK: UUID version 7, always increasing within a process, as UUIDs
and as text (enqueue_many takes a batch of them at once)."""

import time
import uuid

from perdure import _ids
from perdure._ids import new_job_id, new_job_ids


def test_ids_in_text_are_canonical_version_7_uuids():
    before_ms = time.time_ns() // 1_000_000
    texts = new_job_ids(3)
    after_ms = time.time_ns() // 1_000_000
    for text in texts:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before_ms <= parsed.int >> 80 <= after_ms + 1


def test_ids_increase_whichever_way_they_are_made():
    made = [str(new_job_id()), *new_job_ids(1000), str(new_job_id()), *new_job_ids(5), *new_job_ids(0)]
    assert len(made) == 1007
    assert made == sorted(made) and len(set(made)) == len(made)


def test_a_batch_that_would_overflow_the_counter_moves_to_the_next_millisecond(monkeypatch):
    now_ms = time.time_ns() // 1_000_000
    monkeypatch.setattr(_ids, "_last_ms", now_ms + 60_000)  # the clock went back: keep counting
    monkeypatch.setattr(_ids, "_last_counter", (1 << _ids._COUNTER_BITS) - 3)
    texts = new_job_ids(10)
    parsed = [uuid.UUID(text) for text in texts]
    assert {u.int >> 80 for u in parsed} == {now_ms + 60_001}
    assert texts == sorted(texts) and len(set(texts)) == 10
    assert str(new_job_id()) > texts[-1]
