"""Hostile messages on the Work stream. What the sidecar does with each:

- a first message that is not a valid Register: the stream ends with INVALID_ARGUMENT and a
  message naming the field ("register.concurrency: ...");
- a message bigger than the sidecar takes: the stream ends with RESOURCE_EXHAUSTED (the jobs
  it held go back to pending, as for any dropped stream);
- an Outcome for an attempt the worker does not hold (someone else's job, a second answer to
  the same attempt, a made-up one): an OutcomeAck with recorded=false, nothing written;
- a RecordStep for an attempt the worker does not hold, or with an oversized result: a StepAck
  with recorded=false and a logged warning (`worker.unheld_job`, `step.refused`);
- a Heartbeat, ReportProgress or ReportLog for an attempt the worker does not hold, an Outcome
  whose job id is not a UUID, a second Register, an empty message: ignored, with a logged
  warning (`worker.unheld_job`, `worker.bad_outcome`, `worker.unexpected_message`).

Whatever comes, the sidecar keeps serving, and a refused or ignored message changes nothing
in the database.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

import perdure
from perdure.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc, types_pb2, workers_pb2, workers_pb2_grpc
from perdured.launch import spawn

from ..conftest import PerduredProcess
from .test_fuzz import FUZZ, big_ints, payloads, texts
from .test_grpc_contract import RawWorker

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the dev dependencies")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MAX_PAYLOAD = 64 * 1024  # small, so that "too big" is cheap to send
# Every table a worker's message could write to (workers: its own row, written on register).
TABLES = ("jobs", "attempts", "steps", "job_logs", "events", "functions", "schedules")


def snapshot(db: psycopg.Connection) -> dict[str, list[str]]:
    """Every row of TABLES as text, but the lease: the sidecar renews it on its own."""
    rows = {table: [r[0] for r in db.execute(f"SELECT t::text FROM perdure.{table} t ORDER BY 1")]
            for table in TABLES if table != "jobs"}
    rows["jobs"] = [r[0] for r in db.execute(
        "SELECT (to_jsonb(t) - 'lease_expires_at')::text FROM perdure.jobs t ORDER BY 1")]
    return rows


@pytest.fixture
def sidecar_log(tmp_path) -> Path:
    return tmp_path / "perdured.log"


@pytest.fixture
def sidecar_process(database_url, sidecar_log) -> Iterator[PerduredProcess]:
    """A real perdured process, logging to `sidecar_log`, that must outlive the test."""
    with sidecar_log.open("wb") as log_file:
        process, address = spawn("--database-url", database_url, "--log-level", "warning",
                                 "--max-payload-bytes", str(MAX_PAYLOAD), stderr=log_file)
    sidecar = PerduredProcess(process, address)
    yield sidecar
    alive = process.poll() is None
    sidecar.kill()
    assert alive, f"perdured exited with {process.returncode}; see {sidecar_log}"
    assert not warnings_in(sidecar_log, "[error"), "no input may make the sidecar fail"


@pytest.fixture
async def channel(sidecar_process):
    async with grpc.aio.insecure_channel(sidecar_process.address) as channel:
        yield channel


def warnings_in(log: Path, event: str) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if event in line]


async def still_serves(channel: grpc.aio.Channel) -> None:
    """The sidecar answers a call that reads the database and a worker can still register."""
    info = await admin_pb2_grpc.AdminStub(channel).GetInfo(admin_pb2.GetInfoRequest(), timeout=30)
    assert info.sidecar_id
    worker = RawWorker(channel)
    await worker.register("still:serves")
    worker.call.cancel()


async def enqueue(channel: grpc.aio.Channel, name: str, **fields: object) -> jobs_pb2.Job:
    response = await jobs_pb2_grpc.JobsStub(channel).Enqueue(jobs_pb2.EnqueueRequest(name=name, **fields))  # type: ignore[arg-type]
    return response.job


async def stream_status(call: grpc.aio.StreamStreamCall) -> tuple[grpc.StatusCode, str]:
    """Read the stream to its end; how it ended."""
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, "the stream ended without a status"
    return ended.value.code(), ended.value.details() or ""


def json_payload(value: object) -> types_pb2.Payload:
    return types_pb2.Payload(data=json.dumps(value).encode(), encoding="json")


# -- registration ---------------------------------------------------------------------------------

limits = st.builds(
    workers_pb2.FunctionLimits, name=texts, concurrency=big_ints,
    rate_limit=st.builds(workers_pb2.RateLimit, limit=big_ints))
# Often valid but for one field or two, so that each check is reached.
registers = st.builds(
    workers_pb2.Register, namespace=st.one_of(st.just(""), texts),
    names=st.one_of(st.just(["f"]), st.lists(texts, max_size=4)), concurrency=st.one_of(st.just(1), big_ints),
    worker_name=texts, sdk=texts, limits=st.one_of(st.just([]), st.lists(limits, max_size=2)))


@FUZZ
@given(register=registers)
async def test_register__any_registration_is_served_or_refused_with_the_field(channel, db, register) -> None:
    before = snapshot(db)
    call = workers_pb2_grpc.WorkersStub(channel).Work()
    await call.write(workers_pb2.WorkerMessage(register=register))
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{exc.code()}: {exc.details()}"
        assert (exc.details() or "").startswith("register."), exc.details()
        assert snapshot(db) == before
    else:
        assert first.WhichOneof("kind") == "registered"
        call.cancel()


@pytest.mark.parametrize("first", [
    workers_pb2.WorkerMessage(),
    workers_pb2.WorkerMessage(outcome=workers_pb2.Outcome(job_id=str(uuid.uuid4()), attempt=1)),
    workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(job_id=str(uuid.uuid4()), attempt=1)),
    workers_pb2.WorkerMessage(record_step=workers_pb2.RecordStep(job_id="x", name="s")),
    workers_pb2.WorkerMessage(drain=workers_pb2.Drain()),
    None,  # the stream is closed without a word
], ids=["empty", "outcome", "heartbeat", "record_step", "drain", "nothing"])
async def test_register__a_stream_that_does_not_begin_with_it_is_refused(channel, db, first) -> None:
    before = snapshot(db)
    call = workers_pb2_grpc.WorkersStub(channel).Work()
    if first is not None:
        await call.write(first)
    await call.done_writing()
    code, details = await stream_status(call)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "register: the first message must be a Register")
    assert snapshot(db) == before
    await still_serves(channel)


async def test_register__a_message_past_the_size_limit_ends_the_stream_and_returns_its_jobs(channel, db) -> None:
    job = await enqueue(channel, "f")
    worker = RawWorker(channel)
    await worker.register("f")
    assert (await worker.next("assignment")).job_id == job.id
    huge = types_pb2.Payload(data=b"x" * (MAX_PAYLOAD + 2 * 1024 * 1024), encoding="bytes")
    await worker.call.write(workers_pb2.WorkerMessage(outcome=workers_pb2.Outcome(job_id=job.id, attempt=1,
                                                                                  success=huge)))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await worker._reader  # type: ignore[misc]
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # As for any dropped stream: the attempt is lost, the job is runnable again.
    for _ in range(500):
        row = db.execute("SELECT state, attempt FROM perdure.jobs WHERE id = %s", (job.id,)).fetchone()
        if row[0] != "running":
            break
        await asyncio.sleep(0.02)
    assert row == ("pending", 1)
    await still_serves(channel)


# -- messages about jobs ------------------------------------------------------------------------


async def test_outcomes__for_jobs_the_worker_does_not_hold_are_not_recorded(channel, db) -> None:
    """Worker B cannot end worker A's attempt, nor A the same attempt twice."""
    job = await enqueue(channel, "held")
    a, b = RawWorker(channel), RawWorker(channel)
    await a.register("held")
    await b.register("held", "other")
    assignment = await a.next("assignment")
    before = snapshot(db)
    for worker, outcome in ((b, {"success": json_payload("stolen")}),
                            (b, {"failure": types_pb2.JobError(type="X", non_retryable=True)}),
                            (b, {"cancelled": workers_pb2.Cancelled()}),
                            (a, {"success": json_payload("wrong attempt"), "attempt": 2})):
        attempt = outcome.pop("attempt", assignment.attempt)
        ack = await worker.answer(job.id, attempt, **outcome)  # type: ignore[arg-type]
        assert (ack.recorded, ack.state) == (False, types_pb2.JOB_STATE_UNSPECIFIED)
    assert snapshot(db) == before
    ack = await a.answer(job.id, assignment.attempt, success=json_payload("mine"))
    assert ack.recorded and ack.state == types_pb2.JOB_STATE_SUCCESS
    after = snapshot(db)
    again = await a.answer(job.id, assignment.attempt, success=json_payload("twice"))
    assert not again.recorded
    assert snapshot(db) == after
    assert db.execute("SELECT result FROM perdure.jobs WHERE id = %s", (job.id,)).fetchone()[0] == b'"mine"'
    a.call.cancel()
    b.call.cancel()


