"""The LISTEN side of `perdure_events`: one connection per sidecar, fanned out in process.

Every job state change is a notification (a trigger in the schema). Schedulers use them
to wake up, AwaitJob to return, WatchJobs to stream, and the dispatcher to stop handlers
of jobs cancelled elsewhere. After a lost connection it reconnects and tells everyone to
re-check, since notifications sent meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from perdured.logs import log
from perdured.store import TERMINAL_STATES

CHANNEL = "perdure_events"
# A function's flow control changed (0009_flow_control.sql): {"namespace", "name"}.
FUNCTIONS_CHANNEL = "perdure_functions"
DELETED_CHANNEL = "perdure_deleted"  # succeeded jobs were deleted (0014_deleted_jobs_notice.sql)
# The rows of the last jobs that succeeded on this sidecar are kept this many, this long:
# a caller often asks for the result at once. They are dropped when succeeded jobs are
# deleted anywhere, and while notifications may be missed.
RECENT_SUCCESSES, RECENT_SECONDS = 512, 10.0
# Jobs enqueued one at a time here, the last this many: their callers often await them next.
EXPECTED_AWAITS = 4096


def kinds_filter(kinds: frozenset[str]) -> Callable[[str], bool]:
    """Whether the text of a notification may hold an event of these kinds: one of them as the
    value of a "kind" key (as PostgreSQL writes JSON, with or without spaces around the colon),
    or the flag of an insert that started its job (an enqueued event too). A false alarm is
    harmless (the events are then parsed and filtered one by one); a text that does not match
    holds none. The search costs a fifth of reading the JSON, and most notifications concern
    no one here (a drain's starts and ends)."""
    if not kinds:
        return lambda text: False
    values = "|".join(re.escape(kind) for kind in sorted(kinds))
    of_kind = re.compile(rf'"kind" ?: ?"(?:{values})"')  # the literal start makes the search fast
    if "enqueued" not in kinds:
        return lambda text: of_kind.search(text) is not None
    started_at_insert = re.compile(r'"enqueued" ?: ?true')
    return lambda text: of_kind.search(text) is not None or started_at_insert.search(text) is not None


def entries(text: str) -> list[dict[str, Any]]:
    """The events of one notification, as JSON objects: one, or an array of them (all the
    changes of one statement, 0013_batched_notifications.sql)."""
    data = json.loads(text)
    return data if isinstance(data, list) else [data]


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and a sidecar
# reads an event for every change of every job. No one changes one; replace() copies.
@dataclass(slots=True)
class JobEvent:
    kind: str  # enqueued | started | succeeded | attempt_failed | dead | cancelled | retried | suspended | progress | log
    job_id: uuid.UUID
    namespace: str
    name: str
    attempt: int
    state: str
    at: float  # Unix seconds, by the database clock
    run_in: float  # seconds from `at` until the job may run (for pending jobs)
    error_type: str | None = None
    error_message: str | None = None
    progress: dict[str, Any] | None = None  # for kind "progress"
    log: dict[str, Any] | None = None  # for kind "log": {"level", "message"}
    started_at_insert: bool = False  # a "started" that also stands for "enqueued"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobEvent:
        at = data["at"]
        return cls(data["kind"], uuid.UUID(data["id"]), data["namespace"], data["name"], data["attempt"],
                   data["state"], at, data["run_at"] - at, data.get("error_type"), data.get("error_message"),
                   data.get("progress"), data.get("log"), bool(data.get("enqueued")))


class EventHub:
    def __init__(self, url: str) -> None:
        self._url = url
        # Each with the kinds of event it takes (None: every kind). An event no one takes, and
        # that ends no awaited job, is not even read: most are of no use to a sidecar.
        self._subscribers: list[tuple[Callable[[JobEvent], None], frozenset[str] | None]] = []
        self._taken: frozenset[str] | None = frozenset()  # the kinds someone takes; None: all
        self._may_hold_taken = kinds_filter(frozenset())
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._function_callbacks: list[Callable[[str, str], None]] = []
        self._job_waiters: dict[uuid.UUID, set[Wakeup]] = defaultdict(set)
        self._succeeded: OrderedDict[uuid.UUID, tuple[float, dict[str, Any]]] = OrderedDict()
        self._expected: OrderedDict[uuid.UUID, None] = OrderedDict()
        self.ready = asyncio.Event()

    def subscribe(self, callback: Callable[[JobEvent], None], kinds: Iterable[str] | None = None) -> Callable[[], None]:
        """Call `callback` for every event of these kinds (None: of every kind); returns the
        unsubscribe function."""
        subscriber = (callback, frozenset(kinds) if kinds is not None else None)
        self._subscribers.append(subscriber)
        self._gather_taken_kinds()

        def unsubscribe() -> None:
            self._subscribers.remove(subscriber)
            self._gather_taken_kinds()

        return unsubscribe

    def _gather_taken_kinds(self) -> None:
        taken: set[str] = set()
        for _, kinds in self._subscribers:
            if kinds is None:
                self._taken = None
                return
            taken |= kinds
        self._taken = frozenset(taken)
        self._may_hold_taken = kinds_filter(self._taken)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnect_callbacks.append(callback)

    def on_function_changed(self, callback: Callable[[str, str], None]) -> None:
        """Call `callback(namespace, name)` when a function's flow control changes."""
        self._function_callbacks.append(callback)

    def succeeded(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        """The row of a job that succeeded on this sidecar a moment ago, if it is still kept:
        a success never changes, and a caller often asks for the result just after."""
        if not self.ready.is_set():  # a deletion now would go unheard
            return None
        kept = self._succeeded.get(job_id)
        return kept[1] if kept is not None and time.monotonic() - kept[0] < RECENT_SECONDS else None

    def forget_successes(self) -> None:
        """Succeeded jobs were deleted (or may have been, unheard): keep none of their rows."""
        self._succeeded.clear()

    def job_waiter(self, job_id: uuid.UUID) -> JobWaiter:
        return JobWaiter(self._job_waiters, job_id)

    def expect_await(self, job_id: uuid.UUID) -> None:
        """The job was enqueued alone through this sidecar: its caller will likely ask for its
        answer, perhaps only after it has ended. Its finish then returns the whole row (kept
        among the recent successes) instead of leaving the await to read it back."""
        self._expected[job_id] = None
        if len(self._expected) > EXPECTED_AWAITS:  # ended elsewhere, or long running
            self._expected.popitem(last=False)

    def awaited(self, job_id: uuid.UUID) -> bool:
        """Whether someone awaits the job here now, or likely will (see expect_await)."""
        return job_id in self._job_waiters or job_id in self._expected

    def job_finished(self, row: dict[str, Any]) -> None:
        """A job finished on this sidecar (committed): wake its awaiters with the row itself.
        A row in brief (`whole` false: nobody awaited the job when its outcome was written)
        is not an answer: it wakes those who came since to read the job."""
        whole = row.get("whole", True)
        if row["state"] in TERMINAL_STATES:
            self._expected.pop(row["id"], None)
        if whole and row["state"] == "success":
            self._succeeded[row["id"]] = (time.monotonic(), row)
            if len(self._succeeded) > RECENT_SUCCESSES:
                self._succeeded.popitem(last=False)
        for waiter in self._job_waiters.get(row["id"], ()):
            waiter.row = row if whole else None
            waiter.set()

    async def run(self) -> None:
        delay = 0.1
        first = True
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await conn.execute(f"LISTEN {FUNCTIONS_CHANNEL}")
                    await conn.execute(f"LISTEN {DELETED_CHANNEL}")
                    self.forget_successes()  # kept while deletions could not be heard
                    self.ready.set()
                    delay = 0.1
                    if not first:
                        log.info("events.reconnected")
                        self._everyone_recheck()
                    first = False
                    async for notification in conn.notifies():
                        if notification.channel == FUNCTIONS_CHANNEL:
                            self._function_changed(notification.payload)
                        elif notification.channel == DELETED_CHANNEL:
                            self.forget_successes()
                        else:
                            self._dispatch(notification.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: try again, and say so
                self.ready.clear()  # notifications may be missed until it is set again
                log.warning("events.connection_lost", error=str(exc), retry_in=delay)
                self._everyone_recheck()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _dispatch(self, payload: str) -> None:
        taken, awaited = self._taken, bool(self._job_waiters)
        if taken is not None and not awaited and not self._may_hold_taken(payload):
            return
        try:
            events = [JobEvent.from_dict(item) for item in entries(payload)
                      if taken is None or item["kind"] in taken or (awaited and item["state"] in TERMINAL_STATES)
                      or (item.get("enqueued") and "enqueued" in taken)]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("events.bad_notification", error=str(exc), payload=payload[:200])
            return
        for event in events:
            if event.started_at_insert:  # one entry for two events: enqueued, then started
                self._deliver(replace(event, kind="enqueued", started_at_insert=False))
            self._deliver(event)

    def _function_changed(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            namespace, name = data["namespace"], data["name"]
        except (ValueError, KeyError) as exc:
            log.error("events.bad_notification", error=str(exc), payload=payload[:200])
            return
        for callback in self._function_callbacks:
            callback(namespace, name)

    def _deliver(self, event: JobEvent) -> None:
        for callback, kinds in list(self._subscribers):
            if kinds is not None and event.kind not in kinds:
                continue
            try:
                callback(event)
            except Exception:
                log.exception("events.subscriber_failed", job_id=str(event.job_id))
        if event.terminal:
            for waiter in self._job_waiters.get(event.job_id, ()):
                waiter.set()

    def _everyone_recheck(self) -> None:
        for waiters in self._job_waiters.values():
            for waiter in waiters:
                waiter.set()
        for callback in self._reconnect_callbacks:
            callback()


class Wakeup(asyncio.Event):
    """Set when a job may have finished; `row` holds it when this sidecar finished it."""

    row: dict[str, Any] | None = None


class JobWaiter:
    """Registered before the job is read, so that no terminal event can slip between."""

    def __init__(self, registry: dict[uuid.UUID, set[Wakeup]], job_id: uuid.UUID) -> None:
        self._registry, self._job_id = registry, job_id
        self.wakeup = Wakeup()

    def __enter__(self) -> Wakeup:
        self._registry[self._job_id].add(self.wakeup)
        return self.wakeup

    def __exit__(self, *exc: object) -> None:
        waiters = self._registry[self._job_id]
        waiters.discard(self.wakeup)
        if not waiters:
            del self._registry[self._job_id]
