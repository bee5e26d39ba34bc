"""A perdured process started and owned by this Python process (the one-command default)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from perdure._errors import SidecarUnavailableError

START_TIMEOUT = 120.0  # the first start of the embedded database runs initdb
# Settings of a shared sidecar that the spawned one must not take from the environment.
PRIVATE_SIDECAR_DROPS = frozenset({
    "PERDURE_TLS_CERT", "PERDURE_TLS_KEY", "PERDURE_TLS_CLIENT_CA", "PERDURE_TOKEN", "PERDURE_TOKENS_FILE",
    "PERDURE_INSECURE",
})


class LocalSidecar:
    """`perdured` on a free loopback port, against `storage` or the embedded PostgreSQL in
    `data_dir`. It stops when we stop it, and by itself if this process dies (it watches
    its standard input, which is a pipe from us)."""

    def __init__(self, *, storage: str | None, data_dir: str | Path | None, extra_args: tuple[str, ...] = ()) -> None:
        self.storage = storage
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.address = ""
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> str:
        from perdured.launch import LaunchError, spawn  # the sidecar ships in this distribution

        args = [*self.extra_args, "--exit-with-stdin"]
        if self.storage:
            args += ["--database-url", self.storage]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        # It serves this process alone, on loopback, which connects to it without TLS or a token,
        # whatever the environment says to a shared sidecar.
        environment = {key: value for key, value in os.environ.items() if key not in PRIVATE_SIDECAR_DROPS}
        environment.setdefault("PERDURE_LOG_LEVEL", "warning")
        try:
            # Our end of its standard input closes when we die, and it then stops by itself.
            self._process, self.address = await asyncio.to_thread(
                spawn, *args, stdin=subprocess.PIPE, env=environment, timeout=START_TIMEOUT)
        except LaunchError as exc:
            raise SidecarUnavailableError(str(exc)) from None
        return self.address

    async def stop(self, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
