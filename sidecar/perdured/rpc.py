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
