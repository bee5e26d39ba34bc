"""Backpressure, against a real perdured process.

Slow workers: the sidecar claims only as many jobs as its workers have free slots, however
many wait, so its memory does not follow the backlog (read from /proc, compared with a bound,
never timed). A flood of Enqueue calls from several processes at once: every call answered OK
has its job stored, and it runs to completion; a call refused says why (RESOURCE_EXHAUSTED or
UNAVAILABLE) and created nothing.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import grpc
import psycopg

from perdure import Perdure
from perdure.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc, types_pb2, workers_pb2, workers_pb2_grpc

SLOTS = 8
BACKLOG = 2000
PAYLOAD = 64 * 1024  # per job: the backlog is 128 MB of payloads
MEMORY_BOUND = 64 * 1024 * 1024  # what the sidecar may grow by while the backlog builds up
BATCH = 50  # jobs per EnqueueBatch: 3.2 MB, under the 4 MB message limit


def memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


async def test_slow_workers__claims_follow_free_slots_and_memory_stays_bounded(perdured, database_url) -> None:
    sidecar = perdured()
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        jobs, admin = jobs_pb2_grpc.JobsStub(channel), admin_pb2_grpc.AdminStub(channel)
        # A worker whose handlers never finish, and that reads nothing past its first assignments:
        # anything more the sidecar sent would pile up in the sidecar.
        work = workers_pb2_grpc.WorkersStub(channel).Work()
        await work.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(names=["slow"], concurrency=SLOTS)))
        assert (await work.read()).WhichOneof("kind") == "registered"
        payload = types_pb2.Payload(data=b"x" * PAYLOAD, encoding="bytes")
        batch = jobs_pb2.EnqueueBatchRequest(jobs=[jobs_pb2.EnqueueRequest(name="slow", payload=payload)] * BATCH)
        # The first batch fills every slot and warms every path up before the baseline is taken.
        await jobs.EnqueueBatch(batch)
        held = [(await work.read()).assignment for _ in range(SLOTS)]
        baseline = memory(sidecar.process.pid)["VmRSS"]
        with psycopg.connect(database_url, autocommit=True) as db:
            def running() -> int:
                return db.execute("SELECT count(*) FROM perdure.jobs WHERE state = 'running'").fetchone()[0]

            most_running = running()
            for _ in range(BACKLOG // BATCH):
                await jobs.EnqueueBatch(batch)
                most_running = max(most_running, running())
            peak = memory(sidecar.process.pid)["VmHWM"]
            in_flight = (await admin.GetInfo(admin_pb2.GetInfoRequest())).in_flight
            # The handlers end: as many new jobs come as slots were freed, no more.
            for assignment in held:
                await work.write(workers_pb2.WorkerMessage(outcome=workers_pb2.Outcome(
                    job_id=assignment.job_id, attempt=assignment.attempt, success=types_pb2.Payload(encoding="bytes"))))
            kinds = [(await work.read()).WhichOneof("kind") for _ in range(2 * SLOTS)]
            most_running = max(most_running, running())
            pending = db.execute("SELECT count(*) FROM perdure.jobs WHERE state = 'pending'").fetchone()[0]
        work.cancel()
    print(f"sidecar memory: {baseline / 2**20:.0f} MB before the backlog, peak {peak / 2**20:.0f} MB "
          f"with {pending} jobs ({pending * PAYLOAD / 2**20:.0f} MB of payloads) waiting")
    assert most_running == SLOTS and in_flight == SLOTS
    assert sorted(kinds) == ["ack"] * SLOTS + ["assignment"] * SLOTS
    assert pending == BACKLOG + BATCH - 2 * SLOTS
    assert peak - baseline < MEMORY_BOUND, f"grew by {(peak - baseline) / 2**20:.0f} MB"


FLOOD_CLIENTS = 4
CALLS_PER_CLIENT = 800  # 3,200 at once: past gRPC's default limits of calls waiting
# One flooding process: every call at once, each with an id of its own; prints (id, code) per call.
FLOOD = """
import asyncio, json, sys, uuid
import grpc
from perdure.v1 import jobs_pb2, jobs_pb2_grpc