async def test_outcomes__an_oversized_result_fails_the_attempt_for_good(channel, db) -> None:
    job = await enqueue(channel, "big")
    worker = RawWorker(channel)
    await worker.register("big")
    assignment = await worker.next("assignment")
    big = types_pb2.Payload(data=b"x" * (MAX_PAYLOAD + 1), encoding="bytes")
    ack = await worker.answer(job.id, assignment.attempt, success=big)
    assert ack.recorded and ack.state == types_pb2.JOB_STATE_DEAD
    error = db.execute("SELECT error FROM perdure.jobs WHERE id = %s", (job.id,)).fetchone()[0]
    assert error["type"] == "perdure.InvalidResult" and "result.data" in error["message"]
    worker.call.cancel()


async def test_side_messages__about_another_workers_job_change_nothing_and_are_logged(channel, db,
                                                                                      sidecar_log) -> None:
    """Steps, progress, logs and heartbeats for an attempt this worker does not hold."""
    job = await enqueue(channel, "held")
    a, b = RawWorker(channel), RawWorker(channel)
    await a.register("held")
    await b.register("held", "other")
    attempt = (await a.next("assignment")).attempt
    before = snapshot(db)
    await b.call.write(workers_pb2.WorkerMessage(record_step=workers_pb2.RecordStep(
        job_id=job.id, attempt=attempt, name="charge", result=json_payload("forged"))))
    step_ack = await b.next("step_ack")
    assert not step_ack.recorded
    for message in (
        workers_pb2.WorkerMessage(progress=workers_pb2.ReportProgress(
            job_id=job.id, attempt=attempt, progress=types_pb2.Progress(current=1, total=1, message="forged"))),
        workers_pb2.WorkerMessage(log=workers_pb2.ReportLog(job_id=job.id, record=types_pb2.LogRecord(
            attempt=attempt, level=types_pb2.LOG_LEVEL_ERROR, message="forged"))),
        workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(job_id=job.id, attempt=attempt)),
    ):
        await b.call.write(message)
    # A round trip on the same stream: everything sent before it has been read.
    await b.answer(str(uuid.uuid4()), 1, cancelled=workers_pb2.Cancelled())
    await asyncio.sleep(0.2)  # progress and logs are written in the background: give them a chance
    assert snapshot(db) == before
    warnings = warnings_in(sidecar_log, "worker.unheld_job")
    assert {kind for kind in ("record_step", "progress", "log", "heartbeat")
            if any(f"message={kind}" in line for line in warnings)} == {"record_step", "progress", "log", "heartbeat"}
    # The holder's own reports still count.
    await a.call.write(workers_pb2.WorkerMessage(record_step=workers_pb2.RecordStep(
        job_id=job.id, attempt=attempt, name="charge", result=json_payload("real"))))
    assert (await a.next("step_ack")).recorded
    assert (await a.answer(job.id, attempt, success=json_payload(None))).recorded
    a.call.cancel()
    b.call.cancel()


