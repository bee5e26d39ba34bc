"""Chaos soak: jobs of every kind run while worker processes and sidecars are killed (SIGKILL)
and restarted and PostgreSQL is restarted; then every promise is checked in the database.

    python -m bench chaos [--jobs N] [--seconds S] [--sidecars K] [--workers W] [--seed X]

Several sidecars and worker processes (bench/chaos_app.py) share one embedded PostgreSQL of
the soak's own. Jobs are enqueued through every sidecar over the first part of the soak: plain
ones, ones that fail their first attempts on purpose, multi-step ones with checkpoints (each
step's side effect is a row of chaos.effects), durable sleepers, parents of children, calls
repeated with one idempotency key, and a few that ask to end dead (a non-retryable error, or
every attempt failing). Meanwhile, every couple of seconds a random worker process or sidecar
is killed with SIGKILL and started again (a sidecar on its own address, so that its workers
come back to it), and PostgreSQL quits at once (crash recovery) and starts again.

Once every job has ended, the database must show: every accepted job exists and has ended;
no job that nobody enqueued; one recorded success per successful job, none for the others;
no recorded step run again in a later attempt; no job running without a live lease; dead
jobs only where the job's logic asked for it; one job per idempotency key and one child per
spawn. Recovery after a kill is the time until the last of the jobs the victim held runs
again (a new attempt starts).

tests/e2e/test_chaos.py runs this same soak at a small size and asserts every invariant;
this command prints the figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench import harness
from bench.chaos_app import EFFECTS_TABLE, RETRIES
from perdure import Perdure
from perdured.launch import spawn

ROOT = Path(__file__).resolve().parent.parent
# How often each kind of job is enqueued; "idempotent" is chaos:plain called three times with one key.
KINDS = {"plain": 25, "retried": 15, "steps": 20, "sleeper": 10, "parent": 10, "idempotent": 10,
         "refused": 5, "exhausted": 5}
EXPECTED_DEAD = {"refused", "exhausted"}
TERMINAL = {"success", "dead", "cancelled"}
ENQUEUE_SHARE = 0.7  # of the soak's time over which the jobs are enqueued


@dataclass(frozen=True)
class Plan:
    jobs: int = 3000
    seconds: float = 120.0  # of chaos
    sidecars: int = 2
    workers: int = 6
    concurrency: int = 8  # per worker process
    kill_every: float = 2.0  # mean seconds between kills
    postgres_restarts: int = 2
    lease: float = 2.0
    settle: float = 300.0  # the most the jobs may take to end once the chaos stops
    seed: int = 1


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    args: tuple[Any, ...]


@dataclass
class Kill:
    kind: str  # worker | sidecar | postgres
    at: float  # wall-clock time of the kill
    held: dict[str, int]  # job id -> the attempt the victim was running
    back_at: float = 0.0  # postgres: when it served again
    recovery: float | None = None  # seconds until the victim's jobs ran again (None: it held none)


@dataclass
class Outcome:
    plan: Plan
    postgres: str
    accepted: list[Job]
    children: int
    enqueue_errors: list[str]
    kills: list[Kill]
    states: Counter[str]
    attempts: Counter[str]
    # Each invariant, with the jobs (or keys) that break it: all empty when every promise held.
    findings: dict[str, list[str]]
    seconds: float  # from the first enqueue until every job had ended

    @property
    def lost(self) -> int:
        return len(self.findings["lost"])

    @property
    def duplicates(self) -> int:
        return sum(len(self.findings[name]) for name in (
            "phantom_jobs", "success_not_once", "step_run_again", "idempotency_split", "children_not_once"))


# -- the processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """The soak's sidecars, each on an address of its own to come back on, and its workers."""

    url: str
    plan: Plan
    logs: Path
    listen: list[str] = field(default_factory=list)
    sidecars: list[harness.Perdured] = field(default_factory=list)
    workers: list[tuple[int, subprocess.Popen[str]]] = field(default_factory=list)  # (sidecar, process)

    def start_sidecar(self, index: int) -> harness.Perdured:
        with open(self.logs / f"sidecar-{index}.log", "ab") as log:
            process, address = spawn("--database-url", self.url, "--log-level", "warning", "--listen",
                                     self.listen[index], "--lease", str(self.plan.lease), "--shutdown-grace", "1",
                                     stderr=log)
        return harness.Perdured(process, address)

    def start_worker(self, sidecar: int) -> subprocess.Popen[str]:
        with open(self.logs / f"workers-of-{sidecar}.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "bench.chaos_app", "--address", self.listen[sidecar],
                                     "--database-url", self.url, "--concurrency", str(self.plan.concurrency)],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)

    async def start(self) -> None:
        self.listen = [f"127.0.0.1:{free_port()}" for _ in range(self.plan.sidecars)]
        for index in range(self.plan.sidecars):
            self.sidecars.append(await asyncio.to_thread(self.start_sidecar, index))
        self.workers = [(n % self.plan.sidecars, self.start_worker(n % self.plan.sidecars))
                        for n in range(self.plan.workers)]
        for _, process in self.workers:
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
            if line.strip() != "ready":
                raise RuntimeError(f"a chaos worker did not start; see {self.logs}")

    def stop(self) -> None:
        for _, process in self.workers:
            if process.poll() is None:
                process.terminate()
        for _, process in self.workers:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for sidecar in self.sidecars:
            sidecar.stop()


