"""A perdured process started and owned by this Python process (the one-command default)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from perdure._errors import SidecarUnavailableError

START_TIMEOUT = 120.0  # the first start of the embedded database runs initdb


class LocalSidecar:
    """`perdured` on a free loopback port, against `storage` or the embedded PostgreSQL in
    `data_dir`. It stops when we stop it, and by itself if this process dies (it watches
    its standard input, which is a pipe from us)."""

    def __init__(self, *, storage: str | None, data_dir: str | Path | None, extra_args: tuple[str, ...] = ()) -> None:
        self.storage = storage
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.address = ""
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> str:
        read_end, write_end = os.pipe()
        command = [sys.executable, "-m", "perdured", "--listen", "127.0.0.1:0",
                   "--ready-fd", str(write_end), "--exit-with-stdin", *self.extra_args]
        if self.storage:
            command += ["--database-url", self.storage]
        if self.data_dir is not None:
            command += ["--data-dir", str(self.data_dir)]
        environment = dict(os.environ)
        environment.setdefault("PERDURE_LOG_LEVEL", "warning")
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, pass_fds=(write_end,), env=environment)
        finally:
            os.close(write_end)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(_read_line, read_end), START_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise SidecarUnavailableError(f"perdured did not start within {START_TIMEOUT:g} s") from None
        finally:
            os.close(read_end)
        if not line:
            code = await self._process.wait()
            raise SidecarUnavailableError(f"perdured exited with status {code} before serving; see its log above")
        self.address = line
        return line

    async def stop(self, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()
