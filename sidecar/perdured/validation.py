"""Checks of what arrives on the wire. Every failure names the field; nothing is written."""

from __future__ import annotations

import contextlib
import json
import math
import operator
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import NamedTuple

from google.protobuf.duration_pb2 import Duration

from perdure._ids import new_job_id
from perdure.v1 import jobs_pb2, types_pb2, workers_pb2
from perdured import access
from perdured.backoff import RetryPolicy

DEFAULT_NAMESPACE = "default"
DEFAULT_TIMEOUT = 30.0
MAX_NAME_LENGTH = 255
MAX_KEY_LENGTH = 255
MAX_CONCURRENCY = 10_000
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE = 32, 64, 256
ENCODINGS = ("json", "bytes")

_NAMESPACE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

BACKOFF_NAMES = {
    types_pb2.BACKOFF_UNSPECIFIED: "exponential",
    types_pb2.BACKOFF_EXPONENTIAL: "exponential",
    types_pb2.BACKOFF_LINEAR: "linear",
    types_pb2.BACKOFF_FIXED: "fixed",
}


class InvalidArgument(ValueError):
    """The request is malformed; `field` says which part."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem

    def within(self, prefix: str) -> InvalidArgument:
        """The same refusal, its field named within `prefix` as the caller wrote it (jobs[7].name)."""
        return InvalidArgument(f"{prefix}{self.field}", self.problem)


@contextlib.contextmanager
def within(prefix: str) -> Iterator[None]:
    """A refusal inside names its field within `prefix` (filter.states)."""
    try:
        yield
    except InvalidArgument as exc:
        raise exc.within(prefix) from None


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    namespace: str
    name: str
    payload: bytes
    payload_encoding: str
    idempotency_key: str | None
    parent_id: uuid.UUID | None
    retry: RetryPolicy
    timeout: float
    delay: float
    run_at: datetime | None = None
    priority: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    concurrency_key: str | None = None
    start_within: float | None = None  # the cancellation policies, in seconds
    max_duration: float | None = None
    trace_context: dict[str, str] | None = None
    # Set by the scheduler: a worker of this sidecar that starts the job as it is inserted.
    worker_id: str | None = None


@dataclass(frozen=True)
class SharedJobs:
    """Jobs that share every option of `common` (EnqueueBatchRequest.common) but what is each
    one's own: its id, payload and idempotency key, one list entry per job. `common` is a job
    itself (checked once), whose own id, payload and key stand for nothing."""

    common: NewJob
    ids: list[uuid.UUID]
    payloads: list[bytes]
    payload_encodings: list[str]
    idempotency_keys: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)


# What a job of a batch with `common` gives itself; every other field comes from `common`.
OWN_FIELDS = ("payload", "id", "idempotency_key")
# What each job of SharedJobs carries as its own (a payload's encoding goes with it).
SHARED_OWN_FIELDS = (*OWN_FIELDS, "payload_encoding")
_options_of = operator.attrgetter(*(f.name for f in fields(NewJob) if f.name not in SHARED_OWN_FIELDS))


def shared(jobs: list[NewJob]) -> SharedJobs | None:
    """`jobs` as SharedJobs if they share every option but what is each one's own, else None.
    Jobs enqueued one at a time by the same code and gathered into one statement usually do:
    sent as shared, their options are converted once rather than once per job."""
    options = _options_of(jobs[0])
    if any(_options_of(job) != options for job in jobs[1:]):
        return None
    return SharedJobs(jobs[0], [job.id for job in jobs], [job.payload for job in jobs],
                      [job.payload_encoding for job in jobs], [job.idempotency_key for job in jobs])


class JobIdentity(NamedTuple):
    """What tells a new job from the others: its id, and within its namespace its key."""

    id: uuid.UUID
    namespace: str
    name: str
    idempotency_key: str | None


def identities(jobs: list[NewJob] | SharedJobs) -> list[JobIdentity]:
    """Each job's identity, in order."""
    if isinstance(jobs, SharedJobs):
        namespace, name = jobs.common.namespace, jobs.common.name
        return [JobIdentity(job_id, namespace, name, key) for job_id, key in zip(jobs.ids, jobs.idempotency_keys,
                                                                                    strict=True)]
    return [JobIdentity(job.id, job.namespace, job.name, job.idempotency_key) for job in jobs]


