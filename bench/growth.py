"""Growth: enqueue and claim latency with 0, 100k and 1M finished jobs in the tables (the
retention far beyond their age, so none is deleted): the cost of a job must not grow with history.

The history is written with SQL (INSERT ... SELECT FROM generate_series) while no sidecar runs:
successes and dead jobs, spread over four namespaces and five functions, the measured one
among them, with their attempts rows (a few retried, the dead ones three times), ids UUIDv7
in the past; then VACUUM ANALYZE. At each size, each run measures, one job at a time:

    store enqueue   perdured's own insert of one pending job (Store.enqueue: one statement,
                    one commit), timed in this process;
    store claim     the claim query taking that job (Store.claim, one slot), then its finish;
    enqueue         the Enqueue RPC through a sidecar that serves no worker: the job is
                    inserted pending;
    claim lag       from that call until the handler's first line runs in this process, on
                    a worker of a second sidecar: the notification, the claim query, the
                    assignment down the Work stream.

Ratios are p95 at a size over p95 with no history (target: at most 1.2 at 1M). The floor's
committed INSERT is measured again at each size: it shows how much the machine drifted. And
since a p95 of a millisecond moves with anyone's work on the machine, each size also shows the
enqueue and claim statements as the server runs them (EXPLAIN ANALYZE: execution time and
buffers touched), which a plan that grows with history would move and noise hardly does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg

from bench import floor, harness
from perdure import Perdure
from perdure._ids import new_job_id
from perdured.backoff import RetryPolicy
from perdured.store import QUERIES, Outcome, Store, _new_job_values
from perdured.validation import NewJob

T = TypeVar("T")

NAMESPACE = "bench-growth"
FUNCTION = "bench:noop"
WARMUP = 50
FILL_BATCH = 100_000
TARGET_RATIO = 1.2
METRICS = ("store_enqueue", "store_claim", "enqueue", "claim_lag")
LABELS = {"store_enqueue": "store enqueue", "store_claim": "store claim", "enqueue": "enqueue (RPC)",
          "claim_lag": "claim lag"}
# Far beyond the history's age (hours): the sidecars delete nothing while they run.
NO_RETENTION = ("--retention", str(10 * 365 * 24 * 3600), "--retention-interval", str(24 * 3600))

# Finished jobs g = first .. first + count - 1, the g-th one finished g * 10 ms before `base`.
# Every tenth is dead after three failed attempts, every seventh other one succeeded at its
# second attempt; the rest succeeded at once. Notifications are off for the insert: nobody
# listens, and a million of them would only fill the queue.
FILL = """
WITH made AS (
    SELECT g, %(base)s::timestamptz - g * interval '10 ms' AS at,
           (ARRAY['bench-growth', 'billing', 'shipping', 'email'])[1 + g %% 4] AS namespace,
           (ARRAY['bench:noop', 'orders:confirm', 'email:send', 'report:build', 'image:resize'])[1 + (g / 4) %% 5]
               AS name,
           CASE WHEN g %% 10 = 0 THEN 'dead' ELSE 'success' END AS state,
           CASE WHEN g %% 10 = 0 THEN 3 WHEN g %% 7 = 0 THEN 2 ELSE 1 END AS attempts
    FROM generate_series(%(first)s::bigint, %(first)s::bigint + %(count)s - 1) AS g
), inserted AS (
    INSERT INTO perdure.jobs (id, namespace, name, state, payload, payload_encoding, result, result_encoding,
                              error, attempt, max_attempts, backoff, initial_delay, max_delay, jitter, timeout,
                              run_at, created_at, started_at, finished_at)
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                  PLACING substring(int8send((extract(epoch FROM at) * 1000)::bigint) FROM 3) FROM 1 FOR 6),
                  52, 1), 53, 1), 'hex')::uuid,  -- UUIDv7 of `at`, as perdure.uuid7() makes them
           namespace, name, state, convert_to('{"args":[' || g || ']}', 'UTF8'), 'json',
           CASE WHEN state = 'success' THEN convert_to('{"n":' || g || '}', 'UTF8') END,
           CASE WHEN state = 'success' THEN 'json' END,
           CASE WHEN state = 'dead' THEN jsonb_build_object(
               'type', 'ValueError', 'message', 'no such order: ' || g, 'non_retryable', false,
               'traceback', 'Traceback (most recent call last):\n  File "app.py", line 12, in confirm\n'
                            || 'ValueError: no such order: ' || g) END,
           attempts, 3, 'exponential', interval '1 s', interval '60 s', 0.1, interval '30 s',
           at - interval '40 ms', at - interval '40 ms', at - interval '30 ms', at
    FROM made
    RETURNING id, state, attempt, error, started_at, finished_at
)
INSERT INTO perdure.attempts (job_id, number, worker_id, sidecar_id, started_at, ended_at, outcome, error)
SELECT id, n, 'app/pid-1@host#1', 'host-1', started_at, finished_at,
       CASE WHEN state = 'success' AND n = attempt THEN 'succeeded' ELSE 'failed' END,
       CASE WHEN state = 'success' AND n = attempt THEN NULL ELSE error END
