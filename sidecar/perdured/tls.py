"""TLS: the sidecar's certificate (`--tls-cert`, `--tls-key`) and, with `--tls-client-ca`, the
authority whose client certificates it requires.

The files are checked at start (readable, the key matching the certificate), served on the
gRPC port and, beyond loopback, on the dashboard's and the metrics' ports, and read again when
they change: a renewed certificate (cert-manager, certbot) is used for new connections without
a restart.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from perdured.logs import log

RELOAD_CHECK = 30.0  # seconds between looks at the files for the HTTP servers (gRPC looks at each connection)


class TLSError(ValueError):
    """The certificate, key or client authority cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Material:
    chain: bytes
    key: bytes
    client_ca: bytes | None
    stamp: tuple[tuple[int, int], ...]  # (mtime, size) of each file when read


class ServerTLS:
    """The sidecar's TLS files, read now and again whenever they change."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.material = self._read()
        self._contexts: list[ssl.SSLContext] = []
        self._grpc_behind = False  # the files changed since gRPC last took them

    @property
    def requires_client_certificates(self) -> bool:
        return self.client_ca is not None

    def _paths(self) -> list[Path]:
        return [self.cert, self.key] + ([self.client_ca] if self.client_ca is not None else [])

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._paths():
            try:
                status = os.stat(path)
            except OSError:
                return ()
            stamps.append((status.st_mtime_ns, status.st_size))
        return tuple(stamps)

    def _read(self) -> Material:
        stamp = self._stamp()
        try:
            chain, key = self.cert.read_bytes(), self.key.read_bytes()
            client_ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        except OSError as exc:
            raise TLSError(f"cannot read {exc.filename}: {exc.strerror}") from None
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            check.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            raise TLSError(f"--tls-cert {self.cert} and --tls-key {self.key} do not make a certificate and its "
                           f"private key (PEM files) ({exc.reason or exc})") from None
        if self.client_ca is not None:
            try:
                check.load_verify_locations(cafile=self.client_ca)
            except ssl.SSLError as exc:
                raise TLSError(f"--tls-client-ca {self.client_ca} is not a PEM certificate ({exc.reason or exc})") from None
        return Material(chain, key, client_ca, stamp)

    def _refresh(self) -> None:
        """Read the files again if they changed: the HTTP contexts take them at once, gRPC at
        its next connection."""
        stamp = self._stamp()
        if not stamp or stamp == self.material.stamp:
            return
        try:
            self.material = self._read()
            for context in self._contexts:
                self._load_into(context)
        except (TLSError, OSError, ssl.SSLError) as exc:  # half-written, say: keep the old ones, look again later
            log.warning("tls.reload_failed", error=str(exc))
            return
        self._grpc_behind = True
        log.info("tls.reloaded", cert=str(self.cert), names=certificate_names(self.cert))

    # -- gRPC ----------------------------------------------------------------------------------

    def _configuration(self) -> Any:
        material = self.material
        return grpc.ssl_server_certificate_configuration([(material.key, material.chain)],
                                                         root_certificates=material.client_ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for the gRPC port; gRPC asks for changes before every new connection's handshake."""

        def fetch() -> Any:
            try:
                self._refresh()
                if not self._grpc_behind:
                    return None
                self._grpc_behind = False
                return self._configuration()
            except Exception as exc:  # never let gRPC's handshake fail on our account
                log.warning("tls.reload_failed", error=str(exc))
                return None

        return grpc.dynamic_ssl_server_credentials(self._configuration(), fetch,
                                                   require_client_authentication=self.requires_client_certificates)

    # -- HTTP (the dashboard and the metrics) ------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for an HTTP server (HTTP/1.1), reloaded with the files by `check_for_changes`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_into(context)
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
        self._contexts.append(context)
        return context

    def _load_into(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.load_verify_locations(cafile=self.client_ca)

    def check_for_changes(self) -> None:
        self._refresh()


def certificate_names(path: Path) -> list[str]:
    """The DNS names and IP addresses a PEM certificate is for (its first certificate), or []
    if they cannot be read. Only for logs and for `perdured health`."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return []
    try:
        decoded = decode(str(path))
    except (OSError, ssl.SSLError, ValueError):
        return []
    return [value for kind, value in decoded.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]


def client_credentials(*, ca: bytes | None = None, cert: bytes | None = None,
                       key: bytes | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
