"""The only code that talks to PostgreSQL. Queries live in queries.sql, one named block each."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from perdured.logs import log
from perdured.metrics import Metrics
from perdured.validation import (
    SHARED_OWN_FIELDS,
    FunctionLimits,
    InvalidArgument,
    JobFilter,
    NewJob,
    SharedJobs,
    identities,
    shared,
)

JOB_COLUMNS = (
    "id, namespace, name, state, payload, payload_encoding, result, result_encoding, error, "
    "idempotency_key, parent_id, attempt, uncounted_attempts, max_attempts, backoff, initial_delay, "
    "max_delay, jitter, timeout, run_at, created_at, started_at, finished_at, progress, waiting_for, "
    "priority, labels, concurrency_key, start_by, max_duration, deadline_at, trace_context"
)

# What a brief answer to a batch enqueue needs of each job (convert.enqueue_answers), and the
# scheduler and the metrics after it.
BRIEF_JOB_COLUMNS = "id, namespace, name, state, run_at"

# The same columns, qualified, for an UPDATE ... FROM whose other tables share some names.
FINISHED_JOB_COLUMNS = ", ".join(f"j.{column.strip()}" for column in JOB_COLUMNS.split(","))

# A finish returns the whole row of a job only where `d.whole` (someone awaits the job here,
# or likely will: it is their answer, without a read), and of the others what the sidecar
# itself uses, the rest null: reading a whole row cost ten times as much (its times, its
# labels' JSON), and in a drain nobody awaits.
_FINISHED_ALWAYS = ("id", "namespace", "name", "state", "attempt")
FINISHED_JOB_COLUMNS_IF_WHOLE = ", ".join(
    f"j.{column}" if column in _FINISHED_ALWAYS else f"CASE WHEN d.whole THEN j.{column} END AS {column}"
    for column in (c.strip() for c in JOB_COLUMNS.split(","))) + ", d.whole"

TERMINAL_STATES = frozenset({"success", "dead", "cancelled"})


# The columns of a new job as the enqueue statement receives them, with their types.
NEW_JOB_FIELDS = (
    ("id", "uuid"), ("namespace", "text"), ("name", "text"), ("payload", "bytea"),
    ("payload_encoding", "text"), ("idempotency_key", "text"), ("parent_id", "uuid"),
    ("max_attempts", "int"), ("backoff", "text"), ("initial_delay", "interval"), ("max_delay", "interval"),
    ("jitter", "float8"), ("timeout", "interval"), ("delay", "interval"), ("run_at", "timestamptz"),
    ("priority", "int"), ("labels", "jsonb"), ("concurrency_key", "text"), ("start_within", "interval"),
    ("max_duration", "interval"), ("trace_context", "jsonb"), ("worker_id", "text"),
)
_NEW_JOB_NAMES = ", ".join(name for name, _ in NEW_JOB_FIELDS)
_NEW_JOBS_ARRAYS = f"unnest({', '.join(f'%({n})b::{t}[]' for n, t in NEW_JOB_FIELDS)}) AS n({_NEW_JOB_NAMES})"
_NEW_JOB_VALUES = f"(VALUES ({', '.join(f'%({n})s::{t}' for n, t in NEW_JOB_FIELDS)})) AS n({_NEW_JOB_NAMES})"
# Jobs that share their options (SharedJobs): an array for what is each one's own, plain
# parameters for the rest, sent and converted once.
_OWN = [(n, t) for n, t in NEW_JOB_FIELDS if n in SHARED_OWN_FIELDS]
_COMMON = [(n, t) for n, t in NEW_JOB_FIELDS if (n, t) not in _OWN]
_NEW_SHARED_JOBS = (
    f"(SELECT * FROM unnest({', '.join(f'%({n})b::{t}[]' for n, t in _OWN)}) AS own({', '.join(n for n, _ in _OWN)})"
    f" CROSS JOIN (VALUES ({', '.join(f'%({n})s::{t}' for n, t in _COMMON)})) AS common({', '.join(n for n, _ in _COMMON)})"
    f") AS n"
)


# Blocks of queries.sql that are parts of others, written in as {name}.
FRAGMENTS = ("job_filter", "claimed_jobs", "cancelled_jobs")


def load_queries(path: Path | None = None) -> dict[str, str]:
    """Split queries.sql into {name: sql} on its `-- name --` headers."""
    queries: dict[str, str] = {}
    text = (path or Path(__file__).with_name("queries.sql")).read_text()
    parts = re.split(r"^-- ([a-z_]+) --$", text, flags=re.MULTILINE)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # Comment lines and indentation are for readers of this file and are not sent: psycopg
        # keeps the parse of a query's text only up to 4096 bytes (MAX_CACHED_STATEMENT_LENGTH),
        # and finish and claim_limited, written out, were parsed again at every execution.
        queries[name] = "\n".join(line.strip() for line in body.strip().splitlines() if not line.lstrip().startswith("--"))
    for name, sql in queries.items():
        for fragment in FRAGMENTS:
            sql = sql.replace("{" + fragment + "}", queries[fragment])
        queries[name] = (sql.replace("{job_columns}", JOB_COLUMNS)
                         .replace("{finished_job_columns_if_whole}", FINISHED_JOB_COLUMNS_IF_WHOLE)
                         .replace("{finished_job_columns}", FINISHED_JOB_COLUMNS))
    enqueue = queries["enqueue"]
    returning = f"RETURNING {JOB_COLUMNS}, worker_id"
    if returning not in enqueue:
        raise ValueError(f"queries.sql: enqueue must end its insert with {returning!r} (see enqueue_brief)")
    for variant, new_jobs in (("enqueue", _NEW_JOBS_ARRAYS), ("enqueue_shared", _NEW_SHARED_JOBS)):
        queries[variant] = enqueue.replace("{new_jobs}", new_jobs)
        queries[f"{variant}_brief"] = queries[variant].replace(returning, f"RETURNING {BRIEF_JOB_COLUMNS}, worker_id")
    queries["enqueue_one"] = enqueue.replace("{new_jobs}", _NEW_JOB_VALUES)
    # Each statement ends with its name, which PostgreSQL keeps with it (pg_stat_statements,
    # pg_stat_activity): an operator can tell which of ours a busy or slow statement is.
    return {name: f"{sql}\n/* perdured:{name} */" for name, sql in queries.items() if name not in FRAGMENTS}


def _new_job_values(job: NewJob) -> dict[str, Any]:
    return {
        "id": job.id, "namespace": job.namespace, "name": job.name, "payload": job.payload,
        "payload_encoding": job.payload_encoding, "idempotency_key": job.idempotency_key,
        "parent_id": job.parent_id, "max_attempts": job.retry.max_attempts, "backoff": job.retry.backoff,
        "initial_delay": timedelta(seconds=job.retry.initial_delay),
        "max_delay": timedelta(seconds=job.retry.max_delay), "jitter": job.retry.jitter,
        "timeout": timedelta(seconds=job.timeout), "delay": timedelta(seconds=job.delay), "run_at": job.run_at,
        "priority": job.priority, "labels": Jsonb(job.labels), "concurrency_key": job.concurrency_key,
        "start_within": _interval(job.start_within), "max_duration": _interval(job.max_duration),
        "trace_context": Jsonb(job.trace_context) if job.trace_context else None,
        "worker_id": job.worker_id,
    }


def _interval(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _filter_values(where: JobFilter) -> dict[str, Any]:
    return {
        "namespace": where.namespace, "name": where.name, "states": where.states,
        "labels": Jsonb(where.labels) if where.labels else None,
        "error_type": where.error_type, "error_contains": where.error_contains,
    }


QUERIES = load_queries()

# Statements PostgreSQL plans once per connection (its generic plan) instead of again for the
# values of each call. Their best plan is the same whatever the values, but left to choose,
# PostgreSQL re-plans a statement whose arrays it can see (a finish's outcomes) on every call,
# since a plan for the actual few elements always looks cheaper than the generic guess: 0.3 ms
# of planning for the finish of one job, more than running it. These are statements run for
# every job. The others keep PostgreSQL's choice, and so do transactions: some need their
# values to be planned well (job_filter's optional conditions; a claim's LIMIT, without which
# the plan of a claim from a large backlog reads every job; jobs_by_id_or_idempotency_key).
GENERIC_PLANS = frozenset({
    "enqueue", "enqueue_one", "enqueue_brief", "enqueue_shared", "enqueue_shared_brief", "finish",
    "renew_leases", "record_steps", "succeeded_steps", "record_progress", "record_logs", "get_job",
})
POOL_WAIT = 5.0  # seconds a statement waits for a pooled connection
LOCK_WAIT = 2.0  # seconds a statement waits for a lock another transaction holds
CONNECT_TIMEOUT = 5  # seconds to open a new connection


async def _configure_session(conn: psycopg.AsyncConnection[Any]) -> None:
    """Each pooled connection's settings.

    A row or advisory lock held by a slow transaction (another client's, an operator's) fails
    the statement after LOCK_WAIT (psycopg.errors.LockNotAvailable) instead of holding a
    pooled connection, and its caller, for as long as the lock is held.

    Times in UTC, whatever the server's default: an interval of days added to a time is then
    that many times 24 hours, as the seconds it came from mean, never a day stretched by a
    change of daylight saving time; and psycopg gives datetimes in datetime.UTC, which cost a
    third of those in a named zone to read and to compare, on every job row."""
    await conn.execute(f"SET lock_timeout = '{round(LOCK_WAIT * 1000)}ms'; SET TimeZone = 'UTC'")


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the sidecar records it."""

    job_id: uuid.UUID
    attempt: int
    kind: str  # success | failure | released
    attempt_outcome: str  # the attempts.outcome value
    result: bytes | None = None
    result_encoding: str | None = None
    error: dict[str, Any] | None = None
    non_retryable: bool = False
    retry_delay: float = 0.0
    waiting_for: str | None = None  # a suspension's event


