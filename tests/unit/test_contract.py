"""The committed stubs match the contract, and the SDK's public names do not drift by accident."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import perdure

ROOT = Path(__file__).resolve().parents[2]


def test_committed_python_stubs__match_a_fresh_generation() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_protos.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_public_api__is_pinned() -> None:
    assert sorted(perdure.__all__) == [
        "AttemptRecord", "DurableFunction", "ErrorInfo", "EventTimeoutError", "FunctionLimits", "InvalidArgumentError", "JobCancelledError",
        "JobContext", "JobDeadError", "JobDetails", "JobEvent", "JobFailedError", "JobHandle",
        "JobNotFoundError", "JobOptions", "LogInfo", "NonRetryableError", "NotInJobError", "NotStartedError",
        "Perdure", "PerdureError", "ProgressInfo", "RateLimit", "Schedule", "ScheduleExistsError",
        "ScheduleNotFoundError", "Schedules", "SidecarUnavailableError", "StepInfo", "StepNotRecordedError",
        "__version__", "context",
    ]
