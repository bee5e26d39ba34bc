"""Enqueue and AwaitJob over one long-lived `Calls` stream (see jobs.proto).

A unary call costs both ends far more than a message on an open stream, and many callers
at once share one message. Calls mean what their unary RPCs mean: a refused call raises
what the unary RPC's status would. The stream opens at the first call and again after it
breaks; the calls it carried when it broke fail as UNAVAILABLE would (an enqueue with its
own job id is then safely sent again). A sidecar without `Calls` is served by unary RPCs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any, cast

import grpc

from perdure import _stream
from perdure.v1 import jobs_pb2, jobs_pb2_grpc

FIELDS = {"Enqueue": "enqueue", "AwaitJob": "await_job"}  # the RPCs a call may stand for
# What gRPC's client reports, as INTERNAL, when a write meets a stream that the server or a
# lost connection has ended (a sidecar killed, a stream refused): the real status is lost.
# The stream is gone, as after UNAVAILABLE.
LOST_STREAM = "Internal error from Core"


class Unsupported(Exception):
    """The sidecar has no Calls stream (an older version): use the unary RPCs."""


class CallStream:
    def __init__(self, stub: jobs_pb2_grpc.JobsStub, translate: Callable[[grpc.StatusCode, str], Exception]) -> None:
        self._stub = stub
        self._translate = translate
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._outbox: asyncio.Queue[jobs_pb2.CallRequest | None] = asyncio.Queue()  # None: half-close
        self._session: asyncio.Task[None] | None = None
        self._open = False  # the current stream has answered: the sidecar is there to end it
        self.supported = True
        self.answered = 0  # calls answered on the stream

    async def call(self, method: str, request: Any, timeout: float | None) -> Any:
        """The answer to one call, or the exception its unary RPC would have raised."""
        if not self.supported:
            raise Unsupported()
        if self._session is None or self._session.done():
            self._session = asyncio.create_task(self._run(), name="perdure-calls")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self._outbox.put_nowait(jobs_pb2.CallRequest(id=call_id, **{FIELDS[method]: request}))
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise self._translate(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout} s") from None
        finally:
            self._pending.pop(call_id, None)

    async def close(self) -> None:
        """Stop: calls still waiting are cancelled, as unary calls are when their channel closes.
        A stream with none is ended by the sidecar once half-closed (see _stream)."""
        if self._session is not None:
            if self._open and not self._pending and not self._session.done():
                self._outbox.put_nowait(None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._session, _stream.END_TIMEOUT)
            self._session.cancel()
            await asyncio.gather(self._session, return_exceptions=True)
            self._session = None
        for future in self._pending.values():
            future.cancel()

    async def _run(self) -> None:
        stream = cast(grpc.aio.StreamStreamCall, self._stub.Calls(wait_for_ready=True))  # type: ignore[call-arg]
        writer = asyncio.create_task(self._write(stream))
        failure: Exception = self._translate(grpc.StatusCode.UNAVAILABLE, "the sidecar closed the Calls stream")
        self._open = False
        try:
            async for message in stream:
                self._open = True
                self.answered += len(message.responses)
                for response in message.responses:
                    future = self._pending.get(response.id)
                    if future is None or future.done():
                        continue  # its caller gave up
                    kind = response.WhichOneof("response")
                    if kind == "error":
                        code = _STATUS.get(response.error.code, grpc.StatusCode.UNKNOWN)
                        future.set_exception(self._translate(code, response.error.message))
                    else:
                        future.set_result(getattr(response, kind))
            await stream.code()  # the status, the call's last operation
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.supported = False
                failure = Unsupported()
            elif exc.code() == grpc.StatusCode.INTERNAL and exc.details() == LOST_STREAM:
                pass  # the stream was lost: its calls fail as UNAVAILABLE (above)
            else:
                failure = self._translate(exc.code(), exc.details() or "")
        finally:
            writer.cancel()
            stream.cancel()
            # Whatever was sent or queued has no answer coming on this stream.
            while not self._outbox.empty():
                self._outbox.get_nowait()
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]  # else close() cancels them
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(failure)

    async def _write(self, stream: grpc.aio.StreamStreamCall) -> None:
        while True:
            ready, end = _stream.split_end(_stream.ready(self._outbox, await self._outbox.get()))
            for chunk in _stream.chunks(ready):
                await stream.write(jobs_pb2.CallRequests(calls=chunk))
            if end:
                await stream.done_writing()
                return


_STATUS = {code.value[0]: code for code in grpc.StatusCode}
