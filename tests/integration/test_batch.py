"""Batch enqueue: many jobs in one RPC, one statement and one commit; all or none."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace

import grpc
import psycopg
import pytest

import perdure as sdk
from perdure._client import ENQUEUE_BATCH, ENQUEUE_BATCHES_IN_FLIGHT
from perdure.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2
from perdured.metrics import Metrics
from perdured.store import Store
from perdured.validation import InvalidArgument
from tests.conftest import new_job, start_sidecar


async def test_enqueue_many__every_job_runs_once_in_order_of_the_calls(make_client, database_url) -> None:
    client = make_client(worker_concurrency=50)
    seen: list[int] = []

    @client.durable("batch:square", max_attempts=2)
    async def square(n: int) -> int:
        seen.append(n)
        return n * n

    async with client:
        await client.wait_until_serving()
        handles = await square.enqueue_many([(n,) for n in range(2500)], priority=3)
        assert len(handles) == 2500 and len({h.id for h in handles}) == 2500
        results = [await handle.result(timeout=60) for handle in handles]
        details = await handles[-1].details()
    assert results == [n * n for n in range(2500)]
    assert sorted(seen) == list(range(2500))
    assert (details.max_attempts, details.priority, details.args) == (2, 3, [2499])


async def test_enqueue_many__a_refused_batch_stops_the_batches_not_yet_sent(database_url) -> None:
    sidecar = await start_sidecar(database_url, max_payload_bytes=1000)
    try:
        async with sdk.Perdure(address=sidecar.address, namespace="batch") as client:
            calls = [("x" * (2000 if n == 1500 else 1),) for n in range(8000)]  # the second batch is refused
            with pytest.raises(sdk.InvalidArgumentError, match="payload"):
                await client.enqueue_many("batch:noop", calls)
            await asyncio.sleep(1)  # the client stays open: room for any batch still to be sent
    finally:
        await sidecar.stop()
    with psycopg.connect(database_url) as conn:
        stored = [n for (n,) in conn.execute("SELECT convert_from(payload, 'UTF8') FROM perdure.jobs")]
    # At most the batches sent alongside the refused one went in; none of the later ones.
    assert len(stored) <= (ENQUEUE_BATCHES_IN_FLIGHT - 1) * ENQUEUE_BATCH and not any(len(p) > 100 for p in stored)


async def test_enqueue_batch__one_invalid_job_refuses_the_whole_batch(sidecar, database_url) -> None:
    def job(name: str) -> jobs_pb2.EnqueueRequest:
        return jobs_pb2.EnqueueRequest(name=name, payload=types_pb2.Payload(data=b'{"args": []}', encoding="json"))

    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await jobs.EnqueueBatch(jobs_pb2.EnqueueBatchRequest(jobs=[job("batch:ok"), job("batch:ok"), job("")]))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details().startswith("jobs[2].name: ")
        too_many = jobs_pb2.EnqueueBatchRequest(jobs=[job("batch:ok")] * 10_001)
        with pytest.raises(grpc.aio.AioRpcError, match="at most 10000 per call"):
            await jobs.EnqueueBatch(too_many)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM perdure.jobs").fetchone()[0] == 0


async def test_enqueue_many__refuses_an_idempotency_key_and_non_sequences(make_client, database_url) -> None:
    client = make_client()
    async with client:
        with pytest.raises(ValueError, match="same options: an idempotency_key"):
            await client.enqueue_many("batch:x", [(1,)], idempotency_key="k")
        with pytest.raises(TypeError, match="sequence of positional arguments"):
            await client.enqueue_many("batch:x", ["abc"])
        # Every call is checked before the first batch goes: a bad one late in the list stores nothing.
        with pytest.raises(TypeError, match="must be JSON-serialisable"):
            await client.enqueue_many("batch:x", [(n,) for n in range(2500)] + [(object(),)])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM perdure.jobs WHERE name = 'batch:x'").fetchone()[0] == 0


async def test_enqueue_with_its_own_id__repeated_returns_the_same_job_and_a_taken_id_is_refused(sidecar) -> None:
    from perdure._ids import new_job_id

    job_id = str(new_job_id())

    def request(name: str) -> jobs_pb2.EnqueueRequest:
        return jobs_pb2.EnqueueRequest(id=job_id, name=name,
                                       payload=types_pb2.Payload(data=b'{"args": []}', encoding="json"))

    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        first = await jobs.Enqueue(request("ids:one"))
        again = await jobs.Enqueue(request("ids:one"))  # a retry whose first answer was lost
        assert first.job.id == again.job.id == job_id
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await jobs.Enqueue(request("ids:other"))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details() == f"id: {job_id} is the id of another job"
        # In a batch too, with or without common options: the whole batch is refused.
        other = jobs_pb2.EnqueueRequest(name="ids:other", payload=_payload(0))
        for batch in (jobs_pb2.EnqueueBatchRequest(jobs=[other, request("ids:other")]),
                      jobs_pb2.EnqueueBatchRequest(common=jobs_pb2.EnqueueRequest(name="ids:other"), jobs=[
                          jobs_pb2.EnqueueRequest(payload=_payload(0)),
                          jobs_pb2.EnqueueRequest(id=job_id, payload=_payload(1))])):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await jobs.EnqueueBatch(batch)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert raised.value.details() == f"id: {job_id} is the id of another job"
        listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest())
    assert [job.id for job in listed.jobs] == [job_id]


async def test_enqueue_batch__brief_answers_each_job_with_its_identity_and_state_only(sidecar) -> None:
    def job(key: str = "") -> jobs_pb2.EnqueueRequest:
        return jobs_pb2.EnqueueRequest(name="batch:brief", idempotency_key=key, priority=4,
                                       payload=types_pb2.Payload(data=b'{"args": [1]}', encoding="json"))

    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        full = await jobs.EnqueueBatch(jobs_pb2.EnqueueBatchRequest(jobs=[job("k")]))
        brief = await jobs.EnqueueBatch(jobs_pb2.EnqueueBatchRequest(jobs=[job(), job("k")], brief=True))
        stored = await jobs.GetJob(jobs_pb2.GetJobRequest(id=brief.results[0].job.id))
    assert full.results[0].job.payload.data == b'{"args": [1]}' and full.results[0].job.priority == 4
    new, deduplicated = brief.results
    assert (new.deduplicated, deduplicated.deduplicated) == (False, True)
    assert deduplicated.job.id == full.results[0].job.id
    for result in brief.results:
        expected = types_pb2.Job(id=result.job.id, namespace="default", name="batch:brief",
                                 state=types_pb2.JOB_STATE_PENDING, run_at=result.job.run_at)
        assert result.job == expected and result.job.HasField("run_at")
    assert stored.job.run_at == new.job.run_at and stored.job.payload.data == b'{"args": [1]}'


def _payload(n: int) -> types_pb2.Payload:
    return types_pb2.Payload(data=b'{"args": [%d]}' % n, encoding="json")


def _options(request: jobs_pb2.EnqueueRequest) -> jobs_pb2.EnqueueRequest:
    """Every option a caller may give, none of them a job's own."""
    request.namespace, request.name, request.priority = "shared", "batch:common", 9
    request.retry.max_attempts, request.retry.backoff, request.retry.jitter = 4, types_pb2.BACKOFF_FIXED, 0.5
    request.retry.initial_delay.FromSeconds(2)
    request.retry.max_delay.FromSeconds(20)
    request.timeout.FromSeconds(7)
    request.delay.FromSeconds(600)
    request.start_within.FromSeconds(900)
    request.max_duration.FromSeconds(3600)
    request.labels["tenant"] = "acme"
    request.concurrency_key = "account-1"
    request.trace_context["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request.parent_id = "0190a0a0-0000-7000-8000-000000000001"
    return request


async def test_enqueue_batch__common_options_apply_to_every_job_as_if_each_had_set_them(sidecar) -> None:
    from google.protobuf.json_format import MessageToDict

    from perdure._ids import new_job_id

    own_id = str(new_job_id())
    shared = jobs_pb2.EnqueueBatchRequest(common=_options(jobs_pb2.EnqueueRequest()), jobs=[
        jobs_pb2.EnqueueRequest(payload=_payload(0)),
        jobs_pb2.EnqueueRequest(payload=_payload(1), id=own_id),
        jobs_pb2.EnqueueRequest(payload=_payload(2), idempotency_key="k2"),
        jobs_pb2.EnqueueRequest(payload=_payload(3), idempotency_key="k2"),  # the same job as the one before
    ])
    # The same jobs, each with every option of its own.
    each = jobs_pb2.EnqueueBatchRequest(jobs=[_options(jobs_pb2.EnqueueRequest(payload=_payload(n), idempotency_key=key))
                                              for n, key in ((0, ""), (1, ""), (2, "e2"), (3, "e2"))])

    def stored(job: types_pb2.Job) -> dict[str, object]:
        """The job as stored, without what differs between two enqueues of it."""
        figures = MessageToDict(job)
        for volatile in ("id", "createdAt", "runAt", "startBy", "idempotencyKey"):
            figures.pop(volatile, None)
        return figures

    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        answer = await jobs.EnqueueBatch(shared)
        again = await jobs.EnqueueBatch(shared)  # as after a lost answer
        expected = await jobs.EnqueueBatch(each)
        listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest(namespace="shared"))
    assert [r.deduplicated for r in answer.results] == [False, False, False, True]
    assert answer.results[1].job.id == own_id and answer.results[3].job.id == answer.results[2].job.id
    # Sent again, the jobs with an id or a key are the ones stored; the first, without, is new.
    assert [r.job.id for r in again.results][1:] == [r.job.id for r in answer.results][1:]
    assert again.results[0].job.id != answer.results[0].job.id
    assert len(listed.jobs) == 7  # three of each way, and the first again
    assert [stored(r.job) for r in answer.results] == [stored(r.job) for r in expected.results]
    assert answer.results[0].job.retry.max_attempts == 4 and answer.results[0].job.labels == {"tenant": "acme"}
    assert [json.loads(r.job.payload.data)["args"] for r in answer.results] == [[0], [1], [2], [2]]


