"""Scale: 1, 2 and 4 sidecars on one PostgreSQL, each with its own worker process (one namespace,
the same functions): total throughput and scheduling lag.

For each number of sidecars N, each run starts N perdured processes and measures two loads:

    drain   a backlog of --jobs no-op jobs, enqueued beforehand (enqueue_many, spread evenly
            over the sidecars) to become runnable a few seconds later, once the N workers
            have connected; they drain it. Jobs per second from that moment until the last
            job ended, by the database's clock.
    mixed   --callers concurrent callers per sidecar, in this process, each bound to one
            sidecar: enqueue a job, await its result, again and again, for --duration
            seconds. Total jobs/s, and the scheduling lag of each job: the call until its
            handler starts, as the handler's own wall clock says (same machine, same clock).

Against, in the same run on the same PostgreSQL: the floor (floor.py) and the peer, pgqueuer
draining the same number of jobs with one process (peer.py). The machine's CPU use during each
load is shown too: with N sidecars, N workers, PostgreSQL and the callers on few cores, the
figures say as much about the cores as about the design.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench import floor, harness, latency, peer
from perdure import Perdure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sidecars", default="1,2,4", help="numbers of sidecars to measure (default 1,2,4)")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs in the backlog drained (default 20000)")
    parser.add_argument("--callers", type=int, default=16,
                        help="concurrent callers of the mixed load per sidecar (default 16)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of mixed load (default 10)")
    parser.add_argument("--concurrency", type=int, default=256, help="each worker's concurrency (default 256)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per number of sidecars; the medians of the runs' figures are reported (default 3)")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL to use (default: an embedded one in a temporary directory)")


async def enqueue_backlog(addresses: list[str], namespace: str, jobs: int, release: datetime) -> None:
    """`jobs` no-op jobs runnable from `release` on, an even share through each sidecar."""
    async def share(address: str, count: int) -> None:
        async with Perdure(address=address, namespace=namespace) as client:
            await client.enqueue_many("bench:noop", [() for _ in range(count)], run_at=release)

    shares = [jobs // len(addresses) + (index < jobs % len(addresses)) for index in range(len(addresses))]
    await asyncio.gather(*(share(address, count) for address, count in zip(addresses, shares, strict=True)))


async def drain(url: str, sidecars: list[harness.Perdured], namespace: str, jobs: int, concurrency: int,
                release: datetime) -> dict[str, Any]:
    """Connect one worker per sidecar, then let them drain the backlog from its release on:
    jobs/s (the release until the last job ended, by the database's clock), the machine's busy
    share and the CPU time per job of the sidecars, the workers and the rest, and whether every
    worker was connected in time."""
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(harness.worker_process(s.address, namespace, concurrency)) for s in sidecars]
        in_time = harness.count_jobs(url, namespace, "pending") == jobs
        await asyncio.sleep(max((release - datetime.now(UTC)).total_seconds(), 0))
        cpu = harness.CpuMeter({"sidecars": [s.process.pid for s in sidecars], "workers": [w.pid for w in workers]})
        await asyncio.to_thread(harness.wait_drained, url, namespace, jobs)
        busy, seconds = cpu.busy(), cpu.seconds()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM max(finished_at) - min(run_at))::float8 FROM perdure.jobs "
                           "WHERE namespace = %s", (namespace,)).fetchone()
    return {"drain_per_s": jobs / row[0] if row and row[0] else 0.0, "drain_cpu_busy": round(busy, 3),
            "drain_cpu_ms_per_job": {name: round(s * 1000 / jobs, 3) for name, s in seconds.items()},
            "in_time": in_time}


async def mixed(addresses: list[str], namespace: str, callers: int,
                duration: float) -> tuple[float, list[float], list[float]]:
    """`callers` per sidecar enqueue bench:stamp and await it until `duration` is over; returns
    jobs/s and each job's scheduling lag and round trip (ms)."""
    lags: list[float] = []
    round_trips: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Perdure(address=address, namespace=namespace))
                   for address in addresses]
        deadline = time.perf_counter() + duration

        async def caller(client: Perdure) -> None:
            while time.perf_counter() < deadline:
                wall, begin = time.time(), time.perf_counter()
                handle = await client.enqueue("bench:stamp")
                started = await handle.result(timeout=60)
                round_trips.append((time.perf_counter() - begin) * 1000)
                lags.append((started - wall) * 1000)

        begin = time.perf_counter()
        await asyncio.gather(*(caller(client) for client in clients for _ in range(callers)))
        elapsed = time.perf_counter() - begin
    return len(round_trips) / elapsed, lags, round_trips


