"""What keeps the dashboard's pages live: per namespace, one WatchJobs stream and one statistics
refresh, shared by every page that watches the namespace, and fanned out to each page's
subscription.

A page reads what it shows through the JSON API, then follows a subscription (server-sent
events, see app.py):

- `ready`: the watch is subscribed (again): read what you show now, and every change after
  that read comes as an event; also sent after events had to be dropped (a page that falls
  more than MAX_PENDING jobs behind);
- `down`: the watch broke (the sidecar is stopping, or dropped a watcher that fell behind);
  `ready` follows once it is back;
- `jobs`: the latest event of each job that changed since the last message, oldest first;
- `stats`: GetStats of the namespace, whenever it changes (read every STATS_INTERVAL).

Events of one job within one message are coalesced (its latest event stands for them all), so
a busy sidecar costs a page one small message per BATCH_DELAY, not one per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import grpc

from perdure.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from perdured.dashboard.shape import to_json
from perdured.logs import log

STATS_INTERVAL = 2.0  # seconds between statistics reads, while anyone watches
MAX_PENDING = 1000  # changed jobs a subscription holds before it asks its page to read again
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds before watching again after the watch broke


class Subscription:
    """What one page has yet to be sent."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.closed = False
        self._jobs: dict[str, dict[str, Any]] = {}
        self._stats: dict[str, Any] | None = None
        self._notice: str | None = None  # "ready" or "down"

    def job_changed(self, event: dict[str, Any]) -> None:
        job_id = event["job_id"]
        if job_id not in self._jobs and len(self._jobs) >= MAX_PENDING:
            self._jobs.clear()  # too far behind: the page reads everything again instead
            self._notice = "ready"
        else:
            self._jobs.pop(job_id, None)  # re-inserted: the dict stays in order of last change
            self._jobs[job_id] = event
        self.wake.set()

    def stats_changed(self, stats: dict[str, Any]) -> None:
        self._stats = stats
        self.wake.set()

    def notice(self, notice: str) -> None:
        self._notice = notice
        if notice == "ready":
            self._jobs.clear()  # the page reads them anew
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def take(self) -> list[tuple[str, Any]]:
        """The messages to send now, as (event name, data), and nothing left pending."""
        self.wake.clear()
        messages: list[tuple[str, Any]] = []
        if self._notice is not None:
            messages.append((self._notice, {}))
        if self._jobs:
            messages.append(("jobs", list(self._jobs.values())))
        if self._stats is not None:
            messages.append(("stats", self._stats))
        self._jobs, self._stats, self._notice = {}, None, None
        return messages


class Feed:
    """One namespace's events and statistics, while anyone subscribes."""

    def __init__(self, channel: grpc.aio.Channel, namespace: str) -> None:
        self.namespace = namespace
        self.subscribers: set[Subscription] = set()
        self.live = False
        self.stats: dict[str, Any] | None = None
        self._jobs = jobs_pb2_grpc.JobsStub(channel)
        self._admin = admin_pb2_grpc.AdminStub(channel)
        # In a context of their own: not that of the request that started the feed (whose
        # person's token and scope must not outlive it); they call with the dashboard's token.
        self._tasks = [
            asyncio.create_task(self._watch(), name=f"dashboard-watch-{namespace}", context=contextvars.Context()),
            asyncio.create_task(self._refresh_stats(), name=f"dashboard-stats-{namespace}",
                                context=contextvars.Context()),
        ]

    def add(self, subscription: Subscription) -> None:
        self.subscribers.add(subscription)
        if self.live:
            subscription.notice("ready")
        if self.stats is not None:
            subscription.stats_changed(self.stats)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _tell(self, notice: str) -> None:
        for subscription in self.subscribers:
            subscription.notice(notice)

    async def _watch(self) -> None:
        failures = 0
        while True:
            call = self._jobs.WatchJobs(jobs_pb2.WatchJobsRequest(namespace=self.namespace))
            try:
                await call.initial_metadata()  # sent once the sidecar has subscribed the watch
                self.live, failures = True, 0
                self._tell("ready")
                async for event in call:
                    shaped = to_json(event)
                    for subscription in self.subscribers:
                        subscription.job_changed(shaped)
            except grpc.aio.AioRpcError as exc:
                log.warning("dashboard.watch_broken", namespace=self.namespace, code=exc.code().name,
                            error=exc.details())
            except Exception:
                log.exception("dashboard.watch_failed", namespace=self.namespace)
            finally:
                call.cancel()
                if self.live:
                    self.live = False
                    self._tell("down")
            await asyncio.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)])
            failures += 1

    async def _refresh_stats(self) -> None:
        request = admin_pb2.GetStatsRequest(namespace=self.namespace)
        while True:
            try:
                stats = to_json(await self._admin.GetStats(request, timeout=10))
            except grpc.aio.AioRpcError as exc:
                log.warning("dashboard.stats_failed", namespace=self.namespace, code=exc.code().name,
                            error=exc.details())
            except Exception:
                log.exception("dashboard.stats_failed", namespace=self.namespace)
            else:
                if self.stats is None or _without_clock(stats) != _without_clock(self.stats):
                    self.stats = stats
                    for subscription in self.subscribers:
                        subscription.stats_changed(stats)
            await asyncio.sleep(STATS_INTERVAL)


def _without_clock(stats: dict[str, Any]) -> dict[str, Any]:
    """Statistics without what changes at every read although nothing happened."""
    return {"functions": [{k: v for k, v in f.items() if k != "oldest_pending_age"} for f in stats["functions"]]}


class Feeds:
    """The feeds of the namespaces someone watches; a feed stops with its last subscriber."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._feeds: dict[str, Feed] = {}
        self._closed = False

    @contextlib.asynccontextmanager
    async def subscribe(self, namespace: str) -> AsyncIterator[Subscription]:
        subscription = Subscription()
        if self._closed:
            subscription.close()
            yield subscription
            return
        feed = self._feeds.get(namespace)
        if feed is None:
            feed = self._feeds[namespace] = Feed(self._channel, namespace)
        feed.add(subscription)
        try:
            yield subscription
        finally:
            feed.subscribers.discard(subscription)
            if not feed.subscribers and self._feeds.get(namespace) is feed:
                del self._feeds[namespace]
                await feed.stop()

    async def close(self) -> None:
        """Stop every feed and end every subscription (their pages reconnect to another start)."""
        self._closed = True
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            for subscription in feed.subscribers:
                subscription.close()
        await asyncio.gather(*(feed.stop() for feed in feeds))
