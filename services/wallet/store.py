"""The wallet's SQL: its own schema, nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date, datetime

import asyncpg

from services.wallet.ledger import (
    MAX_AMOUNT,
    Account,
    AccountFlags,
    Outcome,
    Result,
    Transfer,
    TransferFlags,
    invalid,
)
from shared.db import Connection

_CREATE_TRANSFERS = """
SELECT * FROM create_transfers($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::uuid[],
                               $6::int[], $7::int[], $8::int[], $9::int[], $10::text[],
                               $11::text[])"""


async def create_transfers(conn: Connection, transfers: Sequence[Transfer]) -> list[Outcome]:
    """Apply a batch (ids distinct) in one statement; one outcome per transfer, in order."""
    rows = await conn.fetch(
        _CREATE_TRANSFERS,
        [t.id for t in transfers],
        [t.debit_account_id for t in transfers],
        [t.credit_account_id for t in transfers],
        [_fits(t.amount, MAX_AMOUNT) for t in transfers],
        [t.pending_id for t in transfers],
        [_fits(t.ledger, _MAX_INT) for t in transfers],
        [_fits(t.code, _MAX_INT) for t in transfers],
        [int(t.flags) for t in transfers],
        [_fits(t.timeout_s, _MAX_INT) for t in transfers],
        [t.reference for t in transfers],
        [invalid(t) for t in transfers],
    )
    return [_outcome(t, row) for t, row in zip(transfers, rows, strict=True)]


_MAX_INT = 2**31 - 1


def _fits(value: int, most: int) -> int:
    """A value the column can take. One out of range is sent as 0: ``invalid()`` has failed an
    amount or timeout out of range already; ledgers and codes come from the wallet's own
    tables (currencies, ``TransferCode``), never from a client."""
    return value if 0 <= value <= most else 0


def _outcome(asked: Transfer, row: asyncpg.Record) -> Outcome:
    result = Result(row["result"])
    if not result.ok:
        return Outcome(result, asked)
    stored = Transfer(
        id=asked.id,
        debit_account_id=row["debit_account_id"],
        credit_account_id=row["credit_account_id"],
        amount=row["amount"],
        ledger=row["ledger"],
        code=row["code"],
        flags=asked.flags,
        pending_id=asked.pending_id,
        timeout_s=asked.timeout_s,
        reference=asked.reference,
    )
    return Outcome(result, stored, row["created_at"])


async def open_accounts(conn: Connection, accounts: Sequence[Account]) -> None:
    """Open accounts (empty); opening one that exists with the same id changes nothing."""
    await conn.execute(
        """
        INSERT INTO accounts (id, ledger, code, flags, reference)
        SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::int[], $5::text[])
        ON CONFLICT (id) DO NOTHING""",
        [a.id for a in accounts],
        [a.ledger for a in accounts],
        [a.code for a in accounts],
        [int(a.flags) for a in accounts],
        [a.reference for a in accounts],
    )


async def accounts(conn: Connection | asyncpg.Pool, ids: Sequence[uuid.UUID]) -> list[Account]:
    """The accounts among ``ids`` that exist, in id order."""
    rows = await conn.fetch(
        """
        SELECT id, ledger, code, flags, debits_pending, debits_posted, credits_pending,
               credits_posted, reference
        FROM accounts WHERE id = ANY($1::uuid[]) ORDER BY id""",
        list(ids),
    )
    return [_account(row) for row in rows]


def _account(row: asyncpg.Record) -> Account:
    return Account(**{**dict(row), "flags": AccountFlags(row["flags"])})


async def transfers_of(
    conn: Connection | asyncpg.Pool, account_id: uuid.UUID, *, before: int | None, limit: int
) -> list[tuple[int, Outcome]]:
    """An account's transfers, newest first, before the cursor ``before`` (a sequence number)."""
    rows = await conn.fetch(
        """
        SELECT * FROM (
            SELECT * FROM transfers WHERE debit_account_id = $1 AND seq < $2
            UNION ALL
            SELECT * FROM transfers WHERE credit_account_id = $1 AND seq < $2
        ) t ORDER BY seq DESC LIMIT $3""",
        account_id,
        before if before is not None else 2**63 - 1,
        limit,
    )
    return [(row["seq"], _stored(row)) for row in rows]


