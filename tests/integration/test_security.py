"""Security against a real sidecar: tokens on every call (UNAUTHENTICATED without one), scopes
(PERMISSION_DENIED in another namespace, whatever the RPC), TLS with and without client
certificates for the SDK and the command line, and the same rules on the metrics and the
dashboard."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import perdure
import perdure.sync
from perdure._calls import LOST_STREAM
from perdure.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    types_pb2,
    workers_pb2,
    workers_pb2_grpc,
)
from perdured.config import ExposureError
from perdured.dashboard.app import ACTION_HEADER
from perdured.server import Sidecar

from ..certs import Certificates, make_certificates
from ..conftest import start_sidecar

ADMIN = "admin-0123456789abcdef0123456789abcdef"  # every namespace
BILLING = "billing-0123456789abcdef0123456789abcd"  # billing only
TOKENS = f"""# the tokens of the test sidecar
{BILLING}  billing
{ADMIN}    *
"""
PERDURE = Path(sys.executable).with_name("perdure")
ACT = {ACTION_HEADER: "1"}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def secured(database_url: str, tokens_file: Path) -> AsyncIterator[Sidecar]:
    """A sidecar on loopback with tokens (and a dashboard and metrics, which follow them)."""
    sidecar = await start_sidecar(database_url, tokens_file=tokens_file, dashboard_listen="127.0.0.1:0",
                                  metrics_listen="127.0.0.1:0")
    yield sidecar
    await sidecar.stop()


@pytest.fixture
async def channel(secured: Sidecar) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(secured.address) as channel:
        yield channel


def payload(value: object) -> types_pb2.Payload:
    return types_pb2.Payload(data=json.dumps(value).encode(), encoding="json")


async def status_of(call: Any) -> grpc.StatusCode:
    """The status a call (unary, or streaming: read to its end) ends with."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def work_status(channel: grpc.aio.Channel, namespace: str, metadata: Any = None) -> grpc.StatusCode:
    """How a Work stream that registers in `namespace` ends (OK: it was registered).

    A stream refused as it opens may end before the register message is written; gRPC's
    asyncio client then reports the failed write as INTERNAL in place of the sidecar's status
    (grpc/grpc#36066). The SDK's worker tries again on that; so does this, a few times."""
    for _ in range(5):
        call = workers_pb2_grpc.WorkersStub(channel).Work(metadata=metadata)
        try:
            await call.write(workers_pb2.WorkerMessage(register=workers_pb2.Register(
                names=["sec:job"], concurrency=1, namespace=namespace, worker_name="test")))
            message = await call.read()
            assert message is not grpc.aio.EOF and message.WhichOneof("kind") == "registered"
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.INTERNAL or exc.details() != LOST_STREAM:
                return exc.code()
        finally:
            call.cancel()
    return grpc.StatusCode.INTERNAL


# -- tokens ------------------------------------------------------------------------------------


async def test_no_token__every_call_is_unauthenticated_but_the_health_check(channel) -> None:
    jobs, admin = jobs_pb2_grpc.JobsStub(channel), admin_pb2_grpc.AdminStub(channel)
    schedules = schedules_pb2_grpc.SchedulesStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    calls = {
        "Enqueue": jobs.Enqueue(jobs_pb2.EnqueueRequest(name="sec:job")),
        "ListJobs": jobs.ListJobs(jobs_pb2.ListJobsRequest()),
        "WatchJobs": jobs.WatchJobs(jobs_pb2.WatchJobsRequest()),
        "GetInfo": admin.GetInfo(admin_pb2.GetInfoRequest()),
        "ListSchedules": schedules.ListSchedules(schedules_pb2.ListSchedulesRequest()),
        # No request, only the end of them: a request written as the refusal arrives would lose
        # its status (work_status, above).
        "reflection": reflection.ServerReflectionInfo(iter([])),
    }
    for name, call in calls.items():
        assert await status_of(call) == grpc.StatusCode.UNAUTHENTICATED, name
    assert await work_status(channel, "billing") == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await jobs.GetJob(jobs_pb2.GetJobRequest(id="0190a6f2-8c1e-7b3a-9f41-2d5e8c7a1b00"))
    assert "authorization: Bearer" in (refused.value.details() or "")

    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("metadata", [
    bearer("admin-0123456789abcdef0123456789abcdeX"),  # one character off
    bearer(ADMIN[:-1]),
    (("authorization", f"Basic {ADMIN}"),),
    (("authorization", ADMIN),),
    (("x-token", ADMIN),),
])
async def test_wrong_token__is_unauthenticated(channel, metadata) -> None:
    admin = admin_pb2_grpc.AdminStub(channel)
    assert await status_of(admin.GetInfo(admin_pb2.GetInfoRequest(), metadata=metadata)) == grpc.StatusCode.UNAUTHENTICATED
    assert await work_status(channel, "billing", metadata) == grpc.StatusCode.UNAUTHENTICATED


