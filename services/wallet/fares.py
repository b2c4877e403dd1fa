"""Fare charges from transit: debit the rider, credit the operator, once per charge."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from services.transit.events import FareCharged
from services.wallet import store
from services.wallet.events import BalanceLow, FareDebitFailed, Publish
from services.wallet.ledger import (
    LEDGERS,
    WALLET_FLAGS,
    Account,
    AccountCode,
    Outcome,
    Result,
    Transfer,
    TransferCode,
    derived_id,
    operator_account,
    wallet_account,
)
from services.wallet.writer import book
from shared.db import Connection
from shared.events import Event


class UnchargeableFare(ValueError):
    """A fare the ledger can never apply (unknown currency, amount not positive)."""


async def charge(
    conn: Connection, fares: Sequence[FareCharged], *, low_balance: int, publish: Publish
) -> list[Result]:
    """Apply a run of fare charges in one ledger batch, in the caller's transaction; a charge
    seen before (same ``charge_id``) moves nothing. One result per distinct charge."""
    unique = list({f.charge_id: f for f in fares}.values())  # in order of first appearance
    for fare in unique:
        if fare.currency not in LEDGERS or fare.amount <= 0:
            raise UnchargeableFare(f"fare {fare.charge_id}: {fare.amount} {fare.currency}")
    wallets = {f.charge_id: wallet_account(f.rider, f.currency) for f in unique}
    await store.open_accounts(conn, [
        account for f in unique for account in (
            Account(wallets[f.charge_id], LEDGERS[f.currency], AccountCode.RIDER_WALLET,
                    WALLET_FLAGS),
            Account(operator_account(f.operator, f.currency), LEDGERS[f.currency],
                    AccountCode.OPERATOR_REVENUE),
        )
    ])  # fmt: skip
    outcomes = await book(conn, [_transfer(f, wallets[f.charge_id]) for f in unique], publish)
    if bad := [o.result for o in outcomes if o.result not in _EXPECTED]:
        raise UnchargeableFare(f"the ledger answered {bad[0]} to a fare")
    after = {a.id: a for a in await store.accounts(conn, list(set(wallets.values())))}
    if announcements := _announcements(unique, outcomes, wallets, after, low_balance):
        await publish(conn, announcements)
    return [o.result for o in outcomes]


_EXPECTED = (Result.CREATED, Result.EXISTS, Result.EXCEEDS_CREDITS)


def _transfer(fare: FareCharged, wallet: uuid.UUID) -> Transfer:
    return Transfer(
        id=derived_id(f"fare/{fare.charge_id}"),
        debit_account_id=wallet,
        credit_account_id=operator_account(fare.operator, fare.currency),
        amount=fare.amount,
        ledger=LEDGERS[fare.currency],
        code=TransferCode.FARE,
        reference=f"journey/{fare.journey_id}",
    )


def _announcements(
    fares: Sequence[FareCharged],
    outcomes: Sequence[Outcome],
    wallets: dict[uuid.UUID, uuid.UUID],
    after: dict[uuid.UUID, Account],
    low_balance: int,
) -> list[tuple[str, Event]]:
    """A debit-failed event per refused fare; a low-balance event per wallet left low."""
    events: list[tuple[str, Event]] = []
    low: dict[uuid.UUID, FareCharged] = {}
    for fare, outcome in zip(fares, outcomes, strict=True):
        wallet = wallets[fare.charge_id]
        available = after[wallet].available
        if outcome.result is Result.EXCEEDS_CREDITS:
            events.append((str(wallet), FareDebitFailed(
                charge_id=fare.charge_id, rider=fare.rider, account_id=wallet,
                amount=fare.amount, currency=fare.currency, available=available,
            )))  # fmt: skip
        elif outcome.result is Result.CREATED and available < low_balance:
            low[wallet] = fare
    events += [
        (str(wallet), BalanceLow(rider=fare.rider, account_id=wallet,
                                 available=after[wallet].available, threshold=low_balance,
                                 currency=fare.currency))
        for wallet, fare in low.items()
    ]  # fmt: skip
    return events
