"""What the perdure command accepts and how it writes things down: durations, labels, states,
JSON options, and the JSON documents it prints."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from perdure.cli._output import call_text, format_duration, to_dict
from perdure.cli._params import LABEL, JsonType, StatesType, parse_duration
from perdure.v1 import admin_pb2, types_pb2


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("1.5", 1.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0),
    ("500ms", 0.5), ("1h30m", 5400.0), ("1m 30s", 90.0), ("0", 0.0), (".5s", 0.5), ("2H", 7200.0),
])
def test_parse_duration__reads_units_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "-5s", "1h30", "s", "5m-", "1e400"])
def test_parse_duration__refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.35, "350ms"), (4.2, "4.2s"), (4.0, "4s"), (42.4, "42s"), (192, "3m12s"), (7500, "2h05m"), (273600, "3d04h"),
    (-5, "-5s"),
])
def test_format_duration__is_short_and_exact_enough(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_label__is_key_equals_value() -> None:
    assert LABEL.convert("tenant=acme", None, None) == ("tenant", "acme")
    assert LABEL.convert("query=a=b", None, None) == ("query", "a=b")
    assert LABEL.convert("empty=", None, None) == ("empty", "")
    for bad in ("tenant", "=acme"):
        with pytest.raises(click.BadParameter):
            LABEL.convert(bad, None, None)


def test_states__one_or_several_comma_separated() -> None:
    states = StatesType(("success", "dead", "cancelled"))
    assert states.convert("dead", None, None) == ["dead"]
    assert states.convert("Dead, cancelled", None, None) == ["dead", "cancelled"]
    with pytest.raises(click.BadParameter, match="expected one of success, dead, cancelled"):
        states.convert("pending", None, None)


def test_json_option__inline_from_a_file_or_standard_input(tmp_path) -> None:
    arguments = JsonType(list)
    assert arguments.convert('[1, "two"]', None, None) == [1, "two"]
    document = tmp_path / "args.json"
    document.write_text('["from a file"]')
    assert arguments.convert(f"@{document}", None, None) == ["from a file"]
    with pytest.raises(click.BadParameter, match="must be a JSON array"):
        arguments.convert('{"a": 1}', None, None)
    with pytest.raises(click.BadParameter, match="not valid JSON"):
        arguments.convert("[1,", None, None)
    with pytest.raises(click.BadParameter, match="cannot read"):
        arguments.convert(f"@{tmp_path / 'missing.json'}", None, None)

    @click.command()
    @click.option("--kwargs", type=JsonType(dict))
    def show(kwargs: dict) -> None:
        click.echo(json.dumps(kwargs))

    assert CliRunner().invoke(show, ["--kwargs", "-"], input='{"to": "x"}').output.strip() == '{"to": "x"}'


def test_to_dict__keeps_the_contracts_names_with_numbers_and_decoded_payloads() -> None:
    job = types_pb2.Job(id="j", state=types_pb2.JOB_STATE_DEAD,
                        payload=types_pb2.Payload(data=b'{"args":[1]}', encoding="json"),
                        result=types_pb2.Payload(data=b"\x00\x01", encoding="bytes"),
                        children=[types_pb2.Job(id="c", payload=types_pb2.Payload(data=b"7"))])
    document = to_dict(job)
    assert document["state"] == "JOB_STATE_DEAD" and document["attempt"] == 0 and document["waiting_for"] == ""
    assert document["payload"]["json"] == {"args": [1]} and document["payload"]["data"] == "eyJhcmdzIjpbMV19"
    assert "json" not in document["result"]  # not JSON: left as base64 data
    assert document["children"][0]["payload"]["json"] == 7
    stats = to_dict(admin_pb2.GetStatsResponse(functions=[admin_pb2.FunctionStats(name="f", pending=3)]))
    assert stats["functions"][0]["pending"] == 3 and stats["functions"][0]["dead"] == 0  # int64: numbers


def test_call_text__reads_like_a_call() -> None:
    payload = types_pb2.Payload(data=b'{"args":["a",1],"kwargs":{"x":[2]}}', encoding="json")
    assert call_text(payload) == '("a", 1, x=[2])'
    assert call_text(types_pb2.Payload(data=b'{"other":1}')) == '{"other": 1}'
    assert call_text(types_pb2.Payload(data=b"abc", encoding="bytes")) == "<3 bytes, encoding bytes>"


def test_commands__are_pinned() -> None:
    from perdure.cli import cli

    def tree(command: click.Command) -> object:
        if isinstance(command, click.Group):
            return {name: tree(sub) for name, sub in sorted(command.commands.items())}
        return None

    assert tree(cli) == {
        "doctor": None, "events": {"emit": None, "show": None}, "migrate": None,
        "jobs": {"cancel": None, "enqueue": None, "list": None, "purge": None, "retry": None, "show": None,
                 "wait": None, "watch": None},
        "schedules": {"create": None, "delete": None, "list": None, "pause": None, "resume": None, "show": None,
                      "update": None},
        "stats": None, "workers": None,
    }