FROM inserted, generate_series(1, attempt) AS n
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="0,100000,1000000",
                        help="finished jobs in the history, in increasing order (default 0,100000,1000000)")
    parser.add_argument("--jobs", type=int, default=1000, help="measured jobs per run and size (default 1000)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per size; the medians of the runs' figures are reported (default 3)")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL to use (default: an embedded one in a temporary directory)")


def fill(url: str, first: int, count: int, base: datetime) -> None:
    """Add finished jobs first .. first + count - 1 to the history, in batches."""
    with psycopg.connect(url) as conn:
        for start in range(first, first + count, FILL_BATCH):
            with conn.transaction():
                conn.execute("ALTER TABLE perdure.jobs DISABLE TRIGGER jobs_notify_insert")
                conn.execute(FILL, {"first": start, "count": min(FILL_BATCH, first + count - start),
                                    "base": base})
                conn.execute("ALTER TABLE perdure.jobs ENABLE TRIGGER jobs_notify_insert")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE perdure.jobs, perdure.attempts")
        # Write the fill out now, not during the measurements that follow it.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")


async def timed(samples: list[float], call: Awaitable[T]) -> T:
    """Await `call` (a coroutine does nothing until then), adding its time in ms to `samples`."""
    begin = time.perf_counter()
    value = await call
    samples.append((time.perf_counter() - begin) * 1000)
    return value


def new_job() -> NewJob:
    return NewJob(id=new_job_id(), namespace=NAMESPACE, name=FUNCTION, payload=b'{"args":[]}', payload_encoding="json",
                  idempotency_key=None, parent_id=None, retry=RetryPolicy(), timeout=30, delay=0)


async def through_store(url: str, jobs: int) -> dict[str, list[float]]:
    """perdured's own statements, one job at a time: enqueue it, claim it, finish it."""
    samples: dict[str, list[float]] = {"store_enqueue": [], "store_claim": []}
    store = await Store.open(url, max_size=2)
    try:
        for _ in range(WARMUP + jobs):
            job = new_job()
            await timed(samples["store_enqueue"], store.enqueue([job], sidecar_id="bench", lease=60))
            claimed = await timed(samples["store_claim"], store.claim(NAMESPACE, [FUNCTION], ["bench-slot"],
                                                                      lease=60, sidecar_id="bench"))
            if [row["id"] for row in claimed] != [job.id]:
                raise RuntimeError(f"the claim took {len(claimed)} jobs, not the one just enqueued")
            await store.finish([Outcome(job.id, 1, "success", "succeeded")])  # into the history too
    finally:
        await store.close()
    return {name: times[WARMUP:] for name, times in samples.items()}


def statement_costs(url: str, repeat: int = 21) -> dict[str, dict[str, float]]:
    """The enqueue and claim statements as the server runs them, free of the client's and the
    machine's jitter: EXPLAIN (ANALYZE, BUFFERS) of one enqueue then the claim of that job, in a
    transaction rolled back; the median execution time (ms) and shared buffers touched."""
    costs: dict[str, dict[str, list[float]]] = {"enqueue": {"ms": [], "buffers": []},
                                                 "claim": {"ms": [], "buffers": []}}
    claim = {"namespace": NAMESPACE, "names": [FUNCTION], "slots": ["bench-slot"], "lease": timedelta(seconds=60),
             "sidecar_id": "bench"}
    with psycopg.connect(url) as conn:
        for _ in range(repeat):
            with conn.transaction(force_rollback=True):
                for name, query, params in (("enqueue", "enqueue_one", _new_job_values(new_job()) | claim),
                                            ("claim", "claim", claim)):
                    explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES[query]
                    plan = conn.execute(explain, params).fetchone()[0][0]  # type: ignore[index]
                    costs[name]["ms"].append(plan["Execution Time"])
                    costs[name]["buffers"].append(buffers(plan["Plan"]))
    return {name: {key: round(statistics.median(values), 3) for key, values in figures.items()}
            for name, figures in costs.items()}


def buffers(top: dict[str, Any]) -> int:
    """Shared buffers a statement touched, from its plan: its top node's (they include all that
    node read from), and those of the data-modifying CTEs nothing reads (they run after it)."""
    def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    read = {f"CTE {node['CTE Name']}" for node in nodes(top) if "CTE Name" in node}
    unread = [node for node in top.get("Plans", [])
              if node.get("Subplan Name", "").startswith("CTE ") and node["Subplan Name"] not in read]
    return sum(node["Shared Hit Blocks"] + node["Shared Read Blocks"] for node in [top, *unread])


