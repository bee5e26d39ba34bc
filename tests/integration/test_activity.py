"""Admin.GetActivity: per-minute activity per function, cluster-wide, from perdure.activity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from perdure.v1 import admin_pb2, admin_pb2_grpc
from perdured import metrics as metrics_module

from ..conftest import start_sidecar
from .test_admin import eventually


def _add(db, namespace: str, name: str, minute: datetime, **counts: int) -> None:
    columns = ", ".join(counts)
    db.execute(f"INSERT INTO perdure.activity (namespace, name, minute, {columns}) "
               f"VALUES (%s, %s, %s, {', '.join(['%s'] * len(counts))})", (namespace, name, minute, *counts.values()))


async def _activity(sidecar, **fields) -> admin_pb2.GetActivityResponse:
    window = fields.pop("window", None)
    request = admin_pb2.GetActivityRequest(**fields)
    if window is not None:
        request.window.FromSeconds(window)
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        return await admin_pb2_grpc.AdminStub(channel).GetActivity(request)


async def test_activity__per_function_buckets_within_the_window(sidecar, db) -> None:
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    _add(db, "default", "b:fn", minute, enqueued=3, started=4, succeeded=2, failed=2, dead=1)
    _add(db, "default", "a:fn", minute - timedelta(minutes=10), succeeded=5)
    _add(db, "default", "a:fn", minute - timedelta(minutes=1), cancelled=1)
    _add(db, "default", "a:fn", minute - timedelta(hours=2), succeeded=99)  # before the default hour
    _add(db, "other", "a:fn", minute, enqueued=7)

    response = await _activity(sidecar)
    assert [(f.namespace, f.name) for f in response.functions] == [("default", "a:fn"), ("default", "b:fn"),
                                                                     ("other", "a:fn")]
    a, b, _ = response.functions
    assert [(bucket.minute.ToDatetime(UTC), bucket.succeeded, bucket.cancelled) for bucket in a.buckets] == [
        (minute - timedelta(minutes=10), 5, 0), (minute - timedelta(minutes=1), 0, 1)]
    (only,) = b.buckets
    assert (only.enqueued, only.started, only.succeeded, only.failed, only.dead, only.cancelled) == (3, 4, 2, 2, 1, 0)
    start, at = response.start.ToDatetime(UTC), response.at.ToDatetime(UTC)
    assert start.second == 0 and timedelta(minutes=59) <= at - start < timedelta(minutes=60)

    longer = await _activity(sidecar, namespace="default", name="a:fn", window=3 * 3600)
    assert [(f.name, [bucket.succeeded for bucket in f.buckets]) for f in longer.functions] == [("a:fn", [99, 5, 0])]
    shorter = await _activity(sidecar, namespace="other", window=120)  # this minute (or the next)
    assert [(f.namespace, [bucket.enqueued for bucket in f.buckets]) for f in shorter.functions] == [("other", [7])]


async def test_activity__nothing_yet_still_says_which_minutes(sidecar) -> None:
    response = await _activity(sidecar, window=600)
    assert not response.functions
    assert timedelta(minutes=9) <= response.at.ToDatetime(UTC) - response.start.ToDatetime(UTC) < timedelta(minutes=10)


async def test_activity__refuses_a_window_beyond_a_day_or_a_bad_name(sidecar) -> None:
    for fields in ({"window": 2 * 24 * 3600}, {"name": "bad\x00name"}, {"namespace": "no spaces"}):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _activity(sidecar, **fields)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_activity__counts_what_every_sidecar_did(database_url, make_client, monkeypatch) -> None:
    monkeypatch.setattr(metrics_module, "FLUSH_INTERVAL", 0.1)  # activity lands at once
    working, reading = await start_sidecar(database_url), await start_sidecar(database_url)
    try:
        worker = make_client(address=working.address)

        @worker.durable("activity:work")
        async def work(n: int) -> int:
            return n

        async with worker:
            await worker.wait_until_serving()
            for n in range(3):
                await (await work(n)).result(timeout=30)

            async def counted():
                response = await _activity(reading, name="activity:work")
                buckets = [b for f in response.functions for b in f.buckets]
                return sum(b.succeeded for b in buckets) == 3 and buckets

            buckets = await eventually(counted, "three successes in the activity")
        assert sum(b.enqueued for b in buckets) == sum(b.started for b in buckets) == 3
    finally:
        await working.stop()
        await reading.stop()
