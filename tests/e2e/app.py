"""A small application for the end-to-end tests: it serves some durable functions through a
perdured sidecar and leaves files in a directory it shares with the test, so that the test
can follow what happens in this process and kill it at a known point.

    python app.py --address HOST:PORT --dir DIR --functions e2e:hold,e2e:echo [--concurrency N]

Files written in DIR (each appears whole: written aside, then renamed):
    ready-<pid>              the worker stream is registered, jobs can reach this process
    journal-<pid>            a line "<event> <name> <job id> <attempt>" for every job:start and
                             job:error here, so every job this process received is on record
    started-<token>-<pid>    a handler started for <token> in this process
    hung-<token>             e2e:hang_once has hung once for <token>
    cancelled-<token>        a line per hanging handler of <token> that was cancelled
Files read in DIR:
    release-<token>          e2e:hold returns once it exists
e2e:parent appends the id of each child it spawns to spawned-<token>.
Steps (e2e:three_steps, e2e:fifty_steps) append each side effect to effects-<token> and, on
their first run, write held-<token> after a checkpoint and wait there to be killed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perdure import JobEvent, Perdure, context

PID = os.getpid()
POLL = 0.02  # seconds between looks at a release file


class Files:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def mark(self, name: str, text: str = "") -> None:
        """Create `name` atomically, so that the test never reads it half written."""
        aside = self.directory / f".{name}.{PID}.tmp"
        aside.write_text(text)
        os.replace(aside, self.directory / name)

    def append(self, name: str, line: str) -> None:
        # One write of one short line in append mode: lines from several processes never mix,
        # and what is written survives a kill -9 a moment later.
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def exists(self, name: str) -> bool:
        return (self.directory / name).exists()


def handlers(files: Files, client: Perdure) -> dict[str, Callable[..., Any]]:
    async def hold(token: str) -> dict[str, Any]:
        """Runs until the test releases it: a job that is surely in flight when something is killed."""
        files.mark(f"started-{token}-{PID}")
        while not files.exists(f"release-{token}"):
            await asyncio.sleep(POLL)
        return {"token": token, "pid": PID}

    async def poison(token: str) -> None:
        """Takes its whole process down, every time."""
        files.mark(f"started-{token}-{PID}")
        os.kill(PID, signal.SIGKILL)

    async def hang(token: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            files.append(f"cancelled-{token}", str(PID))
            raise

    async def hang_once(token: str) -> dict[str, Any]:
        """Hangs the first time it runs for `token` (in any process), returns afterwards."""
        files.mark(f"started-{token}-{PID}")
        if not files.exists(f"hung-{token}"):
            files.mark(f"hung-{token}")
            await hang(token)
        return {"token": token, "pid": PID}

    async def hang_always(token: str) -> None:
        files.mark(f"started-{token}-{PID}")
        await hang(token)

    async def echo(value: Any) -> dict[str, Any]:
        return {"value": value, "pid": PID}

    def side_effect(token: str, step: str) -> str:
        files.append(f"effects-{token}", step)
        return f"{step} done"

    async def held_after(token: str, checkpoint: str) -> None:
        """Stop here on the first run for `token` (in any process) until the test kills us."""
        if not files.exists(f"held-{token}"):
            files.mark(f"held-{token}", checkpoint)
            while True:
                await asyncio.sleep(POLL)

    async def three_steps(token: str) -> list[str]:
        """Three checkpointed side effects; the first run stops right after step 2 is committed."""
        ctx = context()
        done = [await ctx.step("one", side_effect, token, "one"), await ctx.step("two", side_effect, token, "two")]
        await held_after(token, "two")
        done.append(await ctx.step("three", side_effect, token, "three"))
        return done

    async def fifty_steps(token: str) -> int:
        """A loop of 50 checkpointed iterations; the first run stops after iteration 25."""
        ctx = context()
        for i in range(50):
            await ctx.step("iteration", side_effect, token, str(i))
            if i == 24:
                await held_after(token, str(i))
        return 50

    async def nap(token: str, seconds: float) -> dict[str, Any]:
        """A side effect, a durable sleep, another side effect; says which process finished it."""
        ctx = context()
        await ctx.step("before", side_effect, token, "before")
        await ctx.sleep(seconds)
        await ctx.step("after", side_effect, token, "after")
        return {"token": token, "pid": PID}

    async def parent(token: str) -> dict[str, Any]:
        """Spawns an e2e:hold child and awaits it (suspended meanwhile)."""
        child = await client.enqueue("e2e:hold", token)
        files.append(f"spawned-{token}", child.id)
        return {"child": child.id, "result": await child.result()}

    return {
        "e2e:hold": hold,
        "e2e:nap": nap,
        "e2e:parent": parent,
        "e2e:poison": poison,
        "e2e:hang_once": hang_once,
        "e2e:hang_always": hang_always,
        "e2e:echo": echo,
        "e2e:other": echo,
        "e2e:three_steps": three_steps,
        "e2e:fifty_steps": fifty_steps,
    }


async def serve(address: str, files: Files, functions: list[str], concurrency: int) -> None:
    perdure = Perdure(address=address, worker_concurrency=concurrency, shutdown_grace=1.0)
    available = handlers(files, perdure)
    for name in functions:
        perdure.durable(name)(available[name])

    def journal(kind: str) -> Callable[[JobEvent], None]:
        return lambda event: files.append(f"journal-{PID}", f"{kind} {event.name} {event.job_id} {event.attempt}")

    perdure.on("job:start", journal("start"))
    perdure.on("job:error", journal("error"))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with perdure:
        await perdure.wait_until_serving(timeout=30)
        files.mark(f"ready-{PID}")
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--functions", required=True, help="comma-separated names to serve")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(serve(args.address, Files(args.dir), args.functions.split(","), args.concurrency))


if __name__ == "__main__":
    main()
