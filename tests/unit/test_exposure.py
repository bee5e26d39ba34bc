"""Which addresses perdured agrees to serve on, and with what: loopback by default; anything
wider needs TLS and a token, or --insecure (the dashboard also --dashboard-allow-remote)."""

from __future__ import annotations

from pathlib import Path

import pytest

from perdured.config import Settings, build_parser, check_exposure, settings_from

TLS = ["--tls-cert", "cert.pem", "--tls-key", "key.pem"]
TOKEN = ["--token", "a-token-of-32-characters-or-more"]


def settings(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return settings_from(build_parser().parse_args(argv), environ or {})


def test_defaults__loopback_with_no_tls_and_no_tokens() -> None:
    s = settings([])
    assert (s.listen, s.tls_cert, s.tls_key, s.tls_client_ca, s.token, s.tokens_file, s.insecure) == (
        "127.0.0.1:7433", None, None, None, None, None, False)
    assert check_exposure(s) == []


@pytest.mark.parametrize("listen", ["0.0.0.0:7433", "[::]:7433", "10.0.0.5:7433", "perdured.internal:7433", ":7433"])
def test_listen_beyond_loopback__without_tls_and_a_token_is_refused_in_one_line(listen: str) -> None:
    with pytest.raises(SystemExit) as refused:
        settings(["--listen", listen])
    message = str(refused.value)
    assert message.startswith(f"perdured: --listen {listen} ") and "\n" not in message
    for fix in ("--tls-cert and --tls-key", "--token or --tokens-file", "--insecure", "127.0.0.1"):
        assert fix in message


def test_listen_beyond_loopback__names_only_what_is_missing() -> None:
    with pytest.raises(SystemExit, match="without a token: give --token or --tokens-file;") as refused:
        settings(["--listen", "0.0.0.0:7433", *TLS])
    assert "--tls-cert" not in str(refused.value)
    with pytest.raises(SystemExit, match="without TLS: give --tls-cert and --tls-key;"):
        settings(["--listen", "0.0.0.0:7433", *TOKEN])
    with pytest.raises(SystemExit, match="without TLS: "):
        settings(["--listen", "0.0.0.0:7433"], {"PERDURE_TOKENS_FILE": "/etc/perdure/tokens"})


def test_listen_beyond_loopback__with_tls_and_a_token() -> None:
    s = settings(["--listen", "0.0.0.0:7433", *TLS, "--tls-client-ca", "ca.pem", *TOKEN])
    assert (s.tls_cert, s.tls_key, s.tls_client_ca) == (Path("cert.pem"), Path("key.pem"), Path("ca.pem"))
    assert check_exposure(s) == []
    s = settings([], {"PERDURE_LISTEN": "0.0.0.0:7433", "PERDURE_TLS_CERT": "c", "PERDURE_TLS_KEY": "k",
                      "PERDURE_TOKENS_FILE": "tokens"})
    assert (s.tokens_file, check_exposure(s)) == (Path("tokens"), [])


def test_insecure__allows_it_and_says_what_is_unprotected() -> None:
    s = settings(["--listen", "0.0.0.0:7433", "--insecure", "--metrics-listen", "0.0.0.0:9464"])
    assert check_exposure(s) == ["--listen 0.0.0.0:7433 without TLS and a token",
                                 "--metrics-listen 0.0.0.0:9464 without TLS and a token"]
    assert settings([], {"PERDURE_LISTEN": "0.0.0.0:7433", "PERDURE_INSECURE": "true"}).insecure


def test_metrics_and_dashboard__follow_the_same_rule() -> None:
    with pytest.raises(SystemExit, match="--metrics-listen 0.0.0.0:9464 would serve the metrics"):
        settings(["--metrics-listen", "0.0.0.0:9464"])
    with pytest.raises(SystemExit, match="--dashboard-listen 0.0.0.0:7434 would serve the dashboard"):
        settings(["--dashboard-listen", "0.0.0.0:7434"])
    assert check_exposure(settings(["--metrics-listen", "0.0.0.0:9464", "--dashboard-listen", "0.0.0.0:7434",
                                    *TLS, *TOKEN])) == []
    allowed = settings(["--dashboard-listen", "0.0.0.0:7434", "--dashboard-allow-remote"])
    assert check_exposure(allowed) == ["--dashboard-listen 0.0.0.0:7434 without TLS and a token (--dashboard-allow-remote)"]


def test_token_is_never_shown_with_the_settings() -> None:
    s = settings([*TOKEN, "--database-url", "postgresql://app:pa55word@db/app"])
    assert s.token == TOKEN[1]
    assert TOKEN[1] not in repr(s) and "pa55word" not in repr(s)


def test_tls_files__come_in_pairs() -> None:
    with pytest.raises(SystemExit, match="give --tls-cert and --tls-key together"):
        settings(["--tls-cert", "cert.pem"])
    with pytest.raises(SystemExit, match="--tls-client-ca needs --tls-cert and --tls-key"):
        settings(["--tls-client-ca", "ca.pem"])


def test_other_commands__do_not_check_the_addresses() -> None:
    """`perdured migrate` and `perdured health` often share the serving container's variables."""
    environ = {"PERDURE_LISTEN": "0.0.0.0:7433"}
    assert settings_from(build_parser().parse_args(["migrate"]), environ).listen == "0.0.0.0:7433"
    assert settings_from(build_parser().parse_args(["health"]), environ).listen == "0.0.0.0:7433"
