"""Idle cost: the queries per second an idle sidecar (with a connected worker) sends to
PostgreSQL, and its resident memory; then its memory with 10,000 jobs in flight.

Queries are counted by pg_stat_statements (the embedded server is started with it loaded; a
given server, if it has it loaded), leaving out the benchmark's own, over a quiet window long
enough to hold every periodic task of the sidecar. Transactions are counted too, from
pg_stat_database: they include the server's own (autovacuum), which the sidecar does not send.
Without pg_stat_statements, the queries are taken to be the transactions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid

import psycopg

from bench import harness
from perdure import Perdure

TARGETS = {"queries_per_s": 1.0, "idle_rss_mb": 60.0}


SETTLE = 5.0  # seconds after start-up before counting
OWN = ("pg_stat_statements", "pg_stat_database")  # what the benchmark's own statements mention


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds to count idle queries (default 60: every periodic task runs in it)")
    parser.add_argument("--in-flight", type=int, default=10_000, help="jobs held in flight (default 10000)")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL to use (default: an embedded one in a temporary directory)")


def transactions(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0


def reset_statements(url: str) -> bool:
    """Start counting statements afresh; False where pg_stat_statements is not loaded."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
        except psycopg.Error:
            return False
    return True


def statements(url: str) -> dict[str, int]:
    """Calls since the reset in this database, by the statement's first line (ours start with
    a comment saying what they do), leaving out the benchmark's own."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT query, calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                            " WHERE d.datname = current_database()").fetchall()
    calls: dict[str, int] = {}
    for query, count in rows:
        if not any(name in query for name in OWN):
            # Ours end with their name (store.py); anything else by its first line.
            named = re.search(r"/\* perdured:(\w+) \*/", query)
            key = named.group(1) if named else query.strip().splitlines()[0][:90]
            calls[key] = calls.get(key, 0) + count
    return calls


def wait_running(url: str, namespace: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while harness.count_jobs(url, namespace, "running") < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} jobs running after {timeout:g} s")
        time.sleep(0.2)


def run(args: argparse.Namespace) -> None:
    with harness.database(args.database_url, preload=("pg_stat_statements",)) as db, \
            harness.perdured(db.url) as sidecar:
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        with harness.worker_process(sidecar.address, namespace, max(args.in_flight, 1)):
            time.sleep(SETTLE)  # past start-up
            counted = reset_statements(db.url)
            before = transactions(db.url)
            time.sleep(args.window)
            after = transactions(db.url)
            calls = statements(db.url) if counted else {}
            # pg_stat_database is updated when a backend's transaction ends, in batches:
            # a reading is at most a second or so behind, on both ends of the window.
            xacts_per_s = max(after - before - 1, 0) / args.window
            qps = sum(calls.values()) / args.window if counted else xacts_per_s
            idle_rss = sidecar.rss_mb()

            async def fill() -> None:
                async with Perdure(address=sidecar.address, namespace=namespace) as client:
                    await client.enqueue_many("bench:hold", [() for _ in range(args.in_flight)])

            asyncio.run(fill())
            wait_running(db.url, namespace, args.in_flight)
            time.sleep(2)
            busy_rss = sidecar.rss_mb()
    print(f"idle: 1 perdured with 1 connected worker, PostgreSQL {db.label}")
    source = "statements (pg_stat_statements)" if counted else "transactions (pg_stat_database)"
    print(f"queries per second while idle: {qps:.2f} (target < {TARGETS['queries_per_s']:g}), counted as "
          f"{source} over {args.window:g} s; transactions {xacts_per_s:.2f}/s")
    for first, count in sorted(calls.items(), key=lambda item: -item[1]):
        print(f"  {count * 60 / args.window:6.1f}/min  {first}")
    print(f"sidecar RSS: idle {idle_rss:.1f} MB (target <= {TARGETS['idle_rss_mb']:g}), "
          f"with {args.in_flight} jobs in flight {busy_rss:.1f} MB")
    print(json.dumps({"scenario": "idle", "queries_per_s": round(qps, 2), "counted_as": source.split()[0],
                      "transactions_per_s": round(xacts_per_s, 2), "idle_rss_mb": round(idle_rss, 1),
                      "in_flight": args.in_flight, "in_flight_rss_mb": round(busy_rss, 1), "postgres": db.label}))
