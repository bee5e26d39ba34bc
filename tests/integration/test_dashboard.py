"""The dashboard's HTTP side, against a real sidecar: the page and its assets, the JSON API,
the server-sent events, and the guards around actions. (tests/e2e/test_dashboard.py drives
the page itself in a browser.)"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import perdure
from perdured.dashboard.app import ACTION_HEADER
from perdured.dashboard.app import static_files as dashboard_static_files
from perdured.server import Sidecar

from ..conftest import start_sidecar

ACT = {ACTION_HEADER: "1"}


@pytest.fixture
async def sidecar(database_url: str) -> AsyncIterator[Sidecar]:
    """The test sidecar, serving its dashboard on a free loopback port."""
    sidecar = await start_sidecar(database_url, dashboard_listen="127.0.0.1:0")
    yield sidecar
    await sidecar.stop()


@pytest.fixture
async def http(sidecar) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=dashboard_url(sidecar)) as session:
        yield session


def dashboard_url(sidecar: Sidecar) -> str:
    assert sidecar.dashboard is not None, "started without dashboard_listen"
    return sidecar.dashboard.url


async def read(response: aiohttp.ClientResponse, status: int = 200) -> Any:
    body = await response.json(content_type=None)
    assert response.status == status, body
    return body


class Events:
    """A reader of one server-sent event stream."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 30.0) -> tuple[str, Any]:
        name, data = "message", list[str]()
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.response.content.readline()).decode()
                assert line, "the event stream ended"
                line = line.rstrip("\n")
                if not line:
                    if data:
                        return name, json.loads("\n".join(data))
                    name = "message"
                elif line.startswith("event: "):
                    name = line[len("event: "):]
                elif line.startswith("data: "):
                    data.append(line[len("data: "):])

    async def until(self, check, what: str, timeout: float = 30.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            name, data = await self.next(max(deadline - loop.time(), 0.01))
            if (found := check(name, data)) is not None and found is not False:
                return found
            if loop.time() > deadline:
                raise AssertionError(f"no event showed {what}")


async def test_dashboard__is_off_unless_asked(database_url) -> None:
    plain = await start_sidecar(database_url)
    try:
        assert plain.dashboard is None
    finally:
        await plain.stop()


async def test_page__every_view_is_the_page_with_a_strict_content_security_policy(http) -> None:
    for path in ("/", "/jobs", f"/jobs/{uuid.uuid4()}", "/dead", "/schedules", "/workers"):
        async with http.get(path) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            page = await response.text()
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert "frame-ancestors 'none'" in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
        async with http.get(asset) as response:
            assert response.status == 200, asset
    async with http.get("/static/app.js") as response:
        assert response.content_type in ("text/javascript", "application/javascript")
    async with http.get("/static/") as listing, http.get("/static/../app.py") as outside:
        assert listing.status in (403, 404) and outside.status in (403, 404)
    async with http.get("/nowhere") as response:
        assert response.status == 404


def test_static_files__fetch_nothing_from_elsewhere_and_never_parse_html() -> None:
    """Everything the page needs ships in the package, and it builds its DOM from text nodes."""
    files = [f for f in dashboard_static_files().iterdir() if f.is_file()]
    files += [f for f in (dashboard_static_files() / "views").iterdir()]
    assert {f.name for f in files} >= {"index.html", "app.js", "app.css", "job.js", "jobs.js", "dead.js"}
    for file in files:
        text = file.read_text()
        for url in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text):
            assert url == "http://www.w3.org/2000/svg", f"{file.name} refers to {url}"
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{file.name} uses {sink}"


async def test_jobs__listed_filtered_paged_and_read(http, make_client) -> None:
    client = make_client()
    async with client:
        first = await client.enqueue("dash:report", {"month": "<b>may</b>"}, labels={"team": "a"})
        second = await client.enqueue("dash:report", 2, labels={"team": "b"})
        other = await client.enqueue("dash:other")
        await other.cancel()

    listed = await read(await http.get("/api/jobs"))
    assert [j["id"] for j in listed["jobs"]] == [other.id, second.id, first.id]  # newest first
    assert listed["jobs"][0]["state"] == "cancelled"
    assert listed["jobs"][2]["payload"] == {"encoding": "json", "size": 33}  # lists carry no payloads
    by_name = await read(await http.get("/api/jobs", params={"name": "dash:report"}))
    assert [j["id"] for j in by_name["jobs"]] == [second.id, first.id]
    by_state = await read(await http.get("/api/jobs", params=[("state", "pending"), ("state", "cancelled")]))
    assert len(by_state["jobs"]) == 3
    assert [j["id"] for j in (await read(await http.get("/api/jobs?state=cancelled")))["jobs"]] == [other.id]
    by_label = await read(await http.get("/api/jobs", params={"label": "team=a"}))
    assert [j["id"] for j in by_label["jobs"]] == [first.id]
    page = await read(await http.get("/api/jobs", params={"page_size": "2"}))
    rest = await read(await http.get("/api/jobs", params={"page_size": "2", "page_token": page["next_page_token"]}))
    assert [j["id"] for j in page["jobs"] + rest["jobs"]] == [other.id, second.id, first.id]
    assert "next_page_token" not in rest or not rest["next_page_token"]

    job = (await read(await http.get(f"/api/jobs/{first.id}")))["job"]
    assert (job["name"], job["state"], job["labels"], job["attempts"]) == ("dash:report", "pending", {"team": "a"}, [])
    assert json.loads(job["payload"]["text"]) == {"args": [{"month": "<b>may</b>"}]}
    async with http.get(f"/api/jobs/{first.id}/payload") as download:
        assert download.status == 200 and download.content_type == "application/octet-stream"
        assert "attachment" in download.headers["Content-Disposition"]
        assert json.loads(await download.read())["args"] == [{"month": "<b>may</b>"}]
    assert (await read(await http.get(f"/api/jobs/{first.id}/result"), 404))["error"].endswith("has no result")


