"""perdured runs with a role that may read and write Perdure's tables but not change the
schema (the least privilege in production): migrations are applied by another role."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from perdured.migrate import MigrationPermissionError, migrate

from ..conftest import start_sidecar

GRANTS = """
GRANT USAGE ON SCHEMA perdure TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA perdure TO {role};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA perdure TO {role};
"""


async def test_sidecar__runs_with_a_role_that_cannot_change_the_schema(database_url, db, make_client) -> None:
    role = f"perdure_app_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'app'")
    db.execute(GRANTS.format(role=role))
    params = conninfo_to_dict(database_url) | {"user": role, "password": "app"}
    app_url = make_conninfo(**params)
    with psycopg.connect(app_url) as conn:  # the role really cannot create anything here
        try:
            conn.execute("CREATE TABLE perdure.intruder (x int)")
            raise AssertionError("the application role could create a table")
        except psycopg.errors.InsufficientPrivilege:
            pass
    sidecar = await start_sidecar(app_url)
    try:
        client = make_client(address=sidecar.address)

        @client.durable("least:privilege")
        async def work(x: int) -> int:
            return x * 2

        async with client:
            await client.wait_until_serving()
            assert await (await work(21)).result(timeout=30) == 42
    finally:
        await sidecar.stop()


async def test_migrations_due__a_role_that_cannot_apply_them_gets_a_clear_error(empty_database_url) -> None:
    role = f"perdure_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(empty_database_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'app'")
    app_url = make_conninfo(**(conninfo_to_dict(empty_database_url) | {"user": role, "password": "app"}))
    async with await psycopg.AsyncConnection.connect(app_url) as conn:
        with pytest.raises(MigrationPermissionError, match="run `perdured migrate` as a role that can"):
            await migrate(conn)
