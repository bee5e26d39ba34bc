"""Output: rich tables for people, JSON for scripts.

JSON follows the contract's own mapping (proto3 JSON: field names as in the .proto files,
enums by name, zero values included), with 64-bit integers as numbers, and each Payload also
has `json`, its data decoded, when its encoding is JSON.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from functools import cache
from typing import Any

import click
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from perdure.cli._params import STATE_NAMES, format_duration
from perdure.v1 import types_pb2

STATE_STYLES = {
    "pending": "cyan", "running": "yellow", "suspended": "magenta",
    "success": "green", "dead": "bold red", "cancelled": "dim",
}
OUTCOMES = {value: name.removeprefix("ATTEMPT_OUTCOME_").lower() for name, value in types_pb2.AttemptOutcome.items()}
OUTCOME_STYLES = {
    "running": "yellow", "succeeded": "green", "failed": "red", "timed_out": "red", "worker_lost": "red",
    "lease_expired": "red", "cancelled": "dim", "released": "dim", "suspended": "magenta",
}
LOG_LEVELS = {value: name.removeprefix("LOG_LEVEL_").lower() for name, value in types_pb2.LogLevel.items()}
LOG_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "red"}
STEP_STATUSES = {value: name.removeprefix("STEP_STATUS_").lower() for name, value in types_pb2.StepStatus.items()}
BACKOFFS = {value: name.removeprefix("BACKOFF_").lower() for name, value in types_pb2.Backoff.items()}
BACKOFFS[types_pb2.BACKOFF_UNSPECIFIED] = "exponential"


@cache
def console() -> Console:
    """Standard output. No markup or highlighting: what is printed is what the data says.
    Piped, lines are not cut at 80 columns (unless COLUMNS says so)."""
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 240
    return Console(markup=False, highlight=False, emoji=False, width=wide)


@cache
def err_console() -> Console:
    return Console(stderr=True, markup=False, highlight=False, emoji=False)


def emit_json(document: Any) -> None:
    # Not through rich: it would wrap long lines.
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def to_dict(message: Message) -> dict[str, Any]:
    document = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _adjust(message, document)
    return document


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _adjust(message: Message, document: dict[str, Any]) -> None:
    """What scripts want on top of the proto3 mapping (which json_format.Parse still reads):
    64-bit integers as numbers, not strings; JSON payloads decoded, as `json`."""
    if isinstance(message, types_pb2.Payload):
        ok, value = payload_value(message)
        if ok and message.data:
            document["json"] = value
        return
    for field in message.DESCRIPTOR.fields:
        if field.name not in document:
            continue
        if field.type in _INT64:
            value = document[field.name]
            document[field.name] = [int(v) for v in value] if field.is_repeated else int(value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            nested = getattr(message, field.name)
            if field.is_repeated:
                for item, item_document in zip(nested, document[field.name], strict=False):
                    _adjust(item, item_document)
            else:
                _adjust(nested, document[field.name])


def payload_value(payload: types_pb2.Payload) -> tuple[bool, Any]:
    """(True, the decoded value) for a JSON payload; (False, None) for anything else."""
    if payload.encoding not in ("", "json"):
        return False, None
    if not payload.data:
        return True, None
    try:
        return True, json.loads(payload.data)
    except ValueError:
        return False, None


def payload_text(payload: types_pb2.Payload, *, indent: int | None = 2) -> str:
    ok, value = payload_value(payload)
    if ok:
        return json.dumps(value, indent=indent, ensure_ascii=False)
    return f"<{len(payload.data)} bytes, encoding {payload.encoding or 'json'}>"


def call_text(payload: types_pb2.Payload) -> str:
    """Call arguments ({"args": [...], "kwargs": {...}}) as a Python-like argument list."""
    ok, value = payload_value(payload)
    if not ok:
        return payload_text(payload)
    if isinstance(value, dict) and set(value) <= {"args", "kwargs"}:
        parts = [json.dumps(a, ensure_ascii=False) for a in value.get("args") or []]
        parts += [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (value.get("kwargs") or {}).items()]
        return "(" + ", ".join(parts) + ")"
    return json.dumps(value, ensure_ascii=False)


def state_name(value: int) -> str:
    return STATE_NAMES.get(value, "unknown")


def state_text(value: int) -> Text:
    name = state_name(value)
    return Text(name, style=STATE_STYLES.get(name, ""))


def moment(message: Message, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return getattr(message, field).ToDatetime(tzinfo=UTC)


def seconds(message: Message, field: str) -> float | None:
    if not message.HasField(field):
        return None
    return getattr(message, field).ToNanoseconds() / 1e9


def relative(at: datetime | None, now: datetime | None = None) -> str:
    """`12s ago`, `in 5m00s`, or "" for no time."""
    if at is None:
        return ""
    delta = ((now or datetime.now(UTC)) - at).total_seconds()
    if abs(delta) < 1:
        return "just now"
    return f"{format_duration(delta)} ago" if delta > 0 else f"in {format_duration(-delta)}"


def age(at: datetime | None, now: datetime | None = None) -> str:
    """How long ago, for table columns headed AGE: `12s`, `3m05s`, or "" for no time."""
    if at is None:
        return ""
    return format_duration(max(0.0, ((now or datetime.now(UTC)) - at).total_seconds()))


def absolute(at: datetime | None) -> str:
    """Local time to the second, with the offset and how long ago: `2030-01-31 09:00:00 +01:00 (12s ago)`."""
    if at is None:
        return ""
    local = at.astimezone()
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]} ({relative(at)})"


def labels_text(labels: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def error_line(error: types_pb2.JobError) -> str:
    if not error.type and not error.message:
        return ""
    return f"{error.type}: {error.message}" if error.message else error.type


def table(*columns: str, title: str | None = None, caption: str | None = None) -> Table:
    """A table with a header line. A column named ">NAME" is right-aligned (numbers); values
    of a column named "NAME~" should be `cut(...)`: cut with an ellipsis, not wrapped, when the
    terminal is narrow. Identifiers, states and numbers never wrap; the other columns give way."""
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, header_style="bold",
                 title=title, title_justify="left", title_style="bold", caption=caption, caption_justify="left",
                 caption_style="dim")
    for column in columns:
        name = column.removeprefix(">").removesuffix("~")
        numeric, cut = column.startswith(">"), column.endswith("~")
        grid.add_column(name, justify="right" if numeric else "left", overflow="ellipsis" if cut else "fold",
                        no_wrap=numeric or name in NO_WRAP_COLUMNS)
    return grid


def cut(value: str | Text) -> Text:
    """A cell that stays on one line, cut with an ellipsis if its column is narrow."""
    text = value.copy() if isinstance(value, Text) else Text(value)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def clock(at: datetime | None, now: datetime | None = None) -> str:
    """A short local time for tables: `07:58:41` today, `2030-01-31 07:58` another day."""
    if at is None:
        return ""
    local, today = at.astimezone(), (now or datetime.now(UTC)).astimezone().date()
    return f"{local:%H:%M:%S}" if local.date() == today else f"{local:%Y-%m-%d %H:%M}"


def fields_table() -> Table:
    """Key/value lines: `state      dead`."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    return grid


def heading(text: str) -> Text:
    return Text("\n" + text, style="bold underline")


NO_WRAP_COLUMNS = {"ID", "STATE", "OUTCOME", "STATUS", "AT", "STARTED", "RECORDED", "LEVEL"}
