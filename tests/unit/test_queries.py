"""queries.sql as perdured loads it: whole statements, each ending with its name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from perdured.store import FRAGMENTS, QUERIES, load_queries

QUERIES_SQL = Path(__file__).resolve().parents[2] / "sidecar" / "perdured" / "queries.sql"


def test_every_statement__ends_with_its_name_for_pg_stat_statements() -> None:
    for name, sql in QUERIES.items():
        assert sql.endswith(f"\n/* perdured:{name} */"), name
        assert len(re.findall(r"/\* perdured:\w+ \*/", sql)) == 1, name  # fragments add no name of their own


def test_fragments__are_filled_in_and_not_statements_of_their_own() -> None:
    assert not set(FRAGMENTS) & QUERIES.keys()
    for name, sql in QUERIES.items():
        assert not re.search(r"\{[a-z_]+\}", sql), name


def test_brief_enqueue__returns_only_the_brief_columns() -> None:
    assert "RETURNING id, namespace, name, state, run_at, worker_id" in QUERIES["enqueue_brief"]
    assert QUERIES["enqueue_brief"].replace("enqueue_brief", "enqueue") != QUERIES["enqueue"]


def test_an_enqueue_the_brief_one_cannot_be_derived_from__is_refused(tmp_path) -> None:
    changed = tmp_path / "queries.sql"
    changed.write_text(QUERIES_SQL.read_text().replace("RETURNING {job_columns}, worker_id", "RETURNING *"))
    with pytest.raises(ValueError, match="enqueue_brief"):
        load_queries(changed)


def test_every_statement__is_short_enough_for_psycopg_to_keep_its_parse() -> None:
    # Longer texts (or more parameters) psycopg parses again at every execution.
    from psycopg import _queries
    for name, sql in QUERIES.items():
        assert len(sql.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH, name
        assert len(set(re.findall(r"%\((\w+)\)", sql))) <= _queries.MAX_CACHED_STATEMENT_PARAMS, name
    assert "--" not in QUERIES["finish"].split("\n", 1)[0]  # comment lines are not sent
