"""Arguments and results on the wire: JSON by default, as every SDK reads it.

Call arguments are a JSON object {"args": [...], "kwargs": {...}}.
"""

from __future__ import annotations

import json
from typing import Any

from perdure.v1 import types_pb2

JSON = "json"
# One encoder for every payload: json.dumps with options builds a new one on each call.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> types_pb2.Payload:
    document: dict[str, Any] = {"args": list(args)}
    if kwargs:
        document["kwargs"] = kwargs
    try:
        data = _encode(document).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the arguments of {name!r} must be JSON-serialisable: {exc}") from None
    return types_pb2.Payload(data=data, encoding=JSON)


def decode_call(payload: types_pb2.Payload) -> tuple[list[Any], dict[str, Any]]:
    if not payload.data:
        return [], {}
    if payload.encoding not in ("", JSON):
        return [bytes(payload.data)], {}
    document = json.loads(payload.data)
    if isinstance(document, dict) and ("args" in document or "kwargs" in document):
        return list(document.get("args") or []), dict(document.get("kwargs") or {})
    # Another producer sent a bare value: it is the single argument.
    return [document], {}


def encode_result(value: Any) -> types_pb2.Payload:
    return types_pb2.Payload(data=_encode(value).encode(), encoding=JSON)


def decode_result(payload: types_pb2.Payload) -> Any:
    if payload.encoding not in ("", JSON):
        return bytes(payload.data)
    return json.loads(payload.data) if payload.data else None
