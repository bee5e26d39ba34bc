"""Jobs that cross languages: enqueued by Node.js and run by a Python worker, enqueued by Python
and run by a Node.js worker, with their results, errors, retries and dead ends intact."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from perdure import JobDeadError
from tests.polyglot.conftest import DRIVERS, NODE_SDK, SCENARIOS, run_client, serving

BY_NAME = {s["name"]: s for s in SCENARIOS}


def scenario(function: str, *args: object, kwargs: dict | None = None, options: dict | None = None,
             action: str = "result") -> dict:
    return {"call": {"function": function, "args": list(args), "kwargs": kwargs or {}, "options": options or {}},
            "action": action}


async def test_node_enqueues__a_python_worker_runs_it__result_and_error_intact(sidecar, node_sdk, make_client) -> None:
    namespace = f"cross-{uuid.uuid4().hex[:8]}"
    python = make_client(namespace=namespace)

    @python.durable("orders:quote")
    async def quote(items: list[dict], *, currency: str = "EUR", discount: float = 0.0) -> dict:
        total = sum(item["price"] * item["qty"] for item in items) * (1 - discount)
        return {"total": round(total, 2), "currency": currency, "items": len(items)}

    @python.durable("orders:validate")
    async def validate(order_id: str) -> None:
        raise ValueError(f"order {order_id} has no lines")

    async with python:
        await python.wait_until_serving()
        items = [{"sku": "a", "price": 2.5, "qty": 2}, {"sku": "b", "price": 10, "qty": 1}]
        ok = await run_client(DRIVERS["node"], sidecar.address, namespace,
                              scenario("orders:quote", items, kwargs={"currency": "USD", "discount": 0.1}))
        failed = await run_client(DRIVERS["node"], sidecar.address, namespace,
                                  scenario("orders:validate", "o-9", options={"max_attempts": 1}))
    assert ok["status"] == "success" and ok["result"] == {"total": 13.5, "currency": "USD", "items": 2}
    assert failed["status"] == "dead" and failed["attempts"] == ["failed"]
    assert failed["error"] == {"type": "ValueError", "message": "order o-9 has no lines"}


async def test_python_enqueues__a_node_worker_runs_it__result_and_error_intact(sidecar, node_sdk, make_client) -> None:
    namespace = f"cross-{uuid.uuid4().hex[:8]}"
    async with serving(DRIVERS["node"], sidecar.address, namespace), make_client(namespace=namespace) as python:
        echoed = await python.enqueue("conformance:echo", "é", 2**53 - 1, [1.5, None], {"nested": {"k": True}})
        assert await echoed.result(timeout=30) == {
            "args": ["é", 2**53 - 1, [1.5, None], {"nested": {"k": True}}], "kwargs": {}}
        failing = await python.enqueue("conformance:fail", "the card was declined", max_attempts=2, initial_delay=0.05)
        with pytest.raises(JobDeadError) as caught:
            await failing.result(timeout=30)
        details = await failing.details()
    assert (caught.value.error_type, caught.value.error_message) == ("ConformanceError", "the card was declined")
    assert caught.value.attempts == 2 and "ConformanceError: the card was declined" in caught.value.traceback
    assert caught.value.traceback.splitlines()[1].lstrip().startswith("at ")  # a JavaScript stack, kept as is
    assert [a.outcome for a in details.attempts] == ["failed", "failed"]
    assert all(a.error and a.error.type == "ConformanceError" for a in details.attempts)


@pytest.mark.parametrize("name", ["retry_then_succeed", "dead_after_max_attempts", "non_retryable_error",
                                  "attempt_timeout"])
async def test_retries_and_dead_jobs__behave_the_same_whichever_language_serves(sidecar, node_sdk, name) -> None:
    reports = {}
    for server in ("python", "node"):
        namespace = f"same-{server}-{uuid.uuid4().hex[:8]}"
        async with serving(DRIVERS[server], sidecar.address, namespace):
            reports[server] = await run_client(DRIVERS["python"], sidecar.address, namespace, BY_NAME[name])

    def comparable(report: dict) -> dict:
        # Python qualifies the types of its own exceptions by module: compare the names.
        errors = [None if e is None else {**e, "type": e["type"].rsplit(".", 1)[-1] if e["type"] != "perdure.Timeout"
                                          else e["type"]} for e in report["attempt_errors"]]
        return {"status": report["status"], "result": report.get("result"), "attempts": report["attempts"],
                "attempt_errors": errors}

    assert comparable(reports["node"]) == comparable(reports["python"])


async def test_node_worker_heartbeats__extend_the_lease_at_once(sidecar, node_sdk, make_client, db) -> None:
    namespace = f"beat-{uuid.uuid4().hex[:8]}"
    script = """
        const { Perdure } = require('./src');
        const [address, namespace] = process.argv.slice(1);
        const perdure = new Perdure({ address, namespace, heartbeatInterval: 0.1 });
        perdure.durable('beat:wait', (ctx) => new Promise((resolve) => ctx.signal.addEventListener('abort', resolve)));
        perdure.start().then(() => perdure.waitUntilServing()).then(() => console.log('serving'));
        process.stdin.on('end', () => perdure.stop()).resume();
    """
    process = await asyncio.create_subprocess_exec(
        "node", "-e", script, sidecar.address, namespace, cwd=NODE_SDK,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert (await asyncio.wait_for(process.stdout.readline(), 60)).strip() == b"serving"
        async with make_client(namespace=namespace) as python:
            handle = await python.enqueue("beat:wait")

            def lease() -> object:
                return db.execute("SELECT lease_expires_at FROM perdure.jobs WHERE id = %s AND state = 'running'",
                                  (handle.id,)).fetchone()

            for _ in range(500):
                if (first := lease()) is not None:
                    break
                await asyncio.sleep(0.01)
            # The sidecar renews leases every third of a lease (10 s here): only heartbeats move it sooner.
            for _ in range(500):
                if (later := lease()) is not None and later[0] > first[0]:
                    break
                await asyncio.sleep(0.01)
            assert later is not None and later[0] > first[0], "no heartbeat extended the lease"
            await handle.cancel()
    finally:
        assert process.stdin is not None
        process.stdin.close()
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0


def test_scenario_file__names_only_known_functions_and_actions() -> None:
    functions = json.loads((NODE_SDK.parents[1] / "conformance" / "scenarios.json").read_text())["functions"]
    for item in SCENARIOS:
        assert item["call"]["function"] in functions, item["name"]
        assert item["action"] in ("result", "enqueue_twice", "cancel_when_started"), item["name"]
