"""A worker process built on perdure.sync, for the tests of run_worker() and of the cleanup at
exit. It talks with the test through its standard input and output, a line at a time.

    python sync_app.py worker ADDRESS NAMESPACE GRACE   # run_worker() until SIGTERM or SIGINT
    python sync_app.py forget STORAGE NAMESPACE         # serve and run a job, then exit without close()

Lines written: "serving" once the worker stream is registered, "started <token>" when a hold
handler starts, the client's log lines (its "stopping" line on a signal), "stopped" when
run_worker() returns, "result <value>" in forget mode.
Lines read: "release <token>" lets sync:hold return.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from perdure.sync import Perdure


def say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    mode, target, namespace = sys.argv[1:4]
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    if mode == "worker":
        perdure = Perdure(address=target, namespace=namespace, shutdown_grace=float(sys.argv[4]))
    else:
        perdure = Perdure(storage=target, namespace=namespace, data_dir=None)

    @perdure.durable("sync:hold")
    def hold(token: str) -> dict[str, str]:
        """A plain handler that runs until the test releases it."""
        say(f"started {token}")
        for line in sys.stdin:
            if line.strip() == f"release {token}":
                return {"released": token}
        raise RuntimeError("standard input closed")

    @perdure.durable("sync:hold_async")
    async def hold_async(token: str) -> None:
        """An async handler that runs until it is cancelled."""
        say(f"started {token}")
        await asyncio.Event().wait()

    @perdure.durable("sync:double")
    def double(x: int) -> int:
        return 2 * x

    perdure.start()
    perdure.wait_until_serving(30)
    say("serving")
    if mode == "worker":
        perdure.run_worker()
        say("stopped")
    else:
        say(f"result {double(21).result(timeout=30)}")
        # No close(): the interpreter's exit has to do it.


if __name__ == "__main__":
    main()
