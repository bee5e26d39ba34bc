"""The SDK and the sidecar are typed, and mypy finds nothing wrong (settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mypy__finds_no_error_in_the_sdk_or_the_sidecar(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the dev dependencies")
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), "sdk_python/perdure", "sidecar/perdured"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_packages__are_marked_typed() -> None:
    assert (ROOT / "sdk_python" / "perdure" / "py.typed").exists()
    assert (ROOT / "sidecar" / "perdured" / "py.typed").exists()
