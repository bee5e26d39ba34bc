"""What the sidecar accepts on the wire, and the field every refusal names."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from google.protobuf.duration_pb2 import Duration

from perdure.v1 import jobs_pb2, types_pb2, workers_pb2
from perdured import validation
from perdured.backoff import RetryPolicy
from perdured.validation import InvalidArgument

LIMIT = 1024


def request(**fields: object) -> jobs_pb2.EnqueueRequest:
    fields.setdefault("name", "emails:send")
    return jobs_pb2.EnqueueRequest(**fields)  # type: ignore[arg-type]


def refused(message: jobs_pb2.EnqueueRequest) -> str:
    with pytest.raises(InvalidArgument) as caught:
        validation.enqueue_request(message, LIMIT)
    return str(caught.value)


def test_minimal_request__takes_every_default() -> None:
    job = validation.enqueue_request(request(), LIMIT)
    assert job.namespace == "default"
    assert (job.retry.max_attempts, job.retry.backoff, job.retry.initial_delay, job.retry.max_delay,
            job.retry.jitter) == (3, "exponential", 1.0, 60.0, 0.1)
    assert (job.timeout, job.delay, job.idempotency_key, job.parent_id) == (30.0, 0.0, None, None)
    assert job.id.version == 7


def test_full_request__is_read_to_the_millisecond() -> None:
    job = validation.enqueue_request(request(
        namespace="billing", idempotency_key="k-1",
        payload=types_pb2.Payload(data=b'{"args":[1]}', encoding="json"),
        retry=types_pb2.RetryPolicy(max_attempts=7, backoff=types_pb2.BACKOFF_LINEAR,
                                    initial_delay=Duration(nanos=250_400_000), max_delay=Duration(seconds=9),
                                    jitter=0.0),
        timeout=Duration(seconds=2, nanos=1_000_000), delay=Duration(seconds=5),
    ), LIMIT)
    assert (job.namespace, job.idempotency_key) == ("billing", "k-1")
    assert (job.retry.max_attempts, job.retry.backoff, job.retry.initial_delay, job.retry.max_delay,
            job.retry.jitter) == (7, "linear", 0.25, 9.0, 0.0)
    assert (job.timeout, job.delay) == (2.001, 5.0)


@pytest.mark.parametrize(("message", "field"), [
    (request(name=""), "name"),
    (request(name="   "), "name"),
    (request(name="x" * 256), "name"),
    (request(name="bad\nname"), "name"),
    (request(namespace="has space"), "namespace"),
    (request(namespace="n" * 129), "namespace"),
    (request(retry=types_pb2.RetryPolicy(max_attempts=0)), "retry.max_attempts"),
    (request(retry=types_pb2.RetryPolicy(max_attempts=-2)), "retry.max_attempts"),
    (request(retry=types_pb2.RetryPolicy(backoff=42)), "retry.backoff"),  # type: ignore[arg-type]
    (request(retry=types_pb2.RetryPolicy(jitter=1.5)), "retry.jitter"),
    (request(retry=types_pb2.RetryPolicy(jitter=float("nan"))), "retry.jitter"),
    (request(retry=types_pb2.RetryPolicy(initial_delay=Duration(seconds=-1))), "retry.initial_delay"),
    (request(retry=types_pb2.RetryPolicy(initial_delay=Duration(seconds=10), max_delay=Duration(seconds=1))),
     "retry.max_delay"),
    (request(delay=Duration(seconds=-5)), "delay"),
    (request(timeout=Duration(seconds=0)), "timeout"),
    (request(timeout=Duration(seconds=-1)), "timeout"),
    (request(payload=types_pb2.Payload(data=b"x" * (LIMIT + 1), encoding="bytes")), "payload.data"),
    (request(payload=types_pb2.Payload(data=b"{not json")), "payload.data"),
    (request(payload=types_pb2.Payload(data=b"\xff\xfe", encoding="json")), "payload.data"),
    (request(payload=types_pb2.Payload(data=b"1", encoding="msgpack")), "payload.encoding"),
    (request(idempotency_key="k" * 256), "idempotency_key"),
    (request(parent_id="not-a-uuid"), "parent_id"),
    (request(concurrency_key="k" * 256), "concurrency_key"),
    (request(concurrency_key="a\nb"), "concurrency_key"),
    (request(start_within=Duration(seconds=0)), "start_within"),
    (request(max_duration=Duration(seconds=-1)), "max_duration"),
])
def test_bad_request__is_refused_naming_the_field(message: jobs_pb2.EnqueueRequest, field: str) -> None:
    assert refused(message).startswith(f"{field}: ")


def test_bytes_payload__is_not_inspected() -> None:
    job = validation.enqueue_request(request(payload=types_pb2.Payload(data=b"\xff\x00", encoding="bytes")), LIMIT)
    assert (job.payload, job.payload_encoding) == (b"\xff\x00", "bytes")


def test_unknown_state_filter__is_refused() -> None:
    with pytest.raises(InvalidArgument, match="states: unknown job state 99"):
        validation.job_states([types_pb2.JOB_STATE_DEAD, 99])


@pytest.mark.parametrize(("register", "field"), [
    (workers_pb2.Register(names=[], concurrency=1), "register.names"),
    (workers_pb2.Register(names=[""], concurrency=1), "register.names"),
    (workers_pb2.Register(names=["a"], concurrency=0), "register.concurrency"),
    (workers_pb2.Register(names=["a"], concurrency=10_001), "register.concurrency"),
    (workers_pb2.Register(names=["a"], concurrency=1, namespace="a b"), "register.namespace"),
    (workers_pb2.Register(names=["a"], concurrency=1, limits=[workers_pb2.FunctionLimits(name="b")]),
     "register.limits[0].name"),
    (workers_pb2.Register(names=["a"], concurrency=1, limits=[workers_pb2.FunctionLimits(name="a"),
                                                               workers_pb2.FunctionLimits(name="a")]),
     "register.limits[1].name"),
    (workers_pb2.Register(names=["a"], concurrency=1, limits=[workers_pb2.FunctionLimits(name="a", concurrency=-1)]),
     "register.limits[0].concurrency"),
    (workers_pb2.Register(names=["a"], concurrency=1, limits=[workers_pb2.FunctionLimits(name="a", key_concurrency=0)]),
     "register.limits[0].key_concurrency"),
    (workers_pb2.Register(names=["a"], concurrency=1, limits=[workers_pb2.FunctionLimits(
        name="a", rate_limit=workers_pb2.RateLimit(limit=0, period=Duration(seconds=1)))]),
     "register.limits[0].rate_limit.limit"),
    (workers_pb2.Register(names=["a"], concurrency=1, limits=[workers_pb2.FunctionLimits(
        name="a", key_rate_limit=workers_pb2.RateLimit(limit=1))]),
     "register.limits[0].key_rate_limit.period"),
])
def test_bad_registration__is_refused_naming_the_field(register: workers_pb2.Register, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation.registration(register)
    assert str(caught.value).startswith(f"{field}: ")


def test_registration__reads_the_limits() -> None:
    registration = validation.registration(workers_pb2.Register(names=["a", "b"], concurrency=4, limits=[
        workers_pb2.FunctionLimits(name="a", concurrency=5, key_concurrency=2,
                                   rate_limit=workers_pb2.RateLimit(limit=10, period=Duration(seconds=60)))]))
    assert registration.limits == {"a": validation.FunctionLimits(
        name="a", concurrency=5, key_concurrency=2, rate_limit=(10, 60.0), key_rate_limit=None)}


def test_purge_filter__refuses_unfinished_states() -> None:
    with pytest.raises(InvalidArgument, match="states: running not allowed here"):
        validation.job_filter(jobs_pb2.JobFilter(states=[types_pb2.JOB_STATE_RUNNING]),
                              allowed_states=frozenset({"success", "dead", "cancelled"}))


def test_shared__gathers_jobs_alike_but_for_their_own_fields_and_no_others() -> None:
    first = validation.NewJob(id=uuid.uuid4(), namespace="n", name="f", payload=b"[1]", payload_encoding="json",
                              idempotency_key=None, parent_id=None, retry=RetryPolicy(), timeout=60, delay=0,
                              labels={"team": "a"}, worker_id="w")
    second = replace(first, id=uuid.uuid4(), payload=b"x", payload_encoding="bytes", idempotency_key="k")
    gathered = validation.shared([first, second])
    assert gathered is not None and gathered.common == first
    assert (gathered.ids, gathered.payloads, gathered.payload_encodings, gathered.idempotency_keys) == (
        [first.id, second.id], [b"[1]", b"x"], ["json", "bytes"], [None, "k"])
    for apart in ({"labels": {"team": "b"}}, {"worker_id": None}, {"delay": 1.0}, {"trace_context": {"a": "b"}},
                  {"retry": RetryPolicy(max_attempts=1)}, {"name": "g"}, {"parent_id": uuid.uuid4()}):
        assert validation.shared([first, replace(second, **apart)]) is None, apart
