"""The ledger's vocabulary: accounts, transfers and their results, with TigerBeetle's semantics.

- An **account** belongs to one ledger (one per currency: its ISO 4217 number) and keeps four
  balances in minor units. A rider's wallet carries ``DEBITS_MUST_NOT_EXCEED_CREDITS``: it can
  never spend more than was paid in, including what holds keep aside.
- A **transfer** moves ``amount`` from its debit account to its credit account. Its id is
  chosen by the client and is the idempotency key: sending it again answers ``exists`` (or
  ``exists_with_different_*`` if the body changed) and moves nothing.
- A **pending** transfer is a hold: it reserves the amount (``*_pending`` balances) until a
  ``POST_PENDING_TRANSFER`` (in full, or partially: the rest is released) or a
  ``VOID_PENDING_TRANSFER`` resolves it, or its timeout expires it, on database time.
- ``LINKED`` transfers form a chain with the ones after them, up to the first without the flag:
  they all happen or none does.

The rules that need state run in the database (``migrations/002_create_transfers.sql``); the
ones that need only the transfer itself are here, so a bad request fails before any I/O.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, IntFlag, StrEnum

MAX_AMOUNT = 2**63 - 1  # PostgreSQL bigint

# One ledger per currency, numbered by ISO 4217: money of two currencies never meets.
LEDGERS = {"CNY": 156, "HKD": 344, "EUR": 978, "USD": 840, "GBP": 826, "JPY": 392}
CURRENCIES = {number: code for code, number in LEDGERS.items()}


class AccountFlags(IntFlag):
    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 2
    CREDITS_MUST_NOT_EXCEED_DEBITS = 4
    CLOSED = 32


class TransferFlags(IntFlag):
    NONE = 0
    LINKED = 1
    PENDING = 2
    POST_PENDING_TRANSFER = 4
    VOID_PENDING_TRANSFER = 8


class AccountCode(IntEnum):
    """What an account is for."""

    RIDER_WALLET = 1
    OPERATOR_REVENUE = 2
    PROVIDER_CLEARING = 3
    FEES = 4


class TransferCode(IntEnum):
    """Why money moved."""

    TOP_UP = 1
    FARE = 2
    REFUND = 3
    HOLD = 4
    CORRECTION = 5
    SETTLEMENT = 6
    FARE_REFUND = 7  # a journey re-priced lower: the operator gives back what it took


class Result(StrEnum):
    """The outcome of one transfer; only ``CREATED`` moved money."""

    CREATED = "created"
    EXISTS = "exists"
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    ID_MUST_NOT_BE_ZERO = "id_must_not_be_zero"
    RESERVED_FLAG = "reserved_flag"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = "debit_account_id_must_not_be_zero"
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = "credit_account_id_must_not_be_zero"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    PENDING_ID_MUST_BE_ZERO = "pending_id_must_be_zero"
    PENDING_ID_MUST_NOT_BE_ZERO = "pending_id_must_not_be_zero"
    PENDING_ID_MUST_BE_DIFFERENT = "pending_id_must_be_different"
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = "timeout_reserved_for_pending_transfer"
    AMOUNT_MUST_BE_POSITIVE = "amount_must_be_positive"
    AMOUNT_TOO_LARGE = "amount_too_large"
    LEDGER_MUST_NOT_BE_ZERO = "ledger_must_not_be_zero"
    CODE_MUST_NOT_BE_ZERO = "code_must_not_be_zero"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = "accounts_must_have_the_same_ledger"
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = (
        "transfer_must_have_the_same_ledger_as_accounts"
    )
    DEBIT_ACCOUNT_ALREADY_CLOSED = "debit_account_already_closed"
    CREDIT_ACCOUNT_ALREADY_CLOSED = "credit_account_already_closed"
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = (
        "pending_transfer_has_different_debit_account_id"
    )
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = (
        "pending_transfer_has_different_credit_account_id"
    )
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = "pending_transfer_has_different_ledger"
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = "pending_transfer_has_different_code"
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = "pending_transfer_has_different_amount"
    EXCEEDS_PENDING_TRANSFER_AMOUNT = "exceeds_pending_transfer_amount"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_PENDING_ID = "exists_with_different_pending_id"
    EXISTS_WITH_DIFFERENT_TIMEOUT = "exists_with_different_timeout"
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = "exists_with_different_debit_account_id"
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = "exists_with_different_credit_account_id"
    EXISTS_WITH_DIFFERENT_AMOUNT = "exists_with_different_amount"
    EXISTS_WITH_DIFFERENT_LEDGER = "exists_with_different_ledger"
    EXISTS_WITH_DIFFERENT_CODE = "exists_with_different_code"
    EXISTS_WITH_DIFFERENT_REFERENCE = "exists_with_different_reference"
    OVERFLOWS_DEBITS_PENDING = "overflows_debits_pending"
    OVERFLOWS_CREDITS_PENDING = "overflows_credits_pending"
    OVERFLOWS_DEBITS_POSTED = "overflows_debits_posted"
    OVERFLOWS_CREDITS_POSTED = "overflows_credits_posted"
    OVERFLOWS_DEBITS = "overflows_debits"
    OVERFLOWS_CREDITS = "overflows_credits"
    EXCEEDS_CREDITS = "exceeds_credits"
    EXCEEDS_DEBITS = "exceeds_debits"

    @property
    def ok(self) -> bool:
        """The transfer is in the ledger (now, or from an earlier identical request)."""
        return self in (Result.CREATED, Result.EXISTS)


# Accounts the wallet owns have ids derived from what they are, so any process finds them.
_IDS = uuid.UUID("6f1c8a52-3d0e-4a57-9a0c-2b1f6f0e9c11")  # namespace of the wallet's derived ids
WALLET_FLAGS = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


def derived_id(name: str) -> uuid.UUID:
    """A stable id for a wallet-owned thing named ``name`` (an account, a transfer)."""
    return uuid.uuid5(_IDS, name)


def wallet_account(rider: str, currency: str) -> uuid.UUID:
    """A rider's wallet in one currency."""
    return derived_id(f"wallet/{rider}/{currency}")


