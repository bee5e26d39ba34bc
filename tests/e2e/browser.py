"""A real headless Chromium for the dashboard's tests: the system's own (Debian's `chromium`),
installed with apt-get when it is missing and we may (root, apt-get present), driven by
Playwright without any browser download of its own.

PERDURE_TEST_CHROMIUM names another Chromium or Chrome executable to use instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, and quiet on a machine without network: no sync, updates or background requests.
FLAGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
INSTALL_TIMEOUT = 900.0


def flags() -> list[str]:
    # Chromium's sandbox refuses to run as root.
    return [*FLAGS, "--no-sandbox"] if os.geteuid() == 0 else FLAGS


def find_chromium() -> str | None:
    if chosen := os.environ.get("PERDURE_TEST_CHROMIUM"):
        return chosen if os.access(chosen, os.X_OK) else None
    for name in NAMES:
        if found := shutil.which(name):
            return found
    return None


def provision_chromium() -> tuple[str | None, str]:
    """The path of a Chromium to drive, installing Debian's package if need be; or None and why not."""
    if found := find_chromium():
        return found, ""
    if os.environ.get("PERDURE_TEST_CHROMIUM"):
        return None, f"PERDURE_TEST_CHROMIUM={os.environ['PERDURE_TEST_CHROMIUM']} is not an executable"
    if not shutil.which("apt-get"):
        return None, "no Chromium on this machine, and no apt-get to install one (set PERDURE_TEST_CHROMIUM)"
    if os.geteuid() != 0:
        return None, "no Chromium on this machine; installing it needs root (apt-get install chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    try:
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT)
        if result.returncode != 0:  # the package lists may be missing or stale: read them, then try again
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=INSTALL_TIMEOUT)
            result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"apt-get install chromium took more than {INSTALL_TIMEOUT:g} s"
    if found := find_chromium():
        return found, ""
    detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    return None, "apt-get install chromium failed: " + " / ".join(detail)


def artifacts_dir(root: Path) -> Path:
    """Where the browser tests keep their screenshots (git-ignored)."""
    directory = root / "test-artifacts" / "dashboard"
    directory.mkdir(parents=True, exist_ok=True)
    return directory
