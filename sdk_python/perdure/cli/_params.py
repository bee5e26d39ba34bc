"""What the command line accepts: durations, labels, JSON documents, job states, times."""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from perdure.v1 import types_pb2

# Job states by their short names, as people type them: pending, running, ...
STATES: dict[str, int] = {
    name.removeprefix("JOB_STATE_").lower(): value for name, value in types_pb2.JobState.items() if value}
STATE_NAMES: dict[int, str] = {value: name for name, value in STATES.items()}

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from `30s`, `5m`, `2h`, `1d`, `500ms`, `1h30m` or plain seconds (`90`, `1.5`)."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned:
        raise ValueError("is empty")
    total, position = 0.0, 0
    while position < len(cleaned):
        match = _DURATION_PART.match(cleaned, position)
        if match is None:
            raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 5m, 2h, 1h30m or plain seconds")
        if match.group(2) is None and (position or match.end() != len(cleaned)):
            raise ValueError(f"{text!r} is not a duration; give each number its unit, e.g. 1h30m")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not math.isfinite(total):
        raise ValueError(f"{text!r} is too long a duration")
    return total


def format_duration(seconds: float) -> str:
    """A short human duration: 350ms, 4.2s, 3m12s, 2h05m, 3d04h."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s".replace(".0s", "s")
    if seconds < 60:
        return f"{seconds:.0f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class PositiveDurationType(DurationType):
    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        seconds = super().convert(value, param, ctx)
        if seconds <= 0:
            self.fail("must be greater than zero", param, ctx)
        return seconds


class LabelType(click.ParamType):
    """`key=value`, as a (key, value) pair."""

    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition("=")
        if not sep or not key:
            self.fail(f"{value!r} is not a label; use key=value", param, ctx)
        return key, val


class StatesType(click.ParamType):
    """One state or several, comma-separated: `dead`, `dead,cancelled`."""

    name = "STATE"

    def __init__(self, allowed: tuple[str, ...] = tuple(STATES)) -> None:
        self.allowed = allowed

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.allowed) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        states = [part.strip().lower() for part in str(value).split(",") if part.strip()]
        unknown = [s for s in states if s not in self.allowed]
        if unknown or not states:
            self.fail(f"{value!r}: expected one of {', '.join(self.allowed)}", param, ctx)
        return states


class JsonType(click.ParamType):
    """A JSON document given inline, as `@path` (read from the file) or `-` (read from standard
    input). `kind` narrows it to an array or an object."""

    name = "JSON"

    def __init__(self, kind: type | None = None) -> None:
        self.kind = kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        text = value
        try:
            if value == "-":
                text = sys.stdin.read()
            elif value.startswith("@"):
                text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            self.fail(f"cannot read {value[1:]!r}: {exc.strerror or exc}", param, ctx)
        try:
            document = json.loads(text)
        except ValueError as exc:
            self.fail(f"not valid JSON ({exc})", param, ctx)
        if self.kind is list and not isinstance(document, list):
            self.fail(f"must be a JSON array, such as '[1, \"two\"]'; got {_short(text)}", param, ctx)
        if self.kind is dict and not isinstance(document, dict):
            self.fail(f"must be a JSON object, such as '{{\"key\": 1}}'; got {_short(text)}", param, ctx)
        return document


class DateTimeType(click.ParamType):
    """ISO 8601, e.g. 2030-01-31T09:00:00+01:00; without an offset, local time."""

    name = "DATETIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time such as 2030-01-31T09:00:00+01:00", param, ctx)
        return moment if moment.tzinfo else moment.astimezone()


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


DURATION = DurationType()
POSITIVE_DURATION = PositiveDurationType()
LABEL = LabelType()
DATETIME = DateTimeType()
