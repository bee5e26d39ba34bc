"""The gRPC services: Jobs (enqueue and read back) and Workers (the Work stream)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc
import psycopg

from perdure import _stream
from perdure.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc, types_pb2, workers_pb2, workers_pb2_grpc
from perdured import convert, validation
from perdured.access import PermissionDenied
from perdured.dispatch import Dispatcher
from perdured.events import EventHub, JobEvent
from perdured.logs import log, one_line
from perdured.rpc import CallContext, Refused, abort
from perdured.scheduler import Scheduler
from perdured.store import TERMINAL_STATES, Store
from perdured.validation import InvalidArgument

MAX_AWAIT = 60.0
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
WATCH_BUFFER = 10_000
MAX_BATCH = 10_000  # jobs per EnqueueBatch call
MAX_CALLS_IN_FLIGHT = 10_000  # calls in progress, and answers waiting to be sent, per Calls stream
BULK_BATCH = 1000  # rows per statement of RetryJobs and PurgeJobs: short locks, bounded memory
RETRYABLE_STATES = frozenset({"dead", "cancelled"})

Handler = TypeVar("Handler", bound=Callable[..., Any])


def _described(where: validation.JobFilter) -> dict[str, Any]:
    return {key: value for key, value in vars(where).items() if value is not None}


def _errors_as_status(method: Handler) -> Handler:
    """Bad input becomes INVALID_ARGUMENT with the message naming the field; a namespace the
    caller's token may not use, PERMISSION_DENIED; a database that cannot be reached, or a row
    another transaction keeps locked (store.LOCK_WAIT), UNAVAILABLE (clients retry); a value
    the database refuses, INVALID_ARGUMENT; any other database error, INTERNAL."""

    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except InvalidArgument as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PermissionDenied as exc:
            log.warning("auth.denied", rpc=method.__name__, error=str(exc))
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except psycopg.errors.LockNotAvailable as exc:
            log.warning("database.locked", rpc=method.__name__, error=one_line(str(exc)))
            await abort(context, grpc.StatusCode.UNAVAILABLE,
                        "a row this call needs is locked by another transaction; try again")
        except psycopg.OperationalError as exc:
            log.error("database.unavailable", rpc=method.__name__, error=str(exc))
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the database is unavailable; try again")
        except psycopg.DataError as exc:
            # A value the checks above let through but the database cannot take: still the
            # caller's input (nothing was written: the statement failed as a whole).
            log.warning("rpc.refused_value", rpc=method.__name__, error=str(exc))
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"a value cannot be stored: {one_line(str(exc))}")
        except psycopg.Error as exc:
            log.exception("rpc.failed", rpc=method.__name__)
            await abort(context, grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the sidecar's log")

    wrapper.__name__ = method.__name__
    return wrapper  # type: ignore[return-value]


class JobsService(jobs_pb2_grpc.JobsServicer):
    def __init__(self, store: Store, events: EventHub, scheduler: Scheduler, *, max_payload_bytes: int) -> None:
        self.store = store
        self.events = events
        self.scheduler = scheduler
        self.max_payload_bytes = max_payload_bytes


    @_errors_as_status
    async def Enqueue(self, request: jobs_pb2.EnqueueRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.EnqueueResponse:
        job = validation.enqueue_request(request, self.max_payload_bytes)
        self.events.expect_await(job.id)  # before: the job may end before its enqueue is answered
        row, deduplicated = await self.scheduler.enqueue(job)
        log.debug("job.enqueued", job_id=str(row["id"]), name=job.name, deduplicated=deduplicated)
        if not request.brief:
            return jobs_pb2.EnqueueResponse(job=convert.job(row), deduplicated=deduplicated)
        response = jobs_pb2.EnqueueResponse(deduplicated=deduplicated)
        convert.brief_job(response.job, row)
        return response

    @_errors_as_status
    async def EnqueueBatch(self, request: jobs_pb2.EnqueueBatchRequest,
                           context: grpc.aio.ServicerContext) -> jobs_pb2.EnqueueBatchResponse:
        if len(request.jobs) > MAX_BATCH:
            raise InvalidArgument("jobs", f"has {len(request.jobs)} jobs; at most {MAX_BATCH} per call")
        jobs = validation.enqueue_batch_request(request, self.max_payload_bytes)
        results = await self.scheduler.enqueue_batch(jobs, brief=request.brief) if len(jobs) else []
        return convert.enqueue_answers(results, request.brief)

    @_errors_as_status
    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.GetJobResponse:
        job_id, namespace = validation.job_id(request.id), validation.namespace(request.namespace)
        row = await self._existing(job_id, namespace, context)
        attempts, steps, logs, children = await asyncio.gather(
            self.store.get_attempts(job_id), self.store.get_steps(job_id), self.store.get_logs(job_id),
            self.store.get_children(job_id))
        return jobs_pb2.GetJobResponse(job=convert.job(row, attempts, steps, logs, children))

    @_errors_as_status
    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.ListJobsResponse:
        where = validation.job_filter(request)
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0 for the default)")
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        before = validation.job_id(request.page_token, "page_token") if request.page_token else None
        rows = await self.store.list_jobs(where, before, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return jobs_pb2.ListJobsResponse(
            jobs=[convert.job(r) for r in rows],
            next_page_token=str(rows[-1]["id"]) if more else "",
        )

    @_errors_as_status
    async def AwaitJob(self, request: jobs_pb2.AwaitJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.AwaitJobResponse:
        job_id, namespace = validation.job_id(request.id), validation.namespace(request.namespace)
        wait = validation.seconds(request.wait, "wait") if request.HasField("wait") else MAX_AWAIT
        deadline = asyncio.get_running_loop().time() + min(wait, MAX_AWAIT)
        succeeded = self.events.succeeded(job_id)
        if succeeded is not None and succeeded["namespace"] == namespace:
            return _awaited(succeeded, request.brief)
        # Listen first, then read: a job that finishes in between still wakes us.
        with self.events.job_waiter(job_id) as finished:
            # A job running on our workers has not finished, or its outcome is being recorded
            # here: it cannot end without waking us (our own recording, or a notification we now
            # hear), so the first read can be skipped. After any wake-up without the row, read.
            row = None
            if self.events.ready.is_set() and self.scheduler.dispatcher.runs(job_id, namespace):
                try:
                    # wait_for, whose task wakes a turn of the loop later than asyncio.timeout
                    # would: the awaits a finish ends are then answered in one message, and the
                    # callers' next calls come together. (With asyncio.timeout the mixed load
                    # split into smaller groups: 20-40% more CPU per job in every process.)
                    await asyncio.wait_for(finished.wait(), deadline - asyncio.get_running_loop().time())
                except TimeoutError:
                    pass
                row = finished.row
            while row is None:
                finished.clear()  # before the read: a notice that lands during it is kept
                read = await self._existing(job_id, namespace, context)
                remaining = deadline - asyncio.get_running_loop().time()
                if read["state"] in TERMINAL_STATES or remaining <= 0:
                    row = read
                    break
                try:
                    await asyncio.wait_for(finished.wait(), remaining)
                except TimeoutError:
                    pass
                # Finished on this sidecar: no need to read it back.
                row = finished.row
        return _awaited(row, request.brief)

    @_errors_as_status
    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.CancelJobResponse:
        job_id, namespace = validation.job_id(request.id), validation.namespace(request.namespace)
        row = await self.store.cancel_job(job_id, namespace)
        if row is None:  # already finished, or not there at all
            return jobs_pb2.CancelJobResponse(job=convert.job(await self._existing(job_id, namespace, context)))
        log.info("job.cancelled", job_id=str(job_id))
        return jobs_pb2.CancelJobResponse(job=convert.job(row), cancelled=True)

    @_errors_as_status
    async def RetryJob(self, request: jobs_pb2.RetryJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.RetryJobResponse:
        job_id, namespace = validation.job_id(request.id), validation.namespace(request.namespace)
        row = await self.store.retry_job(job_id, namespace)
        if row is None:
            existing = await self._existing(job_id, namespace, context)
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                                f"job {job_id} is {existing['state']}; only dead or cancelled jobs can be retried")
        log.info("job.retried", job_id=str(job_id))
        return jobs_pb2.RetryJobResponse(job=convert.job(row))

    @_errors_as_status
    async def RetryJobs(self, request: jobs_pb2.RetryJobsRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.RetryJobsResponse:
        with validation.within("filter."):
            where = validation.job_filter(request.filter, allowed_states=RETRYABLE_STATES, default_states=["dead"])
        retried = await self.store.retry_jobs(where, BULK_BATCH)
        log.info("jobs.retried", jobs=retried, **_described(where))
        return jobs_pb2.RetryJobsResponse(retried=retried)

    @_errors_as_status
    async def PurgeJobs(self, request: jobs_pb2.PurgeJobsRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.PurgeJobsResponse:
        with validation.within("filter."):
            where = validation.job_filter(request.filter, allowed_states=TERMINAL_STATES, default_states=["dead"])
        purged = await self.store.purge_jobs(where, BULK_BATCH)
        self.events.forget_successes()  # at once here; other sidecars hear it from PostgreSQL
        log.info("jobs.purged", jobs=purged, **_described(where))
        return jobs_pb2.PurgeJobsResponse(purged=purged)

    @_errors_as_status
    async def EmitEvent(self, request: jobs_pb2.EmitEventRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.EmitEventResponse:
        namespace, name = validation.namespace(request.namespace), validation.function_name(request.name)
        data, encoding = validation.payload(request.payload, self.max_payload_bytes)
        woken = await self.store.emit_event(namespace, name, data, encoding)
        log.info("event.emitted", namespace=namespace, event_name=name, woken=woken)
        return jobs_pb2.EmitEventResponse(woken=woken)

    @_errors_as_status
    async def GetEvent(self, request: jobs_pb2.GetEventRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.GetEventResponse:
        namespace, name = validation.namespace(request.namespace), validation.function_name(request.name)
        row = await self.store.get_event(namespace, name)
        if row is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no event {name!r} in namespace {namespace!r} (yet)")
        return jobs_pb2.GetEventResponse(
            payload=types_pb2.Payload(data=row["payload"], encoding=row["payload_encoding"]),
            emitted_at=convert.timestamp(row["emitted_at"]))

    @_errors_as_status
    async def WatchJobs(self, request: jobs_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext) -> None:  # type: ignore[override]
        namespace = validation.namespace(request.namespace)
        name = validation.function_name(request.name) if request.name else None
        job_id = validation.job_id(request.job_id, "job_id") if request.job_id else None
        queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()

        def deliver(event: JobEvent) -> None:
            if event.namespace != namespace or (name and event.name != name) or (job_id and event.job_id != job_id):
                return
            queue.put_nowait(event)
            if queue.qsize() > WATCH_BUFFER:  # a client that does not read: let it go
                unsubscribe()
                queue.put_nowait(None)

        unsubscribe = self.events.subscribe(deliver)
        # Tells the client the watch is live: every event from now on reaches it.
        await context.send_initial_metadata(())
        try:
            while (event := await queue.get()) is not None:
                await context.write(convert.event(event))
        finally:
            with contextlib.suppress(ValueError):  # already unsubscribed after falling behind
                unsubscribe()
        await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the watcher fell more than {WATCH_BUFFER} events behind; watch again")

    async def Calls(self, request_iterator: AsyncIterator[jobs_pb2.CallRequests],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[jobs_pb2.CallResponses]:
        # Bounded, like the calls in progress: a client that does not read its answers is read
        # no further (its writes wait, not the sidecar's memory).
        answers: asyncio.Queue[jobs_pb2.CallResponse | None] = asyncio.Queue(MAX_CALLS_IN_FLIGHT)
        reader = asyncio.create_task(self._take_calls(request_iterator, answers))
        try:
            while (first := await answers.get()) is not None:
                ready, end = _stream.split_end(_stream.ready(answers, first))
                for chunk in _stream.chunks(ready):
                    yield jobs_pb2.CallResponses(responses=chunk)
                if end:
                    break
        finally:
            reader.cancel()

    async def _take_calls(self, requests: AsyncIterator[jobs_pb2.CallRequests],
                          answers: asyncio.Queue[jobs_pb2.CallResponse | None]) -> None:
        """Start each call as it comes, at most MAX_CALLS_IN_FLIGHT at a time (more wait); when
        the client stops sending, finish those in flight, then end the answers."""
        running: set[asyncio.Task[None]] = set()
        try:
            async for message in requests:
                for call in message.calls:
                    while len(running) >= MAX_CALLS_IN_FLIGHT:
                        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    task = asyncio.create_task(self._answer(call, answers))
                    running.add(task)
                    task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(running)
        except grpc.aio.AioRpcError:
            pass  # the client went away: nobody to answer
        finally:
            for task in running:
                task.cancel()
        await answers.put(None)

    async def _answer(self, call: jobs_pb2.CallRequest, answers: asyncio.Queue[jobs_pb2.CallResponse | None]) -> None:
        context = cast(grpc.aio.ServicerContext, CallContext())
        kind = call.WhichOneof("request")
        try:
            if kind == "enqueue":
                answer = jobs_pb2.CallResponse(id=call.id, enqueue=await self.Enqueue(call.enqueue, context))
            elif kind == "await_job":
                answer = jobs_pb2.CallResponse(id=call.id, await_job=await self.AwaitJob(call.await_job, context))
            else:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "request: a call must hold enqueue or await_job")
        except Refused as exc:
            answer = _refusal(call.id, exc.code, str(exc))
        except Exception:
            log.exception("rpc.failed", rpc=f"Calls.{kind}")
            answer = _refusal(call.id, grpc.StatusCode.INTERNAL, "internal error; see the sidecar's log")
        await answers.put(answer)

    async def _existing(self, job_id: uuid.UUID, namespace: str, context: grpc.aio.ServicerContext) -> dict[str, Any]:
        row = await self.store.get_job(job_id, namespace)
        if row is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {job_id} in namespace {namespace!r}")
        return row


def _awaited(row: dict[str, Any], brief: bool) -> jobs_pb2.AwaitJobResponse:
    done = row["state"] in TERMINAL_STATES
    if not brief:
        return jobs_pb2.AwaitJobResponse(job=convert.job(row), done=done)
    response = jobs_pb2.AwaitJobResponse(done=done)
    convert.awaited_job(response.job, row)
    return response


def _refusal(call_id: int, code: grpc.StatusCode, message: str) -> jobs_pb2.CallResponse:
    return jobs_pb2.CallResponse(id=call_id, error=jobs_pb2.CallError(code=code.value[0], message=message))


class WorkersService(workers_pb2_grpc.WorkersServicer):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def Work(self, request_iterator: AsyncIterator[workers_pb2.WorkerMessage],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[workers_pb2.SidecarMessage]:
        # grpc.aio treats a handler as streaming only if it is itself an async generator.
        async for message in self.dispatcher.work(request_iterator, context):
            yield message


DEFAULT_STATS_WINDOW = 300.0
DEFAULT_ACTIVITY_WINDOW = 3600.0
MAX_STATS_WINDOW = 24 * 3600.0


def _window(request: admin_pb2.GetStatsRequest | admin_pb2.GetActivityRequest, default: float) -> float:
    """How far back statistics look: `window` if given (more than 0, at most a day), else `default`."""
    if not request.HasField("window"):
        return default
    window = validation.seconds(request.window, "window", allow_zero=False)
    if window > MAX_STATS_WINDOW:
        raise InvalidArgument("window", f"is {window:g} s; at most {MAX_STATS_WINDOW:g} s (a day of activity is kept)")
    return window


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, store: Store, dispatcher: Dispatcher, info: dict[str, Any]) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.info = info  # what the sidecar knows of itself: version, id, lease, start, embedded

    @_errors_as_status
    async def GetStats(self, request: admin_pb2.GetStatsRequest, context: grpc.aio.ServicerContext) -> admin_pb2.GetStatsResponse:
        namespace = validation.namespace_or_all(request.namespace, "statistics")
        window = _window(request, DEFAULT_STATS_WINDOW)
        rows = await self.store.function_stats(namespace, window)
        response = admin_pb2.GetStatsResponse(window=convert.duration(window))
        for row in rows:
            response.functions.append(convert.function_stats(row, window))
        at = convert.timestamp(rows[0]["at"] if rows else time.time())
        assert at is not None
        response.at.CopyFrom(at)
        return response

    @_errors_as_status
    async def ListWorkers(self, request: admin_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext) -> admin_pb2.ListWorkersResponse:
        namespace = validation.namespace_or_all(request.namespace, "the workers")
        rows = await self.store.list_workers(namespace)
        return admin_pb2.ListWorkersResponse(workers=[convert.worker(row) for row in rows])

    @_errors_as_status
    async def GetInfo(self, request: admin_pb2.GetInfoRequest, context: grpc.aio.ServicerContext) -> admin_pb2.GetInfoResponse:
        began = time.perf_counter()
        database = await self.store.database_info()
        latency = time.perf_counter() - began
        running = self.dispatcher.running()
        return admin_pb2.GetInfoResponse(
            version=self.info["version"], sidecar_id=self.dispatcher.sidecar_id,
            schema_version=database["schema_version"] or 0, latest_schema_version=self.info["latest_schema_version"],
            database_version=database["server_version"], embedded_database=self.info["embedded"],
            database_latency=convert.duration(latency), workers=len(self.dispatcher.sessions), in_flight=len(running),
            lease=convert.duration(self.dispatcher.lease), started_at=convert.timestamp(self.info["started_at"]),
        )

    @_errors_as_status
    async def GetActivity(self, request: admin_pb2.GetActivityRequest,
                          context: grpc.aio.ServicerContext) -> admin_pb2.GetActivityResponse:
        namespace = validation.namespace_or_all(request.namespace, "the activity")
        name = validation.function_name(request.name) if request.name else None
        window = _window(request, DEFAULT_ACTIVITY_WINDOW)
        return convert.activity(await self.store.function_activity(namespace, name, window))
