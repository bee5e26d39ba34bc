"""perdured settings: flags, PERDURE_* variables and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from perdured.config import Settings, build_parser, settings_from


def settings(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return settings_from(build_parser().parse_args(argv), environ or {})


def test_defaults() -> None:
    s = settings([])
    assert (s.database_url, s.listen, s.lease, s.log_format, s.data_dir) == (
        None, "127.0.0.1:7433", 30.0, "console", Path(".perdure"))


def test_environment__sets_every_option() -> None:
    s = settings([], {
        "PERDURE_DATABASE_URL": "postgresql://db/x", "PERDURE_LISTEN": "0.0.0.0:9000", "PERDURE_LEASE": "12.5",
        "PERDURE_LOG_FORMAT": "json", "PERDURE_DATA_DIR": "/var/lib/perdure", "PERDURE_INSECURE": "true",
    })
    assert (s.database_url, s.listen, s.lease, s.log_format, s.data_dir) == (
        "postgresql://db/x", "0.0.0.0:9000", 12.5, "json", Path("/var/lib/perdure"))


def test_flags__win_over_the_environment() -> None:
    s = settings(["--lease", "5", "--listen", "127.0.0.1:1"], {"PERDURE_LEASE": "99", "PERDURE_LISTEN": "x:1"})
    assert (s.lease, s.listen) == (5.0, "127.0.0.1:1")


@pytest.mark.parametrize("url", ["postgres://u:p@h:5432/db", "postgresql://u:p@h:5432/db"])
def test_database_url__accepts_both_schemes(url: str) -> None:
    assert settings(["--database-url", url]).database_url == "postgresql://u:p@h:5432/db"


def test_bad_values__are_refused_with_the_name_of_the_setting() -> None:
    with pytest.raises(SystemExit, match="PERDURE_LEASE"):
        settings([], {"PERDURE_LEASE": "-1"})
    with pytest.raises(SystemExit, match="--log-format must be json or console"):
        settings(["--log-format", "xml"])
    with pytest.raises(SystemExit):
        settings(["--lease", "0"])


def test_readme__lists_every_flag_and_variable() -> None:
    from pathlib import Path

    from perdured.config import _OPTIONS

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [f"{flag} / {env}" for flag, env, _, _ in _OPTIONS if f"| `{flag}` | `{env}` |" not in readme]
    assert not missing, f"the README's table of settings lacks {missing}"
