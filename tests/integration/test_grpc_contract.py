"""The contract through raw gRPC, as another language would use it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from perdure.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2, workers_pb2, workers_pb2_grpc


@pytest.fixture
async def channel(sidecar) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        yield channel


@pytest.fixture
def jobs(channel) -> jobs_pb2_grpc.JobsStub:
    return jobs_pb2_grpc.JobsStub(channel)


def json_payload(value: object) -> types_pb2.Payload:
    return types_pb2.Payload(data=json.dumps(value).encode(), encoding="json")


def count_jobs(db) -> int:
    return db.execute("SELECT count(*) FROM perdure.jobs").fetchone()[0]


class RawWorker:
    """A worker speaking the Work stream by hand. Messages of different kinds may come in any
    order (an assignment for a slot just answered may overtake that answer's acknowledgement):
    `next` takes the first of the kind asked for and keeps the others for later."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = workers_pb2_grpc.WorkersStub(channel).Work()
        self.inbox: asyncio.Queue[workers_pb2.SidecarMessage] = asyncio.Queue()
        self._held: list[workers_pb2.SidecarMessage] = []
        self._reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        # One reader for the stream's life: cancelling a pending read would cancel the RPC.
        async for message in self.call:
            self.inbox.put_nowait(message)

    async def register(self, *names: str, concurrency: int = 1, namespace: str = "",
                       batches: bool = False) -> workers_pb2.Registered:
        await self.call.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(
            names=list(names), concurrency=concurrency, namespace=namespace, worker_name="raw", batches=batches)))
        self._reader = asyncio.ensure_future(self._read())
        return await self.next("registered")  # type: ignore[return-value]

    async def next(self, kind: str, timeout: float = 30) -> object:
        for index, message in enumerate(self._held):
            if message.WhichOneof("kind") == kind:
                return getattr(self._held.pop(index), kind)
        async with asyncio.timeout(timeout):
            while (message := await self.inbox.get()).WhichOneof("kind") != kind:
                self._held.append(message)
        return getattr(message, kind)

    async def send_outcome(self, job_id: str, attempt: int, **result: object) -> None:
        await self.call.write(workers_pb2.WorkerMessage(outcome=workers_pb2.Outcome(
            job_id=job_id, attempt=attempt, **result)))  # type: ignore[arg-type]

    async def answer(self, job_id: str, attempt: int, **result: object) -> workers_pb2.OutcomeAck:
        await self.send_outcome(job_id, attempt, **result)
        return await self.next("ack")  # type: ignore[return-value]


