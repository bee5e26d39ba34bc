"""The conformance scenarios (conformance/scenarios.json), run by every SDK's driver: each SDK
enqueuing for itself, and Node.js (and any SDK given in PERDURE_CONFORMANCE_DRIVER) both ways
with Python. A new SDK proves itself by passing them: see conformance/README.md."""

from __future__ import annotations

import uuid

import pytest

from tests.polyglot.conftest import DRIVERS, SCENARIOS, pairs, problems, run_client, serving


@pytest.mark.parametrize(("client", "server"), pairs(), ids=[f"{c}->{s}" for c, s in pairs()])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
async def test_scenario(sidecar, needs, scenario, client, server) -> None:
    needs(client, server)
    namespace = f"conformance-{uuid.uuid4().hex[:8]}"
    async with serving(DRIVERS[server], sidecar.address, namespace) as served:
        report = await run_client(DRIVERS[client], sidecar.address, namespace, scenario)
    found = problems(scenario["expect"], report, served)
    assert not found, (f"{scenario['name']} ({client} enqueues, {server} serves):\n  " + "\n  ".join(found)
                       + f"\nreport: {report}\nserver events: {served.events}")
