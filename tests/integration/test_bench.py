"""The benchmark scenarios still run: each, at a tiny size, prints its JSON line (figures are
never checked, only that they are there)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> dict[str, object]:
    """Run `python -m bench ARGS`; its last line of output, read as JSON."""
    done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def as_url(conninfo: str) -> str:
    """The test database as a URL, the form --database-url takes (the peer's driver reads no other)."""
    params = conninfo_to_dict(conninfo)
    return f"postgresql://{params['user']}@/{params['dbname']}?host={params['host']}"


@pytest.mark.timeout(300)
def test_scale__reports_each_number_of_sidecars(database_url) -> None:
    figures = bench("scale", "--sidecars", "1,2", "--jobs", "200", "--callers", "2", "--duration", "0.5",
                    "--runs", "1", "--database-url", as_url(database_url))
    assert figures["scenario"] == "scale"
    assert set(figures["sidecars"]) == {"1", "2"}  # type: ignore[arg-type]
    for one in figures["sidecars"].values():  # type: ignore[attr-defined]
        assert one["drain_per_s"] > 0 and one["mixed_per_s"] > 0 and one["lag_ms"]["p95"] > 0


@pytest.mark.timeout(300)
def test_growth__fills_a_history_of_finished_jobs_and_reports_each_size(database_url) -> None:
    figures = bench("growth", "--sizes", "0,1000", "--jobs", "5", "--runs", "1", "--database-url", as_url(database_url))
    assert figures["scenario"] == "growth"
    assert [size["history"] for size in figures["sizes"]] == [0, 1000]  # type: ignore[attr-defined]
    with psycopg.connect(database_url) as conn:
        # The history as perdured would have left it: finished jobs with one attempts row per
        # attempt, the last one's outcome matching the job's; none deleted by the sidecars.
        history = conn.execute("SELECT state, count(*) FROM perdure.jobs WHERE payload <> '{\"args\":[]}' "
                               "GROUP BY state ORDER BY state").fetchall()
        assert history == [("dead", 100), ("success", 900)]
        mismatched = conn.execute("""
            SELECT count(*) FROM perdure.jobs j
            WHERE (SELECT count(*) FROM perdure.attempts a WHERE a.job_id = j.id) <> j.attempt
               OR (SELECT outcome FROM perdure.attempts a WHERE a.job_id = j.id AND a.number = j.attempt)
                  <> CASE j.state WHEN 'success' THEN 'succeeded' ELSE 'failed' END""").fetchone()
        assert mismatched == (0,)


@pytest.mark.timeout(300)
def test_idle__counts_queries_and_measures_memory_idle_and_in_flight(database_url) -> None:
    figures = bench("idle", "--window", "2", "--in-flight", "50", "--database-url", as_url(database_url))
    assert figures["scenario"] == "idle" and figures["in_flight"] == 50
    assert figures["counted_as"] in ("statements", "transactions")  # pg_stat_statements, if loaded there
    assert figures["queries_per_s"] >= 0 and figures["transactions_per_s"] >= 0  # type: ignore[operator]
    assert figures["idle_rss_mb"] > 0 and figures["in_flight_rss_mb"] > 0  # type: ignore[operator]


@pytest.mark.timeout(300)
def test_throughput__reports_the_median_of_its_runs(database_url) -> None:
    figures = bench("throughput", "--jobs", "200", "--callers", "2", "--duration", "0.5", "--runs", "2",
                    "--database-url", as_url(database_url))
    assert figures["scenario"] == "throughput" and figures["runs"] == 2
    for key in ("batch_enqueue_per_s", "drain_per_s", "mixed_per_s"):
        assert figures[key] > 0, key  # type: ignore[operator]
    assert figures["mixed_round_trip_ms"]["p95"] > 0  # type: ignore[index]


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="the instructions scenario runs perdured under valgrind")
def test_instructions__counts_what_perdured_spends_per_drained_job(database_url) -> None:
    figures = bench("instructions", "--jobs", "100", "--runs", "1", "--database-url", as_url(database_url))
    assert figures["scenario"] == "instructions" and figures["runs_instructions_per_job"] == [
        figures["sidecar_instructions_per_job"]]
    assert figures["sidecar_instructions_per_job"] > 10_000  # type: ignore[operator]


def _insert_pending(conn: psycopg.Connection, namespace: str, count: int) -> None:
    conn.execute("INSERT INTO perdure.jobs (id, namespace, name, payload, payload_encoding, max_attempts, backoff, "
                 "initial_delay, max_delay, jitter, timeout, run_at) "
                 "SELECT gen_random_uuid(), %s, 'bench:noop', '', 'json', 1, 'fixed', '1 s', '1 s', 0, '1 s', now() "
                 "FROM generate_series(1, %s)", (namespace, count))


def _finish_later(url: str, namespace: str, dead: int) -> threading.Thread:
    """In a moment, every job of `namespace` ends: `dead` of them dead, the others succeeded."""
    def finish() -> None:
        time.sleep(0.5)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE perdure.jobs SET state = 'running' WHERE namespace = %s", (namespace,))
            time.sleep(0.3)  # running is not finished either
            conn.execute("UPDATE perdure.jobs SET finished_at = now(), state = CASE WHEN id IN ("
                         "SELECT id FROM perdure.jobs WHERE namespace = %s LIMIT %s) THEN 'dead' ELSE 'success' END "
                         "WHERE namespace = %s", (namespace, dead, namespace))
    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_wait_drained__waits_for_every_job_and_returns_when_the_last_finished(database_url, db) -> None:
    from bench import harness

    _insert_pending(db, "drained", 3)
    thread = _finish_later(database_url, "drained", dead=0)
    finished = harness.wait_drained(database_url, "drained", 3, poll=0.01)
    thread.join()
    last = db.execute("SELECT extract(epoch FROM max(finished_at))::float8 FROM perdure.jobs").fetchone()
    assert last is not None and finished == last[0]


def test_wait_drained__refuses_a_drain_where_a_job_did_not_succeed(database_url, db) -> None:
    from bench import harness

    _insert_pending(db, "drained", 3)
    thread = _finish_later(database_url, "drained", dead=1)
    with pytest.raises(RuntimeError, match="2 of 3 jobs succeeded in drained"):
        harness.wait_drained(database_url, "drained", 3, poll=0.01)
    thread.join()