def namespace(value: str, field: str = "namespace") -> str:
    """The namespace a request names ("" is the default one), once the caller's token is known
    to allow it (access.PermissionDenied otherwise): every request's namespace is read here."""
    if not value:
        value = DEFAULT_NAMESPACE
    elif not _NAMESPACE.fullmatch(value):
        raise InvalidArgument(field, "use 1 to 128 letters, digits or . _ : -")
    access.require(value)
    return value


def namespace_or_all(value: str, what: str, field: str = "namespace") -> str | None:
    """For calls where no namespace means every one (Admin): None for "every", which only a
    token for every namespace may ask for."""
    if not value:
        access.require_every_namespace(what)
        return None
    return namespace(value, field)


def function_name(value: str, field: str = "name") -> str:
    if not value or not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {MAX_NAME_LENGTH}")
    if _CONTROL.search(value):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def job_id(value: str, field: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument(field, f"{value!r} is not a job id (a UUID)") from None


MAX_SECONDS = 100 * 365 * 24 * 3600  # no duration of Perdure's is longer than a century


def seconds(value: Duration, field: str, *, allow_zero: bool = True) -> float:
    """A Duration as float seconds; negative, malformed or absurdly long ones are refused."""
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument(field, "must not be negative")
    if value.seconds > MAX_SECONDS:
        raise InvalidArgument(field, f"is {value.seconds} s; at most {MAX_SECONDS} s (100 years)")
    if value.nanos >= 1_000_000_000:
        raise InvalidArgument(field, "nanos must be below 1e9")
    total = value.seconds + value.nanos / 1e9
    if not allow_zero and total == 0:
        raise InvalidArgument(field, "must be greater than zero")
    return total


def payload(value: types_pb2.Payload, max_bytes: int, field: str = "payload") -> tuple[bytes, str]:
    encoding = value.encoding or "json"
    if encoding not in ENCODINGS:
        raise InvalidArgument(f"{field}.encoding", f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    data = bytes(value.data)
    if len(data) > max_bytes:
        raise InvalidArgument(f"{field}.data", f"is {len(data)} bytes; the limit is {max_bytes}")
    if encoding == "json" and data:
        try:
            json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument(f"{field}.data", f"is not valid UTF-8 JSON ({exc})") from None
    return data, encoding


def retry_policy(value: types_pb2.RetryPolicy, field: str = "retry") -> RetryPolicy:
    defaults = RetryPolicy()
    max_attempts = value.max_attempts if value.HasField("max_attempts") else defaults.max_attempts
    if max_attempts < 1:
        raise InvalidArgument(f"{field}.max_attempts", f"must be at least 1, got {max_attempts}")
    if value.backoff not in BACKOFF_NAMES:
        raise InvalidArgument(f"{field}.backoff", f"unknown value {value.backoff}")
    initial = seconds(value.initial_delay, f"{field}.initial_delay") if value.HasField("initial_delay") else defaults.initial_delay
    maximum = seconds(value.max_delay, f"{field}.max_delay") if value.HasField("max_delay") else defaults.max_delay
    if maximum < initial:
        raise InvalidArgument(f"{field}.max_delay", f"({maximum} s) must not be less than initial_delay ({initial} s)")
    jitter = value.jitter if value.HasField("jitter") else defaults.jitter
    if not math.isfinite(jitter) or not 0 <= jitter <= 1:
        raise InvalidArgument(f"{field}.jitter", f"must be between 0 and 1, got {jitter}")
    return RetryPolicy(max_attempts=max_attempts, backoff=BACKOFF_NAMES[value.backoff],
                       initial_delay=round(initial, 3), max_delay=round(maximum, 3), jitter=jitter)


def enqueue_request(request: jobs_pb2.EnqueueRequest, max_payload_bytes: int) -> NewJob:
    data, encoding = payload(request.payload, max_payload_bytes)
    key = text(request.idempotency_key, "idempotency_key") or None
    if request.HasField("run_at") and request.HasField("delay"):
        raise InvalidArgument("run_at", "give either run_at or delay, not both")
    if not MIN_PRIORITY <= request.priority <= MAX_PRIORITY:
        raise InvalidArgument("priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {request.priority}")
    concurrency_key = request.concurrency_key or None
    if concurrency_key is not None and (len(concurrency_key) > MAX_KEY_LENGTH or _CONTROL.search(concurrency_key)):
        raise InvalidArgument("concurrency_key", f"must be at most {MAX_KEY_LENGTH} characters, no control characters")
    return NewJob(
        trace_context=trace_context(dict(request.trace_context)) or None,
        concurrency_key=concurrency_key,
        start_within=(round(seconds(request.start_within, "start_within", allow_zero=False), 3)
                      if request.HasField("start_within") else None),
        max_duration=(round(seconds(request.max_duration, "max_duration", allow_zero=False), 3)
                      if request.HasField("max_duration") else None),
        run_at=request.run_at.ToDatetime(tzinfo=UTC) if request.HasField("run_at") else None,
        priority=request.priority,
        labels=job_labels(dict(request.labels)),
        id=job_id(request.id, "id") if request.id else new_job_id(),
        namespace=namespace(request.namespace),
        name=function_name(request.name),
        payload=data,
        payload_encoding=encoding,
        idempotency_key=key,
        parent_id=job_id(request.parent_id, "parent_id") if request.parent_id else None,
        retry=retry_policy(request.retry),
        timeout=round(seconds(request.timeout, "timeout", allow_zero=False), 3) if request.HasField("timeout") else DEFAULT_TIMEOUT,
        delay=round(seconds(request.delay, "delay"), 3) if request.HasField("delay") else 0.0,
    )


def enqueue_batch_request(request: jobs_pb2.EnqueueBatchRequest, max_payload_bytes: int) -> list[NewJob] | SharedJobs:
    """The jobs of a batch, each checked as an EnqueueRequest of its own; with `common`, its
    options are checked once and each job for what is its own. A failure names the job."""
    for index, item in enumerate(request.jobs):
        if item.brief:
            raise InvalidArgument(f"jobs[{index}].brief", "is for a single Enqueue: a batch is answered in brief "
                                                          "by its own brief field")
    if request.common.brief:
        raise InvalidArgument("common.brief", "is for a single Enqueue: a batch is answered in brief by its own "
                                              "brief field")
    if not request.HasField("common"):
        return [_job_within(f"jobs[{index}].", item, max_payload_bytes) for index, item in enumerate(request.jobs)]
    for descriptor, _ in request.common.ListFields():
        if descriptor.name in OWN_FIELDS:
            raise InvalidArgument(f"common.{descriptor.name}", "is each job's own: give it in jobs[], not in common")
    common = _job_within("common.", request.common, max_payload_bytes)
    ids, payloads, encodings, keys = [], [], [], []
    for index, item in enumerate(request.jobs):
        try:  # a refusal is named within its job once it happens, not prepared for every job
            for descriptor, _ in item.ListFields():
                if descriptor.name not in OWN_FIELDS:
                    raise InvalidArgument(descriptor.name, "comes from common: with common, a job gives only its "
                                                           "payload, id and idempotency_key")
            data, encoding = payload(item.payload, max_payload_bytes)
            ids.append(job_id(item.id) if item.id else new_job_id())
            payloads.append(data)
            encodings.append(encoding)
            keys.append(text(item.idempotency_key, "idempotency_key") or None)
        except InvalidArgument as exc:
            raise exc.within(f"jobs[{index}].") from None
    return SharedJobs(common, ids, payloads, encodings, keys)


def _job_within(prefix: str, item: jobs_pb2.EnqueueRequest, max_payload_bytes: int) -> NewJob:
    with within(prefix):
        return enqueue_request(item, max_payload_bytes)


MAX_TRACE_ENTRIES, MAX_TRACE_TEXT = 8, 512


def trace_context(entries: dict[str, str], field: str = "trace_context") -> dict[str, str]:
    if len(entries) > MAX_TRACE_ENTRIES:
        raise InvalidArgument(field, f"has {len(entries)} entries; at most {MAX_TRACE_ENTRIES}")
    for key, value in entries.items():
        if not key or len(key) > MAX_TRACE_TEXT or len(value) > MAX_TRACE_TEXT:
            raise InvalidArgument(field, f"entry {key[:80]!r}: keys and values up to {MAX_TRACE_TEXT} characters")
    return entries


def text(value: str, field: str, max_length: int = MAX_KEY_LENGTH) -> str:
    """Free text the database keeps: no NUL character (PostgreSQL cannot store one), bounded."""
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain a NUL character")
    if len(value) > max_length:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {max_length}")
    return value


def job_labels(labels: dict[str, str], field: str = "labels") -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(field, f"has {len(labels)} labels; at most {MAX_LABELS}")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or _CONTROL.search(key):
            raise InvalidArgument(field, f"key {key[:80]!r} must be 1 to {MAX_LABEL_KEY} characters, no control characters")
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(field, f"value of {key!r} is {len(value)} characters long; at most {MAX_LABEL_VALUE}")
        text(value, f"{field}[{key!r}]", MAX_LABEL_VALUE)
    return labels


def job_states(values: list[int], field: str = "states") -> list[str]:
    names = []
    for value in values:
        name = STATE_NAMES.get(value)  # type: ignore[call-overload]
        if name is None:
            raise InvalidArgument(field, f"unknown job state {value}")
        names.append(name)
    return names


@dataclass(frozen=True)
class FunctionLimits:
    """Flow control a worker declares for one function (see FunctionLimits in workers.proto)."""

    name: str
    concurrency: int | None = None
    key_concurrency: int = 1
    rate_limit: tuple[int, float] | None = None  # (starts, per seconds)
    key_rate_limit: tuple[int, float] | None = None


@dataclass(frozen=True)
class Registration:
    namespace: str
    names: frozenset[str]
    concurrency: int
    limits: dict[str, FunctionLimits]


def registration(register: workers_pb2.Register, max_concurrency: int = MAX_CONCURRENCY) -> Registration:
    ns = namespace(register.namespace, "register.namespace")
    text(register.worker_name, "register.worker_name")
    text(register.sdk, "register.sdk")
    if not register.names:
        raise InvalidArgument("register.names", "must name at least one function")
    names = frozenset(function_name(n, "register.names") for n in register.names)
    if not 1 <= register.concurrency <= max_concurrency:
        raise InvalidArgument("register.concurrency", f"must be between 1 and {max_concurrency} (this sidecar's "
                                                      f"--max-worker-concurrency), got {register.concurrency}")
    limits: dict[str, FunctionLimits] = {}
    for index, declared in enumerate(register.limits):
        where = f"register.limits[{index}]"
        if declared.name not in names:
            raise InvalidArgument(f"{where}.name", f"{declared.name!r} is not one of the names registered")
        if declared.name in limits:
            raise InvalidArgument(f"{where}.name", f"{declared.name!r} has limits twice")
        if declared.concurrency < 0:
            raise InvalidArgument(f"{where}.concurrency", f"must be 0 (no limit) or more, got {declared.concurrency}")
        key_concurrency = declared.key_concurrency if declared.HasField("key_concurrency") else 1
        if key_concurrency < 1:
            raise InvalidArgument(f"{where}.key_concurrency", f"must be at least 1, got {key_concurrency}")
        limits[declared.name] = FunctionLimits(
            name=declared.name, concurrency=declared.concurrency or None, key_concurrency=key_concurrency,
            rate_limit=_rate_limit(declared.rate_limit, f"{where}.rate_limit") if declared.HasField("rate_limit") else None,
            key_rate_limit=(_rate_limit(declared.key_rate_limit, f"{where}.key_rate_limit")
                            if declared.HasField("key_rate_limit") else None),
        )
    return Registration(ns, names, register.concurrency, limits)


def _rate_limit(value: workers_pb2.RateLimit, field: str) -> tuple[int, float]:
    if value.limit < 1:
        raise InvalidArgument(f"{field}.limit", f"must be at least 1, got {value.limit}")
    return value.limit, round(seconds(value.period, f"{field}.period", allow_zero=False), 3)


@dataclass(frozen=True)
class JobFilter:
    """Which jobs ListJobs, RetryJobs and PurgeJobs act on (None: any)."""

    namespace: str
    name: str | None = None
    states: list[str] | None = None
    labels: dict[str, str] | None = None
    error_type: str | None = None
    error_contains: str | None = None


def job_filter(request: jobs_pb2.ListJobsRequest | jobs_pb2.JobFilter,
               *, allowed_states: frozenset[str] | None = None, default_states: list[str] | None = None) -> JobFilter:
    states = job_states(list(request.states)) or default_states
    if allowed_states is not None and states and not set(states) <= allowed_states:
        refused = ", ".join(sorted(set(states) - allowed_states))
        raise InvalidArgument("states", f"{refused} not allowed here; use {', '.join(sorted(allowed_states))}")
    return JobFilter(
        namespace=namespace(request.namespace),
        name=function_name(request.name) if request.name else None,
        states=states,
        labels=job_labels(dict(request.labels)) or None,
        error_type=text(request.error_type, "error_type") or None,
        error_contains=text(request.error_contains, "error_contains") or None,
    )


# JOB_STATE_PENDING -> "pending", and so on: the names the schema uses.
STATE_NAMES = {value: name.removeprefix("JOB_STATE_").lower() for name, value in types_pb2.JobState.items() if value}

