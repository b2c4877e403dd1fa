"""PostgreSQL: a pool per service bound to its own schema, retried transactions, migrations.

Migrations are numbered ``NNN_name.sql`` files per component (the platform's bus tables, then
the service's own). Each file is applied in one transaction together with its record in
``public.cardless_migrations``, so a failing file leaves nothing behind; a session advisory lock
makes processes that start together apply each file once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from shared.config import OperatorError

log = logging.getLogger(__name__)
T = TypeVar("T")
# The database or the network went away: worth trying again, unlike a bad statement.
SERVER_FAILURES = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection, whether taken from a pool or opened alone."""
Isolation = Literal["read_committed", "repeatable_read", "serializable"]

PLATFORM_MIGRATIONS = Path(__file__).parent / "migrations"
_RETRYABLE: tuple[type[asyncpg.PostgresError], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)
_MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_LOCK_KEY = 0x63617264  # "card": the advisory lock all migration runners queue on


class MigrationError(OperatorError):
    """A migration could not be applied; one line naming the file and the reason."""


async def create_pool(database_url: str, schema: str, *, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections see ``schema`` first on their search path."""
    check_schema(schema)
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=max_size,
        server_settings={"search_path": f"{schema}, public", "application_name": schema},
    )
    assert pool is not None
    return pool


def check_schema(schema: str) -> str:
    if not _SCHEMA.match(schema):
        raise ValueError(f"schema names are lowercase identifiers, got {schema!r}")
    return schema


async def in_transaction(
    pool: asyncpg.Pool,
    work: Callable[[Connection], Awaitable[T]],
    *,
    isolation: Isolation = "read_committed",
    attempts: int = 5,
    retry_on: tuple[type[asyncpg.PostgresError], ...] = (),
) -> T:
    """Run ``work`` in a transaction, retrying serialization failures and deadlocks.

    ``retry_on`` adds errors that a fresh attempt resolves (a unique violation from a
    concurrent insert of the same key, when ``work`` reads before it writes).
    """
    retryable = (*_RETRYABLE, *retry_on)
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn, conn.transaction(isolation=isolation):
                return await work(conn)
        except retryable as exc:
            if attempt == attempts:
                raise
            delay = random.uniform(0, 0.005 * 2**attempt)  # full jitter, bounded
            log.info("transaction retried", extra={"attempt": attempt, "sqlstate": exc.sqlstate})
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file of one component (``platform`` or a service)."""

    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(component: str, directory: Path) -> list[Migration]:
    """The ``NNN_name.sql`` files of a directory, in order; gaps and duplicates are errors."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNN_lowercase_name.sql")
        found.append(Migration(component, int(match.group(1)), path.name, path.read_text()))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"{directory}: expected migration {expected:03d}, found {migration.name}"
            )
    return found


def plan(
    migrations_dir: Path | None, component: str, components: Sequence[str] = ()
) -> list[Migration]:
    """The platform's bus tables first, then the service's own migrations, then those of the
    shared pieces it uses (``components``, e.g. ``keyring``: its tables in the service's
    schema)."""
    steps = load_migrations("platform", PLATFORM_MIGRATIONS)
    if migrations_dir is not None:
        steps += load_migrations(component, migrations_dir)
    for shared in components:
        steps += load_migrations(shared, PLATFORM_MIGRATIONS / shared)
    return steps


_LEDGER = """
CREATE TABLE IF NOT EXISTS public.cardless_migrations (
    schema_name text NOT NULL,
    component text NOT NULL,
    version int NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, component, version)
)"""


async def migrate(conn: Connection, schema: str, steps: Sequence[Migration]) -> list[str]:
    """Apply what is not yet applied; returns the names applied. Safe to run concurrently."""
    check_schema(schema)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_LEDGER)
        done = await _applied(conn, schema)
        return [
            await _apply(conn, schema, step, done) for step in steps if _needed(schema, step, done)
        ]
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def _applied(conn: Connection, schema: str) -> dict[tuple[str, int], str]:
    rows = await conn.fetch(
        "SELECT component, version, checksum FROM public.cardless_migrations"
        " WHERE schema_name = $1",
        schema,
    )
    return {(r["component"], r["version"]): r["checksum"] for r in rows}


def _needed(schema: str, step: Migration, done: dict[tuple[str, int], str]) -> bool:
    checksum = done.get((step.component, step.version))
    if checksum is None:
        return True
    if checksum != step.checksum:
        raise MigrationError(
            f"{schema}: {step.component}/{step.name} was changed after it was "
            "applied; add a new migration instead of editing an applied one"
        )
    return False


async def _apply(
    conn: Connection, schema: str, step: Migration, done: dict[tuple[str, int], str]
) -> str:
    try:
        async with conn.transaction():
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
            await conn.execute(step.sql)
            await conn.execute(
                "INSERT INTO public.cardless_migrations"
                " (schema_name, component, version, name, checksum) VALUES ($1, $2, $3, $4, $5)",
                schema,
                step.component,
                step.version,
                step.name,
                step.checksum,
            )
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"{schema}: {step.component}/{step.name} failed and was rolled back: {exc}"
        ) from exc
    done[(step.component, step.version)] = step.checksum
    log.info("migration applied", extra={"schema": schema, "migration": step.name})
    return f"{step.component}/{step.name}"


async def pending(
    conn: asyncpg.Connection | asyncpg.Pool, schema: str, steps: Sequence[Migration]
) -> int:
    """How many of ``steps`` are not yet applied (for /readyz)."""
    applied = await conn.fetchval(
        "SELECT count(*) FROM public.cardless_migrations WHERE schema_name = $1", schema
    )
    return max(0, len(steps) - int(applied or 0))