async def test_enqueue_then_get__returns_every_field_with_defaults(jobs) -> None:
    response = await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="emails:send", payload=json_payload({"args": [1]})))
    assert not response.deduplicated
    job = (await jobs.GetJob(jobs_pb2.GetJobRequest(id=response.job.id))).job
    assert (job.namespace, job.name, job.state, job.attempt) == ("default", "emails:send", types_pb2.JOB_STATE_PENDING, 0)
    assert json.loads(job.payload.data) == {"args": [1]} and job.payload.encoding == "json"
    assert job.retry.max_attempts == 3 and job.retry.backoff == types_pb2.BACKOFF_EXPONENTIAL
    assert job.retry.initial_delay.ToMilliseconds() == 1000 and job.retry.max_delay.ToMilliseconds() == 60000
    assert job.retry.jitter == pytest.approx(0.1) and job.timeout.ToMilliseconds() == 30000
    assert job.HasField("created_at") and job.HasField("run_at") and not job.HasField("finished_at")


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"name": ""}, "name"),
    ({"name": "x" * 300}, "name"),
    ({"name": "f", "retry": types_pb2.RetryPolicy(backoff=17)}, "retry.backoff"),
    ({"name": "f", "delay": Duration(seconds=-1)}, "delay"),
    ({"name": "f", "retry": types_pb2.RetryPolicy(max_attempts=0)}, "retry.max_attempts"),
    ({"name": "f", "payload": types_pb2.Payload(data=b"x" * (4 * 1024 * 1024 + 1), encoding="bytes")}, "payload.data"),
    ({"name": "f", "payload": types_pb2.Payload(data=b"{oops", encoding="json")}, "payload.data"),
    ({"name": "f", "payload": types_pb2.Payload(data=b"1", encoding="yaml")}, "payload.encoding"),
])
async def test_enqueue_bad_input__is_invalid_argument_and_writes_nothing(jobs, db, request_fields, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.Enqueue(jobs_pb2.EnqueueRequest(**request_fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")
    assert count_jobs(db) == 0


async def test_reads_with_bad_ids_or_states__are_invalid_argument(jobs) -> None:
    for call in (jobs.GetJob(jobs_pb2.GetJobRequest(id="42")),
                 jobs.ListJobs(jobs_pb2.ListJobsRequest(states=[77])),
                 jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=5000))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(("bad_filter", "field"), [
    (jobs_pb2.JobFilter(states=[types_pb2.JOB_STATE_RUNNING]), "filter.states"),
    (jobs_pb2.JobFilter(states=[77]), "filter.states"),
    (jobs_pb2.JobFilter(namespace="no spaces"), "filter.namespace"),
    (jobs_pb2.JobFilter(labels={"": "x"}), "filter.labels"),
    (jobs_pb2.JobFilter(error_type="a\x00b"), "filter.error_type"),
])
async def test_bulk_retry_and_purge__name_the_bad_filter_field_as_sent(jobs, bad_filter, field) -> None:
    for call in (jobs.RetryJobs(jobs_pb2.RetryJobsRequest(filter=bad_filter)),
                 jobs.PurgeJobs(jobs_pb2.PurgeJobsRequest(filter=bad_filter))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(f"{field}: ")


async def test_namespaces__hide_jobs_of_other_namespaces(jobs, channel) -> None:
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace="a", name="f"))).job
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id, namespace="b"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    for call in (jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id, namespace="b")),
                 jobs.AwaitJob(jobs_pb2.AwaitJobRequest(id=job.id, namespace="b"))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (await jobs.ListJobs(jobs_pb2.ListJobsRequest(namespace="b"))).jobs
    # The same key in two namespaces makes two jobs.
    one = await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace="a", name="f", idempotency_key="k"))
    two = await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace="b", name="f", idempotency_key="k"))
    assert one.job.id != two.job.id and not two.deduplicated
    # A worker of namespace b is never offered a's job.
    worker_b = RawWorker(channel)
    await worker_b.register("f", namespace="b")
    assignment = await worker_b.next("assignment")
    assert assignment.job_id == two.job.id and assignment.namespace == "b"
    with pytest.raises(TimeoutError):
        await worker_b.next("assignment", timeout=0.5)
    worker_b.call.cancel()


async def test_list_jobs__filters_by_name_and_state_and_pages_newest_first(jobs) -> None:
    ids = [(await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="a" if i % 2 else "b"))).job.id for i in range(7)]
    await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=ids[1]))
    pages, token = [], ""
    while True:
        response = await jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=2, page_token=token))
        pages.append([j.id for j in response.jobs])
        token = response.next_page_token
        if not token:
            break
    assert [i for page in pages for i in page] == ids[::-1] and len(pages) == 4
    names = await jobs.ListJobs(jobs_pb2.ListJobsRequest(name="a"))
    assert [j.id for j in names.jobs] == [ids[5], ids[3], ids[1]]
    pending_a = await jobs.ListJobs(jobs_pb2.ListJobsRequest(name="a", states=[types_pb2.JOB_STATE_PENDING]))
    assert [j.id for j in pending_a.jobs] == [ids[5], ids[3]]


async def test_await_job__returns_when_the_wait_passes_without_an_answer(jobs) -> None:
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="nobody"))).job
    response = await jobs.AwaitJob(jobs_pb2.AwaitJobRequest(id=job.id, wait=Duration(nanos=200_000_000)))
    assert not response.done and response.job.state == types_pb2.JOB_STATE_PENDING


