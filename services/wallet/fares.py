"""Fare charges from transit: debit the rider, credit the operator, once per charge."""

from __future__ import annotations

import uuid

from services.transit.events import FareCharged
from services.wallet import store
from services.wallet.events import BalanceLow, FareDebitFailed, ledger_events
from services.wallet.ledger import LEDGERS, Account, AccountCode, Result, Transfer, TransferCode
from services.wallet.topups import WALLET_FLAGS, Publish, derived_id, wallet_account
from shared.db import Connection
from shared.events import Event


class UnchargeableFare(ValueError):
    """A fare the ledger can never apply (unknown currency, amount not positive)."""


def operator_account(operator: str, currency: str) -> uuid.UUID:
    """An operator's revenue account in one currency."""
    return derived_id(f"operator/{operator}/{currency}")


async def charge(
    conn: Connection, fare: FareCharged, *, low_balance: int, publish: Publish
) -> Result:
    """Apply one fare charge in the caller's transaction; a repeat of a charge moves nothing."""
    ledger = LEDGERS.get(fare.currency)
    if ledger is None or fare.amount <= 0:
        raise UnchargeableFare(f"fare {fare.charge_id}: {fare.amount} {fare.currency}")
    wallet = wallet_account(fare.rider, fare.currency)
    operator = operator_account(fare.operator, fare.currency)
    await store.open_accounts(
        conn,
        [
            Account(wallet, ledger, AccountCode.RIDER_WALLET, WALLET_FLAGS),
            Account(operator, ledger, AccountCode.OPERATOR_REVENUE),
        ],
    )
    transfer = Transfer(
        id=derived_id(f"fare/{fare.charge_id}"),
        debit_account_id=wallet,
        credit_account_id=operator,
        amount=fare.amount,
        ledger=ledger,
        code=TransferCode.FARE,
        reference=f"journey/{fare.journey_id}",
    )
    (outcome,) = await store.create_transfers(conn, [transfer])
    if outcome.result not in (Result.CREATED, Result.EXISTS, Result.EXCEEDS_CREDITS):
        raise UnchargeableFare(f"fare {fare.charge_id}: the ledger answered {outcome.result}")
    (after,) = await store.accounts(conn, [wallet])
    events: list[tuple[str, Event]] = list(ledger_events([outcome]))
    key = str(wallet)
    if outcome.result is Result.EXCEEDS_CREDITS:
        events.append((key, FareDebitFailed(
            charge_id=fare.charge_id, rider=fare.rider, account_id=wallet, amount=fare.amount,
            currency=fare.currency, available=after.available,
        )))  # fmt: skip
    elif outcome.result is Result.CREATED and after.available < low_balance:
        events.append((key, BalanceLow(
            rider=fare.rider, account_id=wallet, available=after.available,
            threshold=low_balance, currency=fare.currency,
        )))  # fmt: skip
    await publish(conn, events)
    return outcome.result
