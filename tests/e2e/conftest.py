"""Real application processes (tests/e2e/app.py) next to the real perdured processes of the
`perdured` fixture, and the shared directory through which the test follows them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

APP = Path(__file__).with_name("app.py")
READY_TIMEOUT = 20.0


@dataclass(frozen=True)
class JournalEntry:
    event: str  # start | error
    name: str
    job_id: str
    attempt: int


@dataclass
class AppProcess:
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """kill -9: the process gets no chance to say goodbye to its sidecar."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    async def exited(self, timeout: float) -> int:
        """Wait for the process to end by itself; its exit status (-N for signal N)."""
        return await asyncio.to_thread(self.process.wait, timeout)

    def journal(self) -> list[JournalEntry]:
        path = self.directory / f"journal-{self.pid}"
        if not path.exists():
            return []
        entries = []
        for line in path.read_text().splitlines():
            event, name, job_id, attempt = line.split(" ")
            entries.append(JournalEntry(event, name, job_id, int(attempt)))
        return entries


StartApp = Callable[..., Awaitable[AppProcess]]


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "shared"
    directory.mkdir()
    return directory


@pytest.fixture
def app(shared_dir: Path) -> Iterator[StartApp]:
    """Start tests/e2e/app.py serving `functions` on a sidecar; all are killed after the test.

    With wait_ready (the default) it returns once the worker stream is registered."""
    started: list[AppProcess] = []

    async def start(address: str, *functions: str, concurrency: int = 1, wait_ready: bool = True) -> AppProcess:
        process = subprocess.Popen([
            sys.executable, str(APP), "--address", address, "--dir", str(shared_dir),
            "--functions", ",".join(functions), "--concurrency", str(concurrency),
        ])
        running = AppProcess(process, shared_dir)
        started.append(running)
        if wait_ready:
            await _wait_ready(running)
        return running

    yield start
    for running in started:
        if running.process.poll() is None:
            running.kill()


async def _wait_ready(running: AppProcess) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    ready = running.directory / f"ready-{running.pid}"
    while not ready.exists():
        if running.process.poll() is not None:
            raise RuntimeError(f"the app exited with {running.process.returncode} before serving")
        if loop.time() > deadline:
            raise TimeoutError(f"the app did not register its worker within {READY_TIMEOUT:g} s")
        await asyncio.sleep(0.02)