async def through_sidecars(producer: str, worker: str, jobs: int) -> dict[str, list[float]]:
    """Enqueue through one sidecar, run on a worker of another (so a claim starts every job)."""
    perdure = Perdure(address=worker, namespace=NAMESPACE)
    started: list[float] = []

    @perdure.durable(FUNCTION)
    async def noop() -> None:
        started.append(time.perf_counter())

    samples: dict[str, list[float]] = {"enqueue": [], "claim_lag": []}
    async with perdure, Perdure(address=producer, namespace=NAMESPACE) as client:
        await perdure.wait_until_serving()
        for index in range(WARMUP + jobs):
            started.clear()
            begin = time.perf_counter()
            handle = await client.enqueue(FUNCTION)
            enqueued = time.perf_counter()
            await handle.result(timeout=60)
            if index >= WARMUP:
                samples["enqueue"].append((enqueued - begin) * 1000)
                samples["claim_lag"].append((started[0] - begin) * 1000)
    return samples


async def measure(url: str, jobs: int) -> dict[str, dict[str, float]]:
    """One run at the current size: each metric's summary."""
    samples = await through_store(url, jobs)
    with harness.perdured(url, *NO_RETENTION) as producer, harness.perdured(url, *NO_RETENTION) as worker:
        samples |= await through_sidecars(producer.address, worker.address, jobs)
    return {metric: harness.summary(samples[metric]) for metric in METRICS}


async def grow(url: str, sizes: list[int], jobs: int, runs: int) -> list[dict[str, Any]]:
    """Fill the history to each size in turn and measure there (one event loop for all: gRPC's
    asyncio support is happiest with one)."""
    results = []
    base, filled = datetime.now(UTC) - timedelta(minutes=1), 0
    await measure(url, jobs)  # not counted: the first run after start-up is slower, and would flatter the rest
    for size in sizes:
        begin = time.perf_counter()
        fill(url, filled, size - filled, base)
        fill_s, filled = time.perf_counter() - begin, size
        figures = []
        for number in range(1, runs + 1):
            figures.append(await measure(url, jobs))
            if runs > 1:
                print(f"history {size}, run {number}/{runs}: p95 " + ", ".join(
                    f"{LABELS[m]} {figures[-1][m]['p95']:.3f} ms" for m in METRICS), flush=True)
        results.append({"history": size, "fill_s": round(fill_s, 1),
                        "floor_insert_ms": harness.summary(await floor.committed_insert(url)),
                        **{f"{m}_ms": harness.median_summary([f[m] for f in figures]) for m in METRICS},
                        "statements": statement_costs(url)})
    return results


def run(args: argparse.Namespace) -> None:
    sizes = [int(size) for size in args.sizes.split(",")]
    if sizes != sorted(sizes) or sizes[0] < 0 or args.jobs < 1 or args.runs < 1:
        raise SystemExit("--sizes must be increasing and not negative; --jobs and --runs at least 1")
    with harness.database(args.database_url) as db:
        floors = floor.measure(db.url)
        with harness.perdured(db.url):
            pass  # the schema, migrated
        results = asyncio.run(grow(db.url, sizes, args.jobs, args.runs))
    for result in results:
        result["x_empty_p95"] = {m: round(result[f"{m}_ms"]["p95"] / results[0][f"{m}_ms"]["p95"], 2)
                                 for m in METRICS}

    print(f"growth: {args.jobs} sequential no-op jobs per run and size, the median of {args.runs} run(s), "
          f"PostgreSQL {db.label}; history written by SQL (the measured jobs add theirs)")
    floor.print_floor(floors)
    print(f"{'history':>9}  " + "".join(f"{LABELS[m] + ' p50 / p95':>28}" for m in METRICS)
          + f"{'floor insert p95':>18}{'fill (s)':>10}")
    for result in results:
        print(f"{result['history']:>9}  " + "".join(
            f"{result[f'{m}_ms']['p50']:>19.3f} / {result[f'{m}_ms']['p95']:>6.3f}" for m in METRICS)
            + f"{result['floor_insert_ms']['p95']:>18.3f}{result['fill_s']:>10.1f}")
    print(f"p95 as a multiple of the empty table's (target at most {TARGET_RATIO}x):")
    for result in results[1:]:
        over = [LABELS[m] for m in METRICS if result["x_empty_p95"][m] > TARGET_RATIO]
        print(f"{result['history']:>9}  " + "".join(f"{result['x_empty_p95'][m]:>27.2f}x" for m in METRICS)
              + (f"   over: {', '.join(over)}" if over else "   all within"))
    print("the statements in the server (EXPLAIN ANALYZE, median of 21): execution ms / shared buffers touched")
    print(f"{'history':>9}  {'enqueue':>20}{'claim':>20}")
    for result in results:
        cells = (f"{result['statements'][s]['ms']:>11.3f} / {result['statements'][s]['buffers']:>5.0f}"
                 for s in ("enqueue", "claim"))
        print(f"{result['history']:>9}  " + "".join(cells))
    print(json.dumps({"scenario": "growth", "jobs": args.jobs, "runs": args.runs, "sizes": results,
                      "target_x_empty_p95": TARGET_RATIO, "floor_ms": floors, "postgres": db.label}))

