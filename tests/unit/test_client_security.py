"""How clients (the SDK, the perdure command) read their token and TLS settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from perdure._security import ClientSecurity


def test_nothing_given__a_plain_channel_without_a_token() -> None:
    security = ClientSecurity.of(environ={})
    assert (security.token, security.tls, security.configured) == (None, False, False)


def test_environment__gives_the_defaults(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    security = ClientSecurity.of(environ={"PERDURE_TOKEN": "t0ken", "PERDURE_TLS_CA": str(ca),
                                          "PERDURE_TLS_SERVER_NAME": "perdured.internal"})
    assert (security.token, security.tls, security.ca, security.server_name) == (
        "t0ken", True, ca.read_bytes(), "perdured.internal")
    explicit = ClientSecurity.of(token="other", environ={"PERDURE_TOKEN": "t0ken"})
    assert explicit.token == "other"
    assert ClientSecurity.of(environ={"PERDURE_TLS": "true"}).tls  # the system's authorities


def test_tls_false__ignores_tls_files_of_the_environment_but_not_given_ones(tmp_path: Path) -> None:
    environ = {"PERDURE_TLS_CA": str(tmp_path / "ca.pem"), "PERDURE_TLS": "false"}
    assert not ClientSecurity.of(environ=environ).tls
    with pytest.raises(ValueError, match="tls is false, but tls_ca given"):
        ClientSecurity.of(tls=False, tls_ca=tmp_path / "ca.pem", environ={})


def test_mistakes__are_said_before_any_connection(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_ca: cannot read"):
        ClientSecurity.of(tls_ca=tmp_path / "missing.pem", environ={})
    with pytest.raises(ValueError, match="give tls_cert and tls_key together"):
        ClientSecurity.of(tls_key=tmp_path / "key.pem", environ={})
    with pytest.raises(ValueError, match="printable ASCII"):
        ClientSecurity.of(token="two words", environ={})


def test_token__never_in_the_representation() -> None:
    assert "s3cr3t-t0ken" not in repr(ClientSecurity.of(token="s3cr3t-t0ken", environ={}))
