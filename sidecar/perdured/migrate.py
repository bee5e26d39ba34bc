"""Schema migrations: migrations/NNNN_name.sql, applied in order under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from perdured.logs import log

# Any fixed number works; it only has to be the same for every sidecar.
_MIGRATION_LOCK = 0x7065726475726500  # "perdure\0"
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class SchemaTooNew(RuntimeError):
    """The database schema is newer than this perdured knows: upgrade perdured."""


class SchemaMismatch(RuntimeError):
    """A migration file differs from the one applied to the database."""


class MigrationPermissionError(RuntimeError):
    """Migrations are due, but this role may not change the schema."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    # Installed wheels carry the files inside the package; a source checkout has them at the root.
    packaged = Path(__file__).parent / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    found = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if not match:
            raise RuntimeError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1, 2, 3, ... without gaps; found {versions}")
    return found


async def _up_to_date(conn: psycopg.AsyncConnection, migrations: list[Migration]) -> bool:
    """True when every migration is applied, unchanged, and none newer: read-only checks."""
    async with conn.transaction():
        cursor = await conn.execute("SELECT to_regclass('perdure.schema_migrations') IS NOT NULL")
        row = await cursor.fetchone()
        if not row or not row[0]:
            return False
        cursor = await conn.execute("SELECT version, checksum FROM perdure.schema_migrations")
        applied: dict[int, str] = dict(await cursor.fetchall())
    return applied == {m.version: m.checksum for m in migrations}


async def migrate(conn: psycopg.AsyncConnection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing, all in one transaction; returns the versions applied now.

    Many sidecars may start at once: the advisory lock lets one apply while the others
    wait, then find nothing left to do.
    """
    migrations = load_migrations() if migrations is None else migrations
    latest = migrations[-1].version if migrations else 0
    if await _up_to_date(conn, migrations):
        # Nothing to change: no DDL at all, so a role that may only read and write the tables
        # (the least privilege for a sidecar) starts fine.
        return []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        try:
            await conn.execute("CREATE SCHEMA IF NOT EXISTS perdure")
        except psycopg.errors.InsufficientPrivilege as exc:
            raise MigrationPermissionError(
                f"the schema needs migrations up to version {latest}, but this role cannot change it ({exc}); "
                f"run `perdured migrate` as a role that can, then start the sidecars"
            ) from None
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS perdure.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version, checksum FROM perdure.schema_migrations")
        applied: dict[int, str] = dict(await cursor.fetchall())
        newest = max(applied, default=0)
        if newest > latest:
            raise SchemaTooNew(
                f"the database schema is at version {newest}, but this perdured knows versions up to "
                f"{latest}: upgrade perdured (never run an older sidecar against a newer schema)"
            )
        for migration in migrations:
            if migration.version in applied and applied[migration.version] != migration.checksum:
                raise SchemaMismatch(
                    f"migration {migration.version:04d}_{migration.name}.sql differs from the one applied to "
                    f"this database: applied migrations must never change; add a new one instead"
                )
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            await conn.execute(migration.sql.encode())
            await conn.execute(
                "INSERT INTO perdure.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            log.info("migration.applied", version=migration.version, migration=migration.name)
            done.append(migration.version)
        return done