def operator_account(operator: str, currency: str) -> uuid.UUID:
    """An operator's revenue account in one currency."""
    return derived_id(f"operator/{operator}/{currency}")


def clearing_account(provider: str, currency: str) -> uuid.UUID:
    """What a provider owes us: debited by its top-ups, credited by refunds."""
    return derived_id(f"clearing/{provider}/{currency}")


@dataclass(frozen=True, slots=True)
class Account:
    id: uuid.UUID
    ledger: int
    code: int
    flags: AccountFlags = AccountFlags.NONE
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    reference: str | None = None

    @property
    def available(self) -> int:
        """What a wallet can still spend: paid in, less spent, less held."""
        return self.credits_posted - self.debits_posted - self.debits_pending


@dataclass(frozen=True, slots=True)
class Transfer:
    """A request to move money; for post/void, unset fields are taken from the pending one."""

    id: uuid.UUID
    debit_account_id: uuid.UUID | None = None
    credit_account_id: uuid.UUID | None = None
    amount: int = 0
    ledger: int = 0
    code: int = 0
    flags: TransferFlags = TransferFlags.NONE
    pending_id: uuid.UUID | None = None
    timeout_s: int = 0
    reference: str | None = None

    @property
    def resolves_hold(self) -> bool:
        return bool(self.flags & (TransferFlags.POST_PENDING_TRANSFER | _VOID))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the ledger did with one transfer; the fields are as stored when ``result.ok``."""

    result: Result
    transfer: Transfer
    created_at: datetime | None = None


_VOID = TransferFlags.VOID_PENDING_TRANSFER
_KIND = TransferFlags.PENDING | TransferFlags.POST_PENDING_TRANSFER | _VOID
_NIL = uuid.UUID(int=0)


def invalid(t: Transfer) -> Result | None:
    """What is wrong with a transfer on its face, before any account is read; None if nothing."""
    if t.id == _NIL:
        return Result.ID_MUST_NOT_BE_ZERO
    if t.flags & ~TransferFlags(15):
        return Result.RESERVED_FLAG
    if bin(t.flags & _KIND).count("1") > 1:
        return Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if not 0 <= t.timeout_s < 2**31 or (t.timeout_s and not t.flags & TransferFlags.PENDING):
        return Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    if t.amount > MAX_AMOUNT:
        return Result.AMOUNT_TOO_LARGE
    return _invalid_resolution(t) if t.resolves_hold else _invalid_movement(t)


def _invalid_movement(t: Transfer) -> Result | None:
    checks = (
        (t.debit_account_id in (None, _NIL), Result.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (t.credit_account_id in (None, _NIL), Result.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (t.debit_account_id == t.credit_account_id, Result.ACCOUNTS_MUST_BE_DIFFERENT),
        (t.pending_id is not None, Result.PENDING_ID_MUST_BE_ZERO),
        (t.amount <= 0, Result.AMOUNT_MUST_BE_POSITIVE),
        (t.ledger <= 0, Result.LEDGER_MUST_NOT_BE_ZERO),
        (t.code <= 0, Result.CODE_MUST_NOT_BE_ZERO),
    )
    return next((result for failed, result in checks if failed), None)


def _invalid_resolution(t: Transfer) -> Result | None:
    checks = (
        (t.pending_id in (None, _NIL), Result.PENDING_ID_MUST_NOT_BE_ZERO),
        (t.pending_id == t.id, Result.PENDING_ID_MUST_BE_DIFFERENT),
        (t.amount < 0, Result.AMOUNT_MUST_BE_POSITIVE),
        (t.ledger < 0, Result.LEDGER_MUST_NOT_BE_ZERO),
        (t.code < 0, Result.CODE_MUST_NOT_BE_ZERO),
    )
    return next((result for failed, result in checks if failed), None)