async def test_jobs__bad_requests_say_what_is_wrong(http) -> None:
    missing = uuid.uuid4()
    assert str(missing) in (await read(await http.get(f"/api/jobs/{missing}"), 404))["error"]
    assert "id" in (await read(await http.get("/api/jobs/not-a-uuid"), 400))["error"]
    assert "unknown state 'sleeping'" in (await read(await http.get("/api/jobs?state=sleeping"), 400))["error"]
    assert "KEY=VALUE" in (await read(await http.get("/api/jobs?label=team"), 400))["error"]
    assert "page_size" in (await read(await http.get("/api/jobs?page_size=lots"), 400))["error"]
    assert "namespace" in (await read(await http.get("/api/events?namespace=no%20spaces"), 400))["error"]


async def test_actions__need_the_dashboard_header_and_this_origin(http, sidecar, make_client) -> None:
    client = make_client()
    await client.start()
    handle = await client.enqueue("dash:nobody")
    cancel = f"/api/jobs/{handle.id}/cancel"
    refused = await read(await http.post(cancel), 403)
    assert ACTION_HEADER in refused["error"]
    elsewhere = {**ACT, "Origin": "https://evil.example"}
    assert "another origin" in (await read(await http.post(cancel, headers=elsewhere), 403))["error"]
    assert await handle.status() == "pending"

    here = {**ACT, "Origin": dashboard_url(sidecar).rstrip("/")}
    answer = await read(await http.post(cancel, headers=here))
    assert (answer["cancelled"], answer["job"]["state"]) == (True, "cancelled")
    again = await read(await http.post(cancel, headers=ACT))
    assert again["cancelled"] is False


async def test_requests__naming_another_host_are_refused(http) -> None:
    """A page that rebinds its own name to 127.0.0.1 reaches the port, but not the dashboard."""
    refused = await read(await http.get("/api/info", headers={"Host": "attacker.example:80"}), 403)
    assert "loopback" in refused["error"]
    async with http.get("/", headers={"Host": "attacker.example"}) as response:
        assert response.status == 403
    assert (await read(await http.get("/api/info", headers={"Host": "localhost"})))["version"] == perdure.__version__


async def test_remote_dashboard__when_allowed_answers_any_host_name(database_url) -> None:
    """Behind a proxy that authenticates, requests name the proxy's host: they are served."""
    sidecar = await start_sidecar(database_url, dashboard_listen="0.0.0.0:0", dashboard_allow_remote=True)
    try:
        port = dashboard_url(sidecar).rsplit(":", 1)[1].strip("/")
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            info = await read(await http.get("/api/info", headers={"Host": "perdure.internal.example"}))
            assert info["sidecar_id"] == sidecar.id
    finally:
        await sidecar.stop()


async def test_retry__one_job_and_every_match(http, make_client) -> None:
    client = make_client()
    fail = {"now": True}

    @client.durable("dash:flaky", max_attempts=1)
    async def flaky(n: int) -> int:
        if fail["now"]:
            raise ValueError(f"bad row {n}")
        return n

    async with client:
        await client.wait_until_serving()
        handles = [await flaky(n) for n in range(3)]
        for handle in handles:
            with pytest.raises(perdure.JobDeadError):
                await handle.result(timeout=30)
        dead = await read(await http.get("/api/jobs", params={"state": "dead"}))
        assert {j["error"]["type"] for j in dead["jobs"]} == {"ValueError"}

        fail["now"] = False
        retried = await read(await http.post(f"/api/jobs/{handles[0].id}/retry", headers=ACT))
        assert retried["job"]["state"] in ("pending", "running", "success")
        assert await handles[0].result(timeout=30) == 0
        conflict = await read(await http.post(f"/api/jobs/{handles[0].id}/retry", headers=ACT), 409)
        assert "only dead or cancelled jobs can be retried" in conflict["error"]

        nothing = await read(await http.post("/api/jobs/retry", headers=ACT, json={
            "name": "dash:flaky", "states": ["dead"], "error_type": "KeyError"}))
        assert nothing == {"retried": 0}
        every = await read(await http.post("/api/jobs/retry", headers=ACT, json={
            "name": "dash:flaky", "states": ["dead"], "error_type": "ValueError", "error_contains": "BAD ROW"}))
        assert every == {"retried": 2}
        assert [await h.result(timeout=30) for h in handles[1:]] == [1, 2]
    assert "JSON object" in (await read(await http.post("/api/jobs/retry", headers=ACT, data=b"[1]"), 400))["error"]
    refused = await read(await http.post("/api/jobs/retry", headers=ACT, json={"states": ["success"]}), 400)
    assert refused["error"].startswith("states: success not allowed here")  # the body's own field name


