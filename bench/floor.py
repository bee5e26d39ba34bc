"""The physical floor, measured in the same run as the figures it frames: one gRPC unary round
trip to a trivial server in another process, one committed single-row INSERT, and one
NOTIFY from one connection to a LISTEN on another. Whatever the machine's noise, a figure of
ours is read against these (a ratio), not against a number from another day."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import harness

SAMPLES = 500
WARMUP = 50
IDLE_PAUSE = 0.002  # seconds: about the gap a sequential job leaves each process on its path


async def grpc_round_trip(samples: int = SAMPLES) -> list[float]:
    server = subprocess.Popen([sys.executable, "-m", "bench.trivial_server"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            times = []
            for index in range(WARMUP + samples):
                begin = time.perf_counter()
                await stub.Check(health_pb2.HealthCheckRequest())
                if index >= WARMUP:
                    times.append((time.perf_counter() - begin) * 1000)
            return times
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)


async def committed_insert(url: str, samples: int = SAMPLES, pause: float = 0.0) -> list[float]:
    """One-row INSERTs, each committed; `pause` seconds idle before each (not timed)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, body bytea)")
        times = []
        for index in range(WARMUP + samples):
            if pause:
                await asyncio.sleep(pause)
            begin = time.perf_counter()
            await conn.execute("INSERT INTO bench_floor (body) VALUES (%s)", (b"{}",))
            if index >= WARMUP:
                times.append((time.perf_counter() - begin) * 1000)
        await conn.execute("DROP TABLE bench_floor")
        return times


async def notify_wakeup(url: str, samples: int = SAMPLES) -> list[float]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as listener, \
            await psycopg.AsyncConnection.connect(url, autocommit=True) as sender:
        await listener.execute("LISTEN bench_floor")
        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def listen() -> None:
            async for _ in listener.notifies():
                arrived.put_nowait(time.perf_counter())

        reader = asyncio.create_task(listen())
        try:
            times = []
            for index in range(WARMUP + samples):
                begin = time.perf_counter()
                await sender.execute("NOTIFY bench_floor")
                received = await asyncio.wait_for(arrived.get(), 10)
                if index >= WARMUP:
                    times.append((received - begin) * 1000)
            return times
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def measure(url: str, samples: int = SAMPLES) -> dict[str, dict[str, float]]:
    """The three floors' summaries (ms), and the committed INSERT again after an idle pause
    (IDLE_PAUSE): the floors are measured back to back, while one job at a time finds every
    process on its path idle, and on some machines (virtual ones) a process woken from
    idleness runs several times slower for a moment. Printed beside the floors, not used for
    the ratios."""
    async def measured() -> dict[str, list[float]]:
        return {
            "grpc_round_trip": await grpc_round_trip(samples),
            "committed_insert": await committed_insert(url, samples),
            "notify_wakeup": await notify_wakeup(url, samples),
            "committed_insert_after_idle": await committed_insert(url, samples, pause=IDLE_PAUSE),
        }

    return {name: harness.summary(times) for name, times in asyncio.run(measured()).items()}


def print_floor(floor: dict[str, dict[str, float]]) -> None:
    print("floor, same run (ms):  " + "   ".join(
        f"{name.replace('_', ' ')} p50 {f['p50']:.3f} p95 {f['p95']:.3f}" for name, f in floor.items()
        if name != "committed_insert_after_idle"))
    if (idle := floor.get("committed_insert_after_idle")) is not None:
        print(f"  the same insert after {IDLE_PAUSE * 1000:g} ms idle: p50 {idle['p50']:.3f} p95 {idle['p95']:.3f}"
              " (a process woken from idleness is slower on some machines; not used for the ratios)")
