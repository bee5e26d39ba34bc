"""The Python SDK's conformance driver: serves the conformance functions, or runs a scenario's
client side, speaking the protocol in conformance/README.md.

    python conformance/drivers/python_driver.py serve --address HOST:PORT --namespace NS
    python conformance/drivers/python_driver.py run --address HOST:PORT --namespace NS < scenario.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from perdure import (
    DurableFunction,
    JobCancelledError,
    JobDeadError,
    JobOptions,
    NonRetryableError,
    Perdure,
    context,
)


class ConformanceError(Exception):
    """What the conformance functions raise."""


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def define(perdure: Perdure) -> None:
    def traced(name: str):
        """Register `fn` under `name`, reporting every start (and every stop it is told to make)."""
        def register(fn):
            async def handler(*args: Any, **kwargs: Any) -> Any:
                ctx = context()
                emit("started", job_id=ctx.job_id, function=name, attempt=ctx.attempt)
                try:
                    return await fn(*args, **kwargs)
                except asyncio.CancelledError:
                    emit("stopped", job_id=ctx.job_id, function=name, attempt=ctx.attempt)
                    raise
            perdure.durable(name)(handler)
            return fn
        return register

    @traced("conformance:echo")
    async def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    @traced("conformance:flaky")
    async def flaky(failures: int) -> dict[str, int]:
        attempt = context().attempt
        if attempt <= failures:
            raise ConformanceError(f"attempt {attempt} fails")
        return {"attempt": attempt}

    @traced("conformance:fail")
    async def fail(message: str) -> None:
        raise ConformanceError(message)

    @traced("conformance:reject")
    async def reject(message: str) -> None:
        raise NonRetryableError(message)

    @traced("conformance:wait_for_cancel")
    async def wait_for_cancel() -> str:
        context().progress(0, 1, "started")
        await asyncio.sleep(60)
        return "not stopped"

    @traced("conformance:sleep")
    async def sleep(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "slept"


async def serve(address: str, namespace: str) -> None:
    perdure = Perdure(address=address, namespace=namespace, worker_concurrency=4, shutdown_grace=2.0)
    define(perdure)
    async with perdure:
        await perdure.wait_until_serving()
        emit("serving")
        await asyncio.to_thread(sys.stdin.buffer.read)  # until the harness closes our input


async def run(address: str, namespace: str, scenario: dict[str, Any]) -> dict[str, Any]:
    call = scenario["call"]
    async with Perdure(address=address, namespace=namespace) as perdure:
        # A handle to enqueue through, without serving the function here.
        remote = DurableFunction(perdure, call["function"], lambda *a, **k: None, JobOptions())
        enqueue = remote.options(**call.get("options", {}))
        handle = await enqueue(*call.get("args", []), **call.get("kwargs", {}))
        report: dict[str, Any] = {"job_id": handle.id, "deduplicated": [handle.deduplicated]}
        if scenario["action"] == "enqueue_twice":
            again = await enqueue(*call.get("args", []), **call.get("kwargs", {}))
            report["deduplicated"].append(again.deduplicated)
            report["same_job"] = again.id == handle.id
        elif scenario["action"] == "cancel_when_started":
            for _ in range(1500):  # the handler reports progress once it runs
                if (await handle.details()).progress is not None:
                    break
                await asyncio.sleep(0.02)
            await handle.cancel()
        try:
            report.update(status="success", result=await handle.result(timeout=60))
        except (JobDeadError, JobCancelledError) as exc:
            report.update(status="dead" if isinstance(exc, JobDeadError) else "cancelled",
                          error={"type": exc.error_type, "message": exc.error_message})
        details = await handle.details()
        report["attempts"] = [a.outcome for a in details.attempts]
        report["attempt_errors"] = [{"type": a.error.type, "message": a.error.message} if a.error else None
                                    for a in details.attempts]
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["serve", "run"])
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", required=True)
    args = parser.parse_args()
    if args.mode == "serve":
        asyncio.run(serve(args.address, args.namespace))
    else:
        scenario = json.load(sys.stdin)
        print(json.dumps(asyncio.run(run(args.address, args.namespace, scenario))), flush=True)


if __name__ == "__main__":
    main()
