"""The wallet as its refund tests drive it: a rider asks for a refund, and the account moves."""

from __future__ import annotations

import uuid

from aiohttp.test_utils import TestClient

from services.wallet import refunds, store, topups
from services.wallet.handlers import SETTINGS
from shared.db import in_transaction
from shared.money import Money
from shared.service import BUS, POOL


async def ask_refund(
    wallet: TestClient, provider: str, order: topups.TopUpOrder, minor: int
) -> uuid.UUID:
    """A refund of ``minor`` CNY of ``order``, asked as the rider's request would."""
    app = wallet.server.app
    chosen, refund_id = app[SETTINGS].providers[provider], uuid.uuid4()
    await in_transaction(
        app[POOL],
        lambda c: refunds.request(
            c, chosen, order.id, Money(minor, "CNY"), refund_id, app[BUS].publish_many
        ),
    )
    return refund_id


async def balances(wallet: TestClient, order: topups.TopUpOrder) -> tuple[int, int]:
    """The order's wallet: what is available, and what has been debited for good."""
    (account,) = await store.accounts(wallet.server.app[POOL], [order.account_id])
    return account.available, account.debits_posted