async def test_known_token__is_served_including_streams_and_reflection(channel) -> None:
    jobs = jobs_pb2_grpc.JobsStub(channel)
    created = await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace="billing", name="sec:job"), metadata=bearer(BILLING))
    got = await jobs.GetJob(jobs_pb2.GetJobRequest(id=created.job.id, namespace="billing"), metadata=bearer(BILLING))
    assert got.job.name == "sec:job"
    assert await work_status(channel, "billing", bearer(BILLING)) == grpc.StatusCode.OK
    info = await admin_pb2_grpc.AdminStub(channel).GetInfo(admin_pb2.GetInfoRequest(), metadata=bearer(BILLING))
    assert info.version == perdure.__version__  # the sidecar's description: any known token
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = [answer async for answer in reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=bearer(ADMIN))]
    assert "perdure.v1.Jobs" in {s.name for s in answers[0].list_services_response.service}


def _other_namespace_calls(job_id: str) -> dict[str, Callable[[grpc.aio.Channel, Any], Any]]:
    """Every RPC that names a namespace, aimed at "shipping" (or at all namespaces)."""
    ns = "shipping"
    template = jobs_pb2.EnqueueRequest(name="sec:job")
    jobs = jobs_pb2_grpc.JobsStub
    schedules = schedules_pb2_grpc.SchedulesStub
    admin = admin_pb2_grpc.AdminStub
    return {
        "Enqueue": lambda c, m: jobs(c).Enqueue(jobs_pb2.EnqueueRequest(namespace=ns, name="sec:job"), metadata=m),
        "GetJob": lambda c, m: jobs(c).GetJob(jobs_pb2.GetJobRequest(id=job_id, namespace=ns), metadata=m),
        "AwaitJob": lambda c, m: jobs(c).AwaitJob(jobs_pb2.AwaitJobRequest(id=job_id, namespace=ns), metadata=m),
        "ListJobs": lambda c, m: jobs(c).ListJobs(jobs_pb2.ListJobsRequest(namespace=ns), metadata=m),
        "CancelJob": lambda c, m: jobs(c).CancelJob(jobs_pb2.CancelJobRequest(id=job_id, namespace=ns), metadata=m),
        "RetryJob": lambda c, m: jobs(c).RetryJob(jobs_pb2.RetryJobRequest(id=job_id, namespace=ns), metadata=m),
        "RetryJobs": lambda c, m: jobs(c).RetryJobs(
            jobs_pb2.RetryJobsRequest(filter=jobs_pb2.JobFilter(namespace=ns)), metadata=m),
        "PurgeJobs": lambda c, m: jobs(c).PurgeJobs(
            jobs_pb2.PurgeJobsRequest(filter=jobs_pb2.JobFilter(namespace=ns)), metadata=m),
        "EmitEvent": lambda c, m: jobs(c).EmitEvent(
            jobs_pb2.EmitEventRequest(namespace=ns, name="go", payload=payload(1)), metadata=m),
        "GetEvent": lambda c, m: jobs(c).GetEvent(jobs_pb2.GetEventRequest(namespace=ns, name="go"), metadata=m),
        "WatchJobs": lambda c, m: jobs(c).WatchJobs(jobs_pb2.WatchJobsRequest(namespace=ns), metadata=m),
        "CreateSchedule": lambda c, m: schedules(c).CreateSchedule(schedules_pb2.CreateScheduleRequest(
            namespace=ns, name="nightly", cron="0 3 * * *", job=template), metadata=m),
        "GetSchedule": lambda c, m: schedules(c).GetSchedule(
            schedules_pb2.GetScheduleRequest(namespace=ns, name="nightly"), metadata=m),
        "ListSchedules": lambda c, m: schedules(c).ListSchedules(
            schedules_pb2.ListSchedulesRequest(namespace=ns), metadata=m),
        "UpdateSchedule": lambda c, m: schedules(c).UpdateSchedule(
            schedules_pb2.UpdateScheduleRequest(namespace=ns, name="nightly", cron="0 4 * * *"), metadata=m),
        "PauseSchedule": lambda c, m: schedules(c).PauseSchedule(
            schedules_pb2.PauseScheduleRequest(namespace=ns, name="nightly"), metadata=m),
        "ResumeSchedule": lambda c, m: schedules(c).ResumeSchedule(
            schedules_pb2.ResumeScheduleRequest(namespace=ns, name="nightly"), metadata=m),
        "DeleteSchedule": lambda c, m: schedules(c).DeleteSchedule(
            schedules_pb2.DeleteScheduleRequest(namespace=ns, name="nightly"), metadata=m),
        "GetStats": lambda c, m: admin(c).GetStats(admin_pb2.GetStatsRequest(namespace=ns), metadata=m),
        "GetStats (every namespace)": lambda c, m: admin(c).GetStats(admin_pb2.GetStatsRequest(), metadata=m),
        "ListWorkers (every namespace)": lambda c, m: admin(c).ListWorkers(admin_pb2.ListWorkersRequest(), metadata=m),
        "GetActivity (every namespace)": lambda c, m: admin(c).GetActivity(admin_pb2.GetActivityRequest(), metadata=m),
    }


