"""Other languages against the real sidecar: the Node.js SDK's own tests, jobs that cross from
one language to another, and the language-neutral conformance scenarios run by every SDK's
driver (conformance/README.md).

Node.js tests are skipped, saying so, only where `node` or `npm` is not installed; where they
are, the pinned packages are installed (`npm ci`) if `scripts/dev.py` has not done it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_failures import eventually

ROOT = Path(__file__).resolve().parents[2]
NODE_SDK = ROOT / "sdk_examples" / "node"
SCENARIOS = json.loads((ROOT / "conformance" / "scenarios.json").read_text())["scenarios"]
BUILT_IN = {
    "python": [sys.executable, str(ROOT / "conformance" / "drivers" / "python_driver.py")],
    "node": ["node", str(NODE_SDK / "conformance" / "driver.js")],
}


def extra_drivers() -> dict[str, list[str]]:
    """Drivers of other SDKs: PERDURE_CONFORMANCE_DRIVER="NAME=COMMAND[;NAME=COMMAND...]"."""
    drivers = {}
    for entry in filter(None, (e.strip() for e in os.environ.get("PERDURE_CONFORMANCE_DRIVER", "").split(";"))):
        name, sep, command = entry.partition("=")
        if not sep or not name.strip() or not command.strip():
            raise pytest.UsageError(f"PERDURE_CONFORMANCE_DRIVER entries are NAME=COMMAND, got {entry!r}")
        drivers[name.strip()] = shlex.split(command)
    return drivers


DRIVERS = BUILT_IN | extra_drivers()


def pairs() -> list[tuple[str, str]]:
    """(client, server) pairs: each SDK with itself, and Node.js and every extra SDK both ways
    with Python, the reference."""
    chosen = [("python", "python"), ("node", "node"), ("node", "python"), ("python", "node")]
    for name in DRIVERS.keys() - BUILT_IN.keys():
        chosen += [(name, name), (name, "python"), ("python", name)]
    return chosen


def node_missing() -> str | None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed: the Node.js SDK cannot run here" if missing else None


@pytest.fixture(scope="session")
def node_sdk() -> Path:
    """The Node.js SDK, its packages installed; skips the test only where Node.js is missing."""
    if reason := node_missing():
        pytest.skip(reason)
    if not (NODE_SDK / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_SDK, check=True)
    return NODE_SDK


@pytest.fixture
def needs(request: pytest.FixtureRequest):
    """needs("node", "python"): the drivers exist here (Node.js installed for "node")."""

    def check(*names: str) -> None:
        if "node" in names:
            request.getfixturevalue("node_sdk")

    return check


@dataclass
class Server:
    """A driver serving the conformance functions; `events` is what it reported."""

    process: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)

    def of(self, job_id: str, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("job_id") == job_id and e.get("event") == event]


async def _read_events(server: Server) -> None:
    assert server.process.stdout is not None
    async for line in server.process.stdout:
        with contextlib.suppress(json.JSONDecodeError):
            server.events.append(json.loads(line))


@contextlib.asynccontextmanager
async def serving(driver: Sequence[str], address: str, namespace: str) -> AsyncIterator[Server]:
    """Run `driver serve` until the block ends, then close its input and wait for it to stop."""
    process = await asyncio.create_subprocess_exec(
        *driver, "serve", "--address", address, "--namespace", namespace,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    server = Server(process)
    reader = asyncio.ensure_future(_read_events(server))
    try:
        async with asyncio.timeout(60):
            while not any(e.get("event") == "serving" for e in server.events):
                if reader.done():
                    raise AssertionError(f"{driver} exited ({await process.wait()}) before serving")
                await asyncio.sleep(0.02)
        yield server
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            async with asyncio.timeout(30):
                await process.wait()
                await reader
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"{driver} did not stop within 30 s of its input closing") from None
    assert process.returncode == 0, f"{driver} serve exited with {process.returncode}"


async def run_client(driver: Sequence[str], address: str, namespace: str, scenario: dict[str, Any]) -> dict[str, Any]:
    """Run `driver run` with the scenario on its input; returns its report."""
    process = await asyncio.create_subprocess_exec(
        *driver, "run", "--address", address, "--namespace", namespace,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(120):
            out, _ = await process.communicate(json.dumps(scenario).encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{driver} run did not finish within 120 s") from None
    assert process.returncode == 0, f"{driver} run exited with {process.returncode}: {out.decode()}"
    return json.loads(out.decode().strip().splitlines()[-1])


def database_url_for_node(conninfo: str) -> str:
    """A libpq conninfo ("host=... dbname=...") as the URL node-postgres understands."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    host = params.pop("host", "")
    port = params.pop("port", None)
    dbname = quote(params.pop("dbname", ""), safe="")
    auth = f"{user}:{quote(password, safe='')}@" if password is not None else (f"{user}@" if user else "")
    if host.startswith("/"):  # a Unix socket directory
        params["host"] = host
        host = ""
    netloc = f"{auth}{host}{':' + port if port and host else ''}"
    if port and not host:
        params["port"] = port
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{netloc}/{dbname}{query}"


