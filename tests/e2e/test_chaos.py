"""The chaos soak at a bounded size: a few hundred jobs of every kind on two sidecars and four
worker processes, while workers and sidecars are killed with SIGKILL (and restarted) and
PostgreSQL quits at once and starts again. Afterwards the database must show every promise
kept. The soak itself is bench/chaos.py (`python -m bench chaos` runs it larger, with figures);
its processes' logs are left in the test's temporary directory."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.chaos import Plan, soak

PLAN = Plan(jobs=300, seconds=20, sidecars=2, workers=4, concurrency=8, kill_every=1.5, postgres_restarts=1,
            settle=120, seed=7)


@pytest.mark.timeout(300)
async def test_chaos__every_accepted_job_ends_once_whatever_is_killed(tmp_path) -> None:
    outcome = await soak(PLAN, tmp_path)

    # The chaos happened: both kinds of kill, a restart of PostgreSQL, attempts taken down.
    kills = Counter(kill.kind for kill in outcome.kills)
    assert kills["worker"] >= 1 and kills["sidecar"] >= 1 and kills["postgres"] == PLAN.postgres_restarts
    assert outcome.attempts["worker_lost"] + outcome.attempts["lease_expired"] > 0
    # Every enqueue was accepted, through kills and the outage, once per call (once per key).
    assert outcome.enqueue_errors == []
    assert len({job.id for job in outcome.accepted}) == PLAN.jobs
    assert outcome.children > 0 and outcome.attempts["suspended"] > 0
    # Every invariant, with the jobs that break it: none lost, none left unfinished or running
    # without a lease, no duplicate job, success or step, dead only where the job asked for it.
    broken = {name: offenders for name, offenders in outcome.findings.items() if offenders}
    assert broken == {}, f"the processes' logs are in {tmp_path}"
    assert outcome.lost == 0 and outcome.duplicates == 0
    assert outcome.states["dead"] > 0 and outcome.states["success"] > 0
