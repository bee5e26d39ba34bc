"""Instructions: the CPU instructions perdured spends per job of a drain, counted by valgrind.

Wall-clock figures on a shared machine swing by a third within an hour; an instruction count
repeats within a few percent, so it tells whether a change to the sidecar made a job cheaper.
perdured runs under `valgrind --tool=callgrind` (about fifty times slower, so the batches of
claims and outcomes grow a little: compare counts with each other, not with a drain's rate);
the count is zeroed when the worker starts and read when the last job has succeeded. Needs
valgrind (`apt install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench import harness, throughput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=3000, help="jobs to drain per run (default 3000)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each with a fresh perdured; the median is reported (default 3)")
    parser.add_argument("--concurrency", type=int, default=256, help="the worker's concurrency (default 256)")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL to use (default: an embedded one in a temporary directory)")


def drain_instructions(url: str, jobs: int, concurrency: int, directory: Path) -> float:
    """Instructions per job that a perdured under callgrind spends draining `jobs` no-op jobs."""
    wrapper = ["valgrind", "--quiet", "--tool=callgrind", f"--callgrind-out-file={directory}/callgrind.%p"]
    with harness.perdured(url, wrapper=wrapper) as sidecar:
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        asyncio.run(throughput.batch_enqueue(sidecar.address, namespace, jobs))
        pid = str(sidecar.process.pid)
        with harness.worker_process(sidecar.address, namespace, concurrency):
            subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
            while harness.count_jobs(url, namespace, "success") < jobs:
                time.sleep(0.1)
            subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
        sidecar.stop(timeout=600)
    dumps = sorted(directory.glob(f"callgrind.{pid}.*"))  # callgrind.PID.1: the one --dump wrote
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump in {directory}")
    for line in dumps[0].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]) / jobs
    raise RuntimeError(f"no instruction total in {dumps[0]}")


def run(args: argparse.Namespace) -> None:
    if min(args.jobs, args.runs, args.concurrency) < 1:
        raise SystemExit("--jobs, --runs and --concurrency must be at least 1")
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("instructions needs valgrind (e.g. apt install valgrind)")
    counts = []
    with harness.database(args.database_url) as db, tempfile.TemporaryDirectory() as directory:
        for number in range(1, args.runs + 1):
            counts.append(drain_instructions(db.url, args.jobs, args.concurrency, Path(directory)))
            print(f"run {number}/{args.runs}: {counts[-1]:,.0f} instructions per drained job", flush=True)
    median = statistics.median(counts)
    print(f"instructions: perdured's instructions per job, draining {args.jobs} no-op jobs with 1 worker "
          f"(concurrency {args.concurrency}), PostgreSQL {db.label}, median of {args.runs} runs: {median:,.0f}")
    print(json.dumps({"scenario": "instructions", "jobs": args.jobs, "runs": args.runs,
                      "sidecar_instructions_per_job": round(median), "runs_instructions_per_job": [round(c) for c in counts],
                      "postgres": db.label}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args())
