"""A sidecar owns its address: a second one on the same address fails to start instead of
silently sharing the port (and splitting the connections between two databases)."""

from __future__ import annotations

import pytest

from perdured.config import Settings
from perdured.server import Sidecar


async def test_second_sidecar_on_the_same_address__fails_to_start(sidecar, database_url) -> None:
    second = Sidecar(Settings(database_url=database_url, listen=sidecar.address, shutdown_grace=1.0))
    try:
        with pytest.raises(RuntimeError, match=f"(bind to address|cannot listen on) {sidecar.address}"):
            await second.start()
    finally:
        await second.stop()