async def test_work_stream__delivers_runs_and_acknowledges_after_commit(jobs, channel, db) -> None:
    worker = RawWorker(channel)
    registered = await worker.register("f", concurrency=1)
    assert registered.worker_id and registered.sidecar_id
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f", payload=json_payload({"args": [2]})))).job
    waiting = asyncio.ensure_future(jobs.AwaitJob(jobs_pb2.AwaitJobRequest(id=job.id)))
    assignment = await worker.next("assignment")
    assert (assignment.job_id, assignment.attempt, assignment.name) == (job.id, 1, "f")
    assert json.loads(assignment.payload.data) == {"args": [2]} and assignment.HasField("deadline")
    ack = await worker.answer(job.id, 1, success=json_payload(4))
    assert ack.recorded and ack.state == types_pb2.JOB_STATE_SUCCESS
    # The acknowledgement came after the commit: the row says so already.
    assert db.execute("SELECT state, result FROM perdure.jobs WHERE id = %s", (job.id,)).fetchone() == ("success", b"4")
    done = await waiting
    assert done.done and json.loads(done.job.result.data) == 4
    worker.call.cancel()


async def test_brief_answers__carry_what_a_caller_reads_and_full_ones_everything(jobs, channel) -> None:
    worker = RawWorker(channel)
    await worker.register("f", concurrency=2)
    payload = json_payload({"args": [3]})
    brief = await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f", payload=payload, brief=True))
    assert (brief.job.namespace, brief.job.name) == ("default", "f") and brief.job.id and brief.job.HasField("run_at")
    assert not brief.job.HasField("payload") and not brief.job.HasField("created_at")
    full = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f", payload=payload, retry=types_pb2.RetryPolicy(
        max_attempts=1)))).job
    assert full.payload == payload and full.HasField("created_at") and full.retry.max_attempts == 1

    await worker.next("assignment")
    await worker.next("assignment")
    await worker.answer(brief.job.id, 1, success=json_payload(9))
    await worker.answer(full.id, 1, failure=types_pb2.JobError(type="Boom", message="no"))
    succeeded = await jobs.AwaitJob(jobs_pb2.AwaitJobRequest(id=brief.job.id, brief=True))
    assert succeeded.done and succeeded.job.state == types_pb2.JOB_STATE_SUCCESS and succeeded.job.attempt == 1
    assert json.loads(succeeded.job.result.data) == 9 and succeeded.job.name == "f"
    assert not succeeded.job.HasField("payload") and not succeeded.job.HasField("finished_at")
    dead = await jobs.AwaitJob(jobs_pb2.AwaitJobRequest(id=full.id, brief=True))
    assert dead.job.state == types_pb2.JOB_STATE_DEAD and (dead.job.error.type, dead.job.error.message) == ("Boom", "no")
    whole = await jobs.AwaitJob(jobs_pb2.AwaitJobRequest(id=full.id))
    assert whole.job.payload == payload and whole.job.HasField("finished_at") and whole.job.error.type == "Boom"
    worker.call.cancel()


