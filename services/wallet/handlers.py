"""HTTP handlers: parse, call a use case, shape the answer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from urllib.parse import parse_qsl

import msgspec
from aiohttp import web

from services.wallet import finance, refunds, store, topups
from services.wallet.config import WalletConfig
from services.wallet.ledger import (
    CURRENCIES,
    LEDGERS,
    Outcome,
    TransferCode,
    TransferFlags,
    operator_account,
    wallet_account,
)
from services.wallet.reconciliation import BillError, Correction, report_json
from services.wallet.settlement import BusinessDay
from services.wallet.topups import NotificationRejected, Payment, Provider, RefundSettled
from shared.auth import FORBIDDEN, authenticate
from shared.db import Connection, in_transaction
from shared.http import Problem, read_body
from shared.idempotency import idempotent
from shared.ids import new_id
from shared.money import Money
from shared.service import BUS, CLOCK, POOL

log = logging.getLogger(__name__)
SETTINGS = web.AppKey("wallet_config", WalletConfig)
PROBLEMS = "https://cardless.dev/problems/wallet"


async def provider_notification(request: web.Request) -> web.Response:
    """A provider tells us a payment happened: verify, then credit the order once."""
    provider = _provider(request)
    body = await request.read()
    now = request.app[CLOCK].now()
    try:
        notice = _read(provider, body, request, now)
        outcome = "ignored" if notice is None else await _act(request, provider, notice)
    except NotificationRejected as exc:
        log.warning(
            "provider notification rejected",
            extra={"provider": provider.name, "reason": exc.reason, "status": exc.status},
        )
        await store.log_notification(
            request.app[POOL], provider.name, _claimed_id(provider, request, body), None,
            f"rejected: {exc.reason}",
        )  # fmt: skip
        raise Problem(
            exc.status, "Notification rejected", exc.reason, type_=f"{PROBLEMS}/notification"
        ) from None
    log.info("provider notification", extra={"provider": provider.name, "outcome": outcome})
    # Alipay stops retrying only when it reads exactly "success".
    return (
        web.Response(text="success")
        if provider.scheme == "alipay-rsa2"
        else web.Response(status=204)
    )


def _provider(request: web.Request) -> Provider:
    """The provider the path names: an unknown one is a resource that does not exist (404)."""
    return _provider_named(request, request.match_info["provider"], status=404)


def _read(
    provider: Provider, body: bytes, request: web.Request, now: datetime
) -> Payment | RefundSettled | None:
    if provider.scheme == "standard-webhooks":
        return topups.read_standard_webhook(provider, body, request.headers, now)
    return topups.read_alipay(provider, _form(body), now)


def _form(body: bytes) -> dict[str, str]:
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
    except (UnicodeDecodeError, ValueError):
        raise NotificationRejected("body is not a UTF-8 form") from None


async def _act(request: web.Request, provider: Provider, notice: Payment | RefundSettled) -> str:
    publish = request.app[BUS].publish_many

    async def work(conn: Connection) -> str:
        if isinstance(notice, Payment):
            outcome = await topups.credit(
                conn, provider, notice, publish, low_balance=request.app[SETTINGS].low_balance_minor
            )
            subject = notice.order_id
        else:
            outcome = await refunds.settle(conn, provider, notice, publish)
            subject = notice.refund_id
        await store.log_notification(conn, provider.name, notice.notification_id, subject, outcome)
        return outcome

    return await in_transaction(request.app[POOL], work)


def _claimed_id(provider: Provider, request: web.Request, body: bytes) -> str:
    """The notification id the sender claims (unverified: for the operator's log only)."""
    if provider.scheme == "standard-webhooks":
        return request.headers.get("webhook-id", "")
    try:
        return _form(body).get("notify_id", "")
    except NotificationRejected:
        return ""


# --- riders: their own wallet only (the token's subject is the rider) -------------------------

PAGE_SIZE = 50


class TopUpBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: str
    amount: int  # minor units: 12.50 CNY is 1250
    currency: str


class RefundBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: int
    currency: str


async def balance(request: web.Request) -> web.Response:
    """The rider's wallet in one currency."""
    rider = (await authenticate(request, "wallet:read")).subject
    currency = _currency(request.query.get("currency", "CNY"))
    found = await store.accounts(request.app[POOL], [wallet_account(rider, currency)])
    account = found[0] if found else None
    return web.json_response({
        "currency": currency,
        "available": account.available if account else 0,
        "held": account.debits_pending if account else 0,
    })  # fmt: skip


async def statement(request: web.Request) -> web.Response:
    """The rider's transfers, newest first; ``next`` is the cursor of the following page."""
    rider = (await authenticate(request, "wallet:read")).subject
    account = wallet_account(rider, _currency(request.query.get("currency", "CNY")))
    cursor = request.query.get("cursor")
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) < 19):
        raise Problem(400, "Bad Request", "not a cursor we gave", type_=f"{PROBLEMS}/bad-cursor")
    page = await store.transfers_of(
        request.app[POOL], account, before=int(cursor) if cursor else None, limit=PAGE_SIZE
    )
    return web.json_response({
        "items": [_entry(account, o) for _, o in page],
        "next": str(page[-1][0]) if len(page) == PAGE_SIZE else None,
    })  # fmt: skip


