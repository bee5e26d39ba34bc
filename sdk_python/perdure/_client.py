"""`Perdure`: the client. Turns functions durable, enqueues calls, serves this process's handlers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc

from perdure import _calls, _serde, _tracing
from perdure._context import current_context
from perdure._errors import (
    AuthenticationError,
    InvalidArgumentError,
    JobNotFoundError,
    NotStartedError,
    PerdureError,
    PermissionDeniedError,
    SidecarUnavailableError,
)
from perdure._handle import STATES, JobDetails, JobHandle, details_from
from perdure._ids import new_job_id, new_job_ids
from perdure._options import FunctionLimits, JobOptions, RateLimit
from perdure._schedules import Schedules, ScheduleSpec, check_spec
from perdure._security import ClientSecurity
from perdure._sidecar import LocalSidecar
from perdure._worker import Callback, Worker
from perdure.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2

EVENTS = ("job:start", "job:success", "job:error", "job:dead")
MAX_MESSAGE = 64 * 1024 * 1024
ENQUEUE_BATCH = 1000  # jobs per EnqueueBatch call of enqueue_many
# EnqueueBatch calls of one enqueue_many in flight at once: while the database stores one
# batch, the sidecar reads the next. More gained little and cost the sidecar memory.
ENQUEUE_BATCHES_IN_FLIGHT = 2
F = TypeVar("F", bound=Callable[..., Any])


class Perdure:
    """Durable execution through a perdured sidecar.

        Perdure()                               # spawns a local perdured on the embedded PostgreSQL
        Perdure(storage="postgresql://...")     # spawns perdured against that database
        Perdure(address="127.0.0.1:7433")       # uses a running sidecar
        Perdure(address="perdured.internal:7433", token=..., tls_ca="ca.pem")   # one that asks for TLS and a token

    Use it as `async with perdure:` (or `await perdure.start()` / `await perdure.stop()`).

    With `address`, `token` is sent with every call (`authorization: Bearer <token>`) and any TLS
    option makes the connection TLS: `tls_ca` (the authority of the sidecar's certificate; PEM
    file), `tls_cert` and `tls_key` (this client's certificate, when the sidecar requires one),
    `tls_server_name` (the name to expect in the certificate), `tls=True` (TLS with the system's
    authorities). Each defaults to its variable: PERDURE_TOKEN, PERDURE_TLS_CA,
    PERDURE_TLS_CLIENT_CERT, PERDURE_TLS_CLIENT_KEY, PERDURE_TLS_SERVER_NAME, PERDURE_TLS. A
    sidecar this client spawns (no `address`) serves it alone, over loopback, and needs none.
    """

    def __init__(self, *, address: str | None = None, storage: str | None = None,
                 namespace: str = "default", worker_concurrency: int = 10,
                 data_dir: str | Path | None = None, shutdown_grace: float = 10.0,
                 token: str | None = None, tls: bool | None = None, tls_ca: str | Path | None = None,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                 tls_server_name: str | None = None, retry_unavailable: float = 30.0) -> None:
        if address and storage:
            raise ValueError("give either address (a running sidecar) or storage (a database for a spawned one), not both")
        security = {"token": token, "tls": tls, "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key,
                    "tls_server_name": tls_server_name}
        if not address and any(value is not None for value in security.values()):
            given = ", ".join(name for name, value in security.items() if value is not None)
            raise ValueError(f"{given}: only for a running sidecar (address=); the sidecar Perdure spawns "
                             "without one serves this process alone, over loopback")
        if not isinstance(worker_concurrency, int) or isinstance(worker_concurrency, bool) or worker_concurrency < 1:
            raise ValueError(f"worker_concurrency must be an integer of at least 1, got {worker_concurrency!r}")
        if not namespace or not isinstance(namespace, str):
            raise ValueError(f"namespace must be a non-empty string, got {namespace!r}")
        self.address = address
        self.namespace = namespace
        self.worker_concurrency = worker_concurrency
        self.shutdown_grace = shutdown_grace
        if isinstance(retry_unavailable, bool) or not isinstance(retry_unavailable, (int, float)) \
                or retry_unavailable < 0:
            raise ValueError(f"retry_unavailable must be a number of seconds, not negative, got {retry_unavailable!r}")
        # How long an enqueue keeps trying while the sidecar or its database is unavailable.
        self.retry_unavailable = float(retry_unavailable)
        self._security = ClientSecurity.of(**security, environ=os.environ) if address else ClientSecurity()  # type: ignore[arg-type]
        self._sidecar = None if address else LocalSidecar(storage=storage, data_dir=data_dir)
        self._functions: dict[str, DurableFunction] = {}
        self._callbacks: dict[str, list[Callback]] = {event: [] for event in EVENTS}
        self._channel: grpc.aio.Channel | None = None
        self._jobs: jobs_pb2_grpc.JobsStub | None = None
        self._calls: _calls.CallStream | None = None  # Enqueue and AwaitJob, on one stream
        self._worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        # Cron schedules of this namespace: perdure.schedules.create(...), .get, .list, ...
        self.schedules = Schedules(self)

    # -- lifetime -------------------------------------------------------------------------

    async def start(self, *, serve: bool = True) -> None:
        """Connect to the sidecar (spawning one if need be) and serve this process's durable
        functions. With `serve=False` the process only enqueues and reads, although it defines
        durable functions: a web process whose jobs run in worker processes. A later `start()`
        serves them."""
        if self._channel is None:
            if self._sidecar is not None:
                self.address = await self._sidecar.start()
            assert self.address
            self._channel = self._security.aio_channel(self.address, options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ])
            self._jobs = jobs_pb2_grpc.JobsStub(self._channel)
            self._calls = _calls.CallStream(self._jobs, _translate)
        if serve and self._functions and self._worker is None:
            # Only a process with handlers takes work, and only for the names it has.
            handlers = {name: fn.fn for name, fn in self._functions.items()}
            limits = [fn.limits.message(name) for name, fn in self._functions.items() if fn.limits.declared]
            self._worker = Worker(self._channel, namespace=self.namespace, handlers=handlers, limits=limits,
                                  concurrency=self.worker_concurrency, callbacks=self._callbacks,
                                  get_event=self._get_event)
            self._worker_task = asyncio.create_task(self._worker.run(), name="perdure-worker")
            await self._create_schedules()

    async def stop(self) -> None:
        if self._worker is not None and self._worker_task is not None:
            await self._worker.stop(self.shutdown_grace)
            self._worker_task.cancel()
            await asyncio.gather(self._worker_task, return_exceptions=True)
            self._worker = self._worker_task = None
        if self._calls is not None:
            await self._calls.close()
            self._calls = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._jobs = None
        if self._sidecar is not None:
            await self._sidecar.stop()

    async def __aenter__(self) -> Perdure:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Wait until the worker stream is registered with the sidecar (useful in tests and demos)."""
        if self._worker is None or self._worker_task is None:
            raise PerdureError("this process serves no durable functions")
        registered = asyncio.ensure_future(self._worker.registered.wait())
        try:
            done, _ = await asyncio.wait({registered, self._worker_task}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            registered.cancel()
        if self._worker_task in done:  # the sidecar refused the worker for good
            failure = self._worker_task.exception()
            if isinstance(failure, grpc.aio.AioRpcError):
                raise _translate(failure.code(), failure.details() or "") from None
            raise PerdureError(f"the worker stopped: {failure!r}")
        if not done:
            raise TimeoutError(f"the worker did not register within {timeout:g} s")

    # -- durable functions ----------------------------------------------------------------

    def durable(self, name: str, *, max_attempts: int | None = None, backoff: str | None = None,
                initial_delay: float | None = None, max_delay: float | None = None,
                timeout: float | None = None, jitter: float | None = None, priority: int | None = None,
                start_within: float | None = None, max_duration: float | None = None,
                concurrency: int | None = None, key_concurrency: int | None = None,
                rate_limit: RateLimit | None = None, key_rate_limit: RateLimit | None = None,
                schedule: str | None = None, timezone: str = "UTC", missed: str = "once",
                ) -> Callable[[F], DurableFunction]:
        """Make a function durable under `name`: calling it enqueues a job and returns a JobHandle.

        The job options (retries, timeout, priority, the cancellation policies `start_within`
        and `max_duration`) are defaults that each call may override with `.options(...)`.
        The limits hold for the function across every sidecar sharing the database:
        `concurrency` jobs in progress at once, `key_concurrency` (default 1) per
        `concurrency_key` given to a call, and `rate_limit` / `key_rate_limit` starts per period
        (`perdure.RateLimit(10, per=60)`). The processes serving the function declare them.

        With `schedule` (a cron expression, evaluated in `timezone`), it also runs, without
        arguments, at every tick: when this process starts serving it, the schedule named `name`
        is created, or replaced if the code changed it (see `Schedules.create`; `missed` is its
        missed-tick policy).
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a durable function needs a non-empty name, got {name!r}")
        if schedule is None and (timezone != "UTC" or missed != "once"):
            raise ValueError(f"durable({name!r}): timezone and missed only apply with schedule=")
        spec = check_spec(name, schedule, timezone, missed) if schedule is not None else None
        options = JobOptions().merged(max_attempts=max_attempts, backoff=backoff, initial_delay=initial_delay,
                                      max_delay=max_delay, timeout=timeout, jitter=jitter, priority=priority,
                                      start_within=start_within, max_duration=max_duration)
        limits = FunctionLimits(concurrency=concurrency, key_concurrency=key_concurrency, rate_limit=rate_limit,
                                key_rate_limit=key_rate_limit)

        def register(fn: F) -> DurableFunction:
            if not callable(fn):
                raise TypeError(f"durable({name!r}) must decorate a function, got {fn!r}")
            if name in self._functions:
                raise ValueError(f"a durable function named {name!r} is already registered")
            if self._worker is not None:
                raise PerdureError(f"define durable function {name!r} before Perdure starts serving")
            durable = DurableFunction(self, name, fn, options, limits)
            durable.schedule = spec
            self._functions[name] = durable
            return durable

        return register

    async def enqueue(self, name: str, *args: Any, **options: Any) -> JobHandle:
        """Enqueue a call of `name` by name (its handler may live in another process or language).
        Keyword arguments are job options (idempotency_key, max_attempts, timeout, delay, ...)."""
        return await self._enqueue(name, args, {}, JobOptions().merged(**options))

    async def enqueue_many(self, name: str, calls: Iterable[Sequence[Any]], **options: Any) -> list[JobHandle]:
        """Enqueue one job of `name` per item of `calls` (each a sequence of positional
        arguments), with the same options, in batches of up to 1000 jobs: each batch is one
        RPC, one statement and one commit, all of it or none; a few are sent at once. If one
        fails, the batches not yet sent are not, and its error is raised. Returns the handles
        in order."""
        checked = JobOptions().merged(**options)
        if checked.idempotency_key is not None:
            raise ValueError("enqueue_many gives every job the same options: an idempotency_key would make them one job")
        if current_context() is not None:
            raise PerdureError("enqueue_many is not for handlers: spawn children one call at a time (each a checkpoint)")
        # The options, sent once per batch; each job carries its payload and its id (chosen
        # here, so that a batch sent again after a lost answer stores no job twice).
        common = checked.request(namespace=self.namespace, name=name, payload=None)
        common.trace_context.update(_tracing.current_context())
        payloads = []  # every call is encoded (and so checked) before any is sent
        for call in calls:
            if isinstance(call, (str, bytes)) or not isinstance(call, Sequence):
                raise TypeError(f"each call is a sequence of positional arguments, e.g. (to, subject); got {call!r}")
            payloads.append(_serde.encode_call(name, tuple(call), {}))
        in_flight = asyncio.Semaphore(ENQUEUE_BATCHES_IN_FLIGHT)

        async def send(batch: list[types_pb2.Payload]) -> list[JobHandle]:
            async with in_flight:
                # Built here, while the batches before it are on their way.
                request = jobs_pb2.EnqueueBatchRequest(brief=True, common=common)
                add = request.jobs.add
                for job_id, payload in zip(new_job_ids(len(batch)), batch, strict=True):
                    add(id=job_id, payload=payload)
                response = await self._call_retrying("EnqueueBatch", request)
            return [JobHandle(self, r.job.id, name=name, deduplicated=r.deduplicated) for r in response.results]

        sends = [asyncio.ensure_future(send(payloads[start:start + ENQUEUE_BATCH]))
                 for start in range(0, len(payloads), ENQUEUE_BATCH)]
        try:
            batches = await asyncio.gather(*sends)
        finally:
            for pending in sends:
                pending.cancel()
        return [handle for batch in batches for handle in batch]

    # -- many jobs at once: listing, dead letters --------------------------------------------

    async def list_jobs(self, name: str | None = None, *, status: str | list[str] | None = None,
                        labels: dict[str, str] | None = None, error_type: str | None = None,
                        error_contains: str | None = None, limit: int = 100) -> list[JobDetails]:
        """Jobs of this namespace, newest first, at most `limit`: of function `name`, in these
        states, carrying these labels, whose last error has this type or whose message contains
        this text (case-insensitive). The dead letters: `list_jobs(status="dead")`."""
        if not _is_count(limit):
            raise ValueError(f"limit must be an integer of at least 1, got {limit!r}")
        request = jobs_pb2.ListJobsRequest(**_job_filter(self.namespace, name, status, labels, error_type,
                                                         error_contains))
        jobs: list[JobDetails] = []
        while len(jobs) < limit:
            request.page_size = min(limit - len(jobs), 1000)
            response = await self._call("ListJobs", request)
            jobs.extend(details_from(job) for job in response.jobs)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        return jobs

    async def retry_jobs(self, name: str | None = None, *, status: str | list[str] = "dead",
                         labels: dict[str, str] | None = None, error_type: str | None = None,
                         error_contains: str | None = None) -> int:
        """Run every dead (or, with status="cancelled", cancelled) job that matches the filter
        again, each with a fresh set of attempts, in one call. Returns how many."""
        request = jobs_pb2.RetryJobsRequest(filter=jobs_pb2.JobFilter(**_job_filter(
            self.namespace, name, status, labels, error_type, error_contains)))
        return (await self._call("RetryJobs", request, timeout=None)).retried

    async def purge_jobs(self, name: str | None = None, *, status: str | list[str] = "dead",
                         labels: dict[str, str] | None = None, error_type: str | None = None,
                         error_contains: str | None = None) -> int:
        """Delete the finished jobs (dead by default; success, dead or cancelled) that match
        the filter, with their history. Returns how many."""
        request = jobs_pb2.PurgeJobsRequest(filter=jobs_pb2.JobFilter(**_job_filter(
            self.namespace, name, status, labels, error_type, error_contains)))
        return (await self._call("PurgeJobs", request, timeout=None)).purged

    async def emit_event(self, name: str, payload: Any = None) -> int:
        """Emit the durable event `name` with a JSON payload: jobs waiting for it
        (ctx.wait_for_event) wake up, and jobs that wait for it later get it at once.
        Emitting it again replaces the payload. Returns how many waiting jobs it woke."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"an event needs a non-empty name, got {name!r}")
        try:
            data = _serde.encode_result(payload)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the payload of event {name!r} must be JSON-serialisable: {exc}") from None
        response = await self._call("EmitEvent", jobs_pb2.EmitEventRequest(namespace=self.namespace, name=name,
                                                                           payload=data))
        return response.woken

    async def _get_event(self, name: str) -> types_pb2.Payload | None:
        try:
            response = await self._call("GetEvent", jobs_pb2.GetEventRequest(namespace=self.namespace, name=name))
        except JobNotFoundError:
            return None
        return response.payload

    def handle(self, job_id: str) -> JobHandle:
        """A handle on an existing job, e.g. one whose id was stored earlier."""
        return JobHandle(self, str(job_id))

    def on(self, event: str, callback: Callback) -> None:
        """Call `callback(JobEvent)` (sync or async) when a handler of this process starts,
        succeeds, fails an attempt (job:error) or fails for good (job:dead)."""
        if event not in self._callbacks:
            raise ValueError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
        self._callbacks[event].append(callback)

    # -- plumbing -------------------------------------------------------------------------

    async def _enqueue(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                       options: JobOptions) -> JobHandle:
        parent = current_context()
        if parent is None:
            return await self._send_enqueue(name, args, kwargs, options, parent_id=None)
        # Inside a handler the call spawns a child, and the spawn is a checkpoint: a retried
        # parent gets the same child back. The derived idempotency key makes the spawn itself
        # happen once even if the parent dies between the Enqueue and the checkpoint.
        key = parent._checkpoint(f"spawn:{name}")
        if key in parent._recorded:
            return JobHandle(self, parent._recorded[key], name=name, parent=parent)
        if options.idempotency_key is None:
            options = replace(options, idempotency_key=f"{parent.job_id}/{key}")
        handle = await self._send_enqueue(name, args, kwargs, options, parent_id=parent.job_id)
        await parent._checkpoint_value(key, handle.id)
        handle._parent = parent
        return handle

    async def _send_enqueue(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                            options: JobOptions, parent_id: str | None) -> JobHandle:
        request = options.request(namespace=self.namespace, name=name,
                                  payload=_serde.encode_call(name, args, kwargs), parent_id=parent_id)
        request.trace_context.update(_tracing.current_context())
        request.id = str(new_job_id())  # ours: a retried Enqueue returns this job, never a second one
        request.brief = True  # the id is all that is read
        response = await self._call_retrying("Enqueue", request)
        return JobHandle(self, response.job.id, name=name, deduplicated=response.deduplicated)

    async def _create_schedules(self) -> None:
        """Create or replace the schedules of the durable functions declared with `schedule=`.
        Every process serving them does it as it starts: replacing with the same settings changes
        nothing, so many workers starting at once make one schedule, and deploys keep its ticks."""
        scheduled = [fn for fn in self._functions.values() if fn.schedule is not None]
        try:
            for fn in scheduled:
                spec = fn.schedule
                assert spec is not None
                await self.schedules.create(fn.name, fn, spec.cron, timezone=spec.timezone, missed=spec.missed,
                                            replace=True)
        except BaseException:
            await self.stop()
            raise

    async def _call(self, method: str, request: Any, timeout: float | None = 30.0) -> Any:
        if self._jobs is None:
            raise NotStartedError()
        if self._calls is not None and method in _calls.FIELDS:
            with contextlib.suppress(_calls.Unsupported):
                return await self._calls.call(method, request, timeout)
        try:
            return await getattr(self._jobs, method)(request, timeout=timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc.code(), exc.details() or "") from None

    async def _call_retrying(self, method: str, request: Any) -> Any:
        """`_call` for requests that are safe to repeat (an enqueue with its own job id): while
        the sidecar or its database is unavailable, try again with backoff for at most
        `retry_unavailable` seconds, then raise SidecarUnavailableError."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.retry_unavailable
        delay = 0.05
        while True:
            try:
                return await self._call(method, request, timeout=max(1.0, min(30.0, give_up - loop.time())))
            except SidecarUnavailableError:
                if loop.time() + delay > give_up:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


STATE_VALUES = {name: value for value, name in STATES.items()}


def _job_filter(namespace: str, name: str | None, status: str | list[str] | None, labels: dict[str, str] | None,
                error_type: str | None, error_contains: str | None) -> dict[str, Any]:
    """The filter fields ListJobs, RetryJobs and PurgeJobs share, checked."""
    statuses = [status] if isinstance(status, str) else list(status or [])
    unknown = [s for s in statuses if s not in STATE_VALUES]
    if unknown:
        raise ValueError(f"unknown status {unknown[0]!r}; expected some of {', '.join(STATE_VALUES)}")
    if labels is not None and not (isinstance(labels, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        raise ValueError(f"labels must be a dict of strings to strings, got {labels!r}")
    return {
        "namespace": namespace, "name": name or "", "states": [STATE_VALUES[s] for s in statuses],
        "labels": labels or {}, "error_type": error_type or "", "error_contains": error_contains or "",
    }


def _translate(code: grpc.StatusCode, detail: str) -> Exception:
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(detail)
    if code == grpc.StatusCode.NOT_FOUND:
        return JobNotFoundError(detail)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return SidecarUnavailableError(f"perdured is unavailable ({code.name}): {detail}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"perdured refused the call: {detail} (the token option, or PERDURE_TOKEN)")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(detail)
    return PerdureError(f"{code.name}: {detail}")


class DurableFunction:
    """A function made durable. `await f(*args)` enqueues and returns a JobHandle;
    `f.options(...)(*args)` does the same with per-call options; `f.fn` is the plain function."""

    # Set by durable(..., schedule=...): the cron schedule this process creates as it starts.
    schedule: ScheduleSpec | None = None

    def __init__(self, client: Perdure, name: str, fn: Callable[..., Any], options: JobOptions,
                 limits: FunctionLimits | None = None) -> None:
        self.client = client
        self.name = name
        self.fn = fn
        self.default_options = options
        self.limits = limits or FunctionLimits()
        functools.update_wrapper(self, fn)

    async def __call__(self, *args: Any, **kwargs: Any) -> JobHandle:
        return await self.client._enqueue(self.name, args, kwargs, self.default_options)

    async def enqueue_many(self, calls: Iterable[Sequence[Any]], **options: Any) -> list[JobHandle]:
        """One job per item of `calls` (each a sequence of positional arguments), in batches:
        see `Perdure.enqueue_many`. The function's options apply, overridden by `options`."""
        merged = {k: v for k, v in vars(self.default_options.merged(**options)).items() if v is not None}
        return await self.client.enqueue_many(self.name, calls, **merged)

    def options(self, **overrides: Any) -> _BoundCall:
        """Per-call options: idempotency_key, delay or run_at, priority, labels, concurrency_key,
        start_within, max_duration, and any retry option or timeout."""
        return _BoundCall(self, self.default_options.merged(**overrides))

    def __repr__(self) -> str:
        return f"<durable function {self.name!r}>"


class _BoundCall:
    def __init__(self, function: DurableFunction, options: JobOptions) -> None:
        self._function, self._options = function, options

    async def __call__(self, *args: Any, **kwargs: Any) -> JobHandle:
        return await self._function.client._enqueue(self._function.name, args, kwargs, self._options)