async def main(address, calls):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = jobs_pb2_grpc.JobsStub(channel)

        async def one():
            job_id = str(uuid.uuid4())
            try:
                await stub.Enqueue(jobs_pb2.EnqueueRequest(name="flood:job", id=job_id), timeout=120)
                return job_id, "OK"
            except grpc.aio.AioRpcError as exc:
                return job_id, exc.code().name

        print(json.dumps(await asyncio.gather(*(one() for _ in range(calls)))))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_enqueue_flood__every_accepted_job_is_stored_and_runs(perdured, database_url) -> None:
    sidecar = perdured()
    clients = [await asyncio.create_subprocess_exec(sys.executable, "-c", FLOOD, sidecar.address,
                                                    str(CALLS_PER_CLIENT), stdout=asyncio.subprocess.PIPE)
               for _ in range(FLOOD_CLIENTS)]
    answers: dict[str, str] = {}
    for client in clients:
        out, _ = await client.communicate()
        assert client.returncode == 0
        answers.update(dict(json.loads(out)))
    accepted = {job_id for job_id, code in answers.items() if code == "OK"}
    refused = {job_id: code for job_id, code in answers.items() if code != "OK"}
    print(f"{len(accepted)} calls accepted, {len(refused)} refused")
    assert set(refused.values()) <= {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}, set(refused.values())
    with psycopg.connect(database_url, autocommit=True) as db:
        stored = {str(r[0]) for r in db.execute("SELECT id FROM perdure.jobs WHERE name = 'flood:job'")}
        assert stored == accepted  # nothing accepted is lost; nothing refused was created
        worker = Perdure(address=sidecar.address, worker_concurrency=50)

        @worker.durable("flood:job")
        async def job() -> None:
            return None

        async with worker:
            ids = [uuid.UUID(job_id) for job_id in accepted]
            while db.execute("SELECT count(*) FROM perdure.jobs WHERE id = ANY(%s) AND state <> 'success'",
                             (ids,)).fetchone()[0]:
                await asyncio.sleep(0.1)


async def test_worker_that_does_not_read__is_read_no_further_and_the_sidecar_does_not_queue_without_bound(
        perdured) -> None:
    """Each made-up outcome is answered (not recorded). A worker that sends them without ever
    reading the answers would have them pile up in the sidecar: the sidecar stops reading it
    instead, so its writes wait, and the sidecar's memory does not grow."""
    sidecar = perdured()
    # Without window probing, the client takes in 64 kB it does not read, no more: the rest
    # would wait in the sidecar.
    async with grpc.aio.insecure_channel(sidecar.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        work = workers_pb2_grpc.WorkersStub(channel).Work()
        await work.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(names=["deaf"], concurrency=1)))
        assert (await work.read()).WhichOneof("kind") == "registered"
        before = memory(sidecar.process.pid)["VmRSS"]
        blocked = False
        for _ in range(200_000):  # far more answers than a reading worker could ever have waiting
            write = work.write(workers_pb2.WorkerMessage(outcome=workers_pb2.Outcome(
                job_id=str(uuid.uuid4()), attempt=1, success=types_pb2.Payload(data=b"1", encoding="json"))))
            try:
                await asyncio.wait_for(write, 10)  # a write that never completes: the sidecar stopped reading
            except TimeoutError:
                blocked = True
                break
        assert blocked, "the sidecar read every message of a worker that reads nothing"
        assert memory(sidecar.process.pid)["VmRSS"] - before < MEMORY_BOUND
        # The sidecar still serves others.
        client = Perdure(address=sidecar.address)

        @client.durable("still:serving")
        async def serving() -> str:
            return "yes"

        async with client:
            assert await (await serving()).result(timeout=60) == "yes"
        work.cancel()


async def test_calls_stream_client_that_does_not_read__is_read_no_further(perdured) -> None:
    """The same for the Calls stream: calls in progress and answers waiting are bounded, so a
    client that sends calls without reading the answers finds its writes waiting."""
    sidecar = perdured()
    async with grpc.aio.insecure_channel(sidecar.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        calls = jobs_pb2_grpc.JobsStub(channel).Calls()
        before = memory(sidecar.process.pid)["VmRSS"]
        blocked = False
        for start in range(0, 1_000_000, 100):  # an empty call is refused at once, without the database
            write = asyncio.ensure_future(calls.write(jobs_pb2.CallRequests(
                calls=[jobs_pb2.CallRequest(id=n) for n in range(start, start + 100)])))
            done, _ = await asyncio.wait([write], timeout=10)  # (cancelling a write would end the call)
            if not done:
                blocked = True
                break
        assert blocked, "the sidecar read every call of a client that reads no answer"
        assert memory(sidecar.process.pid)["VmRSS"] - before < MEMORY_BOUND
        # Reading again lets it go on: the answers are there, and the waiting write goes through.
        first = await asyncio.wait_for(calls.read(), 30)
        assert first.responses[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        while not write.done():
            await asyncio.wait_for(calls.read(), 30)
        calls.cancel()