async def test_steps__an_oversized_result_is_refused_and_logged(channel, db, sidecar_log) -> None:
    job = await enqueue(channel, "steps")
    worker = RawWorker(channel)
    await worker.register("steps")
    attempt = (await worker.next("assignment")).attempt
    before = snapshot(db)
    await worker.call.write(workers_pb2.WorkerMessage(record_step=workers_pb2.RecordStep(
        job_id=job.id, attempt=attempt, name="big",
        result=types_pb2.Payload(data=b"x" * (MAX_PAYLOAD + 1), encoding="bytes"))))
    ack = await worker.next("step_ack")
    assert (ack.name, ack.recorded) == ("big", False)
    assert snapshot(db) == before
    assert warnings_in(sidecar_log, "step.refused")
    worker.call.cancel()


# Messages a hostile worker may send about any job: made-up ids, someone else's, the wrong attempt.
job_ids = st.one_of(texts, st.uuids().map(str), st.just("TARGET"))
attempts = st.one_of(big_ints, st.just(1))
side_messages = st.one_of(
    st.builds(lambda j, a, p: workers_pb2.WorkerMessage(outcome=workers_pb2.Outcome(job_id=j, attempt=a, success=p)),
              job_ids, attempts, payloads),
    st.builds(lambda j, a, t, m: workers_pb2.WorkerMessage(outcome=workers_pb2.Outcome(
        job_id=j, attempt=a, failure=types_pb2.JobError(type=t, message=m))), job_ids, attempts, texts, texts),
    st.builds(lambda j, a, n, p: workers_pb2.WorkerMessage(record_step=workers_pb2.RecordStep(
        job_id=j, attempt=a, name=n, result=p)), job_ids, attempts, texts, payloads),
    st.builds(lambda j, a: workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(job_id=j, attempt=a)),
              job_ids, attempts),
    st.builds(lambda j, a, c, m: workers_pb2.WorkerMessage(progress=workers_pb2.ReportProgress(
        job_id=j, attempt=a, progress=types_pb2.Progress(current=c, total=c, message=m))),
        job_ids, attempts, st.floats(), texts),
    st.builds(lambda j, a, level, m: workers_pb2.WorkerMessage(log=workers_pb2.ReportLog(
        job_id=j, record=types_pb2.LogRecord(attempt=a, level=level, message=m))),
        job_ids, attempts, st.integers(min_value=-5, max_value=50), texts),
    st.builds(lambda r: workers_pb2.WorkerMessage(register=r), registers),
    st.just(workers_pb2.WorkerMessage()),
)