def _stored(row: asyncpg.Record) -> Outcome:
    transfer = Transfer(
        id=row["id"],
        debit_account_id=row["debit_account_id"],
        credit_account_id=row["credit_account_id"],
        amount=row["amount"],
        ledger=row["ledger"],
        code=row["code"],
        flags=TransferFlags(row["flags"]),
        pending_id=row["pending_id"],
        timeout_s=row["timeout_s"],
        reference=row["reference"],
    )
    return Outcome(Result.CREATED, transfer, row["created_at"])


async def create_top_up(
    conn: Connection,
    order_id: uuid.UUID,
    rider: str,
    account_id: uuid.UUID,
    provider: str,
    amount: int,
    currency: str,
) -> None:
    await conn.execute(
        "INSERT INTO topups (id, rider, account_id, provider, amount, currency)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        order_id,
        rider,
        account_id,
        provider,
        amount,
        currency,
    )


async def top_up_for_update(conn: Connection, order_id: uuid.UUID) -> asyncpg.Record | None:
    """The order, locked until the transaction ends (one notification at a time per order)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, rider, account_id, provider, amount, currency, status, provider_reference"
        " FROM topups WHERE id = $1 FOR UPDATE",
        order_id,
    )
    return row


async def mark_paid(
    conn: Connection, order_id: uuid.UUID, provider_reference: str, transfer_id: uuid.UUID
) -> None:
    await conn.execute(
        "UPDATE topups SET status = 'paid', provider_reference = $2, transfer_id = $3,"
        " paid_at = now() WHERE id = $1",
        order_id,
        provider_reference,
        transfer_id,
    )


async def log_notification(
    conn: Connection | asyncpg.Pool,
    provider: str,
    notification_id: str,
    order_id: uuid.UUID | None,
    outcome: str,
) -> None:
    await conn.execute(
        "INSERT INTO provider_notifications (provider, notification_id, order_id, outcome)"
        " VALUES ($1, $2, $3, $4)",
        provider,
        notification_id[:200],
        order_id,
        outcome,
    )


async def refunded_so_far(conn: Connection, order_id: uuid.UUID) -> int:
    """What refunds of a top-up take back, counting those still awaiting the provider."""
    total: int = await conn.fetchval(
        "SELECT coalesce(sum(amount), 0)::bigint FROM refunds"
        " WHERE topup_id = $1 AND status <> 'failed'",
        order_id,
    )
    return total


async def create_refund(
    conn: Connection, refund_id: uuid.UUID, order_id: uuid.UUID, amount: int, hold_id: uuid.UUID
) -> None:
    await conn.execute(
        "INSERT INTO refunds (id, topup_id, amount, hold_id) VALUES ($1, $2, $3, $4)",
        refund_id,
        order_id,
        amount,
        hold_id,
    )


async def refund_for_update(conn: Connection, refund_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT r.id, r.topup_id, r.amount, r.status, r.hold_id, t.provider, t.rider,"
        " t.currency FROM refunds r JOIN topups t ON t.id = r.topup_id"
        " WHERE r.id = $1 FOR UPDATE OF r",
        refund_id,
    )
    return row


async def resolve_refund(
    conn: Connection, refund_id: uuid.UUID, status: str, transfer_id: uuid.UUID
) -> None:
    await conn.execute(
        "UPDATE refunds SET status = $2, resolved_by = $3, resolved_at = now() WHERE id = $1",
        refund_id,
        status,
        transfer_id,
    )


# A transfer moves posted balances unless it is a hold (pending) or the release of one (void).
_POSTED = "flags & 10 = 0"


async def posted_balance_before(conn: Connection, account_id: uuid.UUID, at: datetime) -> int:
    """Credits less debits posted to an account before ``at``."""
    total: int = await conn.fetchval(
        f"""
        SELECT coalesce(sum(CASE WHEN credit_account_id = $1 THEN amount ELSE -amount END),
                        0)::bigint
        FROM transfers
        WHERE (debit_account_id = $1 OR credit_account_id = $1) AND created_at < $2
          AND {_POSTED}""",  # noqa: S608 - a constant, not input
        account_id,
        at,
    )
    return total


async def posted_movements(
    conn: Connection, account_id: uuid.UUID, start: datetime, end: datetime
) -> list[asyncpg.Record]:
    """An account's posted transfers in [start, end): id, time, signed amount, code, reference."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        SELECT id, created_at,
               CASE WHEN credit_account_id = $1 THEN amount ELSE -amount END AS amount,
               code, reference
        FROM transfers
        WHERE (debit_account_id = $1 OR credit_account_id = $1)
          AND created_at >= $2 AND created_at < $3 AND {_POSTED}""",  # noqa: S608
        account_id,
        start,
        end,
    )
    return rows


async def kept_statement(
    conn: Connection, account_id: uuid.UUID, day: date
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT csv, json FROM statements WHERE account_id = $1 AND business_day = $2",
        account_id,
        day,
    )
    return row


async def keep_statement(
    conn: Connection, account_id: uuid.UUID, day: date, owner: str, csv: bytes, json: bytes
) -> None:
    """Keep a closed day's statement; the first one kept stays."""
    await conn.execute(
        "INSERT INTO statements (account_id, business_day, owner, csv, json)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        account_id,
        day,
        owner,
        csv,
        json,
    )


