"""Daily statements come from the ledger, and a closed day's statement never changes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta

import asyncpg
import pytest

from services.wallet import finance, store, topups
from services.wallet.ledger import LEDGERS, Account, AccountCode, Result, Transfer, TransferCode
from services.wallet.ledger import TransferFlags as F
from services.wallet.providers import StandardWebhooksKeys
from services.wallet.settlement import BusinessDay
from services.wallet.topups import Provider, TopUpOrder
from shared import db
from shared.config import PlatformConfig
from shared.db import Connection
from shared.money import Money
from shared.service import Service
from tests.provider_peers import new_secret

CNY = LEDGERS["CNY"]


@pytest.fixture
async def pool(config: PlatformConfig, wallet_service: Service) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(config.database_url, wallet_service.schema, max_size=2)
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
        csv, body = await finance.daily(conn, clearing, "provider:sandbox", "CNY", day, later)
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
        again = await finance.daily(conn, clearing, "provider:sandbox", "CNY", day, later)
    assert again == (csv, body)


async def test_a_day_that_is_not_final_has_no_statement_yet(pool: asyncpg.Pool) -> None:
    day = BusinessDay.of(datetime.now(UTC), "Asia/Shanghai", time(4))
    just_after = day.bounds()[1] + timedelta(minutes=1)
    async with pool.acquire() as conn:
        with pytest.raises(finance.DayNotClosed):
            await finance.daily(conn, uuid.uuid4(), "x", "CNY", day, just_after)


async def test_a_providers_bill_is_reconciled_and_its_corrections_booked_once(
    pool: asyncpg.Pool,
) -> None:
    sandbox = Provider("sandbox", "standard-webhooks", "CNY", StandardWebhooksKeys((new_secret(),)))

    async def nothing(conn: Connection, events: object) -> None:
        return None

    async def paid(conn: Connection, rider: str, minor: int, credit: bool = True) -> TopUpOrder:
        order = await topups.create_order(conn, sandbox, rider, Money(minor, "CNY"))
        if credit:
            payment = topups.Payment("n", order.id, f"sbx-{rider}", order.amount)
            await topups.credit(conn, sandbox, payment, nothing)
        return order

    async with pool.acquire() as conn, conn.transaction():
        matched = await paid(conn, "a", 1250)
        short = await paid(conn, "b", 1250)  # the provider says it took 12.00
        unbilled = await paid(conn, "c", 1000)  # the provider has no such trade
        missed = await paid(conn, "d", 500, credit=False)  # we missed its notification
        now = await conn.fetchval("SELECT now()")
    bill = (
        "reference,provider_reference,amount,currency\r\n"
        f"{matched.id},sbx-a,12.50,CNY\r\n"
        f"{short.id},sbx-b,12.00,CNY\r\n"
        f"{missed.id},sbx-d,5.00,CNY\r\n"
    ).encode()
    day = BusinessDay.of(now, "Asia/Shanghai", time(4))

    async with pool.acquire() as conn, conn.transaction():
        report, fixes, booked = await finance.reconcile_bill(
            conn, sandbox, day, bill, apply=True, publish=nothing
        )
    assert [p.ours.reference for p in report.matched] == [str(matched.id)]
    assert [p.ours.reference for p in report.amount_mismatches] == [str(short.id)]
    assert [e.reference for e in report.missing_in_bill] == [str(unbilled.id)]
    assert [line.reference for line in report.missing_in_ledger] == [str(missed.id)]
    assert sorted((f.reference, f.amount) for f in fixes) == sorted(
        [(str(short.id), -50), (str(unbilled.id), -1000), (str(missed.id), 500)]
    )
    assert [o.result for o in booked] == [Result.CREATED] * 3

    async with pool.acquire() as conn, conn.transaction():
        _, _, again = await finance.reconcile_bill(
            conn, sandbox, day, bill, apply=True, publish=nothing
        )
    assert [o.result for o in again] == [Result.EXISTS] * 3
    wallets = [o.account_id for o in (matched, short, unbilled, missed)]
    by_id = {a.id: a.available for a in await store.accounts(pool, wallets)}
    assert [by_id[w] for w in wallets] == [1250, 1200, 0, 500]