def _connection_lost(conn: psycopg.AsyncConnection | None, exc: psycopg.Error) -> bool:
    # 08xxx: connection exceptions; 57P01-03: the server is shutting down or restarting.
    sqlstate = exc.sqlstate or ""
    return (conn is not None and conn.broken) or sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")


@dataclass(frozen=True)
class StepRecord:
    """A step's outcome, as a worker reports it."""

    job_id: uuid.UUID
    attempt: int
    name: str
    status: str  # succeeded | failed
    result: bytes | None = None
    result_encoding: str | None = None
    error: dict[str, Any] | None = None


class Store:
    """Runs the queries. What it changes, it counts (metrics.py): every job event is written
    by exactly one sidecar, so each is counted once in the cluster."""

    def __init__(self, pool: AsyncConnectionPool, metrics: Metrics | None = None) -> None:
        self.pool = pool
        self.metrics = metrics or Metrics()
        # The pooled connections set to generic plans (plan_cache_mode is a session setting).
        self._generic_plans: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()

    @classmethod
    async def open(cls, url: str, max_size: int = 10, metrics: Metrics | None = None) -> Store:
        pool = AsyncConnectionPool(
            url, min_size=min(2, max_size), max_size=max_size, open=False,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT},
            # While the database is down, a request waits this long for a connection, then fails
            # (UNAVAILABLE to its caller) instead of hanging past the caller's deadline.
            timeout=POOL_WAIT, configure=_configure_session,
        )
        await pool.open(wait=True, timeout=30)
        return cls(pool, metrics)

    async def _plan_for(self, conn: psycopg.AsyncConnection[Any], generic: bool) -> None:
        """Set the connection to generic plans or back to PostgreSQL's choice (GENERIC_PLANS).
        Only a change is sent, and outside any transaction, so that no rollback undoes it."""
        if (conn in self._generic_plans) != generic:
            await conn.execute("SET plan_cache_mode = force_generic_plan" if generic else "RESET plan_cache_mode")
            (self._generic_plans.add if generic else self._generic_plans.discard)(conn)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One connection in one transaction; a failed statement is counted."""
        try:
            async with self.pool.connection() as conn:
                await self._plan_for(conn, generic=False)
                async with conn.transaction():
                    yield conn
        except psycopg.Error:
            self.metrics.database_errors.inc()
            raise

    async def close(self) -> None:
        await self.pool.close()

    async def _all(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one statement (its own transaction). A connection that turns out broken (the
        server restarted) is dropped and the statement tried again on the next one, until a
        fresh one is reached; every statement here is safe to repeat (enqueue by id, outcomes
        by attempt). So is one that PostgreSQL aborted to break a deadlock: it changed nothing."""
        tries = self.pool.max_size + 1
        for attempt in range(1, tries + 1):
            conn = None
            try:
                async with self.pool.connection() as conn:
                    await self._plan_for(conn, query in GENERIC_PLANS)
                    return await _rows(await conn.execute(QUERIES[query], params))
            except psycopg.errors.DeadlockDetected:
                self.metrics.database_errors.inc()
                log.warning("database.deadlock_retried", query=query, attempt=attempt)
                if attempt == tries:
                    raise
            except psycopg.OperationalError as exc:
                self.metrics.database_errors.inc()
                if attempt == tries or not _connection_lost(conn, exc):
                    raise
            except psycopg.Error:
                self.metrics.database_errors.inc()
                raise
        raise AssertionError("unreachable")

    async def enqueue(self, jobs: list[NewJob], *, sidecar_id: str,
                      lease: float) -> list[tuple[dict[str, Any], bool] | InvalidArgument]:
        """Insert the jobs of several callers in one statement (one commit); returns, per job in
        order, (row, deduplicated), or the refusal of a job whose id is another job's (the
        others are stored). Jobs with a worker_id start at once on that worker of sidecar
        `sidecar_id`."""
        results, inserted = await self._enqueue_with(self._all, jobs, sidecar_id=sidecar_id, lease=lease)
        self._count_inserted(inserted)
        return results

    async def enqueue_batch(self, jobs: list[NewJob] | SharedJobs, *, sidecar_id: str, lease: float,
                            brief: bool = False) -> list[tuple[dict[str, Any], bool]]:
        """Insert one caller's jobs in one transaction: all of them, or none when one's id is
        another job's (InvalidArgument). Returns (row, deduplicated) per job, in order. Brief:
        the rows of new jobs hold BRIEF_JOB_COLUMNS only."""
        async with self._transaction() as conn:
            results, inserted = await self._enqueue_with(_on(conn), jobs, sidecar_id=sidecar_id, lease=lease,
                                                         brief=brief)
            stored = _all_or_none(results)
        self._count_inserted(inserted)  # committed: none of it, had the batch been refused
        return stored

    async def _enqueue_with(self, run: Runner, jobs: list[NewJob] | SharedJobs, *, sidecar_id: str,
                            lease: float, brief: bool = False,
                            ) -> tuple[list[tuple[dict[str, Any], bool] | InvalidArgument], list[dict[str, Any]]]:
        """The enqueue, its statements run by `run`: each its own transaction (`_all`), or all
        within one (`_on(conn)`). Returns the results, and the rows it inserted, for the caller
        to count once they are committed."""
        statement = {"sidecar_id": sidecar_id, "lease": timedelta(seconds=lease)}
        if not isinstance(jobs, SharedJobs) and len(jobs) > 1:
            jobs = shared(jobs) or jobs  # a group commit's jobs, mostly alike
        if isinstance(jobs, SharedJobs):
            query = "enqueue_shared_brief" if brief else "enqueue_shared"
            params = _new_job_values(jobs.common) | statement | {
                "id": jobs.ids, "payload": jobs.payloads, "payload_encoding": jobs.payload_encodings,
                "idempotency_key": jobs.idempotency_keys}
        elif len(jobs) == 1 and not brief:
            query, params = "enqueue_one", _new_job_values(jobs[0]) | statement
        else:
            query = "enqueue_brief" if brief else "enqueue"
            rows = [_new_job_values(job) for job in jobs]
            params = {name: [row[name] for row in rows] for name, _ in NEW_JOB_FIELDS} | statement
        inserted = {row["id"]: row for row in await run(query, params)}
        fresh = list(inserted.values())
        jobs_as_sent = identities(jobs)
        skipped = [job for job in jobs_as_sent if job.id not in inserted]
        if skipped:
            rows = await run("jobs_by_id_or_idempotency_key", {
                "id": [j.id for j in skipped],
                "namespace": [j.namespace for j in skipped if j.idempotency_key],
                "idempotency_key": [j.idempotency_key for j in skipped if j.idempotency_key],
            })
            skipped_ids = {j.id for j in skipped}
            # By its id: ours, from a first try whose commit went through although its answer
            # was lost, or another job's (refused below).
            inserted.update((r["id"], r) for r in rows if r["id"] in skipped_ids)
            by_key = {(r["namespace"], r["idempotency_key"]): r for r in rows}
        results: list[tuple[dict[str, Any], bool] | InvalidArgument] = []
        for job in jobs_as_sent:
            if (row := inserted.get(job.id)) is None:
                results.append((by_key[(job.namespace, job.idempotency_key)], True))
            elif (row["namespace"], row["name"]) != (job.namespace, job.name):
                results.append(InvalidArgument("id", f"{job.id} is the id of another job"))
            else:
                results.append((row, False))
        return results, fresh

    def _count_inserted(self, rows: list[dict[str, Any]]) -> None:
        self.metrics.count("enqueued", rows)
        started = [row for row in rows if row["state"] == "running"]  # started in the insert
        if started:
            self._count_started(started)

    def _count_started(self, rows: list[dict[str, Any]]) -> None:
        self.metrics.count("started", rows)
        if not self.metrics.served:
            return
        for row in rows:
            lag = (row["claimed_at"] - row["run_at"]).total_seconds() if row.get("claimed_at") else 0.0
            self.metrics.scheduling_lag.labels(row["namespace"], row["name"]).observe(max(lag, 0.0))

    async def analyze_jobs(self, *, unless_since: float) -> bool:
        """ANALYZE the jobs table, unless it was analysed after `unless_since` (Unix seconds, by
        the database's clock); returns whether it was (or was tried: another ANALYZE or a VACUUM
        may hold it)."""
        (row,) = await self._all("jobs_analyzed_since", {"since": unless_since})
        if row["analyzed"]:
            return False
        await self._all("analyze_jobs", {})
        return True

    async def get_job(self, job_id: uuid.UUID, namespace: str) -> dict[str, Any] | None:
        rows = await self._all("get_job", {"id": job_id, "namespace": namespace})
        return rows[0] if rows else None

    async def get_attempts(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        return await self._all("get_attempts", {"id": job_id})

    async def list_jobs(self, where: JobFilter, before: uuid.UUID | None, limit: int) -> list[dict[str, Any]]:
        return await self._all("list_jobs", _filter_values(where) | {"before": before, "limit": limit})

    async def claim(self, namespace: str, names: list[str], slots: list[str], lease: float,
                    sidecar_id: str) -> list[dict[str, Any]]:
        """Claim jobs of these functions that no flow control applies to, one per slot."""
        rows = await self._all("claim", {
            "namespace": namespace, "names": names, "slots": slots,
            "lease": timedelta(seconds=lease), "sidecar_id": sidecar_id,
        })
        self._count_started(rows)
        return rows

    async def claim_limited(self, namespace: str, name: str, slots: list[str], lease: float,
                            sidecar_id: str) -> tuple[list[dict[str, Any]], float | None]:
        """Claim jobs of one controlled function within its limits, one claim at a time across
        every sidecar. Returns the jobs, and when a claim came back short: the seconds until a
        rate limit may let more start (None: no rate limit held jobs back)."""
        key = {"namespace": namespace, "name": name}
        async with self._transaction() as conn:
            await conn.execute(QUERIES["lock_function"], key)
            cursor = await conn.execute(QUERIES["claim_limited"], key | {
                "slots": slots, "lease": timedelta(seconds=lease), "sidecar_id": sidecar_id,
            })
            rows = cast(list[dict[str, Any]], await cursor.fetchall())
            wait = None
            if len(rows) < len(slots):
                cursor = await conn.execute(QUERIES["rate_limit_wait"], key)
                found = cast(dict[str, Any] | None, await cursor.fetchone())
                wait = found["wait"] if found else None
        self._count_started(rows)
        return rows, wait

    async def controlled_functions(self, namespace: str, names: list[str]) -> set[str]:
        rows = await self._all("controlled_functions", {"namespace": namespace, "names": names})
        return {row["name"] for row in rows}

    async def register_functions(self, namespace: str, names: list[str], limits: dict[str, FunctionLimits]) -> None:
        """Record the limits a worker declares; functions it serves without any lose theirs."""
        declared = [limits.get(name) for name in names]
        await self._all("register_functions", {
            "namespace": namespace, "name": names,
            "declared": [d is not None for d in declared],
            "concurrency": [d.concurrency if d else None for d in declared],
            "key_concurrency": [d.key_concurrency if d else 1 for d in declared],
            "rate_limit": [d.rate_limit[0] if d and d.rate_limit else None for d in declared],
            "rate_period": [_interval(d.rate_limit[1]) if d and d.rate_limit else None for d in declared],
            "key_rate_limit": [d.key_rate_limit[0] if d and d.key_rate_limit else None for d in declared],
            "key_rate_period": [_interval(d.key_rate_limit[1]) if d and d.key_rate_limit else None for d in declared],
        })

    async def finish(self, outcomes: list[Outcome], whole: Callable[[uuid.UUID], bool] = lambda job_id: True,
                     ) -> dict[tuple[uuid.UUID, int], dict[str, Any]]:
        """Record outcomes in one statement; returns {(job id, attempt): the job row after it}
        for those that counted: the whole row where `whole(job id)` (its `whole` true), else
        its id, namespace, name, state and attempt."""
        rows = await self._all("finish", {
            "id": [o.job_id for o in outcomes],
            "attempt": [o.attempt for o in outcomes],
            "kind": [o.kind for o in outcomes],
            "result": [o.result for o in outcomes],
            "result_encoding": [o.result_encoding for o in outcomes],
            "error": [Jsonb(o.error) if o.error is not None else None for o in outcomes],
            "non_retryable": [o.non_retryable for o in outcomes],
            "retry_delay": [timedelta(seconds=o.retry_delay) for o in outcomes],
            "attempt_outcome": [o.attempt_outcome for o in outcomes],
            "waiting_for": [o.waiting_for for o in outcomes],
            "whole": [whole(o.job_id) for o in outcomes],
        })
        kinds = {(o.job_id, o.attempt): o.kind for o in outcomes}
        self.metrics.count("succeeded", [r for r in rows if r["state"] == "success"])
        self.metrics.count("failed", [r for r in rows if kinds[(r["id"], r["attempt"])] == "failure"])
        self.metrics.count("dead", [r for r in rows if r["state"] == "dead"])
        return {(r["id"], r["attempt"]): r for r in rows}

    async def record_steps(self, steps: list[StepRecord]) -> set[tuple[uuid.UUID, str]]:
        """Record step outcomes in one statement; returns the (job id, name) of those written."""
        rows = await self._all("record_steps", {
            "job_id": [s.job_id for s in steps],
            "attempt": [s.attempt for s in steps],
            "name": [s.name for s in steps],
            "status": [s.status for s in steps],
            "result": [s.result for s in steps],
            "result_encoding": [s.result_encoding for s in steps],
            "error": [Jsonb(s.error) if s.error is not None else None for s in steps],
        })
        return {(r["job_id"], r["name"]) for r in rows}

    async def succeeded_steps(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
        steps: dict[uuid.UUID, list[dict[str, Any]]] = {}
        for row in await self._all("succeeded_steps", {"ids": job_ids}):
            steps.setdefault(row["job_id"], []).append(row)
        return steps

    async def get_steps(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        return await self._all("get_steps", {"id": job_id})

    async def record_progress(self, reports: list[tuple[uuid.UUID, int, dict[str, Any]]]) -> None:
        """Keep each job's last progress, from its current attempt only (the last report wins)."""
        await self._all("record_progress", {
            "id": [job_id for job_id, _, _ in reports],
            "attempt": [attempt for _, attempt, _ in reports],
            "progress": [Jsonb(progress) for _, _, progress in reports],
        })

    async def record_logs(self, records: list[tuple[uuid.UUID, int, str, str]]) -> None:
        """Store (job id, attempt, level, message) records, in order."""
        await self._all("record_logs", {
            "job_id": [r[0] for r in records], "attempt": [r[1] for r in records],
            "level": [r[2] for r in records], "message": [r[3] for r in records],
        })

    async def get_children(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        return await self._all("get_children", {"id": job_id})

    async def get_logs(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        return await self._all("get_logs", {"id": job_id})

    async def emit_event(self, namespace: str, name: str, payload: bytes, encoding: str) -> int:
        """Set an event and wake the jobs waiting for it; returns how many it woke."""
        async with self._transaction() as conn:
            key = {"namespace": namespace, "name": name}
            await conn.execute(QUERIES["lock_event"], key)
            await conn.execute(QUERIES["emit_event"], key | {"payload": payload, "payload_encoding": encoding})
            cursor = await conn.execute(QUERIES["wake_event_waiters"], key | {"job_id": None})
            return len(await cursor.fetchall())

    async def wake_if_emitted(self, namespace: str, name: str, job_id: uuid.UUID) -> bool:
        """A job has just suspended to wait for an event: wake it at once if the event is there."""
        async with self._transaction() as conn:
            key = {"namespace": namespace, "name": name}
            await conn.execute(QUERIES["lock_event"], key)
            cursor = await conn.execute(QUERIES["wake_event_waiters"], key | {"job_id": job_id})
            return bool(await cursor.fetchall())

    async def wake_if_child_done(self, namespace: str, parent_id: uuid.UUID, child_id: uuid.UUID) -> bool:
        """A parent has just suspended to await a child: wake it at once if the child has ended."""
        async with self._transaction() as conn:
            await conn.execute(QUERIES["lock_event"], {"namespace": namespace, "name": f"job:{child_id}"})
            cursor = await conn.execute(QUERIES["wake_if_child_done"], {"parent_id": parent_id, "child_id": child_id})
            return bool(await cursor.fetchall())

    async def get_event(self, namespace: str, name: str) -> dict[str, Any] | None:
        rows = await self._all("get_event", {"namespace": namespace, "name": name})
        return rows[0] if rows else None

    async def delete_finished(self, age: float, limit: int) -> int | None:
        """Delete one batch of jobs finished more than `age` seconds ago; None if another
        sidecar holds the retention lock."""
        async with self._transaction() as conn:
            cursor = await conn.execute(QUERIES["try_retention_lock"])
            locked = cast(dict[str, Any], await cursor.fetchone())
            if not locked["locked"]:
                return None
            cursor = await conn.execute(QUERIES["delete_finished"], {"age": timedelta(seconds=age), "limit": limit})
            return len(await cursor.fetchall())

    async def renew_leases(self, ids: list[uuid.UUID], lease: float, sidecar_id: str) -> set[uuid.UUID]:
        rows = await self._all("renew_leases", {
            "ids": ids, "lease": timedelta(seconds=lease), "sidecar_id": sidecar_id,
        })
        return {r["id"] for r in rows}

    async def reclaim_expired(self, limit: int, error: dict[str, Any]) -> list[dict[str, Any]]:
        rows = await self._all("reclaim_expired", {"limit": limit, "error": json.dumps(error)})
        self.metrics.leases_reclaimed.inc(len(rows))
        self.metrics.count("failed", rows)
        self.metrics.count("dead", [r for r in rows if r["state"] == "dead"])
        return rows

    async def cancel_job(self, job_id: uuid.UUID, namespace: str) -> dict[str, Any] | None:
        """The job as cancelled, or None if it had finished (or does not exist)."""
        rows = await self._all("cancel_job", {"id": job_id, "namespace": namespace})
        self.metrics.count("cancelled", rows)  # with its descendants
        return next((row for row in rows if row["id"] == job_id), None)

    async def cancel_overdue(self, limit: int) -> list[dict[str, Any]]:
        """Apply the cancellation policies to up to `limit` jobs; returns those cancelled
        because of their own policy (not their descendants)."""
        rows = await self._all("cancel_overdue", {"limit": limit})
        self.metrics.count("cancelled", rows)
        return [row for row in rows if row["reason"] is not None]

    async def retry_job(self, job_id: uuid.UUID, namespace: str) -> dict[str, Any] | None:
        """The job as sent back to pending, or None if it was not dead or cancelled."""
        rows = await self._all("retry_jobs", _filter_values(JobFilter(namespace)) | {
            "id": job_id, "finished_before": None, "limit": 1})
        return rows[0] if rows else None

    async def retry_jobs(self, where: JobFilter, batch: int) -> int:
        """Retry every dead or cancelled job that matches, in batches of `batch`; only those
        that had finished when the call began (a job that dies again is not retried twice)."""
        params = _filter_values(where) | {"id": None, "finished_before": datetime.now(UTC), "limit": batch}
        retried = 0
        while rows := await self._all("retry_jobs", params):
            retried += len(rows)
        return retried

    async def purge_jobs(self, where: JobFilter, batch: int) -> int:
        """Delete every finished job that matches, in batches of `batch`."""
        params = _filter_values(where) | {"limit": batch}
        purged = 0
        while rows := await self._all("purge_jobs", params):
            purged += len(rows)
        return purged

    async def next_run_in(self, namespace: str, names: list[str]) -> float | None:
        """Seconds until the next pending job of these functions is runnable (negative: already is)."""
        rows = await self._all("next_run_at", {"namespace": namespace, "names": names})
        return next(iter(rows[0].values())) if rows else None

    # -- schedules ----------------------------------------------------------------------------

    async def now(self) -> datetime:
        """The database's clock."""
        rows = await self._all("database_now", {})
        return cast(datetime, rows[0]["now"])

    async def create_schedule(self, values: dict[str, Any], *, paused: bool | None,
                              replace: bool) -> dict[str, Any] | None:
        """Insert a schedule, or replace the one of the same name if `replace`; returns it with
        `created`, or None if the name is taken and `replace` is not set."""
        rows = await self._all("create_schedule", values | {"paused": paused, "replace": replace})
        return rows[0] if rows else None

    async def get_schedule(self, namespace: str, name: str) -> dict[str, Any] | None:
        rows = await self._all("get_schedule", {"namespace": namespace, "name": name})
        return rows[0] if rows else None

    async def list_schedules(self, namespace: str, function: str | None, after: str | None,
                             limit: int) -> list[dict[str, Any]]:
        return await self._all("list_schedules", {"namespace": namespace, "function": function,
                                                  "after": after, "limit": limit})

    async def change_schedule(self, namespace: str, name: str,
                              change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any] | None:
        """Lock a schedule, compute its new settings with `change(row)` (the row carries the
        database's `now`; None: leave it as it is; raising leaves it too) and write them, in one
        transaction. Returns the schedule as it is then, or None if there is none."""
        async with self._transaction() as conn:
            key = {"namespace": namespace, "name": name}
            cursor = await conn.execute(QUERIES["lock_schedule"], key)
            row = cast(dict[str, Any] | None, await cursor.fetchone())
            if row is None:
                return None
            values = change(row)
            if values is None:
                return row
            cursor = await conn.execute(QUERIES["update_schedule"], values | key)
            return cast(dict[str, Any], await cursor.fetchone())

    async def delete_schedule(self, namespace: str, name: str) -> bool:
        return bool(await self._all("delete_schedule", {"namespace": namespace, "name": name}))

    async def fire_due_schedules(self, limit: int, plan: Callable[[dict[str, Any]], ScheduleTicks], *,
                                 sidecar_id: str, lease: float) -> list[FiredSchedule]:
        """In one transaction: lock up to `limit` due schedules (skipping those another sidecar
        holds), insert the jobs `plan(row)` makes for their ticks with the enqueue statement, and
        move each to its next tick. A tick whose job exists already (same idempotency key) is
        not enqueued again: it comes back as deduplicated."""
        async with self._transaction() as conn:
            cursor = await conn.execute(QUERIES["lock_due_schedules"], {"limit": limit})
            rows = cast(list[dict[str, Any]], await cursor.fetchall())
            plans = [(row, plan(row)) for row in rows]
            jobs = [job for _, ticks in plans for job in ticks.jobs]
            results, inserted = await self._enqueue_with(_on(conn), jobs, sidecar_id=sidecar_id, lease=lease) \
                if jobs else ([], [])
            stored = _all_or_none(results)
            fired, advanced, position = [], [], 0
            for row, ticks in plans:
                enqueued = stored[position:position + len(ticks.jobs)]
                position += len(ticks.jobs)
                fired.append(FiredSchedule(row, ticks, enqueued))
                last = enqueued[-1][0] if enqueued else None
                advanced.append({
                    "namespace": row["namespace"], "name": row["name"], "next_run_at": ticks.next_run_at,
                    "last_run_at": ticks.jobs[-1].run_at if last else row["last_run_at"],
                    "last_job_id": last["id"] if last else row["last_job_id"],
                    "last_error": ticks.error if ticks.error or last else row["last_error"],
                    "paused": ticks.pause,
                })
            if advanced:
                await conn.execute(QUERIES["advance_schedules"],
                                   {column: [a[column] for a in advanced] for column in advanced[0]})
        self._count_inserted(inserted)
        return fired

    async def next_schedule_in(self) -> float | None:
        """Seconds until the earliest tick of any unpaused schedule (negative: due already)."""
        rows = await self._all("next_schedule_in", {})
        return cast(float | None, rows[0]["wait"])


    # -- operations: workers, activity, statistics ------------------------------------------

    async def register_worker(self, worker_id: str, sidecar_id: str, namespace: str, worker_name: str, sdk: str,
                              names: list[str], concurrency: int, ttl: float) -> None:
        await self._all("register_worker", {
            "id": worker_id, "sidecar_id": sidecar_id, "namespace": namespace, "worker_name": worker_name,
            "sdk": sdk, "names": names, "concurrency": concurrency, "ttl": timedelta(seconds=ttl)})

    async def touch_workers(self, workers: list[tuple[str, int, bool]], ttl: float) -> None:
        """(worker id, jobs in flight, draining) of this sidecar's workers, still connected."""
        await self._all("touch_workers", {
            "id": [w[0] for w in workers], "in_flight": [w[1] for w in workers], "draining": [w[2] for w in workers],
            "ttl": timedelta(seconds=ttl)})

    async def remove_worker(self, worker_id: str) -> None:
        await self._all("remove_worker", {"id": worker_id})

    async def delete_expired_workers(self) -> int:
        return len(await self._all("delete_expired_workers", {}))

    async def list_workers(self, namespace: str | None) -> list[dict[str, Any]]:
        return await self._all("list_workers", {"namespace": namespace})

    async def add_activity(self, rows: list[dict[str, Any]]) -> None:
        await self._all("add_activity", {column: [row[column] for row in rows] for column in rows[0]})

    async def delete_old_activity(self) -> None:
        await self._all("delete_old_activity", {})

    async def function_stats(self, namespace: str | None, window: float) -> list[dict[str, Any]]:
        return await self._all("function_stats", {"namespace": namespace, "window": timedelta(seconds=window)})

    async def function_activity(self, namespace: str | None, name: str | None,
                                window: float) -> list[dict[str, Any]]:
        """Per-minute activity rows within the window; one row of nulls (but `start` and `at`)
        when there is none."""
        return await self._all("function_activity", {
            "namespace": namespace, "name": name, "window": timedelta(seconds=window)})

    async def database_info(self) -> dict[str, Any]:
        return (await self._all("database_info", {}))[0]


Runner = Callable[[str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]


def _all_or_none(results: list[tuple[dict[str, Any], bool] | InvalidArgument]) -> list[tuple[dict[str, Any], bool]]:
    """The results of an enqueue in a transaction, or its first refusal raised (rolling it back)."""
    for result in results:
        if isinstance(result, InvalidArgument):
            raise result
    return cast(list[tuple[dict[str, Any], bool]], results)


def _on(conn: psycopg.AsyncConnection[Any]) -> Runner:
    """Runs named queries on one connection (inside the caller's transaction)."""

    async def run(query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return await _rows(await conn.execute(QUERIES[query], params))

    return run


async def _rows(cursor: psycopg.AsyncCursor[Any]) -> list[dict[str, Any]]:
    """The rows of a statement that returns rows, none for another. (Asking cursor.description
    would build a description of every column, types looked up, for each statement.)"""
    result = cursor.pgresult
    if result is None or result.status != pq.ExecStatus.TUPLES_OK:
        return []
    return cast(list[dict[str, Any]], await cursor.fetchall())


@dataclass(frozen=True)
class ScheduleTicks:
    """What one firing round does with a due schedule: the jobs of the ticks it fires (oldest
    first), and the tick it waits for next."""

    jobs: list[NewJob]
    next_run_at: datetime
    error: str | None = None  # why a due tick made no job
    pause: bool = False  # stop the schedule (it can no longer be evaluated)


@dataclass(frozen=True)
class FiredSchedule:
    schedule: dict[str, Any]  # the row as it was before this round
    ticks: ScheduleTicks
    enqueued: list[tuple[dict[str, Any], bool]]  # (job row, deduplicated) per job of `ticks`