def type_matches(actual: str, expected: str) -> bool:
    """An error type is the expected name, or that name qualified by a module (pkg.Name)."""
    return actual == expected or actual.endswith("." + expected)


def _error_problems(what: str, actual: dict[str, Any] | None, expected: dict[str, Any] | None) -> list[str]:
    if expected is None:
        return [] if actual is None else [f"{what}: expected no error, got {actual}"]
    if actual is None:
        return [f"{what}: expected {expected}, got no error"]
    problems = []
    if not type_matches(actual.get("type", ""), expected["type"]):
        problems.append(f"{what}.type: expected {expected['type']!r}, got {actual.get('type')!r}")
    if "message" in expected and actual.get("message") != expected["message"]:
        problems.append(f"{what}.message: expected {expected['message']!r}, got {actual.get('message')!r}")
    if "message_contains" in expected and expected["message_contains"] not in actual.get("message", ""):
        problems.append(f"{what}.message: expected it to contain {expected['message_contains']!r}, "
                        f"got {actual.get('message')!r}")
    return problems


def problems(expect: dict[str, Any], report: dict[str, Any], server: Server) -> list[str]:
    """How a client's report and a server's events differ from a scenario's expectations."""
    found = []
    for key in ("status", "result", "attempts", "deduplicated", "same_job"):
        if key in expect and report.get(key) != expect[key]:
            found.append(f"{key}: expected {expect[key]!r}, got {report.get(key)!r}")
    if "error" in expect:
        found += _error_problems("error", report.get("error"), expect["error"])
    if "attempt_errors" in expect:
        actual = report.get("attempt_errors", [])
        if len(actual) != len(expect["attempt_errors"]):
            found.append(f"attempt_errors: expected {expect['attempt_errors']!r}, got {actual!r}")
        else:
            for n, (got, wanted) in enumerate(zip(actual, expect["attempt_errors"], strict=True), 1):
                found += _error_problems(f"attempt {n} error", got, wanted)
    job = report.get("job_id", "")
    for key, event in (("handler_starts", "started"), ("handler_stops", "stopped")):
        if key in expect and len(server.of(job, event)) != expect[key]:
            found.append(f"{key}: expected {expect[key]}, the server reported {server.of(job, event)}")
    return found


# -- a Node.js worker process (node_reconnect_worker.js) ----------------------------------------

NODE_WORKER = Path(__file__).with_name("node_reconnect_worker.js")


@dataclass
class NodeWorker:
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def started(self, pattern: str) -> int:
        return len(list(self.directory.glob(f"started-{pattern}-{self.pid}")))


@pytest.fixture
def node_worker(node_sdk: Path, tmp_path: Path) -> Iterator[object]:
    """Start node_reconnect_worker.js on a sidecar; it is killed after the test."""
    started: list[NodeWorker] = []

    async def start(address: str, concurrency: int) -> NodeWorker:
        directory = tmp_path / "shared"
        directory.mkdir(exist_ok=True)
        process = subprocess.Popen(["node", str(NODE_WORKER), "--address", address, "--dir", str(directory),
                                    "--concurrency", str(concurrency)])
        worker = NodeWorker(process, directory)
        started.append(worker)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the Node.js worker exited with {process.returncode} before serving")
            return (directory / f"ready-{process.pid}").exists()

        await eventually(ready, "the Node.js worker to register")
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(10)
