"""Logging in to the dashboard when the sidecar has tokens.

A person gives one of the sidecar's tokens once, in the page's login form; the dashboard keeps
it on the server in a session, and the browser keeps only the session's random id, in a cookie
(HttpOnly, SameSite=Strict, Secure over HTTPS) that the page's requests and its event stream
carry. Scripts may send `Authorization: Bearer TOKEN` instead.

Each request then calls the sidecar with the session's token (the `forwarded` variable, put
into the metadata of every call by `token_interceptors`), so the sidecar itself decides what the
token may see and do, exactly as for any client. The live feeds, shared by everyone watching a
namespace, call it with the dashboard's own token, after the dashboard has checked that the
person's token may use the namespace.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from perdured.access import Scope
from perdured.auth import Tokens

SESSION_LIFETIME = 12 * 3600.0  # seconds a login lasts
MAX_SESSIONS = 10_000  # the oldest go first beyond this

# The token of the person whose request is being served (None: the dashboard's own).
forwarded: ContextVar[str | None] = ContextVar("perdure_dashboard_token", default=None)


@dataclass(frozen=True)
class Session:
    token: str
    scope: Scope
    expires: float


class Sessions:
    """Logged-in browsers, by the random id their cookie holds. Kept in memory: a restart of
    the sidecar asks everyone to log in again."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self._sessions: dict[str, Session] = {}

    def login(self, token: str) -> tuple[str, Session] | None:
        scope = self.tokens.authenticate(token)
        if scope is None:
            return None
        self._forget_expired()
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session_id = secrets.token_urlsafe(32)
        session = self._sessions[session_id] = Session(token, scope, time.monotonic() + SESSION_LIFETIME)
        return session_id, session

    def find(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id) if session_id else None
        if session is not None and session.expires < time.monotonic():
            del self._sessions[session_id]  # type: ignore[arg-type]
            return None
        return session

    def logout(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for session_id in [key for key, session in self._sessions.items() if session.expires < now]:
            del self._sessions[session_id]


class _Token:
    """Puts `authorization: Bearer <token>` into every call: the person's (`forwarded`) or the
    dashboard's own. (grpc.aio files an interceptor under the first kind it implements: one
    subclass per kind the dashboard uses.)"""

    def __init__(self, own_token: str) -> None:
        self.own_token = own_token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata["authorization"] = f"Bearer {forwarded.get() or self.own_token}"
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)


class _UnaryUnary(_Token, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStream(_Token, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


def token_interceptors(own_token: str) -> list[grpc.aio.ClientInterceptor]:
    """For the dashboard's channel: unary calls (the API) and server streams (WatchJobs)."""
    return [_UnaryUnary(own_token), _UnaryStream(own_token)]
