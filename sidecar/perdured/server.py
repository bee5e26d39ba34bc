"""The sidecar process: database, listener, scheduler, reaper and gRPC server, started and
stopped in order."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import psycopg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from perdure.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)
from perdured import __version__, reaper
from perdured.api import AdminService, JobsService, WorkersService
from perdured.config import Settings
from perdured.dispatch import Dispatcher, sidecar_id
from perdured.embedded import start_embedded
from perdured.events import EventHub
from perdured.logs import log
from perdured.metrics import Metrics, add_activity_forever
from perdured.migrate import load_migrations, migrate
from perdured.scheduler import Scheduler
from perdured.schedules import ScheduleRunner, SchedulesService
from perdured.store import Store

if TYPE_CHECKING:
    from perdured.dashboard import Dashboard

SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
    workers_pb2.DESCRIPTOR.services_by_name["Workers"].full_name,
    schedules_pb2.DESCRIPTOR.services_by_name["Schedules"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


async def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    # initdb and pg_ctl block: keep them off the event loop.
    return await asyncio.to_thread(start_embedded, settings.data_dir)


async def apply_migrations(url: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await migrate(conn)


class Sidecar:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.id = sidecar_id()
        self.address = ""
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: grpc.aio.Server | None = None
        self._store: Store | None = None
        self._stop_metrics: Callable[[], None] | None = None
        self.dashboard: Dashboard | None = None
        self._health = health.aio.HealthServicer()

    async def start(self) -> None:
        settings = self.settings
        url = await database_url(settings)
        applied = await apply_migrations(url)
        log.info("database.ready", migrations_applied=applied)

        self.metrics = metrics = Metrics(served=bool(settings.metrics_listen))
        self._store = store = await Store.open(url, settings.pool_size, metrics)
        events = EventHub(url)
        self._tasks.append(asyncio.create_task(events.run(), name="events"))
        await asyncio.wait_for(events.ready.wait(), timeout=30)

        dispatcher = Dispatcher(store, sidecar_id=self.id, lease=settings.lease,
                                max_payload_bytes=settings.max_payload_bytes)
        scheduler = Scheduler(store, dispatcher, sidecar_id=self.id, lease=settings.lease,
                              poll_interval=settings.poll_interval)
        events.subscribe(scheduler.on_event)
        events.subscribe(dispatcher.on_event)
        events.on_reconnect(scheduler.on_reconnect)
        events.on_function_changed(scheduler.on_function_changed)
        dispatcher.on_finished = events.job_finished
        self.dispatcher = dispatcher
        self._tasks += [
            asyncio.create_task(scheduler.run(), name="scheduler"),
            asyncio.create_task(reaper.renew_leases_forever(dispatcher, settings.lease), name="renew"),
            asyncio.create_task(reaper.reclaim_forever(store, settings.lease), name="reclaim"),
            asyncio.create_task(reaper.cancel_overdue_forever(store, settings.lease), name="policies"),
            asyncio.create_task(reaper.delete_old_jobs_forever(store, settings.retention, settings.retention_interval),
                                name="retention"),
            asyncio.create_task(reaper.workers_and_activity_forever(dispatcher, settings.lease), name="workers"),
            asyncio.create_task(add_activity_forever(metrics, store.add_activity), name="activity"),
        ]
        metrics.workers_connected.set_function(lambda: len(dispatcher.sessions))
        if settings.metrics_listen:
            self._stop_metrics = metrics.serve(settings.metrics_listen)
            self._tasks.append(asyncio.create_task(reaper.queue_depth_forever(store), name="queue-depth"))
            log.info("metrics.serving", address=f"http://{settings.metrics_listen}/metrics")
        self.schedules = ScheduleRunner(store, sidecar_id=self.id, lease=settings.lease,
                                        poll_interval=settings.poll_interval,
                                        max_payload_bytes=settings.max_payload_bytes)
        self._tasks.append(asyncio.create_task(self.schedules.run(), name="schedules"))

        limit = settings.max_payload_bytes + 1024 * 1024  # room for the rest of the message
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # gRPC shares a port between servers by default: a second sidecar on the same address
            # would silently take half of the connections, with its own database behind it.
            ("grpc.so_reuseport", 0),
        ])
        jobs_pb2_grpc.add_JobsServicer_to_server(
            JobsService(store, events, scheduler, max_payload_bytes=settings.max_payload_bytes), server)
        workers_pb2_grpc.add_WorkersServicer_to_server(WorkersService(dispatcher), server)
        schedules_pb2_grpc.add_SchedulesServicer_to_server(
            SchedulesService(store, self.schedules, max_payload_bytes=settings.max_payload_bytes), server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(store, dispatcher, {
            "version": __version__, "latest_schema_version": len(load_migrations()),
            "embedded": not settings.database_url, "started_at": time.time(),
        }), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        port = server.add_insecure_port(settings.listen)
        if port == 0:
            raise RuntimeError(f"cannot listen on {settings.listen}")
        await server.start()
        self._server = server
        host = settings.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{port}"
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if settings.dashboard_listen:
            from perdured.dashboard import Dashboard  # aiohttp is loaded only when it serves

            self.dashboard = Dashboard(self.address, max_message_bytes=limit)
            await self.dashboard.start(settings.dashboard_listen)
            log.info("dashboard.serving", url=self.dashboard.url)
        log.info("sidecar.started", sidecar_id=self.id, address=self.address, lease=settings.lease)

    async def stop(self) -> None:
        log.info("sidecar.stopping", grace=self.settings.shutdown_grace)
        await self._health.enter_graceful_shutdown()
        if self.dashboard is not None:  # first: its open watches would hold up the gRPC server's stop
            await self.dashboard.stop()
        if hasattr(self, "dispatcher"):
            await self.dispatcher.drain(self.settings.shutdown_grace)
        if self._server is not None:
            await self._server.stop(grace=1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._store is not None and (activity := self.metrics.take_activity()):
            try:  # what this sidecar counted since its last addition
                await self._store.add_activity(activity)
            except Exception as exc:
                log.warning("activity.lost", error=str(exc))
        if self._store is not None:
            await self._store.close()
        if self._stop_metrics is not None:
            await asyncio.to_thread(self._stop_metrics)
        log.info("sidecar.stopped", sidecar_id=self.id)


async def serve(settings: Settings) -> None:
    sidecar = Sidecar(settings)
    await sidecar.start()
    if settings.ready_fd is not None:
        with os.fdopen(settings.ready_fd, "w") as ready:
            ready.write(sidecar.address + "\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchers: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if settings.exit_with_stdin:
        watchers.append(asyncio.create_task(_stdin_closed()))
    await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
    for watcher in watchers:
        watcher.cancel()
    await sidecar.stop()


async def _stdin_closed() -> None:
    """Returns when standard input reaches end of file: the supervising process is gone."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass
