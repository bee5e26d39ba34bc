"""The rows a sidecar keeps of its latest successes (events.EventHub) are answered only while
deletions can be heard, and are dropped when succeeded jobs are deleted."""

from __future__ import annotations

import uuid

from perdured.events import EXPECTED_AWAITS, EventHub


def _succeeded(hub: EventHub) -> dict[str, object]:
    row = {"id": uuid.uuid4(), "namespace": "default", "name": "f", "state": "success"}
    hub.job_finished(row)
    return row


def test_kept_rows__are_not_answered_while_notifications_may_be_missed() -> None:
    hub = EventHub("postgresql://unused")
    row = _succeeded(hub)
    assert hub.succeeded(row["id"]) is None  # not listening: a deletion now would go unheard
    hub.ready.set()
    assert hub.succeeded(row["id"]) is row


def test_kept_rows__are_dropped_when_succeeded_jobs_are_deleted() -> None:
    hub = EventHub("postgresql://unused")
    hub.ready.set()
    rows = [_succeeded(hub) for _ in range(3)]
    hub.forget_successes()
    assert [hub.succeeded(row["id"]) for row in rows] == [None, None, None]


def test_other_outcomes__are_not_kept() -> None:
    hub = EventHub("postgresql://unused")
    hub.ready.set()
    row = {"id": uuid.uuid4(), "namespace": "default", "name": "f", "state": "dead"}
    hub.job_finished(row)
    assert hub.succeeded(row["id"]) is None


def test_jobs_expected_to_be_awaited__are_forgotten_once_ended_and_bounded_in_number() -> None:
    hub = EventHub("postgresql://unused")
    ended, retried = uuid.uuid4(), uuid.uuid4()
    hub.expect_await(ended)
    hub.expect_await(retried)
    assert hub.awaited(ended) and hub.awaited(retried)
    hub.job_finished({"id": ended, "namespace": "default", "name": "f", "state": "dead", "whole": True})
    hub.job_finished({"id": retried, "namespace": "default", "name": "f", "state": "pending", "whole": True})
    assert not hub.awaited(ended) and hub.awaited(retried)  # a retry ends later: still expected
    for _ in range(EXPECTED_AWAITS):
        hub.expect_await(uuid.uuid4())
    assert not hub.awaited(retried)  # the oldest make room
