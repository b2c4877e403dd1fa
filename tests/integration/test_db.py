"""The transaction helper retries what PostgreSQL asks to be retried, and nothing else."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import Connection, in_transaction


async def test_conflicting_serializable_transactions_are_retried_until_each_applies(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("CREATE TABLE counter (id int PRIMARY KEY, value int NOT NULL)")
    await pool.execute("INSERT INTO counter VALUES (1, 0)")
    attempts = 0
    all_read = asyncio.Barrier(4)

    async def increment(conn: Connection) -> None:
        nonlocal attempts
        attempts += 1
        value = await conn.fetchval("SELECT value FROM counter WHERE id = 1")
        if attempts <= 4:
            await all_read.wait()  # all four read the same value: three must fail and retry
        await conn.execute("UPDATE counter SET value = $1 WHERE id = 1", value + 1)

    await asyncio.gather(
        *(in_transaction(pool, increment, isolation="serializable") for _ in range(4))
    )
    assert await pool.fetchval("SELECT value FROM counter WHERE id = 1") == 4
    assert attempts > 4


async def test_other_errors_are_not_retried(pool: asyncpg.Pool) -> None:
    attempts = 0

    async def broken(conn: Connection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(asyncpg.UndefinedTableError):
        await in_transaction(pool, broken)
    assert attempts == 1
