"""Hostile and malformed input, generated (hypothesis): every call gets an answer with a
precise status code and message, never INTERNAL or UNKNOWN; the sidecar keeps serving; a
refused call changes nothing in the database."""

from __future__ import annotations

import os

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from perdure.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc, types_pb2

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the dev dependencies")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# The codes a refusal may carry; anything else (INTERNAL, UNKNOWN, a hang) is a defect.
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
FUZZ = settings(max_examples=int(os.environ.get("PERDURE_FUZZ_EXAMPLES", "120")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=400),
    st.sampled_from(["", " ", "\x00", "a\nb", "é:ü", "x" * 256, "default", "jobs:send", "*"]),
)
big_ints = st.one_of(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.sampled_from([0, -1, 1, 2**31 - 1]))
durations = st.builds(Duration, seconds=st.integers(min_value=-(2**40), max_value=2**40),
                      nanos=st.integers(min_value=-(10**9) + 1, max_value=10**9 - 1))
timestamps = st.builds(Timestamp, seconds=st.integers(min_value=-62135596800, max_value=253402300799),
                       nanos=st.integers(min_value=0, max_value=10**9 - 1))
payloads = st.builds(types_pb2.Payload, data=st.one_of(st.binary(max_size=64), st.sampled_from([b'{"args": []}', b"{",
                                                                                               b"\xff\xfe"])),
                     encoding=st.sampled_from(["", "json", "bytes", "msgpack", "JSON"]))
labels = st.dictionaries(st.text(max_size=70), st.text(max_size=300), max_size=40)


@st.composite
def enqueue_requests(draw: st.DrawFn) -> jobs_pb2.EnqueueRequest:
    request = jobs_pb2.EnqueueRequest(
        namespace=draw(texts), name=draw(texts), payload=draw(payloads), idempotency_key=draw(texts),
        priority=draw(big_ints), labels=draw(labels), concurrency_key=draw(texts), parent_id=draw(texts),
        id=draw(st.one_of(st.just(""), texts, st.uuids().map(str))),
    )
    retry = types_pb2.RetryPolicy(backoff=draw(st.integers(min_value=0, max_value=9)))
    if draw(st.booleans()):
        retry.max_attempts = draw(big_ints)
    if draw(st.booleans()):
        retry.jitter = draw(st.floats(allow_nan=True, allow_infinity=True))
    if draw(st.booleans()):
        retry.initial_delay.CopyFrom(draw(durations))
    request.retry.CopyFrom(retry)
    for field in ("timeout", "delay", "start_within", "max_duration"):
        if draw(st.booleans()):
            getattr(request, field).CopyFrom(draw(durations))
    if draw(st.booleans()):
        request.run_at.CopyFrom(draw(timestamps))
    return request


def job_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM perdure.jobs").fetchone()
        return int(row[0]) if row else 0


def call(method, request) -> object:
    """Call; return the response, or the refusal's code (failing on any other code)."""
    try:
        return method(request, timeout=30)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        assert code in REFUSALS, f"{code}: {exc.details()}"  # type: ignore[attr-defined]
        assert exc.details()  # type: ignore[attr-defined]  # a message that says what is wrong
        return code


@pytest.fixture
def stubs(threaded_sidecar):
    with grpc.insecure_channel(threaded_sidecar.address) as channel:
        yield jobs_pb2_grpc.JobsStub(channel), admin_pb2_grpc.AdminStub(channel)


@FUZZ
@given(request=enqueue_requests())
def test_enqueue__any_input_is_stored_or_refused_with_a_reason(stubs, database_url, request) -> None:
    jobs, _ = stubs
    before = job_count(database_url)
    outcome = call(jobs.Enqueue, request)
    if isinstance(outcome, grpc.StatusCode):
        assert job_count(database_url) == before  # a refused call changes nothing
    # The same job twice in a batch: checked as one is, stored once if at all (same id or key).
    batch = call(jobs.EnqueueBatch, jobs_pb2.EnqueueBatchRequest(jobs=[request, request]))
    assert isinstance(batch, grpc.StatusCode) == isinstance(outcome, grpc.StatusCode)


@FUZZ
@given(job_id=texts, namespace=texts, wait=durations, states=st.lists(st.integers(min_value=-3, max_value=12),
                                                                      max_size=4),
       page_size=big_ints, token=texts, error_type=texts)
def test_reads_and_changes__by_any_id_in_any_namespace_answer_precisely(stubs, database_url, job_id, namespace,
                                                                        wait, states, page_size, token,
                                                                        error_type) -> None:
    jobs, admin = stubs
    before = job_count(database_url)
    call(jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id, namespace=namespace))
    call(jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id, namespace=namespace))
    call(jobs.RetryJob, jobs_pb2.RetryJobRequest(id=job_id, namespace=namespace))
    request = jobs_pb2.AwaitJobRequest(id=job_id, namespace=namespace)
    if wait.seconds > 0:
        wait = Duration(seconds=0)  # never wait long: the answer, not the wait, is under test
    request.wait.CopyFrom(wait)
    call(jobs.AwaitJob, request)
    call(jobs.ListJobs, jobs_pb2.ListJobsRequest(namespace=namespace, states=states, page_size=page_size,
                                                 page_token=token, error_type=error_type))
    job_filter = jobs_pb2.JobFilter(namespace=namespace, states=states, error_type=error_type)
    call(jobs.RetryJobs, jobs_pb2.RetryJobsRequest(filter=job_filter))
    stats = admin_pb2.GetStatsRequest(namespace=namespace)
    stats.window.CopyFrom(wait)
    call(admin.GetStats, stats)
    call(jobs.EmitEvent, jobs_pb2.EmitEventRequest(namespace=namespace, name=job_id))
    assert job_count(database_url) == before
