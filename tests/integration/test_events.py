"""Durable events: emitted before the wait, after it, never (timeout), and over raw gRPC."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

import perdure as sdk
from perdure.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2


def approval_flow(perdure, name: str = "orders:approve", timeout: float | None = None):
    @perdure.durable(name, max_attempts=1)
    async def approve(order: str) -> dict:
        ctx = sdk.context()
        decision = await ctx.wait_for_event(f"approval:{order}", timeout=timeout)
        return {"order": order, "decision": decision}

    return approve


async def wait_until_suspended(handle) -> None:
    while await handle.status() != "suspended":
        await asyncio.sleep(0.02)


async def test_event_emitted_before_the_wait__is_received_at_once(make_client) -> None:
    perdure = make_client()
    approve = approval_flow(perdure)
    async with perdure:
        assert await perdure.emit_event("approval:o-1", {"approved": True}) == 0  # nobody waits yet
        handle = await approve("o-1")
        assert await handle.result(timeout=30) == {"order": "o-1", "decision": {"approved": True}}
        assert [a.outcome for a in (await handle.details()).attempts] == ["succeeded"]


async def test_event_emitted_after_the_wait__wakes_the_suspended_job(make_client) -> None:
    perdure = make_client(worker_concurrency=1)
    approve = approval_flow(perdure)
    async with perdure:
        handle = await approve("o-2")
        await wait_until_suspended(handle)  # and it holds no worker slot meanwhile
        assert await perdure.emit_event("approval:o-2", {"approved": False, "by": "ann"}) == 1
        assert await handle.result(timeout=30) == {"order": "o-2", "decision": {"approved": False, "by": "ann"}}
        details = await handle.details()
    assert [a.outcome for a in details.attempts] == ["suspended", "succeeded"]
    assert "event:approval:o-2" in [s.name for s in details.steps]


async def test_event_that_never_comes__raises_a_timeout_the_handler_can_catch(make_client) -> None:
    perdure = make_client()

    @perdure.durable("orders:approve:or:expire", max_attempts=1)
    async def approve_or_expire(order: str) -> str:
        try:
            await sdk.context().wait_for_event(f"approval:{order}", timeout=0.3)
        except sdk.EventTimeoutError:
            return "expired"
        return "approved"

    async with perdure:
        assert await (await approve_or_expire("o-3")).result(timeout=30) == "expired"


async def test_event_from_raw_grpc__wakes_the_job_and_can_be_read_back(make_client, sidecar) -> None:
    perdure = make_client()
    approve = approval_flow(perdure)
    async with perdure, grpc.aio.insecure_channel(sidecar.address) as channel:
        jobs = jobs_pb2_grpc.JobsStub(channel)
        handle = await approve("o-4")
        await wait_until_suspended(handle)
        payload = types_pb2.Payload(data=json.dumps("yes").encode(), encoding="json")
        response = await jobs.EmitEvent(jobs_pb2.EmitEventRequest(name="approval:o-4", payload=payload))
        assert response.woken == 1
        assert await handle.result(timeout=30) == {"order": "o-4", "decision": "yes"}
        event = await jobs.GetEvent(jobs_pb2.GetEventRequest(name="approval:o-4"))
        assert json.loads(event.payload.data) == "yes" and event.HasField("emitted_at")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.GetEvent(jobs_pb2.GetEventRequest(name="never:emitted"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.EmitEvent(jobs_pb2.EmitEventRequest(name="", payload=payload))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_emitting_again__replaces_the_payload_for_later_waiters_only(make_client) -> None:
    perdure = make_client()
    approve = approval_flow(perdure)
    async with perdure:
        await perdure.emit_event("approval:o-5", "first")
        first = await (await approve("o-5")).result(timeout=30)
        await perdure.emit_event("approval:o-5", "second")
        second = await (await approve.options(idempotency_key="again")("o-5")).result(timeout=30)
    assert (first["decision"], second["decision"]) == ("first", "second")


async def test_events__belong_to_their_namespace(make_client) -> None:
    here, elsewhere = make_client(), make_client(namespace="elsewhere")
    approve = approval_flow(here)
    async with here, elsewhere:
        handle = await approve("o-6")
        await wait_until_suspended(handle)
        assert await elsewhere.emit_event("approval:o-6", "wrong namespace") == 0
        assert await handle.status() == "suspended"
        assert await here.emit_event("approval:o-6", "right") == 1
        assert (await handle.result(timeout=30))["decision"] == "right"
