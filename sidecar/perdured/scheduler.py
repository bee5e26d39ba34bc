"""Claims runnable jobs for the workers connected to this sidecar.

It sleeps until one of: a notification that a job of a function our workers serve became
runnable, a worker slot freed while jobs may be waiting, the timer for the next future
`run_at`, or the slow safety poll. Then it claims, per group of workers that serve the
same functions, exactly as many jobs as they have free slots.

Functions under flow control (concurrency or rate limits, concurrency keys: see
0009_flow_control.sql) are claimed one function at a time through `Store.claim_limited`,
which counts what runs across every sidecar. A job of such a function that ends anywhere
may free room, so its notification wakes the claim too; a rate limit sets a timer.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from perdured.batcher import Batcher
from perdured.dispatch import Dispatcher, Group, WorkerSession
from perdured.events import EventHub, JobEvent
from perdured.logs import log
from perdured.store import Store
from perdured.validation import InvalidArgument, NewJob, SharedJobs

# Events after which a job is pending (now or at run_at).
RUNNABLE = frozenset({"enqueued", "attempt_failed", "retried", "suspended", "resumed"})
# Events after which a job no longer holds a slot under its function's concurrency limits (it ended).
FREES_SLOT = frozenset({"succeeded", "dead", "cancelled"})
ANNOUNCED_LIMIT = 10_000
LOCKED_RETRY = 1.0  # seconds before a claim that found its lock held is tried again
# PostgreSQL's statistics of the jobs table date from its last ANALYZE, usually taken when
# few jobs were runnable. After a large enqueue (a backlog of a new function, say) the planner
# would go on believing so, and claims would read and sort the whole backlog until autovacuum
# looks again, a minute or more later. So after hearing of ANALYZE_AFTER jobs enqueued (by any
# sidecar, or in an application's own transactions), a sidecar runs ANALYZE itself, unless the
# table was analysed after the last of them (by another sidecar that heard the same enqueues,
# or by autovacuum): one at a time, at most one per ANALYZE_INTERVAL seconds; one due sooner
# waits. (Skipped instead, a backlog enqueued within the interval after an analysis was
# claimed by reading all of it, every claim: a drain of 50,000 jobs went 2,000 jobs/s
# instead of 6,000.)
ANALYZE_AFTER, ANALYZE_INTERVAL = 10_000, 10.0

# The most slots one claim offers: a worker with thousands of free slots is filled by several
# claims in a row, so that no statement, result or buffer grows with a worker's concurrency.
CLAIM_LIMIT = 512


class Scheduler:
    def __init__(self, store: Store, dispatcher: Dispatcher, *, sidecar_id: str, lease: float,
                 poll_interval: float) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.sidecar_id = sidecar_id
        self.lease = lease
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        # Groups whose next run_at must be looked up again (the timer keeps only the earliest):
        # each once a claim of theirs comes back short. A round that passes a group by (no free
        # slot) leaves it here for a later one.
        self._recheck: set[Group] = set()
        # Groups for which runnable jobs may be waiting: a job became runnable since their last
        # claim, or that claim filled every free slot. A claim that comes back short clears it.
        self._waiting: set[Group] = set()
        # How often each group was found to have jobs waiting: a claim that comes back short
        # clears _waiting only if no job became runnable since it began (its statement may
        # have missed that job; an enqueue would then start a later one ahead of it).
        self._wakeups: Counter[Group] = Counter()
        # Jobs enqueued through this sidecar whose notification has not arrived yet (ordered).
        self._announced: dict[uuid.UUID, None] = {}
        # (namespace, name) of functions under flow control (rows are never removed), and the
        # groups whose functions have not been looked up yet.
        self._controlled: set[tuple[str, str]] = set()
        self._unchecked: set[Group] = set()
        self._events: EventHub | None = None  # see listen()
        self._unsubscribe: Callable[[], None] | None = None
        self._enqueued_since_analyze = 0
        self._analyzed_at = -ANALYZE_INTERVAL
        self._last_enqueued_at = 0.0  # the database's clock (Unix seconds)
        self._analyzing: asyncio.Task[None] | None = None
        # Group commit: concurrent Enqueue calls share one INSERT and one commit, one insert at
        # a time: under load the calls that arrive during an insert all go in the next, which
        # costs both ends less than inserts side by side (a lone call is inserted at once).
        self._enqueuer: Batcher[NewJob, tuple[dict[str, Any], bool]] = Batcher(self._insert, max_concurrent=1)
        dispatcher.on_capacity = self._on_capacity
        dispatcher.on_worker_joined = self._on_worker_joined

    async def enqueue(self, job: NewJob) -> tuple[dict[str, Any], bool]:
        """Store a job (group commit). If a worker of this sidecar serves it, has a free slot and
        nothing is queued ahead for it, the job starts on that worker in the same statement,
        skipping a claim; otherwise it is claimed as usual, starting with this sidecar."""
        delay = job.delay if job.run_at is None else (job.run_at - datetime.now(UTC)).total_seconds()
        worker = self._free_worker(job) if delay <= 0 else None
        if worker is not None:
            worker.reserved += 1
            job = replace(job, worker_id=worker.id)
        try:
            row, deduplicated = await self._enqueuer.submit(job)
        finally:
            if worker is not None:
                worker.reserved -= 1
        if job.worker_id is not None and row["state"] == "running" and row.get("worker_id") == job.worker_id \
                and not deduplicated:  # started by this very insert (not an earlier try of it)
            self.dispatcher.assign(row)
        elif not deduplicated and (group := self.dispatcher.serves(job.namespace, job.name)) is not None:
            if delay > 0:
                self._wake_in(delay)
            else:
                # Claim now, not after the notification's round trip through the database.
                self._announced[row["id"]] = None
                if len(self._announced) > ANNOUNCED_LIMIT:  # notifications lost in a reconnect
                    del self._announced[next(iter(self._announced))]
                self._runnable(group)
        return row, deduplicated

    async def enqueue_batch(self, jobs: list[NewJob] | SharedJobs, *, brief: bool = False) -> list[tuple[dict[str, Any], bool]]:
        """Store many jobs in one statement and one commit (no start in the insert: a claim
        hands them out, as many at once as the workers have free slots). Brief: see Store.enqueue."""
        results = await self.store.enqueue_batch(jobs, sidecar_id=self.sidecar_id, lease=self.lease, brief=brief)
        now = datetime.now(UTC)
        # The new jobs of a batch mostly share their function and run time: each is acted on once.
        for namespace, name, run_at in {(row["namespace"], row["name"], row["run_at"])
                                        for row, deduplicated in results if not deduplicated}:
            if (group := self.dispatcher.serves(namespace, name)) is None:
                continue
            wait = (run_at - now).total_seconds()
            if wait > 0:
                self._wake_in(wait)
            else:
                self._runnable(group)
        return results

    def _free_worker(self, job: NewJob) -> WorkerSession | None:
        if not self.dispatcher.accepting:
            return None
        if job.concurrency_key is not None or (job.namespace, job.name) in self._controlled:
            return None  # flow control decides when it starts
        for session in self.dispatcher.sessions.values():
            if session.namespace == job.namespace and job.name in session.names and session.free_slots > 0:
                # Never ahead of jobs that may be waiting already.
                return None if session.group in self._waiting else session
        return None

    async def _insert(self, jobs: list[NewJob]) -> list[tuple[dict[str, Any], bool] | InvalidArgument]:
        return await self.store.enqueue(jobs, sidecar_id=self.sidecar_id, lease=self.lease)

    def _heard_enqueued(self, at: float) -> None:
        """A job was enqueued somewhere at `at` (the database's clock): after many, refresh the
        statistics (see ANALYZE_AFTER)."""
        self._enqueued_since_analyze += 1
        self._last_enqueued_at = max(self._last_enqueued_at, at)
        if self._enqueued_since_analyze < ANALYZE_AFTER or (self._analyzing is not None and not self._analyzing.done()):
            return
        self._analyzing = asyncio.create_task(self._analyze())

    async def _analyze(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._analyzed_at + ANALYZE_INTERVAL - loop.time()))
        # Enqueues heard from now on count toward the next analysis; this one covers those
        # heard until it starts.
        self._enqueued_since_analyze, self._analyzed_at = 0, loop.time()
        try:
            await self.store.analyze_jobs(unless_since=self._last_enqueued_at)
        except psycopg.Error as exc:  # a missed refresh only leaves it to autovacuum
            log.warning("statistics.analyze_failed", error=str(exc))

    def listen(self, events: EventHub) -> None:
        """Take from `events` what on_event acts on: the kinds after which a job is runnable
        ("enqueued" among them), and once a function is under flow control, the ends that free
        its slots. (Until then, an end is not even read: in a drain, one per job.)"""
        self._events = events
        self._subscribe()

    def _subscribe(self) -> None:
        if self._events is None:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._unsubscribe = self._events.subscribe(self.on_event, RUNNABLE | FREES_SLOT if self._controlled else RUNNABLE)

    def _control(self, namespace: str, name: str) -> None:
        """The function is under flow control (for good: rows are never removed)."""
        first = not self._controlled
        self._controlled.add((namespace, name))
        if first:
            self._subscribe()  # its ends free slots now

    def on_event(self, event: JobEvent) -> None:
        if event.kind == "enqueued":  # of any function: they share the table
            self._heard_enqueued(event.at)
        if (group := self.dispatcher.serves(event.namespace, event.name)) is None:
            return
        if event.kind in FREES_SLOT and (event.namespace, event.name) in self._controlled:
            self._runnable(group)  # room under its limits, maybe
        if event.kind not in RUNNABLE:
            return
        if event.kind == "enqueued" and (event.state != "pending" or self._announced.pop(event.job_id, False) is None):
            return  # started at once, or already acted on when it was enqueued here
        if event.run_in <= 0.001:
            self._runnable(group)
        else:
            self._wake_in(event.run_in)

    def _runnable(self, group: Group) -> None:
        self._waiting.add(group)
        self._wakeups[group] += 1
        self._wake.set()

    def on_function_changed(self, namespace: str, name: str) -> None:
        """A function came under flow control, or its limits changed."""
        self._control(namespace, name)
        if (group := self.dispatcher.serves(namespace, name)) is not None:
            self._runnable(group)

    def on_reconnect(self) -> None:
        """Notifications may have been missed: claim and look at the timers again."""
        self._unchecked.update(session.group for session in self.dispatcher.sessions.values())
        self._look_again()

    def _look_again(self) -> None:
        """Assume nothing: every group may have jobs waiting, now or at some later run_at."""
        groups = {session.group for session in self.dispatcher.sessions.values()}
        self._waiting.update(groups)
        self._wakeups.update(groups)
        self._recheck.update(groups)
        self._wake.set()

    def _on_capacity(self, group: Group) -> None:
        if group in self._waiting:
            self._wake.set()

    def _on_worker_joined(self, group: Group) -> None:
        # Jobs may have piled up before anyone served them, some with a future run_at.
        self._unchecked.add(group)
        self._look_again()

    def _wake_in(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + seconds
        if when < self._timer_at:
            if self._timer:
                self._timer.cancel()
            self._timer_at = when
            self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self._look_again()  # later run_at values were not kept: look them up again

    def _on_poll(self) -> None:
        self._look_again()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            poll = loop.call_later(self.poll_interval, self._on_poll)  # the safety poll
            await self._wake.wait()
            poll.cancel()
            self._wake.clear()
            try:
                await self.claim_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("scheduler.claim_failed", error=str(exc))
                await asyncio.sleep(min(self.poll_interval, 1.0))
                self._wake.set()

    async def claim_round(self) -> int:
        """Claim for every group with free slots until none is left or nothing more is runnable."""
        claimed = 0
        await self._check_controlled()
        for group in list(self.dispatcher.groups_with_free_slots()):
            namespace, names = group
            limited = sorted(name for name in names if (namespace, name) in self._controlled)
            plain = sorted(names.difference(limited))
            full = False  # a claim took all the slots it had: more jobs may be waiting
            wakeups = self._wakeups[group]
            for names_claimed, limited_name in ([(plain, None)] if plain else []) + [([n], n) for n in limited]:
                try:
                    rows, slots = await self._claim(group, names_claimed, limited_name)
                except psycopg.errors.LockNotAvailable:
                    # Another transaction holds this function's claim lock: claim the others now,
                    # this one again shortly.
                    log.warning("scheduler.claim_locked", namespace=namespace, functions=names_claimed)
                    self._wake_in(LOCKED_RETRY)
                    full = True
                    continue
                claimed += rows
                full |= rows > 0 and rows == slots
            if full:
                self._waiting.add(group)
                if group in self.dispatcher.groups_with_free_slots():
                    self._wake.set()  # slots beyond the claim's limit: claim again at once
            elif self._wakeups[group] == wakeups:
                self._waiting.discard(group)
                if group in self._recheck:
                    self._recheck.discard(group)
                    wait = await self.store.next_run_in(namespace, sorted(names))
                    if wait is not None:
                        self._wake_in(max(wait, 0.001))
        return claimed

    async def _claim(self, group: Group, names: list[str], limited: str | None) -> tuple[int, int]:
        """One claim for a group's free slots, which stay reserved while it runs (so that an
        enqueue cannot promise them to another job): of `names` without flow control, or of
        the one function `limited` within its limits. The jobs go to their workers. Returns
        (jobs claimed, slots offered)."""
        # Looked up again after the previous claim's await: slots come and go meanwhile.
        sessions = self.dispatcher.groups_with_free_slots().get(group, [])
        if not sessions:
            return 0, 0
        # One entry per free slot, taking turns between workers, up to CLAIM_LIMIT.
        slots = list(itertools.islice(_taking_turns({s.id: s.free_slots for s in sessions}), CLAIM_LIMIT))
        offered = Counter(slots)
        free = {session: offered[session.id] for session in sessions if offered[session.id]}
        for session, count in free.items():
            session.reserved += count
        try:
            if limited is None:
                rows = await self.store.claim(group[0], names, slots, self.lease, self.sidecar_id)
            else:
                rows, rate_wait = await self.store.claim_limited(group[0], limited, slots, self.lease,
                                                                 self.sidecar_id)
                if rate_wait is not None:  # a rate limit held jobs back until then
                    self._wake_in(max(rate_wait, 0.001))
            # Jobs running again take the steps their earlier attempts completed along.
            again = [row["id"] for row in rows if row["attempt"] > 1]
            steps = await self.store.succeeded_steps(again) if again else {}
        finally:
            for session, count in free.items():
                session.reserved -= count
        for row in rows:
            self.dispatcher.assign(row, steps.get(row["id"], ()))
        return len(rows), len(slots)

    async def _check_controlled(self) -> None:
        """Learn which functions of newly served groups are under flow control."""
        while self._unchecked:
            namespace, names = self._unchecked.pop()
            for name in await self.store.controlled_functions(namespace, sorted(names)):
                self._control(namespace, name)


def _taking_turns(free: dict[str, int]) -> Iterator[str]:
    """Each worker's id once per free slot it has, taking turns."""
    for index in range(max(free.values(), default=0)):
        yield from (worker for worker, count in free.items() if index < count)
