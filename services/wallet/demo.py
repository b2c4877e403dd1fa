"""The demo city's riders' wallets: opened and funded once, so a fresh city can ride at once.

The money comes from the demo grant, a clearing account like a provider's (``clearing/
demo-grant/<currency>``): the city's own promise, booked as a top-up would be (``TOP_UP``), so
the ledger balances and every yuan in a demo wallet says where it came from. Each opening
balance is one transfer whose id derives from the rider and currency, so seeding again (a second
``cardless up``) answers ``exists`` and funds nobody twice, whatever they spent since.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from services.wallet import store
from services.wallet.events import Publish
from services.wallet.ledger import (
    LEDGERS,
    WALLET_FLAGS,
    Account,
    AccountCode,
    Result,
    Transfer,
    TransferCode,
    clearing_account,
    derived_id,
    wallet_account,
)
from services.wallet.writer import book
from shared.db import Connection

DEMO_GRANT = "demo-grant"
OPENING_BALANCE_MINOR = 10_000  # 100.00 CNY: a few weeks of demo rides
CURRENCY = "CNY"


def grant_account(currency: str = CURRENCY) -> uuid.UUID:
    """Where the demo riders' opening balances come from."""
    return clearing_account(DEMO_GRANT, currency)


def opening_balance(rider: str, amount: int, currency: str = CURRENCY) -> Transfer:
    """The one transfer that may ever fund a demo rider's wallet in ``currency``."""
    return Transfer(
        id=derived_id(f"demo/opening/{rider}/{currency}"),
        debit_account_id=grant_account(currency),
        credit_account_id=wallet_account(rider, currency),
        amount=amount,
        ledger=LEDGERS[currency],
        code=TransferCode.TOP_UP,
        reference=f"{DEMO_GRANT}/{rider}",
    )


async def fund(
    conn: Connection,
    riders: Sequence[str],
    publish: Publish,
    *,
    amount: int = OPENING_BALANCE_MINOR,
    currency: str = CURRENCY,
) -> int:
    """Open each rider's wallet and fund it once, in one ledger batch in the caller's
    transaction; how many were funded now (the others had been before)."""
    ledger = LEDGERS[currency]
    grant = Account(grant_account(currency), ledger, AccountCode.PROVIDER_CLEARING,
                    reference=DEMO_GRANT)  # fmt: skip
    wallets = [
        Account(wallet_account(rider, currency), ledger, AccountCode.RIDER_WALLET, WALLET_FLAGS)
        for rider in riders
    ]
    await store.open_accounts(conn, [grant, *wallets])
    outcomes = await book(conn, [opening_balance(r, amount, currency) for r in riders], publish)
    if refused := [o.result for o in outcomes if not o.result.ok]:
        # The grant has no limit and the wallets are open: a refusal here is a bug.
        raise RuntimeError(f"the ledger refused an opening balance: {refused[0]}")
    return sum(o.result is Result.CREATED for o in outcomes)
