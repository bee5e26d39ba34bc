"""Job events reach the sidecars packed: a statement that changes many jobs sends a few
notifications, each under NOTIFY's 8000 bytes, that together hold one event per change
(0013_batched_notifications.sql), and the sidecar reads them as it read single events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import psycopg

from perdured.events import CHANNEL, EventHub, JobEvent, entries

JOBS = 300
NOTIFY_LIMIT = 8000


def _insert(db: psycopg.Connection, count: int, state: str = "pending") -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    db.execute(
        "INSERT INTO perdure.jobs (id, namespace, name, state, payload, payload_encoding, max_attempts, backoff,"
        " initial_delay, max_delay, jitter, timeout, run_at, attempt)"
        " SELECT id, 'ns', 'fn', %s, '\\x'::bytea, 'json', 3, 'fixed', '1s', '1s', 0, '30s', now(), 0"
        " FROM unnest(%s::uuid[]) AS id", (state, ids))
    return ids


def _payloads(database_url: str, change) -> list[str]:
    """The notification payloads the change (a function of a connection) sends."""
    with psycopg.connect(database_url, autocommit=True) as listener, \
            psycopg.connect(database_url, autocommit=True) as writer:
        listener.execute(f"LISTEN {CHANNEL}")
        change(writer)
        writer.execute(f"NOTIFY {CHANNEL}, 'end'")
        payloads = []
        for notification in listener.notifies(timeout=10):
            if notification.payload == "end":
                break
            payloads.append(notification.payload)
        return payloads


def _events(payloads: list[str]) -> list[JobEvent]:
    return [JobEvent.from_dict(item) for payload in payloads for item in entries(payload)]


def test_a_batch_insert__is_announced_in_a_few_notifications_with_every_job(database_url) -> None:
    ids: list[uuid.UUID] = []
    payloads = _payloads(database_url, lambda conn: ids.extend(_insert(conn, JOBS)))
    assert 1 < len(payloads) < JOBS / 10
    assert all(len(p.encode()) < NOTIFY_LIMIT for p in payloads)
    events = _events(payloads)
    assert [e.job_id for e in events] == ids  # in the order of the rows
    assert {(e.kind, e.state, e.namespace, e.name, e.attempt) for e in events} == {("enqueued", "pending", "ns", "fn", 0)}


def test_state_changes__each_send_their_event_and_other_updates_none(database_url, db) -> None:
    pending = _insert(db, JOBS)
    running = _insert(db, 2, state="running")

    def change(conn: psycopg.Connection) -> None:
        conn.execute("UPDATE perdure.jobs SET state = 'running', attempt = 1 WHERE id = ANY(%s)", (pending,))
        conn.execute("UPDATE perdure.jobs SET lease_expires_at = now() WHERE state = 'running'")  # no state change
        conn.execute("UPDATE perdure.jobs SET state = 'success', finished_at = now() WHERE id = %s", (running[0],))
        conn.execute("UPDATE perdure.jobs SET state = 'pending', error = %s WHERE id = %s",
                     (json.dumps({"type": "Boom", "message": "no"}), running[1]))

    events = _events(_payloads(database_url, change))
    assert [(e.kind, e.job_id) for e in events] == (
        [("started", job_id) for job_id in pending]
        + [("succeeded", running[0]), ("attempt_failed", running[1])])
    assert (events[-1].error_type, events[-1].error_message, events[-1].terminal) == ("Boom", "no", False)
    assert events[-2].terminal


def test_long_error_messages__are_cut_so_that_every_notification_fits(database_url, db) -> None:
    ids = _insert(db, 40, state="running")
    message = "é" * 3000  # 6000 bytes: whole, two events would not fit in one notification

    def change(conn: psycopg.Connection) -> None:
        conn.execute("UPDATE perdure.jobs SET state = 'dead', error = %s WHERE id = ANY(%s)",
                     (json.dumps({"type": "Boom", "message": message}), ids))

    payloads = _payloads(database_url, change)
    assert all(len(p.encode()) < NOTIFY_LIMIT for p in payloads)
    events = _events(payloads)
    assert sorted(e.job_id for e in events) == sorted(ids)
    assert {(e.kind, e.error_message) for e in events} == {("dead", "é" * 1000)}


def test_a_job_inserted_running__is_announced_as_started_at_insert(database_url) -> None:
    events = _events(_payloads(database_url, lambda conn: _insert(conn, 1, state="running")))
    assert [(e.kind, e.started_at_insert) for e in events] == [("started", True)]


async def test_subscribers__hear_the_kinds_they_take_and_awaiters_the_end_of_their_job(database_url, monkeypatch) -> None:
    read: list[str] = []  # the events the hub read in full
    from_dict = JobEvent.from_dict.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(JobEvent, "from_dict", classmethod(lambda cls, data: read.append(data["kind"]) or from_dict(cls, data)))
    hub = EventHub(database_url)
    listening = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub.ready.wait(), 10)
        everything: list[JobEvent] = []
        cancellations: list[JobEvent] = []
        stop_hearing_everything = hub.subscribe(everything.append)
        hub.subscribe(cancellations.append, {"cancelled"})
        with psycopg.connect(database_url, autocommit=True) as db:
            first, second, third = _insert(db, 3)
            await _until(lambda: len(everything) == 3)
            db.execute("UPDATE perdure.jobs SET state = 'cancelled' WHERE id = %s", (first,))
            await _until(lambda: len(cancellations) == 1)
            assert [e.kind for e in everything] == ["enqueued"] * 3 + ["cancelled"]

            # Now no one takes what is not a cancellation: only cancellations, and the end of
            # an awaited job, are read.
            stop_hearing_everything()
            read.clear()
            with hub.job_waiter(second) as second_ended:
                db.execute("UPDATE perdure.jobs SET state = 'running', attempt = 1 WHERE id IN (%s, %s)", (second, third))
                db.execute("UPDATE perdure.jobs SET state = 'success' WHERE id IN (%s, %s)", (second, third))
                db.execute("UPDATE perdure.jobs SET state = 'cancelled' WHERE id IN (%s)", (first,))  # not a change
                _insert(db, 2)
                db.execute("UPDATE perdure.jobs SET state = 'cancelled' WHERE id = %s", (third,))
                await _until(lambda: len(cancellations) == 2)
                assert second_ended.is_set()
        assert [e.job_id for e in cancellations] == [first, third]
        assert sorted(read) == ["cancelled", "succeeded", "succeeded"]  # both ends, an awaiter being there
        assert len(everything) == 4
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening


async def _until(condition, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_notifications_that_hold_no_event_taken_here__are_not_even_parsed(database_url, monkeypatch) -> None:
    """Reading a notification's JSON costs more than searching its text for the kinds someone
    takes (events.kinds_filter); a drain's starts and ends concern no one, with nobody
    awaiting a job. What someone takes still arrives, a start in the insert as enqueued too."""
    from perdured import events

    parsed: list[str] = []
    monkeypatch.setattr(events, "entries", lambda text: parsed.append(text) or entries(text))
    hub = EventHub(database_url)
    listening = asyncio.create_task(hub.run())
    try:
        await asyncio.wait_for(hub.ready.wait(), 10)
        cancellations: list[JobEvent] = []
        enqueued: list[JobEvent] = []
        hub.subscribe(cancellations.append, {"cancelled"})
        with psycopg.connect(database_url, autocommit=True) as db:
            first, second = _insert(db, 2)
            db.execute("UPDATE perdure.jobs SET state = 'running', attempt = 1 WHERE id = %s", (second,))
            db.execute("UPDATE perdure.jobs SET state = 'success' WHERE id = %s", (second,))
            db.execute("UPDATE perdure.jobs SET state = 'cancelled' WHERE id = %s", (first,))
            await _until(lambda: len(cancellations) == 1)
            assert len(parsed) == 1 and cancellations[0].job_id == first

            hub.subscribe(enqueued.append, {"enqueued"})
            (started,) = _insert(db, 1, state="running")  # started in the insert: enqueued, then started
            await _until(lambda: len(enqueued) == 1)
        assert enqueued[0].job_id == started and len(parsed) == 2
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening


def test_error_texts__arrive_as_written_whatever_their_characters(database_url, db) -> None:
    """Events are JSON written out by hand (0018): every string in them must be quoted as JSON
    quotes it, whatever a user's error says."""
    (job_id,) = _insert(db, 1, state="running")
    error = {"type": 'Bad"Type\\', "message": 'line "one"\nline\ttwo \\ \x01 \u2028 é 😀 </script>'}

    def change(conn: psycopg.Connection) -> None:
        conn.execute("UPDATE perdure.jobs SET state = 'dead', error = %s WHERE id = %s", (json.dumps(error), job_id))

    (event,) = _events(_payloads(database_url, change))
    assert (event.kind, event.job_id, event.error_type, event.error_message) == (
        "dead", job_id, error["type"], error["message"])