# -- the soak --------------------------------------------------------------------------------


def call(kind: str, n: int, rng: random.Random) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The function, arguments and options of job number n of this kind."""
    args: tuple[Any, ...] = {
        "retried": lambda: (n, rng.randint(1, 2)),  # failures on purpose before it succeeds
        "steps": lambda: (n, rng.randint(2, 5)),  # steps
        "sleeper": lambda: (n, round(rng.uniform(0.2, 2.0), 2)),  # seconds asleep
        "parent": lambda: (n, rng.randint(1, 3)),  # children
    }.get(kind, lambda: (n,))()
    name = "chaos:plain" if kind == "idempotent" else f"chaos:{kind}"
    options = {**RETRIES, "max_attempts": 2} if kind == "exhausted" else dict(RETRIES)
    if kind == "idempotent":
        options["idempotency_key"] = f"key-{n}"
    return name, args, options


async def produce(clients: list[Perdure], plan: Plan, rng: random.Random, accepted: list[Job],
                  keys: dict[str, set[str]], errors: list[str]) -> None:
    """Enqueue the plan's jobs at a steady pace, through every sidecar in turn."""
    loop = asyncio.get_running_loop()
    start, spacing = loop.time(), plan.seconds * ENQUEUE_SHARE / plan.jobs
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=plan.jobs)

    async def enqueue(n: int, kind: str) -> None:
        name, args, options = call(kind, n, rng)
        try:
            if kind == "idempotent":  # the same call three times at once, through different sidecars
                handles = await asyncio.gather(*(clients[(n + k) % len(clients)].enqueue(name, *args, **options)
                                                 for k in range(3)))
                keys[options["idempotency_key"]] = {h.id for h in handles}
                accepted.extend(Job(id, kind, args) for id in keys[options["idempotency_key"]])
            else:
                handle = await clients[n % len(clients)].enqueue(name, *args, **options)
                accepted.append(Job(handle.id, kind, args))
        except Exception as exc:  # an accepted job is never refused: every one is a finding
            errors.append(f"{kind} #{n}: {exc!r}")

    tasks = []
    for n, kind in enumerate(kinds):
        await asyncio.sleep(max(0.0, start + n * spacing - loop.time()))
        tasks.append(asyncio.create_task(enqueue(n, kind)))
    await asyncio.gather(*tasks)


