"""Tokens and their scopes, the tokens file, and the redaction of secrets (pure logic; the
rules enforced on real calls are in tests/integration/test_security.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from perdured import access, logs, validation
from perdured.access import PermissionDenied, Scope
from perdured.auth import Tokens, TokensError, bearer_token, parse_tokens
from perdured.validation import InvalidArgument

TOKENS_FILE = """
# who          may use
billing-aaaaaaaaaaaaaaaa   billing,shipping     # the billing app
admin-bbbbbbbbbbbbbbbbbb   *
  reports-cccccccccccccc   reports , analytics
"""


@pytest.fixture(autouse=True)
def secrets() -> Iterator[None]:
    """Each test starts with no secret registered (other tests' sidecars register theirs), and
    those it registers are forgotten after it."""
    kept = set(logs._secrets)
    logs._secrets.clear()
    yield
    logs._secrets.clear()
    logs._secrets.update(kept)


def test_tokens_file__tokens_with_their_namespaces_comments_and_blank_lines() -> None:
    entries = dict(parse_tokens(TOKENS_FILE, "tokens"))
    assert entries["billing-aaaaaaaaaaaaaaaa"].namespaces == {"billing", "shipping"}
    assert entries["admin-bbbbbbbbbbbbbbbbbb"].everything
    assert entries["reports-cccccccccccccc"].namespaces == {"reports", "analytics"}
    assert entries["billing-aaaaaaaaaaaaaaaa"].label == "tokens file line 3"


@pytest.mark.parametrize(("text", "problem"), [
    ("lonely-token", "line 1: give the namespaces"),
    ("t0ken-1234567890 billing\nt0ken-1234567890 shipping", "line 2: the same token as line 1"),
    ("t0ken-1234567890 bill/ing", "'bill/ing' is not a namespace"),
    ("t0ken-1234567890 billing,*", "'*' is not a namespace"),
])
def test_tokens_file__mistakes_name_the_line_and_never_the_token(text: str, problem: str) -> None:
    with pytest.raises(TokensError, match=problem) as caught:
        parse_tokens(text, "tokens")
    assert "t0ken-1234567890" not in str(caught.value) and "lonely-token" not in str(caught.value)


def test_tokens__load_the_flag_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKENS_FILE)
    tokens = Tokens.load("everything-dddddddddddddddd", path)
    assert len(tokens) == 4
    assert tokens.authenticate("everything-dddddddddddddddd") == Scope(None, "--token")
    assert tokens.authenticate("billing-aaaaaaaaaaaaaaaa").allows("shipping")  # type: ignore[union-attr]
    assert not tokens.authenticate("billing-aaaaaaaaaaaaaaaa").allows("reports")  # type: ignore[union-attr]
    for wrong in ("", "billing-aaaaaaaaaaaaaaa", "billing-aaaaaaaaaaaaaaaaa", "BILLING-aaaaaaaaaaaaaaaa", None):
        assert tokens.authenticate(wrong) is None
    assert not Tokens.load(None, None)


def test_tokens__unreadable_or_empty_files_and_bad_tokens_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TokensError, match="cannot read it"):
        Tokens.load(None, tmp_path / "missing")
    (tmp_path / "empty").write_text("# nobody yet\n")
    with pytest.raises(TokensError, match="no tokens in it"):
        Tokens.load(None, tmp_path / "empty")
    with pytest.raises(TokensError, match="printable ASCII without spaces"):
        Tokens.load("two words", None)
    with pytest.raises(TokensError, match="given twice"):
        (tmp_path / "same").write_text("the-same-token-xxxxxxx *\n")
        Tokens.load("the-same-token-xxxxxxx", tmp_path / "same")


def test_tokens__short_ones_are_named_for_a_warning() -> None:
    assert Tokens.load("s3cr3t", None).short == ["--token"]
    assert Tokens.load("x" * 32, None).short == []


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc.def", "abc.def"), ("bearer   abc ", "abc"), ("Basic abc", None), ("Bearer", None),
    ("Bearer a b", None), ("", None), (None, None),
])
def test_bearer_token__reads_the_authorization_value(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_namespace__checks_the_callers_scope() -> None:
    assert validation.namespace("anything") == "anything"  # no caller: nothing to check
    reset = access.caller.set(Scope(frozenset({"billing", "default"}), "test"))
    try:
        assert validation.namespace("billing") == "billing"
        assert validation.namespace("") == "default"
        with pytest.raises(PermissionDenied, match="may not use namespace 'shipping'"):
            validation.namespace("shipping")
        with pytest.raises(InvalidArgument):  # a malformed one is still a malformed one
            validation.namespace("not a namespace")
        assert validation.namespace_or_all("billing", "statistics") == "billing"
        with pytest.raises(PermissionDenied, match="statistics of every namespace needs a token for every"):
            validation.namespace_or_all("", "statistics")
    finally:
        access.caller.reset(reset)
    reset = access.caller.set(Scope(None, "admin"))
    try:
        assert validation.namespace_or_all("", "statistics") is None
    finally:
        access.caller.reset(reset)


# -- secrets in logs ---------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:pa55word@db:5432/app?sslmode=require", "postgresql://app:***@db:5432/app?sslmode=require"),
    ("postgres://app:p%40ss@db/app", "postgres://app:***@db/app"),
    ("host=db user=app password=pa55word dbname=app", "host=db user=app password=*** dbname=app"),
    ("host=db password='with space' dbname=app", "host=db password=*** dbname=app"),
    ("postgresql://db/app?user=app&password=pa55word", "postgresql://db/app?user=app&password=***"),
    ("postgresql://app@db/app", "postgresql://app@db/app"),
])
def test_redact_database_url__hides_the_password_only(url: str, shown: str) -> None:
    assert logs.redact_database_url(url) == shown


def test_log_lines__never_show_a_registered_secret(capsys: pytest.CaptureFixture[str]) -> None:
    for secret in logs.database_password("postgresql://app:hunter2-%2Fx@db/app"):
        logs.add_secret(secret)
    logs.add_secret("tok-eeeeeeeeeeeeeeee")
    logs.configure("json", "debug")
    try:
        log = structlog.get_logger("test")
        log.info("test.secrets", url="postgresql://app:hunter2-%2Fx@db/app", decoded="it was hunter2-/x",
                 nested={"headers": ["Bearer tok-eeeeeeeeeeeeeeee"]})
        try:
            raise RuntimeError("connection failed for password hunter2-/x")
        except RuntimeError:
            log.exception("test.failed")
    finally:
        # Back to the suite's set-up, writing to the real stderr: configured while the capture
        # is on, the logs of later tests would go to the capture's stream, closed by then.
        with capsys.disabled():
            logs.configure("console", os.environ.get("PERDURE_TEST_LOG_LEVEL", "warning"))
    err = capsys.readouterr().err
    for secret in ("hunter2", "tok-eeeeeeeeeeeeeeee"):
        assert secret not in err
    first = json.loads(err.splitlines()[0])
    assert first["url"] == "postgresql://app:***@db/app" and first["decoded"] == "it was ***"
    assert "***" in err.splitlines()[1] and "RuntimeError" in err.splitlines()[1]
