"""HTTP handlers: parse, call a use case, shape the answer."""

from __future__ import annotations

import logging
from datetime import datetime
from urllib.parse import parse_qsl

from aiohttp import web

from services.wallet import refunds, store, topups
from services.wallet.config import WalletConfig
from services.wallet.topups import NotificationRejected, Payment, Provider, RefundSettled
from shared.db import Connection, in_transaction
from shared.http import Problem
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
    name = request.match_info["provider"]
    found = request.app[SETTINGS].providers.get(name)
    if found is None:
        raise Problem(404, "Not Found", "no such provider", type_=f"{PROBLEMS}/unknown-provider")
    return found


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
            outcome = await topups.credit(conn, provider, notice, publish)
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
