"""The wallet service: its ledger writer, routes and events, wired onto the platform."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from aiohttp import web

from services.wallet import consumers, handlers
from services.wallet.config import WalletConfig
from services.wallet.events import ledger_events, wallet_events
from services.wallet.ledger import Outcome
from services.wallet.writer import LedgerWriter
from shared.db import Connection
from shared.service import BUS, POOL, Service

WRITER = web.AppKey("ledger_writer", LedgerWriter)


def add_routes(app: web.Application) -> None:
    app[handlers.SETTINGS] = WalletConfig.from_env(os.environ)
    app.cleanup_ctx.append(_ledger_writer)
    app.router.add_post(
        "/v1/wallet/providers/{provider}/notifications", handlers.provider_notification
    )


async def _ledger_writer(app: web.Application) -> AsyncIterator[None]:
    bus, settings = app[BUS], app[handlers.SETTINGS]

    async def publish(conn: Connection, outcomes: Sequence[Outcome]) -> None:
        await bus.publish_many(conn, ledger_events(outcomes))

    writer = LedgerWriter(
        app[POOL], publish, shards=settings.ledger_shards, max_batch=settings.ledger_max_batch
    )
    app[WRITER] = writer
    writer.start()
    yield
    await writer.stop()


SERVICE = Service(
    name="wallet",
    add_routes=add_routes,
    migrations=Path(__file__).parent / "migrations",
    produces=[wallet_events],
    subscriptions=consumers.subscriptions,
)
