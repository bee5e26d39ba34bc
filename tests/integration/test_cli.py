"""The perdured command as an operator meets it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg


def perdured(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perdured", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_migrate__applies_the_schema_and_exits(empty_database_url) -> None:
    done = perdured("migrate", "--database-url", empty_database_url)
    assert done.returncode == 0, done.stderr
    assert "migration.applied" in done.stderr
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM perdure.schema_migrations").fetchone()[0] >= 1
    again = perdured("migrate", "--database-url", empty_database_url)
    assert again.returncode == 0 and "migration.applied" not in again.stderr


def test_newer_schema__is_refused_with_a_clear_message(database_url) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO perdure.schema_migrations (version, name, checksum) VALUES (999, 'future', '')")
    for command in (["migrate"], []):
        done = perdured(*command, "--database-url", database_url, "--listen", "127.0.0.1:0")
        assert done.returncode != 0
        assert "schema is at version 999" in done.stderr and "upgrade perdured" in done.stderr
        assert "Traceback" not in done.stderr


def test_no_database_url__starts_the_embedded_postgres_and_logs_its_url() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="perdure-cli-"))
    try:
        done = perdured("migrate", "--data-dir", str(data_dir), "--log-format", "json")
        assert done.returncode == 0, done.stderr
        embedded = [line for line in done.stderr.splitlines() if '"database.embedded"' in line]
        assert embedded and '"url": "postgresql://' in embedded[0]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_bad_settings__exit_with_a_one_line_message() -> None:
    done = perdured("--log-format", "xml")
    assert done.returncode != 0 and "--log-format must be json or console" in done.stderr
    done = perdured("--lease", "-3")
    assert done.returncode != 0 and "--lease" in done.stderr


async def test_health__exits_0_for_a_serving_sidecar_and_1_for_none(sidecar) -> None:
    import asyncio

    serving = await asyncio.to_thread(perdured, "health", "--listen", sidecar.address)
    assert serving.returncode == 0, serving.stderr
    assert "SERVING" in serving.stdout
    with socket_closed() as address:
        missing = await asyncio.to_thread(perdured, "health", "--listen", address)
    assert missing.returncode == 1
    assert "is not answering" in missing.stderr and "Traceback" not in missing.stderr


class socket_closed:
    """An address where nothing listens."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return f"127.0.0.1:{probe.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None: ...
