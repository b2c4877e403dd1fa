"""Migrations: each applied once even when processes race, and a broken one leaves nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from shared import db
from shared.config import PlatformConfig
from shared.service import Service, migrate
from tests.conftest import service_env
from tests.support import REPO


async def ledger(database_url: str, schema: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT component, name FROM public.cardless_migrations "
            "WHERE schema_name = $1 ORDER BY component, version",
            schema,
        )
        return [f"{r['component']}/{r['name']}" for r in rows]
    finally:
        await conn.close()


async def test_two_processes_starting_together_apply_each_migration_once(
    config: PlatformConfig,
) -> None:
    env = service_env(config)
    command = [sys.executable, "-m", "shared.cli", "migrate", "tests.platform_app:SERVICE"]
    procs = [
        await asyncio.create_subprocess_exec(*command, env=env, cwd=REPO, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [(await p.communicate())[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(o.split(": ")[1].split()[0] for o in outputs) == ["0", "3"]
    schema = config.service
    assert await ledger(config.database_url, schema) == [
        f"{schema}/001_notes.sql",
        "platform/001_bus.sql",
        "platform/002_idempotency.sql",
    ]


def broken_service(name: str, tmp_path: Path) -> Service:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE fine (id int);")
    (tmp_path / "002_broken.sql").write_text(
        "CREATE TABLE half (id int);\nCREATE TABLE oops (id nonexistent_type);"
    )
    return Service(name=name, add_routes=lambda app: None, migrations=tmp_path)


async def test_a_broken_migration_stops_start_up_and_leaves_no_half_schema(
    config: PlatformConfig, tmp_path: Path
) -> None:
    service = broken_service(config.service, tmp_path)
    with pytest.raises(
        db.MigrationError,
        match=r"002_broken\.sql failed and was rolled back.*"
        r"nonexistent_type",
    ):
        await migrate(service, config.database_url)
    assert await ledger(config.database_url, service.schema) == [
        f"{service.name}/001_ok.sql",
        "platform/001_bus.sql",
        "platform/002_idempotency.sql",
    ]
    conn = await asyncpg.connect(config.database_url)
    try:
        half = await conn.fetchval("SELECT to_regclass($1)", f"{service.schema}.half")
        fine = await conn.fetchval("SELECT to_regclass($1)", f"{service.schema}.fine")
    finally:
        await conn.close()
    assert half is None
    assert fine is not None


async def test_the_cli_reports_a_broken_migration_in_one_line(
    config: PlatformConfig, tmp_path: Path
) -> None:
    (tmp_path / "001_broken.sql").write_text("CREATE TABLE oops (id nonexistent_type);")
    (tmp_path / "brokenapp.py").write_text(
        "from pathlib import Path\nfrom shared.service import Service\n"
        f"SERVICE = Service(name={config.service!r}, add_routes=lambda app: None, "
        "migrations=Path(__file__).parent)\n"
    )
    env = {**service_env(config), "PYTHONPATH": f"{tmp_path}:{REPO}"}
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "migrate", "brokenapp:SERVICE"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "001_broken.sql failed and was rolled back" in result.stderr
    assert "Traceback" not in result.stderr


async def test_an_edited_applied_migration_is_refused(
    config: PlatformConfig, tmp_path: Path
) -> None:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE fine (id int);")
    service = Service(name=config.service, add_routes=lambda app: None, migrations=tmp_path)
    await migrate(service, config.database_url)
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE fine (id bigint);")
    with pytest.raises(db.MigrationError, match="changed after it was applied"):
        await migrate(service, config.database_url)