async def measure(url: str, sidecars: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run with `sidecars` perdured processes: the drain, then the mixed load."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        processes = [stack.enter_context(harness.perdured(url)) for _ in range(sidecars)]
        addresses = [p.address for p in processes]
        # Runnable only once every worker is connected: a worker takes a second or so to start.
        release = datetime.now(UTC) + timedelta(seconds=3 + 1.5 * sidecars)
        await enqueue_backlog(addresses, namespace, args.jobs, release)
        figures = await drain(url, processes, namespace, args.jobs, args.concurrency, release)
        if not figures.pop("in_time"):
            print(f"note: with {sidecars} sidecars, the backlog became runnable before every worker had "
                  "connected: the drain rate undercounts", flush=True)
        for address in addresses:
            stack.enter_context(harness.worker_process(address, namespace, args.concurrency))
        cpu = harness.CpuMeter()
        mixed_rate, lags, round_trips = await mixed(addresses, namespace, args.callers, args.duration)
        mixed_cpu = cpu.busy()
    return figures | {"mixed_per_s": mixed_rate, "mixed_cpu_busy": round(mixed_cpu, 3), "lag_ms": harness.summary(lags),
            "round_trip_ms": harness.summary(round_trips)}


async def scale(url: str, counts: list[int], args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """The medians of the runs' figures, per number of sidecars (one event loop for all: gRPC's
    asyncio support is happiest with one)."""
    results = {}
    for sidecars in counts:
        runs = []
        for number in range(1, args.runs + 1):
            runs.append(await measure(url, sidecars, args))
            if args.runs > 1:
                print(f"{sidecars} sidecars, run {number}/{args.runs}: drain {runs[-1]['drain_per_s']:.0f} jobs/s, "
                      f"mixed {runs[-1]['mixed_per_s']:.0f} jobs/s, lag p95 {runs[-1]['lag_ms']['p95']:.3f} ms",
                      flush=True)
        results[sidecars] = {key: harness.median_summary([r[key] for r in runs]) if isinstance(runs[0][key], dict)
                             else statistics.median(r[key] for r in runs) for key in runs[0]}
    return results


def run(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.sidecars.split(",")]
    if min(counts) < 1 or args.jobs < 1 or args.runs < 1 or args.callers < 1:
        raise SystemExit("--sidecars, --jobs, --callers and --runs must be at least 1")
    with harness.database(args.database_url) as db:
        floors = floor.measure(db.url)
        peer_rate = peer.measure(db.url, args.jobs)
        results = asyncio.run(scale(db.url, counts, args))

    runs_note = f", median of {args.runs} runs" if args.runs > 1 else ""
    print(f"scale: N perdured + N worker processes (concurrency {args.concurrency} each), one namespace, "
          f"PostgreSQL {db.label}, {os.cpu_count()} CPUs{runs_note}")
    print(f"  drain: a backlog of {args.jobs} no-op jobs enqueued beforehand (spread over the sidecars), "
          f"runnable once the N workers are connected; jobs/s until the last one ends")
    print(f"  mixed: {args.callers} callers per sidecar in one process, each enqueueing and awaiting, "
          f"{args.duration:g} s; lag = the call until the handler starts")
    floor.print_floor(floors)
    peer_note = f"{peer_rate:.0f} jobs/s" if peer_rate else "not measured"
    print(f"peer: pgqueuer drains the same backlog with one process at {peer_note}")
    print(f"{'sidecars':>8}{'drain/s':>10}{'x peer':>8}{'x 1':>6}{'CPU':>6}{'mixed/s':>10}{'x 1':>6}{'CPU':>6}"
          f"{'lag p50':>10}{'lag p95':>10}{'x floor':>9}{'rt p95':>10}")
    one = results.get(1, results[counts[0]])
    notify_p95 = floors["notify_wakeup"]["p95"]
    lag_floor = latency.floor_for(floors)["scheduling_lag"]
    for sidecars, r in results.items():
        x_peer = f"{r['drain_per_s'] / peer_rate:>8.2f}" if peer_rate else f"{'':>8}"
        print(f"{sidecars:>8}{r['drain_per_s']:>10.0f}{x_peer}{r['drain_per_s'] / one['drain_per_s']:>6.2f}"
              f"{r['drain_cpu_busy']:>6.0%}{r['mixed_per_s']:>10.0f}{r['mixed_per_s'] / one['mixed_per_s']:>6.2f}"
              f"{r['mixed_cpu_busy']:>6.0%}{r['lag_ms']['p50']:>10.3f}{r['lag_ms']['p95']:>10.3f}"
              f"{r['lag_ms']['p95'] / lag_floor:>9.2f}{r['round_trip_ms']['p95']:>10.3f}")
    print(f"(x 1: to one sidecar; CPU: the whole machine busy, anyone's work; lag x floor: p95 over one job's "
          f"floor as in latency.py, {lag_floor:.3f} ms; notify floor p95 {notify_p95:.3f} ms)")
    print("drain, CPU ms per job: " + ";  ".join(
        f"{n} sidecar(s) " + ", ".join(f"{who} {ms:.3f}" for who, ms in r["drain_cpu_ms_per_job"].items())
        for n, r in results.items()) + "  (rest: PostgreSQL, this process, anyone else's work)")
    print(json.dumps({
        "scenario": "scale", "jobs": args.jobs, "callers_per_sidecar": args.callers, "duration_s": args.duration,
        "runs": args.runs, "cpus": os.cpu_count(),
        "sidecars": {str(n): {key: (round(v) if key.endswith("per_s") else v) for key, v in r.items()}
                     for n, r in results.items()},
        "peer_drain_per_s": round(peer_rate) if peer_rate else None, "floor_ms": floors, "postgres": db.label,
    }))
