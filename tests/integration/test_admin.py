"""The Admin service and the metrics: statistics, workers and the sidecar's own description,
read through another sidecar than the one that did the work; Prometheus metrics over HTTP."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import grpc
import pytest

import perdure
from perdure.v1 import admin_pb2, admin_pb2_grpc
from perdured import metrics as metrics_module
from perdured.migrate import load_migrations

from ..conftest import start_sidecar


@pytest.fixture
async def two_sidecars(database_url, monkeypatch):
    monkeypatch.setattr(metrics_module, "FLUSH_INTERVAL", 0.1)  # activity lands at once
    first, second = await start_sidecar(database_url), await start_sidecar(database_url)
    yield first, second
    await first.stop()
    await second.stop()


async def eventually(check, what: str, timeout: float = 30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)
    return value


async def test_stats__counts_and_recent_activity_per_function_cluster_wide(two_sidecars, make_client) -> None:
    working, reading = two_sidecars
    worker = make_client(address=working.address)

    @worker.durable("stats:work", max_attempts=2, initial_delay=0.01, max_delay=0.01)
    async def work(fail: bool) -> None:
        if fail:
            raise ValueError("no")

    async with worker, grpc.aio.insecure_channel(reading.address) as channel:
        await worker.wait_until_serving()
        for fail in (False, False, False, True):
            handle = await work(fail)
            with pytest.raises(perdure.JobDeadError) if fail else _nothing():
                await handle.result(timeout=30)
        await worker.enqueue("stats:nobody", 1)
        await worker.enqueue("stats:nobody", 2)
        admin = admin_pb2_grpc.AdminStub(channel)

        async def settled():
            response = await admin.GetStats(admin_pb2.GetStatsRequest())
            by_name = {f.name: f for f in response.functions}
            worked, idle = by_name.get("stats:work"), by_name.get("stats:nobody")
            flushed = worked and idle and worked.succeeded_recently == 3 and worked.dead_recently == 1 \
                and idle.enqueued_recently == 2
            return by_name if flushed else None

        by_name = await eventually(settled, "the activity of both functions")
    worked, idle = by_name["stats:work"], by_name["stats:nobody"]
    assert (worked.pending, worked.running, worked.dead) == (0, 0, 1)
    assert (worked.enqueued_recently, worked.started_recently, worked.failed_recently) == (4, 5, 2)
    assert worked.failure_rate == pytest.approx(2 / 5)
    assert worked.throughput > 0
    assert (idle.pending, idle.enqueued_recently, idle.started_recently) == (2, 2, 0)
    assert idle.HasField("oldest_pending_age")
    assert not worked.HasField("oldest_pending_age")


async def test_stats__refuses_a_window_beyond_what_is_kept(sidecar) -> None:
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        request = admin_pb2.GetStatsRequest()
        request.window.FromSeconds(2 * 24 * 3600)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await admin_pb2_grpc.AdminStub(channel).GetStats(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("window: ")


async def test_workers__every_sidecars_workers_are_listed_until_they_leave(two_sidecars, make_client) -> None:
    first, second = two_sidecars
    a = make_client(address=first.address, worker_concurrency=3)
    b = make_client(address=second.address, worker_concurrency=5, namespace="billing")

    @a.durable("emails:send")
    async def send() -> None: ...

    @b.durable("invoices:render")
    async def render() -> None: ...

    async with grpc.aio.insecure_channel(second.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        async with a, b:
            await a.wait_until_serving()
            await b.wait_until_serving()
            listed = (await admin.ListWorkers(admin_pb2.ListWorkersRequest())).workers
            assert sorted((w.namespace, list(w.names), w.concurrency, w.sidecar_id) for w in listed) == [
                ("billing", ["invoices:render"], 5, second.id), ("default", ["emails:send"], 3, first.id)]
            assert all(w.sdk.startswith("perdure-python/") for w in listed)
            only = (await admin.ListWorkers(admin_pb2.ListWorkersRequest(namespace="billing"))).workers
            assert [w.names for w in only] == [["invoices:render"]]

        async def gone():
            return not (await admin.ListWorkers(admin_pb2.ListWorkersRequest())).workers

        await eventually(gone, "the workers to leave the list")


async def test_info__describes_the_sidecar_and_its_schema(sidecar, make_client) -> None:
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        info = await admin_pb2_grpc.AdminStub(channel).GetInfo(admin_pb2.GetInfoRequest())
    assert info.version == perdure.__version__
    assert info.sidecar_id == sidecar.id
    assert info.schema_version == info.latest_schema_version == len(load_migrations())
    assert info.database_version and not info.embedded_database
    assert info.lease.ToNanoseconds() > 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_metrics__served_over_http_with_counts_per_function(database_url, make_client) -> None:
    address = f"127.0.0.1:{free_port()}"
    sidecar = await start_sidecar(database_url, metrics_listen=address)
    try:
        client = make_client(address=sidecar.address)

        @client.durable("metrics:job", max_attempts=1)
        async def job(fail: bool) -> None:
            if fail:
                raise RuntimeError("boom")

        async with client:
            await client.wait_until_serving()
            await (await job(False)).result(timeout=30)
            with pytest.raises(perdure.JobDeadError):
                await (await job(True)).result(timeout=30)
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode())
    finally:
        await sidecar.stop()
    labels = 'function="metrics:job",namespace="default"'
    assert f"perdure_jobs_enqueued_total{{{labels}}} 2.0" in text
    assert f"perdure_attempts_started_total{{{labels}}} 2.0" in text
    assert f"perdure_jobs_succeeded_total{{{labels}}} 1.0" in text
    assert f"perdure_attempts_failed_total{{{labels}}} 1.0" in text
    assert f"perdure_jobs_dead_total{{{labels}}} 1.0" in text
    assert f'perdure_attempt_duration_seconds_count{{{labels},outcome="succeeded"}} 1.0' in text
    assert f"perdure_scheduling_lag_seconds_count{{{labels}}} 2.0" in text
    assert "perdure_workers_connected" in text and "perdure_database_errors_total 0.0" in text


class _nothing:
    def __enter__(self) -> None: ...

    def __exit__(self, *exc: object) -> None: ...
