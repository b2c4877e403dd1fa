"""Daily statements of an account, read from the ledger and kept once the day has closed."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from services.wallet import store
from services.wallet.settlement import (
    BusinessDay,
    Movement,
    build_statement,
    statement_csv,
    statement_json,
)
from shared.db import Connection

# A day is final this long after it ends: longer than any transaction that began inside it
# and could still commit a transfer stamped with its time.
SETTLE_AFTER = timedelta(minutes=10)


class DayNotClosed(Exception):
    """A statement was asked for a business day that has not ended: it could still change."""


async def daily(
    conn: Connection,
    account_id: uuid.UUID,
    owner: str,
    currency: str,
    day: BusinessDay,
    now: datetime,
) -> tuple[bytes, bytes]:
    """The day's statement as (CSV, JSON): built once after the day closes, then kept."""
    final = day.bounds()[1] + SETTLE_AFTER
    if now < final:
        raise DayNotClosed(f"business day {day.date} is final from {final.isoformat()}")
    kept = await store.kept_statement(conn, account_id, day.date)
    if kept is None:
        start, end = day.bounds()
        opening = await store.posted_balance_before(conn, account_id, start)
        movements = [
            Movement(r["id"], r["created_at"], r["amount"], currency, r["code"], r["reference"])
            for r in await store.posted_movements(conn, account_id, start, end)
        ]
        statement = build_statement(account_id, owner, currency, day, opening, movements)
        await store.keep_statement(
            conn, account_id, day.date, owner, statement_csv(statement), statement_json(statement)
        )
        kept = await store.kept_statement(conn, account_id, day.date)
        assert kept is not None
    return kept["csv"], kept["json"]
