"""Structured logs: one event per line, with a stable event name (and the job id where there is one).

Secrets never reach a log line: the database password and the tokens are registered with
`add_secret` as the sidecar starts, and a processor replaces them (and any password written in
a database URL or connection string) with `***` in every value of every event, tracebacks
included. Records of other libraries (psycopg's pool, asyncio) go through the same processors.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
MASK = "***"

# postgresql://user:PASSWORD@host, and the like for any scheme.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^@/?#\s]*)(?P<tail>@)")
# password=secret in a key/value connection string, or ?password=secret&... in a URL's query.
_PAIR_PASSWORD = re.compile(r"""(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&'"]+)""", re.IGNORECASE)

_secrets: set[str] = set()


def add_secret(secret: str | None) -> None:
    """Never show `secret` in a log line or an error message from now on."""
    if secret:
        _secrets.add(secret)


def _redact_passwords(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: m["head"] + (MASK if m["secret"] else "") + m["tail"], text)
    return _PAIR_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def redact(text: str) -> str:
    """`text` without the registered secrets and without passwords of URLs or connection strings."""
    if not text:
        return text
    text = _redact_passwords(text)
    for secret in sorted(_secrets, key=len, reverse=True):  # the longest first: one may contain another
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def database_password(url: str) -> list[str]:
    """The password a database URL or connection string carries, as written and as decoded
    (empty if none): what to register with `add_secret`."""
    found: list[str] = []
    for pattern in (_URL_PASSWORD, _PAIR_PASSWORD):
        for match in pattern.finditer(url):
            secret = match["secret"].strip("'")
            if secret:
                found += [secret, unquote(secret)]
    try:
        from psycopg.conninfo import conninfo_to_dict

        if password := conninfo_to_dict(url).get("password"):
            found.append(str(password))
    except Exception:  # not parseable: the patterns above found what can be found
        pass
    return sorted(set(found))


def redact_database_url(url: str) -> str:
    """The URL or connection string as it can be shown: its password (where the syntax puts
    it) replaced with `***`, nothing else."""
    return _redact_passwords(url)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(item) for item in value]
    if isinstance(value, BaseException):
        return redact(str(value))
    return value


def redact_secrets(logger: Any, method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """The structlog processor: every value of the event, redacted."""
    return {key: _redacted(value) for key, value in event.items()}


def configure(log_format: str = "console", level: str = "info") -> None:
    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    log.bind_to(structlog.get_logger("perdured").bind())


def route_library_logs(log_format: str = "console", level: str = "info") -> None:
    """Send the standard `logging` records of libraries (psycopg's pool, asyncio, grpc) through
    the same redaction and rendering as ours, at `level` and above (warnings at least)."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer(colors=False))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_perdure", False)]:
        root.removeHandler(old)
    handler._perdure = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(_LEVELS[level], logging.WARNING))


class _Log:
    """The sidecar's logger. structlog's lazy logger looks its configuration up on every call,
    a microsecond a line even when the level leaves the line out: configure() binds this one
    to the configured logger once."""

    debug: Callable[..., Any]
    info: Callable[..., Any]
    warning: Callable[..., Any]
    error: Callable[..., Any]
    exception: Callable[..., Any]

    def __init__(self) -> None:
        self.bind_to(structlog.get_logger("perdured"))

    def bind_to(self, logger: Any) -> None:
        for level in ("debug", "info", "warning", "error", "exception"):
            setattr(self, level, getattr(logger, level))


log = _Log()
