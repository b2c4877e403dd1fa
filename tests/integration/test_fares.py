"""What journeys owe, stated by transit, is charged or refunded once, over the real bus: a
statement delivered twice or out of order moves money once, a journey re-priced lower is
refunded only what was taken, and a fare the wallet could not take is taken at the next top-up."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.transit.events import FareDue, transit_events
from services.wallet import store, topups
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
from services.wallet.providers import StandardWebhooksKeys
from services.wallet.topups import Provider
from shared.config import PlatformConfig
from shared.db import Connection, in_transaction
from shared.events import Event, decode
from shared.money import Money
from shared.service import BUS, POOL, Service, create_app, migrate
from tests.provider_peers import new_secret
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


async def state(transit: TestClient, *dues: FareDue) -> None:
    app = transit.server.app

    async def work(conn: Connection) -> None:
        for due in dues:
            await app[BUS].publish(conn, due.rider, due)

    await in_transaction(app[POOL], work)


def due(rider: str, amount: int, journey: uuid.UUID | None = None, version: int = 1) -> FareDue:
    return FareDue(
        journey_id=journey or uuid.uuid4(),
        version=version,
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


async def operator_credit(wallet: TestClient) -> int:
    found = await store.accounts(wallet.server.app[POOL], [operator_account("metro", "CNY")])
    return found[0].credits_posted - found[0].debits_posted if found else 0


async def fare_transfers(wallet: TestClient, journey: uuid.UUID) -> list[tuple[int, int]]:
    """(code, signed amount: + charged, - refunded) of a journey's transfers, in order."""
    rows = await wallet.server.app[POOL].fetch(
        "SELECT code, amount FROM transfers WHERE reference = $1 ORDER BY created_at, id",
        f"journey/{journey}",
    )
    return [
        (r["code"], r["amount"] if r["code"] == TransferCode.FARE else -r["amount"]) for r in rows
    ]


async def test_a_statement_delivered_twice_debits_the_rider_and_credits_the_operator_once(
    city: tuple[TestClient, TestClient],
) -> None:
    transit, wallet = city
    account = await fund(wallet, "rider-1", 1000)
    once = due("rider-1", 400)
    await state(transit, once, once)  # delivered twice: two events, one charge
    await state(transit, due("rider-1", 100))

    await eventually(lambda: operator_credit(wallet), lambda c: c == 500, what="both charged")
    assert await available(wallet, account) == 500
    inbox = await wallet.server.app[POOL].fetchval("SELECT count(*) FROM inbox")
    assert inbox == 3
    posted = [e for e in await wallet_events_published(wallet) if isinstance(e, TransferPosted)]
    assert sorted(e.amount for e in posted if e.code == TransferCode.FARE) == [100, 400]


async def test_a_journey_re_priced_lower_is_refunded_the_difference_and_an_old_statement_ignored(
    city: tuple[TestClient, TestClient],
) -> None:
    transit, wallet = city
    account = await fund(wallet, "rider-4", 1000)
    journey = uuid.uuid4()
    await state(transit, due("rider-4", 500, journey, version=1))  # incomplete: the most
    await eventually(
        lambda: fare_transfers(wallet, journey),
        lambda moved: moved == [(TransferCode.FARE, 500)],
        what="charged 5.00",
    )  # (had both come in one batch, the wallet would rightly take only the newest: 2.00)
    await state(transit, due("rider-4", 200, journey, version=2))  # its exit came late
    await state(transit, due("rider-4", 500, journey, version=1))  # redelivered, out of date
    await eventually(
        lambda: fare_transfers(wallet, journey),
        lambda moved: moved == [(TransferCode.FARE, 500), (TransferCode.FARE_REFUND, -300)],
        what="charged 5.00, refunded 3.00",
    )
    await state(transit, due("rider-4", 0, journey, version=3))  # superseded by a late tap
    await eventually(lambda: operator_credit(wallet), lambda c: c == 0, what="all given back")
    assert await available(wallet, account) == 1000
    assert [a for _, a in await fare_transfers(wallet, journey)] == [500, -300, -200]


async def test_a_fare_the_wallet_cannot_cover_is_announced_and_taken_at_the_next_top_up(
    city: tuple[TestClient, TestClient],
) -> None:
    transit, wallet = city
    account = await fund(wallet, "rider-2", 250)
    journey = uuid.uuid4()
    await state(transit, due("rider-2", 400, journey))
    await state(transit, due("nobody-yet", 200))  # a rider who never topped up

    async def failures() -> list[FareDebitFailed]:
        return [e for e in await wallet_events_published(wallet) if isinstance(e, FareDebitFailed)]

    failed = await eventually(failures, lambda f: len(f) == 2, what="two debit failures")
    assert {(f.rider, f.amount, f.available) for f in failed} == {
        ("rider-2", 400, 250),
        ("nobody-yet", 200, 0),
    }
    assert await available(wallet, account) == 250
    # Re-priced lower while unpaid: nothing was taken, so nothing is refunded; 3.00 is owed.
    await state(transit, due("rider-2", 300, journey, version=2))
    failed = await eventually(failures, lambda f: len(f) == 3, what="still short")
    assert (failed[-1].amount, failed[-1].available) == (300, 250)

    await top_up(wallet, "rider-2", 100)  # 3.50 now: the 3.00 owed is taken at once
    assert await available(wallet, account) == 50
    assert await fare_transfers(wallet, journey) == [(TransferCode.FARE, 300)]


async def test_a_fare_that_leaves_little_warns_of_a_low_balance(
    city: tuple[TestClient, TestClient],
) -> None:
    transit, wallet = city
    await fund(wallet, "rider-3", 1000)
    await state(transit, due("rider-3", 600))  # 400 left: above the threshold of 300
    await state(transit, due("rider-3", 200))  # 200 left: below it

    async def lows() -> list[BalanceLow]:
        return [e for e in await wallet_events_published(wallet) if isinstance(e, BalanceLow)]

    (low,) = await eventually(lows, lambda found: len(found) == 1, what="a low-balance event")
    assert (low.rider, low.available, low.threshold) == ("rider-3", 200, 300)


async def top_up(wallet: TestClient, rider: str, minor: int) -> None:
    """A top-up credited as a provider's verified payment notice would credit it."""
    sandbox = Provider("sandbox", "standard-webhooks", "CNY", StandardWebhooksKeys((new_secret(),)))
    app = wallet.server.app

    async def work(conn: Connection) -> None:
        order = await topups.create_order(conn, sandbox, rider, Money(minor, "CNY"))
        payment = topups.Payment(f"n-{order.id}", order.id, f"sbx-{order.id}", order.amount)
        await topups.credit(conn, sandbox, payment, app[BUS].publish_many, low_balance=300)

    await in_transaction(app[POOL], work)
