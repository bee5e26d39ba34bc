"""Enqueue a job inside your own database transaction (psycopg 3, sync or async).

    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("INSERT INTO orders ...")
        job_id = enqueue(conn, "orders:confirm", order_id, max_attempts=5)
    # the job exists if and only if the transaction committed

It calls the SQL function `perdure.enqueue` (migrations/0012_transactional_enqueue.sql),
which any language can call the same way. The sidecars pick the job up when the transaction
commits, through the same notification as any enqueue. Use `Perdure.handle(job_id)` for its
result. The connection's role needs EXECUTE on the function and INSERT on Perdure's tables.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Protocol

from perdure._options import JobOptions

QUERY = "SELECT perdure.enqueue(%s, %s::jsonb, %s::jsonb, %s::jsonb, %s)"


class _Connection(Protocol):
    def execute(self, query: Any, params: Any = ...) -> Any: ...


def enqueue(conn: _Connection, name: str, *args: Any, namespace: str = "default", kwargs: dict[str, Any] | None = None,
            **options: Any) -> str:
    """Enqueue `name(*args, **kwargs)` in the transaction of `conn` (a psycopg Connection or
    Cursor); returns the job id. Keyword options are the SDK's (idempotency_key, delay,
    max_attempts, priority, labels, ...)."""
    row = conn.execute(QUERY, _params(name, args, kwargs, namespace, options)).fetchone()
    return str(row[0])


async def enqueue_async(conn: Any, name: str, *args: Any, namespace: str = "default",
                        kwargs: dict[str, Any] | None = None, **options: Any) -> str:
    """The same for a psycopg AsyncConnection or AsyncCursor."""
    cursor = await conn.execute(QUERY, _params(name, args, kwargs, namespace, options))
    row = await cursor.fetchone()
    return str(row[0])


def _params(name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None, namespace: str,
            options: dict[str, Any]) -> tuple[Any, ...]:
    checked = JobOptions().merged(**options)  # the SDK's own checks, at the call site
    chosen = {key: value for key, value in asdict(checked).items() if value is not None}
    if "run_at" in chosen:
        chosen["run_at"] = chosen["run_at"].isoformat()
    try:
        return name, json.dumps(list(args)), json.dumps(kwargs or {}), json.dumps(chosen), namespace
    except TypeError as exc:
        raise TypeError(f"the arguments of {name!r} must be JSON-serialisable: {exc}") from None