async def test_events__a_job_from_enqueue_to_success_and_the_statistics(http, make_client) -> None:
    client = make_client()
    release = asyncio.Event()

    @client.durable("dash:live")
    async def live() -> str:
        await release.wait()
        return "done"

    async with client, http.get("/api/events", timeout=aiohttp.ClientTimeout(total=None)) as response:
        assert response.content_type == "text/event-stream"
        events = Events(response)
        await events.until(lambda name, _: name == "ready", "that the watch is live")
        await client.wait_until_serving()
        handle = await live()

        def state_of(name: str, data: Any) -> Any:
            return name == "jobs" and next((e["state"] for e in data if e["job_id"] == handle.id), None)

        assert await events.until(state_of, "the job running") == "running"

        def running(name: str, data: Any) -> Any:
            return name == "stats" and any(f["name"] == "dash:live" and f["running"] == 1 for f in data["functions"])

        await events.until(running, "statistics with the job running")
        release.set()
        assert await events.until(lambda n, d: state_of(n, d) == "success", "the job succeeding")


async def test_sidecar_stop__ends_open_event_streams(database_url) -> None:
    sidecar = await start_sidecar(database_url, dashboard_listen="127.0.0.1:0")
    async with aiohttp.ClientSession(base_url=dashboard_url(sidecar)) as http, \
            http.get("/api/events", timeout=aiohttp.ClientTimeout(total=None)) as response:
        events = Events(response)
        await events.until(lambda name, _: name == "ready", "that the watch is live")
        await asyncio.wait_for(sidecar.stop(), 10)
        # The stream ends (the page's EventSource then reconnects, to this sidecar once it is back).
        await asyncio.wait_for(response.content.read(), 5)
        assert response.content.at_eof()


async def test_reads__statistics_activity_workers_schedules_and_info(http, make_client) -> None:
    client = make_client(worker_concurrency=4)

    @client.durable("dash:ticker", schedule="0 3 * * *", timezone="Europe/Paris")
    async def ticker() -> None: ...

    async with client:
        await client.wait_until_serving()
        await client.enqueue("dash:waiting")  # no worker serves it: pending

        info = await read(await http.get("/api/info"))
        assert info["embedded_database"] is False and info["dashboard_version"] == perdure.__version__
        assert (await read(await http.get("/api/namespaces"))) == {"namespaces": ["default"]}
        async with make_client(namespace="billing") as billing:
            elsewhere = await billing.enqueue("dash:elsewhere")
        assert (await read(await http.get("/api/namespaces"))) == {"namespaces": ["billing", "default"]}
        listed = await read(await http.get("/api/jobs", params={"namespace": "billing"}))
        assert [j["id"] for j in listed["jobs"]] == [elsewhere.id]
        assert (await read(await http.get(f"/api/jobs/{elsewhere.id}", params={"namespace": "billing"})))["job"]
        await read(await http.get(f"/api/jobs/{elsewhere.id}"), 404)  # not in the default namespace
        assert info["schema_version"] == info["latest_schema_version"]
        workers = (await read(await http.get("/api/workers")))["workers"]
        assert [(w["names"], w["concurrency"]) for w in workers] == [(["dash:ticker"], 4)]
        stats = await read(await http.get("/api/stats", params={"window": "60", "namespace": "default"}))
        assert stats["window"] == 60.0
        assert [(f["name"], f["pending"]) for f in stats["functions"]] == [("dash:waiting", 1)]
        activity = await read(await http.get("/api/activity", params={"window": "600"}))
        assert {"functions", "start", "at"} <= set(activity)
        assert "window" in (await read(await http.get("/api/stats?window=soon"), 400))["error"]

        (schedule,) = (await read(await http.get("/api/schedules")))["schedules"]
        assert (schedule["name"], schedule["cron"], schedule["timezone"], schedule["paused"]) == (
            "dash:ticker", "0 3 * * *", "Europe/Paris", False)
        assert schedule["job"]["name"] == "dash:ticker" and schedule["missed"] == "once"
        body = {"namespace": "default", "name": "dash:ticker"}
        paused = await read(await http.post("/api/schedules/pause", headers=ACT, json=body))
        assert paused["schedule"]["paused"] is True and "next_run_at" not in paused["schedule"]
        resumed = await read(await http.post("/api/schedules/resume", headers=ACT, json=body))
        assert resumed["schedule"]["paused"] is False and resumed["schedule"]["next_run_at"]
        missing = await read(await http.post("/api/schedules/pause", headers=ACT, json={"name": "nope"}), 404)
        assert "nope" in missing["error"]