async def test_scoped_token__every_rpc_in_another_namespace_is_permission_denied(channel, db) -> None:
    jobs = jobs_pb2_grpc.JobsStub(channel)
    theirs = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace="shipping", name="sec:job"),
                                 metadata=bearer(ADMIN))).job
    await schedules_pb2_grpc.SchedulesStub(channel).CreateSchedule(schedules_pb2.CreateScheduleRequest(
        namespace="shipping", name="nightly", cron="0 3 * * *", job=jobs_pb2.EnqueueRequest(name="sec:job")),
        metadata=bearer(ADMIN))
    before = db.execute("SELECT state, attempt FROM perdure.jobs WHERE id = %s", (theirs.id,)).fetchone()

    denied = {}
    for name, call in _other_namespace_calls(theirs.id).items():
        denied[name] = await status_of(call(channel, bearer(BILLING)))
    assert denied == dict.fromkeys(denied, grpc.StatusCode.PERMISSION_DENIED)
    assert await work_status(channel, "shipping", bearer(BILLING)) == grpc.StatusCode.PERMISSION_DENIED

    # Nothing changed over there; its token (or one for every namespace) still does everything.
    assert db.execute("SELECT state, attempt FROM perdure.jobs WHERE id = %s", (theirs.id,)).fetchone() == before
    assert db.execute("SELECT count(*) FROM perdure.schedules WHERE namespace = 'shipping'").fetchone()[0] == 1
    allowed = {}
    for name in ("GetJob", "ListJobs", "ListSchedules", "GetStats", "GetStats (every namespace)",
                 "ListWorkers (every namespace)", "GetActivity (every namespace)"):
        allowed[name] = await status_of(_other_namespace_calls(theirs.id)[name](channel, bearer(ADMIN)))
    assert allowed == dict.fromkeys(allowed, grpc.StatusCode.OK)


async def test_scoped_token__a_job_of_another_namespace_asked_for_in_its_own_is_not_found(channel) -> None:
    """Ids are looked up in the namespace the request names: one's own namespace has no such job."""
    jobs = jobs_pb2_grpc.JobsStub(channel)
    theirs = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace="shipping", name="sec:job"),
                                 metadata=bearer(ADMIN))).job
    for call in (jobs.GetJob(jobs_pb2.GetJobRequest(id=theirs.id, namespace="billing"), metadata=bearer(BILLING)),
                 jobs.CancelJob(jobs_pb2.CancelJobRequest(id=theirs.id, namespace="billing"), metadata=bearer(BILLING))):
        assert await status_of(call) == grpc.StatusCode.NOT_FOUND
    assert await status_of(jobs.GetJob(jobs_pb2.GetJobRequest(id=theirs.id), metadata=bearer(BILLING))) \
        == grpc.StatusCode.PERMISSION_DENIED  # no namespace is "default", which it may not use either