async def held(url: str, column: str, pattern: str) -> dict[str, int]:
    """The running jobs whose sidecar_id or worker_id matches `pattern`, with their attempt."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(f"SELECT id::text, attempt FROM perdure.jobs WHERE state = 'running' "
                                    f"AND {column} LIKE %s", (pattern,))
        return {job_id: attempt for job_id, attempt in await cursor.fetchall()}


async def wreak(cluster: Cluster, postgres: harness.RestartablePostgres, plan: Plan, rng: random.Random,
                producing: asyncio.Task[None]) -> list[Kill]:
    """Kill and restart processes until the plan's time is up and every job is enqueued."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    restarts = [start + plan.seconds * (k + 1) / (plan.postgres_restarts + 1) for k in range(plan.postgres_restarts)]
    kills: list[Kill] = []
    while loop.time() < start + plan.seconds or not producing.done() or restarts:
        await asyncio.sleep(rng.uniform(0.5, 1.5) * plan.kill_every)
        if restarts and loop.time() >= restarts[0]:
            restarts.pop(0)
            kill = Kill("postgres", time.time(), {})
            await asyncio.to_thread(postgres.stop, True)
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            await asyncio.to_thread(postgres.start)
            kill.back_at = time.time()
        elif choose(kills, rng) == "sidecar":
            index = rng.randrange(len(cluster.sidecars))
            victim = cluster.sidecars[index]
            kill = Kill("sidecar", 0.0, await held(cluster.url, "sidecar_id", f"%-{victim.process.pid}-______"))
            kill.at = time.time()
            victim.process.kill()
            victim.process.wait()
            cluster.sidecars[index] = await asyncio.to_thread(cluster.start_sidecar, index)
        else:
            index = rng.randrange(len(cluster.workers))
            sidecar, process = cluster.workers[index]
            kill = Kill("worker", 0.0, await held(cluster.url, "worker_id", f"%/pid-{process.pid}@%"))
            kill.at = time.time()
            process.kill()
            process.wait()
            cluster.workers[index] = (sidecar, cluster.start_worker(sidecar))
        kills.append(kill)
    return kills


def choose(kills: list[Kill], rng: random.Random) -> str:
    """Which kind of process to kill next: a worker first, then a sidecar, then either."""
    done = {kill.kind for kill in kills}
    if "worker" not in done:
        return "worker"
    if "sidecar" not in done:
        return "sidecar"
    return "sidecar" if rng.random() < 0.35 else "worker"


async def settle(url: str, timeout: float) -> None:
    """Wait until every job has ended, or the timeout (the unfinished ones are then findings)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cursor = await conn.execute("SELECT count(*) FROM perdure.jobs WHERE state <> ALL(%s)", (list(TERMINAL),))
            row = await cursor.fetchone()
        if row is not None and row[0] == 0:
            return
        await asyncio.sleep(0.5)


def ended_as_asked(job: Job, state: str, result: bytes | None) -> bool:
    """Dead if its logic asks for it, else a success with the right result."""
    if job.kind in EXPECTED_DEAD:
        return state == "dead"
    expected = sum(range(job.args[1])) if job.kind == "parent" else job.args[0]
    return state == "success" and result is not None and json.loads(result) == expected


async def inspect(url: str, accepted: list[Job], keys: dict[str, set[str]],
                  kills: list[Kill]) -> tuple[dict[str, list[str]], Counter[str], Counter[str], int]:
    """Check every invariant in the database, and measure each kill's recovery. Returns the
    findings, the jobs' end states, the attempts' outcomes and the number of children."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async def rows(sql: str, *params: Any) -> list[tuple[Any, ...]]:
            return await (await conn.execute(sql, params or None)).fetchall()

        jobs = {row[0]: row[1:] for row in await rows(
            "SELECT id::text, state, parent_id::text, result, coalesce(lease_expires_at > now(), false),"
            " idempotency_key FROM perdure.jobs")}
        attempts = await rows("SELECT job_id::text, number, outcome, extract(epoch FROM started_at)::float8"
                              " FROM perdure.attempts")
        steps = await rows("SELECT job_id::text, name, attempt FROM perdure.steps"
                           " WHERE status = 'succeeded' AND name LIKE 'effect-%'")
        effects = await rows("SELECT job_id::text, step, attempt FROM chaos.effects")
        for kill in kills:
            if kill.kind == "postgres":  # when the first job started after the restart
                [(first,)] = await rows("SELECT extract(epoch FROM min(started_at))::float8 FROM perdure.attempts"
                                        " WHERE started_at > to_timestamp(%s)", kill.back_at)
                kill.recovery = None if first is None else first - kill.at

    by_id = {job.id: job for job in accepted}
    succeeded = Counter(job_id for job_id, _, outcome, _ in attempts if outcome == "succeeded")
    children = Counter(parent for _, parent, *_ in jobs.values() if parent is not None)
    recorded = Counter(job_id for job_id, _, _ in steps)
    runs: dict[tuple[str, str], list[int]] = {}  # (job, step) -> the attempts in which it ran
    for job_id, step, attempt in effects:
        runs.setdefault((job_id, step), []).append(attempt)
    expected_steps = {"steps": lambda job: job.args[1], "sleeper": lambda job: 2}
    findings: dict[str, list[str]] = {
        "lost": [job.id for job in accepted if job.id not in jobs],
        "not_ended": [id for id, (state, *_) in jobs.items() if state not in TERMINAL],
        "running_without_lease": [id for id, (state, _, _, leased, _) in jobs.items()
                                  if state == "running" and not leased],
        # A job nobody enqueued: an enqueue (or a child's spawn) that made a second job.
        "phantom_jobs": [id for id, (_, parent, *_) in jobs.items() if parent is None and id not in by_id]
                        + [parent for parent in children if parent not in by_id],
        "success_not_once": [id for id, (state, *_) in jobs.items()
                             if succeeded[id] != (1 if state == "success" else 0)],
        "unexpected_dead": [id for id, (state, *_) in jobs.items()
                            if state == "dead" and (id not in by_id or by_id[id].kind not in EXPECTED_DEAD)],
        "wrong_end": [job.id for job in accepted if job.id in jobs and jobs[job.id][0] in TERMINAL
                      and not ended_as_asked(job, jobs[job.id][0], jobs[job.id][2])],
        # A recorded step ran once in the attempt that recorded it and in no later one; it may
        # have run in earlier attempts that died before recording it (at least once).
        "step_run_again": [f"{id}/{name}" for id, name, attempt in steps
                           if runs.get((id, name), []).count(attempt) != 1
                           or max(runs.get((id, name), [attempt])) > attempt],
        "steps_unrecorded": [job.id for job in accepted if job.kind in expected_steps and job.id in jobs
                             and jobs[job.id][0] == "success" and recorded[job.id] != expected_steps[job.kind](job)],
        "idempotency_split": [key for key, ids in keys.items()
                              if len(ids) != 1 or sum(1 for row in jobs.values() if row[4] == key) != 1],
        "children_not_once": [job.id for job in accepted if job.kind == "parent" and children[job.id] != job.args[1]],
    }
    history: dict[str, list[tuple[int, str, float]]] = {}
    for job_id, number, outcome, started in attempts:
        history.setdefault(job_id, []).append((number, outcome, started))
    for kill in kills:
        if kill.kind != "postgres":
            kill.recovery = recovery(kill, history)
    states = Counter(state for state, *_ in jobs.values())
    outcomes = Counter(outcome for _, _, outcome, _ in attempts)
    return findings, states, outcomes, sum(children.values())


