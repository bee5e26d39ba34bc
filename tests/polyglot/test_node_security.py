"""The Node.js SDK against a sidecar configured with tokens: its `token` option (or
$PERDURE_TOKEN) is sent with every call and stream; without one the sidecar refuses it, and a
token scoped to another namespace may not use this one. Over TLS, with a client certificate,
through its `credentials` option."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.certs import make_certificates
from tests.conftest import start_sidecar
from tests.polyglot.conftest import NODE_SDK

BILLING = "billing-0123456789abcdef0123456789abcd"  # may use namespace "billing" only

SCRIPT = """
const { Perdure } = require('./src');
async function attempt(options) {
  const perdure = new Perdure({ address: process.env.ADDRESS, ...options });
  const double = perdure.durable('sec:double', async (x) => 2 * x);
  try {
    await perdure.start();
    const handle = await double(21);
    return { result: await handle.result({ timeout: 30 }) };
  } catch (err) {
    return { error: String(err.message) };
  } finally {
    await perdure.stop();
  }
}
(async () => {
  const outcomes = {
    token: await attempt({ namespace: 'billing', token: process.env.BILLING }),
    environment: await attempt({ namespace: 'billing' }),
    none: await attempt({ namespace: 'billing', token: '' }),
    other_namespace: await attempt({ namespace: 'shipping', token: process.env.BILLING }),
  };
  console.log(JSON.stringify(outcomes));
})();
"""


@pytest.fixture
async def secured(database_url: str, tmp_path: Path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{BILLING}  billing\n")
    sidecar = await start_sidecar(database_url, tokens_file=tokens)
    yield sidecar
    await sidecar.stop()


async def test_node_sdk__sends_its_token_and_is_refused_without_one_or_elsewhere(secured, node_sdk) -> None:
    env = {**os.environ, "ADDRESS": secured.address, "BILLING": BILLING, "PERDURE_TOKEN": BILLING}
    process = await asyncio.create_subprocess_exec("node", "-e", SCRIPT, cwd=NODE_SDK, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    outcomes = json.loads(out.decode().strip().splitlines()[-1])
    assert outcomes["token"] == {"result": 42}
    assert outcomes["environment"] == {"result": 42}  # $PERDURE_TOKEN
    assert "UNAUTHENTICATED" in outcomes["none"]["error"], outcomes
    assert "PERMISSION_DENIED" in outcomes["other_namespace"]["error"], outcomes


TLS_SCRIPT = """
const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const { Perdure } = require('./src');
async function attempt(credentials) {
  const perdure = new Perdure({ address: process.env.ADDRESS, namespace: 'billing', credentials });
  const double = perdure.durable('sec:double', async (x) => 2 * x);
  try {
    await perdure.start();
    return { result: await (await double(4)).result({ timeout: 30 }) };
  } catch (err) {
    return { error: String(err.message) };
  } finally {
    await perdure.stop();
  }
}
(async () => {
  const read = (name) => fs.readFileSync(process.env[name]);
  console.log(JSON.stringify({
    tls: await attempt(grpc.credentials.createSsl(read('CA'), read('CLIENT_KEY'), read('CLIENT_CERT'))),
  }));
})();
"""


async def test_node_sdk__over_tls_with_a_client_certificate(database_url, tmp_path, node_sdk) -> None:
    certs = make_certificates(tmp_path / "certs")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{BILLING}  billing\n")
    sidecar = await start_sidecar(database_url, tls_cert=certs.server_cert, tls_key=certs.server_key,
                                  tls_client_ca=certs.client_ca, tokens_file=tokens)
    try:
        env = {**os.environ, "ADDRESS": sidecar.address, "PERDURE_TOKEN": BILLING, "CA": str(certs.ca),
               "CLIENT_KEY": str(certs.client_key), "CLIENT_CERT": str(certs.client_cert)}
        process = await asyncio.create_subprocess_exec("node", "-e", TLS_SCRIPT, cwd=NODE_SDK, env=env,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await sidecar.stop()
    assert process.returncode == 0, err.decode()
    outcomes = json.loads(out.decode().strip().splitlines()[-1])
    assert outcomes == {"tls": {"result": 8}}  # (the sidecar's TLS rules are tested in test_security.py)