async def test_sdk__with_its_token_serves_its_namespace_and_is_refused_elsewhere(secured, make_client) -> None:
    client = make_client(address=secured.address, namespace="billing", token=BILLING)

    @client.durable("sec:double")
    async def double(x: int) -> int:
        return 2 * x

    async with client:
        await client.wait_until_serving()
        assert await (await double(21)).result(timeout=30) == 42
        await client.schedules.create("sec:nightly", "sec:double", "0 3 * * *", args=(1,))
        assert [s.name for s in await client.schedules.list()] == ["sec:nightly"]
        assert await client.emit_event("sec:go", {"ok": True}) == 0
        assert len(await client.list_jobs("sec:double")) == 1

    elsewhere = make_client(address=secured.address, namespace="shipping", token=BILLING)
    async with elsewhere:
        with pytest.raises(perdure.PermissionDeniedError, match="may not use namespace 'shipping'"):
            await elsewhere.enqueue("sec:double", 1)

    worker = make_client(address=secured.address, namespace="shipping", token=BILLING)
    worker.durable("sec:double")(lambda x: x)
    async with worker:
        with pytest.raises(perdure.PermissionDeniedError):
            await worker.wait_until_serving()

    anonymous = make_client(address=secured.address, namespace="billing")
    async with anonymous:
        with pytest.raises(perdure.AuthenticationError, match="PERDURE_TOKEN"):
            await anonymous.enqueue("sec:double", 1)


async def test_sdk__takes_its_token_from_the_environment(secured, make_client, monkeypatch) -> None:
    monkeypatch.setenv("PERDURE_TOKEN", ADMIN)
    client = make_client(address=secured.address, namespace="anywhere")
    async with client:
        assert await (await client.enqueue("sec:later")).status() == "pending"


def test_sdk__token_and_tls_options_are_for_a_running_sidecar_only() -> None:
    with pytest.raises(ValueError, match="token: only for a running sidecar"):
        perdure.Perdure(token=ADMIN)
    with pytest.raises(ValueError, match="tls_ca: cannot read"):
        perdure.Perdure(address="127.0.0.1:1", tls_ca="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="give tls_cert and tls_key together"):
        perdure.Perdure(address="127.0.0.1:1", tls_cert="cert.pem")


# -- the metrics and the dashboard ------------------------------------------------------------------


async def test_metrics__need_a_token_and_show_the_tokens_namespaces(secured, channel) -> None:
    jobs = jobs_pb2_grpc.JobsStub(channel)
    for namespace in ("billing", "shipping"):
        await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace=namespace, name="sec:job"), metadata=bearer(ADMIN))
    url = secured._metrics_server.url
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(url, headers={"Authorization": "Bearer nope"}) as response:
            assert response.status == 401
        async with http.get(url, headers={"Authorization": f"Bearer {BILLING}"}) as response:
            assert response.status == 200
            scoped = await response.text()
        async with http.get(url, headers={"Authorization": f"Bearer {ADMIN}"}) as response:
            everything = await response.text()
    assert 'namespace="billing"' in scoped and 'namespace="shipping"' not in scoped
    assert "perdure_workers_connected" in scoped  # the sidecar's own series: no namespace
    assert 'namespace="billing"' in everything and 'namespace="shipping"' in everything


