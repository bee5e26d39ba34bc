"""The web dashboard perdured serves with --dashboard-listen (off unless given).

`Dashboard` runs an aiohttp server in the sidecar's event loop; what it serves is in app.py
(the HTTP side), feed.py (live updates), shape.py (messages as JSON) and static/ (the page:
plain JavaScript modules and CSS, no build step, nothing fetched from elsewhere).
"""

from __future__ import annotations

import ssl

import grpc
from aiohttp import web

from perdured.auth import Tokens
from perdured.config import is_loopback
from perdured.dashboard.app import AccessLogger, DashboardApp
from perdured.dashboard.login import Sessions, token_interceptors
from perdured.http import start_site
from perdured.logs import log

__all__ = ["Dashboard", "dial_address"]

SHUTDOWN_TIMEOUT = 2.0  # seconds open requests get when the sidecar stops


def dial_address(address: str) -> str:
    """Where to reach a gRPC server bound to `address` from this machine: a wildcard host
    (every interface) is reached on loopback. A Unix socket (`unix:PATH`) is reached as it is."""
    if address.startswith("unix:"):
        return address
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0"):
        return f"127.0.0.1:{port}"
    if host in ("[::]", "::"):
        return f"[::1]:{port}"
    return address


class Dashboard:
    """The dashboard of the sidecar serving gRPC at `sidecar_address` (its private Unix socket).

    With `tokens`, every request needs a login (see login.py), and `own_token` (one of them, for
    every namespace) is what its live feeds call the sidecar with. With `ssl_context` it serves
    HTTPS."""

    def __init__(self, sidecar_address: str, *, max_message_bytes: int, tokens: Tokens | None = None,
                 own_token: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.sidecar_address = sidecar_address
        self.max_message_bytes = max_message_bytes
        self.tokens = tokens or Tokens()
        self.own_token = own_token
        self.ssl_context = ssl_context
        self.url = ""
        self._channel: grpc.aio.Channel | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, listen: str) -> None:
        """Serve on `listen` (HOST:PORT; port 0 picks one: see `url`)."""
        host = listen.rpartition(":")[0].strip("[]")
        if self.tokens and not self.own_token:
            raise ValueError("a dashboard with tokens needs its own token, for its live feeds")
        self._channel = grpc.aio.insecure_channel(dial_address(self.sidecar_address), options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ], interceptors=token_interceptors(self.own_token) if self.tokens and self.own_token else None)
        loopback = is_loopback(host)
        routes = DashboardApp(self._channel, check_host=loopback,
                              sessions=Sessions(self.tokens) if self.tokens else None,
                              secure=self.ssl_context is not None)
        self._runner = web.AppRunner(routes.build(), access_log_class=AccessLogger, handle_signals=False,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        try:
            self.url = await start_site(self._runner, listen, self.ssl_context, "the dashboard") + "/"
        except OSError:
            await self.stop()
            raise
        if not loopback and not (self.tokens and self.ssl_context):  # allowed by --insecure or --dashboard-allow-remote
            log.warning("dashboard.remote", listen=listen,
                        warning="the dashboard serves beyond this machine without TLS and a login: anyone who "
                                "reaches this address can read payloads and cancel or retry jobs (or the token "
                                "they log in with); keep it behind something that authenticates")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
