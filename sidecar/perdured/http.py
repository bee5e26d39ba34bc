"""The HTTP side of perdured (the dashboard, the metrics): starting an aiohttp site the same way."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web


async def start_site(runner: web.AppRunner, listen: str, ssl_context: ssl.SSLContext | None, what: str) -> str:
    """Serve `runner` (set up) on `listen`, HOST:PORT: an empty host is every interface, as
    config.py reads it; port 0 picks one. Returns the base URL it serves, e.g.
    "https://127.0.0.1:7434". A port that cannot be had is an OSError that names `what`."""
    from aiohttp import web

    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]") or None, int(port), ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve {what} on {listen}: {exc.strerror or exc}") from exc
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return f"{'https' if ssl_context else 'http'}://{shown}:{bound_port}"
