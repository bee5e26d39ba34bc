"""The `perdure` command as an operator meets it: the installed executable, run in a
subprocess against a real sidecar on a real PostgreSQL; functions served by the SDK in this
test process. Tests check exit codes, JSON documents and the words people read."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import perdure
from perdure import context
from perdured.migrate import load_migrations

PERDURE = Path(sys.executable).with_name("perdure")


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    if not PERDURE.exists():
        pytest.fail(f"the perdure command is not installed next to {sys.executable}: pip install -e .")


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def ok(self) -> Run:
        assert self.code == 0, f"exit {self.code}: {self.err}"
        return self

    def fails_in_one_line(self, code: int, *words: str) -> str:
        """Exit `code` with exactly one line on standard error, no traceback; returns the line."""
        assert self.code == code, f"exit {self.code} (expected {code}): {self.err}"
        assert "Traceback" not in self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("perdure: "), self.err
        for word in words:
            assert word in lines[0], lines[0]
        return lines[0]


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Run:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PERDURE_")} | {"COLUMNS": "200"}
    done = subprocess.run([str(PERDURE), *args], capture_output=True, text=True, timeout=90,
                          env=environment | (env or {}), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
    return Run(done.returncode, done.stdout, done.stderr)


async def perdure_at(address: str, *args: str, **options: Any) -> Run:
    """Run `perdure --address ADDRESS ARGS` off the event loop (the in-process sidecar runs on it)."""
    return await asyncio.to_thread(run, "--address", address, *args, **options)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def eventually(check: Any, what: str, timeout: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)
    return value


# -- jobs --------------------------------------------------------------------------------------


async def test_jobs__enqueue_list_show_a_served_job(sidecar, make_client) -> None:
    worker = make_client()

    @worker.durable("cli:add")
    async def add(a: int, b: int, c: int = 0) -> dict:
        ctx = context()
        doubled = await ctx.step("double", lambda: a * 2)
        ctx.progress(1, 2, "half way")
        ctx.log.info(f"adding [bold]{a}")  # markup-like text must come out as it is
        return {"sum": a + b + c, "doubled": doubled}

    async with worker:
        await worker.wait_until_serving()
        enqueued = (await perdure_at(sidecar.address, "jobs", "enqueue", "cli:add", "--args", "[2, 3]",
                                     "--kwargs", '{"c": 4}', "--label", "team=cli", "--priority", "7", "--json")).ok().json()
        job_id = enqueued["job"]["id"]
        assert enqueued["deduplicated"] is False
        assert enqueued["job"]["payload"]["json"] == {"args": [2, 3], "kwargs": {"c": 4}}
        assert enqueued["job"]["labels"] == {"team": "cli"} and enqueued["job"]["priority"] == 7

        waited = (await perdure_at(sidecar.address, "jobs", "wait", job_id, "--json")).ok().json()
        assert waited["state"] == "JOB_STATE_SUCCESS"
        assert waited["result"]["json"] == {"sum": 9, "doubled": 4}

        listed = (await perdure_at(sidecar.address, "jobs", "list", "--name", "cli:add", "--json")).ok().json()
        assert [(j["id"], j["state"]) for j in listed] == [(job_id, "JOB_STATE_SUCCESS")]
        assert (await perdure_at(sidecar.address, "jobs", "list", "--label", "team=other", "--json")).ok().json() == []
        table = (await perdure_at(sidecar.address, "jobs", "list", "-s", "success,dead", "-l", "team=cli")).ok().out
        assert job_id in table and "cli:add" in table and "success" in table

        shown = (await perdure_at(sidecar.address, "jobs", "show", job_id, "--json")).ok().json()
        assert [a["outcome"] for a in shown["attempts"]] == ["ATTEMPT_OUTCOME_SUCCEEDED"]
        assert [(s["name"], s["status"], s["result"]["json"]) for s in shown["steps"]] == [
            ("double", "STEP_STATUS_SUCCEEDED", 4)]
        assert [log["message"] for log in shown["logs"]] == ["adding [bold]2"]
        assert shown["progress"]["current"] == 1 and shown["progress"]["message"] == "half way"

        page = (await perdure_at(sidecar.address, "jobs", "show", job_id)).ok().out
    for words in (job_id, "cli:add", "success", "(2, 3, c=4)", "team=cli", "Attempts", "succeeded", "Steps", "double",
                  "Progress", "half way", "Logs", "adding [bold]2", "Result", '"sum": 9'):
        assert words in page, words


async def test_jobs__enqueue_wait_prints_the_result_or_fails_with_the_jobs_error(sidecar, make_client) -> None:
    worker = make_client()

    @worker.durable("cli:check")
    async def check(value: int) -> int:
        if value < 0:
            raise ValueError(f"negative: {value}")
        return value * 10

    async with worker:
        await worker.wait_until_serving()
        done = (await perdure_at(sidecar.address, "jobs", "enqueue", "cli:check", "--args", "[4]", "--wait")).ok()
        assert json.loads(done.out) == 40
        assert done.err.startswith("enqueued job ")

        dead = await perdure_at(sidecar.address, "jobs", "enqueue", "cli:check", "--args", "[-1]", "--max-attempts", "1",
                                "--wait")
        # the enqueue line, then the one-line failure
        assert dead.code == 6 and "Traceback" not in dead.err
        assert dead.err.strip().splitlines()[-1].startswith("perdure: job ")
        assert "is dead after 1 attempt: ValueError: negative: -1" in dead.err

        dead_json = await perdure_at(sidecar.address, "jobs", "enqueue", "cli:check", "--args", "[-2]",
                                     "--max-attempts", "1", "--wait", "--json")
        assert dead_json.code == 6
        document = dead_json.json()
        assert document["job"]["state"] == "JOB_STATE_DEAD"
        assert document["job"]["error"]["type"] == "ValueError"

        shown = (await perdure_at(sidecar.address, "jobs", "show", document["job"]["id"])).ok().out
        assert "Error" in shown and "ValueError: negative: -2" in shown and "Traceback (most recent call last)" in shown

    nobody = await perdure_at(sidecar.address, "jobs", "enqueue", "cli:nobody", "--wait", "--wait-timeout", "0.5s")
    assert nobody.code == 7 and "still pending" in nobody.err


async def test_jobs__cancel_then_retry(sidecar) -> None:
    job = (await perdure_at(sidecar.address, "jobs", "enqueue", "cli:later", "--delay", "1h", "--json")).ok().json()["job"]
    job_id = job["id"]
    assert job["state"] == "JOB_STATE_PENDING"

    refused = await perdure_at(sidecar.address, "jobs", "retry", job_id)
    refused.fails_in_one_line(5, "only dead or cancelled jobs can be retried")

    cancelled = (await perdure_at(sidecar.address, "jobs", "cancel", job_id)).ok()
    assert cancelled.out.strip() == f"cancelled job {job_id} (cli:later)"
    again = (await perdure_at(sidecar.address, "jobs", "cancel", job_id, "--json")).ok().json()
    assert again["cancelled"] is False and again["job"]["state"] == "JOB_STATE_CANCELLED"

    retried = (await perdure_at(sidecar.address, "jobs", "retry", job_id)).ok()
    assert "pending again" in retried.out
    shown = (await perdure_at(sidecar.address, "jobs", "show", job_id, "--json")).ok().json()
    assert shown["state"] == "JOB_STATE_PENDING"


async def test_jobs__bulk_retry_of_dead_jobs_by_filter(sidecar, make_client) -> None:
    worker = make_client()

    @worker.durable("cli:fragile", max_attempts=1)
    async def fragile(kind: str) -> None:
        raise ValueError("bad row") if kind == "value" else KeyError("no key")

    async with worker:
        await worker.wait_until_serving()
        handles = [await fragile(kind) for kind in ("value", "value", "value", "key")]
        for handle in handles:
            with pytest.raises(perdure.JobDeadError):
                await handle.result(timeout=30)
    # The worker has gone: retried jobs stay pending, where the test can see them.

    unconfirmed = await perdure_at(sidecar.address, "jobs", "retry", "--dead", "--name", "cli:fragile")
    assert unconfirmed.code == 2 and "--yes" in unconfirmed.err
    declined = await perdure_at(sidecar.address, "jobs", "retry", "--dead", "--name", "cli:fragile", stdin="n\n")
    assert declined.code == 2  # standard input is not a terminal: never guess

    listed = (await perdure_at(sidecar.address, "jobs", "list", "-s", "dead", "--error-type", "ValueError",
                               "--json")).ok().json()
    assert len(listed) == 3
    retried = (await perdure_at(sidecar.address, "jobs", "retry", "--dead", "--name", "cli:fragile",
                                "--error-type", "ValueError", "--yes")).ok()
    assert retried.out.strip() == "retried 3 jobs"
    pending = (await perdure_at(sidecar.address, "jobs", "list", "--name", "cli:fragile", "-s", "pending",
                                "--json")).ok().json()
    assert sorted(j["id"] for j in pending) == sorted(h.id for h in handles[:3])
    still_dead = (await perdure_at(sidecar.address, "jobs", "list", "--status", "dead", "--json")).ok().json()
    assert [(j["id"], j["error"]["type"]) for j in still_dead] == [(handles[3].id, "KeyError")]
    none_left = (await perdure_at(sidecar.address, "jobs", "retry", "--dead", "--error-contains", "BAD ROW", "--yes",
                                  "--json")).ok().json()
    assert none_left == {"retried": 0}


async def test_jobs__purge_deletes_finished_jobs_by_filter(sidecar) -> None:
    ids = []
    for tenant in ("a", "a", "b"):
        job = (await perdure_at(sidecar.address, "jobs", "enqueue", "cli:purged", "--delay", "1h", "--label",
                                f"tenant={tenant}", "--json")).ok().json()["job"]
        (await perdure_at(sidecar.address, "jobs", "cancel", job["id"])).ok()
        ids.append(job["id"])

    nothing_dead = (await perdure_at(sidecar.address, "jobs", "purge", "--yes", "--json")).ok().json()
    assert nothing_dead == {"purged": 0}  # dead jobs by default; these are cancelled
    unconfirmed = await perdure_at(sidecar.address, "jobs", "purge", "--status", "cancelled")
    assert unconfirmed.code == 2 and "--yes" in unconfirmed.err
    bad_state = await perdure_at(sidecar.address, "jobs", "purge", "--status", "pending", "--yes")
    assert bad_state.code == 2 and "--status" in bad_state.err

    purged = (await perdure_at(sidecar.address, "jobs", "purge", "-s", "cancelled", "-l", "tenant=a", "--yes")).ok()
    assert purged.out.strip() == "purged 2 jobs"
    gone = await perdure_at(sidecar.address, "jobs", "show", ids[0])
    gone.fails_in_one_line(4, f"no job {ids[0]}")
    left = (await perdure_at(sidecar.address, "jobs", "list", "--name", "cli:purged", "--json")).ok().json()
    assert [j["id"] for j in left] == [ids[2]]


async def test_jobs__list_pages_through_the_jobs(sidecar) -> None:
    for n in range(5):
        (await perdure_at(sidecar.address, "jobs", "enqueue", "cli:paged", "--args", f"[{n}]", "--delay", "1h")).ok()
    first = (await perdure_at(sidecar.address, "jobs", "list", "--limit", "2", "--json")).ok()
    assert len(first.json()) == 2
    token = first.err.split("--page-token ")[1].split()[0]
    second = (await perdure_at(sidecar.address, "jobs", "list", "--limit", "2", "--page-token", token, "--json")).ok()
    assert not {j["id"] for j in first.json()} & {j["id"] for j in second.json()}
    everything = (await perdure_at(sidecar.address, "jobs", "list", "--limit", "2", "--all", "--json")).ok()
    assert len(everything.json()) == 5 and "--page-token" not in everything.err
    arguments = sorted(j["payload"]["json"]["args"][0] for j in everything.json())
    assert arguments == [0, 1, 2, 3, 4]


async def test_jobs__watch_prints_events_until_interrupted(sidecar, make_client) -> None:
    worker = make_client()

    @worker.durable("cli:watched")
    async def watched() -> str:
        return "seen"

    # Ctrl-C as at a terminal, even when these tests run in the background (which ignores
    # SIGINT, and Python then leaves it ignored in the child).
    watcher = await asyncio.create_subprocess_exec(
        str(PERDURE), "--address", sidecar.address, "jobs", "watch", "--name", "cli:watched", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert watcher.stderr is not None and watcher.stdout is not None
        ready = await asyncio.wait_for(watcher.stderr.readline(), 30)
        assert b"watching jobs" in ready  # printed once the watch is live: nothing after it is missed
        async with worker:
            handle = await watched()
            kinds = []
            while "JOB_EVENT_KIND_SUCCEEDED" not in kinds:
                event = json.loads(await asyncio.wait_for(watcher.stdout.readline(), 30))
                assert event["job_id"] == handle.id and event["name"] == "cli:watched"
                kinds.append(event["kind"])
        assert kinds[0] == "JOB_EVENT_KIND_ENQUEUED" and "JOB_EVENT_KIND_STARTED" in kinds
        watcher.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(watcher.wait(), 30) == 0
        assert b"Traceback" not in await watcher.stderr.read()
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()


async def test_jobs__address_and_namespace_from_the_environment(sidecar) -> None:
    env = {"PERDURE_ADDRESS": sidecar.address, "PERDURE_NAMESPACE": "cli-other"}
    job = (await asyncio.to_thread(run, "jobs", "enqueue", "cli:elsewhere", "--delay", "1h", "--json",
                                   env=env)).ok().json()["job"]
    assert job["namespace"] == "cli-other"
    assert (await perdure_at(sidecar.address, "jobs", "list", "--json")).ok().json() == []
    here = (await perdure_at(sidecar.address, "-n", "cli-other", "jobs", "list", "--json")).ok().json()
    assert [j["id"] for j in here] == [job["id"]]
    # an option given to the command wins over the environment and over `perdure` itself
    there = (await asyncio.to_thread(run, "-n", "nowhere", "jobs", "show", job["id"], "--namespace", "cli-other",
                                     env=env)).ok()
    assert job["id"] in there.out


async def test_jobs__unknown_job_id_exits_4_in_one_line(sidecar) -> None:
    unknown = "01900000-0000-7000-8000-000000000000"
    for command in (["jobs", "show", unknown], ["jobs", "cancel", unknown], ["jobs", "retry", unknown],
                    ["jobs", "wait", unknown], ["jobs", "show", unknown, "--json"]):
        result = await perdure_at(sidecar.address, *command)
        result.fails_in_one_line(4, f"no job {unknown} in namespace 'default'")
        assert result.out == ""
    malformed = await perdure_at(sidecar.address, "jobs", "show", "not-a-uuid")
    malformed.fails_in_one_line(5, "is not a job id")


# -- stats, workers, events --------------------------------------------------------------------


async def test_stats_and_workers__as_json_and_tables(sidecar, make_client) -> None:
    worker = make_client(worker_concurrency=3)

    @worker.durable("cli:served")
    async def served() -> None: ...

    async with worker:
        await worker.wait_until_serving()
        for _ in range(2):
            (await perdure_at(sidecar.address, "jobs", "enqueue", "cli:queued", "--delay", "0")).ok()

        workers = (await perdure_at(sidecar.address, "workers", "--json")).ok().json()
        assert [(w["names"], w["concurrency"], w["in_flight"], w["sidecar_id"]) for w in workers] == [
            (["cli:served"], 3, 0, sidecar.id)]
        assert workers[0]["sdk"].startswith("perdure-python/")
        table = (await perdure_at(sidecar.address, "workers")).ok().out
        assert workers[0]["id"] in table and "cli:served" in table
        assert (await perdure_at(sidecar.address, "workers", "-n", "cli-nobody", "--json")).ok().json() == []

        stats = (await perdure_at(sidecar.address, "stats", "--window", "10m", "--json")).ok().json()
        assert stats["window"] == "600s"
        queued = {f["name"]: f for f in stats["functions"]}["cli:queued"]
        assert (queued["namespace"], queued["pending"], queued["running"], queued["dead"]) == ("default", 2, 0, 0)
        assert "oldest_pending_age" in queued
        table = (await perdure_at(sidecar.address, "stats", "-A")).ok().out
        assert "cli:queued" in table and "PEND" in table and "default" in table
        too_long = await perdure_at(sidecar.address, "stats", "--window", "2d")
        too_long.fails_in_one_line(5, "window")


async def test_events__emit_wakes_the_waiting_job_with_the_payload(sidecar, make_client) -> None:
    worker = make_client()

    @worker.durable("cli:approval")
    async def approval() -> Any:
        return await context().wait_for_event("cli:approved", timeout=60)

    async with worker:
        await worker.wait_until_serving()
        handle = await approval()
        emitted = (await perdure_at(sidecar.address, "events", "emit", "cli:approved", "--payload",
                                    '{"by": "ada"}')).ok()
        assert emitted.out.startswith("emitted event 'cli:approved'")
        assert await handle.result(timeout=30) == {"by": "ada"}
    shown = (await perdure_at(sidecar.address, "events", "show", "cli:approved", "--json")).ok().json()
    assert shown["payload"]["json"] == {"by": "ada"}
    (await perdure_at(sidecar.address, "events", "show", "cli:never")).fails_in_one_line(4, "no event 'cli:never'")
    bad = await perdure_at(sidecar.address, "events", "emit", "cli:approved", "--payload", "{nope")
    assert bad.code == 2 and "--payload" in bad.err


# -- schedules ---------------------------------------------------------------------------------


async def test_schedules__create_list_show_update_pause_resume_delete(sidecar) -> None:
    address = sidecar.address
    created = (await perdure_at(address, "schedules", "create", "cli-nightly", "reports:build", "0 3 * * *",
                                "--timezone", "Europe/Paris", "--args", '["daily"]', "--missed", "skip",
                                "--max-attempts", "5", "--label", "team=ops", "--json")).ok().json()
    assert (created["name"], created["cron"], created["timezone"], created["missed"]) == (
        "cli-nightly", "0 3 * * *", "Europe/Paris", "MISSED_TICK_POLICY_SKIP")
    assert created["job"]["name"] == "reports:build" and created["job"]["payload"]["json"] == {"args": ["daily"]}
    assert created["job"]["retry"]["max_attempts"] == 5 and created["job"]["labels"] == {"team": "ops"}
    assert "next_run_at" in created and created["paused"] is False

    taken = await perdure_at(address, "schedules", "create", "cli-nightly", "reports:build", "0 4 * * *")
    taken.fails_in_one_line(5, "exists", "--replace")
    bad_cron = await perdure_at(address, "schedules", "create", "cli-bad", "reports:build", "61 * * * *")
    bad_cron.fails_in_one_line(5, "cron")

    listed = (await perdure_at(address, "schedules", "list", "--json")).ok().json()
    assert [s["name"] for s in listed] == ["cli-nightly"]
    table = (await perdure_at(address, "schedules", "list")).ok().out
    assert "cli-nightly" in table and "reports:build" in table and "active" in table

    paused = (await perdure_at(address, "schedules", "pause", "cli-nightly", "--json")).ok().json()
    assert paused["paused"] is True and "next_run_at" not in paused
    assert "paused" in (await perdure_at(address, "schedules", "list")).ok().out
    resumed = (await perdure_at(address, "schedules", "resume", "cli-nightly")).ok().out
    assert resumed.startswith("resumed schedule 'cli-nightly'") and "active" in resumed

    updated = (await perdure_at(address, "schedules", "update", "cli-nightly", "--cron", "*/5 * * * *",
                                "--attempt-timeout", "90s", "--label", "tier=gold", "--json")).ok().json()
    assert updated["cron"] == "*/5 * * * *" and updated["job"]["timeout"] == "90s"
    assert updated["job"]["retry"]["max_attempts"] == 5  # kept
    assert updated["job"]["labels"] == {"team": "ops", "tier": "gold"}
    assert updated["job"]["payload"]["json"] == {"args": ["daily"]}
    shown = (await perdure_at(address, "schedules", "show", "cli-nightly")).ok().out
    for words in ("*/5 * * * *", "Europe/Paris", "skip", '("daily")', "max attempts 5", "attempt timeout 1m30s",
                  "team=ops"):
        assert words in shown, words

    assert (await perdure_at(address, "schedules", "delete", "cli-nightly")).ok().out.strip() == \
        "deleted schedule 'cli-nightly'"
    (await perdure_at(address, "schedules", "delete", "cli-nightly")).fails_in_one_line(4, "no schedule 'cli-nightly'")
    (await perdure_at(address, "schedules", "show", "cli-nightly")).fails_in_one_line(4, "no schedule 'cli-nightly'")
    assert (await perdure_at(address, "schedules", "list", "--json")).ok().json() == []


# -- doctor, errors, migrate ---------------------------------------------------------------------


def test_doctor__a_healthy_sidecar_passes_every_check(perdured) -> None:
    sidecar = perdured()
    report = run("--address", sidecar.address, "doctor").ok().out
    for check in ("sidecar", "version", "database", "schema", "workers"):
        assert any(line.split()[:2] == ["ok", check] for line in report.splitlines()), report
    document = run("doctor", "--json", env={"PERDURE_ADDRESS": sidecar.address}).ok().json()
    assert document["ok"] is True
    assert {c["check"]: c["status"] for c in document["checks"]}["schema"] == "ok"
    assert document["info"]["schema_version"] == document["info"]["latest_schema_version"] == len(load_migrations())
    assert document["info"]["version"] == perdure.__version__


def test_unreachable_sidecar__exits_3_with_one_line_and_no_traceback() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    for command in (["doctor"], ["jobs", "list"], ["jobs", "show", "01900000-0000-7000-8000-000000000000"],
                    ["jobs", "enqueue", "x", "--args", "[1]"], ["stats", "--json"], ["workers"],
                    ["events", "emit", "x"], ["schedules", "list"], ["jobs", "watch"]):
        result = run("--address", address, *command)
        result.fails_in_one_line(3, f"cannot reach perdured at {address}")
    doctor = run("--address", address, "doctor", "--json")
    assert doctor.code == 3 and doctor.json()["ok"] is False


def test_bad_command_lines__are_usage_errors_naming_the_option() -> None:
    address = f"127.0.0.1:{free_port()}"  # never reached: the command line is refused first
    for arguments, option in [
        (["jobs", "enqueue", "f", "--args", "[1,"], "--args"),
        (["jobs", "enqueue", "f", "--args", '{"a": 1}'], "--args"),
        (["jobs", "enqueue", "f", "--kwargs", "[1]"], "--kwargs"),
        (["jobs", "enqueue", "f", "--delay", "5 parsecs"], "--delay"),
        (["jobs", "enqueue", "f", "--label", "no-equals-sign"], "--label"),
        (["jobs", "enqueue", "f", "--priority", "5000"], "--priority"),
        (["jobs", "enqueue", "f", "--args", "[1]", "--payload", "1"], "--payload"),
        (["jobs", "list", "--status", "sleeping"], "--status"),
        (["stats", "--window", "soon"], "--window"),
        (["--timeout", "0", "jobs", "list"], "--timeout"),
        (["jobs", "retry", "01900000-0000-7000-8000-000000000000", "--dead"], "--dead"),
    ]:
        result = run("--address", address, *arguments)
        assert result.code == 2, (arguments, result.err)
        assert option in result.err and "Traceback" not in result.err, (arguments, result.err)


def test_migrate__applies_every_migration_to_an_empty_database(empty_database_url) -> None:
    names = [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    first = run("migrate", "--database-url", empty_database_url).ok()
    assert first.out.startswith(f"applied {len(names)} migrations: {', '.join(names)}")
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM perdure.schema_migrations").fetchone()[0] == len(names)
    again = run("migrate", "--json", env={"PERDURE_DATABASE_URL": empty_database_url}).ok().json()
    assert again == {"applied": [], "schema_version": len(names)}
    unreachable = run("migrate", "--database-url", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    unreachable.fails_in_one_line(3, "cannot reach the database")
    assert run("migrate").code == 2  # no database named at all


def test_version_and_help() -> None:
    assert run("--version").ok().out.strip() == f"perdure, version {perdure.__version__}"
    helped = run("--help").ok().out
    assert "Exit codes" in helped and "130" in helped
    for command in ("jobs", "stats", "workers", "events", "schedules", "doctor", "migrate"):
        assert command in helped
