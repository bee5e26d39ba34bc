"""Security rules that only real perdured processes show: refusing to start on an unprotected
address, warning when told to, never writing a secret to the log (tokens, the database
password), and `perdured health` over TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import grpc
import pytest
from psycopg.conninfo import conninfo_to_dict

from perdure.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from perdured.launch import spawn

from ..certs import Certificates, make_certificates

PASSWORD = "Pa55-" + uuid.uuid4().hex  # appears nowhere but in the database URL
ADMIN = "admin-" + uuid.uuid4().hex
BILLING = "billing-" + uuid.uuid4().hex
WRONG = "wrong-" + uuid.uuid4().hex  # presented by a client, never configured


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def perdured(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`perdured ARGS` to its end (for what refuses to start, or `perdured health`)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "perdured", *args], capture_output=True, text=True, timeout=120,
                          env=environment)


def test_beyond_loopback__without_tls_and_a_token_refuses_at_once_naming_the_fix(database_url) -> None:
    done = perdured("--listen", "0.0.0.0:7433", "--database-url", database_url)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("perdured: --listen 0.0.0.0:7433 would serve the gRPC API")
    assert "beyond this machine without TLS and a token" in lines[0]
    for fix in ("--tls-cert and --tls-key", "--token or --tokens-file", "--insecure"):
        assert fix in lines[0]


async def test_insecure__serves_beyond_loopback_and_warns(database_url, tmp_path) -> None:
    log = tmp_path / "perdured.log"
    with log.open("wb") as out:
        process, address = spawn("--database-url", database_url, "--listen", "0.0.0.0:0", "--insecure",
                                 "--log-format", "json", stderr=out)
    try:
        port = address.rsplit(":", 1)[1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await admin_pb2_grpc.AdminStub(channel).GetInfo(admin_pb2.GetInfoRequest(), timeout=10)
    finally:
        process.terminate()
        process.wait(30)
    warnings = [line for line in map(json.loads, log.read_text().splitlines()) if line["event"] == "security.insecure"]
    assert warnings and warnings[0]["level"] == "warning"
    assert warnings[0]["serving"] == "--listen 0.0.0.0:0 without TLS and a token"


@pytest.fixture
def url_with_password(database_url, db) -> str:
    """The test database, reached as a role that logs in with PASSWORD."""
    role = f"perdure_secret_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    db.execute(f"GRANT ALL ON SCHEMA perdure TO {role}")
    db.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA perdure TO {role}")
    db.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA perdure TO {role}")
    params = conninfo_to_dict(database_url) | {"user": role, "password": PASSWORD}
    host = params.pop("host", "127.0.0.1")
    port = params.pop("port", "5432")
    dbname = params.pop("dbname")
    if str(host).startswith("/"):  # a socket directory: keep it as a parameter
        return f"postgresql://{role}:{PASSWORD}@/{dbname}?host={host}&port={port}"
    return f"postgresql://{role}:{PASSWORD}@{host}:{port}/{dbname}"


async def test_secrets__never_reach_the_log(url_with_password, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} *\n{BILLING} billing\n")
    log = tmp_path / "perdured.log"
    with log.open("wb") as out:
        process, address = spawn("--database-url", url_with_password, "--tokens-file", str(tokens),
                                 "--dashboard-listen", "127.0.0.1:0", "--log-level", "debug", "--log-format", "json",
                                 env={**os.environ, "PERDURE_TOKEN": "env-" + ADMIN}, stderr=out)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            jobs = jobs_pb2_grpc.JobsStub(channel)
            for token in (ADMIN, BILLING, "env-" + ADMIN):
                await jobs.Enqueue(jobs_pb2.EnqueueRequest(namespace="billing", name="sec:job"),
                                   metadata=(("authorization", f"Bearer {token}"),), timeout=10)
            for metadata in ((("authorization", f"Bearer {WRONG}"),), ()):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await jobs.ListJobs(jobs_pb2.ListJobsRequest(namespace="shipping"),
                                    metadata=(("authorization", f"Bearer {BILLING}"),), timeout=10)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        process.terminate()
        process.wait(30)
    text = log.read_text()
    for secret in (PASSWORD, ADMIN, BILLING, WRONG):
        assert secret not in text
    events = [json.loads(line) for line in text.splitlines()]
    ready = next(e for e in events if e["event"] == "database.ready")
    assert ":***@" in ready["database"]
    assert {e["event"] for e in events} >= {"security.configured", "auth.refused", "auth.denied", "sidecar.stopped"}


def test_database_password__not_in_the_error_when_the_database_cannot_be_reached() -> None:
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:1/app?connect_timeout=5"
    done = perdured("--database-url", url, "--log-level", "debug")
    assert done.returncode != 0
    assert PASSWORD not in done.stderr + done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("perdured: cannot connect to the database postgresql://app:***@127.0.0.1:1/app"), last
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("clients", ["same authority", "their own authority"])
def test_perdured_health__over_tls_with_client_certificates(database_url, certs, tmp_path, clients) -> None:
    client_ca = certs.ca if clients == "same authority" else certs.client_ca
    tls = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key), "--tls-client-ca", str(client_ca)]
    process, address = spawn("--database-url", database_url, "--token", ADMIN, *tls)
    try:
        # Its own certificate is signed by the authority it trusts for clients; otherwise give one.
        env = {} if clients == "same authority" else {
            "PERDURE_TLS_CLIENT_CERT": str(certs.client_cert), "PERDURE_TLS_CLIENT_KEY": str(certs.client_key)}
        done = perdured("health", "--listen", address, *tls, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SERVING" in done.stdout
        plain = perdured("health", "--listen", address)  # without TLS: not serving, as far as it can tell
        assert plain.returncode == 1
    finally:
        process.terminate()
        process.wait(30)


def test_unusable_tokens_or_certificates__refuse_to_start_in_one_line(certs, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} billing\n{ADMIN} shipping\n")
    cases = {
        ("--tokens-file", str(tokens)): "line 2: the same token as line 1",
        ("--tokens-file", str(tmp_path / "missing")): "cannot read it",
        ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.client_key)): "do not make a certificate and its private key",
        ("--tls-cert", str(certs.server_cert), "--tls-key", str(tmp_path / "missing.pem")): "cannot read",
    }
    for args, problem in cases.items():
        done = perdured(*args, "--data-dir", str(tmp_path / "data"))  # refused before any database starts
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and lines[-1].startswith("perdured: ") and problem in lines[-1], done.stderr
        assert ADMIN not in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "data").exists()