@pytest.mark.parametrize("where", ["jobs", "common"])
async def test_enqueue_batch__refuses_a_brief_that_belongs_to_a_single_enqueue(jobs, db, where) -> None:
    request = jobs_pb2.EnqueueBatchRequest(jobs=[jobs_pb2.EnqueueRequest(name="f")], brief=True)
    if where == "jobs":
        request.jobs[0].brief = True
    else:
        request.common.brief = True
        request.jobs[0].ClearField("name")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.EnqueueBatch(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("jobs[0].brief: " if where == "jobs" else "common.brief: ")
    assert count_jobs(db) == 0


async def test_work_stream__never_sends_more_than_the_free_slots(jobs, channel, db) -> None:
    worker = RawWorker(channel)
    await worker.register("f", concurrency=2)
    ids = [(await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f"))).job.id for _ in range(5)]
    first = [await worker.next("assignment"), await worker.next("assignment")]
    with pytest.raises(TimeoutError):
        await worker.next("assignment", timeout=0.5)
    assert db.execute("SELECT count(*) FROM perdure.jobs WHERE state = 'running'").fetchone()[0] == 2
    await worker.answer(first[0].job_id, 1, success=json_payload(None))
    third = await worker.next("assignment")
    assert third.job_id not in {a.job_id for a in first} and third.job_id in ids
    worker.call.cancel()


async def test_work_stream__a_slot_is_free_once_answered_while_the_outcome_is_committed(
        jobs, channel, db, database_url) -> None:
    """"At most `concurrency` unanswered": the next job need not wait for the commit of the
    last one's outcome (here held up by a lock on its row)."""
    worker = RawWorker(channel)
    await worker.register("f", concurrency=1)
    first, second = [(await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f"))).job.id for _ in range(2)]
    assert (await worker.next("assignment")).job_id == first
    with psycopg.connect(database_url) as locker:  # in a transaction until the block ends
        locker.execute("SELECT FROM perdure.jobs WHERE id = %s FOR UPDATE", (first,))
        await worker.send_outcome(first, 1, success=json_payload(None))
        # Well within the sidecar's lock wait (2 s), after which the finish would give up.
        assert (await worker.next("assignment", timeout=1.5)).job_id == second
        assert db.execute("SELECT state FROM perdure.jobs WHERE id = %s", (first,)).fetchone() == ("running",)
    ack = await worker.next("ack")
    assert (ack.job_id, ack.recorded, ack.state) == (first, True, types_pb2.JOB_STATE_SUCCESS)
    worker.call.cancel()


async def test_await_job__that_came_while_the_outcome_was_committed__answers_the_whole_job(
        jobs, channel, database_url) -> None:
    """A finish returns the whole row only of the jobs someone awaits (or likely will) when it
    is written; an AwaitJob that comes while it is being committed (held up here by a lock on
    the row) still answers the whole job. The job comes in a batch: one enqueued alone is
    expected to be awaited (see the next test)."""
    worker = RawWorker(channel)
    await worker.register("f", concurrency=1)
    batch = await jobs.EnqueueBatch(jobs_pb2.EnqueueBatchRequest(jobs=[jobs_pb2.EnqueueRequest(
        name="f", payload=json_payload({"args": [7]}), labels={"team": "a"})]))
    job = batch.results[0].job
    await worker.next("assignment")
    with psycopg.connect(database_url) as locker:  # in a transaction until the block ends
        locker.execute("SELECT FROM perdure.jobs WHERE id = %s FOR UPDATE", (job.id,))
        await worker.send_outcome(job.id, 1, success=json_payload(14))
        await asyncio.sleep(0.3)  # the finish, written while nobody awaits, waits for the lock
        waiting = asyncio.ensure_future(jobs.AwaitJob(jobs_pb2.AwaitJobRequest(id=job.id)))
        await asyncio.sleep(0.3)
        assert not waiting.done()
    done = await waiting
    assert done.done and done.job.state == types_pb2.JOB_STATE_SUCCESS and json.loads(done.job.result.data) == 14
    assert json.loads(done.job.payload.data) == {"args": [7]} and dict(done.job.labels) == {"team": "a"}
    assert done.job.HasField("created_at") and done.job.HasField("finished_at") and done.job.retry.max_attempts == 3
    worker.call.cancel()


async def test_await_job__of_a_job_enqueued_alone_that_ended_unawaited__is_answered_from_the_kept_row(
        jobs, channel, db) -> None:
    """Whoever enqueues one job usually asks for its result next, often after it has ended: its
    finish returns the whole row, which the sidecar keeps to answer without reading the job
    back. Shown by a change made to the row behind the sidecar's back, which the answer does
    not see."""
    worker = RawWorker(channel)
    await worker.register("f", concurrency=1)
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f"))).job
    await worker.next("assignment")
    assert (await worker.answer(job.id, 1, success=json_payload(3))).recorded
    db.execute("UPDATE perdure.jobs SET result = '4' WHERE id = %s", (job.id,))
    done = await jobs.AwaitJob(jobs_pb2.AwaitJobRequest(id=job.id))
    assert done.done and json.loads(done.job.result.data) == 3
    worker.call.cancel()


async def test_await_job__that_came_just_after_the_outcome_was_committed__reads_the_job(
        sidecar, jobs, channel) -> None:
    """Once a job's end is committed and announced, the sidecar no longer says it runs the job,
    not even for the moment before its slot is released: an AwaitJob that came then would wait
    for an announcement already made (until its wait ran out), rather than read the job."""
    dispatcher = sidecar.dispatcher
    announce = dispatcher.on_finished
    still_running: list[bool] = []

    def on_finished(row: dict[str, object]) -> None:
        announce(row)
        still_running.append(dispatcher.runs(row["id"], row["namespace"]))  # type: ignore[arg-type]

    dispatcher.on_finished = on_finished
    worker = RawWorker(channel)
    await worker.register("f", concurrency=1)
    # In a batch: the row of a job enqueued alone would be kept, and the AwaitJob answered from it.
    job = (await jobs.EnqueueBatch(jobs_pb2.EnqueueBatchRequest(jobs=[jobs_pb2.EnqueueRequest(name="f")]))).results[0].job
    await worker.next("assignment")
    assert (await worker.answer(job.id, 1, success=json_payload(3))).recorded
    assert still_running == [False]
    done = await jobs.AwaitJob(jobs_pb2.AwaitJobRequest(id=job.id))
    assert done.done and json.loads(done.job.result.data) == 3
    worker.call.cancel()


async def test_work_stream__a_worker_that_reads_batches_gets_the_jobs_claimed_together_in_one_message(
        jobs, channel, db) -> None:
    requests = [jobs_pb2.EnqueueRequest(name="f", payload=json_payload({"args": [n]})) for n in range(5)]
    ids = [r.job.id for r in (await jobs.EnqueueBatch(jobs_pb2.EnqueueBatchRequest(jobs=requests))).results]
    worker = RawWorker(channel)
    registered = await worker.register("f", concurrency=5, batches=True)
    assert registered.batches  # this sidecar reads batches of outcomes
    batch = await worker.next("assignments")  # one claim of five jobs: one message
    assert sorted(a.job_id for a in batch.items) == sorted(ids)
    assert sorted(json.loads(a.payload.data)["args"][0] for a in batch.items) == list(range(5))
    # Five outcomes in one message: each is recorded and acknowledged, as if sent alone.
    await worker.call.write(workers_pb2.WorkerMessage(outcomes=workers_pb2.Outcomes(items=[
        workers_pb2.Outcome(job_id=a.job_id, attempt=1, success=json_payload(a.payload.data.decode()))
        for a in batch.items])))
    acks: list[workers_pb2.OutcomeAck] = []
    while len(acks) < 5:
        message = await asyncio.wait_for(worker.inbox.get(), 30)
        acks.extend([message.ack] if message.HasField("ack") else message.acks.items)
    assert sorted(a.job_id for a in acks) == sorted(ids)
    assert all(a.recorded and a.state == types_pb2.JOB_STATE_SUCCESS for a in acks)
    assert db.execute("SELECT count(*) FROM perdure.jobs WHERE state = 'success'").fetchone()[0] == 5
    worker.call.cancel()


async def test_work_stream__a_worker_that_does_not_read_batches_gets_one_message_per_job(jobs, channel) -> None:
    requests = [jobs_pb2.EnqueueRequest(name="f") for _ in range(3)]
    ids = [r.job.id for r in (await jobs.EnqueueBatch(jobs_pb2.EnqueueBatchRequest(jobs=requests))).results]
    worker = RawWorker(channel)
    await worker.register("f", concurrency=3)
    assignments = [await worker.next("assignment") for _ in ids]
    assert sorted(a.job_id for a in assignments) == sorted(ids)
    worker.call.cancel()


async def test_work_stream__registration_must_come_first_and_be_valid(channel) -> None:
    call = workers_pb2_grpc.WorkersStub(channel).Work()
    await call.write(workers_pb2.WorkerMessage(outcome=workers_pb2.Outcome(job_id="x")))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "register" in caught.value.details()
    call = workers_pb2_grpc.WorkersStub(channel).Work()
    await call.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(names=["f"], concurrency=0)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("register.concurrency: ")


async def test_dropped_stream__puts_the_job_back_at_once_as_a_spent_attempt(jobs, channel) -> None:
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(
        name="f", retry=types_pb2.RetryPolicy(max_attempts=2)))).job
    for attempt in (1, 2):
        worker = RawWorker(channel)
        await worker.register("f")
        assignment = await worker.next("assignment")
        assert assignment.attempt == attempt
        worker.call.cancel()  # the app died
        # The sidecar learns of the stream's end asynchronously: wait for the state to move.
        for _ in range(500):
            if (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))).job.state != types_pb2.JOB_STATE_RUNNING:
                break
            await asyncio.sleep(0.02)
    final = (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))).job
    assert final.state == types_pb2.JOB_STATE_DEAD and final.attempt == 2
    assert [a.outcome for a in final.attempts] == [types_pb2.ATTEMPT_OUTCOME_WORKER_LOST] * 2
    assert final.error.type == "perdure.WorkerLost"


