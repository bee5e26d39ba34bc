"""The SDK's Calls stream (Enqueue and AwaitJob as messages on one stream), and its fallback
to unary RPCs for a sidecar that has no Calls (one from before it existed)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from perdure import InvalidArgumentError, Perdure
from perdure._calls import LOST_STREAM
from perdure.v1 import jobs_pb2_grpc


class SidecarWithoutCalls(jobs_pb2_grpc.JobsServicer):
    """A sidecar as it was before Calls: the unary RPCs (relayed to a real sidecar); Calls is
    UNIMPLEMENTED, as the generated base class answers."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.real = jobs_pb2_grpc.JobsStub(channel)
        self.unary_calls: list[str] = []

    async def Enqueue(self, request, context):  # noqa: N802 - the RPC's name
        self.unary_calls.append("Enqueue")
        return await self.real.Enqueue(request)

    async def AwaitJob(self, request, context):  # noqa: N802
        self.unary_calls.append("AwaitJob")
        return await self.real.AwaitJob(request)

    async def GetJob(self, request, context):  # noqa: N802
        return await self.real.GetJob(request)


@contextlib.asynccontextmanager
async def relay(sidecar, servicer_type: type[SidecarWithoutCalls]) -> AsyncIterator[tuple[str, SidecarWithoutCalls]]:
    """A Jobs server of `servicer_type` in front of the test sidecar: its address and itself."""
    async with grpc.aio.insecure_channel(sidecar.address) as channel:
        servicer = servicer_type(channel)
        server = grpc.aio.server()
        jobs_pb2_grpc.add_JobsServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield f"127.0.0.1:{port}", servicer
        finally:
            await server.stop(None)


@pytest.fixture
async def old_sidecar(sidecar) -> AsyncIterator[tuple[str, SidecarWithoutCalls]]:
    async with relay(sidecar, SidecarWithoutCalls) as served:
        yield served


async def test_sdk__enqueues_and_awaits_on_one_stream_and_many_callers_share_it(make_client) -> None:
    perdure = make_client()

    @perdure.durable("calls:double")
    async def double(n: int) -> int:
        return 2 * n

    async with perdure:
        handles = await asyncio.gather(*(double(n) for n in range(50)))
        assert await asyncio.gather(*(h.result(timeout=30) for h in handles)) == [2 * n for n in range(50)]
        # Refusals come back as the unary RPC's errors would, and the stream carries on.
        with pytest.raises(InvalidArgumentError, match="name"):
            await perdure.enqueue("")
        assert await (await double(21)).result(timeout=30) == 42
        assert perdure._calls is not None and perdure._calls.answered >= 103  # every call went by the stream
    assert perdure._calls is None  # closed with the client


async def test_sdk__falls_back_to_unary_calls_on_a_sidecar_without_the_calls_stream(
        make_client, old_sidecar) -> None:
    address, servicer = old_sidecar
    worker = make_client()

    @worker.durable("calls:square")
    async def square(n: int) -> int:
        return n * n

    async with worker:
        await worker.wait_until_serving()
        caller = Perdure(address=address)
        await caller.start(serve=False)
        try:
            handle = await caller.enqueue("calls:square", 7)
            assert await handle.result(timeout=30) == 49
            assert await (await caller.enqueue("calls:square", 3)).result(timeout=30) == 9
        finally:
            await caller.stop()
    assert servicer.unary_calls.count("Enqueue") == 2 and "AwaitJob" in servicer.unary_calls


class SidecarLosingItsFirstStream(SidecarWithoutCalls):
    """Its first Calls stream ends as gRPC's client reports a stream that was ended (by the
    server, or a lost connection) while it was writing: INTERNAL "Internal error from Core",
    the real status lost. Later Calls are UNIMPLEMENTED, so the SDK goes on with unary RPCs."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.streams = 0

    async def Calls(self, request_iterator, context):  # noqa: N802
        self.streams += 1
        if self.streams == 1:
            await context.abort(grpc.StatusCode.INTERNAL, LOST_STREAM)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "")


async def test_sdk__a_calls_stream_lost_in_a_write_is_unavailable_and_the_enqueue_is_sent_again(
        sidecar, make_client) -> None:
    async with relay(sidecar, SidecarLosingItsFirstStream) as (address, servicer):
        caller = make_client(address=address)
        async with caller:
            handle = await caller.enqueue("calls:lost", 1)
            assert (await handle.details()).id == handle.id
    assert isinstance(servicer, SidecarLosingItsFirstStream) and servicer.streams == 2 and servicer.unary_calls == ["Enqueue"]
