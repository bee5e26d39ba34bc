"""Set up a development environment from nothing, then run the demo or the tests.

    python3 scripts/dev.py demo            # the quick-start example on the embedded PostgreSQL
    python3 scripts/dev.py test [ARGS...]  # the whole test suite (ARGS go to pytest)

Needs only Python >= 3.11 with pip and venv: everything else goes into ./.venv. Where Node.js
and npm are installed, the Node.js SDK's pinned packages go into sdk_examples/node/node_modules,
and the tests run it too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
NODE_SDK = ROOT / "sdk_examples" / "node"


def set_up() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script is what tells users so
        sys.exit(f"Perdure needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV.relative_to(ROOT)}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"], check=True)
    set_up_node()


def set_up_node() -> None:
    """npm ci in sdk_examples/node, when its lock file changed since the last install."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        print(f"{' and '.join(missing)} not found: the Node.js SDK and its tests are skipped", flush=True)
        return
    installed = NODE_SDK / "node_modules" / ".package-lock.json"
    lock = NODE_SDK / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    print("installing the Node.js SDK's packages (npm ci)", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_SDK, check=True)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__.strip())
        return 2
    set_up()
    if sys.argv[1] == "demo":
        return subprocess.run([PYTHON, ROOT / "sdk_examples" / "python" / "quickstart.py"], cwd=ROOT).returncode
    return subprocess.run([PYTHON, "-m", "pytest", *sys.argv[2:]], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
