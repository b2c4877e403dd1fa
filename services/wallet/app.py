"""The wallet service: its ledger writer, routes and events, wired onto the platform."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from functools import partial
from pathlib import Path

from aiohttp import web

from services.wallet import consumers, finance, handlers, openapi, refunds
from services.wallet.config import WalletConfig
from services.wallet.events import wallet_events
from services.wallet.topups import Provider, RefundSettled
from services.wallet.webhooks import Backoff, WebhookSender
from services.wallet.writer import LedgerWriter
from shared.clock import rounds
from shared.db import SERVER_FAILURES, Connection, in_transaction
from shared.service import BUS, CLOCK, POOL, Service

WRITER = web.AppKey("ledger_writer", LedgerWriter)


def add_routes(app: web.Application) -> None:
    app[handlers.SETTINGS] = WalletConfig.from_env(os.environ)
    app.cleanup_ctx.append(_ledger_writer)
    app.cleanup_ctx.append(_webhook_sender)
    app.cleanup_ctx.append(_settlement_announcer)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)


# The wallet's URL table; openapi.py describes the same routes for clients.
ROUTES: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
    ("GET", "/v1/wallet/openapi.json", openapi.document),
    ("GET", "/v1/wallet/balance", handlers.balance),
    ("GET", "/v1/wallet/statement", handlers.statement),
    ("POST", "/v1/wallet/topups", handlers.create_top_up),
    ("GET", "/v1/wallet/topups/{order_id}", handlers.top_up),
    ("POST", "/v1/wallet/topups/{order_id}/refunds", handlers.create_refund),
    ("POST", "/v1/wallet/providers/{provider}/notifications", handlers.provider_notification),
    (
        "GET",
        "/v1/wallet/providers/{provider}/statements/{day}.{format:csv|json}",
        handlers.provider_statement,
    ),
    ("POST", "/v1/wallet/providers/{provider}/bills/{day}", handlers.import_bill),
    (
        "GET",
        "/v1/wallet/operators/{operator}/statements/{day}.{format:csv|json}",
        handlers.operator_statement,
    ),
]


async def _ledger_writer(app: web.Application) -> AsyncIterator[None]:
    bus, settings = app[BUS], app[handlers.SETTINGS]

    writer = LedgerWriter(
        app[POOL],
        bus.publish_many,
        shards=settings.ledger_shards,
        max_batch=settings.ledger_max_batch,
    )
    app[WRITER] = writer
    writer.start()
    yield
    await writer.stop()


async def _webhook_sender(app: web.Application) -> AsyncIterator[None]:
    settings = app[handlers.SETTINGS]
    backoff = Backoff(base_s=settings.webhook_backoff_s, attempts=settings.webhook_attempts)
    publish = app[BUS].publish_many

    async def settle(conn: Connection, provider: Provider, answer: RefundSettled) -> str:
        return await refunds.settle(conn, provider, answer, publish)

    sender = WebhookSender(
        app[POOL], dict(settings.providers), app[CLOCK], backoff, on_refund=settle
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(sender.run(stopping), name="webhook-sender")
    yield
    stopping.set()
    await task


async def _settlement_announcer(app: web.Application) -> AsyncIterator[None]:
    """Every minute: has a business day become final? Then tell each provider, once."""
    settings, pool, clock = app[handlers.SETTINGS], app[POOL], app[CLOCK]

    async def announce() -> None:
        for provider in settings.providers.values():
            await in_transaction(pool, partial(_announce, provider))

    async def _announce(provider: Provider, conn: Connection) -> date | None:
        tz, cutoff = settings.business_tz, settings.business_cutoff
        return await finance.announce_final_day(conn, provider, tz, cutoff, clock.now())

    async with rounds((60.0, announce, "settlement announcement"), retry_on=SERVER_FAILURES):
        yield


SERVICE = Service(
    name="wallet",
    add_routes=add_routes,
    migrations=Path(__file__).parent / "migrations",
    produces=[wallet_events],
    subscriptions=consumers.subscriptions,
)