async def credited_top_ups(
    conn: Connection, provider: str, start: datetime, end: datetime
) -> list[asyncpg.Record]:
    """A provider's top-ups credited in [start, end): order id, amount, currency, transfer."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT t.id, t.amount, t.currency, t.transfer_id FROM topups t"
        " JOIN transfers x ON x.id = t.transfer_id"
        " WHERE t.provider = $1 AND x.created_at >= $2 AND x.created_at < $3",
        provider,
        start,
        end,
    )
    return rows


async def top_up_wallet(conn: Connection, reference: str) -> uuid.UUID | None:
    """The wallet a top-up order (by its id as text, as bills echo it) belongs to."""
    try:
        order_id = uuid.UUID(reference)
    except ValueError:
        return None
    wallet: uuid.UUID | None = await conn.fetchval(
        "SELECT account_id FROM topups WHERE id = $1", order_id
    )
    return wallet


async def top_up_of(
    conn: Connection | asyncpg.Pool, order_id: uuid.UUID, rider: str
) -> asyncpg.Record | None:
    """A rider's own top-up order (None for anybody else's)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, provider, amount, currency, status, created_at, paid_at FROM topups"
        " WHERE id = $1 AND rider = $2",
        order_id,
        rider,
    )
    return row


async def expired_holds(conn: Connection) -> list[Transfer]:
    """The holds that this transaction expired (any batch releases those past their timeout)."""
    rows = await conn.fetch(
        """
        SELECT t.* FROM holds h JOIN transfers t ON t.id = h.pending_id
        WHERE h.resolution = 'expired' AND h.resolved_at = now()
          AND h.xmin = pg_current_xact_id()::xid"""
    )
    return [_stored(row).transfer for row in rows]


# -- fares owed for journeys ------------------------------------------------------------------


async def fare_dues_for_update(
    conn: Connection, journey_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, int]]:
    """Each known journey's (version, taken), its row locked until the transaction ends."""
    rows = await conn.fetch(
        "SELECT journey_id, version, taken FROM fare_dues WHERE journey_id = ANY($1::uuid[])"
        " ORDER BY journey_id FOR UPDATE",
        journey_ids,
    )
    return {r["journey_id"]: (r["version"], r["taken"]) for r in rows}


async def save_fare_dues(
    conn: Connection, dues: Sequence[tuple[uuid.UUID, int, uuid.UUID, str, str, str, int]]
) -> None:
    """Record each journey's newest statement: (journey, version, wallet, rider, operator,
    currency, due); what was taken for it is kept."""
    await conn.executemany(
        "INSERT INTO fare_dues (journey_id, version, account_id, rider, operator, currency, due,"
        " taken, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, now())"
        " ON CONFLICT (journey_id) DO UPDATE SET version = $2, due = $7, updated_at = now()",
        dues,
    )


async def add_taken(conn: Connection, taken: Sequence[tuple[uuid.UUID, int]]) -> None:
    """Count money moved for journeys: charged (positive) or refunded (negative)."""
    await conn.executemany(
        "UPDATE fare_dues SET taken = taken + $2, updated_at = now() WHERE journey_id = $1", taken
    )


async def fares_owed(
    conn: Connection, account_id: uuid.UUID
) -> list[tuple[uuid.UUID, int, str, str, str, int]]:
    """A wallet's journeys whose charge could not be taken, oldest statement first:
    (journey, version, rider, operator, currency, still owed), locked."""
    rows = await conn.fetch(
        "SELECT journey_id, version, rider, operator, currency, due - taken AS owed"
        " FROM fare_dues WHERE account_id = $1 AND due > taken ORDER BY updated_at, journey_id"
        " FOR UPDATE",
        account_id,
    )
    return [
        (r["journey_id"], r["version"], r["rider"], r["operator"], r["currency"].strip(), r["owed"])
        for r in rows
    ]
