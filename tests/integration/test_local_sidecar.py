"""Perdure() without an address spawns its own perdured: on a given database, or embedded."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from perdure import Perdure


async def test_storage__spawns_perdured_against_that_database(database_url, db) -> None:
    perdure = Perdure(storage=database_url)

    @perdure.durable("greet")
    def greet(name: str) -> str:
        return f"hello {name}"

    async with perdure:
        assert perdure.address and perdure.address.startswith("127.0.0.1:")
        assert await (await greet("storage")).result(timeout=60) == "hello storage"
    assert db.execute("SELECT state FROM perdure.jobs WHERE name = 'greet'").fetchone()[0] == "success"


async def test_no_arguments__spawns_perdured_on_an_embedded_postgres() -> None:
    # Outside pytest's private (mode 0700) temporary root, like the session server in conftest.
    data_dir = Path(tempfile.mkdtemp(prefix="perdure-embedded-"))
    perdure = Perdure(data_dir=data_dir)

    @perdure.durable("square")
    async def square(n: int) -> int:
        return n * n

    try:
        async with perdure:
            assert await (await square(7)).result(timeout=60) == 49
        assert (data_dir / "pg" / "PG_VERSION").exists()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_spawned_sidecar__stops_when_its_parent_is_killed(database_url, tmp_path) -> None:
    """kill -9 of the app must not leave its sidecar behind."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, os, sys
        from perdure import Perdure

        async def main():
            perdure = Perdure(storage={database_url!r})
            await perdure.start()
            print(perdure._sidecar._process.pid, flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
    """))
    app = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    sidecar_pid = int(app.stdout.readline())
    app.send_signal(signal.SIGKILL)
    app.wait(10)
    # The sidecar sees its standard input close and shuts down by itself.
    for _ in range(300):
        try:
            os.kill(sidecar_pid, 0)
        except ProcessLookupError:
            break
        if _zombie(sidecar_pid):
            break
        time.sleep(0.05)
    else:
        os.kill(sidecar_pid, signal.SIGKILL)
        raise AssertionError("the orphaned sidecar kept running")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return False