async def test_timeout__cancels_the_handler_fails_the_attempt_and_fences_the_late_answer(jobs, channel) -> None:
    worker = RawWorker(channel)
    await worker.register("f", concurrency=1)
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(
        name="f", timeout=Duration(nanos=300_000_000),
        retry=types_pb2.RetryPolicy(max_attempts=2, initial_delay=Duration(), jitter=0)))).job
    first = await worker.next("assignment")
    cancel = await worker.next("cancel")
    assert (cancel.job_id, cancel.attempt, cancel.reason) == (job.id, 1, workers_pb2.CANCEL_REASON_TIMEOUT)
    # The late answer of the lost attempt changes nothing.
    late = await worker.answer(job.id, first.attempt, success=json_payload("too late"))
    assert not late.recorded
    second = await worker.next("assignment")
    assert second.attempt == 2
    ack = await worker.answer(job.id, 2, success=json_payload("in time"))
    assert ack.recorded
    final = (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))).job
    assert json.loads(final.result.data) == "in time"
    assert [a.outcome for a in final.attempts] == [types_pb2.ATTEMPT_OUTCOME_TIMED_OUT, types_pb2.ATTEMPT_OUTCOME_SUCCEEDED]
    assert final.attempts[0].error.type == "perdure.Timeout"
    worker.call.cancel()


