"""Fares from transit: what each journey owes, taken from the rider's wallet or given back.

Transit states the whole amount a journey owes (``transit.fare.due``: caps applied) under the
journey's next version. The wallet keeps each journey's newest statement and what it has
taken for it (``fare_dues``), and moves the difference as a new transfer, never an edit: a
charge from the rider's wallet to the operator, or a refund from the operator back (at most
what was taken: due is never negative). The transfer's id comes from the journey and the
version, so a statement delivered twice moves money once, and an older version arriving
after a newer one moves nothing.

A charge the wallet cannot take (the balance is short) stays owed: the rider is announced
(``wallet.fare.debit_failed``; transit denies them at the gates) and ``collect`` takes what
their journeys owe, oldest first, when they top up.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import NamedTuple

from services.transit.events import FareDue
from services.wallet import store
from services.wallet.events import BalanceLow, FareDebitFailed, Publish
from services.wallet.ledger import (
    LEDGERS,
    WALLET_FLAGS,
    Account,
    AccountCode,
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
    """A fare the ledger can never apply (unknown currency, amount negative)."""


class Move(NamedTuple):
    """Money to move for a journey: ``amount`` > 0 charges the rider, < 0 refunds them."""

    journey_id: uuid.UUID
    version: int
    rider: str
    operator: str
    currency: str
    amount: int


async def apply(
    conn: Connection, statements: Sequence[FareDue], *, low_balance: int, publish: Publish
) -> None:
    """Apply a run of statements in the caller's transaction: for each journey its newest,
    if newer than the one applied before."""
    newest: dict[uuid.UUID, FareDue] = {}
    for due in statements:
        if due.currency not in LEDGERS or due.amount < 0:
            raise UnchargeableFare(f"journey {due.journey_id}: {due.amount} {due.currency}")
        if due.journey_id not in newest or due.version > newest[due.journey_id].version:
            newest[due.journey_id] = due
    known = await store.fare_dues_for_update(conn, list(newest))
    fresh = [d for d in newest.values() if d.version > known.get(d.journey_id, (0, 0))[0]]
    await store.save_fare_dues(conn, [
        (d.journey_id, d.version, wallet_account(d.rider, d.currency), d.rider, d.operator,
         d.currency, d.amount)
        for d in fresh
    ])  # fmt: skip
    moves = [
        Move(d.journey_id, d.version, d.rider, d.operator, d.currency,
             d.amount - known.get(d.journey_id, (0, 0))[1])
        for d in fresh
    ]  # fmt: skip
    await _move(conn, moves, low_balance=low_balance, publish=publish)


async def collect(
    conn: Connection, account_id: uuid.UUID, *, low_balance: int, publish: Publish
) -> None:
    """After a top-up: take what the wallet's journeys still owe, oldest first, as far as
    the balance goes (a charge still short is announced again)."""
    owed = await store.fares_owed(conn, account_id)
    await _move(conn, [Move(*row) for row in owed], low_balance=low_balance, publish=publish)


async def _move(
    conn: Connection, moves: Sequence[Move], *, low_balance: int, publish: Publish
) -> None:
    moves = sorted((m for m in moves if m.amount), key=lambda m: m.amount > 0)  # refunds first
    if not moves:
        return
    await store.open_accounts(conn, [
        account for m in moves for account in (
            Account(wallet_account(m.rider, m.currency), LEDGERS[m.currency],
                    AccountCode.RIDER_WALLET, WALLET_FLAGS),
            Account(operator_account(m.operator, m.currency), LEDGERS[m.currency],
                    AccountCode.OPERATOR_REVENUE),
        )
    ])  # fmt: skip
    transfers = [_transfer(m) for m in moves]
    outcomes = await book(conn, transfers, publish)
    if bad := [o.result for o in outcomes if o.result not in _EXPECTED]:
        raise UnchargeableFare(f"the ledger answered {bad[0]} to a fare")
    # Only a transfer created now changes what was taken: one that exists was counted in the
    # transaction that created it.
    moved = [m for m, o in zip(moves, outcomes, strict=True) if o.result is Result.CREATED]
    await store.add_taken(conn, [(m.journey_id, m.amount) for m in moved])
    refused = [
        (m, t) for m, t, o in zip(moves, transfers, outcomes, strict=True)
        if o.result is Result.EXCEEDS_CREDITS
    ]  # fmt: skip
    if announcements := await _announcements(conn, moved, refused, low_balance):
        await publish(conn, announcements)


_EXPECTED = (Result.CREATED, Result.EXISTS, Result.EXCEEDS_CREDITS)


def _transfer(move: Move) -> Transfer:
    wallet = wallet_account(move.rider, move.currency)
    operator = operator_account(move.operator, move.currency)
    charge = move.amount > 0
    return Transfer(
        id=derived_id(f"fare/{move.journey_id}/{move.version}"),
        debit_account_id=wallet if charge else operator,
        credit_account_id=operator if charge else wallet,
        amount=abs(move.amount),
        ledger=LEDGERS[move.currency],
        code=TransferCode.FARE if charge else TransferCode.FARE_REFUND,
        reference=f"journey/{move.journey_id}",
    )


async def _announcements(
    conn: Connection,
    moved: Sequence[Move],
    refused: Sequence[tuple[Move, Transfer]],
    low_balance: int,
) -> list[tuple[str, Event]]:
    """A debit-failed event per refused charge; a low-balance event per wallet a charge left
    low. Keyed by the wallet, like its top-ups, so transit sees them in the order they
    happened."""
    charged = {wallet_account(m.rider, m.currency): m for m in moved if m.amount > 0}
    wallets = {t.debit_account_id for _, t in refused if t.debit_account_id} | set(charged)
    after = {a.id: a for a in await store.accounts(conn, sorted(wallets))}
    events: list[tuple[str, Event]] = []
    for move, transfer in refused:
        wallet = wallet_account(move.rider, move.currency)
        events.append((str(wallet), FareDebitFailed(
            charge_id=transfer.id, rider=move.rider, account_id=wallet, amount=move.amount,
            currency=move.currency, available=after[wallet].available,
        )))  # fmt: skip
    events += [
        (str(wallet), BalanceLow(rider=move.rider, account_id=wallet,
                                 available=after[wallet].available, threshold=low_balance,
                                 currency=move.currency))
        for wallet, move in charged.items()
        if after[wallet].available < low_balance
    ]  # fmt: skip
    return events
