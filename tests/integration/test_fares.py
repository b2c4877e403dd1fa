"""Fare charges from transit debit the rider and credit the operator once, over the real bus."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.transit.events import FareCharged, transit_events
from services.wallet import store
from services.wallet.events import BalanceLow, FareDebitFailed, TransferPosted, wallet_events
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
from shared.config import PlatformConfig
from shared.db import Connection, in_transaction
from shared.events import Event, decode
from shared.service import BUS, POOL, Service, create_app, migrate
from tests.support import eventually

CNY = LEDGERS["CNY"]


@pytest.fixture
async def city(
    config: PlatformConfig,
    namespace: str,
    wallet_service: Service,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[TestClient, TestClient]]:
    """A transit stand-in that publishes fare charges, and the wallet that consumes them."""
    monkeypatch.setenv("WALLET_LOW_BALANCE_MINOR", "300")
    transit = Service(
        name=f"transit_{namespace}", add_routes=lambda app: None, produces=[transit_events]
    )
    await migrate(transit, config.database_url)
    async with (
        TestClient(TestServer(create_app(transit, config))) as transit_client,
        TestClient(TestServer(create_app(wallet_service, config))) as wallet_client,
    ):
        yield transit_client, wallet_client


async def fund(wallet: TestClient, rider: str, minor: int) -> uuid.UUID:
    account = wallet_account(rider, "CNY")
    clearing = uuid.uuid4()

    async def work(conn: Connection) -> None:
        await store.open_accounts(
            conn,
            [
                Account(clearing, CNY, AccountCode.PROVIDER_CLEARING),
                Account(account, CNY, AccountCode.RIDER_WALLET, WALLET_FLAGS),
            ],
        )
        top_up = Transfer(uuid.uuid4(), clearing, account, minor, CNY, TransferCode.TOP_UP)
        await store.create_transfers(conn, [top_up])

    await in_transaction(wallet.server.app[POOL], work)
    return account


async def charge(transit: TestClient, *fares: FareCharged) -> None:
    app = transit.server.app

    async def work(conn: Connection) -> None:
        for fare in fares:
            await app[BUS].publish(conn, fare.rider, fare)

    await in_transaction(app[POOL], work)


def fare(rider: str, amount: int, charge_id: uuid.UUID | None = None) -> FareCharged:
    return FareCharged(
        charge_id=charge_id or uuid.uuid4(),
        journey_id=uuid.uuid4(),
        rider=rider,
        operator="metro",
        amount=amount,
        currency="CNY",
    )


async def wallet_events_published(wallet: TestClient) -> list[Event]:
    rows = await wallet.server.app[POOL].fetch("SELECT body FROM outbox ORDER BY seq")
    return [wallet_events.decode(decode(r["body"])) for r in rows]


async def available(wallet: TestClient, account: uuid.UUID) -> int:
    found = await store.accounts(wallet.server.app[POOL], [account])
    return found[0].available if found else 0


async def test_a_fare_charged_twice_debits_the_rider_and_credits_the_operator_once(
    city: tuple[TestClient, TestClient],
) -> None:
    transit, wallet = city
    account = await fund(wallet, "rider-1", 1000)
    once = fare("rider-1", 400)
    await charge(transit, once, once)  # delivered twice: two events, one charge
    await charge(transit, fare("rider-1", 100))

    async def operator() -> int:
        found = await store.accounts(wallet.server.app[POOL], [operator_account("metro", "CNY")])
        return found[0].credits_posted if found else 0

    await eventually(operator, lambda credited: credited == 500, what="both fares charged")
    assert await available(wallet, account) == 500
    inbox = await wallet.server.app[POOL].fetchval("SELECT count(*) FROM inbox")
    assert inbox == 3
    posted = [e for e in await wallet_events_published(wallet) if isinstance(e, TransferPosted)]
    assert sorted(e.amount for e in posted if e.code == TransferCode.FARE) == [100, 400]


async def test_a_fare_the_wallet_cannot_cover_is_refused_and_announced(
    city: tuple[TestClient, TestClient],
) -> None:
    transit, wallet = city
    account = await fund(wallet, "rider-2", 250)
    await charge(transit, fare("rider-2", 400))
    await charge(transit, fare("nobody-yet", 200))  # a rider who never topped up

    async def failures() -> list[FareDebitFailed]:
        return [e for e in await wallet_events_published(wallet) if isinstance(e, FareDebitFailed)]

    failed = await eventually(failures, lambda f: len(f) == 2, what="two debit failures")
    assert {(f.rider, f.amount, f.available) for f in failed} == {
        ("rider-2", 400, 250),
        ("nobody-yet", 200, 0),
    }
    assert await available(wallet, account) == 250


async def test_a_fare_that_leaves_little_warns_of_a_low_balance(
    city: tuple[TestClient, TestClient],
) -> None:
    transit, wallet = city
    await fund(wallet, "rider-3", 1000)
    await charge(transit, fare("rider-3", 600))  # 400 left: above the threshold of 300
    await charge(transit, fare("rider-3", 200))  # 200 left: below it

    async def lows() -> list[BalanceLow]:
        return [e for e in await wallet_events_published(wallet) if isinstance(e, BalanceLow)]

    (low,) = await eventually(lows, lambda found: len(found) == 1, what="a low-balance event")
    assert (low.rider, low.available, low.threshold) == ("rider-3", 200, 300)
