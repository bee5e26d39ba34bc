"""Start perdured as a child process on a free loopback port, and learn its address once it
serves. Used by the SDK (its one-command default), the tests and the benchmarks."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any


class LaunchError(RuntimeError):
    """perdured did not come up."""


def spawn(*args: str, stdin: int | None = None, env: dict[str, str] | None = None,
          timeout: float = 120.0, stderr: Any = None, wrapper: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """Run `python -m perdured --listen 127.0.0.1:0 ARGS` and return it with the address it
    serves on, once it does (it writes that address to a pipe: --ready-fd). Its log goes to
    `stderr` (a file), or to ours. `wrapper`: a command that runs it (a profiler)."""
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "perdured", "--listen", "127.0.0.1:0", "--ready-fd", str(write_end), *args],
            pass_fds=(write_end,), stdin=stdin, env=env, stderr=stderr)
    finally:
        os.close(write_end)
    try:
        address = _read_line(read_end, timeout)
    except TimeoutError:
        process.kill()
        process.wait()
        raise LaunchError(f"perdured did not start within {timeout:g} s") from None
    finally:
        os.close(read_end)
    if not address:
        raise LaunchError(f"perdured exited with status {process.wait()} before serving; see its log")
    return process, address


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError
        chunk = os.read(fd, 256)
        if not chunk:  # it exited without a word
            break
        data += chunk
    return data.decode().strip()
