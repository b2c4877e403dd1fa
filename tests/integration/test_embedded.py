"""Real embedded Valkey and PostgreSQL servers, each test with its own data dir."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis

from shared.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedServers, EmbeddedValkey


async def valkey_set(url: str, key: str, value: str) -> None:
    client = redis.from_url(url)
    try:
        await client.set(key, value)
    finally:
        await client.aclose()


async def valkey_get(url: str, key: str) -> bytes | str | None:
    client = redis.from_url(url)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


async def pg_execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def pg_notes(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [row["body"] for row in await conn.fetch("SELECT body FROM notes ORDER BY body")]
    finally:
        await conn.close()


CREATE_NOTES = "CREATE TABLE notes (body text NOT NULL)"


async def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    servers = EmbeddedServers(tmp_path / "data")
    servers.start()
    try:
        await valkey_set(servers.valkey.url, "fare:42", "250")
        await pg_execute(servers.postgres.url, CREATE_NOTES, "INSERT INTO notes VALUES ('tap')")
    finally:
        servers.stop()
    assert servers.valkey.pid is None
    assert servers.postgres.pid is None

    with servers:
        assert await valkey_get(servers.valkey.url, "fare:42") == b"250"
        assert await pg_notes(servers.postgres.url) == ["tap"]
    servers.stop()  # a second stop is harmless


async def test_always_fsync_keeps_a_write_acknowledged_right_before_a_crash(
    tmp_path: Path,
) -> None:
    valkey = EmbeddedValkey(tmp_path / "valkey", appendfsync="always")
    valkey.start()
    try:
        await valkey_set(valkey.url, "wallet:7", "1000")
        valkey.kill()
        assert valkey.pid is None

        valkey.start()
        assert await valkey_get(valkey.url, "wallet:7") == b"1000"
    finally:
        valkey.stop()


def test_second_supervisor_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    second = EmbeddedServers(data_dir)
    with EmbeddedServers(data_dir):
        with pytest.raises(EmbeddedError, match=re.escape(str(data_dir))) as refused:
            second.start()
        assert "\n" not in str(refused.value)
        assert second.postgres.pid is None
        assert second.valkey.pid is None
    with second:  # the lock is released once the first one stops
        assert second.postgres.pid is not None


async def test_orphaned_postgres_is_replaced_and_data_kept(tmp_path: Path) -> None:
    orphaned = EmbeddedPostgres(tmp_path / "pg")
    replacement = EmbeddedPostgres(tmp_path / "pg")
    orphaned.start()
    try:
        await pg_execute(orphaned.url, CREATE_NOTES, "INSERT INTO notes VALUES ('kept')")
        orphan_pid = orphaned.pid
        assert orphan_pid is not None

        # The supervisor "crashed": a new one starts on the same dir without a stop().
        replacement.start()
        assert replacement.pid not in (None, orphan_pid)
        assert orphaned.pid is None  # the orphan was shut down, not left alongside
        assert await pg_notes(replacement.url) == ["kept"]
    finally:
        replacement.stop()
        orphaned.kill()


async def test_orphaned_valkey_is_replaced_and_data_kept(tmp_path: Path) -> None:
    orphaned = EmbeddedValkey(tmp_path / "valkey")
    replacement = EmbeddedValkey(tmp_path / "valkey")
    orphaned.start()
    try:
        await valkey_set(orphaned.url, "gate:3", "open")
        replacement.start()
        assert orphaned.pid is None
        assert await valkey_get(replacement.url, "gate:3") == b"open"
    finally:
        replacement.stop()
        orphaned.kill()


def test_server_dying_at_start_up_reports_its_log_in_one_line(tmp_path: Path) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg")
    postgres.start()
    postgres.stop()
    with (tmp_path / "pg" / "postgresql.auto.conf").open("a") as conf:
        conf.write("shared_buffers = 'lots'\n")

    with pytest.raises(EmbeddedError) as failed:
        postgres.start()
    message = str(failed.value)
    assert "\n" not in message
    assert "postgresql.auto.conf" in message
    assert str(postgres.log_path) in message
    assert postgres.pid is None


def test_explicit_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        valkey = EmbeddedValkey(tmp_path / "valkey", port=port)
        with pytest.raises(EmbeddedError, match=f"port {port} .* already in use"):
            valkey.start()
    assert valkey.pid is None
