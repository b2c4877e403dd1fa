"""Daily statements come from the ledger, and a closed day's statement never changes."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta

import asyncpg
import pytest

from services.wallet import statements, store
from services.wallet.app import SERVICE
from services.wallet.ledger import LEDGERS, Account, AccountCode, Transfer, TransferCode
from services.wallet.ledger import TransferFlags as F
from services.wallet.settlement import BusinessDay
from shared import db
from shared.config import PlatformConfig
from shared.service import Service, migrate

CNY = LEDGERS["CNY"]


@pytest.fixture
async def pool(config: PlatformConfig, namespace: str) -> AsyncIterator[asyncpg.Pool]:
    service: Service = dataclasses.replace(SERVICE, name=f"wallet_{namespace}")
    await migrate(service, config.database_url)
    pool = await db.create_pool(config.database_url, service.schema, max_size=2)
    yield pool
    await pool.close()


async def test_a_closed_days_statement_is_built_from_the_ledger_and_then_never_changes(
    pool: asyncpg.Pool,
) -> None:
    clearing, rider = uuid.uuid4(), uuid.uuid4()
    w = AccountCode.RIDER_WALLET
    async with pool.acquire() as conn, conn.transaction():
        await store.open_accounts(
            conn, [Account(clearing, CNY, AccountCode.PROVIDER_CLEARING), Account(rider, CNY, w)]
        )
        hold = Transfer(uuid.uuid4(), rider, clearing, 200, CNY, TransferCode.REFUND, F.PENDING)
        await store.create_transfers(conn, [
            Transfer(uuid.uuid4(), clearing, rider, 1250, CNY, TransferCode.TOP_UP),
            Transfer(uuid.uuid4(), clearing, rider, 750, CNY, TransferCode.TOP_UP),
            hold,  # a hold moves no posted money: not in the statement until posted
            Transfer(uuid.uuid4(), pending_id=hold.id, amount=150,
                     flags=F.POST_PENDING_TRANSFER),
        ])  # fmt: skip
        now = await conn.fetchval("SELECT now()")
    day = BusinessDay.of(now, "Asia/Shanghai", time(4))
    later = day.bounds()[1] + timedelta(hours=1)

    async with pool.acquire() as conn:
        csv, body = await statements.daily(conn, clearing, "provider:sandbox", "CNY", day, later)
    summary = json.loads(body)
    assert (summary["opening_minor"], summary["closing_minor"]) == (0, -1850)
    assert [(t["type"], t["count"], t["amount_minor"]) for t in summary["totals"]] == [
        ("refund", 1, 150),
        ("top_up", 2, -2000),
    ]
    assert csv.startswith(b"format,cardless.statement.v1\r\n")

    async with pool.acquire() as conn, conn.transaction():
        late = Transfer(uuid.uuid4(), clearing, rider, 1, CNY, TransferCode.TOP_UP)
        await store.create_transfers(conn, [late])  # stamped inside the day, after closing
    async with pool.acquire() as conn:
        again = await statements.daily(conn, clearing, "provider:sandbox", "CNY", day, later)
    assert again == (csv, body)


async def test_a_day_that_is_not_final_has_no_statement_yet(pool: asyncpg.Pool) -> None:
    day = BusinessDay.of(datetime.now(UTC), "Asia/Shanghai", time(4))
    just_after = day.bounds()[1] + timedelta(minutes=1)
    async with pool.acquire() as conn:
        with pytest.raises(statements.DayNotClosed):
            await statements.daily(conn, uuid.uuid4(), "x", "CNY", day, just_after)
