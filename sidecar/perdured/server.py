"""The sidecar process: database, listener, scheduler, reaper and gRPC server, started and
stopped in order."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
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
from perdured.access import Scope
from perdured.api import AdminService, JobsService, WorkersService
from perdured.auth import Authenticator, Tokens, internal_token
from perdured.config import Settings, check_exposure, is_loopback
from perdured.dispatch import Dispatcher, sidecar_id
from perdured.embedded import start_embedded
from perdured.events import EventHub
from perdured.logs import add_secret, database_password, log, redact_database_url
from perdured.metrics import Metrics, MetricsServer, add_activity_forever
from perdured.migrate import load_migrations, migrate
from perdured.scheduler import Scheduler
from perdured.schedules import ScheduleRunner, SchedulesService
from perdured.store import Store
from perdured.tls import RELOAD_CHECK, ServerTLS, certificate_names

if TYPE_CHECKING:
    from perdured.dashboard import Dashboard

MAX_PENDING_CALLS = 20_000
SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
    workers_pb2.DESCRIPTOR.services_by_name["Workers"].full_name,
    schedules_pb2.DESCRIPTOR.services_by_name["Schedules"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


async def database_url(settings: Settings) -> str:
    if settings.database_url:
        for secret in database_password(settings.database_url):
            add_secret(secret)  # from now on, no log line or error message shows it
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
        self._metrics_server: MetricsServer | None = None
        self.dashboard: Dashboard | None = None
        self._health = health.aio.HealthServicer()
        self._private_dir: str | None = None  # holds the Unix socket of the dashboard's own calls
        self.tokens = Tokens()
        self.tls: ServerTLS | None = None

    def _secure(self) -> None:
        """Read the tokens and the TLS files, and check that no port beyond loopback goes
        unprotected (TokensError, TLSError, ExposureError: one line that says what to fix)."""
        settings = self.settings
        unprotected = check_exposure(settings)
        self.tokens = Tokens.load(settings.token, settings.tokens_file)
        if settings.tls_cert is not None and settings.tls_key is not None:
            self.tls = ServerTLS(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        for port in unprotected:
            log.warning("security.insecure", serving=port,
                        warning="anyone who can reach this address can use it; only on a network you trust")
        for label in self.tokens.short:
            log.warning("security.short_token", token=label,
                        warning="a token this short can be guessed: use 32 random characters or more")
        log.info("security.configured", tls=self.tls is not None,
                 client_certificates=self.tls is not None and self.tls.requires_client_certificates,
                 certificate_names=certificate_names(self.tls.cert) if self.tls else [],
                 tokens=self.tokens.describe() if self.tokens else "none: every call is allowed")

    async def start(self) -> None:
        settings = self.settings
        self._secure()
        url = await database_url(settings)
        applied = await apply_migrations(url)
        log.info("database.ready", database=redact_database_url(url), migrations_applied=applied)

        self.metrics = metrics = Metrics(served=bool(settings.metrics_listen))
        self._store = store = await Store.open(url, settings.pool_size, metrics)
        events = EventHub(url)
        self._tasks.append(asyncio.create_task(events.run(), name="events"))
        await asyncio.wait_for(events.ready.wait(), timeout=30)

        dispatcher = Dispatcher(store, sidecar_id=self.id, lease=settings.lease,
                                max_payload_bytes=settings.max_payload_bytes, max_streams=settings.max_streams,
                                max_worker_concurrency=settings.max_worker_concurrency)
        scheduler = Scheduler(store, dispatcher, sidecar_id=self.id, lease=settings.lease,
                              poll_interval=settings.poll_interval)
        scheduler.listen(events)
        events.subscribe(dispatcher.on_event, dispatcher.EVENT_KINDS)
        events.on_reconnect(scheduler.on_reconnect)
        events.on_function_changed(scheduler.on_function_changed)
        dispatcher.on_finished, dispatcher.awaited = events.job_finished, events.awaited
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
            self._metrics_server = MetricsServer(metrics.registry, self.tokens, self._http_tls(settings.metrics_listen))
            await self._metrics_server.start(settings.metrics_listen)
            self._tasks.append(asyncio.create_task(reaper.queue_depth_forever(store), name="queue-depth"))
            log.info("metrics.serving", address=self._metrics_server.url)
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
            # Calls gRPC has received but the event loop has not picked up yet: past these
            # limits (1000, then 3000 by default) gRPC ends them as CANCELLED, with no reason
            # given, during a burst the sidecar would serve a moment later. They wait instead,
            # each within its caller's deadline.
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
        ], interceptors=[Authenticator(self.tokens)] if self.tokens else None)
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
        if self.tls is not None:
            port = server.add_secure_port(settings.listen, self.tls.grpc_credentials())
        else:
            port = server.add_insecure_port(settings.listen)
        if port == 0:
            raise RuntimeError(f"cannot listen on {settings.listen}")
        dashboard_target = ""
        if settings.dashboard_listen:
            # The dashboard calls this server over a Unix socket in a directory only this user
            # can enter: no TLS to set up for itself, and calls still carry a token.
            self._private_dir = tempfile.mkdtemp(prefix="perdured-")
            dashboard_target = f"unix:{Path(self._private_dir) / 'grpc.sock'}"
            if server.add_insecure_port(dashboard_target) == 0:
                raise RuntimeError(f"cannot listen on {dashboard_target}")
        await server.start()
        self._server = server
        host = settings.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{port}"
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if settings.dashboard_listen:
            from perdured.dashboard import Dashboard  # aiohttp is loaded only when it serves

            own_token = None
            if self.tokens:  # for the live feeds, which serve every user of a namespace
                own_token = internal_token()
                self.tokens.add(own_token, Scope(None, "the dashboard's live feeds"))
            self.dashboard = Dashboard(dashboard_target, max_message_bytes=limit, tokens=self.tokens,
                                       own_token=own_token, ssl_context=self._http_tls(settings.dashboard_listen))
            await self.dashboard.start(settings.dashboard_listen)
            log.info("dashboard.serving", url=self.dashboard.url)
        if self.tls is not None and (self._metrics_server or self.dashboard):
            self._tasks.append(asyncio.create_task(self._watch_certificate(self.tls), name="tls"))
        log.info("sidecar.started", sidecar_id=self.id, address=self.address, lease=settings.lease)

    def _http_tls(self, listen: str) -> Any:
        """The SSL context of an HTTP port (the dashboard, the metrics): TLS beyond loopback when
        the sidecar has a certificate; plain HTTP on loopback, where browsers and scrapers on
        this machine (or through a forwarded port) reach it by an address the certificate does
        not name."""
        if self.tls is None or is_loopback(listen.rpartition(":")[0]):
            return None
        return self.tls.ssl_context()

    @staticmethod
    async def _watch_certificate(tls: ServerTLS) -> None:
        while True:
            await asyncio.sleep(RELOAD_CHECK)
            tls.check_for_changes()

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
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
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
