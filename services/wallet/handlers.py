"""HTTP handlers: parse, call the ledger, shape the answer."""

from __future__ import annotations

import uuid

from aiohttp import web

from services.wallet import store
from services.wallet.ledger import CURRENCIES, Account, Outcome
from services.wallet.writer import LedgerWriter
from shared.http import Problem
from shared.service import POOL

WRITER = web.AppKey("ledger_writer", LedgerWriter)
PAGE_SIZE = 50
PROBLEMS = "https://cardless.dev/problems/wallet"


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Problem(
            400, "Bad Request", f"{what} is not a UUID", type_=f"{PROBLEMS}/bad-id"
        ) from None


async def account(request: web.Request) -> web.Response:
    """An account's balances."""
    found = await store.accounts(
        request.app[POOL], [_uuid(request.match_info["account_id"], "account id")]
    )
    if not found:
        raise Problem(404, "Not Found", "no such account", type_=f"{PROBLEMS}/account-not-found")
    return web.json_response(_account_json(found[0]))


async def statement(request: web.Request) -> web.Response:
    """An account's transfers, newest first; ``next`` is the cursor of the following page."""
    account_id = _uuid(request.match_info["account_id"], "account id")
    cursor = request.query.get("cursor")
    if cursor is not None and not cursor.isdigit():
        raise Problem(
            400, "Bad Request", "cursor is not one we gave", type_=f"{PROBLEMS}/bad-cursor"
        )
    page = await store.transfers_of(
        request.app[POOL], account_id, before=int(cursor) if cursor else None, limit=PAGE_SIZE
    )
    items = [_entry_json(account_id, o) for _, o in page]
    next_cursor = str(page[-1][0]) if len(page) == PAGE_SIZE else None
    return web.json_response({"items": items, "next": next_cursor})


def _account_json(a: Account) -> dict[str, object]:
    return {
        "id": str(a.id),
        "currency": CURRENCIES.get(a.ledger, "XXX"),
        "code": a.code,
        "available": a.available,
        "debits_posted": a.debits_posted,
        "credits_posted": a.credits_posted,
        "debits_pending": a.debits_pending,
        "credits_pending": a.credits_pending,
    }


def _entry_json(account_id: uuid.UUID, o: Outcome) -> dict[str, object]:
    t = o.transfer
    sign = -1 if t.debit_account_id == account_id else 1
    return {
        "id": str(t.id),
        "amount": sign * t.amount,
        "currency": CURRENCIES.get(t.ledger, "XXX"),
        "code": t.code,
        "flags": int(t.flags),
        "pending_id": str(t.pending_id) if t.pending_id else None,
        "reference": t.reference,
        "at": o.created_at.isoformat() if o.created_at else None,
    }
