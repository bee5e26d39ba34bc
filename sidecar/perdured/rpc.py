"""Small gRPC helpers shared by the services."""

from __future__ import annotations

from typing import NoReturn

import grpc


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the RPC with a status (context.abort raises; this says so to type checkers)."""
    await context.abort(code, message)
    raise AssertionError("context.abort returned")