def recovery(kill: Kill, history: dict[str, list[tuple[int, str, float]]]) -> float | None:
    """Seconds from the kill until the last of the jobs it took down started a new attempt."""
    again = []
    for job_id, attempt in kill.held.items():
        attempts = history.get(job_id, [])
        lost = any(n == attempt and outcome in ("worker_lost", "lease_expired") for n, outcome, _ in attempts)
        later = [started for n, _, started in attempts if n > attempt]
        if lost and later:
            again.append(min(later) - kill.at)
    return max(again) if again else None


async def soak(plan: Plan, logs: Path) -> Outcome:
    """Run the soak of `plan` on a PostgreSQL of its own; the processes' logs go to `logs`."""
    rng = random.Random(plan.seed)
    with harness.restartable_postgres() as postgres:
        async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as conn:
            await conn.execute(EFFECTS_TABLE)
            version = (await (await conn.execute("SHOW server_version")).fetchone() or ("?",))[0]
        cluster = Cluster(postgres.url, plan, logs)
        try:
            await cluster.start()
            async with clients_of(cluster.listen) as clients:
                accepted: list[Job] = []
                keys: dict[str, set[str]] = {}
                errors: list[str] = []
                began = time.monotonic()
                producing = asyncio.create_task(produce(clients, plan, rng, accepted, keys, errors))
                kills = await wreak(cluster, postgres, plan, rng, producing)
                await producing
                await settle(postgres.url, plan.settle)
                seconds = time.monotonic() - began
                findings, states, attempts, children = await inspect(postgres.url, accepted, keys, kills)
        finally:
            await asyncio.to_thread(cluster.stop)
    return Outcome(plan, f"embedded {version.split()[0]}", accepted, children, errors, kills, states, attempts,
                   findings, seconds)