async def test_outcome_for_another_attempt__is_not_recorded(jobs, channel) -> None:
    worker = RawWorker(channel)
    await worker.register("f")
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f"))).job
    await worker.next("assignment")
    stale = await worker.answer(job.id, 7, failure=types_pb2.JobError(type="X", message="stale"))
    assert not stale.recorded
    assert (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))).job.state == types_pb2.JOB_STATE_RUNNING
    worker.call.cancel()


async def test_retry_job__runs_a_dead_job_again_with_fresh_attempts(jobs, channel) -> None:
    worker = RawWorker(channel)
    await worker.register("f")
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f", retry=types_pb2.RetryPolicy(max_attempts=1)))).job
    await worker.next("assignment")
    ack = await worker.answer(job.id, 1, failure=types_pb2.JobError(type="Boom", message="no"))
    assert ack.state == types_pb2.JOB_STATE_DEAD
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # only dead or cancelled jobs
        await jobs.RetryJob(jobs_pb2.RetryJobRequest(id=(await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="g"))).job.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    retried = (await jobs.RetryJob(jobs_pb2.RetryJobRequest(id=job.id))).job
    assert retried.state == types_pb2.JOB_STATE_PENDING
    again = await worker.next("assignment")
    assert again.attempt == 2
    assert (await worker.answer(job.id, 2, success=json_payload(1))).state == types_pb2.JOB_STATE_SUCCESS
    worker.call.cancel()


async def test_watch_jobs__streams_lifecycle_events(jobs, channel) -> None:
    watch = jobs.WatchJobs(jobs_pb2.WatchJobsRequest(name="f"))
    events: list[jobs_pb2.JobEvent] = []

    async def collect() -> None:
        async for event in watch:
            events.append(event)

    collector = asyncio.ensure_future(collect())
    await watch.initial_metadata()  # sent once the watch is subscribed
    worker = RawWorker(channel)
    await worker.register("f")
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(
        name="f", retry=types_pb2.RetryPolicy(max_attempts=2, initial_delay=Duration(), jitter=0)))).job
    await worker.next("assignment")
    await worker.answer(job.id, 1, failure=types_pb2.JobError(type="Boom", message="first"))
    await worker.next("assignment")
    await worker.answer(job.id, 2, failure=types_pb2.JobError(type="Boom", message="second"))
    other = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f", delay=Duration(seconds=60)))).job
    await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=other.id))
    for _ in range(100):
        if len(events) >= 7:
            break
        await asyncio.sleep(0.05)
    collector.cancel()
    kinds = [(e.job_id, e.kind) for e in events]
    K = jobs_pb2
    assert kinds == [
        (job.id, K.JOB_EVENT_KIND_ENQUEUED), (job.id, K.JOB_EVENT_KIND_STARTED),
        (job.id, K.JOB_EVENT_KIND_ATTEMPT_FAILED), (job.id, K.JOB_EVENT_KIND_STARTED),
        (job.id, K.JOB_EVENT_KIND_DEAD), (other.id, K.JOB_EVENT_KIND_ENQUEUED),
        (other.id, K.JOB_EVENT_KIND_CANCELLED),
    ]
    assert events[2].error.message == "first" and events[4].error.type == "Boom"
    assert events[5].run_at.ToDatetime() > events[5].at.ToDatetime()
    worker.call.cancel()


