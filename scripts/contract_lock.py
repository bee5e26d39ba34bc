"""The contract's lock: every message field, enum value and RPC of perdure.v1 ever released.

    python scripts/contract_lock.py           # add what is new to proto/perdure/v1/contract.lock.json
    python scripts/contract_lock.py --check   # exit 1 on a breaking change, or a lock that lacks additions

The lock only grows. A change is breaking, and refused, when something in the lock is gone
or differs: a message, enum or service removed; a field number removed, or given another
name, type, label or message type; an enum value number removed or renamed; an RPC removed,
or its request, response or streaming changed. Adding messages, fields, values and RPCs is
fine. Breaking changes belong in a new package (perdure.v2), never in perdure.v1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "proto" / "perdure" / "v1" / "contract.lock.json"
sys.path.insert(0, str(ROOT / "sdk_python"))


def current() -> dict[str, Any]:
    """The contract as the committed stubs describe it (they are checked against proto/)."""
    _TYPE_NAMES.update(_type_names())
    contract: dict[str, Any] = {"messages": {}, "enums": {}, "services": {}}
    for proto in sorted((ROOT / "proto" / "perdure" / "v1").glob("*.proto")):
        file = importlib.import_module(f"perdure.v1.{proto.stem}_pb2").DESCRIPTOR
        for message in file.message_types_by_name.values():
            _message(message, contract)
        for enum in file.enum_types_by_name.values():
            _enum(enum, contract)
        for service in file.services_by_name.values():
            contract["services"][service.full_name] = {
                method.name: {
                    "input": method.input_type.full_name, "output": method.output_type.full_name,
                    "client_streaming": method.client_streaming, "server_streaming": method.server_streaming,
                }
                for method in service.methods
            }
    return contract


def _type_names() -> dict[int, str]:
    from google.protobuf.descriptor import FieldDescriptor

    return {getattr(FieldDescriptor, n): n[len("TYPE_"):].lower() for n in dir(FieldDescriptor) if n.startswith("TYPE_")}


_TYPE_NAMES: dict[int, str] = {}


def _message(message: Any, contract: dict[str, Any]) -> None:
    contract["messages"][message.full_name] = {
        str(field.number): {
            "name": field.name, "type": _TYPE_NAMES[field.type],
            "label": "repeated" if field.is_repeated else "single",
            "type_name": (field.message_type or field.enum_type).full_name
            if (field.message_type or field.enum_type) else "",
        }
        for field in message.fields
    }
    for nested in message.nested_types:
        _message(nested, contract)
    for enum in message.enum_types:
        _enum(enum, contract)


def _enum(enum: Any, contract: dict[str, Any]) -> None:
    contract["enums"][enum.full_name] = {str(value.number): value.name for value in enum.values}


def breaking_changes(locked: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What `now` removed or changed of `locked` (additions are not listed)."""
    problems = []
    for kind in ("messages", "enums", "services"):
        for name, members in locked[kind].items():
            if name not in now[kind]:
                problems.append(f"{kind[:-1]} {name} was removed")
                continue
            for key, shape in members.items():
                if key not in now[kind][name]:
                    what = {"messages": "field number", "enums": "value number", "services": "rpc"}[kind]
                    problems.append(f"{name}: {what} {key} ({_describe(shape)}) was removed")
                elif now[kind][name][key] != shape:
                    problems.append(f"{name}: {key} changed from {_describe(shape)} to {_describe(now[kind][name][key])}")
    return problems


def merged(locked: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The lock with `now`'s additions (only call when there is no breaking change)."""
    result: dict[str, Any] = json.loads(json.dumps(locked))
    for kind in ("messages", "enums", "services"):
        for name, members in now[kind].items():
            result[kind].setdefault(name, {}).update(members)
    return result


def _describe(shape: Any) -> str:
    if isinstance(shape, dict):
        return ", ".join(f"{k}={v}" for k, v in shape.items())
    return str(shape)


def load_lock() -> dict[str, Any]:
    return json.loads(LOCK.read_text()) if LOCK.exists() else {"messages": {}, "enums": {}, "services": {}}


def write_lock(contract: dict[str, Any]) -> None:
    LOCK.write_text(json.dumps(contract, indent=1, sort_keys=True) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report breaking changes and a stale lock")
    args = parser.parse_args()
    locked, now = load_lock(), current()
    problems = breaking_changes(locked, now)
    if problems:
        print("breaking changes to perdure.v1 (make them in perdure.v2 instead):")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    updated = merged(locked, now)
    if args.check:
        if updated != locked:
            print("the contract lock lacks additions: run scripts/contract_lock.py")
            return 1
        print("the contract lock is current; no breaking change")
        return 0
    write_lock(updated)
    print(f"wrote {LOCK.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
