"""Tokens: who may call the sidecar, and in which namespaces.

Tokens come from `--token` (one token for every namespace) and `--tokens-file` (one token per
line with the namespaces it may use), read once at start and never logged. A client sends its
token with every call as the gRPC metadata `authorization: Bearer <token>`; the dashboard and
the metrics endpoint take the same tokens.

When tokens are configured, the interceptor below refuses a call without a known token
(UNAUTHENTICATED) and gives every other call its token's scope (access.caller), which
`validation.namespace` checks wherever a request names a namespace (PERMISSION_DENIED).
Only the standard health check (grpc.health.v1) is open: probes carry no token.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

from perdured.access import Scope, caller
from perdured.logs import add_secret, log

OPEN_METHODS = ("/grpc.health.v1.Health/",)  # prefixes of methods that need no token
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: fits a header and a line of the file
SHORT_TOKEN = 16  # fewer characters than this get a warning at start
_NAMESPACE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # as validation.namespace accepts them
_BEARER = re.compile(r"bearer\s+(\S+)\s*", re.IGNORECASE)

MISSING_TOKEN = ("this sidecar needs a token: send it as the metadata 'authorization: Bearer <token>' "
                 "(the SDK's token option, or PERDURE_TOKEN)")
UNKNOWN_TOKEN = "the token is not one this sidecar knows"


class TokensError(ValueError):
    """The tokens cannot be used: the message says where and why (never the token)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """The tokens a sidecar accepts, each with its scope. Empty: no authentication."""

    def __init__(self, entries: Iterable[tuple[str, Scope]] = ()) -> None:
        self._entries: list[tuple[bytes, Scope]] = []
        self.short: list[str] = []  # labels of tokens shorter than SHORT_TOKEN characters
        seen: set[bytes] = set()
        for token, scope in entries:
            digest = _digest(token)
            if digest in seen:
                raise TokensError(f"{scope.label}: the same token is given twice")
            seen.add(digest)
            self._entries.append((digest, scope))
            add_secret(token)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, token: str, scope: Scope) -> None:
        self._entries.append((_digest(token), scope))
        add_secret(token)

    def authenticate(self, token: str | None) -> Scope | None:
        """The scope of `token`, or None if it is not one of ours. The time it takes does not
        depend on which token matches, nor on how much of one does: every configured token is
        compared, as fixed-length digests, in constant time."""
        if not token:
            return None
        presented = _digest(token)
        found: Scope | None = None
        for digest, scope in self._entries:
            if hmac.compare_digest(presented, digest):
                found = scope
        return found

    @classmethod
    def load(cls, token: str | None, tokens_file: Path | None) -> Tokens:
        """The tokens of `--token` and `--tokens-file`; TokensError says what is wrong with them."""
        entries: list[tuple[str, Scope]] = []
        if token:
            check_token(token, "--token (PERDURE_TOKEN)")
            entries.append((token, Scope(None, "--token")))
        if tokens_file is not None:
            try:
                text = tokens_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise TokensError(f"--tokens-file {tokens_file}: cannot read it ({exc})") from None
            entries += parse_tokens(text, str(tokens_file))
            if not entries:
                raise TokensError(f"--tokens-file {tokens_file}: no tokens in it")
        tokens = cls(entries)
        tokens.short = [scope.label for token, scope in entries if len(token) < SHORT_TOKEN]
        return tokens

    def describe(self) -> list[str]:
        """Each token's label and scope, for the log (never a token)."""
        return [f"{scope.label}: {scope.describe()}" for _, scope in self._entries]


def check_token(token: str, where: str) -> None:
    if not TOKEN_PATTERN.fullmatch(token):
        raise TokensError(f"{where}: a token is printable ASCII without spaces")


def parse_tokens(text: str, source: str) -> list[tuple[str, Scope]]:
    """Lines of `TOKEN NAMESPACES`: NAMESPACES is `*` (every namespace) or names separated by
    commas. Blank lines and lines starting with # are skipped; # after the namespaces starts a
    comment."""
    entries: list[tuple[str, Scope]] = []
    lines: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source} line {number}"
        token, rest = fields[0], fields[1:]
        for index, item in enumerate(rest):
            if item.startswith("#"):
                rest = rest[:index]
                break
        check_token(token, where)
        names = [name.strip() for name in " ".join(rest).split(",") if name.strip()]
        if not names:
            raise TokensError(f"{where}: give the namespaces the token may use after it "
                              "(names separated by commas, or * for every namespace)")
        if names == ["*"]:
            namespaces = None
        else:
            bad = [name for name in names if not _NAMESPACE.fullmatch(name)]
            if bad:
                raise TokensError(f"{where}: {bad[0]!r} is not a namespace (1 to 128 letters, digits or . _ : -; "
                                  "* alone for every namespace)")
            namespaces = frozenset(names)
        digest = _digest(token)
        if digest in lines:
            raise TokensError(f"{where}: the same token as line {lines[digest]}")
        lines[digest] = number
        entries.append((token, Scope(namespaces, f"tokens file line {number}")))
    return entries


def bearer_token(value: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value, or None."""
    if not value:
        return None
    match = _BEARER.fullmatch(value.strip())
    return match[1] if match else None


def internal_token() -> str:
    """A token made at start for the sidecar's own clients (the dashboard's live feeds), known
    to nothing outside this process."""
    return secrets.token_urlsafe(32)


# -- the gRPC server's interceptor ---------------------------------------------------------


class Authenticator(grpc.aio.ServerInterceptor):
    """Refuses calls without a known token (UNAUTHENTICATED) and runs the others with their
    token's scope as `access.caller`."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHODS):
            return handler
        token = bearer_token(_metadata_value(handler_call_details.invocation_metadata, "authorization"))
        scope = self.tokens.authenticate(token)
        problem = None if scope is not None else (UNKNOWN_TOKEN if token else MISSING_TOKEN)
        return _guarded(handler, scope, problem, method)


def _metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name.lower() == key:
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


def _guarded(handler: grpc.RpcMethodHandler, scope: Scope | None, problem: str | None,
             method: str) -> grpc.RpcMethodHandler:
    """`handler` whose behaviour first refuses the call (problem) or sets the caller's scope."""

    async def admit(context: grpc.aio.ServicerContext) -> None:
        if problem is not None:
            log.warning("auth.refused", method=method, peer=context.peer(),
                        reason="no token" if problem == MISSING_TOKEN else "unknown token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        caller.set(scope)

    def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behaviour):
            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await admit(context)
                async for response in behaviour(request, context):
                    yield response
            return streaming

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result
        return call

    options = {"request_deserializer": handler.request_deserializer,
               "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **options)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **options)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **options)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **options)
