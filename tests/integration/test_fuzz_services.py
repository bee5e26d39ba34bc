"""Hostile input (hypothesis) for the calls test_fuzz.py leaves out: the Schedules service,
the rest of Admin (ListWorkers, GetInfo, GetActivity) and of Jobs (PurgeJobs, GetEvent,
EmitEvent's payload, WatchJobs); then calls made in the wrong state (cancel a finished job,
retry a running one). Every refusal carries a precise code and a message; a refused call
changes nothing in the database; the sidecar keeps serving.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from perdure.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    types_pb2,
)

from .test_fuzz import FUZZ, big_ints, durations, enqueue_requests, payloads, texts
from .test_fuzz_streams import snapshot
from .test_grpc_contract import RawWorker

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the dev dependencies")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ALREADY_EXISTS}

# Valid ones among them never tick while a test runs (the next is weeks away at least, or never).
crons = st.one_of(texts, st.sampled_from([
    "0 3 1 1 *", "0 0 0 1 1 *", "0 0 29 2 *", "0 0 30 2 *", "@yearly", "@reboot", "61 * * * *", "* * * *",
    "0 0 1 1 * * *", "0 0 1 13 *", "0 0 1 1 MON-FRI", "0 0 L 1 *", "0 0 ? 1 *",
]))
timezones = st.one_of(texts, st.sampled_from(["", "UTC", "Europe/Paris", "Mars/Olympus", "../../etc/passwd",
                                              "America/Argentina/Buenos_Aires", "Etc/GMT+14", "utc"]))
missed = st.integers(min_value=-3, max_value=10)


def call(method, request, db) -> object:
    """Call; return the response, or the refusal's code. A refusal must be one of REFUSALS, say
    what is wrong, and change nothing."""
    before = snapshot(db)
    try:
        return method(request, timeout=30)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        assert code in REFUSALS, f"{code}: {exc.details()}"  # type: ignore[attr-defined]
        assert exc.details()  # type: ignore[attr-defined]
        assert snapshot(db) == before
        return code


@pytest.fixture
def stubs(threaded_sidecar):
    with grpc.insecure_channel(threaded_sidecar.address) as channel:
        yield (schedules_pb2_grpc.SchedulesStub(channel), jobs_pb2_grpc.JobsStub(channel),
               admin_pb2_grpc.AdminStub(channel))


@FUZZ
@given(namespace=st.one_of(st.just(""), texts), name=st.one_of(st.just("nightly"), texts), cron=crons,
       timezone=timezones, missed=missed, paused=st.one_of(st.none(), st.booleans()), replace=st.booleans(),
       job=st.one_of(st.just(jobs_pb2.EnqueueRequest(name="f")), enqueue_requests()), page_size=big_ints,
       token=texts)
def test_schedules__any_input_is_served_or_refused_with_a_reason(stubs, db, namespace, name, cron, timezone,
                                                                 missed, paused, replace, job, page_size,
                                                                 token) -> None:
    schedules, _, _ = stubs
    create = schedules_pb2.CreateScheduleRequest(namespace=namespace, name=name, cron=cron, timezone=timezone,
                                                 missed=missed, replace=replace, job=job)  # type: ignore[arg-type]
    if paused is not None:
        create.paused = paused
    call(schedules.CreateSchedule, create, db)
    key = {"namespace": namespace, "name": name}
    call(schedules.GetSchedule, schedules_pb2.GetScheduleRequest(**key), db)
    update = schedules_pb2.UpdateScheduleRequest(cron=cron, timezone=timezone, missed=missed, job=job,
                                                 **key)  # type: ignore[arg-type]
    call(schedules.UpdateSchedule, update, db)
    call(schedules.PauseSchedule, schedules_pb2.PauseScheduleRequest(**key), db)
    call(schedules.ResumeSchedule, schedules_pb2.ResumeScheduleRequest(**key), db)
    call(schedules.ListSchedules, schedules_pb2.ListSchedulesRequest(
        namespace=namespace, function=name, page_size=page_size, page_token=token), db)
    call(schedules.DeleteSchedule, schedules_pb2.DeleteScheduleRequest(**key), db)


@FUZZ
@given(namespace=texts, name=texts, job_id=st.one_of(texts, st.uuids().map(str)), window=durations,
       states=st.lists(st.integers(min_value=-3, max_value=12), max_size=4), labels=st.dictionaries(texts, texts,
                                                                                                   max_size=3),
       error_type=texts, payload=payloads)
def test_admin_and_the_other_jobs_calls__answer_precisely(stubs, db, namespace, name, job_id, window, states,
                                                          labels, error_type, payload) -> None:
    _, jobs, admin = stubs
    call(admin.ListWorkers, admin_pb2.ListWorkersRequest(namespace=namespace), db)
    call(admin.GetInfo, admin_pb2.GetInfoRequest(), db)
    activity = admin_pb2.GetActivityRequest(namespace=namespace, name=name)
    activity.window.CopyFrom(window)
    call(admin.GetActivity, activity, db)
    job_filter = jobs_pb2.JobFilter(namespace=namespace, name=name, states=states, labels=labels,
                                    error_type=error_type, error_contains=error_type)  # type: ignore[arg-type]
    call(jobs.PurgeJobs, jobs_pb2.PurgeJobsRequest(filter=job_filter), db)
    call(jobs.RetryJobs, jobs_pb2.RetryJobsRequest(filter=job_filter), db)
    call(jobs.GetEvent, jobs_pb2.GetEventRequest(namespace=namespace, name=name), db)
    call(jobs.EmitEvent, jobs_pb2.EmitEventRequest(namespace=namespace, name=name, payload=payload), db)
    try:  # a valid watch streams until its deadline: only a refusal ends it sooner
        next(iter(jobs.WatchJobs(jobs_pb2.WatchJobsRequest(namespace=namespace, name=name, job_id=job_id),
                                 timeout=0.2)))
    except grpc.RpcError as exc:
        assert exc.code() in REFUSALS | {grpc.StatusCode.DEADLINE_EXCEEDED}, exc  # type: ignore[attr-defined]


# -- the wrong state --------------------------------------------------------------------------


@pytest.fixture
async def jobs(sidecar):
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        yield jobs_pb2_grpc.JobsStub(channel), channel


async def test_cancel_and_retry__in_the_wrong_state_change_nothing(jobs, db) -> None:
    jobs, channel = jobs
    worker = RawWorker(channel)
    await worker.register("f", concurrency=2)
    done = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f"))).job
    assert (await worker.answer(done.id, (await worker.next("assignment")).attempt,
                                success=types_pb2.Payload(data=b"1", encoding="json"))).recorded
    running = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f"))).job
    assert (await worker.next("assignment")).job_id == running.id
    pending = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="nobody:serves"))).job
    cancelled = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="nobody:serves"))).job
    assert (await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=cancelled.id))).cancelled
    before = snapshot(db)
    # Cancelling a finished job: answered, not cancelled, unchanged.
    for finished, state in ((done, types_pb2.JOB_STATE_SUCCESS), (cancelled, types_pb2.JOB_STATE_CANCELLED)):
        answer = await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=finished.id))
        assert not answer.cancelled and answer.job.state == state
    # Retrying a job that is not dead or cancelled: FAILED_PRECONDITION, saying its state.
    for job, state in ((running, "running"), (pending, "pending"), (done, "success")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await jobs.RetryJob(jobs_pb2.RetryJobRequest(id=job.id))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"is {state}; only dead or cancelled jobs can be retried" in refused.value.details()
    # RetryJobs that only asks for states that cannot be retried is refused as a whole.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await jobs.RetryJobs(jobs_pb2.RetryJobsRequest(filter=jobs_pb2.JobFilter(
            states=[types_pb2.JOB_STATE_RUNNING])))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshot(db) == before
    # The running attempt goes on as if nothing had been asked.
    ack = await worker.answer(running.id, 1, success=types_pb2.Payload(data=b"2", encoding="json"))
    assert ack.recorded and ack.state == types_pb2.JOB_STATE_SUCCESS
    worker.call.cancel()


async def test_retry_jobs__leaves_jobs_that_ended_after_the_call_began(jobs, db) -> None:
    """RetryJobs works in batches; a job retried by an early batch may die again before a later
    one runs. Only jobs that had ended when the call began are retried, so none is retried twice
    and the call ends. Here, a job whose end is stamped after the call's start stands for it."""
    jobs, _ = jobs
    ids = [(await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="nobody:serves"))).job.id for _ in range(3)]
    for job_id in ids:
        await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job_id))
    later = datetime.now(UTC) + timedelta(hours=1)
    db.execute("UPDATE perdure.jobs SET finished_at = %s WHERE id = %s", (later, ids[2]))
    retried = await jobs.RetryJobs(jobs_pb2.RetryJobsRequest(filter=jobs_pb2.JobFilter(
        states=[types_pb2.JOB_STATE_CANCELLED])))
    assert retried.retried == 2
    states = dict(db.execute("SELECT id::text, state FROM perdure.jobs").fetchall())
    assert [states[i] for i in ids] == ["pending", "pending", "cancelled"]


async def test_unknown_enum_values__are_refused_with_the_field(jobs, db) -> None:
    jobs, channel = jobs
    schedules = schedules_pb2_grpc.SchedulesStub(channel)
    before = snapshot(db)
    for request, method, field in (
        (jobs_pb2.EnqueueRequest(name="f", retry=types_pb2.RetryPolicy(backoff=99)), jobs.Enqueue, "retry.backoff"),
        (jobs_pb2.ListJobsRequest(states=[99]), jobs.ListJobs, "states"),
        (jobs_pb2.PurgeJobsRequest(filter=jobs_pb2.JobFilter(states=[99])), jobs.PurgeJobs, "filter.states"),
        (schedules_pb2.CreateScheduleRequest(name="s", cron="0 3 1 1 *", missed=99,
                                             job=jobs_pb2.EnqueueRequest(name="f")),
         schedules.CreateSchedule, "missed"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request)  # type: ignore[operator]
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(f"{field}"), refused.value.details()
    assert snapshot(db) == before
