"""The worker side of the `Work` stream: runs this process's handlers for the sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import socket
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import grpc

from perdure import _context, _serde, _stream, _tracing
from perdure._context import JobContext
from perdure._errors import NonRetryableError
from perdure._handle import STATES, ErrorInfo
from perdure.v1 import types_pb2, workers_pb2, workers_pb2_grpc

SDK = "perdure-python/0.1.0"
_REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass(frozen=True)
class JobEvent:
    """What lifecycle callbacks receive (`perdure.on(...)`)."""

    job_id: str
    name: str
    attempt: int
    max_attempts: int
    result: Any = None
    error: ErrorInfo | None = None


Callback = Callable[[JobEvent], Any]


class Worker:
    """One Work stream: registers the handlers, runs assignments, reconnects when it drops."""

    def __init__(self, channel: grpc.aio.Channel, *, namespace: str, handlers: dict[str, Callable[..., Any]],
                 limits: list[workers_pb2.FunctionLimits], concurrency: int,
                 callbacks: Mapping[str, Sequence[Callback]], get_event: _context.EventLookup) -> None:
        self._stub = workers_pb2_grpc.WorkersStub(channel)
        self._namespace = namespace
        self._handlers = handlers
        self._is_async = {name: inspect.iscoroutinefunction(handler) for name, handler in handlers.items()}
        self._limits = limits
        self._concurrency = concurrency
        self._callbacks = callbacks  # lifecycle callbacks by event (perdure.on), read at each job
        self._get_event = get_event
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="perdure-handler")
        self._running: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._cancel_reasons: dict[tuple[str, int], int] = {}
        self._loop = asyncio.get_running_loop()  # made by Perdure.start(), on its loop
        self._acks: dict[tuple[str, int], asyncio.Future[workers_pb2.OutcomeAck]] = {}
        self._step_acks: dict[tuple[str, int, str], asyncio.Future[bool]] = {}
        # None: half-close the stream (stop() ends it so: see _stream).
        self._outbox: asyncio.Queue[workers_pb2.WorkerMessage | None] = asyncio.Queue()
        self._stopping = False
        self.worker_id = ""
        self.registered = asyncio.Event()
        self._stream_ended = asyncio.Event()
        self._batch_of: dict[str, str] = {}  # what the sidecar reads in batches

    async def run(self) -> None:
        """Keep a stream open until stopped, reconnecting with backoff when the sidecar goes away."""
        delay = 0.05
        while not self._stopping:
            try:
                await self._session()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _REFUSED:  # a bad registration, or credentials: retrying will not help
                    logging.getLogger("perdure").error("the sidecar refused this worker (%s): %s", exc.code().name,
                                                       exc.details())
                    raise
            finally:
                self.registered.clear()
                self._abandon_running()
            if not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _session(self) -> None:
        call = self._stub.Work(wait_for_ready=True)
        self._batch_of = {}  # until this sidecar says what it reads
        writer: asyncio.Task[None] | None = None
        try:
            # What handlers abandoned with the previous stream sent afterwards means nothing to
            # this one. The Register goes first, and alone: gRPC allows one write at a time, and
            # a write beside it fails the call here while the sidecar keeps it registered.
            self._drop_outbox()
            await call.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(
                namespace=self._namespace, names=sorted(self._handlers), concurrency=self._concurrency,
                worker_name=f"{socket.gethostname()}/pid-{os.getpid()}", sdk=SDK, limits=self._limits,
                batches=True,
            )))
            writer = asyncio.create_task(self._write(call))
            while True:
                read = await call.read()
                if read is grpc.aio.EOF:
                    await call.code()  # the status, the call's last operation
                    return
                message = cast(workers_pb2.SidecarMessage, read)
                kind = message.WhichOneof("kind")
                if kind == "registered":
                    self.worker_id = message.registered.worker_id
                    self._batch_of = {"outcome": "outcomes"} if message.registered.batches else {}
                    self.registered.set()
                elif kind == "assignment":
                    self._start(message.assignment)
                elif kind == "assignments":
                    for assignment in message.assignments.items:
                        self._start(assignment)
                elif kind == "cancel":
                    key = (message.cancel.job_id, message.cancel.attempt)
                    task = self._running.get(key)
                    if task is not None:
                        self._cancel_reasons[key] = message.cancel.reason
                        task.cancel()
                elif kind == "step_ack":
                    step_ack = message.step_ack
                    waiting = self._step_acks.get((step_ack.job_id, step_ack.attempt, step_ack.name))
                    if waiting is not None and not waiting.done():
                        waiting.set_result(step_ack.recorded)
                elif kind == "ack":
                    self._acknowledged(message.ack)
                elif kind == "acks":
                    for outcome_ack in message.acks.items:
                        self._acknowledged(outcome_ack)
        finally:
            if writer is not None:
                writer.cancel()
            call.cancel()
            self._stream_ended.set()

    def _acknowledged(self, ack: workers_pb2.OutcomeAck) -> None:
        future = self._acks.pop((ack.job_id, ack.attempt), None)
        if future is not None and not future.done():
            future.set_result(ack)

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        # gRPC allows one write at a time: every outgoing message goes through here, the
        # outcomes ready together in one batch when the sidecar reads batches.
        while True:
            messages, end = _stream.split_end(_stream.ready(self._outbox, await self._outbox.get()))
            for message in _stream.pack(messages, self._batch_of):
                await call.write(message)
            if end:
                await call.done_writing()
                return

    def _start(self, assignment: workers_pb2.Assignment) -> None:
        key = (assignment.job_id, assignment.attempt)
        task = asyncio.create_task(self._run_job(assignment))
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _run_job(self, assignment: workers_pb2.Assignment) -> None:
        job = JobContext(
            job_id=assignment.job_id, name=assignment.name, namespace=assignment.namespace,
            attempt=assignment.attempt, max_attempts=assignment.max_attempts,
            recorded={step.name: _serde.decode_result(step.result) for step in assignment.steps},
            record=functools.partial(self._record_step, assignment.job_id, assignment.attempt),
            send=self._post,
            get_event=self._get_event,
            loop=self._loop,
        )
        message = workers_pb2.WorkerMessage()  # the outcome is filled in place, not copied into it
        outcome = message.outcome
        outcome.job_id, outcome.attempt = job.job_id, job.attempt
        handler = self._handlers.get(assignment.name)
        result: Any = None
        error: ErrorInfo | None = None
        try:
            if handler is None:  # the sidecar only sends registered names; be safe anyway
                raise NonRetryableError(f"no handler for {assignment.name!r} in this process")
            args, kwargs = _serde.decode_call(assignment.payload)
            if self._callbacks["job:start"]:
                await self._emit("job:start", JobEvent(job.job_id, job.name, job.attempt, job.max_attempts))
            with _tracing.job_span(job.name, job.job_id, job.attempt, assignment.trace_context):
                result = await _suspension_unwrapped(self._invoke(handler, self._is_async[assignment.name], job,
                                                                  args, kwargs))
            try:
                outcome.success.CopyFrom(_serde.encode_result(result))
            except (TypeError, ValueError) as exc:
                # It would fail the same way every time: no retry.
                raise NonRetryableError(f"the result of {job.name!r} is not JSON-serialisable: {exc}") from None
        except _context.Suspend as suspend:
            outcome.suspend.event = suspend.event
            if suspend.until is not None:
                outcome.suspend.until.FromNanoseconds(int(suspend.until * 1e9))
        except asyncio.CancelledError:
            outcome.cancelled.SetInParent()
            if self._cancel_reasons.pop((job.job_id, job.attempt), None) == workers_pb2.CANCEL_REASON_TIMEOUT:
                # The sidecar failed this attempt for its timeout: that is this process's error too.
                error = ErrorInfo(type="perdure.Timeout", message="the attempt exceeded its timeout")
        except BaseException as exc:  # everything a handler raises is the attempt's error
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            error = ErrorInfo(
                type=_type_name(exc), message=str(exc),
                traceback="".join(traceback.format_exception(exc)),
                non_retryable=isinstance(exc, NonRetryableError),
            )
            outcome.failure.CopyFrom(types_pb2.JobError(
                type=error.type, message=error.message, traceback=error.traceback,
                non_retryable=error.non_retryable))
        ack = await self._send(message)
        if ack is None or (not ack.recorded and error is None):
            return
        state = STATES.get(ack.state, "")
        if outcome.HasField("success"):
            if self._callbacks["job:success"]:
                await self._emit("job:success", JobEvent(job.job_id, job.name, job.attempt, job.max_attempts,
                                                         result=result))
        elif error is not None:
            event = JobEvent(job.job_id, job.name, job.attempt, job.max_attempts, error=error)
            await self._emit("job:error", event)
            if state == "dead":
                await self._emit("job:dead", event)

    async def _emit(self, event: str, info: JobEvent) -> None:
        for callback in self._callbacks[event]:
            try:
                outcome = callback(info)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:  # a broken callback must not fail the job
                logging.getLogger("perdure").warning("callback for %s failed: %r", event, exc)

    async def _invoke(self, handler: Callable[..., Any], is_async: bool, job: JobContext, args: list[Any],
                      kwargs: dict[str, Any]) -> Any:
        token = _context._current.set(job)
        try:
            if is_async:
                return await handler(*args, **kwargs)
            # Plain functions run in the thread pool; a cancelled one cannot be interrupted, so its
            # slot is held until it really returns.
            context = contextvars.copy_context()
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(context.run, handler, *args, **kwargs))
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                await asyncio.wait([future])
                raise
        finally:
            _context._current.reset(token)

    def _post(self, message: workers_pb2.WorkerMessage) -> None:
        """Queue a message for the stream, from the event loop or from a sync handler's thread."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._outbox.put_nowait(message)
        else:
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, message)

    async def _record_step(self, job_id: str, attempt: int, name: str, result: types_pb2.Payload | None,
                           error: types_pb2.JobError | None) -> bool:
        """Send a step's outcome and wait until the sidecar has committed it (or refused it)."""
        key = (job_id, attempt, name)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._step_acks[key] = future
        step = workers_pb2.RecordStep(job_id=job_id, attempt=attempt, name=name)
        if result is not None:
            step.result.CopyFrom(result)
        elif error is not None:
            step.error.CopyFrom(error)
        self._outbox.put_nowait(workers_pb2.WorkerMessage(record_step=step))
        try:
            return await future
        finally:
            self._step_acks.pop(key, None)

    async def _send(self, message: workers_pb2.WorkerMessage) -> workers_pb2.OutcomeAck | None:
        """Send an outcome and wait for the sidecar to say it is committed (None if the stream drops)."""
        key = (message.outcome.job_id, message.outcome.attempt)
        future: asyncio.Future[workers_pb2.OutcomeAck] = asyncio.get_running_loop().create_future()
        self._acks[key] = future
        self._outbox.put_nowait(message)
        try:
            return await future
        except asyncio.CancelledError:
            return None
        finally:
            self._acks.pop(key, None)

    def _abandon_running(self) -> None:
        # The stream is gone and the sidecar has put these jobs back: their answers could not
        # count any more, so stop them.
        for task in list(self._running.values()):
            task.cancel()
        for futures in (self._acks, self._step_acks):
            for future in futures.values():
                future.cancel()
            futures.clear()
        self._drop_outbox()

    def _drop_outbox(self) -> None:
        while not self._outbox.empty():
            self._outbox.get_nowait()

    async def stop(self, grace: float) -> None:
        """Let running handlers finish within `grace` seconds, then cancel the rest: each is
        handed back to the sidecar, to run again elsewhere without spending an attempt. Then
        end the stream (see _stream)."""
        self._stopping = True
        if self.registered.is_set():
            self._outbox.put_nowait(workers_pb2.WorkerMessage(drain=workers_pb2.Drain()))
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=grace)
        if self._running:
            for task in self._running.values():
                task.cancel()
            # Their answers ("cancelled") still need the stream and their acknowledgements.
            await asyncio.wait(list(self._running.values()), timeout=5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.registered.is_set():
            self._stream_ended.clear()
            self._outbox.put_nowait(None)  # half-close: the sidecar then ends the stream
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stream_ended.wait(), _stream.END_TIMEOUT)


async def _suspension_unwrapped(call: Awaitable[Any]) -> Any:
    """A handler that awaits children in an asyncio.TaskGroup gets its suspension wrapped in
    an exception group: unwrap it (waiting for one child is enough; the others are checked
    again when the job resumes)."""
    try:
        return await call
    except BaseExceptionGroup as group:
        suspended, rest = group.split(_context.Suspend)
        if suspended is None or rest is not None:
            raise
        first: BaseException = suspended
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"

