"""The examples in sdk_examples/python run, and do what they say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from perdure import Perdure
from perdure.v1 import jobs_pb2

EXAMPLES = Path(__file__).resolve().parents[2] / "sdk_examples" / "python"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_order_fulfilment__ships_what_is_in_stock_and_backorders_the_rest(sidecar, monkeypatch) -> None:
    monkeypatch.setenv("PERDURE_ADDRESS", sidecar.address)  # the test's sidecar, not a spawned one
    example = load("order_fulfilment")
    shipped, backordered = await example.main()
    assert shipped["status"] == "shipped" and shipped["shipment"]["tracking"] == "TRACK-O-1"
    assert shipped["payment"]["charged"] == 25 and shipped["reservation"] == {"order": "o-1", "reserved": "book"}
    assert backordered == {"order": "o-2", "status": "backordered", "payment": backordered["payment"]}
    assert len(example.charges) == 2 and example.stock == {"book": 2, "lamp": 0}
    async with Perdure(address=sidecar.address) as client:
        page = await client._call("ListJobs", jobs_pb2.ListJobsRequest(name="orders:fulfil"))
        details = [await client.handle(job.id).details() for job in page.jobs]
    for order in details:
        assert {child.name for child in order.children} >= {"payments:charge", "inventory:reserve"}
        assert order.progress is not None and order.logs[0].message.startswith("fulfilling")
