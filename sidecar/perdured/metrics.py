"""What a sidecar counts.

Every job event this sidecar causes (an enqueue, a start, an outcome, a reclaim, a
cancellation) is counted once, by the Store that wrote it, into two places:

- Prometheus metrics of this sidecar (`--metrics-listen`), which Prometheus sums across
  sidecars;
- per-minute activity per function, added to `perdure.activity` every few seconds, from
  which every sidecar answers cluster-wide statistics without reading finished jobs.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from perdured.access import Scope
from perdured.auth import Tokens, bearer_token
from perdured.http import start_site
from perdured.logs import log

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

# The events counted per function, and the activity columns they add to.
EVENTS = ("enqueued", "started", "succeeded", "failed", "dead", "cancelled")
FLUSH_INTERVAL = 5.0  # seconds between additions to perdure.activity
LABELS = ("namespace", "function")


class _Unserved:
    """Stands for every Prometheus metric when metrics are not served: prometheus_client is not
    even imported then (it costs a sidecar about 10 MB)."""

    def labels(self, *values: str) -> _Unserved:
        return self

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class Metrics:
    def __init__(self, served: bool = False) -> None:
        # Unserved, every metric is a no-op; a caller may then skip what it measures for one.
        self.served = served
        self._activity: Tally[tuple[str, str, datetime, str]] = Tally()
        if not served:
            unserved: Any = _Unserved()
            self._events = dict.fromkeys(EVENTS, unserved)
            self.attempt_duration = self.scheduling_lag = self.queue_depth = unserved
            self.leases_reclaimed = self.workers_connected = self.database_errors = unserved
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self._events = {
            "enqueued": Counter("perdure_jobs_enqueued", "Jobs enqueued.", LABELS, registry=registry),
            "started": Counter("perdure_attempts_started", "Attempts started (claims, resumptions included).",
                               LABELS, registry=registry),
            "succeeded": Counter("perdure_jobs_succeeded", "Jobs that succeeded.", LABELS, registry=registry),
            "failed": Counter("perdure_attempts_failed", "Attempts that failed (retried or not).", LABELS,
                              registry=registry),
            "dead": Counter("perdure_jobs_dead", "Jobs that died (attempts used up, or non-retryable).",
                            LABELS, registry=registry),
            "cancelled": Counter("perdure_jobs_cancelled", "Jobs cancelled (by a call or a policy).", LABELS,
                                 registry=registry),
        }
        self.attempt_duration = Histogram(
            "perdure_attempt_duration_seconds", "From assignment to the worker's outcome.",
            (*LABELS, "outcome"), registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900))
        self.scheduling_lag = Histogram(
            "perdure_scheduling_lag_seconds", "From a job's run time to its claim.", LABELS, registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60))
        self.queue_depth = Gauge("perdure_queue_depth", "Jobs pending, running or suspended (cluster-wide).",
                                 (*LABELS, "state"), registry=registry)
        self.leases_reclaimed = Counter("perdure_leases_reclaimed", "Expired leases this sidecar reclaimed.",
                                        registry=registry)
        self.workers_connected = Gauge("perdure_workers_connected", "Workers connected to this sidecar.",
                                       registry=registry)
        self.database_errors = Counter("perdure_database_errors", "Statements that failed.", registry=registry)

    def count(self, event: str, rows: list[dict[str, object]] | None = None, *, namespace: str = "",
              name: str = "", n: int = 1) -> None:
        """Count `event` once per row (each with a namespace and name), or `n` times for one function."""
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        counts = Tally((str(r["namespace"]), str(r["name"])) for r in rows) if rows is not None \
            else Tally({(namespace, name): n})
        for key, count in counts.items():  # a batch is mostly of one function: one increment each
            if count <= 0:
                continue
            self._events[event].labels(*key).inc(count)
            self._activity[(*key, minute, event)] += count

    def take_activity(self) -> list[dict[str, object]]:
        """The counts gathered since the last call, one row per function and minute (in key order,
        so that concurrent additions from several sidecars lock rows in the same order)."""
        taken, self._activity = self._activity, Tally()
        rows: dict[tuple[str, str, datetime], dict[str, object]] = {}
        for (namespace, name, minute, event), count in sorted(taken.items()):
            row = rows.setdefault((namespace, name, minute), {
                "namespace": namespace, "name": name, "minute": minute, **dict.fromkeys(EVENTS, 0)})
            row[event] = count
        return list(rows.values())

    def give_back(self, rows: list[dict[str, object]]) -> None:
        """Counts that could not be written: keep them for the next addition."""
        for row in rows:
            for event in EVENTS:
                if row[event]:
                    minute = row["minute"]
                    assert isinstance(minute, datetime)
                    self._activity[(str(row["namespace"]), str(row["name"]), minute, event)] += int(str(row[event]))


class _Scoped:
    """The samples of a registry that a token's scope may see: those of its namespaces, and
    those of no namespace (the sidecar's own)."""

    def __init__(self, registry: CollectorRegistry, scope: Scope) -> None:
        self.registry, self.scope = registry, scope

    def collect(self) -> Iterator[Any]:
        for family in self.registry.collect():
            family.samples = [sample for sample in family.samples
                              if "namespace" not in sample.labels or self.scope.allows(sample.labels["namespace"])]
            yield family


class MetricsServer:
    """/metrics over HTTP, in the sidecar's event loop. With tokens configured it asks for one
    (`Authorization: Bearer TOKEN`, as Prometheus's `authorization` setting sends it) and shows
    only the series of the token's namespaces; beyond loopback it serves HTTPS with the
    sidecar's certificate (config.py refuses anything less, unless --insecure)."""

    def __init__(self, registry: CollectorRegistry, tokens: Tokens, ssl_context: ssl.SSLContext | None) -> None:
        self.registry, self.tokens, self.ssl_context = registry, tokens, ssl_context
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self, listen: str) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            self.url = await start_site(self._runner, listen, self.ssl_context, "the metrics") + "/metrics"
        except OSError:
            await self.stop()
            raise

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web

        registry: Any = self.registry
        if self.tokens:
            scope = self.tokens.authenticate(bearer_token(request.headers.get("Authorization")))
            if scope is None:
                log.warning("auth.refused", endpoint="metrics", peer=request.remote,
                            reason="unknown token" if request.headers.get("Authorization") else "no token")
                return web.Response(status=401, text="the metrics need a token: Authorization: Bearer TOKEN\n",
                                    headers={"WWW-Authenticate": 'Bearer realm="perdured"'})
            if not scope.everything:
                registry = _Scoped(self.registry, scope)
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def add_activity_forever(metrics: Metrics, write: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> None:
    """Every few seconds, add what this sidecar counted to perdure.activity."""
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        rows = metrics.take_activity()
        if not rows:
            continue
        try:
            await write(rows)
        except asyncio.CancelledError:
            metrics.give_back(rows)
            raise
        except Exception as exc:
            metrics.give_back(rows)
            log.error("activity.write_failed", error=str(exc))
