"""The daemon loads what it runs on, not the Python SDK or rich: each would cost it
megabytes of resident memory for nothing."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from perdured.__main__ import main
sys.argv = ["perdured", "health", "--listen", "127.0.0.1:1"]
try:
    main()
except SystemExit:
    pass
import perdured.server  # everything serve() needs
print(" ".join(name for name in ("perdure._client", "perdure._worker", "opentelemetry", "rich")
               if sys.modules.get(name) is not None))
"""


def test_the_daemon__loads_neither_the_sdk_nor_rich() -> None:
    loaded = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.splitlines()[-1] == ""
