"""The wallet's events, versioned in this one place: other services consume these types."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence

from services.wallet.ledger import CURRENCIES, Outcome, Result, Transfer, TransferFlags
from shared.db import Connection
from shared.events import Event, EventCatalog

wallet_events = EventCatalog("wallet")


class Movement(Event, frozen=True, kw_only=True):
    """What every transfer event says: which transfer, from which account to which, how much."""

    transfer_id: uuid.UUID
    debit_account_id: uuid.UUID
    credit_account_id: uuid.UUID
    amount: int
    currency: str
    code: int


@wallet_events.event("wallet.transfer.posted", version=1)
class TransferPosted(Movement, frozen=True, kw_only=True):
    """Money moved (a plain transfer, or a hold captured in full or in part)."""

    pending_id: uuid.UUID | None = None
    reference: str | None = None


@wallet_events.event("wallet.hold.placed", version=1)
class HoldPlaced(Movement, frozen=True, kw_only=True):
    """Money set aside on the debit account until the hold is posted, voided or expires."""

    timeout_s: int
    reference: str | None = None


@wallet_events.event("wallet.transfer.voided", version=1)
class TransferVoided(Movement, frozen=True, kw_only=True):
    """A hold was released without moving money."""

    pending_id: uuid.UUID


@wallet_events.event("wallet.topup.completed", version=1)
class TopUpCompleted(Event, frozen=True, kw_only=True):
    """A provider's payment credited a rider's wallet (transit lets a denied rider through)."""

    order_id: uuid.UUID
    account_id: uuid.UUID
    rider: str
    amount: int
    currency: str
    provider: str


@wallet_events.event("wallet.fare.debit_failed", version=1)
class FareDebitFailed(Event, frozen=True, kw_only=True):
    """A fare could not be charged: the wallet lacks funds (transit denies the rider at gates
    until a ``wallet.topup.completed`` for them)."""

    charge_id: uuid.UUID
    rider: str
    account_id: uuid.UUID
    amount: int
    currency: str
    available: int


@wallet_events.event("wallet.balance.low", version=1)
class BalanceLow(Event, frozen=True, kw_only=True):
    """After a fare, a wallet holds less than the travel threshold (the app nudges a top-up)."""

    rider: str
    account_id: uuid.UUID
    available: int
    threshold: int
    currency: str


@wallet_events.event("wallet.hold.expired", version=1)
class HoldExpired(Movement, frozen=True, kw_only=True):
    """A hold reached its timeout and released its money, on database time."""


Publish = Callable[[Connection, Sequence[tuple[str, Event]]], Awaitable[object]]
"""Writes events in the caller's transaction (``Bus.publish_many``)."""


def expiry_events(holds: Sequence[Transfer]) -> list[tuple[str, Event]]:
    """One event per expired hold, keyed by the account it had debited."""
    return [
        (str(h.debit_account_id), HoldExpired(
            transfer_id=h.id, debit_account_id=h.debit_account_id,
            credit_account_id=h.credit_account_id, amount=h.amount,
            currency=CURRENCIES.get(h.ledger, "XXX"), code=h.code,
        ))
        for h in holds
        if h.debit_account_id is not None and h.credit_account_id is not None
    ]  # fmt: skip


def ledger_events(outcomes: Sequence[Outcome]) -> list[tuple[str, Event]]:
    """The events of a batch's created transfers, keyed by the account debited (the wallet)."""
    return [
        (str(o.transfer.debit_account_id), _event(o))
        for o in outcomes
        if o.result is Result.CREATED
    ]


def _event(o: Outcome) -> Event:
    t = o.transfer
    assert t.debit_account_id is not None
    assert t.credit_account_id is not None
    debit, credit, currency = (
        t.debit_account_id,
        t.credit_account_id,
        CURRENCIES.get(t.ledger, "XXX"),
    )
    if t.flags & TransferFlags.VOID_PENDING_TRANSFER:
        assert t.pending_id is not None
        return TransferVoided(
            transfer_id=t.id,
            pending_id=t.pending_id,
            debit_account_id=debit,
            credit_account_id=credit,
            amount=t.amount,
            currency=currency,
            code=t.code,
        )
    if t.flags & TransferFlags.PENDING:
        return HoldPlaced(
            transfer_id=t.id,
            debit_account_id=debit,
            credit_account_id=credit,
            amount=t.amount,
            currency=currency,
            code=t.code,
            timeout_s=t.timeout_s,
            reference=t.reference,
        )
    return TransferPosted(
        transfer_id=t.id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=t.amount,
        currency=currency,
        code=t.code,
        pending_id=t.pending_id,
        reference=t.reference,
    )