async def test_health_and_reflection__work_for_generic_tools(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "perdure.v1.Jobs", "perdure.v1.Workers"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"perdure.v1.Jobs", "perdure.v1.Workers", "grpc.health.v1.Health"} <= names


async def test_enqueue_onto_a_free_worker__never_overtakes_waiting_jobs(jobs, channel) -> None:
    worker = RawWorker(channel)
    await worker.register("f", concurrency=1)
    first = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f"))).job
    assert (await worker.next("assignment")).job_id == first.id  # started in the enqueue itself
    waiting = [(await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f"))).job.id for _ in range(3)]
    # The slot frees and a new job arrives at once: the waiting ones still go first.
    await worker.answer(first.id, 1, success=json_payload(None))
    late = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f"))).job.id
    order = []
    for _ in range(4):
        assignment = await worker.next("assignment")
        order.append(assignment.job_id)
        await worker.answer(assignment.job_id, assignment.attempt, success=json_payload(None))
    assert order == [*waiting, late]
    worker.call.cancel()


async def test_limits__streams_and_worker_concurrency_are_capped_by_the_sidecars_settings(database_url) -> None:
    from ..conftest import start_sidecar

    sidecar = await start_sidecar(database_url, max_streams=1, max_worker_concurrency=5)
    try:
        async with grpc.aio.insecure_channel(sidecar.address) as channel:
            stub = workers_pb2_grpc.WorkersStub(channel)
            greedy = stub.Work()
            await greedy.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(names=["a"], concurrency=6)))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await greedy.read()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "--max-worker-concurrency" in refused.value.details()

            first = stub.Work()
            await first.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(names=["a"], concurrency=5)))
            assert (await first.read()).HasField("registered")
            second = stub.Work()
            await second.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(names=["a"], concurrency=1)))
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await second.read()
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-streams" in full.value.details()
            first.cancel()
    finally:
        await sidecar.stop()


