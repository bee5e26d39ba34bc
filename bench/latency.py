"""Latency of one job at a time: N sequential no-op jobs through one SDK process and one perdured.

This process is the SDK (producer and worker at once); perdured is a real subprocess on a
local PostgreSQL. After a warm-up, each job is timed with time.perf_counter, all in this
process, so the clocks agree:

    enqueue         the durable call until its handle returns: the Enqueue RPC answered,
                    so the job row is committed;
    scheduling lag  the durable call until the handler's first line runs: the enqueue
                    (which starts the job at once when a local worker has a free slot,
                    else a NOTIFY and a claim follow), then the assignment down the Work
                    stream;
    round trip      the durable call until `await handle.result()` returns: all of the
                    above, the outcome committed, and AwaitJob answered with the result.

How to read it: the jobs never overlap, so nothing is batched and no figure is queueing;
each is the cost of one job's path. A PostgreSQL commit is the floor under enqueue; a
round trip holds two (enqueue, finish), three when a claim is needed. p95 and p99 show
the jitter of the event loops, the scheduler of the machine and the database; max shows
any stall.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

from bench import floor, harness
from perdure import Perdure

WARMUP = 50
METRICS = ("enqueue", "scheduling_lag", "round_trip")
FIGURES = ("avg", "p50", "p95", "p99", "max")
# p95 targets, and the p95 figures Reseolio publishes for the same three measures.
TARGET_P95 = {"enqueue": 1.3, "scheduling_lag": 2.0, "round_trip": 3.5}
RESEOLIO_P95 = {"enqueue": 9.57, "scheduling_lag": 10.10, "round_trip": 11.50}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=1000, help="measured jobs per run (default 1000)")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole measurement; report the medians of the runs' figures (default 1)")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL to use (default: an embedded one in a temporary directory)")


async def measure(address: str, jobs: int, warmup: int = WARMUP) -> dict[str, list[float]]:
    """Run warmup + jobs no-op jobs one after another; return the measured jobs' times in ms."""
    perdure = Perdure(address=address, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    started: list[float] = []

    @perdure.durable("bench:noop")
    async def noop() -> None:
        started.append(time.perf_counter())

    samples: dict[str, list[float]] = {metric: [] for metric in METRICS}
    async with perdure:
        await perdure.wait_until_serving()
        for index in range(warmup + jobs):
            started.clear()
            begin = time.perf_counter()
            handle = await noop()
            enqueued = time.perf_counter()
            await handle.result(timeout=60)
            finished = time.perf_counter()
            if index >= warmup:
                samples["enqueue"].append((enqueued - begin) * 1000)
                samples["scheduling_lag"].append((started[0] - begin) * 1000)
                samples["round_trip"].append((finished - begin) * 1000)
    return samples


def run(args: argparse.Namespace) -> None:
    if args.jobs < 1 or args.runs < 1:
        raise SystemExit("--jobs and --runs must be at least 1")
    runs: list[dict[str, dict[str, float]]] = []
    rss: list[float] = []
    with harness.database(args.database_url) as db:
        floors = floor.measure(db.url)
        for number in range(1, args.runs + 1):
            with harness.perdured(db.url) as sidecar:
                samples = asyncio.run(measure(sidecar.address, args.jobs))
                rss.append(sidecar.rss_mb())
            runs.append({metric: harness.summary(samples[metric]) for metric in METRICS})
            if args.runs > 1:
                print(f"run {number}/{args.runs}: p95 " + ", ".join(
                    f"{metric.replace('_', ' ')} {runs[-1][metric]['p95']:.3f} ms" for metric in METRICS))
    figures = {metric: harness.median_summary([r[metric] for r in runs]) for metric in METRICS}
    floor_p95 = floor_for(floors)
    sidecar_rss = round(statistics.median(rss), 1)

    runs_note = f", median of {args.runs} runs" if args.runs > 1 else ""
    print(f"latency: {args.jobs} sequential no-op jobs, 1 SDK process, 1 perdured, "
          f"PostgreSQL {db.label}{runs_note}")
    floor.print_floor(floors)
    print(f"{'(ms)':<16}" + "".join(f"{k:>10}" for k in FIGURES) + f"{'target p95':>13}{'Reseolio p95':>15}"
          + f"{'floor p95':>12}{'x floor':>9}")
    for metric in METRICS:
        row = figures[metric]
        print(f"{metric.replace('_', ' '):<16}" + "".join(f" {row[k]:>9.3f}" for k in FIGURES)
              + f"{TARGET_P95[metric]:>13.3f}{RESEOLIO_P95[metric]:>15.3f}"
              + f"{floor_p95[metric]:>12.3f}{row['p95'] / floor_p95[metric]:>9.2f}")
    print(f"sidecar RSS after the run: {sidecar_rss:.1f} MB")
    print(json.dumps({
        "scenario": "latency", "jobs": args.jobs, "runs": args.runs,
        **{f"{metric}_ms": figures[metric] for metric in METRICS},
        "sidecar_rss_mb": sidecar_rss, "postgres": db.label, "floor_ms": floors,
        "x_floor_p95": {metric: round(figures[metric]["p95"] / floor_p95[metric], 2) for metric in METRICS},
    }))


def floor_for(floors: dict[str, dict[str, float]]) -> dict[str, float]:
    """What each figure cannot beat, from the floors' p95: an enqueue is one RPC and one commit;
    a job started in its own insert adds the stream's hop to the worker (about half an RPC);
    a round trip is two RPCs (enqueue, await) and two commits (the job, its outcome)."""
    rpc, commit = floors["grpc_round_trip"]["p95"], floors["committed_insert"]["p95"]
    return {"enqueue": rpc + commit, "scheduling_lag": rpc * 1.5 + commit,
            "round_trip": 2 * rpc + 2 * commit}

