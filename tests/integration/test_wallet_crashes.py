"""The wallet killed (SIGKILL) while it books fares from the bus: every fare charged once.

The wallet runs as a real ``cardless serve`` process; a transit stand-in publishes fare
charges over the real bus, and the wallet is killed while they arrive, again and again. Its
ledger writer batches fares into one transaction; a batch cut off by the kill must leave no
trace, and its fares must be charged after the restart, once.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import AsyncIterator
from functools import partial

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.transit.events import FareDue, transit_events
from services.wallet import store
from services.wallet.ledger import (
    LEDGERS,
    WALLET_FLAGS,
    Account,
    AccountCode,
    Transfer,
    TransferCode,
    operator_account,
    wallet_account,
)
from shared import db
from shared.config import PlatformConfig
from shared.db import Connection, in_transaction
from shared.service import Service, create_app, migrate
from tests.conftest import service_env
from tests.gateway_processes import WALLET_NAME, WALLET_TARGET
from tests.integration.test_fares import state
from tests.support import ServiceProcess, eventually

CNY = LEDGERS["CNY"]
RIDERS = [f"rider-{i}" for i in range(40)]
ROUNDS, FARES_PER_ROUND = 5, 400
FUNDS = 1_000_000


@pytest.fixture
async def ledger(wallet_service: Service, config: PlatformConfig) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(config.database_url, wallet_service.schema, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def transit(config: PlatformConfig, namespace: str) -> AsyncIterator[TestClient]:
    """Transit's stand-in: it only publishes fare charges, as transit will."""
    service = Service(
        name=f"transit_{namespace}", add_routes=lambda app: None, produces=[transit_events]
    )
    await migrate(service, config.database_url)
    async with TestClient(TestServer(create_app(service, config))) as client:
        yield client


async def fund_riders(pool: asyncpg.Pool) -> None:
    clearing = uuid.uuid4()

    async def work(conn: Connection) -> None:
        accounts = [Account(clearing, CNY, AccountCode.PROVIDER_CLEARING)] + [
            Account(wallet_account(r, "CNY"), CNY, AccountCode.RIDER_WALLET, WALLET_FLAGS)
            for r in RIDERS
        ]
        await store.open_accounts(conn, accounts)
        top_ups = [
            Transfer(
                uuid.uuid4(), clearing, wallet_account(r, "CNY"), FUNDS, CNY, TransferCode.TOP_UP
            )
            for r in RIDERS
        ]
        await store.create_transfers(conn, top_ups)

    await in_transaction(pool, work)


def fares_of_round(n: int) -> list[FareDue]:
    return [
        FareDue(
            journey_id=uuid.uuid4(),
            version=1,
            rider=RIDERS[i % len(RIDERS)],
            operator="metro",
            amount=200 + (n * FARES_PER_ROUND + i) % 7,
            currency="CNY",
        )
        for i in range(FARES_PER_ROUND)
    ]


async def test_fares_are_charged_exactly_once_when_the_wallet_is_killed_while_booking(
    config: PlatformConfig, wallet_service: Service, ledger: asyncpg.Pool, transit: TestClient
) -> None:
    await fund_riders(ledger)
    env = service_env(config, **{WALLET_NAME: wallet_service.name})
    wallet = ServiceProcess(WALLET_TARGET, env).start()
    charged: list[FareDue] = []
    try:
        for n in range(ROUNDS):
            fares = fares_of_round(n)
            before = await operator_credit(ledger)
            await state(transit, *fares)
            charged += fares
            # Let it start on this round, then cut it off wherever it is.
            await eventually(
                lambda: operator_credit(ledger),
                partial(operator.lt, before),  # credited more than before
                what="booking under way",
            )
            wallet.kill()
            wallet.start()
        total = sum(f.amount for f in charged)
        await eventually(
            lambda: operator_credit(ledger),
            lambda credited: credited == total,
            within=120,
            what="every fare charged",
        )
    finally:
        wallet.kill()

    accounts = {
        a.id: a for a in await store.accounts(ledger, [wallet_account(r, "CNY") for r in RIDERS])
    }
    for rider in RIDERS:
        owed = sum(f.amount for f in charged if f.rider == rider)
        assert accounts[wallet_account(rider, "CNY")].debits_posted == owed, rider
    fare_transfers = await ledger.fetchval(
        "SELECT count(*) FROM transfers WHERE code = $1", int(TransferCode.FARE)
    )
    assert fare_transfers == len(charged) == ROUNDS * FARES_PER_ROUND
    debits, credits = await ledger.fetchrow(
        "SELECT sum(debits_posted)::bigint, sum(credits_posted)::bigint FROM accounts"
    )
    assert debits == credits


async def operator_credit(pool: asyncpg.Pool) -> int:
    found = await store.accounts(pool, [operator_account("metro", "CNY")])
    return found[0].credits_posted if found else 0
