"""Per-function and per-call options, checked here so that mistakes fail at the call site."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration

from perdure.v1 import jobs_pb2, types_pb2, workers_pb2

BACKOFFS = {
    "exponential": types_pb2.BACKOFF_EXPONENTIAL,
    "linear": types_pb2.BACKOFF_LINEAR,
    "fixed": types_pb2.BACKOFF_FIXED,
}


@dataclass(frozen=True)
class JobOptions:
    """Unset (None) options take the sidecar's defaults: 3 attempts, exponential backoff from
    1 s up to 60 s with 0.1 jitter, a 30 s timeout per attempt."""

    max_attempts: int | None = None
    backoff: str | None = None
    initial_delay: float | None = None
    max_delay: float | None = None
    jitter: float | None = None
    timeout: float | None = None
    idempotency_key: str | None = None
    delay: float | None = None
    run_at: datetime | None = None
    priority: int | None = None
    labels: dict[str, str] | None = None
    concurrency_key: str | None = None
    start_within: float | None = None
    max_duration: float | None = None

    def merged(self, **overrides: Any) -> JobOptions:
        if not overrides:  # the common call (`enqueue(name, *args)`): nothing to copy
            self.check()
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        options = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        options.check()
        return options

    def check(self) -> None:
        if self.max_attempts is not None and (not _is_int(self.max_attempts) or self.max_attempts < 1):
            raise ValueError(f"max_attempts must be an integer of at least 1, got {self.max_attempts!r}")
        if self.backoff is not None and self.backoff not in BACKOFFS:
            raise ValueError(f"backoff must be one of {', '.join(BACKOFFS)}, got {self.backoff!r}")
        for name in ("initial_delay", "max_delay", "delay"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value < 0):
                raise ValueError(f"{name} must be a number of seconds, not negative, got {value!r}")
        for name in ("timeout", "start_within", "max_duration"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise ValueError(f"{name} must be a number of seconds greater than 0, got {value!r}")
        if self.jitter is not None and (not _is_number(self.jitter) or not 0 <= self.jitter <= 1):
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if (self.initial_delay is not None and self.max_delay is not None
                and self.max_delay < self.initial_delay):
            raise ValueError(f"max_delay ({self.max_delay}) must not be less than initial_delay ({self.initial_delay})")
        if self.run_at is not None and (not isinstance(self.run_at, datetime) or self.run_at.tzinfo is None):
            raise ValueError(f"run_at must be a datetime with a time zone, got {self.run_at!r}")
        if self.run_at is not None and self.delay:
            raise ValueError("give either delay or run_at, not both")
        if self.priority is not None and (not _is_int(self.priority) or not -1000 <= self.priority <= 1000):
            raise ValueError(f"priority must be an integer from -1000 to 1000, got {self.priority!r}")
        if self.labels is not None and (not isinstance(self.labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items())):
            raise ValueError(f"labels must be a dict of strings to strings, got {self.labels!r}")
        for name in ("idempotency_key", "concurrency_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")

    def request(self, *, namespace: str, name: str, payload: types_pb2.Payload | None,
                parent_id: str | None = None) -> jobs_pb2.EnqueueRequest:
        retry = types_pb2.RetryPolicy(backoff=BACKOFFS.get(self.backoff or "", types_pb2.BACKOFF_UNSPECIFIED))
        if self.max_attempts is not None:
            retry.max_attempts = self.max_attempts
        if self.initial_delay is not None:
            retry.initial_delay.CopyFrom(_duration(self.initial_delay))
        if self.max_delay is not None:
            retry.max_delay.CopyFrom(_duration(self.max_delay))
        if self.jitter is not None:
            retry.jitter = self.jitter
        request = jobs_pb2.EnqueueRequest(
            namespace=namespace, name=name, payload=payload, retry=retry,
            idempotency_key=self.idempotency_key or "", parent_id=parent_id or "",
        )
        if self.timeout is not None:
            request.timeout.CopyFrom(_duration(self.timeout))
        if self.delay:
            request.delay.CopyFrom(_duration(self.delay))
        if self.run_at is not None:
            request.run_at.FromDatetime(self.run_at)
        if self.priority:
            request.priority = self.priority
        if self.labels:
            request.labels.update(self.labels)
        if self.concurrency_key:
            request.concurrency_key = self.concurrency_key
        if self.start_within is not None:
            request.start_within.CopyFrom(_duration(self.start_within))
        if self.max_duration is not None:
            request.max_duration.CopyFrom(_duration(self.max_duration))
        return request


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` starts per `per` seconds (every attempt counts, a resumption too)."""

    limit: int
    per: float

    def __post_init__(self) -> None:
        if not _is_int(self.limit) or self.limit < 1:
            raise ValueError(f"a rate limit's limit must be an integer of at least 1, got {self.limit!r}")
        if not _is_number(self.per) or self.per <= 0:
            raise ValueError(f"a rate limit's period (per) must be a number of seconds greater than 0, got {self.per!r}")

    def message(self) -> workers_pb2.RateLimit:
        return workers_pb2.RateLimit(limit=self.limit, period=_duration(self.per))


@dataclass(frozen=True)
class FunctionLimits:
    """Flow control of one durable function, across every sidecar sharing the database:
    at most `concurrency` jobs in progress (running or suspended) at once, at most
    `key_concurrency` (default 1) per concurrency key, and at most `rate_limit` starts per
    period for the function and `key_rate_limit` per key."""

    concurrency: int | None = None
    key_concurrency: int | None = None
    rate_limit: RateLimit | None = None
    key_rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        for name in ("concurrency", "key_concurrency"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")
        for name in ("rate_limit", "key_rate_limit"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, RateLimit):
                raise ValueError(f"{name} must be a perdure.RateLimit(limit, per=seconds), got {value!r}")

    @property
    def declared(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def message(self, name: str) -> workers_pb2.FunctionLimits:
        message = workers_pb2.FunctionLimits(name=name, concurrency=self.concurrency or 0)
        if self.key_concurrency is not None:
            message.key_concurrency = self.key_concurrency
        if self.rate_limit is not None:
            message.rate_limit.CopyFrom(self.rate_limit.message())
        if self.key_rate_limit is not None:
            message.key_rate_limit.CopyFrom(self.key_rate_limit.message())
        return message


def _duration(seconds: float) -> Duration:
    message = Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))
