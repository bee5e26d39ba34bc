"""Small gRPC helpers shared by the services."""

from __future__ import annotations

from typing import NoReturn

import grpc

from perdured.logs import redact


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the RPC with a status (context.abort raises; this says so to type checkers). The
    message never carries a secret (a database password, a token)."""
    await context.abort(code, redact(message))
    raise AssertionError("context.abort returned")


class Refused(Exception):
    """A call carried on a stream (Jobs.Calls) ended with this status, as its unary RPC would."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class CallContext:
    """What a unary handler gets as its context when its call comes on the Calls stream:
    where the unary RPC would end with a status, the call is refused instead."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Refused(code, details)
