"""How a client reaches a sidecar that asks for TLS or a token: the channel and its credentials.

Shared by the SDK (`Perdure(token=..., tls_ca=...)`) and the `perdure` command (`--token`,
`--tls-ca`, ...); both default to the same environment variables:

    PERDURE_TOKEN             sent with every call as `authorization: Bearer <token>`
    PERDURE_TLS_CA            the authority that signed the sidecar's certificate (PEM file)
    PERDURE_TLS_CLIENT_CERT   this client's certificate, when the sidecar requires one (PEM)
    PERDURE_TLS_CLIENT_KEY    its private key (PEM)
    PERDURE_TLS_SERVER_NAME   the name to expect in the sidecar's certificate, when the
                              address does not say it (an IP address, say)
    PERDURE_TLS               true: TLS with the system's authorities (a public certificate)

Any TLS setting makes the channel a TLS one.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ENVIRONMENT = {
    "token": "PERDURE_TOKEN",
    "tls_ca": "PERDURE_TLS_CA",
    "tls_cert": "PERDURE_TLS_CLIENT_CERT",
    "tls_key": "PERDURE_TLS_CLIENT_KEY",
    "tls_server_name": "PERDURE_TLS_SERVER_NAME",
    "tls": "PERDURE_TLS",
}
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ClientSecurity:
    """A token and TLS material, read and checked (files are read once, when this is made)."""

    token: str | None = field(default=None, repr=False)
    tls: bool = False
    ca: bytes | None = field(default=None, repr=False)
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    @classmethod
    def of(cls, *, token: str | None = None, tls: bool | None = None, tls_ca: str | os.PathLike[str] | None = None,
           tls_cert: str | os.PathLike[str] | None = None, tls_key: str | os.PathLike[str] | None = None,
           tls_server_name: str | None = None, environ: Mapping[str, str] | None = None) -> ClientSecurity:
        """From explicit values, each defaulting to its variable (`ENVIRONMENT`) in `environ`
        (no defaults when `environ` is None)."""
        env = environ if environ is not None else {}

        def pick(value: Any, name: str) -> Any:
            return value if value is not None else (env.get(ENVIRONMENT[name]) or None)

        token = pick(token, "token")
        if token is not None:
            token = str(token).strip()
            if not token or any(ord(c) < 0x21 or ord(c) > 0x7e for c in token):
                raise ValueError("token must be printable ASCII without spaces")
        wanted = tls
        if wanted is None and (flag := env.get(ENVIRONMENT["tls"], "").strip().lower()):
            wanted = flag in _TRUE
        if wanted is False:  # plain text: TLS files in the environment do not count
            given = [name for name, value in (("tls_ca", tls_ca), ("tls_cert", tls_cert), ("tls_key", tls_key),
                                              ("tls_server_name", tls_server_name)) if value is not None]
            if given:
                raise ValueError(f"tls is false, but {', '.join(given)} given")
            return cls(token=token)
        ca_path, cert_path, key_path = pick(tls_ca, "tls_ca"), pick(tls_cert, "tls_cert"), pick(tls_key, "tls_key")
        server_name = pick(tls_server_name, "tls_server_name")
        if (cert_path is None) != (key_path is None):
            raise ValueError("give tls_cert and tls_key together (this client's certificate and its private key)")
        use_tls = bool(wanted) or any(v is not None for v in (ca_path, cert_path, server_name))
        return cls(token=token, tls=use_tls, ca=_read(ca_path, "tls_ca"), cert=_read(cert_path, "tls_cert"),
                   key=_read(key_path, "tls_key"), server_name=server_name)

    @property
    def configured(self) -> bool:
        return self.token is not None or self.tls

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def _options(self, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        extra = [("grpc.ssl_target_name_override", self.server_name)] if self.tls and self.server_name else []
        return [*options, *extra]

    def aio_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        interceptors = _AioBearer.every_kind(self.token) if self.token else None
        if self.tls:
            return grpc.aio.secure_channel(address, self._credentials(), self._options(options),
                                           interceptors=interceptors)
        return grpc.aio.insecure_channel(address, self._options(options), interceptors=interceptors)

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel (the `perdure` command)."""
        channel = (grpc.secure_channel(address, self._credentials(), self._options(options)) if self.tls
                   else grpc.insecure_channel(address, self._options(options)))
        return grpc.intercept_channel(channel, _Bearer(self.token)) if self.token else channel


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {os.fspath(path)}: {exc.strerror}") from None


def _with_token(metadata: Any, token: str) -> list[tuple[str, str | bytes]]:
    entries = [(key, value) for key, value in (metadata or ()) if key.lower() != "authorization"]
    return [*entries, ("authorization", f"Bearer {token}")]


class _AioBearer:
    """Adds the token to every call of an asyncio channel. (grpc.aio files an interceptor under
    the first kind it implements: one subclass per kind.)"""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*_with_token(details.metadata, self._token))
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)

    @classmethod
    def every_kind(cls, token: str) -> list[grpc.aio.ClientInterceptor]:
        return [_AioUnaryUnary(token), _AioUnaryStream(token), _AioStreamUnary(token), _AioStreamStream(token)]


class _AioUnaryUnary(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioUnaryStream(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioStreamUnary(_AioBearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails,
                                     request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _AioStreamStream(_AioBearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails,
                                      request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                          "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the token to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(details.method, details.timeout, _with_token(details.metadata, self._token),
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                               request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, client_call_details: grpc.ClientCallDetails,
                                request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)