class CallStream:
    """Jobs.Calls by hand: calls go out in batches, answers are collected by id."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = jobs_pb2_grpc.JobsStub(channel).Calls()
        self.answers: dict[int, jobs_pb2.CallResponse] = {}
        self.messages = 0

    async def send(self, **calls: jobs_pb2.CallRequest) -> None:
        await self.call.write(jobs_pb2.CallRequests(calls=list(calls.values())))

    async def answer(self, call_id: int, timeout: float = 30) -> jobs_pb2.CallResponse:
        async with asyncio.timeout(timeout):
            while call_id not in self.answers:
                message = await self.call.read()
                assert message is not grpc.aio.EOF, "the stream ended"
                self.messages += 1
                self.answers.update((response.id, response) for response in message.responses)
        return self.answers[call_id]


async def test_calls_stream__answers_each_call_as_its_unary_rpc_would_and_stays_open(jobs, channel, db) -> None:
    stream = CallStream(channel)
    unknown = "0190a000-0000-7000-8000-000000000000"
    await stream.send(
        ok=jobs_pb2.CallRequest(id=1, enqueue=jobs_pb2.EnqueueRequest(name="f", payload=json_payload({"args": [3]}))),
        bad=jobs_pb2.CallRequest(id=2, enqueue=jobs_pb2.EnqueueRequest(name="")),
        bad_id=jobs_pb2.CallRequest(id=3, await_job=jobs_pb2.AwaitJobRequest(id="not-a-uuid")),
        missing=jobs_pb2.CallRequest(id=4, await_job=jobs_pb2.AwaitJobRequest(id=unknown)),
        empty=jobs_pb2.CallRequest(id=5),
    )
    job = (await stream.answer(1)).enqueue.job
    assert job.name == "f" and job.state == types_pb2.JOB_STATE_PENDING
    refused = {call_id: (await stream.answer(call_id)).error for call_id in (2, 3, 4, 5)}
    assert refused[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "name" in refused[2].message
    assert refused[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "id" in refused[3].message
    assert refused[4].code == grpc.StatusCode.NOT_FOUND.value[0] and unknown in refused[4].message
    assert refused[5].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert count_jobs(db) == 1  # the refused enqueue wrote nothing

    # The stream is still open: a wait for the job is answered once a worker has run it.
    wait = jobs_pb2.AwaitJobRequest(id=job.id, wait=Duration(seconds=30))
    await stream.send(wait=jobs_pb2.CallRequest(id=6, await_job=wait))
    worker = RawWorker(channel)
    await worker.register("f")
    assignment = await worker.next("assignment")
    await worker.answer(assignment.job_id, 1, success=json_payload(9))
    done = (await stream.answer(6)).await_job
    assert done.done and done.job.state == types_pb2.JOB_STATE_SUCCESS and json.loads(done.job.result.data) == 9
    # Hanging up: what is in flight is answered, then the stream ends.
    await stream.send(last=jobs_pb2.CallRequest(id=7, enqueue=jobs_pb2.EnqueueRequest(name="f")))
    await stream.call.done_writing()
    assert (await stream.answer(7)).HasField("enqueue")
    assert await stream.call.read() is grpc.aio.EOF
    assert await stream.call.code() == grpc.StatusCode.OK
    worker.call.cancel()


async def test_calls_stream__a_job_running_or_just_finished_here_is_not_found_from_another_namespace(jobs, channel) -> None:
    job = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(name="f", namespace="a"))).job
    worker = RawWorker(channel)
    await worker.register("f", namespace="a")
    await worker.next("assignment")  # running on a worker of this sidecar
    stream = CallStream(channel)
    await stream.send(
        other=jobs_pb2.CallRequest(id=1, await_job=jobs_pb2.AwaitJobRequest(id=job.id, namespace="b")),
        own=jobs_pb2.CallRequest(id=2, await_job=jobs_pb2.AwaitJobRequest(id=job.id, namespace="a",
                                                                        wait=Duration(seconds=0))))
    assert (await stream.answer(1)).error.code == grpc.StatusCode.NOT_FOUND.value[0]
    own = (await stream.answer(2)).await_job
    assert not own.done and own.job.state == types_pb2.JOB_STATE_RUNNING
    # Just succeeded here: still nobody else's.
    await worker.answer(job.id, 1, success=json_payload("done"))
    await stream.send(
        other=jobs_pb2.CallRequest(id=3, await_job=jobs_pb2.AwaitJobRequest(id=job.id, namespace="b")),
        own=jobs_pb2.CallRequest(id=4, await_job=jobs_pb2.AwaitJobRequest(id=job.id, namespace="a")))
    assert (await stream.answer(3)).error.code == grpc.StatusCode.NOT_FOUND.value[0]
    own = (await stream.answer(4)).await_job
    assert own.done and json.loads(own.job.result.data) == "done"
    stream.call.cancel()
    worker.call.cancel()


async def test_calls_stream__answers_a_burst_of_calls_in_few_messages(jobs, channel, db) -> None:
    stream = CallStream(channel)
    calls = {f"c{n}": jobs_pb2.CallRequest(id=n, enqueue=jobs_pb2.EnqueueRequest(name="f")) for n in range(1, 201)}
    await stream.send(**calls)
    answers = [await stream.answer(n) for n in range(1, 201)]
    assert all(a.HasField("enqueue") for a in answers) and count_jobs(db) == 200
    assert len({a.enqueue.job.id for a in answers}) == 200
    assert stream.messages < 200  # answers ready together travel together
    stream.call.cancel()


async def test_calls_stream__enqueues_sent_together_share_one_statement(jobs, channel, db) -> None:
    """Group commit: the calls of one message start together, and none flushes alone ahead
    of the others. One statement gives all its rows the same created_at (its transaction's)."""
    stream = CallStream(channel)
    await stream.send(**{f"c{n}": jobs_pb2.CallRequest(id=n, enqueue=jobs_pb2.EnqueueRequest(name="f"))
                         for n in range(1, 21)})
    assert all([(await stream.answer(n)).HasField("enqueue") for n in range(1, 21)])
    assert db.execute("SELECT count(*), count(DISTINCT created_at) FROM perdure.jobs").fetchone() == (20, 1)
    stream.call.cancel()
