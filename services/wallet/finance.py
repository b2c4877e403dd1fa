"""What finance does with the ledger: daily statements of provider and operator accounts,
kept once the day is final, and reconciling a provider's daily bill against our top-ups."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta

from services.wallet import store, webhooks
from services.wallet.events import Publish
from services.wallet.ledger import LEDGERS, Outcome, Transfer, TransferCode
from services.wallet.reconciliation import (
    ALIPAY_BILL,
    GENERIC_BILL,
    Correction,
    Expected,
    Report,
    corrections,
    parse_bill,
    reconcile,
)
from services.wallet.settlement import (
    BusinessDay,
    Movement,
    build_statement,
    statement_csv,
    statement_json,
)
from services.wallet.topups import Provider
from services.wallet.writer import book
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


async def reconcile_bill(
    conn: Connection,
    provider: Provider,
    day: BusinessDay,
    bill: bytes,
    *,
    apply: bool,
    publish: Publish,
) -> tuple[Report, list[Correction], list[Outcome]]:
    """Match a provider's bill for ``day`` with the top-ups we credited that day; with
    ``apply``, book each correction as a transfer (the same bill twice books nothing twice)."""
    fmt = ALIPAY_BILL if provider.scheme == "alipay-rsa2" else GENERIC_BILL
    lines = parse_bill(bill, fmt)
    start, end = day.bounds()
    ours = [
        Expected(str(r["id"]), r["amount"], r["currency"].strip(), r["transfer_id"])
        for r in await store.credited_top_ups(conn, provider.name, start, end)
    ]
    report = reconcile(ours, lines)
    fixes = corrections(report, provider.name, day.date)
    booked = await _book(conn, provider, fixes, publish) if apply else []
    return report, fixes, booked


async def _book(
    conn: Connection, provider: Provider, fixes: list[Correction], publish: Publish
) -> list[Outcome]:
    """A correction moves money between the provider's clearing account and the order's
    wallet; one whose order we do not know is left to a person (no wallet to move it to)."""
    transfers = []
    for fix in fixes:
        wallet = await store.top_up_wallet(conn, fix.reference)
        if wallet is None or fix.amount == 0:
            continue
        clearing = provider.clearing_account
        debit, credit = (clearing, wallet) if fix.amount > 0 else (wallet, clearing)
        transfers.append(Transfer(
            id=fix.id, debit_account_id=debit, credit_account_id=credit, amount=abs(fix.amount),
            ledger=LEDGERS[fix.currency], code=TransferCode.CORRECTION,
            reference=f"correction/{fix.reason}/{fix.reference}",
        ))  # fmt: skip
    return await book(conn, transfers, publish)


async def announce_final_day(
    conn: Connection, provider: Provider, tz: str, cutoff: time, now: datetime
) -> date | None:
    """Keep the provider's statement of the last final business day and send it a
    ``settlement.ready`` webhook, once; returns that day, or None if nothing was new."""
    if provider.webhook_url is None:
        return None
    # One announcer at a time per provider, so two wallet processes never both announce.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('settlement/' || $1))", provider.name)
    current = BusinessDay.of(now - SETTLE_AFTER, tz, cutoff)
    day = BusinessDay(current.date - timedelta(days=1), tz, cutoff)
    if await store.kept_statement(conn, provider.clearing_account, day.date) is not None:
        return None
    owner = f"provider:{provider.name}"
    await daily(conn, provider.clearing_account, owner, provider.currency, day, now)
    path = f"/v1/wallet/providers/{provider.name}/statements/{day.date.isoformat()}"
    await webhooks.enqueue(conn, provider, "settlement.ready", {
        "business_day": day.date.isoformat(), "csv": f"{path}.csv", "json": f"{path}.json",
    })  # fmt: skip
    return day.date