@pytest.mark.parametrize(("change", "refusal"), [
    (lambda r: setattr(r.jobs[1], "priority", 3), "jobs[1].priority: comes from common"),
    (lambda r: r.jobs[2].labels.update({"a": "b"}), "jobs[2].labels: comes from common"),
    (lambda r: r.common.payload.CopyFrom(_payload(1)), "common.payload: is each job's own"),
    (lambda r: setattr(r.common, "id", "0190a0a0-0000-7000-8000-000000000002"), "common.id: is each job's own"),
    (lambda r: setattr(r.common, "idempotency_key", "k"), "common.idempotency_key: is each job's own"),
    (lambda r: setattr(r.common, "name", ""), "common.name: must not be empty"),
    (lambda r: setattr(r.common, "priority", 5000), "common.priority: must be between"),
    (lambda r: r.jobs[2].payload.CopyFrom(types_pb2.Payload(data=b"{", encoding="json")), "jobs[2].payload.data: "),
    (lambda r: setattr(r.jobs[0], "id", "not-an-id"), "jobs[0].id: 'not-an-id' is not a job id"),
    (lambda r: setattr(r.jobs[1], "idempotency_key", "x" * 256), "jobs[1].idempotency_key: is 256 characters"),
])
async def test_enqueue_batch__with_common_a_bad_job_or_common_is_named_and_nothing_is_stored(
        sidecar, database_url, change, refusal) -> None:
    request = jobs_pb2.EnqueueBatchRequest(common=jobs_pb2.EnqueueRequest(name="batch:common"),
                                           jobs=[jobs_pb2.EnqueueRequest(payload=_payload(n)) for n in range(3)])
    change(request)
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await jobs_pb2_grpc.JobsStub(channel).EnqueueBatch(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(refusal), raised.value.details()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM perdure.jobs").fetchone()[0] == 0


async def test_enqueues_committed_together__a_taken_id_refuses_only_its_own_caller(sidecar, database_url) -> None:
    from perdure._ids import new_job_id

    taken = str(new_job_id())
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        await jobs.Enqueue(jobs_pb2.EnqueueRequest(id=taken, name="ids:one", payload=_payload(0)))
        # Sent at once, they share inserts (group commit): the one with the taken id among them.
        requests = [jobs_pb2.EnqueueRequest(name="ids:two", payload=_payload(n)) for n in range(8)]
        requests[5].id = taken
        answers = await asyncio.gather(*(jobs.Enqueue(r) for r in requests), return_exceptions=True)
    refused = [n for n, answer in enumerate(answers) if isinstance(answer, grpc.aio.AioRpcError)]
    assert refused == [5] and answers[5].details() == f"id: {taken} is the id of another job"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM perdure.jobs WHERE name = 'ids:two'").fetchone()[0] == 7


async def test_a_refused_batch__is_not_counted_in_the_metrics(database_url) -> None:
    """The first job of the batch is inserted, the second's id is taken: the transaction rolls
    back, and the counts must say so (no job enqueued, none in the activity)."""
    store = await Store.open(database_url, 2, metrics=Metrics(served=True))
    try:
        taken = new_job("counts", "counts:first")
        await store.enqueue([taken], sidecar_id="sidecar", lease=30)
        with pytest.raises(InvalidArgument, match="is the id of another job"):
            batch = [new_job("counts", "counts:batch"), new_job("counts", "counts:batch", taken.id)]
            await store.enqueue_batch(batch, sidecar_id="sidecar", lease=30)
        counted = store.metrics.registry.get_sample_value
        assert counted("perdure_jobs_enqueued_total", {"namespace": "counts", "function": "counts:first"}) == 1
        assert counted("perdure_jobs_enqueued_total", {"namespace": "counts", "function": "counts:batch"}) is None
        assert [row["name"] for row in store.metrics.take_activity()] == ["counts:first"]
    finally:
        await store.close()


async def test_jobs_gathered_into_one_statement__alike_go_as_shared_and_each_keeps_its_own(database_url) -> None:
    """A group commit's jobs that share their options are sent as a batch with `common` (their
    options converted once); with one option apart, each as itself. Both store each job as sent."""
    store = await Store.open(database_url, 2)
    statements: list[str] = []
    run = store._all

    async def recorded(query: str, params: dict) -> list[dict]:
        statements.append(query)
        return await run(query, params)

    store._all = recorded  # type: ignore[method-assign]
    try:
        alike = [replace(new_job("shared", "shared:alike"), payload=json.dumps([n]).encode(),
                         idempotency_key=f"key-{n}" if n % 2 else None) for n in range(6)]
        again = replace(alike[1], id=uuid.uuid4())  # the same key as alike[1]: that job comes back
        results = await store.enqueue([*alike, again], sidecar_id="sidecar", lease=30)
        assert statements[0] == "enqueue_shared"
        assert [(row["id"], row["payload"], row["idempotency_key"], deduplicated) for row, deduplicated in results] == [
            *[(job.id, job.payload, job.idempotency_key, False) for job in alike], (alike[1].id, b"[1]", "key-1", True)]

        statements.clear()
        apart = [new_job("shared", "shared:apart"), replace(new_job("shared", "shared:apart"), priority=5)]
        results = await store.enqueue(apart, sidecar_id="sidecar", lease=30)
        assert statements == ["enqueue"]
        assert [row["priority"] for row, _ in results] == [0, 5]
    finally:
        await store.close()