async def create_top_up(request: web.Request) -> web.Response:
    """A top-up order through a provider; the provider's notification credits it later."""
    rider = (await authenticate(request, "wallet:topup")).subject
    body = await read_body(request, TopUpBody)
    provider = _provider_named(request, body.provider)
    amount = Money(body.amount, _currency(body.currency))

    async def work(conn: Connection) -> web.Response:
        try:
            order = await topups.create_order(conn, provider, rider, amount)
        except topups.TopUpRefused as exc:
            raise Problem(
                422, "Top-up refused", str(exc), type_=f"{PROBLEMS}/top-up-refused"
            ) from None
        return web.json_response(
            _order(order.id, provider.name, amount, "awaiting_payment"),
            status=201,
            headers={"Location": f"/v1/wallet/topups/{order.id}"},
        )

    return await _idempotent(request, rider, work)


async def top_up(request: web.Request) -> web.Response:
    rider = (await authenticate(request, "wallet:read")).subject
    row = await store.top_up_of(request.app[POOL], _id(request, "order_id"), rider)
    if row is None:
        raise Problem(404, "Not Found", "no such top-up", type_=f"{PROBLEMS}/top-up-not-found")
    amount = Money(row["amount"], row["currency"].strip())
    return web.json_response(_order(row["id"], row["provider"], amount, row["status"]))


async def create_refund(request: web.Request) -> web.Response:
    """Ask for part or all of a paid top-up back, to where it came from."""
    rider = (await authenticate(request, "wallet:refund")).subject
    order_id = _id(request, "order_id")
    body = await read_body(request, RefundBody)
    amount = Money(body.amount, _currency(body.currency))
    publish = request.app[BUS].publish_many

    async def work(conn: Connection) -> web.Response:
        order = await store.top_up_of(conn, order_id, rider)
        if order is None:
            raise Problem(404, "Not Found", "no such top-up", type_=f"{PROBLEMS}/top-up-not-found")
        provider = _provider_named(request, order["provider"])
        try:
            refund = await refunds.request(conn, provider, order_id, amount, new_id(), publish)
        except refunds.RefundRefused as exc:
            raise Problem(exc.status, "Refund refused", exc.reason,
                          type_=f"{PROBLEMS}/refund-refused") from None  # fmt: skip
        return web.json_response(
            {"id": str(refund.id), "order_id": str(order_id), "status": refund.status,
             "amount": amount.minor, "currency": amount.currency},
            status=201,
        )  # fmt: skip

    return await _idempotent(request, rider, work)


# --- finance: daily statements and providers' bills ------------------------------------------


async def provider_statement(request: web.Request) -> web.Response:
    """A provider's daily statement: the provider itself, or the operator's finance team."""
    principal = await authenticate(request)
    provider = _provider(request)
    if not (
        "wallet:finance" in principal.scopes
        or ("wallet:settlement" in principal.scopes and principal.subject == provider.name)
    ):
        raise Problem(403, "Forbidden", "not this provider's statement", type_=FORBIDDEN)
    return await _statement(
        request, provider.clearing_account, f"provider:{provider.name}", provider.currency
    )


async def operator_statement(request: web.Request) -> web.Response:
    await authenticate(request, "wallet:finance")
    operator = request.match_info["operator"]
    currency = _currency(request.query.get("currency", "CNY"))
    return await _statement(
        request, operator_account(operator, currency), f"operator:{operator}", currency
    )


