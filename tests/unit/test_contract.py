"""The committed stubs match the contract, and the SDK's public names do not drift by accident."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import perdure

ROOT = Path(__file__).resolve().parents[2]


def test_committed_python_stubs__match_a_fresh_generation() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_protos.py"), "--check", "--lang", "python"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_public_api__is_pinned() -> None:
    assert sorted(perdure.__all__) == [
        "AttemptRecord", "AuthenticationError", "DurableFunction", "ErrorInfo", "EventTimeoutError", "FunctionLimits", "InvalidArgumentError", "JobCancelledError",
        "JobContext", "JobDeadError", "JobDetails", "JobEvent", "JobFailedError", "JobHandle",
        "JobNotFoundError", "JobOptions", "LogInfo", "NonRetryableError", "NotInJobError", "NotStartedError",
        "Perdure", "PerdureError", "PermissionDeniedError", "ProgressInfo", "RateLimit", "Schedule", "ScheduleExistsError",
        "ScheduleNotFoundError", "Schedules", "SidecarUnavailableError", "StepInfo", "StepNotRecordedError",
        "__version__", "context",
    ]


def _contract_lock():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import contract_lock
    finally:
        sys.path.pop(0)
    return contract_lock


def test_contract__has_no_breaking_change_and_its_lock_is_current() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "contract_lock.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_contract_lock__refuses_removals_renumberings_and_type_changes_but_not_additions() -> None:
    lock = _contract_lock()
    locked = lock.current()
    job = "perdure.v1.Job"

    def changed(edit) -> list[str]:
        now = json.loads(json.dumps(locked))
        edit(now)
        return lock.breaking_changes(locked, now)

    def add(now) -> None:
        now["messages"][job]["999"] = {"name": "new_field", "type": "string", "label": "single", "type_name": ""}
        now["services"]["perdure.v1.Jobs"]["NewRpc"] = {"input": "a", "output": "b", "client_streaming": False,
                                                       "server_streaming": False}

    def renumber(now) -> None:
        now["messages"][job]["998"] = now["messages"][job].pop("3")

    def retype(now) -> None:
        now["messages"][job]["5"]["type"] = "int64"

    assert changed(add) == []
    assert changed(lambda now: now["messages"][job].pop("24")) == [
        "perdure.v1.Job: field number 24 (name=labels, type=message, label=repeated, "
        "type_name=perdure.v1.Job.LabelsEntry) was removed"]
    assert any("field number 3" in problem for problem in changed(renumber))
    assert changed(retype) == ["perdure.v1.Job: 5 changed from name=attempt, type=int32, label=single, type_name= "
                               "to name=attempt, type=int64, label=single, type_name="]
    assert changed(lambda now: now["services"]["perdure.v1.Jobs"].pop("CancelJob")) != []
    assert changed(lambda now: now["enums"]["perdure.v1.JobState"].pop("3")) != []
