"""What the wallet does with other services' events."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from services.transit.events import FareDue, transit_events
from services.wallet import fares
from services.wallet.handlers import SETTINGS
from shared.consumer import Subscription
from shared.db import Connection
from shared.events import Envelope, Event
from shared.service import BUS


def subscriptions(app: web.Application) -> Sequence[Subscription]:
    async def charge_fares(conn: Connection, events: list[tuple[Event, Envelope]]) -> None:
        # One ledger batch per run of fares: the operator's account is updated once.
        statements = [event for event, _ in events if isinstance(event, FareDue)]
        await fares.apply(
            conn,
            statements,
            low_balance=app[SETTINGS].low_balance_minor,
            publish=app[BUS].publish_many,
        )

    return [Subscription(transit_events, batch_handlers={FareDue: charge_fares})]