@pytest.fixture
async def held_job(channel):
    """A job held by a worker that does nothing but hold it, for the fuzzed worker to aim at."""
    holder = RawWorker(channel)
    await holder.register("target")
    job = await enqueue(channel, "target")
    assignment = await holder.next("assignment")
    yield job.id, assignment.attempt
    holder.call.cancel()


@FUZZ
@given(messages=st.lists(side_messages, min_size=1, max_size=12))
async def test_hostile_worker__changes_nothing_it_does_not_hold_and_the_sidecar_serves_on(
        channel, db, held_job, messages) -> None:
    target, _ = held_job
    worker = RawWorker(channel)
    await worker.register("target", "hostile")
    before = snapshot(db)
    answers = 0
    for message in messages:
        kind = message.WhichOneof("kind")
        if kind in ("outcome", "record_step", "heartbeat", "progress"):
            body = getattr(message, kind)
            body.job_id = target if body.job_id == "TARGET" else body.job_id
        elif kind == "log" and message.log.job_id == "TARGET":
            message.log.job_id = target
        await worker.call.write(message)
        answers += kind == "record_step" or (kind == "outcome" and _is_uuid(message.outcome.job_id))
    for _ in range(answers):  # each answered, as not recorded
        reply = await asyncio.wait_for(worker.inbox.get(), 30)
        assert not getattr(reply, reply.WhichOneof("kind")).recorded
    await worker.answer(str(uuid.uuid4()), 1, cancelled=workers_pb2.Cancelled())  # all read by now
    assert snapshot(db) == before
    worker.call.cancel()
    await still_serves(channel)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("field", ["worker_name", "sdk"])
@pytest.mark.parametrize("value", ["a\x00b", "x" * 100_000])
async def test_register__who_the_worker_says_it_is_is_checked(channel, db, field, value) -> None:
    before = snapshot(db)
    call = workers_pb2_grpc.WorkersStub(channel).Work()
    await call.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(
        names=["f"], concurrency=1, **{field: value})))
    code, details = await stream_status(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"register.{field}: "), details
    assert snapshot(db) == before
    await still_serves(channel)


held_outcomes = st.one_of(
    payloads.map(lambda payload: {"success": payload}),
    st.builds(types_pb2.JobError, type=texts, message=texts, traceback=texts,
              non_retryable=st.booleans()).map(lambda error: {"failure": error}),
    st.builds(workers_pb2.Suspend, event=st.one_of(st.just(""), texts),
              until=st.builds(Timestamp, seconds=st.integers(min_value=-(2**62), max_value=2**62),
                              nanos=st.integers(min_value=0, max_value=10**9 - 1))).map(lambda s: {"suspend": s}),
    st.just({"cancelled": workers_pb2.Cancelled()}),
)


@FUZZ
@given(outcome=held_outcomes)
async def test_held_attempt__any_outcome_is_recorded_and_the_job_moves_on(channel, db, outcome) -> None:
    """Whatever the handler's answer holds (NUL characters, absurd times, bad payloads), it is
    committed and acknowledged: the job never hangs on an answer the database cannot take."""
    name = f"any:{uuid.uuid4().hex}"  # a stream of an earlier example may still be closing
    job = await enqueue(channel, name)
    worker = RawWorker(channel)
    await worker.register(name)
    attempt = (await worker.next("assignment")).attempt
    ack = await worker.answer(job.id, attempt, **outcome)
    assert ack.recorded, ack
    # The attempt has ended (the job itself may be running again already: a suspension that
    # ends at once, a handed-back job, a retry without delay).
    ended = db.execute("SELECT outcome FROM perdure.attempts WHERE job_id = %s AND number = %s",
                       (job.id, attempt)).fetchone()[0]
    assert ack.state != types_pb2.JOB_STATE_UNSPECIFIED and ended != "running"
    worker.call.cancel()


async def test_handler_error__with_a_nul_character_is_recorded(make_client) -> None:
    client = make_client(worker_concurrency=1)

    @client.durable("nul:raises", max_attempts=1)
    async def raises() -> None:
        raise ValueError("bad byte \x00 here")

    async with client:
        handle = await raises()
        with pytest.raises(perdure.JobDeadError) as dead:
            await handle.result(timeout=30)
    assert dead.value.error_type == "ValueError" and "bad byte \ufffd here" in dead.value.error_message