async def import_bill(request: web.Request) -> web.Response:
    """Reconcile a provider's daily bill (CSV); ``?apply=true`` books the corrections."""
    principal = await authenticate(request, "wallet:finance")
    provider, day = _provider(request), _day(request)
    apply = request.query.get("apply") == "true"
    bill = await request.read()

    async def work(conn: Connection) -> web.Response:
        try:
            report, fixes, booked = await finance.reconcile_bill(
                conn, provider, day, bill, apply=apply, publish=request.app[BUS].publish_many
            )
        except BillError as exc:
            raise Problem(422, "Bill refused", str(exc), type_=f"{PROBLEMS}/bad-bill") from None
        return web.json_response({
            "report": msgspec.json.decode(report_json(report)),
            "corrections": [_correction(f, booked) for f in fixes],
        })  # fmt: skip

    return await _idempotent(request, principal.subject, work)


async def _statement(
    request: web.Request, account: uuid.UUID, owner: str, currency: str
) -> web.Response:
    day, fmt = _day(request), request.match_info["format"]
    try:
        async with request.app[POOL].acquire() as conn:
            csv, body = await finance.daily(
                conn, account, owner, currency, day, request.app[CLOCK].now()
            )
    except finance.DayNotClosed as exc:
        raise Problem(409, "Day not final", str(exc), type_=f"{PROBLEMS}/day-not-final") from None
    if fmt == "csv":
        return web.Response(body=csv, content_type="text/csv", charset="utf-8")
    return web.Response(body=body, content_type="application/json")


# --- small parsers and shapes --------------------------------------------------------------


async def _idempotent(
    request: web.Request, principal: str, work: Callable[[Connection], Awaitable[web.Response]]
) -> web.Response:
    return await idempotent(
        request, request.app[POOL], work, principal=principal, clock=request.app[CLOCK]
    )


def _provider_named(request: web.Request, name: str, status: int = 422) -> Provider:
    """A configured provider; an unknown one named in a body is unprocessable (422)."""
    found = request.app[SETTINGS].providers.get(name)
    if found is None:
        raise Problem(status, "Unknown provider", f"no provider {name!r}",
                      type_=f"{PROBLEMS}/unknown-provider")  # fmt: skip
    return found


def _currency(code: str) -> str:
    if code not in LEDGERS:
        raise Problem(422, "Unknown currency", f"no wallet in {code!r}",
                      type_=f"{PROBLEMS}/unknown-currency")  # fmt: skip
    return code


def _id(request: web.Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise Problem(404, "Not Found", f"{name} is not an id we gave",
                      type_=f"{PROBLEMS}/not-found") from None  # fmt: skip


def _day(request: web.Request) -> BusinessDay:
    settings = request.app[SETTINGS]
    try:
        when = date.fromisoformat(request.match_info["day"])
    except ValueError:
        raise Problem(404, "Not Found", "the day is YYYY-MM-DD",
                      type_=f"{PROBLEMS}/not-found") from None  # fmt: skip
    return BusinessDay(when, settings.business_tz, settings.business_cutoff)


def _order(order_id: uuid.UUID, provider: str, amount: Money, status: str) -> dict[str, object]:
    return {
        "id": str(order_id),
        "provider": provider,
        "amount": amount.minor,
        "currency": amount.currency,
        "status": status,
        # What the rider's app hands to the provider's SDK: our order id is their reference.
        "pay": {"provider": provider, "reference": str(order_id),
                "amount": amount.to_decimal_string(), "currency": amount.currency},
    }  # fmt: skip


def _entry(account: uuid.UUID, o: Outcome) -> dict[str, object]:
    t = o.transfer
    kind = (
        "held" if t.flags & TransferFlags.PENDING
        else "released" if t.flags & TransferFlags.VOID_PENDING_TRANSFER
        else "posted"
    )  # fmt: skip
    return {
        "id": str(t.id),
        "at": o.created_at.isoformat() if o.created_at else None,
        "kind": kind,
        "amount": t.amount if t.credit_account_id == account else -t.amount,
        "currency": CURRENCIES.get(t.ledger, "XXX"),
        "type": TransferCode(t.code).name.lower() if t.code in set(TransferCode) else str(t.code),
        "reference": t.reference,
    }


def _correction(fix: Correction, booked: Sequence[Outcome]) -> dict[str, object]:
    results = {o.transfer.id: o.result.value for o in booked}
    return {
        "id": str(fix.id), "reference": fix.reference, "amount": fix.amount,
        "currency": fix.currency, "reason": fix.reason, "booked": results.get(fix.id),
    }  # fmt: skip
