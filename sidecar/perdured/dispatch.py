"""Worker streams: who is connected, what each holds, and how attempts end.

Each SDK process keeps one `Work` stream. The dispatcher hands it claimed jobs, enforces
the per-attempt timeout, relays cancellations, renews the leases of everything in flight
in one statement, and records outcomes through group commit, acknowledging each only
after it is committed. When a stream drops, the jobs it held go back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import socket
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg

from perdure import _stream
from perdure.v1 import types_pb2, workers_pb2
from perdured import convert, validation
from perdured.access import PermissionDenied
from perdured.backoff import RetryPolicy, retry_delay
from perdured.batcher import Batcher
from perdured.events import JobEvent
from perdured.logs import log
from perdured.rpc import abort
from perdured.store import TERMINAL_STATES, Outcome, StepRecord, Store

Group = tuple[str, frozenset[str]]  # (namespace, function names): workers that can share a claim
MAX_NOTE = 8_000  # characters kept of a progress message or a log record
CHILD_PREFIX = "job:"  # a suspension awaiting a child job waits for "job:<child id>"
FOREVER = time.time() + 100 * 365 * 24 * 3600.0  # "no timeout", as a time far ahead
# Outcomes are recorded in flushes of at most FINISH_BATCH, two at a time: a whole window of
# outcomes in one statement would make the next claim wait for all of it.
FINISH_BATCH = 128
_BATCHES = {"assignment": "assignments", "ack": "acks"}  # what goes to a worker in batches


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()
    return event


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "traceback": "", "non_retryable": False}


@dataclass(eq=False)
class Assignment:
    """A job handed to a worker, from the claim until the worker answers."""

    job_id: uuid.UUID
    attempt: int
    name: str
    policy: RetryPolicy
    round_attempt: int  # attempt number counted since the last RetryJob, for the backoff
    timeout: float
    session: WorkerSession
    namespace: str = ""
    assigned_at: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None
    # The sidecar ended the attempt itself (timeout, cancel, lost lease, shutdown); only the
    # worker's answer is awaited now, to free the slot.
    ended: bool = False
    # The worker's outcome is being committed.
    finishing: bool = False
    # When the sidecar ended the attempt itself: the recording, and the job's state after it.
    end_task: asyncio.Task[None] | None = None
    end_state: str | None = None

    @property
    def key(self) -> tuple[uuid.UUID, int]:
        return self.job_id, self.attempt


@dataclass(eq=False)
class WorkerSession:
    id: str
    namespace: str
    names: frozenset[str]
    concurrency: int
    outbox: asyncio.Queue[workers_pb2.SidecarMessage | None] = field(default_factory=asyncio.Queue)
    assignments: dict[tuple[uuid.UUID, int], Assignment] = field(default_factory=dict)
    batches: bool = False  # the worker reads batches of assignments and acknowledgements
    draining: bool = False  # the worker asked for no more assignments
    reserved: int = 0  # slots promised to jobs being inserted straight onto this worker
    # Assignments the worker has answered, their outcomes being committed: their slots are
    # free already ("at most `concurrency` unanswered", workers.proto), so that the next
    # claim need not wait for the commit.
    answered: int = 0
    # Set while the outbox has room; the worker's messages are read only then (see _read).
    room: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()))

    @property
    def max_outbox(self) -> int:
        # A worker that reads its stream never has more waiting than an assignment and an
        # acknowledgement per slot, and a few cancellations and step acknowledgements.
        return 2 * self.concurrency + 1000

    @property
    def group(self) -> Group:
        return self.namespace, self.names

    @property
    def free_slots(self) -> int:
        return 0 if self.draining else self.concurrency - len(self.assignments) + self.answered - self.reserved

    def send(self, message: workers_pb2.SidecarMessage) -> None:
        self.outbox.put_nowait(message)
        if self.outbox.qsize() >= self.max_outbox:
            self.room.clear()


class Dispatcher:
    def __init__(self, store: Store, *, sidecar_id: str, lease: float, max_payload_bytes: int,
                 max_streams: int = 1000, max_worker_concurrency: int = validation.MAX_CONCURRENCY) -> None:
        self.store = store
        self.max_streams = max_streams
        self.max_worker_concurrency = max_worker_concurrency
        self.sidecar_id = sidecar_id
        self.lease = lease
        self.max_payload_bytes = max_payload_bytes
        self.sessions: dict[str, WorkerSession] = {}
        self._by_job: dict[uuid.UUID, Assignment] = {}
        self._finisher: Batcher[Outcome, str | None] = Batcher(self._finish_batch, max_batch=FINISH_BATCH)
        self._steps: Batcher[StepRecord, bool] = Batcher(self._record_steps)
        # One flush at a time: progress and log records land in the order they were sent.
        self._progress: Batcher[tuple[uuid.UUID, int, dict[str, Any]], None] = Batcher(
            self._write_progress, max_concurrent=1)
        self._logs: Batcher[tuple[uuid.UUID, int, str, str], None] = Batcher(self._write_logs, max_concurrent=1)
        self._serial = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()
        self.accepting = True
        # Set by the scheduler: a worker has new free slots; a worker registered.
        self.on_capacity: Callable[[Group], None] = lambda group: None
        self.on_worker_joined: Callable[[Group], None] = lambda group: None
        # Set by the sidecar: a job finished here (committed); local awaiters need not wait for
        # the notification's round trip through the database.
        self.on_finished: Callable[[dict[str, Any]], None] = lambda row: None
        # Whether someone awaits a job here, or likely will: its finish returns the whole row.
        self.awaited: Callable[[uuid.UUID], bool] = lambda job_id: True

    # -- the Work stream ------------------------------------------------------------------

    async def work(self, requests: AsyncIterator[workers_pb2.WorkerMessage],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[workers_pb2.SidecarMessage]:
        session = await self._register(requests, context)
        reader = asyncio.create_task(self._read(session, requests))
        try:
            yield workers_pb2.SidecarMessage(registered=workers_pb2.Registered(
                worker_id=session.id, sidecar_id=self.sidecar_id, batches=True))
            self.on_worker_joined(session.group)
            batch_of = _BATCHES if session.batches else {}
            while (message := await session.outbox.get()) is not None:
                messages, closing = _stream.split_end(_stream.ready(session.outbox, message))
                session.room.set()
                for ready in _stream.pack(messages, batch_of):
                    yield ready
                if closing:
                    break
        finally:
            reader.cancel()
            self._drop(session)

    async def _register(self, requests: AsyncIterator[workers_pb2.WorkerMessage],
                        context: grpc.aio.ServicerContext) -> WorkerSession:
        first = await anext(aiter(requests), None)
        if first is None or not first.HasField("register"):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "register: the first message must be a Register")
        if not self.accepting:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the sidecar is shutting down")
        if len(self.sessions) >= self.max_streams:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"this sidecar serves at most {self.max_streams} worker streams (--max-streams)")
        try:
            registration = validation.registration(first.register, self.max_worker_concurrency)
        except validation.InvalidArgument as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PermissionDenied as exc:
            log.warning("auth.denied", rpc="Work", error=str(exc))
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        namespace, names = registration.namespace, registration.names
        try:
            # Before the worker gets anything: its functions' limits hold from its first job.
            await self.store.register_functions(namespace, sorted(names), registration.limits)
        except psycopg.Error as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot record the functions' limits: {exc}")
        label = first.register.worker_name or f"{socket.gethostname()}"
        worker_id = f"{label}@{self.sidecar_id}#{next(self._serial)}"
        session = WorkerSession(worker_id, namespace, names, registration.concurrency,
                                batches=first.register.batches)
        try:
            await self.store.register_worker(worker_id, self.sidecar_id, namespace, label, first.register.sdk,
                                             sorted(names), registration.concurrency, self.lease)
        except psycopg.Error as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot record the worker: {exc}")
        self.sessions[worker_id] = session
        log.info("worker.registered", worker_id=worker_id, namespace=namespace, functions=sorted(names),
                 concurrency=registration.concurrency, limits=sorted(registration.limits), sdk=first.register.sdk)
        return session

    async def _read(self, session: WorkerSession, requests: AsyncIterator[workers_pb2.WorkerMessage]) -> None:
        try:
            async for message in requests:
                if not session.room.is_set():
                    # Answers wait in the outbox because the worker does not read them: read
                    # nothing more until it does (its writes then wait, not our memory).
                    log.warning("worker.not_reading", worker_id=session.id, waiting=session.outbox.qsize())
                    await session.room.wait()
                if message.HasField("outcome"):
                    self._spawn(self._on_outcomes(session, [message.outcome]))
                elif message.HasField("outcomes"):
                    self._spawn(self._on_outcomes(session, list(message.outcomes.items)))
                elif message.HasField("record_step"):
                    self._spawn(self._on_step(session, message.record_step))
                elif message.HasField("heartbeat"):
                    self._spawn(self._on_heartbeat(session, message.heartbeat))
                elif message.HasField("progress"):
                    self._on_progress(session, message.progress)
                elif message.HasField("log"):
                    self._on_log(session, message.log)
                elif message.HasField("drain"):
                    session.draining = True
                    log.info("worker.draining", worker_id=session.id, holding=len(session.assignments))
                else:
                    log.warning("worker.unexpected_message", worker_id=session.id,
                                kind=message.WhichOneof("kind"))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            session.outbox.put_nowait(None)  # the stream ended: stop writing

    def _drop(self, session: WorkerSession) -> None:
        """The stream is gone (the app died or hung up): its jobs go back at once.

        The session leaves at once, so that nothing more is assigned to it; recording runs
        apart from the RPC's task, which gRPC may cancel again at any moment."""
        self.sessions.pop(session.id, None)
        self._spawn(self._forget_worker(session.id))
        lost = [a for a in session.assignments.values() if not a.ended and not a.finishing]
        session.assignments.clear()
        session.answered = 0
        log.info("worker.disconnected", worker_id=session.id, jobs_returned=len(lost))
        for assignment in lost:
            self._forget(assignment)
            assignment.ended = True
            message = f"the worker {session.id} went away while running attempt {assignment.attempt}"
            self._spawn(self._record_ended(assignment, "worker_lost", _error("perdure.WorkerLost", message),
                                           retry_delay=0.0))

    async def _forget_worker(self, worker_id: str) -> None:
        try:
            await self.store.remove_worker(worker_id)
        except psycopg.Error as exc:  # its row expires anyway
            log.warning("worker.not_forgotten", worker_id=worker_id, error=str(exc))

    async def touch_workers(self) -> None:
        """Tell the cluster our workers are still here, with what they hold."""
        sessions = list(self.sessions.values())
        if sessions:
            await self.store.touch_workers([(s.id, len(s.assignments), s.draining) for s in sessions], self.lease)

    # -- handing out jobs -----------------------------------------------------------------

    def groups_with_free_slots(self) -> dict[Group, list[WorkerSession]]:
        groups: dict[Group, list[WorkerSession]] = {}
        if self.accepting:
            for session in self.sessions.values():
                if session.free_slots > 0:
                    groups.setdefault(session.group, []).append(session)
        return groups

    def serves(self, namespace: str, name: str) -> Group | None:
        for session in self.sessions.values():
            if session.namespace == namespace and name in session.names:
                return session.group
        return None

    def runs(self, job_id: uuid.UUID, namespace: str) -> bool:
        """Whether the job runs on one of our workers, its outcome perhaps being recorded: if
        so, its end wakes the awaiters here (on_finished), and once that is committed, this
        says no (see _finish_batch)."""
        assignment = self._by_job.get(job_id)
        return assignment is not None and assignment.namespace == namespace and not assignment.ended

    def assign(self, row: dict[str, Any], steps: Sequence[dict[str, Any]] = ()) -> None:
        """Send a claimed job down its worker's stream and start its timeout clock."""
        session = self.sessions.get(row["worker_id"])
        policy = RetryPolicy(
            max_attempts=row["max_attempts"], backoff=row["backoff"],
            initial_delay=row["initial_delay"].total_seconds(), max_delay=row["max_delay"].total_seconds(),
            jitter=row["jitter"],
        )
        timeout = row["timeout"].total_seconds()
        assignment = Assignment(
            job_id=row["id"], attempt=row["attempt"], name=row["name"], namespace=row["namespace"], policy=policy,
            round_attempt=row["attempt"] - row["uncounted_attempts"], timeout=timeout, session=session,  # type: ignore[arg-type]
        )
        if session is None:
            # The worker left between the claim and now: the job goes straight back, and since
            # it never ran, that does not use up its attempts.
            assignment.ended = True
            self._spawn(self._record_ended(assignment, "released",
                                           _error("perdure.Released", "the worker went away before the job reached it")))
            return
        session.assignments[assignment.key] = assignment
        self._by_job[assignment.job_id] = assignment
        loop = asyncio.get_running_loop()
        assignment.timer = loop.call_later(timeout, self._on_timeout, assignment)
        # Filled in place: built apart and passed in, each part would be copied again.
        message = workers_pb2.SidecarMessage()
        job = message.assignment
        job_id = str(row["id"])
        job.job_id, job.attempt, job.max_attempts = job_id, row["attempt"], row["max_attempts"]
        job.name, job.namespace = row["name"], row["namespace"]
        job.payload.data, job.payload.encoding = row["payload"], row["payload_encoding"]
        convert.fill_timestamp(job.deadline, time.time() + timeout)
        if row["parent_id"]:
            job.parent_id = str(row["parent_id"])
        if steps:
            job.steps.extend(convert.step(step) for step in steps)
        if row.get("trace_context"):
            job.trace_context.update(row["trace_context"])
        session.send(message)
        log.debug("job.assigned", job_id=job_id, attempt=row["attempt"], worker_id=session.id)

    # -- how attempts end -----------------------------------------------------------------

    async def _on_outcomes(self, session: WorkerSession, outcomes: list[workers_pb2.Outcome]) -> None:
        """Record the outcomes that came in one message, a flush's worth at a time (each
        commit frees its slots for the next claim at once), and acknowledge each once it is
        committed."""
        taken = []
        for outcome in outcomes:
            assignment = await self._take(session, outcome)
            if assignment is not None:
                taken.append((outcome, assignment, self._outcome_record(assignment, outcome)))
        if taken and session.id in self.sessions:
            self.on_capacity(session.group)  # answered: their slots are free (see WorkerSession)
        await asyncio.gather(*(self._record_outcomes(session, taken[start:start + FINISH_BATCH])
                               for start in range(0, len(taken), FINISH_BATCH)))

    async def _record_outcomes(self, session: WorkerSession,
                               taken: list[tuple[workers_pb2.Outcome, Assignment, Outcome]]) -> None:
        states = await self._finisher.submit_many([record for _, _, record in taken])
        suspended = []
        for (outcome, assignment, record), state in zip(taken, states, strict=True):
            if isinstance(state, Exception):
                # Not committed, so not acknowledged. The slot is freed and the lease no longer
                # renewed: when it expires, any sidecar's reaper puts the job back.
                log.error("job.outcome_not_recorded", job_id=outcome.job_id, attempt=outcome.attempt, error=str(state))
                assignment.ended = True
                self._release_slot(assignment)
            elif state == "suspended" and record.waiting_for:
                suspended.append(self._suspended(session, outcome, assignment, record))
            else:
                self._acknowledge(session, outcome, assignment, record, state)
        if suspended:  # the rest need no task each
            await asyncio.gather(*suspended)

    async def _take(self, session: WorkerSession, outcome: workers_pb2.Outcome) -> Assignment | None:
        """The attempt this outcome ends, now finishing; None when there is nothing to record
        (it is answered here)."""
        try:
            job_id = uuid.UUID(outcome.job_id)
        except ValueError:
            log.warning("worker.bad_outcome", worker_id=session.id, job_id=outcome.job_id)
            return None
        assignment = session.assignments.get((job_id, outcome.attempt))
        if assignment is None or assignment.ended or assignment.finishing:
            # Too late (the sidecar already ended this attempt) or unknown: nothing to record.
            end_state = None
            if assignment is not None and not assignment.finishing:
                if assignment.end_task is not None:  # let the ack carry what became of the job
                    await asyncio.wait([assignment.end_task])
                self._release_slot(assignment)
                end_state = assignment.end_state
            # The state tells the worker what became of the job (e.g. dead after a timeout).
            session.send(_ack(outcome, recorded=False, state=end_state))
            return None
        assignment.finishing = True
        session.answered += 1
        if assignment.timer:
            assignment.timer.cancel()
        return assignment

    async def _suspended(self, session: WorkerSession, outcome: workers_pb2.Outcome, assignment: Assignment,
                         record: Outcome) -> None:
        """A suspension to wait for an event or a child is committed. The event (or the child's
        end) may have come while the job was suspending: if so, it runs again now."""
        assert record.waiting_for is not None
        try:
            if record.waiting_for.startswith(CHILD_PREFIX):
                child_id = uuid.UUID(record.waiting_for[len(CHILD_PREFIX):])
                await self.store.wake_if_child_done(session.namespace, record.job_id, child_id)
            else:
                await self.store.wake_if_emitted(session.namespace, record.waiting_for, record.job_id)
        except Exception as exc:  # it still wakes on the next emit, or at its timeout
            log.error("event.recheck_failed", job_id=outcome.job_id, event_name=record.waiting_for, error=str(exc))
        self._acknowledge(session, outcome, assignment, record, "suspended")

    def _acknowledge(self, session: WorkerSession, outcome: workers_pb2.Outcome, assignment: Assignment,
                     record: Outcome, state: str | None) -> None:
        """An outcome is committed (or did not count: state None): free its slot and say so."""
        self._release_slot(assignment)
        session.send(_ack(outcome, recorded=state is not None, state=state))
        if self.store.metrics.served:
            self.store.metrics.attempt_duration.labels(assignment.namespace, assignment.name,
                                                       record.attempt_outcome).observe(time.monotonic() - assignment.assigned_at)
        event = "job.succeeded" if record.kind == "success" else f"job.attempt_{record.attempt_outcome}"
        log.debug(event, job_id=outcome.job_id, attempt=outcome.attempt, state=state)

    def _held(self, session: WorkerSession, kind: str, job_id: str, attempt: int) -> Assignment | None:
        """The attempt a message is about, if this worker holds it. Anything else (someone
        else's job, a made-up one) is ignored with a warning: it must change nothing."""
        with contextlib.suppress(ValueError):
            if (assignment := session.assignments.get((uuid.UUID(job_id), attempt))) is not None:
                return assignment
        log.warning("worker.unheld_job", worker_id=session.id, message=kind, job_id=job_id[:64], attempt=attempt)
        return None

    async def _on_step(self, session: WorkerSession, step: workers_pb2.RecordStep) -> None:
        """Commit a step's outcome, then acknowledge it: the handler waits for that."""
        try:
            if (held := self._held(session, "record_step", step.job_id, step.attempt)) is None:
                raise ValueError("not an attempt this worker holds")
            if "\x00" in step.name:  # PostgreSQL cannot store it; refused here, not in the batch
                raise validation.InvalidArgument("record_step.name", "must not contain NUL characters")
            job_id = held.job_id
            if step.HasField("result"):
                data, encoding = validation.payload(step.result, self.max_payload_bytes, "record_step.result")
                record = StepRecord(job_id, step.attempt, step.name, "succeeded", result=data, result_encoding=encoding)
            else:
                record = StepRecord(job_id, step.attempt, step.name, "failed", error=convert.error_dict(step.error))
            recorded = await self._steps.submit(record)
        except (ValueError, validation.InvalidArgument) as exc:
            log.warning("step.refused", job_id=step.job_id[:64], step=step.name[:64], error=str(exc)[:200])
            recorded = False
        except psycopg.Error as exc:
            # Not committed: the handler must not go on as if it were, nor wait for ever.
            log.error("step.not_recorded", job_id=step.job_id, step=step.name, error=str(exc))
            recorded = False
        session.send(workers_pb2.SidecarMessage(step_ack=workers_pb2.StepAck(
            job_id=step.job_id, attempt=step.attempt, name=step.name, recorded=recorded)))

    async def _on_heartbeat(self, session: WorkerSession, beat: workers_pb2.Heartbeat) -> None:
        """Extend one attempt's lease at once (the periodic renewal covers the rest)."""
        assignment = self._held(session, "heartbeat", beat.job_id, beat.attempt)
        if assignment is not None and not assignment.ended:
            await self.store.renew_leases([assignment.job_id], self.lease, self.sidecar_id)

    def _on_progress(self, session: WorkerSession, report: workers_pb2.ReportProgress) -> None:
        # Progress and logs are for people: written in the background, in batches, unacknowledged.
        if self._held(session, "progress", report.job_id, report.attempt) is None:
            return
        current, total = report.progress.current, report.progress.total
        if not (math.isfinite(current) and math.isfinite(total)):  # JSON has no NaN nor infinity
            log.warning("worker.bad_progress", worker_id=session.id, job_id=report.job_id, current=current, total=total)
            return
        value = {"current": current, "total": total, "message": convert.storable(report.progress.message[:MAX_NOTE])}
        self._spawn(self._progress.submit((uuid.UUID(report.job_id), report.attempt, value)))

    def _on_log(self, session: WorkerSession, report: workers_pb2.ReportLog) -> None:
        if self._held(session, "log", report.job_id, report.record.attempt) is None:
            return
        level = convert.LOG_LEVELS.get(report.record.level, "info")
        message = convert.storable(report.record.message[:MAX_NOTE])
        self._spawn(self._logs.submit((uuid.UUID(report.job_id), report.record.attempt, level, message)))

    async def _record_steps(self, records: list[StepRecord]) -> list[bool]:
        # One statement may not write a row twice: only the first report of a step counts.
        first = list({(r.job_id, r.name): r for r in reversed(records)}.values())
        counted = {id(r) for r in first}
        written = await self.store.record_steps(first)
        return [id(r) in counted and (r.job_id, r.name) in written for r in records]

    async def _write_progress(self, reports: list[tuple[uuid.UUID, int, dict[str, Any]]]) -> list[None]:
        await self.store.record_progress(reports)
        return [None] * len(reports)

    async def _write_logs(self, records: list[tuple[uuid.UUID, int, str, str]]) -> list[None]:
        await self.store.record_logs(records)
        return [None] * len(records)

    def _outcome_record(self, assignment: Assignment, outcome: workers_pb2.Outcome) -> Outcome:
        kind = outcome.WhichOneof("result")
        if kind == "success":
            try:
                data, encoding = validation.payload(outcome.success, self.max_payload_bytes, "result")
            except validation.InvalidArgument as exc:
                error = _error("perdure.InvalidResult", str(exc)) | {"non_retryable": True}
                return self._failure(assignment, "failed", error)
            return Outcome(assignment.job_id, assignment.attempt, "success", "succeeded",
                           result=data, result_encoding=encoding)
        if kind == "failure":
            return self._failure(assignment, "failed", convert.error_dict(outcome.failure))
        if kind == "suspend":
            if outcome.suspend.event:
                try:  # a name no event can have would never end the wait
                    validation.function_name(outcome.suspend.event, "suspend.event")
                except validation.InvalidArgument as exc:
                    return self._failure(assignment, "failed",
                                         _error("perdure.InvalidOutcome", str(exc)) | {"non_retryable": True})
            # Until the time given; waiting for an event without one, until the event comes. The
            # time is read as it is (ToNanoseconds refuses one out of range), and bounded.
            given = outcome.suspend.until
            until = given.seconds + given.nanos / 1e9 if outcome.suspend.HasField("until") else FOREVER
            wait = min(max(until - time.time(), 0.0), FOREVER - time.time())
            return Outcome(assignment.job_id, assignment.attempt, "suspended", "suspended", retry_delay=round(wait, 3),
                           waiting_for=outcome.suspend.event or None)
        # A worker that stops a handler on its own is shutting down and hands the job back:
        # it runs again at once, and the attempt does not count.
        return Outcome(assignment.job_id, assignment.attempt, "released", "released",
                       error=_error("perdure.Released", "the worker shut down during the attempt and handed it back"))

    def _failure(self, assignment: Assignment, attempt_outcome: str, error: dict[str, Any],
                 retry_after: float | None = None) -> Outcome:
        delay = retry_delay(assignment.policy, max(assignment.round_attempt, 1)) if retry_after is None else retry_after
        return Outcome(assignment.job_id, assignment.attempt, "failure", attempt_outcome, error=error,
                       non_retryable=bool(error.get("non_retryable")), retry_delay=delay)

    def _on_timeout(self, assignment: Assignment) -> None:
        if assignment.ended or assignment.finishing:
            return
        assignment.ended = True
        self._forget(assignment)
        assignment.session.send(_cancel(assignment, workers_pb2.CANCEL_REASON_TIMEOUT))
        message = f"attempt {assignment.attempt} exceeded its timeout of {assignment.timeout:g} s"
        log.info("job.timed_out", job_id=str(assignment.job_id), attempt=assignment.attempt)
        assignment.end_task = self._spawn(self._record_ended(assignment, "timed_out", _error("perdure.Timeout", message)))

    EVENT_KINDS = frozenset({"cancelled"})  # the events on_event acts on

    def on_event(self, event: JobEvent) -> None:
        """A job we run was cancelled (perhaps through another sidecar): stop its handler."""
        if event.kind != "cancelled":
            return
        assignment = self._by_job.get(event.job_id)
        if assignment is None or assignment.ended or assignment.finishing:
            return
        assignment.ended = True
        self._forget(assignment)
        assignment.session.send(_cancel(assignment, workers_pb2.CANCEL_REASON_CANCELLED))
        log.info("job.cancel_relayed", job_id=str(event.job_id), worker_id=assignment.session.id)

    async def _record_ended(self, assignment: Assignment, attempt_outcome: str, error: dict[str, Any],
                            retry_delay: float | None = None) -> None:
        """Record an attempt the sidecar ended itself (the worker may answer later, to no effect)."""
        if attempt_outcome == "released":
            record = Outcome(assignment.job_id, assignment.attempt, "released", "released", error=error)
        else:
            record = self._failure(assignment, attempt_outcome, error, retry_after=retry_delay)
        try:
            state = await self._finisher.submit(record)
        except Exception as exc:
            # The lease is still ours for a while; if we cannot write, it expires and the reaper
            # of any sidecar puts the job back.
            log.error("job.end_not_recorded", job_id=str(assignment.job_id), attempt=assignment.attempt,
                      outcome=attempt_outcome, error=str(exc))
            return
        assignment.end_state = state
        log.info(f"job.{attempt_outcome}", job_id=str(assignment.job_id), attempt=assignment.attempt, state=state)

    async def _finish_batch(self, records: list[Outcome]) -> list[str | None | Exception]:
        try:
            rows = await self.store.finish(records, self.awaited)
        except psycopg.errors.LockNotAvailable:
            if len(records) == 1:
                raise
            # Another client holds one of these jobs: it must not hold up the others.
            results: list[str | None | Exception] = []
            for record in records:
                try:
                    results.extend(await self._finish_batch([record]))
                except psycopg.Error as exc:
                    results.append(exc)
            return results
        for (job_id, attempt), row in rows.items():
            # Committed: the job no longer runs here (runs()), at once, not when its slot is
            # released a moment later. An AwaitJob that comes in between reads the job; else
            # it would wait for this wake-up, gone already (and the notification too, maybe).
            if (assignment := self._by_job.get(job_id)) is not None and assignment.attempt == attempt:
                del self._by_job[job_id]
            if row["state"] in TERMINAL_STATES:
                self.on_finished(row)
        return [rows[key]["state"] if (key := (r.job_id, r.attempt)) in rows else None for r in records]

    def _release_slot(self, assignment: Assignment) -> None:
        session = assignment.session
        if session.assignments.pop(assignment.key, None) is not None:
            if assignment.finishing:
                session.answered -= 1
            self._forget(assignment)
            if session.id in self.sessions:
                self.on_capacity(session.group)

    def _forget(self, assignment: Assignment) -> None:
        if assignment.timer:
            assignment.timer.cancel()
        if self._by_job.get(assignment.job_id) is assignment:
            del self._by_job[assignment.job_id]

    # -- leases and shutdown --------------------------------------------------------------

    def running(self) -> list[Assignment]:
        return [a for s in self.sessions.values() for a in s.assignments.values() if not a.ended]

    async def renew_leases(self) -> None:
        """Extend every in-flight lease in one statement; stop what is no longer ours."""
        held = [a for a in self.running() if not a.finishing]
        if not held:
            return
        kept = await self.store.renew_leases([a.job_id for a in held], self.lease, self.sidecar_id)
        for assignment in held:
            if assignment.job_id not in kept and not assignment.finishing and not assignment.ended:
                # Someone else finished, cancelled or reclaimed it meanwhile: stop the handler.
                assignment.ended = True
                self._forget(assignment)
                assignment.session.send(_cancel(assignment, workers_pb2.CANCEL_REASON_LEASE_LOST))
                log.warning("job.lease_lost", job_id=str(assignment.job_id), attempt=assignment.attempt)

    async def drain(self, grace: float) -> None:
        """Stop taking work, let running handlers finish within `grace`, hand back the rest."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.running() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = [a for a in self.running() if not a.finishing]
        for assignment in left:
            assignment.ended = True
            self._forget(assignment)
            assignment.session.send(_cancel(assignment, workers_pb2.CANCEL_REASON_SHUTDOWN))
        await asyncio.gather(*(
            self._record_ended(a, "released", _error("perdure.Released", "the sidecar shut down during the attempt"))
            for a in left
        ))
        # Let outcomes already being committed be acknowledged before the streams close.
        while any(a.finishing for s in self.sessions.values() for a in s.assignments.values()):
            await asyncio.sleep(0.01)
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        for session in list(self.sessions.values()):
            session.outbox.put_nowait(None)
        if left:
            log.info("sidecar.jobs_released", count=len(left))

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("dispatch.task_failed", error=repr(exc),
                      traceback="".join(traceback.format_exception(exc)))


def _ack(outcome: workers_pb2.Outcome, *, recorded: bool, state: str | None = None) -> workers_pb2.SidecarMessage:
    message = workers_pb2.SidecarMessage()
    ack = message.ack
    ack.job_id, ack.attempt, ack.recorded = outcome.job_id, outcome.attempt, recorded
    ack.state = convert.STATES.get(state or "", types_pb2.JOB_STATE_UNSPECIFIED)
    return message


def _cancel(assignment: Assignment, reason: int) -> workers_pb2.SidecarMessage:
    return workers_pb2.SidecarMessage(cancel=workers_pb2.CancelAssignment(
        job_id=str(assignment.job_id), attempt=assignment.attempt, reason=reason,  # type: ignore[arg-type]
    ))


def sidecar_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

