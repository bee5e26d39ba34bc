"""Throwaway certificates for the TLS tests (trustme): an authority for the sidecar's
certificate, another for client certificates, and one that nobody trusts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certificates:
    ca: Path  # signed the server's certificate
    server_cert: Path  # for perdure.test, localhost and 127.0.0.1
    server_key: Path
    named_cert: Path  # for perdured.internal only
    named_key: Path
    client_ca: Path  # signed the client's certificate
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from an authority nobody trusts
    stranger_key: Path
    stranger_ca: Path


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    servers, clients, strangers = trustme.CA(), trustme.CA(), trustme.CA()
    paths: dict[str, Path] = {}

    def keep(name: str, data: bytes) -> None:
        path = paths[name] = directory / f"{name}.pem"
        path.write_bytes(data)

    def issued(name: str, cert: trustme.LeafCert) -> None:
        keep(f"{name}_cert", b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        keep(f"{name}_key", cert.private_key_pem.bytes())

    keep("ca", servers.cert_pem.bytes())
    keep("client_ca", clients.cert_pem.bytes())
    keep("stranger_ca", strangers.cert_pem.bytes())
    issued("server", servers.issue_cert("perdure.test", "localhost", "127.0.0.1"))
    issued("named", servers.issue_cert("perdured.internal"))
    issued("client", clients.issue_cert("worker@perdure.test"))
    issued("stranger", strangers.issue_cert("intruder@perdure.test"))
    return Certificates(**paths)
