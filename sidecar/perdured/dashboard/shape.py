"""Messages of the contract as the JSON the dashboard's page reads.

`google.protobuf.json_format` does the conversion (field names as in the .proto files, 64-bit
integers as numbers, fields without presence always present); then, guided by the message
descriptors, values are made easier to read in a browser:

- enum values lose their type prefix and are lower case: JOB_STATE_DEAD -> "dead";
- durations are seconds (a number): "1.500s" -> 1.5; timestamps stay RFC 3339 text;
- payloads are {"encoding", "size"} plus, when asked for, their content: "text" (JSON or other
  UTF-8), else "base64"; at most DISPLAY_LIMIT bytes of it, with "truncated" saying whether
  there is more (the whole of it can be downloaded).
"""

from __future__ import annotations

import base64
import re
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

DISPLAY_LIMIT = 256 * 1024  # bytes of a payload shown in the page

_PAYLOAD = "perdure.v1.Payload"
_DURATION = "google.protobuf.Duration"
_TIMESTAMP = "google.protobuf.Timestamp"
_enum_prefixes: dict[str, str] = {}


def to_json(message: Message, *, payloads: bool = True) -> dict[str, Any]:
    """`message` as JSON-ready values; without `payloads`, payloads keep only their encoding and size."""
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                         unquote_int64_if_possible=True)
    descriptor = message.DESCRIPTOR
    assert isinstance(descriptor, Descriptor)
    return _message(descriptor, data, payloads)


def _message(descriptor: Descriptor, data: dict[str, Any], payloads: bool) -> dict[str, Any]:
    if descriptor.full_name == _PAYLOAD:
        return _payload(data, payloads)
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            data[field.name] = {key: _value(value_field, item, payloads) for key, item in value.items()}
        elif field.is_repeated:
            data[field.name] = [_value(field, item, payloads) for item in value]
        else:
            data[field.name] = _value(field, value, payloads)
    return data


def _value(field: FieldDescriptor, value: Any, payloads: bool) -> Any:
    if field.message_type is not None:
        name = field.message_type.full_name
        if name == _DURATION:
            return float(value.removesuffix("s"))
        if name == _TIMESTAMP:
            return value
        return _message(field.message_type, value, payloads)
    if field.enum_type is not None:
        return enum_name(field.enum_type, value)
    return value


def enum_name(enum: EnumDescriptor, value: str | int) -> str:
    """JOB_STATE_DEAD -> "dead" (a number this build does not know stays a number, as text)."""
    if isinstance(value, int):
        return str(value)
    prefix = _enum_prefixes.get(enum.full_name)
    if prefix is None:
        prefix = _enum_prefixes[enum.full_name] = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return value.removeprefix(prefix).lower()


def _payload(data: dict[str, Any], payloads: bool) -> dict[str, Any]:
    raw = base64.b64decode(data.get("data", ""))
    shaped: dict[str, Any] = {"encoding": data.get("encoding") or "json", "size": len(raw)}
    if not payloads:
        return shaped
    shown = raw[:DISPLAY_LIMIT]
    shaped["truncated"] = len(raw) > len(shown)
    try:
        # A cut may split a character: only the end of a truncated payload may be replaced.
        shaped["text"] = shown.decode("utf-8", errors="replace" if shaped["truncated"] else "strict")
    except UnicodeDecodeError:
        shaped["base64"] = base64.b64encode(shown).decode("ascii")
    return shaped
