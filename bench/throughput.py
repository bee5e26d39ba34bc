"""Throughput: (a) batch-enqueue N no-op jobs; (b) drain them with one SDK worker process;
(c) sustained mixed load: concurrent callers enqueue and await while the worker executes.

Against, in the same run on the same PostgreSQL: the floor (floor.py) and the peer,
pgqueuer, draining the same number of jobs with one process (peer.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from typing import cast

from bench import floor, harness, peer
from perdure import Perdure

TARGETS = {"batch_enqueue": 50_000, "drain": 10_000, "mixed": 5_000}  # jobs per second
# The rates swing with whatever else the machine does; CPU time per job, process by process,
# much less: it shows where the time goes, and a change's effect across noisy runs.
CPU_NOTE = ("caller: this process, which enqueues and awaits (and polls the database in the drain); "
            "rest: PostgreSQL and anyone else's work")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs to enqueue and drain (default 50000)")
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers of the mixed load (default 32)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of mixed load (default 20)")
    parser.add_argument("--concurrency", type=int, default=256, help="the worker's concurrency (default 256)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs on the same database, each with the peer beside it; medians are reported (default 3)")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL to use (default: an embedded one in a temporary directory)")


async def batch_enqueue(address: str, namespace: str, jobs: int) -> float:
    async with Perdure(address=address, namespace=namespace) as client:
        begin = time.perf_counter()
        await client.enqueue_many("bench:noop", [(n,) for n in range(jobs)])
        return jobs / (time.perf_counter() - begin)


def drain(url: str, address: str, namespace: str, jobs: int, concurrency: int,
          sidecar: harness.Perdured) -> tuple[float, dict[str, float]]:
    """Jobs per second from the worker's start to the last job's end, by the database's clock,
    and the CPU milliseconds per job of each process (see CPU_NOTE)."""
    with harness.worker_process(address, namespace, concurrency) as worker:
        cpu = harness.CpuMeter({"sidecar": [sidecar.process.pid], "worker": [worker.pid], "caller": [os.getpid()]})
        begin = harness.database_clock(url)
        rate = jobs / (harness.wait_drained(url, namespace, jobs) - begin)
        return rate, cpu.ms_per_job(jobs)


async def mixed(address: str, namespace: str, callers: int, duration: float) -> tuple[float, dict[str, float]]:
    """Each caller enqueues a job and awaits its result, again and again, for `duration`."""
    latencies: list[float] = []
    async with Perdure(address=address, namespace=namespace) as client:
        deadline = time.perf_counter() + duration

        async def caller() -> None:
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                handle = await client.enqueue("bench:noop")
                await handle.result(timeout=60)
                latencies.append((time.perf_counter() - begin) * 1000)

        begin = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - begin
    return len(latencies) / elapsed, harness.summary(latencies)


def one_run(url: str, sidecar: harness.Perdured, args: argparse.Namespace) -> dict[str, object]:
    """The peer's drain, then ours: batch enqueue, drain, mixed load (a namespace of its own).
    For each of ours, the CPU time per job of each process (see CPU_NOTE)."""
    peer_rate = peer.measure(url, args.jobs)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    address, own = sidecar.address, {"sidecar": [sidecar.process.pid], "caller": [os.getpid()]}
    cpu = harness.CpuMeter(own)
    enqueue_rate = asyncio.run(batch_enqueue(address, namespace, args.jobs))
    enqueue_cpu = cpu.ms_per_job(args.jobs)
    drain_rate, drain_cpu = drain(url, address, namespace, args.jobs, args.concurrency, sidecar)
    with harness.worker_process(address, namespace, args.concurrency) as worker:
        cpu = harness.CpuMeter(own | {"worker": [worker.pid]})
        mixed_rate, mixed_latency = asyncio.run(mixed(address, namespace, args.callers, args.duration))
        mixed_cpu = cpu.ms_per_job(round(mixed_rate * args.duration))
    return {"batch_enqueue": enqueue_rate, "drain": drain_rate, "mixed": mixed_rate, "peer": peer_rate,
            "mixed_latency": mixed_latency,
            "cpu_ms_per_job": {"batch_enqueue": enqueue_cpu, "drain": drain_cpu, "mixed": mixed_cpu}}


def run(args: argparse.Namespace) -> None:
    if min(args.jobs, args.runs, args.callers, args.concurrency) < 1 or args.duration <= 0:
        raise SystemExit("--jobs, --runs, --callers and --concurrency must be at least 1, --duration above 0")
    runs = []
    with harness.database(args.database_url) as db:
        floors = floor.measure(db.url)
        with harness.perdured(db.url) as sidecar:
            for number in range(1, args.runs + 1):
                runs.append(one_run(db.url, sidecar, args))
                figures = runs[-1]
                print(f"run {number}/{args.runs}: batch enqueue {figures['batch_enqueue']:.0f}/s, "
                      f"drain {figures['drain']:.0f}/s (peer {figures['peer'] or 0:.0f}/s), "
                      f"mixed {figures['mixed']:.0f}/s", flush=True)
            rss = sidecar.rss_mb()

    def median(key: str) -> float:
        return statistics.median(cast(float, r[key]) for r in runs)

    enqueue_rate, drain_rate, mixed_rate = median("batch_enqueue"), median("drain"), median("mixed")
    peer_rate = median("peer") if all(r["peer"] for r in runs) else None
    mixed_latency = harness.median_summary([cast(dict[str, float], r["mixed_latency"]) for r in runs])
    print(f"throughput: {args.jobs} no-op jobs, 1 worker process (concurrency {args.concurrency}), 1 perdured, "
          f"PostgreSQL {db.label}, median of {args.runs} runs")
    floor.print_floor(floors)
    rows = [("batch enqueue", enqueue_rate, "batch_enqueue"), ("drain", drain_rate, "drain"),
            (f"mixed ({args.callers} callers)", mixed_rate, "mixed")]
    print(f"{'':<22}{'jobs/s':>10}{'target':>10}{'peer':>10}{'ratio to peer':>15}")
    for label, rate, key in rows:
        peer_cell = f"{peer_rate:>10.0f}{rate / peer_rate:>15.2f}" if key == "drain" and peer_rate else ""
        print(f"{label:<22}{rate:>10.0f}{TARGETS[key]:>10}{peer_cell}")
    cpu = {key: harness.median_summary([cast(dict[str, dict[str, float]], r["cpu_ms_per_job"])[key] for r in runs])
           for _, _, key in rows}
    print("CPU ms per job: " + ";  ".join(
        f"{label} " + ", ".join(f"{who} {ms:.3f}" for who, ms in cpu[key].items()) for label, _, key in rows))
    print(f"  ({CPU_NOTE})")
    print(f"mixed round trip (ms): p50 {mixed_latency['p50']:.3f}  p95 {mixed_latency['p95']:.3f}  "
          f"p99 {mixed_latency['p99']:.3f}; sidecar RSS after the runs: {rss:.1f} MB")
    print(json.dumps({
        "scenario": "throughput", "jobs": args.jobs, "runs": args.runs, "batch_enqueue_per_s": round(enqueue_rate),
        "drain_per_s": round(drain_rate), "mixed_per_s": round(mixed_rate), "mixed_round_trip_ms": mixed_latency,
        "peer_drain_per_s": round(peer_rate) if peer_rate else None, "floor_ms": floors,
        "cpu_ms_per_job": cpu, "sidecar_rss_mb": round(rss, 1), "postgres": db.label,
    }))
