"""Which namespaces the caller of the current RPC may use.

When tokens are configured, the server's interceptor (auth.py) authenticates every call and
sets `caller` to its token's scope for the rest of the call. Every request's namespace is read
through `validation.namespace` (or `validation.namespace_or_all`), which asks `require` here:
so no RPC can forget the check. Outside an RPC (the schedule runner, the reaper) and when no
tokens are configured, `caller` is None: every namespace is allowed.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    """What one token allows: some namespaces, or all of them (`namespaces` is None)."""

    namespaces: frozenset[str] | None
    label: str = ""  # which token, for logs: "--token", "tokens file line 3" (never the token)

    @property
    def everything(self) -> bool:
        return self.namespaces is None

    def allows(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def describe(self) -> str:
        return "every namespace" if self.namespaces is None else ", ".join(sorted(self.namespaces))


EVERYTHING = Scope(None, "no tokens configured")

caller: ContextVar[Scope | None] = ContextVar("perdure_caller_scope", default=None)


class PermissionDenied(Exception):
    """This token may not use that namespace."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def require(namespace: str) -> None:
    """Raise PermissionDenied unless the current caller may use `namespace`."""
    scope = caller.get()
    if scope is not None and not scope.allows(namespace):
        raise PermissionDenied(f"this token may not use namespace {namespace!r}")


def require_every_namespace(what: str) -> None:
    """Raise PermissionDenied unless the current caller may use every namespace (an Admin call
    without a namespace reads them all)."""
    scope = caller.get()
    if scope is not None and not scope.everything:
        raise PermissionDenied(f"{what} of every namespace needs a token for every namespace; "
                               "this one may use only some: name one of them (namespace)")
