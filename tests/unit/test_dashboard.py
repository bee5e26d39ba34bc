"""The dashboard's settings (off unless asked, loopback unless allowed) and how it shows
messages of the contract as JSON."""

from __future__ import annotations

import base64
import json

import pytest

from perdure.v1 import admin_pb2, jobs_pb2, types_pb2
from perdured.config import Settings, build_parser, is_loopback, settings_from
from perdured.dashboard import dial_address
from perdured.dashboard.shape import DISPLAY_LIMIT, to_json


def settings(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return settings_from(build_parser().parse_args(argv), environ or {})


def test_dashboard__is_off_by_default() -> None:
    s = settings([])
    assert (s.dashboard_listen, s.dashboard_allow_remote) == ("", False)


def test_dashboard_listen__from_the_flag_or_the_environment() -> None:
    assert settings(["--dashboard-listen", "127.0.0.1:7434"]).dashboard_listen == "127.0.0.1:7434"
    assert settings([], {"PERDURE_DASHBOARD_LISTEN": "localhost:9000"}).dashboard_listen == "localhost:9000"
    assert settings(["--dashboard-listen", "[::1]:7434"], {"PERDURE_DASHBOARD_LISTEN": "x:1"}).dashboard_listen == "[::1]:7434"


@pytest.mark.parametrize("listen", ["0.0.0.0:7434", ":7434", "10.1.2.3:7434", "dashboard.example.com:7434", "[::]:7434"])
def test_dashboard_listen__refuses_an_address_beyond_this_machine(listen: str) -> None:
    with pytest.raises(SystemExit, match="without TLS and a token.*--dashboard-allow-remote"):
        settings(["--dashboard-listen", listen])


def test_dashboard_listen__takes_a_wider_address_when_allowed() -> None:
    assert settings(["--dashboard-listen", "0.0.0.0:7434", "--dashboard-allow-remote"]).dashboard_allow_remote
    s = settings([], {"PERDURE_DASHBOARD_LISTEN": "0.0.0.0:7434", "PERDURE_DASHBOARD_ALLOW_REMOTE": "true"})
    assert (s.dashboard_listen, s.dashboard_allow_remote) == ("0.0.0.0:7434", True)
    with pytest.raises(SystemExit, match="--dashboard-allow-remote"):
        settings([], {"PERDURE_DASHBOARD_LISTEN": "0.0.0.0:7434", "PERDURE_DASHBOARD_ALLOW_REMOTE": "false"})


@pytest.mark.parametrize("listen", ["7434", "127.0.0.1", "127.0.0.1:port", "127.0.0.1:70000"])
def test_dashboard_listen__must_be_host_and_port(listen: str) -> None:
    with pytest.raises(SystemExit):
        settings(["--dashboard-listen", listen])
    with pytest.raises(SystemExit, match="PERDURE_DASHBOARD_LISTEN"):
        settings([], {"PERDURE_DASHBOARD_LISTEN": listen})


def test_is_loopback__names_and_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "[::1]", "::1", "app.localhost"]))
    assert not any(map(is_loopback, ["", "0.0.0.0", "::", "192.168.1.10", "example.com", "localhost.example.com"]))


def test_dial_address__reaches_a_wildcard_bind_on_loopback() -> None:
    assert dial_address("0.0.0.0:7433") == "127.0.0.1:7433"
    assert dial_address("[::]:7433") == "[::1]:7433"
    assert dial_address("10.0.0.5:7433") == "10.0.0.5:7433"


def test_to_json__enums_durations_and_numbers_read_plainly() -> None:
    job = types_pb2.Job(id="j", state=types_pb2.JOB_STATE_SUSPENDED, labels={"team": "infra"})
    job.timeout.FromMilliseconds(1500)
    job.created_at.FromJsonString("2026-01-02T03:04:05Z")
    job.attempts.add(number=1, outcome=types_pb2.ATTEMPT_OUTCOME_LEASE_EXPIRED)
    data = to_json(job)
    assert (data["state"], data["timeout"], data["created_at"]) == ("suspended", 1.5, "2026-01-02T03:04:05Z")
    assert data["attempts"][0]["outcome"] == "lease_expired"
    assert data["labels"] == {"team": "infra"}
    assert (data["attempt"], data["parent_id"], data["steps"]) == (0, "", [])  # present although unset
    assert "finished_at" not in data and "error" not in data  # fields with presence stay out when unset
    assert to_json(jobs_pb2.JobEvent(kind=jobs_pb2.JOB_EVENT_KIND_ATTEMPT_FAILED))["kind"] == "attempt_failed"
    stats = to_json(admin_pb2.FunctionStats(pending=2**40))
    assert stats["pending"] == 2**40 and isinstance(stats["pending"], int)
    json.dumps(data)


def test_to_json__payloads_as_text_or_base64_and_cut_for_display() -> None:
    text = to_json(types_pb2.Job(payload=types_pb2.Payload(data=b'{"args": ["<b>hi</b>"]}', encoding="json")))
    assert text["payload"] == {"encoding": "json", "size": 23, "truncated": False, "text": '{"args": ["<b>hi</b>"]}'}
    binary = to_json(types_pb2.Job(payload=types_pb2.Payload(data=b"\xff\x00\x01", encoding="bytes")))
    assert binary["payload"] == {"encoding": "bytes", "size": 3, "truncated": False,
                                 "base64": base64.b64encode(b"\xff\x00\x01").decode()}
    large = "é" * DISPLAY_LIMIT  # two bytes each: cut in the middle of the page's limit
    cut = to_json(types_pb2.Job(result=types_pb2.Payload(data=large.encode(), encoding="json")))["result"]
    assert cut["truncated"] and cut["size"] == 2 * DISPLAY_LIMIT and cut["text"] == "é" * (DISPLAY_LIMIT // 2)
    listed = to_json(types_pb2.Job(payload=types_pb2.Payload(data=b"[1]")), payloads=False)
    assert listed["payload"] == {"encoding": "json", "size": 3}
