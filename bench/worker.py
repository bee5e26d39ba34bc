"""A worker process for the benchmarks: serves the no-op function `bench:noop`, `bench:stamp`
(which returns the wall clock at its start, time.time()), and `bench:hold` (which never
returns), through a sidecar. `python -m bench.worker --address A --namespace N --concurrency C` prints `ready`
once its stream is registered, then serves until its standard input closes."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from perdure import Perdure


async def serve(address: str, namespace: str, concurrency: int) -> None:
    perdure = Perdure(address=address, namespace=namespace, worker_concurrency=concurrency)

    @perdure.durable("bench:noop")
    async def noop(*args: object) -> None:
        return None

    @perdure.durable("bench:stamp")
    async def stamp(*args: object) -> float:
        return time.time()  # the caller's clock on the same machine: it reads its scheduling lag

    @perdure.durable("bench:hold", timeout=3600)
    async def hold(*args: object) -> None:
        await asyncio.Event().wait()  # in flight until the process ends

    async with perdure:
        await perdure.wait_until_serving()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.namespace, args.concurrency))


if __name__ == "__main__":
    main()
