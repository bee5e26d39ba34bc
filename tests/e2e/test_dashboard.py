"""The dashboard in a real headless Chromium, served by a real perdured process, with jobs run
by an SDK worker in this process: it loads, follows jobs live without reloading, and its
buttons act. Screenshots go to test-artifacts/dashboard/ (one per test at its end, more at
the moments that matter)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import perdure
from perdure import Perdure, context

from .browser import artifacts_dir, flags, provision_chromium

playwright = pytest.importorskip("playwright.async_api", reason="the browser tests need playwright (the dev extra)")
expect = playwright.expect

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = artifacts_dir(ROOT)
# The first test may install Chromium (apt-get) during its setup.
pytestmark = pytest.mark.timeout(600)
expect.set_options(timeout=20_000)


@pytest.fixture(scope="session")
def chromium() -> str:
    path, reason = provision_chromium()  # once per session: a skip is remembered too
    if path is None:
        pytest.skip(f"no browser for the dashboard tests: {reason}")
    return path


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Any]:
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=chromium, args=flags())
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser, request) -> AsyncIterator[Any]:
    """A fresh page; after the test, a screenshot of it, and no script error may have happened."""
    session = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await session.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    async def accept(dialog: Any) -> None:  # "Cancel job …?", "Retry every dead job …?"
        await dialog.accept()

    page.on("dialog", accept)
    yield page
    await page.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    await session.close()
    assert not errors, f"errors in the page: {errors}"


async def screenshot(page: Any, name: str) -> None:
    await page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@dataclass
class Served:
    url: str  # the dashboard
    address: str  # the sidecar's gRPC


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(perdured) -> Served:
    port = _free_port()
    process = perdured("--dashboard-listen", f"127.0.0.1:{port}")
    return Served(f"http://127.0.0.1:{port}", process.address)


@pytest.fixture
async def client(served: Served) -> AsyncIterator[Callable[..., Perdure]]:
    """SDK clients of the served sidecar (workers for the functions they declare)."""
    clients: list[Perdure] = []

    def make(**options: Any) -> Perdure:
        made = Perdure(address=served.address, **options)
        clients.append(made)
        return made

    yield make
    for made in clients:
        await made.stop()


async def open_live(page: Any, url: str) -> None:
    """Open a view and wait until it follows changes (its event stream is subscribed)."""
    await page.goto(url)
    await expect(page.locator("html")).to_have_attribute("data-live", "true")


async def test_overview__a_function_appears_and_its_counts_move_live(page, served, client) -> None:
    worker = client()
    release = asyncio.Event()

    @worker.durable("e2e:count")
    async def count(n: int) -> int:
        await release.wait()
        return n

    async with worker:
        await worker.wait_until_serving()
        await open_live(page, served.url + "/")
        await expect(page.locator("h1")).to_have_text("Overview")
        row = page.locator('tr[data-function="e2e:count"]')
        await expect(row).to_have_count(0)
        handles = [await count(n) for n in range(2)]
        cells = row.locator("td")
        await expect(cells.nth(2)).to_have_text("2")  # running
        await expect(page.locator('[data-tile="running"] .tile-value')).to_have_text("2")
        release.set()
        assert [await h.result(timeout=30) for h in handles] == [0, 1]
        await expect(cells.nth(2)).to_have_text("0")
        await expect(cells.nth(6)).to_have_text("2")  # succeeded (the activity every sidecar adds)
        await expect(page.locator(".chart svg")).to_be_visible()
        await screenshot(page, "overview")


async def test_jobs__a_job_appears_and_completes_without_reload_then_its_page(page, served, client) -> None:
    worker = client()
    release = asyncio.Event()

    @worker.durable("e2e:greet")
    async def greet(name: str) -> dict[str, str]:
        await release.wait()
        return {"greeting": f"hello {name}"}

    async with worker:
        await worker.wait_until_serving()
        await open_live(page, served.url + "/jobs")
        await page.evaluate("window.sameDocument = true")  # gone if the page reloads
        hostile = '<img src=x onerror="window.injected = 1">'
        handle = await greet(hostile)
        state = page.locator(f'tr[data-job-id="{handle.id}"] [data-state]')
        await expect(state).to_have_text("running")
        release.set()
        await expect(state).to_have_text("success")
        assert await page.evaluate("window.sameDocument") is True
        await screenshot(page, "jobs-live")

        await page.locator(f'tr[data-job-id="{handle.id}"] a').first.click()
        await expect(page).to_have_url(re.compile(f"/jobs/{handle.id}$"))
        await expect(page.locator("h1 [data-state]")).to_have_text("success")
        attempts = page.locator("[data-section=timeline] .attempt")
        await expect(attempts).to_have_count(1)
        await expect(attempts.first).to_have_attribute("data-outcome", "succeeded")
        await expect(page.locator("[data-section=result] pre")).to_contain_text(f'"greeting": {json.dumps("hello " + hostile)}')
        await expect(page.locator("[data-section=payload] pre")).to_contain_text("onerror=")
        # Payloads are shown as text: nothing in them became markup.
        assert await page.locator("main img").count() == 0
        assert await page.evaluate("window.injected") is None
        await expect(page.locator('button[data-action="cancel"]')).to_be_disabled()
        await expect(page.locator('button[data-action="retry"]')).to_be_disabled()
        await screenshot(page, "job-page")


async def test_job_page__a_dead_job_retried_with_the_button_succeeds(page, served, client) -> None:
    worker = client()
    failing = {"now": True}

    @worker.durable("e2e:flaky", max_attempts=1)
    async def flaky() -> str:
        if failing["now"]:
            raise RuntimeError("the remote service said no")
        return "fine now"

    async with worker:
        await worker.wait_until_serving()
        handle = await flaky()
        with pytest.raises(perdure.JobDeadError):
            await handle.result(timeout=30)
        await open_live(page, f"{served.url}/jobs/{handle.id}")
        state = page.locator("h1 [data-state]")
        await expect(state).to_have_text("dead")
        error = page.locator("[data-section=error]")
        await expect(error).to_contain_text("RuntimeError")
        await expect(error).to_contain_text("the remote service said no")
        await expect(error.locator(".traceback")).to_contain_text("Traceback")
        await screenshot(page, "dead-job")

        failing["now"] = False
        await page.locator('button[data-action="retry"]').click()
        await expect(state).to_have_text("success")
        assert await handle.result(timeout=30) == "fine now"
        await expect(page.locator("[data-section=result] pre")).to_have_text('"fine now"')


async def test_dead_letters__retry_one_then_every_match(page, served, client) -> None:
    worker = client()
    failing = {"now": True}

    @worker.durable("e2e:import", max_attempts=1)
    async def load(row: int) -> int:
        if failing["now"]:
            raise (ValueError if row % 2 else KeyError)(f"row {row}")
        return row

    async with worker:
        await worker.wait_until_serving()
        handles = [await load(row) for row in range(3)]
        for handle in handles:
            with pytest.raises(perdure.JobDeadError):
                await handle.result(timeout=30)
        await open_live(page, served.url + "/dead")
        rows = page.locator("tbody tr[data-job-id]")
        await expect(rows).to_have_count(3)
        await expect(page.locator(".chips")).to_contain_text(["e2e:import: 3"])
        await screenshot(page, "dead-letters")

        failing["now"] = False
        await page.locator(f'tr[data-job-id="{handles[1].id}"] button[data-action="retry"]').click()
        await expect(rows).to_have_count(2)
        assert await handles[1].result(timeout=30) == 1
        await page.locator('button[data-action="retry-all"]').click()
        await expect(rows).to_have_count(0)
        await expect(page.locator("td.empty")).to_have_text("No dead jobs match.")
        assert [await h.result(timeout=30) for h in handles] == [0, 1, 2]


async def test_job_page__progress_and_logs_live_then_cancel_with_the_button(page, served, client) -> None:
    worker = client()
    reported = asyncio.Event()

    @worker.durable("e2e:long")
    async def long() -> None:
        ctx = context()
        ctx.progress(1, 4, "first quarter")
        ctx.log.warning("halfway <b>not bold</b>")
        reported.set()
        await asyncio.sleep(3600)

    async with worker:
        await worker.wait_until_serving()
        handle = await long()
        await open_live(page, f"{served.url}/jobs/{handle.id}")
        await asyncio.wait_for(reported.wait(), 30)
        await expect(page.locator("[data-section=progress]")).to_contain_text("1 of 4 (25 %) — first quarter")
        await expect(page.locator("[data-section=logs] .message")).to_have_text("halfway <b>not bold</b>")
        await expect(page.locator("h1 [data-state]")).to_have_text("running")
        await screenshot(page, "running-job")

        await page.locator('button[data-action="cancel"]').click()
        await expect(page.locator("h1 [data-state]")).to_have_text("cancelled")
        await expect(page.locator("[data-section=timeline] .attempt").first).to_have_attribute("data-outcome", "cancelled")
        with pytest.raises(perdure.JobCancelledError):
            await handle.result(timeout=30)


async def test_schedules_and_workers__listed_paused_and_resumed(page, served, client) -> None:
    worker = client(worker_concurrency=3)

    @worker.durable("e2e:nightly", schedule="0 3 * * *", timezone="Europe/Paris")
    async def nightly() -> None: ...

    async with worker:
        await worker.wait_until_serving()
        await open_live(page, served.url + "/workers")
        row = page.locator("tr[data-worker]")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text("e2e:nightly")
        await expect(row).to_contain_text("0 / 3")

        await page.locator("nav a", has_text="Schedules").click()
        schedule = page.locator('tr[data-schedule="e2e:nightly"]')
        await expect(schedule).to_contain_text("0 3 * * *")
        await expect(schedule).to_contain_text("Europe/Paris")
        await schedule.locator('button[data-action="pause"]').click()
        await expect(schedule.locator(".badge.paused")).to_be_visible()
        assert (await worker.schedules.get("e2e:nightly")).paused
        await schedule.locator('button[data-action="resume"]').click()
        await expect(schedule.locator("time")).to_have_count(1)  # the next run, again
        assert not (await worker.schedules.get("e2e:nightly")).paused


async def test_login__a_token_for_one_namespace_sees_it_live_then_logs_out(page, perdured, tmp_path) -> None:
    billing, admin = "billing-e2e-0123456789abcdef0123", "admin-e2e-0123456789abcdef012345"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{billing} billing\n{admin} *\n")
    port = _free_port()
    process = perdured("--dashboard-listen", f"127.0.0.1:{port}", "--tokens-file", str(tokens))
    url = f"http://127.0.0.1:{port}"
    async with Perdure(address=process.address, namespace="billing", token=admin) as writer:
        job = await writer.enqueue("e2e:invoice", 7)
    async with Perdure(address=process.address, namespace="shipping", token=admin) as other:
        await other.enqueue("e2e:parcel")

    await page.goto(url + "/jobs")
    form = page.locator("form.login")
    await expect(form).to_be_visible()
    await form.locator("input[name=token]").fill("not-a-token")
    await form.locator("button").click()
    await expect(form.locator("[role=alert]")).to_have_text("that is not a token of this sidecar")
    await screenshot(page, "login")

    await form.locator("input[name=token]").fill(billing)
    await form.locator("button").click()
    await expect(page.locator("html")).to_have_attribute("data-live", "true")
    assert "ns=billing" in page.url  # its one namespace, not "default"
    await expect(page.locator("#namespace option")).to_have_text(["billing"])
    await expect(page.locator(f'tr[data-job-id="{job.id}"]')).to_be_visible()
    await expect(page.locator("td", has_text="e2e:parcel")).to_have_count(0)
    cookies = await page.context.cookies()
    assert billing not in json.dumps(cookies) and all(c["httpOnly"] for c in cookies)

    await page.locator("#logout").click()
    await expect(page.locator("form.login")).to_be_visible()