@contextlib.asynccontextmanager
async def clients_of(addresses: list[str]) -> AsyncIterator[list[Perdure]]:
    """One client per sidecar, which keeps trying an enqueue as long as the soak may last."""
    clients = [Perdure(address=address, retry_unavailable=600) for address in addresses]
    try:
        for client in clients:
            await client.start()
        yield clients
    finally:
        for client in clients:
            await client.stop()


# -- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Plan()
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help=f"jobs to enqueue (default {defaults.jobs})")
    parser.add_argument("--seconds", type=float, default=defaults.seconds,
                        help=f"seconds of kills (default {defaults.seconds:g})")
    parser.add_argument("--sidecars", type=int, default=defaults.sidecars)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="per worker process")
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every, help="mean seconds between kills")
    parser.add_argument("--postgres-restarts", type=int, default=defaults.postgres_restarts)
    parser.add_argument("--seed", type=int, default=defaults.seed)


def spread(values: list[float]) -> str:
    if not values:
        return f"{'-':>8}{'-':>8}{'-':>8}"
    return f"{min(values):>8.2f}{statistics.median(values):>8.2f}{max(values):>8.2f}"


def report(outcome: Outcome) -> None:
    plan = outcome.plan
    kinds = Counter(job.kind for job in outcome.accepted)
    print(f"chaos: {len(outcome.accepted)} jobs accepted ({', '.join(f'{k} {kinds[k]}' for k in KINDS)}) "
          f"and {outcome.children} children; {plan.sidecars} sidecars, {plan.workers} worker processes "
          f"(concurrency {plan.concurrency}), lease {plan.lease:g} s, PostgreSQL {outcome.postgres}, seed {plan.seed}")
    print(f"{len(outcome.kills)} kills over {plan.seconds:g} s; every job ended {outcome.seconds:.1f} s after the first enqueue")
    print(f"{'kill -9':<12}{'kills':>7}{'held jobs':>11}{'recovery s: min':>17}{'median':>8}{'max':>8}")
    for kind in ("worker", "sidecar", "postgres"):
        kills = [k for k in outcome.kills if k.kind == kind]
        recoveries = [k.recovery for k in kills if k.recovery is not None]
        label = "postgres*" if kind == "postgres" else kind
        print(f"{label:<12}{len(kills):>7}{sum(len(k.held) for k in kills):>11}{'':>9}{spread(recoveries)}")
    print("* PostgreSQL quits at once (crash recovery when it starts again); its recovery is the time until "
          "a job starts after the restart")
    print("end states: " + ", ".join(f"{state} {count}" for state, count in sorted(outcome.states.items())))
    print("attempts: " + ", ".join(f"{name} {count}" for name, count in outcome.attempts.most_common()))
    print(f"lost {outcome.lost}, duplicates {outcome.duplicates}, enqueue errors {len(outcome.enqueue_errors)}")
    for name, offenders in outcome.findings.items():
        print(f"  {name:<24}{len(offenders):>6}  {' '.join(offenders[:3])}")
    recovery = {kind: [round(k.recovery, 3) for k in outcome.kills if k.kind == kind and k.recovery is not None]
                for kind in ("worker", "sidecar", "postgres")}
    print(json.dumps({
        "scenario": "chaos", "jobs": len(outcome.accepted), "children": outcome.children,
        "kills": dict(Counter(k.kind for k in outcome.kills if k.kind != "postgres")),
        "postgres_restarts": sum(1 for k in outcome.kills if k.kind == "postgres"),
        "recovery_s": {kind: {"min": min(v), "median": round(statistics.median(v), 3), "max": max(v)}
                       for kind, v in recovery.items() if v},
        "lost": outcome.lost, "duplicates": outcome.duplicates, "enqueue_errors": len(outcome.enqueue_errors),
        "findings": {name: len(offenders) for name, offenders in outcome.findings.items()},
        "states": dict(outcome.states), "seconds": round(outcome.seconds, 1),
    }))


def run(args: argparse.Namespace) -> None:
    plan = Plan(jobs=args.jobs, seconds=args.seconds, sidecars=args.sidecars, workers=args.workers,
                concurrency=args.concurrency, kill_every=args.kill_every, postgres_restarts=args.postgres_restarts,
                seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="perdure-chaos-") as logs:
        report(asyncio.run(soak(plan, Path(logs))))
