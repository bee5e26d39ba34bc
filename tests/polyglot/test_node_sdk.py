"""The Node.js SDK's own tests (`node --test`, in sdk_examples/node/test) against this suite's
sidecar and database, and its committed stubs against a fresh generation."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

from tests.polyglot.conftest import NODE_SDK, ROOT, database_url_for_node


async def test_node_sdk__its_own_tests_pass_against_a_real_sidecar(sidecar, database_url, node_sdk) -> None:
    files = sorted(str(p.relative_to(NODE_SDK)) for p in (NODE_SDK / "test").glob("*.test.js"))
    env = {**os.environ, "PERDURE_ADDRESS": sidecar.address,
           "PERDURE_TEST_DATABASE_URL": database_url_for_node(database_url)}
    process = await asyncio.create_subprocess_exec(
        "node", "--test", "--test-timeout=60000", *files, cwd=NODE_SDK, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 100)
    text = output.decode()
    counts = {key: int(value) for key, value in re.findall(r"^# (pass|fail|skipped|cancelled) (\d+)$", text, re.M)}
    assert process.returncode == 0 and counts.get("fail") == 0, text
    assert counts.get("pass", 0) >= 20 and counts.get("skipped") == 0 and counts.get("cancelled") == 0, text


def test_committed_node_stubs__match_a_fresh_generation(node_sdk) -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_protos.py"), "--check", "--lang", "node"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_node_sdk__type_checks_against_the_generated_types(node_sdk) -> None:
    check = subprocess.run([str(NODE_SDK / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"], cwd=NODE_SDK,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