@pytest.fixture
async def browser(secured) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the dashboard that keeps cookies, as a browser does."""
    async with aiohttp.ClientSession(base_url=secured.dashboard.url, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield http


async def answer(response: aiohttp.ClientResponse, status: int) -> Any:
    body = await response.json(content_type=None)
    assert response.status == status, body
    return body


async def test_dashboard__needs_a_login_and_keeps_it_in_an_http_only_cookie(browser) -> None:
    async with browser.get("/") as page:
        assert page.status == 200  # the page itself, to show the login form
    assert await answer(await browser.get("/api/session"), 200) == {
        "required": True, "authenticated": False, "namespaces": None}
    for path in ("/api/info", "/api/namespaces", "/api/jobs", "/api/events"):
        assert "log in" in (await answer(await browser.get(path), 401))["error"]
    await answer(await browser.post("/api/login", json={"token": BILLING}), 403)  # no action header
    refused = await answer(await browser.post("/api/login", json={"token": "guess"}, headers=ACT), 401)
    assert "not a token of this sidecar" in refused["error"]

    async with browser.post("/api/login", json={"token": ADMIN}, headers=ACT) as response:
        assert response.status == 200
        cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and ADMIN not in cookie
    assert (await answer(await browser.get("/api/info"), 200))["version"] == perdure.__version__
    assert (await answer(await browser.get("/api/session"), 200))["authenticated"]

    await answer(await browser.post("/api/logout", headers=ACT), 200)
    await answer(await browser.get("/api/info"), 401)


async def test_dashboard__a_scoped_login_sees_and_does_only_its_namespaces(browser, channel) -> None:
    jobs = jobs_pb2_grpc.JobsStub(channel)
    theirs = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace="shipping", name="sec:job"),
                                 metadata=bearer(ADMIN))).job
    ours = (await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace="billing", name="sec:job"),
                               metadata=bearer(ADMIN))).job
    session = await answer(await browser.post("/api/login", json={"token": BILLING}, headers=ACT), 200)
    assert session["namespaces"] == ["billing"]
    assert (await answer(await browser.get("/api/namespaces"), 200))["namespaces"] == ["billing"]
    listed = await answer(await browser.get("/api/jobs", params={"namespace": "billing"}), 200)
    assert [j["id"] for j in listed["jobs"]] == [ours.id]

    for path, params in [("/api/jobs", {"namespace": "shipping"}), (f"/api/jobs/{theirs.id}", {"namespace": "shipping"}),
                         ("/api/stats", {}), ("/api/workers", {}), ("/api/events", {"namespace": "shipping"})]:
        refused = await answer(await browser.get(path, params=params), 403)
        assert "namespace" in refused["error"], path
    await answer(await browser.post(f"/api/jobs/{theirs.id}/cancel", params={"namespace": "shipping"},
                                    headers=ACT), 403)
    assert (await jobs.GetJob(jobs_pb2.GetJobRequest(id=theirs.id, namespace="shipping"),
                              metadata=bearer(ADMIN))).job.state == types_pb2.JOB_STATE_PENDING

    async with browser.get("/api/events", params={"namespace": "billing"}) as events:
        assert events.status == 200
        async with asyncio.timeout(30):
            while (line := await events.content.readline()) != b"event: ready\n":
                assert line, "the event stream ended"


async def test_dashboard__takes_a_bearer_token_from_scripts(secured) -> None:
    async with aiohttp.ClientSession(base_url=secured.dashboard.url) as http:
        named = await answer(await http.get("/api/namespaces", headers={"Authorization": f"Bearer {ADMIN}"}), 200)
        assert "default" in named["namespaces"]
        await answer(await http.get("/api/namespaces", headers={"Authorization": "Bearer nope"}), 401)


# -- TLS ------------------------------------------------------------------------------------------


async def raw_status(address: str, credentials: grpc.ChannelCredentials | None, *, metadata: Any = None,
                     options: Any = None) -> tuple[grpc.StatusCode, str]:
    channel = (grpc.aio.secure_channel(address, credentials, options) if credentials is not None
               else grpc.aio.insecure_channel(address, options))
    async with channel:
        try:
            await admin_pb2_grpc.AdminStub(channel).GetInfo(admin_pb2.GetInfoRequest(), timeout=10, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_tls__the_sdk_connects_with_the_authority_and_not_without(database_url, tokens_file, certs,
                                                                         make_client) -> None:
    sidecar = await start_sidecar(database_url, tls_cert=certs.server_cert, tls_key=certs.server_key,
                                  tokens_file=tokens_file)
    try:
        client = make_client(address=sidecar.address, namespace="billing", token=BILLING, tls_ca=certs.ca)

        @client.durable("sec:echo")
        async def echo(x: str) -> str:
            return x

        async with client:
            await client.wait_until_serving()
            assert await (await echo("over TLS")).result(timeout=30) == "over TLS"

        ca = certs.ca.read_bytes()
        assert (await raw_status(sidecar.address, grpc.ssl_channel_credentials(ca), metadata=bearer(ADMIN)))[0] \
            == grpc.StatusCode.OK
        plain = await raw_status(sidecar.address, None, metadata=bearer(ADMIN))
        assert plain[0] == grpc.StatusCode.UNAVAILABLE
        wrong = await raw_status(sidecar.address, grpc.ssl_channel_credentials(certs.stranger_ca.read_bytes()),
                                 metadata=bearer(ADMIN))
        assert wrong[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        await sidecar.stop()


async def test_tls__a_name_the_address_does_not_say(database_url, certs, make_client) -> None:
    sidecar = await start_sidecar(database_url, tls_cert=certs.named_cert, tls_key=certs.named_key, token=ADMIN)
    try:
        ca = grpc.ssl_channel_credentials(certs.ca.read_bytes())
        assert (await raw_status(sidecar.address, ca, metadata=bearer(ADMIN)))[0] == grpc.StatusCode.UNAVAILABLE
        client = make_client(address=sidecar.address, token=ADMIN, tls_ca=certs.ca, tls_server_name="perdured.internal")
        async with client:
            assert await (await client.enqueue("sec:later")).status() == "pending"
    finally:
        await sidecar.stop()


async def test_tls__client_certificates_when_required(database_url, certs, make_client) -> None:
    sidecar = await start_sidecar(database_url, tls_cert=certs.server_cert, tls_key=certs.server_key,
                                  tls_client_ca=certs.client_ca, token=ADMIN)
    try:
        ca = certs.ca.read_bytes()
        without = await raw_status(sidecar.address, grpc.ssl_channel_credentials(ca), metadata=bearer(ADMIN))
        assert without[0] == grpc.StatusCode.UNAVAILABLE
        stranger = grpc.ssl_channel_credentials(ca, certs.stranger_key.read_bytes(), certs.stranger_cert.read_bytes())
        assert (await raw_status(sidecar.address, stranger, metadata=bearer(ADMIN)))[0] == grpc.StatusCode.UNAVAILABLE

        client = make_client(address=sidecar.address, token=ADMIN, tls_ca=certs.ca, tls_cert=certs.client_cert,
                             tls_key=certs.client_key)

        @client.durable("sec:echo")
        async def echo(x: str) -> str:
            return x

        async with client:
            await client.wait_until_serving()
            assert await (await echo("mutual")).result(timeout=30) == "mutual"
    finally:
        await sidecar.stop()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_")} | (env or {})
    return subprocess.run([str(PERDURE), *args], capture_output=True, text=True, timeout=90, env=environment)


def one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, f"exit {done.returncode}: {done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perdure: ") and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


async def test_cli__tls_and_token_from_flags_or_the_environment(database_url, tokens_file, certs) -> None:
    sidecar = await start_sidecar(database_url, tls_cert=certs.server_cert, tls_key=certs.server_key,
                                  tls_client_ca=certs.client_ca, tokens_file=tokens_file)
    try:
        address = ["--address", sidecar.address]
        tls = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
        done = await asyncio.to_thread(run_cli, *address, *tls, "--token", ADMIN, "doctor")
        assert done.returncode == 0, done.stdout + done.stderr
        done = await asyncio.to_thread(run_cli, *address, "-n", "billing", "stats", env={
            "PERDURE_TOKEN": BILLING, "PERDURE_TLS_CA": str(certs.ca),
            "PERDURE_TLS_CLIENT_CERT": str(certs.client_cert), "PERDURE_TLS_CLIENT_KEY": str(certs.client_key)})
        assert done.returncode == 0, done.stderr

        one_line(await asyncio.to_thread(run_cli, *address, "--timeout", "5s", "stats"), 3, "TLS", "--tls-ca")
        one_line(await asyncio.to_thread(run_cli, *address, *tls, "stats"), 8, "--token", "PERDURE_TOKEN")
        one_line(await asyncio.to_thread(run_cli, *address, *tls, "--token", BILLING, "-n", "shipping", "stats"),
                 8, "may not use namespace 'shipping'")
        one_line(await asyncio.to_thread(run_cli, *address, "--tls-ca", "/nonexistent.pem", "stats"), 2,
                 "--tls-ca: cannot read /nonexistent.pem")
    finally:
        await sidecar.stop()


def test_sync_sdk__passes_the_token_and_tls_through(database_url, tokens_file, certs, threaded_loop) -> None:
    sidecar = asyncio.run_coroutine_threadsafe(start_sidecar(
        database_url, tls_cert=certs.server_cert, tls_key=certs.server_key, tokens_file=tokens_file),
        threaded_loop).result(60)
    try:
        client = perdure.sync.Perdure(address=sidecar.address, namespace="billing", token=BILLING, tls_ca=certs.ca)

        @client.durable("sec:add")
        def add(a: int, b: int) -> int:
            return a + b

        with client:
            client.wait_until_serving()
            assert add(1, 2).result(timeout=30) == 3
    finally:
        asyncio.run_coroutine_threadsafe(sidecar.stop(), threaded_loop).result(60)


async def test_beyond_loopback__tls_everywhere_and_the_dashboard_and_metrics_over_https(database_url, tokens_file,
                                                                                          certs, make_client) -> None:
    sidecar = await start_sidecar(database_url, listen="0.0.0.0:0", tls_cert=certs.server_cert,
                                  tls_key=certs.server_key, tokens_file=tokens_file,
                                  dashboard_listen="0.0.0.0:0", metrics_listen="0.0.0.0:0")
    try:
        port = sidecar.address.rsplit(":", 1)[1]
        client = make_client(address=f"127.0.0.1:{port}", token=ADMIN, tls_ca=certs.ca)
        async with client:
            assert await (await client.enqueue("sec:later")).status() == "pending"

        assert sidecar.dashboard.url.startswith("https://") and sidecar._metrics_server.url.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(certs.ca))
        dashboard = sidecar.dashboard.url.replace("0.0.0.0", "127.0.0.1")
        metrics = sidecar._metrics_server.url.replace("0.0.0.0", "127.0.0.1")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting),
                                         cookie_jar=aiohttp.CookieJar(unsafe=True)) as https:
            await answer(await https.get(dashboard + "api/info"), 401)
            async with https.post(dashboard + "api/login", json={"token": ADMIN}, headers=ACT) as response:
                assert response.status == 200
                cookie = response.headers["Set-Cookie"]
            assert cookie.startswith("__Host-") and "Secure" in cookie
            assert (await answer(await https.get(dashboard + "api/info"), 200))["sidecar_id"] == sidecar.id
            async with https.get(metrics, headers={"Authorization": f"Bearer {ADMIN}"}) as response:
                assert response.status == 200 and "perdure_jobs_enqueued_total" in await response.text()
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                await plain.get(dashboard.replace("https://", "http://") + "api/info")
    finally:
        await sidecar.stop()


async def test_beyond_loopback__without_tls_and_tokens_the_sidecar_does_not_start(database_url) -> None:
    with pytest.raises(ExposureError, match="--listen 0.0.0.0:0 would serve the gRPC API"):
        await start_sidecar(database_url, listen="0.0.0.0:0")
    insecure = await start_sidecar(database_url, listen="0.0.0.0:0", insecure=True)
    try:
        port = insecure.address.rsplit(":", 1)[1]
        assert (await raw_status(f"127.0.0.1:{port}", None))[0] == grpc.StatusCode.OK
    finally:
        await insecure.stop()


async def test_tls__a_renewed_certificate_is_used_without_a_restart(database_url, certs, tmp_path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(certs.server_cert.read_bytes())
    key.write_bytes(certs.server_key.read_bytes())
    sidecar = await start_sidecar(database_url, tls_cert=cert, tls_key=key, token=ADMIN)
    try:
        old = grpc.ssl_channel_credentials(certs.ca.read_bytes())
        assert (await raw_status(sidecar.address, old, metadata=bearer(ADMIN)))[0] == grpc.StatusCode.OK
        # A renewal (cert-manager, certbot) writes new files in place; here from a new authority,
        # so that the test can tell which certificate a connection got.
        renewed = make_certificates(tmp_path / "renewed")
        key.write_bytes(renewed.server_key.read_bytes())
        cert.write_bytes(renewed.server_cert.read_bytes())
        new = grpc.ssl_channel_credentials(renewed.ca.read_bytes())
        assert (await raw_status(sidecar.address, new, metadata=bearer(ADMIN)))[0] == grpc.StatusCode.OK
        assert (await raw_status(sidecar.address, old, metadata=bearer(ADMIN)))[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        await sidecar.stop()
