"""The examples in sdk_examples/python run, and do what they say."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from wsgiref.simple_server import make_server

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


async def test_email_send__retries_until_the_mail_server_accepts(sidecar, monkeypatch) -> None:
    monkeypatch.setenv("PERDURE_ADDRESS", sidecar.address)
    example = load("email_send")
    outcome = await example.main()
    assert outcome["outcomes"] == ["failed", "failed", "succeeded"]
    assert outcome["result"]["attempt"] == 3 and example.sent == [("user@example.com", "Welcome!")]


async def test_payment__charged_once_for_two_requests(sidecar, monkeypatch) -> None:
    monkeypatch.setenv("PERDURE_ADDRESS", sidecar.address)
    example = load("payment_idempotency")
    outcome = await example.main()
    assert outcome["first"] == outcome["again"] and outcome["deduplicated"]
    assert outcome["result"] == {"invoice": "inv-7", "charged": 4200} and len(example.provider_charges) == 1


async def test_cron__runs_on_its_schedule_and_is_deleted_afterwards(sidecar, monkeypatch) -> None:
    monkeypatch.setenv("PERDURE_ADDRESS", sidecar.address)
    example = load("cron_cleanup")
    outcome = await example.main()
    assert outcome["runs"] >= 2 and outcome["jobs"] >= 2
    async with Perdure(address=sidecar.address) as client:
        assert await client.schedules.list() == []


async def test_approval__waits_suspended_for_the_event_then_pays(sidecar, monkeypatch) -> None:
    monkeypatch.setenv("PERDURE_ADDRESS", sidecar.address)
    example = load("approval")
    assert await example.main() == {"report": "exp-12", "status": "paid", "by": "dana"}


def test_sync_worker__web_app_jobs_run_in_a_worker_process_or_in_a_thread_of_the_app(threaded_sidecar,
                                                                                      monkeypatch) -> None:
    monkeypatch.setenv("PERDURE_ADDRESS", threaded_sidecar.address)
    example = load("sync_worker")
    server = make_server("127.0.0.1", 0, example.app, server_class=example.ThreadingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    worker = subprocess.Popen([sys.executable, str(EXAMPLES / "sync_worker.py"), "worker"])
    try:
        # The web app only enqueues: the worker process runs the job.
        first = request(f"{base}/signups?email=ada@example.com", method="POST")
        again = request(f"{base}/signups?email=ada@example.com", method="POST")
        assert again == {"job": first["job"], "deduplicated": True}
        assert example.perdure.handle(first["job"]).result(timeout=30)["email"] == "ada@example.com"
        assert request(f"{base}/jobs/{first['job']}")["status"] == "success"
        assert not example.outbox  # sent from the other process
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        # The same app, serving in a thread of its own process.
        example.perdure.start()
        second = request(f"{base}/signups?email=grace@example.com", method="POST")
        assert example.perdure.handle(second["job"]).result(timeout=30) == {"email": "grace@example.com",
                                                                            "message_id": "msg-1"}
        assert [m["body"] for m in example.outbox.values()] == ["Welcome aboard, grace!"]
        assert request(f"{base}/jobs/00000000-0000-0000-0000-000000000000", expect=404)["error"]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
        server.shutdown()
        server.server_close()
        example.perdure.close()


def request(url: str, method: str = "GET", expect: int = 200) -> dict:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    assert status == (202 if method == "POST" else expect), body
    return json.loads(body)
