"""Idle cost: the queries per second an idle sidecar (with a connected worker) sends to
PostgreSQL, and its resident memory; then its memory with 10,000 jobs in flight.

Queries are counted as the database's transactions (xact_commit + xact_rollback in
pg_stat_database; every statement of perdured is its own transaction or part of one), over
a quiet window, minus the two reads of the counter itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import psycopg

from bench import harness
from perdure import Perdure

TARGETS = {"queries_per_s": 1.0, "idle_rss_mb": 60.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=float, default=20.0, help="seconds to count idle queries (default 20)")
    parser.add_argument("--in-flight", type=int, default=10_000, help="jobs held in flight (default 10000)")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL to use (default: an embedded one in a temporary directory)")


def transactions(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0


def wait_running(url: str, namespace: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while harness.count_jobs(url, namespace, "running") < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} jobs running after {timeout:g} s")
        time.sleep(0.2)


def run(args: argparse.Namespace) -> None:
    with harness.database(args.database_url) as db, harness.perdured(db.url) as sidecar:
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        with harness.worker_process(sidecar.address, namespace, max(args.in_flight, 1)):
            time.sleep(3)  # past start-up
            before = transactions(db.url)
            time.sleep(args.window)
            after = transactions(db.url)
            # pg_stat_database is updated when a backend's transaction ends, in batches:
            # a reading is at most a second or so behind, on both ends of the window.
            qps = max(after - before - 1, 0) / args.window
            idle_rss = sidecar.rss_mb()

            async def fill() -> None:
                async with Perdure(address=sidecar.address, namespace=namespace) as client:
                    await client.enqueue_many("bench:hold", [() for _ in range(args.in_flight)])

            asyncio.run(fill())
            wait_running(db.url, namespace, args.in_flight)
            time.sleep(2)
            busy_rss = sidecar.rss_mb()
    print(f"idle: 1 perdured with 1 connected worker, PostgreSQL {db.label}")
    print(f"queries per second while idle: {qps:.2f} (target < {TARGETS['queries_per_s']:g}), over {args.window:g} s")
    print(f"sidecar RSS: idle {idle_rss:.1f} MB (target <= {TARGETS['idle_rss_mb']:g}), "
          f"with {args.in_flight} jobs in flight {busy_rss:.1f} MB")
    print(json.dumps({"scenario": "idle", "queries_per_s": round(qps, 2), "idle_rss_mb": round(idle_rss, 1),
                      "in_flight": args.in_flight, "in_flight_rss_mb": round(busy_rss, 1), "postgres": db.label}))
