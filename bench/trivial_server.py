"""A gRPC server that does nothing but answer the standard health check: the floor under any
RPC. `python -m bench.trivial_server` prints its port, then serves until stdin closes."""

from __future__ import annotations

import asyncio
import sys

import grpc
from grpc_health.v1 import health, health_pb2_grpc


async def serve() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin (or dies)
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(serve())
